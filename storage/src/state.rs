//! [`StateStore`]: the replicated state machine's RocksDB, its `apply`, reads, and
//! checkpoints for Raft snapshots.
//!
//! ```text
//!  data_dir/state/CURRENT        names the live generation ("gen-000001")
//!  data_dir/state/gen-000001/    a RocksDB with the column families of `keyspace`
//! ```
//! Installing a snapshot opens the checkpoint as the next generation and swaps it in, so
//! readers holding the old database finish undisturbed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::blob::BlobId;
use crate::command::{
    Command, CommandEnvelope, CommandError, CommandResult, DeliveryResult, DeliveryTarget, FlagAction, Outcome,
    Threading,
};
use crate::error::{Error, ErrorKind, Result};
use crate::keyspace::{self as ks};
use crate::queue::{AttemptResult, OutboundEnvelope, QueueEntry, QueuedRecipient, RecipientStatus};
use crate::records::*;
use crate::records::{decode_value, encode_value};

/// Name of the mailbox every account starts with.
pub const INBOX: &str = "INBOX";
/// Change-log entries kept per account (at most twice this many exist at a time).
#[cfg(not(test))]
const CHANGE_LOG_RETAIN: u64 = 10_000;
#[cfg(test)]
const CHANGE_LOG_RETAIN: u64 = 4;

/// Milliseconds in a day (the Bayes lesson counter's period).
const DAY_MS: u64 = 86_400_000;

/// The hierarchy separator of mailbox names.
pub const MAILBOX_SEPARATOR: char = '/';

/// One committed Raft entry to apply: a batch of commands (empty for Raft's own entries
/// such as membership changes) and the consensus layer's opaque record of the state after it.
#[derive(Debug, Clone)]
pub struct ApplyEntry {
    /// The entry's Raft log index.
    pub log_index: u64,
    /// Encoded [`CommandEnvelope`]s, applied in order; each sees the effects of the ones
    /// before it, and all of them land in one atomic write.
    pub commands: Vec<Vec<u8>>,
    /// Opaque applied-state record (last applied log id, membership) stored atomically with
    /// the command's effects.
    pub raft_meta: Vec<u8>,
}

/// The replicated state of one node.
pub struct StateStore {
    root: PathBuf,
    db: RwLock<Arc<DB>>,
    /// Serialises apply, checkpoint and restore.
    apply_lock: Mutex<()>,
    /// Told which accounts' change logs grew, after each applied batch is written.
    change_listener: RwLock<Option<ChangeListener>>,
    /// Keys deleted from the queue's due index since it was last compacted: each leaves a
    /// tombstone that range scans from the start must step over until compaction.
    queue_due_deletes: std::sync::atomic::AtomicU64,
    /// The latest messages this node expunged (see [`StateStore::recently_expunged`]).
    recently_expunged: Mutex<RecentlyExpunged>,
}

/// How many expunged message records [`StateStore::recently_expunged`] remembers.
const RECENTLY_EXPUNGED: usize = 16_384;

/// A bounded memory of expunged message records, oldest forgotten first.
#[derive(Default)]
struct RecentlyExpunged {
    order: std::collections::VecDeque<(u64, u64, u32)>,
    records: HashMap<(u64, u64, u32), MessageRecord>,
}

impl RecentlyExpunged {
    fn remember(&mut self, account_id: u64, mailbox_id: u64, record: MessageRecord) {
        let key = (account_id, mailbox_id, record.uid);
        if self.records.insert(key, record).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > RECENTLY_EXPUNGED {
            if let Some(oldest) = self.order.pop_front() {
                self.records.remove(&oldest);
            }
        }
    }
}

/// Tombstones in the due index after which [`StateStore::compact_queue_index`] compacts.
const QUEUE_DUE_COMPACT_AFTER: u64 = 10_000;

/// A callback told, after each applied batch is written, the ids of the accounts whose
/// mailboxes changed (for IMAP IDLE and other sessions that wait for changes).
pub type ChangeListener = Arc<dyn Fn(&[u64]) + Send + Sync>;

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("root", &self.root).finish()
    }
}

/// Memory all column families' memtables may hold together before RocksDB flushes one (the
/// column family holding the oldest unflushed data): without it each of the 21 may grow
/// to its own 64 MiB (twice, while one flushes), gigabytes on a busy node.
const MEMTABLE_BUDGET: usize = 128 << 20;

fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_keep_log_file_num(4);
    options.set_db_write_buffer_size(MEMTABLE_BUDGET);
    options
}

fn open_db(path: &Path) -> Result<DB> {
    let descriptors = ks::COLUMN_FAMILIES.iter().map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    let db = DB::open_cf_descriptors(&db_options(), path, descriptors)
        .map_err(|e| Error::io(format!("cannot open the state database at {}", path.display()), e))?;
    for name in ks::COLUMN_FAMILIES {
        if db.cf_handle(name).is_none() {
            return Err(Error::corrupt(format!("column family {name} missing in {}", path.display())));
        }
    }
    Ok(db)
}

fn generation_name(generation: u64) -> String {
    format!("gen-{generation:06}")
}

fn write_current(root: &Path, generation: u64) -> Result<()> {
    let temp = root.join("CURRENT.tmp");
    std::fs::write(&temp, generation_name(generation))?;
    std::fs::File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, root.join("CURRENT"))?;
    std::fs::File::open(root)?.sync_all()?;
    Ok(())
}

fn read_current(root: &Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(root.join("CURRENT")) {
        Ok(text) => text
            .trim()
            .strip_prefix("gen-")
            .and_then(|number| number.parse().ok())
            .map(Some)
            .ok_or_else(|| Error::corrupt(format!("{} is not a generation name", root.join("CURRENT").display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

impl StateStore {
    /// Opens (or creates) the state under `root`, removing generations left over from an
    /// interrupted snapshot install.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
        let generation = match read_current(&root)? {
            Some(generation) => generation,
            None => {
                write_current(&root, 1)?;
                1
            }
        };
        let live = generation_name(generation);
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("gen-") && name != live {
                tracing::info!(dir = %entry.path().display(), "removing stale state generation");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        let db = open_db(&root.join(live))?;
        Ok(Self {
            root,
            db: RwLock::new(Arc::new(db)),
            apply_lock: Mutex::new(()),
            change_listener: RwLock::new(None),
            queue_due_deletes: std::sync::atomic::AtomicU64::new(0),
            recently_expunged: Mutex::new(RecentlyExpunged::default()),
        })
    }

    /// The record a message had when this node applied its expunge, while it is among the
    /// last 16,384 expunged here. An IMAP session that has not yet been able to report the
    /// expunge (RFC 9051 §7.5.1: not during FETCH) still answers a FETCH of it from this
    /// (RFC 2180 §4.1.1), as Dovecot does, while the blob is there (the GC grace).
    pub fn recently_expunged(&self, account_id: u64, mailbox_id: u64, uid: u32) -> Option<MessageRecord> {
        self.recently_expunged.lock().expect("expunged lock").records.get(&(account_id, mailbox_id, uid)).cloned()
    }

    /// Installs the callback told about changed accounts after each applied batch.
    pub fn set_change_listener(&self, listener: ChangeListener) {
        *self.change_listener.write().expect("listener lock") = Some(listener);
    }

    fn db(&self) -> Arc<DB> {
        self.db.read().expect("state db lock").clone()
    }

    /// Returns the consensus layer's applied-state record, if anything was applied yet.
    pub fn raft_meta(&self) -> Result<Option<Vec<u8>>> {
        let db = self.db();
        Ok(db.get_cf(&cf(&db, ks::META), ks::META_RAFT)?)
    }

    /// Applies committed entries in order. Each entry's effects (all its commands) and its
    /// `raft_meta` are written in one atomic batch, so after a crash the state is exactly
    /// "everything up to some entry" and replay continues from there.
    ///
    /// Returns, per entry, one result per command. A refused command changes nothing and
    /// the entry's other commands still apply. Fails, without applying the entry, only when
    /// a command cannot be decoded (for example it comes from a newer release) or the disk
    /// fails: the node must stop applying then.
    pub fn apply_batch(&self, entries: Vec<ApplyEntry>) -> Result<Vec<Vec<CommandResult>>> {
        let _guard = self.apply_lock.lock().expect("apply lock");
        let db = self.db();
        let mut results = Vec::with_capacity(entries.len());
        let mut touched = Vec::new();
        let mut expunged = Vec::new();
        // The Raft log is the durable record; the state may lag it after a power loss and is
        // then replayed, so these writes need no fsync of their own.
        let mut write_options = WriteOptions::default();
        write_options.set_sync(false);
        for entry in entries {
            let mut entry_writes = Pending::new();
            let mut entry_results = Vec::with_capacity(entry.commands.len());
            for bytes in &entry.commands {
                let envelope = CommandEnvelope::decode(bytes)?;
                let mut tx = Tx::new(&db, &entry_writes, entry.log_index, envelope.issued_at_ms);
                let result = tx.apply(envelope.command)?;
                if result.is_ok() {
                    touched.extend_from_slice(&tx.touched_accounts);
                    expunged.append(&mut tx.expunged);
                    entry_writes.extend(tx.finish());
                }
                entry_results.push(result);
            }
            entry_writes.insert((ks::META, ks::META_RAFT.to_vec()), Some(entry.raft_meta));
            let mut batch = WriteBatch::default();
            let mut due_deletes = 0;
            for ((table, key), value) in entry_writes {
                match value {
                    Some(value) => batch.put_cf(cf(&db, table), key, value),
                    None => {
                        due_deletes += u64::from(table == ks::QUEUE_DUE);
                        batch.delete_cf(cf(&db, table), key)
                    }
                }
            }
            self.queue_due_deletes.fetch_add(due_deletes, std::sync::atomic::Ordering::Relaxed);
            // Remembered before the write: read only for messages the state no longer has.
            if !expunged.is_empty() {
                let mut recently = self.recently_expunged.lock().expect("expunged lock");
                for (account_id, mailbox_id, record) in expunged.drain(..) {
                    recently.remember(account_id, mailbox_id, record);
                }
            }
            db.write_opt(batch, &write_options)?;
            results.push(entry_results);
        }
        if !touched.is_empty()
            && let Some(listener) = self.change_listener.read().expect("listener lock").clone()
        {
            touched.sort_unstable();
            touched.dedup();
            listener(&touched);
        }
        Ok(results)
    }

    /// Writes a consistent RocksDB checkpoint of the whole state into `dir` (which must not
    /// exist) and returns the applied-state record it contains.
    pub fn checkpoint(&self, dir: &Path) -> Result<Option<Vec<u8>>> {
        let _guard = self.apply_lock.lock().expect("apply lock");
        let db = self.db();
        let raft_meta = db.get_cf(&cf(&db, ks::META), ks::META_RAFT)?;
        rocksdb::checkpoint::Checkpoint::new(&db)?
            .create_checkpoint(dir)
            .map_err(|e| Error::io(format!("cannot write a checkpoint to {}", dir.display()), e))?;
        Ok(raft_meta)
    }

    /// Replaces the whole state with the checkpoint in `dir` (moved, not copied; it must be
    /// on the same filesystem as the state).
    pub fn restore(&self, dir: &Path) -> Result<()> {
        let _guard = self.apply_lock.lock().expect("apply lock");
        let current = read_current(&self.root)?.unwrap_or(1);
        let next = current + 1;
        let next_path = self.root.join(generation_name(next));
        // Left over by an install that failed after its rename.
        if next_path.exists() {
            std::fs::remove_dir_all(&next_path)?;
        }
        std::fs::rename(dir, &next_path)
            .map_err(|e| Error::io(format!("cannot move checkpoint into {}", next_path.display()), e))?;
        let db = open_db(&next_path)?;
        write_current(&self.root, next)?;
        let old = std::mem::replace(&mut *self.db.write().expect("state db lock"), Arc::new(db));
        // Delete the old generation now if nobody reads it; otherwise the next open does.
        if Arc::strong_count(&old) == 1 {
            drop(old);
            let _ = std::fs::remove_dir_all(self.root.join(generation_name(current)));
        }
        // Every account may have changed: sessions and the search indexer look again. The
        // state is swapped already, so a failure to list accounts is only logged.
        if let Some(listener) = self.change_listener.read().expect("listener lock").clone() {
            match self.account_ids() {
                Ok(accounts) => listener(&accounts),
                Err(error) => tracing::warn!(%error, "cannot list accounts to notify after a snapshot install"),
            }
        }
        Ok(())
    }

    // ----- reads -----

    /// Returns a domain.
    pub fn domain(&self, name: &str) -> Result<Option<Domain>> {
        get(&self.db(), ks::DOMAINS, name.as_bytes())
    }

    /// Lists every domain, sorted by name.
    pub fn domains(&self) -> Result<Vec<Domain>> {
        scan(&self.db(), ks::DOMAINS, &[]).map(|rows| rows.into_iter().map(|(_, domain)| domain).collect())
    }

    /// Resolves an address (lowercase) to what it delivers to.
    pub fn resolve_address(&self, address: &str) -> Result<Option<AddressTarget>> {
        match ks::address_key(address) {
            Some(key) => get(&self.db(), ks::ADDRESSES, &key),
            None => Ok(None),
        }
    }

    /// Lists the addresses of a domain (or of all domains) with their targets.
    pub fn addresses(&self, domain: Option<&str>) -> Result<Vec<(String, AddressTarget)>> {
        let prefix = domain.map(ks::domain_prefix).unwrap_or_default();
        let rows = scan(&self.db(), ks::ADDRESSES, &prefix)?;
        Ok(rows.into_iter().filter_map(|(key, target)| Some((ks::address_of_key(&key)?, target))).collect())
    }

    /// Returns an account by id.
    pub fn account(&self, account_id: u64) -> Result<Option<Account>> {
        get(&self.db(), ks::PRINCIPALS, &ks::id_key(account_id))
    }

    /// Lists the id of every account.
    pub fn account_ids(&self) -> Result<Vec<u64>> {
        let db = self.db();
        let mut ids = Vec::new();
        for item in db.iterator_cf(&cf(&db, ks::PRINCIPALS), IteratorMode::Start) {
            let (key, _) = item?;
            ids.push(u64::from_be_bytes(key[..8].try_into().map_err(|_| Error::corrupt("account key"))?));
        }
        Ok(ids)
    }

    /// Returns the account whose primary address is `address`.
    pub fn account_by_address(&self, address: &str) -> Result<Option<Account>> {
        match self.resolve_address(address)? {
            Some(AddressTarget::Account(id)) => self.account(id),
            _ => Ok(None),
        }
    }

    /// Returns an account's credentials.
    pub fn credentials(&self, account_id: u64) -> Result<Option<Credentials>> {
        get(&self.db(), ks::CREDENTIALS, &ks::id_key(account_id))
    }

    /// Lists an account's mailboxes in id order.
    pub fn mailboxes(&self, account_id: u64) -> Result<Vec<Mailbox>> {
        let rows = scan(&self.db(), ks::MAILBOXES, &ks::id_key(account_id))?;
        Ok(rows.into_iter().map(|(_, mailbox)| mailbox).collect())
    }

    /// Returns a mailbox by name.
    pub fn mailbox_by_name(&self, account_id: u64, name: &str) -> Result<Option<Mailbox>> {
        let db = self.db();
        let Some(id) = get_u64(&db, ks::MAILBOX_NAMES, &ks::mailbox_name_key(account_id, name))? else {
            return Ok(None);
        };
        get(&db, ks::MAILBOXES, &ks::mailbox_key(account_id, id))
    }

    /// Lists the messages of a mailbox in UID order.
    pub fn messages(&self, account_id: u64, mailbox_id: u64) -> Result<Vec<MessageRecord>> {
        let rows = scan(&self.db(), ks::MESSAGES, &ks::mailbox_key(account_id, mailbox_id))?;
        Ok(rows.into_iter().map(|(_, message)| message).collect())
    }

    /// Returns a mailbox by id.
    pub fn mailbox(&self, account_id: u64, mailbox_id: u64) -> Result<Option<Mailbox>> {
        get(&self.db(), ks::MAILBOXES, &ks::mailbox_key(account_id, mailbox_id))
    }

    /// Returns the summary stored with a blob's first delivery, if any.
    pub fn summary(&self, blob: &BlobId) -> Result<Option<Vec<u8>>> {
        let db = self.db();
        Ok(db.get_cf(&cf(&db, ks::SUMMARIES), blob.as_bytes())?)
    }

    /// Returns the messages of a mailbox with UIDs in `first..=last`, in UID order.
    pub fn messages_between(
        &self,
        account_id: u64,
        mailbox_id: u64,
        first: u32,
        last: u32,
    ) -> Result<Vec<MessageRecord>> {
        let db = self.db();
        let prefix = ks::mailbox_key(account_id, mailbox_id);
        let start = ks::message_key(account_id, mailbox_id, first);
        let end = match last.checked_add(1) {
            Some(after) => Some(ks::message_key(account_id, mailbox_id, after).to_vec()),
            None => prefix_end(&prefix),
        };
        let mut out = Vec::new();
        for item in range_iter(&db, ks::MESSAGES, &start, end) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) || ks::uid_of_message_key(&key).is_none_or(|uid| uid > last) {
                break;
            }
            out.push(decode_value(&value)?);
        }
        Ok(out)
    }

    /// Calls `visit` with each message of a mailbox in UID order, without holding them all.
    pub fn for_each_message(
        &self,
        account_id: u64,
        mailbox_id: u64,
        mut visit: impl FnMut(MessageRecord),
    ) -> Result<()> {
        let db = self.db();
        let prefix = ks::mailbox_key(account_id, mailbox_id);
        for item in range_iter(&db, ks::MESSAGES, &prefix, prefix_end(&prefix)) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            visit(decode_value(&value)?);
        }
        Ok(())
    }

    /// Returns one message of a mailbox.
    pub fn message(&self, account_id: u64, mailbox_id: u64, uid: u32) -> Result<Option<MessageRecord>> {
        get(&self.db(), ks::MESSAGES, &ks::message_key(account_id, mailbox_id, uid))
    }

    /// Lists the names an account subscribed to, sorted.
    pub fn subscriptions(&self, account_id: u64) -> Result<Vec<String>> {
        let db = self.db();
        let mut out = Vec::new();
        let prefix = ks::id_key(account_id);
        for item in range_iter(&db, ks::SUBSCRIPTIONS, &prefix, prefix_end(&prefix)) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(String::from_utf8_lossy(&key[8..]).into_owned());
        }
        Ok(out)
    }

    /// Returns the reference count record of a blob.
    pub fn blob_ref(&self, blob: &BlobId) -> Result<Option<BlobRef>> {
        get(&self.db(), ks::BLOB_REFS, blob.as_bytes())
    }

    /// Lists blobs that have had no reference since before `zero_before_ms` (candidates for
    /// garbage collection), at most `limit`.
    pub fn unreferenced_blobs(&self, zero_before_ms: u64, limit: usize) -> Result<Vec<BlobId>> {
        let db = self.db();
        let mut out = Vec::new();
        for item in db.iterator_cf(&cf(&db, ks::BLOB_REFS), IteratorMode::Start) {
            let (key, value) = item?;
            let record: BlobRef = decode_value(&value)?;
            let expired = record.zero_since_ms.is_some_and(|since| since < zero_before_ms);
            // A claimed blob whose deletion did not finish (the collector stopped) is listed
            // too, so the next round completes it.
            if record.count == 0 && (expired || record.deleting) {
                out.push(BlobId::from_slice(&key).ok_or_else(|| Error::corrupt("blob ref key"))?);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The server that gets mail for a domain's unknown local parts, if one is set.
    pub fn unknown_forward(&self, domain: &str) -> Result<Option<String>> {
        get(&self.db(), ks::UNKNOWN_FORWARDS, domain.as_bytes())
    }

    /// Whether any domain has a DKIM key (one seek).
    pub fn has_dkim_keys(&self) -> Result<bool> {
        let db = self.db();
        let first = db.iterator_cf(&cf(&db, ks::DKIM_KEYS), IteratorMode::Start).next().transpose()?;
        Ok(first.is_some())
    }

    /// Returns a domain's DKIM keys, by selector.
    pub fn dkim_keys(&self, domain: &str) -> Result<Vec<DkimKey>> {
        Ok(scan::<DkimKey>(&self.db(), ks::DKIM_KEYS, &ks::domain_prefix(domain))?
            .into_iter()
            .map(|(_, key)| key)
            .collect())
    }

    /// Returns the cluster CA, once `wmail cluster token` made one.
    pub fn cluster_ca(&self) -> Result<Option<ClusterCa>> {
        get(&self.db(), ks::CLUSTER, ks::CLUSTER_CA)
    }

    /// Returns an unspent join token by the SHA-256 of its secret (expired ones included).
    pub fn join_token(&self, hash: &[u8; 32]) -> Result<Option<JoinToken>> {
        get(&self.db(), ks::CLUSTER, &ks::join_token_key(hash))
    }

    /// Returns what a spent join token was spent on, until it would have expired.
    pub fn spent_join_token(&self, hash: &[u8; 32]) -> Result<Option<SpentJoinToken>> {
        get(&self.db(), ks::CLUSTER, &ks::spent_join_token_key(hash))
    }

    /// Returns the node whose admin token has this SHA-256, if it is valid cluster-wide.
    pub fn admin_token_node(&self, hash: &[u8; 32]) -> Result<Option<u64>> {
        get(&self.db(), ks::CLUSTER, &ks::admin_token_key(hash))
    }

    /// Returns the ids of the nodes whose certificates are revoked (removed nodes).
    pub fn revoked_nodes(&self) -> Result<Vec<u64>> {
        let revoked = scan::<u64>(&self.db(), ks::CLUSTER, ks::REVOKED_NODES)?;
        Ok(revoked
            .into_iter()
            .filter_map(|(key, _)| Some(u64::from_be_bytes(key.get(ks::REVOKED_NODES.len()..)?.try_into().ok()?)))
            .collect())
    }

    /// Returns a node admitted with a join token.
    pub fn enrolled_node(&self, node_id: u64) -> Result<Option<EnrolledNode>> {
        get(&self.db(), ks::CLUSTER, &ks::enrolled_node_key(node_id))
    }

    /// Returns one outbound queue entry.
    pub fn queue_entry(&self, id: u64) -> Result<Option<QueueEntry>> {
        get(&self.db(), ks::QUEUE, &ks::id_key(id))
    }

    /// Returns the ids of queue entries due at `now_ms` (next attempt reached, no live
    /// lease), the longest-waiting first, at most `limit`. Reads only the due index.
    pub fn due_outbound(&self, now_ms: u64, limit: usize) -> Result<Vec<u64>> {
        let db = self.db();
        let mut out = Vec::new();
        // The bound stops the iterator at `now` instead of stepping over the tombstones of
        // later keys to find the first live one; those before the first live key are
        // removed by `compact_queue_index`.
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(ks::queue_due_key(now_ms.saturating_add(1), 0).to_vec());
        for item in db.iterator_cf_opt(&cf(&db, ks::QUEUE_DUE), options, IteratorMode::Start) {
            let (key, _) = item?;
            let due = u64::from_be_bytes(key[..8].try_into().map_err(|_| Error::corrupt("queue due key"))?);
            if due > now_ms || out.len() >= limit {
                break;
            }
            out.push(u64::from_be_bytes(key[8..16].try_into().map_err(|_| Error::corrupt("queue due key"))?));
        }
        Ok(out)
    }

    /// Whether enough keys were deleted from the due index for [`Self::compact_queue_index`]
    /// to be worth its cost.
    pub fn queue_index_wants_compaction(&self) -> bool {
        self.queue_due_deletes.load(std::sync::atomic::Ordering::Relaxed) >= QUEUE_DUE_COMPACT_AFTER
    }

    /// Compacts the due index once enough keys were deleted from it, so scans from its
    /// start stop stepping over their tombstones. Cheap (the index holds 16-byte keys);
    /// call it from a background task. Returns whether it compacted.
    pub fn compact_queue_index(&self) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if !self.queue_index_wants_compaction() {
            return Ok(false);
        }
        // Taking the count makes concurrent callers see too few and leave it to this one.
        let deletes = self.queue_due_deletes.swap(0, Ordering::Relaxed);
        if deletes < QUEUE_DUE_COMPACT_AFTER {
            self.queue_due_deletes.fetch_add(deletes, Ordering::Relaxed);
            return Ok(false);
        }
        let db = self.db();
        let index = cf(&db, ks::QUEUE_DUE);
        // Tombstones in the memtable are only dropped once flushed, and those in the bottom
        // level only by a forced rewrite of it (a plain compaction leaves that level alone).
        db.flush_cf(&index)?;
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        db.compact_range_cf_opt(&index, None::<&[u8]>, None::<&[u8]>, &options);
        Ok(true)
    }

    /// Lists queue entries with ids above `after`, oldest first, at most `limit`.
    pub fn outbound_queue(&self, after: u64, limit: usize) -> Result<Vec<QueueEntry>> {
        let db = self.db();
        let start = ks::id_key(after.saturating_add(1));
        let mut out = Vec::new();
        for item in db.iterator_cf(&cf(&db, ks::QUEUE), IteratorMode::From(&start, Direction::Forward)) {
            if out.len() >= limit {
                break;
            }
            let (_, value) = item?;
            out.push(decode_value(&value)?);
        }
        Ok(out)
    }

    /// The number of entries in the outbound queue.
    pub fn queue_length(&self) -> Result<u64> {
        Ok(get_u64(&self.db(), ks::META, ks::META_QUEUE_LENGTH)?.unwrap_or(0))
    }

    /// Lists every lease with its resource name.
    pub fn leases(&self) -> Result<Vec<(String, Lease)>> {
        let rows = scan::<Lease>(&self.db(), ks::LEASES, &[])?;
        Ok(rows.into_iter().map(|(key, lease)| (String::from_utf8_lossy(&key).into_owned(), lease)).collect())
    }

    /// The login block of `kind` (`address` or `account`) and `key`, lapsed or not.
    pub fn block(&self, kind: &str, key: &str) -> Result<Option<BlockRecord>> {
        get(&self.db(), ks::SECURITY, &ks::block_key(kind, key))
    }

    /// Every login block: (kind, key, block).
    pub fn blocks(&self) -> Result<Vec<(String, String, BlockRecord)>> {
        let rows = scan::<BlockRecord>(&self.db(), ks::SECURITY, ks::BLOCKS)?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, block)| {
                let text = String::from_utf8_lossy(&key[ks::BLOCKS.len()..]).into_owned();
                let (kind, key) = text.split_once('/')?;
                Some((kind.to_owned(), key.to_owned(), block))
            })
            .collect())
    }

    /// An account's quarantined messages, oldest first.
    pub fn quarantined(&self, account_id: u64) -> Result<Vec<QuarantineEntry>> {
        let prefix = [ks::QUARANTINE.as_slice(), &ks::id_key(account_id)].concat();
        Ok(scan::<QuarantineEntry>(&self.db(), ks::SECURITY, &prefix)?.into_iter().map(|(_, entry)| entry).collect())
    }

    /// Every quarantined message, by account then id, at most `limit`.
    pub fn all_quarantined(&self, limit: usize) -> Result<Vec<QuarantineEntry>> {
        let db = self.db();
        let mut out = Vec::new();
        let mode = IteratorMode::From(ks::QUARANTINE.as_slice(), Direction::Forward);
        for item in db.iterator_cf(&cf(&db, ks::SECURITY), mode) {
            let (key, value) = item?;
            if !key.starts_with(ks::QUARANTINE.as_slice()) || out.len() >= limit {
                break;
            }
            out.push(decode_value(&value)?);
        }
        Ok(out)
    }

    /// The label an account's message was learnt with (`Some(true)`: spam), if any.
    pub fn bayes_label(&self, account_id: u64, blob: &BlobId) -> Result<Option<bool>> {
        let db = self.db();
        let label = db.get_cf(&cf(&db, ks::SECURITY), ks::bayes_trained_key(account_id, blob.as_bytes()))?;
        Ok(label.and_then(|label| label.first().map(|&byte| byte == 1)))
    }

    /// How many new Bayes lessons (not corrections) an account gave on the day of `now_ms`.
    pub fn bayes_lessons_today(&self, account_id: u64, now_ms: u64) -> Result<u64> {
        let db = self.db();
        let (day, count) =
            decode_pair(db.get_cf(&cf(&db, ks::SECURITY), ks::bayes_lessons_key(account_id))?.as_deref());
        Ok(if day == now_ms / DAY_MS { count } else { 0 })
    }

    /// A domain's trained (spam, ham) message totals.
    pub fn bayes_totals(&self, domain: &str) -> Result<(u64, u64)> {
        let db = self.db();
        Ok(decode_pair(db.get_cf(&cf(&db, ks::SECURITY), ks::bayes_totals_key(domain))?.as_deref()))
    }

    /// A domain's classifier: its trained (spam, ham) message totals and each token's
    /// (spam, ham) counts.
    #[allow(clippy::type_complexity)]
    pub fn bayes_counts(&self, domain: &str, tokens: &[u64]) -> Result<((u64, u64), Vec<(u64, u64)>)> {
        let db = self.db();
        let security = cf(&db, ks::SECURITY);
        let totals = decode_pair(db.get_cf(&security, ks::bayes_totals_key(domain))?.as_deref());
        let keys: Vec<Vec<u8>> = tokens.iter().map(|&token| ks::bayes_token_key(domain, token)).collect();
        let mut counts = Vec::with_capacity(keys.len());
        for value in db.multi_get_cf(keys.iter().map(|key| (&security, key))) {
            counts.push(decode_pair(value?.as_deref()));
        }
        Ok((totals, counts))
    }

    /// Whether an account always accepts mail from `sender`.
    pub fn is_allowed_sender(&self, account_id: u64, sender: &str) -> Result<bool> {
        Ok(self
            .db()
            .get_cf(&cf(&self.db(), ks::SECURITY), ks::allowed_sender_key(account_id, &sender.to_lowercase()))?
            .is_some())
    }

    /// The senders an account always accepts.
    pub fn allowed_senders(&self, account_id: u64) -> Result<Vec<String>> {
        let prefix = [ks::ALLOWED_SENDERS.as_slice(), &ks::id_key(account_id)].concat();
        let db = self.db();
        let mut out = Vec::new();
        for item in range_iter(&db, ks::SECURITY, &prefix, prefix_end(&prefix)) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// What is known of a greylisting triplet.
    pub fn greylist(&self, triplet: &[u8; 16]) -> Result<Option<GreylistEntry>> {
        get(&self.db(), ks::SECURITY, &ks::greylist_key(triplet))
    }

    /// Returns the UIDs expunged from a mailbox with a MODSEQ above `after`, ascending by
    /// MODSEQ (RFC 7162 §3.2.5.2 `VANISHED (EARLIER)`).
    pub fn expunged_since(&self, account_id: u64, mailbox_id: u64, after: u64) -> Result<Vec<u32>> {
        let db = self.db();
        let prefix = ks::mailbox_key(account_id, mailbox_id);
        let start = ks::expunged_key(account_id, mailbox_id, after.saturating_add(1), 0);
        let mut out = Vec::new();
        for item in range_iter(&db, ks::EXPUNGED, &start, prefix_end(&prefix)) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.push(u32::from_be_bytes(key[24..28].try_into().map_err(|_| Error::corrupt("expunged key"))?));
        }
        Ok(out)
    }

    /// Returns the id of an account's latest change-log entry (0 when there is none).
    pub fn last_change_id(&self, account_id: u64) -> Result<u64> {
        let db = self.db();
        let prefix = ks::id_key(account_id);
        let end = ks::change_key(account_id, u64::MAX);
        // Bounded below by the account's prefix, so a log trimmed to tombstones is not walked
        // past into the previous account's.
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(prefix.to_vec());
        let mut iterator =
            db.iterator_cf_opt(&cf(&db, ks::CHANGES), options, IteratorMode::From(&end, Direction::Reverse));
        match iterator.next().transpose()? {
            Some((key, _)) if key.starts_with(&prefix) => {
                Ok(u64::from_be_bytes(key[8..16].try_into().map_err(|_| Error::corrupt("change key"))?))
            }
            _ => Ok(0),
        }
    }

    /// Returns the id up to which an account's change log was trimmed (0: nothing trimmed).
    pub fn change_floor(&self, account_id: u64) -> Result<u64> {
        let db = self.db();
        Ok(match db.get_cf(&cf(&db, ks::CHANGES), ks::change_key(account_id, 0))? {
            Some(bytes) if bytes.len() == 16 => u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            _ => 0,
        })
    }

    /// Returns an account's change-log entries with an id greater than `after`.
    pub fn changes_since(&self, account_id: u64, after: u64) -> Result<Vec<(u64, Change)>> {
        let db = self.db();
        let prefix = ks::id_key(account_id);
        let start = ks::change_key(account_id, after.saturating_add(1));
        let mut out = Vec::new();
        for item in range_iter(&db, ks::CHANGES, &start, prefix_end(&prefix)) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let change_id = u64::from_be_bytes(key[8..16].try_into().expect("change key"));
            out.push((change_id, decode_value(&value)?));
        }
        Ok(out)
    }
}

/// The smallest key above every key that starts with `prefix` (None when there is none:
/// the prefix is all 0xff bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Iterates `table` forward from `start` to just below `end`. With the bound, RocksDB
/// stops there instead of stepping over every deleted key behind the range to find the
/// next live one: expunged messages and trimmed change logs leave such tombstones until
/// compaction removes them, and a mailbox scan paid for its neighbours' deletions.
fn range_iter<'a>(
    db: &'a DB,
    table: &str,
    start: &[u8],
    end: Option<Vec<u8>>,
) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
    let mut options = rocksdb::ReadOptions::default();
    if let Some(end) = end {
        options.set_iterate_upper_bound(end);
    }
    db.iterator_cf_opt(cf(db, table), options, IteratorMode::From(start, Direction::Forward))
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // Every column family is checked at open time.
    db.cf_handle(name).expect("column family checked at open")
}

fn get<T: DeserializeOwned>(db: &DB, table: &str, key: &[u8]) -> Result<Option<T>> {
    db.get_pinned_cf(&cf(db, table), key)?.map(|bytes| decode_value(&bytes)).transpose()
}

fn get_u64(db: &DB, table: &str, key: &[u8]) -> Result<Option<u64>> {
    match db.get_pinned_cf(&cf(db, table), key)? {
        Some(bytes) => Ok(Some(u64::from_be_bytes(
            bytes.as_ref().try_into().map_err(|_| Error::corrupt(format!("counter in {table}")))?,
        ))),
        None => Ok(None),
    }
}

fn scan<T: DeserializeOwned>(db: &DB, table: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, T)>> {
    let mut out = Vec::new();
    for item in range_iter(db, table, prefix, prefix_end(prefix)) {
        let (key, value) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_vec(), decode_value(&value)?));
    }
    Ok(out)
}

/// Writes not yet in the database: `(table, key)` to the new value, or `None` to delete.
type Pending = BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

/// One command's view and writes. Reads see this command's writes, then those of earlier
/// commands of the same entry, then the database; the few values a command both reads and
/// changes (counters, accounts, mailboxes, blob refs) are cached as typed records until
/// [`Tx::finish`]. Dropping a `Tx` discards the command.
struct Tx<'a> {
    db: &'a DB,
    earlier: &'a Pending,
    pending: Pending,
    counters: HashMap<&'static [u8], u64>,
    accounts: HashMap<u64, Account>,
    mailboxes: HashMap<(u64, u64), Mailbox>,
    blob_refs: HashMap<BlobId, BlobRef>,
    now_ms: u64,
    log_index: u64,
    /// Accounts whose change log this command extended.
    touched_accounts: Vec<u64>,
    /// Messages this command expunged: account, mailbox, the record as it was.
    expunged: Vec<(u64, u64, MessageRecord)>,
}

fn vanished(what: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("{what} vanished during apply"))
}

impl<'a> Tx<'a> {
    fn new(db: &'a DB, earlier: &'a Pending, log_index: u64, now_ms: u64) -> Self {
        Self {
            db,
            earlier,
            pending: Pending::new(),
            counters: HashMap::new(),
            accounts: HashMap::new(),
            mailboxes: HashMap::new(),
            blob_refs: HashMap::new(),
            now_ms,
            log_index,
            touched_accounts: Vec::new(),
            expunged: Vec::new(),
        }
    }

    fn get_raw(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let overlay_key = (table, key.to_vec());
        if let Some(value) = self.pending.get(&overlay_key).or_else(|| self.earlier.get(&overlay_key)) {
            return Ok(value.clone());
        }
        Ok(self.db.get_cf(cf(self.db, table), key)?)
    }

    fn get<T: DeserializeOwned>(&self, table: &'static str, key: &[u8]) -> Result<Option<T>> {
        self.get_raw(table, key)?.map(|bytes| decode_value(&bytes)).transpose()
    }

    fn get_u64(&self, table: &'static str, key: &[u8]) -> Result<Option<u64>> {
        match self.get_raw(table, key)? {
            Some(bytes) => Ok(Some(u64::from_be_bytes(
                bytes.as_slice().try_into().map_err(|_| Error::corrupt(format!("counter in {table}")))?,
            ))),
            None => Ok(None),
        }
    }

    /// Returns every row whose key starts with `prefix`, pending writes included.
    fn scan_raw(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rows = BTreeMap::new();
        for item in range_iter(self.db, table, prefix, prefix_end(prefix)) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            rows.insert(key.to_vec(), value.to_vec());
        }
        for overlay in [self.earlier, &self.pending] {
            for ((entry_table, key), value) in overlay.range((table, prefix.to_vec())..) {
                if *entry_table != table || !key.starts_with(prefix) {
                    break;
                }
                match value {
                    Some(value) => rows.insert(key.clone(), value.clone()),
                    None => rows.remove(key),
                };
            }
        }
        Ok(rows.into_iter().collect())
    }

    fn scan<T: DeserializeOwned>(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, T)>> {
        self.scan_raw(table, prefix)?.into_iter().map(|(key, value)| Ok((key, decode_value(&value)?))).collect()
    }

    fn put_raw(&mut self, table: &'static str, key: &[u8], value: Vec<u8>) {
        self.pending.insert((table, key.to_vec()), Some(value));
    }

    fn put<T: Serialize>(&mut self, table: &'static str, key: &[u8], value: &T) {
        self.put_raw(table, key, encode_value(value));
    }

    fn delete(&mut self, table: &'static str, key: &[u8]) {
        self.pending.insert((table, key.to_vec()), None);
    }

    /// Flushes cached records into the pending writes and returns them.
    fn finish(mut self) -> Pending {
        for (key, value) in std::mem::take(&mut self.counters) {
            self.put_raw(ks::META, key, value.to_be_bytes().to_vec());
        }
        for (id, account) in std::mem::take(&mut self.accounts) {
            self.put(ks::PRINCIPALS, &ks::id_key(id), &account);
        }
        for ((account_id, mailbox_id), mailbox) in std::mem::take(&mut self.mailboxes) {
            self.put(ks::MAILBOXES, &ks::mailbox_key(account_id, mailbox_id), &mailbox);
        }
        for (blob, record) in std::mem::take(&mut self.blob_refs) {
            self.put(ks::BLOB_REFS, blob.as_bytes(), &record);
        }
        self.pending
    }

    fn next_id(&mut self, counter: &'static [u8]) -> Result<u64> {
        let current = match self.counters.get(counter) {
            Some(value) => *value,
            None => self.get_u64(ks::META, counter)?.unwrap_or(1),
        };
        self.counters.insert(counter, current + 1);
        Ok(current)
    }

    fn account(&mut self, account_id: u64) -> Result<Option<&mut Account>> {
        if !self.accounts.contains_key(&account_id) {
            match self.get::<Account>(ks::PRINCIPALS, &ks::id_key(account_id))? {
                Some(account) => self.accounts.insert(account_id, account),
                None => return Ok(None),
            };
        }
        Ok(self.accounts.get_mut(&account_id))
    }

    fn mailbox(&mut self, account_id: u64, mailbox_id: u64) -> Result<Option<&mut Mailbox>> {
        let key = (account_id, mailbox_id);
        if !self.mailboxes.contains_key(&key) {
            match self.get::<Mailbox>(ks::MAILBOXES, &ks::mailbox_key(account_id, mailbox_id))? {
                Some(mailbox) => self.mailboxes.insert(key, mailbox),
                None => return Ok(None),
            };
        }
        Ok(self.mailboxes.get_mut(&key))
    }

    fn blob_ref(&mut self, blob: BlobId) -> Result<&mut BlobRef> {
        if !self.blob_refs.contains_key(&blob) {
            let record = self.get(ks::BLOB_REFS, blob.as_bytes())?.unwrap_or(BlobRef::UNREFERENCED);
            self.blob_refs.insert(blob, record);
        }
        Ok(self.blob_refs.get_mut(&blob).expect("inserted above"))
    }

    fn release_blob(&mut self, blob: BlobId) -> Result<()> {
        let now_ms = self.now_ms;
        let record = self.blob_ref(blob)?;
        record.count = record.count.saturating_sub(1);
        if record.count == 0 {
            record.zero_since_ms = Some(now_ms);
        }
        Ok(())
    }

    fn record_change(&mut self, account_id: u64, change: Change) -> Result<()> {
        let change_id = self.next_id(ks::META_NEXT_CHANGE_ID)?;
        if self.touched_accounts.last() != Some(&account_id) {
            self.touched_accounts.push(account_id);
        }
        self.put(ks::CHANGES, &ks::change_key(account_id, change_id), &change);
        self.bound_change_log(account_id)
    }

    /// Keeps an account's change log bounded: once it holds twice [`CHANGE_LOG_RETAIN`]
    /// entries, the oldest are dropped down to that many, and the account's floor (key 0 of
    /// its change log: floor, then count) says up to which id changes are gone. A session
    /// that last synced below the floor must resynchronise from the mailbox itself.
    fn bound_change_log(&mut self, account_id: u64) -> Result<()> {
        let meta_key = ks::change_key(account_id, 0);
        let (mut floor, mut count) = match self.get_raw(ks::CHANGES, &meta_key)? {
            Some(bytes) if bytes.len() == 16 => (
                u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")),
            ),
            _ => (0, 0),
        };
        count += 1;
        if count > 2 * CHANGE_LOG_RETAIN {
            let excess = (count - CHANGE_LOG_RETAIN) as usize;
            let rows = self.scan_raw(ks::CHANGES, &ks::id_key(account_id))?;
            for (key, _) in rows.iter().filter(|(key, _)| key[8..16] != [0; 8]).take(excess) {
                floor = u64::from_be_bytes(key[8..16].try_into().expect("change key"));
                self.delete(ks::CHANGES, key);
            }
            count = CHANGE_LOG_RETAIN;
        }
        let mut value = floor.to_be_bytes().to_vec();
        value.extend_from_slice(&count.to_be_bytes());
        self.put_raw(ks::CHANGES, &meta_key, value);
        Ok(())
    }

    /// Applies one command. `Ok(Err(_))` is a refusal: the caller drops this `Tx`.
    fn apply(&mut self, command: Command) -> Result<CommandResult> {
        match command {
            Command::CreateDomain { name } => self.create_domain(name),
            Command::RemoveDomain { name } => self.remove_domain(&name),
            Command::CreateDomainAlias { alias, target } => self.create_domain_alias(alias, target),
            Command::SetCatchAll { domain, address } => self.set_catch_all(&domain, address),
            Command::SetUnknownForward { domain, target } => self.set_unknown_forward(&domain, target),
            Command::CreateAccount { address, display_name, password_hash, quota_bytes, state } => {
                self.create_account(address, display_name, password_hash, quota_bytes, state)
            }
            Command::UpdateAccount { address, display_name, password_hash, quota_bytes, state } => {
                self.update_account(&address, display_name, password_hash, quota_bytes, state)
            }
            Command::SetAccountAccess { address, disabled_services, send_as } => {
                self.set_account_access(&address, disabled_services, send_as)
            }
            Command::SetDomainServices { domain, disabled_services } => {
                self.set_domain_services(&domain, disabled_services)
            }
            Command::RemoveAccount { address } => self.remove_account(&address),
            Command::CreateAlias { alias, targets } => self.create_alias(&alias, targets),
            Command::RemoveAlias { alias } => self.remove_alias(&alias),
            Command::CreateMailbox { account_id, name, special_use } => {
                self.create_mailbox_with_superiors(account_id, name, special_use)
            }
            Command::RenameMailbox { account_id, from, to } => self.rename_mailbox(account_id, &from, &to),
            Command::DeleteMailbox { account_id, name } => self.delete_mailbox(account_id, &name),
            Command::SetSubscription { account_id, name, subscribed } => {
                let key = ks::mailbox_name_key(account_id, &name);
                if subscribed {
                    self.put_raw(ks::SUBSCRIPTIONS, &key, Vec::new());
                } else {
                    self.delete(ks::SUBSCRIPTIONS, &key);
                }
                Ok(Ok(Outcome::Done))
            }
            Command::CopyMessages { account_id, from_mailbox, uids, to_mailbox, remove_source } => {
                self.copy_messages(account_id, from_mailbox, &uids, to_mailbox, remove_source)
            }
            Command::ClaimRecent { account_id, mailbox_id } => {
                let Some(mailbox) = self.mailbox(account_id, mailbox_id)? else {
                    return Ok(Err(CommandError::not_found("mailbox", mailbox_id)));
                };
                let first_recent_uid = mailbox.first_recent_uid;
                mailbox.first_recent_uid = mailbox.uid_next;
                Ok(Ok(Outcome::RecentClaimed { first_recent_uid }))
            }
            Command::ClaimRecentUpTo { account_id, mailbox_id, up_to } => {
                let Some(mailbox) = self.mailbox(account_id, mailbox_id)? else {
                    return Ok(Err(CommandError::not_found("mailbox", mailbox_id)));
                };
                let first_recent_uid = mailbox.first_recent_uid;
                mailbox.first_recent_uid = first_recent_uid.max(up_to.min(mailbox.uid_next));
                Ok(Ok(Outcome::RecentClaimed { first_recent_uid }))
            }
            Command::Deliver {
                blob,
                stored_after_index,
                size,
                internal_date_ms,
                flags,
                summary,
                threading,
                targets,
                outbound,
            } => {
                let mut result = self.deliver(
                    blob,
                    stored_after_index,
                    size,
                    internal_date_ms,
                    flags,
                    threading.as_ref(),
                    &targets,
                )?;
                if let (Ok(Outcome::Delivered { queue_id, .. }), Some(envelope)) = (&mut result, outbound) {
                    *queue_id = Some(self.enqueue(blob, size, envelope)?);
                }
                let stored = matches!(&result, Ok(Outcome::Delivered { results, .. })
                    if results.iter().any(|r| matches!(r, DeliveryResult::Stored { .. })));
                if let (true, Some(summary)) = (stored, summary)
                    && self.get_raw(ks::SUMMARIES, blob.as_bytes())?.is_none()
                {
                    self.put_raw(ks::SUMMARIES, blob.as_bytes(), summary);
                }
                Ok(result)
            }
            Command::SetFlags { account_id, mailbox_id, uids, action, flags, unchanged_since } => {
                self.set_flags(account_id, mailbox_id, &uids, action, flags, unchanged_since)
            }
            Command::Expunge { account_id, mailbox_id, uids } => self.expunge(account_id, mailbox_id, &uids),
            Command::ClaimBlobForDeletion { blob, grace_ms } => self.claim_blob(blob, grace_ms),
            Command::ForgetBlob { blob } => self.forget_blob(blob),
            Command::AcquireLease { resource, holder, until_ms } => self.acquire_lease(resource, holder, until_ms),
            Command::ReleaseLease { resource, holder } => self.release_lease(&resource, &holder),
            Command::ClaimOutbound { ids, holder, until_ms } => self.claim_outbound(&ids, holder, until_ms),
            Command::RecordAttempt { id, holder, results, next_attempt_ms, delay_notified } => {
                self.record_attempt(id, &holder, results, next_attempt_ms, delay_notified)
            }
            Command::AddDkimKey { domain, key } => self.add_dkim_key(&domain, key),
            Command::ActivateDkimKey { domain, selector } => self.activate_dkim_key(&domain, &selector),
            Command::RemoveDkimKey { domain, selector } => self.remove_dkim_key(&domain, &selector),
            Command::RetryOutbound { ids } => self.retry_outbound(&ids),
            Command::RemoveOutbound { id } => self.remove_outbound(id),
            Command::SetClusterCa { ca } => {
                if self.get_raw(ks::CLUSTER, ks::CLUSTER_CA)?.is_none() {
                    self.put(ks::CLUSTER, ks::CLUSTER_CA, &ca);
                }
                Ok(Ok(Outcome::Done))
            }
            Command::AddJoinToken { hash, token } => self.add_join_token(&hash, token),
            Command::EnrolNode { hash, addr, taken } => self.enrol_node(&hash, addr, &taken, None),
            Command::EnrolNodeKey { hash, addr, taken, key } => self.enrol_node(&hash, addr, &taken, Some(key)),
            Command::AddAdminToken { hash, node_id } => {
                self.put(ks::CLUSTER, &ks::admin_token_key(&hash), &node_id);
                Ok(Ok(Outcome::Done))
            }
            Command::SetBlock { kind, key, block } => {
                let row = ks::block_key(&kind, &key);
                match block {
                    Some(block) => self.put(ks::SECURITY, &row, &block),
                    None if self.get_raw(ks::SECURITY, &row)?.is_none() => {
                        return Ok(Err(CommandError::not_found("block", format!("{kind} {key}"))));
                    }
                    None => self.delete(ks::SECURITY, &row),
                }
                Ok(Ok(Outcome::Done))
            }
            Command::RecordGreylist { triplet, entry, previous } => {
                let row = ks::greylist_key(&triplet);
                let current = self.get::<GreylistEntry>(ks::SECURITY, &row)?;
                if current != previous {
                    return Ok(Ok(Outcome::Done)); // changed meanwhile: the newer state stands
                }
                if let Some(old) = current {
                    self.delete(ks::SECURITY, &ks::greylist_time_key(old.last_activity_ms(), &triplet));
                }
                self.put(ks::SECURITY, &row, &entry);
                self.put_raw(ks::SECURITY, &ks::greylist_time_key(entry.last_activity_ms(), &triplet), Vec::new());
                Ok(Ok(Outcome::Done))
            }
            Command::PruneSecurity { greylist_before_ms, limit } => self.prune_security(greylist_before_ms, limit),
            Command::Quarantine { blob, stored_after_index, size, summary, threading, account_ids, info } => {
                let record = *self.blob_ref(blob)?;
                let copy_may_be_deleted = record.deleted_at_index.is_some_and(|deleted| stored_after_index < deleted);
                if record.deleting || copy_may_be_deleted {
                    return Ok(Err(CommandError::BlobCollected { blob: blob.to_hex() }));
                }
                let now_ms = self.now_ms;
                let mut ids = Vec::new();
                for account_id in account_ids {
                    if self.account(account_id)?.is_none() {
                        continue;
                    }
                    let id = self.next_id(ks::META_NEXT_QUARANTINE_ID)?;
                    let entry = QuarantineEntry {
                        id,
                        account_id,
                        blob,
                        size,
                        received_ms: now_ms,
                        sender: info.sender.clone(),
                        from: info.from.clone(),
                        subject: info.subject.clone(),
                        reason: info.reason.clone(),
                        notified: false,
                        threading: threading.clone(),
                    };
                    self.put(ks::SECURITY, &ks::quarantine_key(account_id, id), &entry);
                    self.put_raw(ks::SECURITY, &ks::quarantine_time_key(now_ms, account_id, id), Vec::new());
                    let blob_ref = self.blob_ref(blob)?;
                    blob_ref.count += 1;
                    blob_ref.zero_since_ms = None;
                    ids.push((account_id, id));
                }
                let blob_ref = self.blob_ref(blob)?;
                blob_ref.deleted_at_index = None;
                if blob_ref.count == 0 && blob_ref.zero_since_ms.is_none() {
                    blob_ref.zero_since_ms = Some(now_ms);
                }
                if let (false, Some(summary)) = (ids.is_empty(), summary)
                    && self.get_raw(ks::SUMMARIES, blob.as_bytes())?.is_none()
                {
                    self.put_raw(ks::SUMMARIES, blob.as_bytes(), summary);
                }
                Ok(Ok(Outcome::Quarantined { ids }))
            }
            Command::ReleaseQuarantined { account_id, id } => {
                let Some(entry) = self.get::<QuarantineEntry>(ks::SECURITY, &ks::quarantine_key(account_id, id))?
                else {
                    return Ok(Err(CommandError::not_found("quarantined message", id)));
                };
                // The quarantine's reference keeps the blob, so no collection can race this.
                let target = DeliveryTarget { account_id, mailbox_id: None };
                let log_index = self.log_index;
                let result = self.deliver(
                    entry.blob,
                    log_index,
                    entry.size,
                    entry.received_ms,
                    Vec::new(),
                    entry.threading.as_ref(),
                    &[target],
                )?;
                if matches!(&result, Ok(Outcome::Delivered { results, .. })
                    if matches!(results.first(), Some(DeliveryResult::Stored { .. })))
                {
                    self.drop_quarantined(account_id, &[id])?;
                }
                Ok(result)
            }
            Command::DropQuarantined { account_id, ids } => {
                self.drop_quarantined(account_id, &ids)?;
                Ok(Ok(Outcome::Done))
            }
            Command::MarkQuarantineNotified { account_id, ids } => {
                for id in ids {
                    let key = ks::quarantine_key(account_id, id);
                    if let Some(mut entry) = self.get::<QuarantineEntry>(ks::SECURITY, &key)? {
                        entry.notified = true;
                        self.put(ks::SECURITY, &key, &entry);
                    }
                }
                Ok(Ok(Outcome::Done))
            }
            Command::PurgeQuarantine { before_ms, limit } => self.purge_quarantine(before_ms, limit),
            Command::TrainBayes { domain, spam, tokens, account_id, blob } => {
                let trained = ks::bayes_trained_key(account_id, blob.as_bytes());
                let earlier = self.get_raw(ks::SECURITY, &trained)?.and_then(|label| label.first().map(|&l| l == 1));
                if earlier == Some(spam) {
                    return Ok(Ok(Outcome::Done)); // already learnt so
                }
                let mut tokens = tokens;
                tokens.sort_unstable();
                tokens.dedup();
                // Undo the opposite lesson first (a message moved back), then learn.
                let lessons: Vec<(bool, i64)> = match earlier {
                    Some(label) => vec![(label, -1), (spam, 1)],
                    None => vec![(spam, 1)],
                };
                for (label, delta) in lessons {
                    let adjust = |counts: Option<Vec<u8>>| {
                        let (mut spam_count, mut ham_count) = decode_pair(counts.as_deref());
                        let count = if label { &mut spam_count } else { &mut ham_count };
                        *count = count.saturating_add_signed(delta);
                        [spam_count.to_be_bytes(), ham_count.to_be_bytes()].concat()
                    };
                    let totals = ks::bayes_totals_key(&domain);
                    let value = adjust(self.get_raw(ks::SECURITY, &totals)?);
                    self.put_raw(ks::SECURITY, &totals, value);
                    for &token in &tokens {
                        let key = ks::bayes_token_key(&domain, token);
                        let value = adjust(self.get_raw(ks::SECURITY, &key)?);
                        self.put_raw(ks::SECURITY, &key, value);
                    }
                }
                self.put_raw(ks::SECURITY, &trained, vec![u8::from(spam)]);
                if earlier.is_some() {
                    return Ok(Ok(Outcome::Done)); // a correction is not a new lesson
                }
                // The account's new lessons today (the day of the entry's time, so every
                // node counts alike), which its next proposals are held to.
                let today = self.now_ms / DAY_MS;
                let lessons = ks::bayes_lessons_key(account_id);
                let (day, count) = decode_pair(self.get_raw(ks::SECURITY, &lessons)?.as_deref());
                let count = if day == today { count + 1 } else { 1 };
                self.put_raw(ks::SECURITY, &lessons, [today.to_be_bytes(), count.to_be_bytes()].concat());
                Ok(Ok(Outcome::Done))
            }
            Command::SetAllowedSender { account_id, sender, allowed } => {
                if self.account(account_id)?.is_none() {
                    return Ok(Err(CommandError::not_found("account", account_id)));
                }
                let key = ks::allowed_sender_key(account_id, &sender.to_lowercase());
                if allowed {
                    self.put_raw(ks::SECURITY, &key, Vec::new());
                } else {
                    self.delete(ks::SECURITY, &key);
                }
                Ok(Ok(Outcome::Done))
            }
            Command::RevokeNode { node_id } => {
                let now_ms = self.now_ms;
                self.put(ks::CLUSTER, &ks::revoked_node_key(node_id), &now_ms);
                // Its admin token goes too: with it, the node could mint a join token.
                for (key, owner) in self.scan::<u64>(ks::CLUSTER, b"admin/")? {
                    if owner == node_id {
                        self.delete(ks::CLUSTER, &key);
                    }
                }
                Ok(Ok(Outcome::Done))
            }
        }
    }

    fn add_join_token(&mut self, hash: &[u8; 32], token: JoinToken) -> Result<CommandResult> {
        for (key, other) in self.scan::<JoinToken>(ks::CLUSTER, b"token/")? {
            if other.expires_ms <= self.now_ms {
                self.delete(ks::CLUSTER, &key);
            }
        }
        for (key, spent) in self.scan::<SpentJoinToken>(ks::CLUSTER, ks::SPENT_JOIN_TOKENS)? {
            if spent.expires_ms <= self.now_ms {
                self.delete(ks::CLUSTER, &key);
            }
        }
        self.put(ks::CLUSTER, &ks::join_token_key(hash), &token);
        Ok(Ok(Outcome::Done))
    }

    /// Spends a join token on a node id (see [`Command::EnrolNodeKey`]; `public_key` is the
    /// SHA-256 of the joining node's key, `None` for the older [`Command::EnrolNode`]).
    fn enrol_node(
        &mut self,
        hash: &[u8; 32],
        addr: String,
        taken: &[u64],
        public_key: Option<[u8; 32]>,
    ) -> Result<CommandResult> {
        let key = ks::join_token_key(hash);
        let spent_key = ks::spent_join_token_key(hash);
        let token = match self.get::<JoinToken>(ks::CLUSTER, &key)? {
            Some(token) if token.expires_ms > self.now_ms => token,
            // The same node asking again: its answer was lost.
            _ if let Some(spent) = self.get::<SpentJoinToken>(ks::CLUSTER, &spent_key)?
                && Some(spent.key) == public_key
                && spent.expires_ms > self.now_ms
                && self.get_raw(ks::CLUSTER, &ks::revoked_node_key(spent.node_id))?.is_none() =>
            {
                return Ok(Ok(Outcome::NodeEnrolled { node_id: spent.node_id, learner: spent.learner }));
            }
            _ => {
                return Ok(Err(CommandError::Invalid(
                    "the join token is unknown, already used or expired; run `wmail cluster token` on a member for a new one"
                        .into(),
                )));
            }
        };
        self.delete(ks::CLUSTER, &key);
        let node_id = loop {
            let id = self.next_id(ks::META_NEXT_NODE_ID)?;
            if id >= 2
                && !taken.contains(&id)
                && self.get_raw(ks::CLUSTER, &ks::enrolled_node_key(id))?.is_none()
                && self.get_raw(ks::CLUSTER, &ks::revoked_node_key(id))?.is_none()
            {
                break id;
            }
        };
        let node = EnrolledNode { addr, learner: token.learner, enrolled_ms: self.now_ms };
        self.put(ks::CLUSTER, &ks::enrolled_node_key(node_id), &node);
        if let Some(public_key) = public_key {
            let spent =
                SpentJoinToken { node_id, key: public_key, learner: token.learner, expires_ms: token.expires_ms };
            self.put(ks::CLUSTER, &spent_key, &spent);
        }
        Ok(Ok(Outcome::NodeEnrolled { node_id, learner: token.learner }))
    }

    fn create_domain(&mut self, name: String) -> Result<CommandResult> {
        if self.get::<Domain>(ks::DOMAINS, name.as_bytes())?.is_some() {
            return Ok(Err(CommandError::exists("domain", name)));
        }
        let domain = Domain {
            name: name.clone(),
            created_at_ms: self.now_ms,
            alias_of: None,
            catch_all: None,
            disabled_services: Vec::new(),
        };
        self.put(ks::DOMAINS, name.as_bytes(), &domain);
        Ok(Ok(Outcome::Done))
    }

    fn create_domain_alias(&mut self, alias: String, target: String) -> Result<CommandResult> {
        if self.get::<Domain>(ks::DOMAINS, alias.as_bytes())?.is_some() {
            return Ok(Err(CommandError::exists("domain", alias)));
        }
        match self.get::<Domain>(ks::DOMAINS, target.as_bytes())? {
            None => return Ok(Err(CommandError::not_found("domain", target))),
            Some(domain) if domain.alias_of.is_some() => {
                return Ok(Err(CommandError::Invalid(format!(
                    "{target} is itself an alias; point {alias} at a real domain"
                ))));
            }
            Some(_) => {}
        }
        let domain = Domain {
            name: alias.clone(),
            created_at_ms: self.now_ms,
            alias_of: Some(target),
            catch_all: None,
            disabled_services: Vec::new(),
        };
        self.put(ks::DOMAINS, alias.as_bytes(), &domain);
        Ok(Ok(Outcome::Done))
    }

    fn set_catch_all(&mut self, name: &str, address: Option<String>) -> Result<CommandResult> {
        let Some(mut domain) = self.get::<Domain>(ks::DOMAINS, name.as_bytes())? else {
            return Ok(Err(CommandError::not_found("domain", name)));
        };
        if domain.alias_of.is_some() {
            return Ok(Err(CommandError::Invalid(format!("{name} is an alias; set the catch-all on its target"))));
        }
        domain.catch_all = address;
        self.put(ks::DOMAINS, name.as_bytes(), &domain);
        Ok(Ok(Outcome::Done))
    }

    fn set_unknown_forward(&mut self, name: &str, target: Option<String>) -> Result<CommandResult> {
        let Some(domain) = self.get::<Domain>(ks::DOMAINS, name.as_bytes())? else {
            return Ok(Err(CommandError::not_found("domain", name)));
        };
        if domain.alias_of.is_some() {
            return Ok(Err(CommandError::Invalid(format!("{name} is an alias; set forwarding on its target"))));
        }
        match target {
            Some(target) => {
                let valid = target
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                if !valid {
                    return Ok(Err(CommandError::Invalid(format!("{target:?} is not \"host:port\""))));
                }
                self.put(ks::UNKNOWN_FORWARDS, name.as_bytes(), &target);
            }
            None => self.delete(ks::UNKNOWN_FORWARDS, name.as_bytes()),
        }
        Ok(Ok(Outcome::Done))
    }

    fn remove_domain(&mut self, name: &str) -> Result<CommandResult> {
        if self.get::<Domain>(ks::DOMAINS, name.as_bytes())?.is_none() {
            return Ok(Err(CommandError::not_found("domain", name)));
        }
        let aliases: Vec<String> = self
            .scan::<Domain>(ks::DOMAINS, &[])?
            .into_iter()
            .filter(|(_, domain)| domain.alias_of.as_deref() == Some(name))
            .map(|(_, domain)| domain.name)
            .collect();
        if !aliases.is_empty() {
            return Ok(Err(CommandError::Conflict(format!(
                "domain {name} has domain aliases ({}); remove them first",
                aliases.join(", ")
            ))));
        }
        let remaining = self.scan::<AddressTarget>(ks::ADDRESSES, &ks::domain_prefix(name))?.len();
        if remaining > 0 {
            return Ok(Err(CommandError::Conflict(format!(
                "domain {name} still has {remaining} accounts or aliases; remove them first"
            ))));
        }
        self.delete(ks::DOMAINS, name.as_bytes());
        self.delete(ks::UNKNOWN_FORWARDS, name.as_bytes());
        for (key, _) in self.scan_raw(ks::DKIM_KEYS, &ks::domain_prefix(name))? {
            self.delete(ks::DKIM_KEYS, &key);
        }
        Ok(Ok(Outcome::Done))
    }

    fn add_dkim_key(&mut self, domain: &str, mut key: DkimKey) -> Result<CommandResult> {
        if self.get::<Domain>(ks::DOMAINS, domain.as_bytes())?.is_none() {
            return Ok(Err(CommandError::not_found("domain", domain)));
        }
        if key.selector.is_empty()
            || !key.selector.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Ok(Err(CommandError::Invalid(format!(
                "DKIM selector {:?} must be letters, digits, '-', '_' or '.'",
                key.selector
            ))));
        }
        let existing = self.scan::<DkimKey>(ks::DKIM_KEYS, &ks::domain_prefix(domain))?;
        if existing.iter().any(|(_, other)| other.selector == key.selector) {
            return Ok(Err(CommandError::exists("DKIM selector", format!("{} of {domain}", key.selector))));
        }
        key.active |= existing.is_empty();
        if key.active {
            self.deactivate_dkim_keys(existing);
        }
        self.put(ks::DKIM_KEYS, &ks::dkim_key(domain, &key.selector), &key);
        Ok(Ok(Outcome::Done))
    }

    fn deactivate_dkim_keys(&mut self, keys: Vec<(Vec<u8>, DkimKey)>) {
        for (row, mut other) in keys.into_iter().filter(|(_, other)| other.active) {
            other.active = false;
            self.put(ks::DKIM_KEYS, &row, &other);
        }
    }

    fn activate_dkim_key(&mut self, domain: &str, selector: &str) -> Result<CommandResult> {
        let row = ks::dkim_key(domain, selector);
        let Some(mut key) = self.get::<DkimKey>(ks::DKIM_KEYS, &row)? else {
            return Ok(Err(CommandError::not_found("DKIM selector", format!("{selector} of {domain}"))));
        };
        let existing = self.scan::<DkimKey>(ks::DKIM_KEYS, &ks::domain_prefix(domain))?;
        self.deactivate_dkim_keys(existing);
        key.active = true;
        self.put(ks::DKIM_KEYS, &row, &key);
        Ok(Ok(Outcome::Done))
    }

    fn remove_dkim_key(&mut self, domain: &str, selector: &str) -> Result<CommandResult> {
        let row = ks::dkim_key(domain, selector);
        if self.get_raw(ks::DKIM_KEYS, &row)?.is_none() {
            return Ok(Err(CommandError::not_found("DKIM selector", format!("{selector} of {domain}"))));
        }
        self.delete(ks::DKIM_KEYS, &row);
        Ok(Ok(Outcome::Done))
    }

    fn check_new_address(&mut self, address: &str) -> Result<std::result::Result<Vec<u8>, CommandError>> {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Ok(Err(CommandError::Invalid(format!("{address} is not an address"))));
        };
        match self.get::<Domain>(ks::DOMAINS, domain.as_bytes())? {
            None => return Ok(Err(CommandError::not_found("domain", domain))),
            Some(Domain { alias_of: Some(target), .. }) => {
                return Ok(Err(CommandError::Invalid(format!(
                    "{domain} is an alias of {target}; create the address in {target}"
                ))));
            }
            Some(_) => {}
        }
        let key = ks::address_key(address).expect("has @");
        if self.get::<AddressTarget>(ks::ADDRESSES, &key)?.is_some() {
            return Ok(Err(CommandError::exists("address", address)));
        }
        Ok(Ok(key))
    }

    fn create_account(
        &mut self,
        address: String,
        display_name: String,
        password_hash: String,
        quota_bytes: Option<u64>,
        state: AccountState,
    ) -> Result<CommandResult> {
        let key = match self.check_new_address(&address)? {
            Ok(key) => key,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let account_id = self.next_id(ks::META_NEXT_ACCOUNT_ID)?;
        self.put(ks::ADDRESSES, &key, &AddressTarget::Account(account_id));
        self.put(ks::CREDENTIALS, &ks::id_key(account_id), &Credentials { password_hash });
        let account = Account {
            id: account_id,
            address,
            display_name,
            quota_bytes,
            state,
            used_bytes: 0,
            message_count: 0,
            created_at_ms: self.now_ms,
            disabled_services: Vec::new(),
            send_as: Vec::new(),
        };
        self.accounts.insert(account_id, account);
        let inbox_id = match self.create_mailbox(account_id, INBOX.to_owned(), None)? {
            Ok(Outcome::MailboxCreated { mailbox_id }) => mailbox_id,
            other => return Err(Error::corrupt(format!("creating INBOX of a new account gave {other:?}"))),
        };
        Ok(Ok(Outcome::AccountCreated { account_id, inbox_id }))
    }

    fn account_id_of(&mut self, address: &str) -> Result<Option<u64>> {
        let Some(key) = ks::address_key(address) else { return Ok(None) };
        Ok(match self.get::<AddressTarget>(ks::ADDRESSES, &key)? {
            Some(AddressTarget::Account(id)) => Some(id),
            _ => None,
        })
    }

    fn set_account_access(
        &mut self,
        address: &str,
        disabled_services: Option<Vec<Service>>,
        send_as: Option<Vec<String>>,
    ) -> Result<CommandResult> {
        let Some(account_id) = self.account_id_of(address)? else {
            return Ok(Err(CommandError::not_found("account", address)));
        };
        let account = self.account(account_id)?.ok_or_else(|| vanished("account"))?;
        if let Some(mut services) = disabled_services {
            services.dedup();
            account.disabled_services = services;
        }
        if let Some(send_as) = send_as {
            account.send_as = send_as;
        }
        Ok(Ok(Outcome::Done))
    }

    fn set_domain_services(&mut self, name: &str, disabled_services: Vec<Service>) -> Result<CommandResult> {
        let Some(mut domain) = self.get::<Domain>(ks::DOMAINS, name.as_bytes())? else {
            return Ok(Err(CommandError::not_found("domain", name)));
        };
        domain.disabled_services = disabled_services;
        self.put(ks::DOMAINS, name.as_bytes(), &domain);
        Ok(Ok(Outcome::Done))
    }

    fn update_account(
        &mut self,
        address: &str,
        display_name: Option<String>,
        password_hash: Option<String>,
        quota_bytes: Option<Option<u64>>,
        state: Option<AccountState>,
    ) -> Result<CommandResult> {
        let Some(account_id) = self.account_id_of(address)? else {
            return Ok(Err(CommandError::not_found("account", address)));
        };
        let account = self.account(account_id)?.ok_or_else(|| vanished("account"))?;
        if let Some(display_name) = display_name {
            account.display_name = display_name;
        }
        if let Some(quota_bytes) = quota_bytes {
            account.quota_bytes = quota_bytes;
        }
        if let Some(state) = state {
            account.state = state;
        }
        if let Some(password_hash) = password_hash {
            self.put(ks::CREDENTIALS, &ks::id_key(account_id), &Credentials { password_hash });
        }
        Ok(Ok(Outcome::Done))
    }

    fn remove_account(&mut self, address: &str) -> Result<CommandResult> {
        let Some(account_id) = self.account_id_of(address)? else {
            return Ok(Err(CommandError::not_found("account", address)));
        };
        let prefix = ks::id_key(account_id);
        for (key, message) in self.scan::<MessageRecord>(ks::MESSAGES, &prefix)? {
            self.release_blob(message.blob)?;
            self.delete(ks::MESSAGES, &key);
        }
        for (key, _) in self.scan::<Mailbox>(ks::MAILBOXES, &prefix)? {
            self.delete(ks::MAILBOXES, &key);
        }
        for table in [ks::MAILBOX_NAMES, ks::CHANGES, ks::SUBSCRIPTIONS, ks::EXPUNGED, ks::THREADS] {
            for (key, _) in self.scan_raw(table, &prefix)? {
                self.delete(table, &key);
            }
        }
        self.delete(ks::CREDENTIALS, &prefix);
        self.delete(ks::PRINCIPALS, &prefix);
        self.delete(ks::ADDRESSES, &ks::address_key(address).expect("resolved above"));
        self.delete(ks::LEASES, format!("pop3:{account_id}").as_bytes());
        let quarantined: Vec<u64> = self
            .scan::<QuarantineEntry>(ks::SECURITY, &[ks::QUARANTINE.as_slice(), &prefix].concat())?
            .into_iter()
            .map(|(_, entry)| entry.id)
            .collect();
        self.drop_quarantined(account_id, &quarantined)?;
        self.delete(ks::SECURITY, &ks::bayes_lessons_key(account_id));
        for marks in [ks::ALLOWED_SENDERS.as_slice(), ks::BAYES_TRAINED.as_slice()] {
            for (key, _) in self.scan_raw(ks::SECURITY, &[marks, &prefix].concat())? {
                self.delete(ks::SECURITY, &key);
            }
        }
        // Open sessions and the search index learn that the account is gone.
        self.touched_accounts.push(account_id);
        Ok(Ok(Outcome::Done))
    }

    fn create_alias(&mut self, alias: &str, targets: Vec<String>) -> Result<CommandResult> {
        if targets.is_empty() {
            return Ok(Err(CommandError::Invalid(format!("alias {alias} needs at least one target"))));
        }
        let key = match self.check_new_address(alias)? {
            Ok(key) => key,
            Err(refusal) => return Ok(Err(refusal)),
        };
        self.put(ks::ADDRESSES, &key, &AddressTarget::Alias(targets));
        Ok(Ok(Outcome::Done))
    }

    fn remove_alias(&mut self, alias: &str) -> Result<CommandResult> {
        let Some(key) = ks::address_key(alias) else {
            return Ok(Err(CommandError::not_found("alias", alias)));
        };
        match self.get::<AddressTarget>(ks::ADDRESSES, &key)? {
            Some(AddressTarget::Alias(_)) => {
                self.delete(ks::ADDRESSES, &key);
                Ok(Ok(Outcome::Done))
            }
            _ => Ok(Err(CommandError::not_found("alias", alias))),
        }
    }

    /// Removes idle greylisting triplets (oldest first, through the expiry index, at most
    /// `limit`) and lapsed login blocks.
    fn prune_security(&mut self, greylist_before_ms: u64, limit: u32) -> Result<CommandResult> {
        let mut removed = 0u64;
        let mut more = false;
        let mut expired = Vec::new();
        let start = ks::GREYLIST_TIME.to_vec();
        for item in self.db.iterator_cf(cf(self.db, ks::SECURITY), IteratorMode::From(&start, Direction::Forward)) {
            let (key, _) = item?;
            let Some(rest) = key.strip_prefix(ks::GREYLIST_TIME.as_slice()) else { break };
            let (Some(time), Some(triplet)) = (rest.get(..8), rest.get(8..24)) else { break };
            let time = u64::from_be_bytes(time.try_into().expect("8 bytes"));
            if time >= greylist_before_ms {
                break;
            }
            if expired.len() as u64 >= u64::from(limit) {
                more = true;
                break;
            }
            expired.push((time, <[u8; 16]>::try_from(triplet).expect("16 bytes")));
        }
        for (time, triplet) in expired {
            self.delete(ks::SECURITY, &ks::greylist_time_key(time, &triplet));
            let row = ks::greylist_key(&triplet);
            // A triplet seen again in this batch has moved in the index: keep it.
            if self.get::<GreylistEntry>(ks::SECURITY, &row)?.is_some_and(|entry| entry.last_activity_ms() == time) {
                self.delete(ks::SECURITY, &row);
                removed += 1;
            }
        }
        let now_ms = self.now_ms;
        for (key, block) in self.scan::<BlockRecord>(ks::SECURITY, ks::BLOCKS)? {
            if block.until_ms <= now_ms {
                self.delete(ks::SECURITY, &key);
                removed += 1;
            }
        }
        Ok(Ok(Outcome::Pruned { removed, more }))
    }

    /// Removes quarantined messages of an account (unknown ids are skipped) and their blob
    /// references.
    fn drop_quarantined(&mut self, account_id: u64, ids: &[u64]) -> Result<()> {
        for &id in ids {
            let key = ks::quarantine_key(account_id, id);
            if let Some(entry) = self.get::<QuarantineEntry>(ks::SECURITY, &key)? {
                self.delete(ks::SECURITY, &key);
                self.delete(ks::SECURITY, &ks::quarantine_time_key(entry.received_ms, account_id, id));
                self.release_blob(entry.blob)?;
            }
        }
        Ok(())
    }

    /// Drops quarantined messages older than `before_ms`, oldest first, at most `limit`.
    fn purge_quarantine(&mut self, before_ms: u64, limit: u32) -> Result<CommandResult> {
        let mut expired = Vec::new();
        let mut more = false;
        let start = ks::QUARANTINE_TIME.to_vec();
        for item in self.db.iterator_cf(cf(self.db, ks::SECURITY), IteratorMode::From(&start, Direction::Forward)) {
            let (key, _) = item?;
            let Some(rest) = key.strip_prefix(ks::QUARANTINE_TIME.as_slice()) else { break };
            let field = |range: std::ops::Range<usize>| {
                rest.get(range).map(|bytes| u64::from_be_bytes(bytes.try_into().expect("8 bytes")))
            };
            let (Some(time), Some(account_id), Some(id)) = (field(0..8), field(8..16), field(16..24)) else { break };
            if time >= before_ms {
                break;
            }
            if expired.len() as u64 >= u64::from(limit) {
                more = true;
                break;
            }
            expired.push((account_id, id));
        }
        let removed = expired.len() as u64;
        for (account_id, id) in expired {
            self.drop_quarantined(account_id, &[id])?;
        }
        Ok(Ok(Outcome::Pruned { removed, more }))
    }

    fn create_mailbox(&mut self, account_id: u64, name: String, special_use: Option<String>) -> Result<CommandResult> {
        if name.is_empty() {
            return Ok(Err(CommandError::Invalid("mailbox name is empty".into())));
        }
        if self.account(account_id)?.is_none() {
            return Ok(Err(CommandError::not_found("account", account_id)));
        }
        let name_key = ks::mailbox_name_key(account_id, &name);
        if self.get_u64(ks::MAILBOX_NAMES, &name_key)?.is_some() {
            return Ok(Err(CommandError::exists("mailbox", name)));
        }
        let mailbox_id = self.next_id(ks::META_NEXT_MAILBOX_ID)?;
        // RFC 9051 §2.3.1.1: UIDVALIDITY must never repeat for a name; mailbox ids are never
        // reused, so the low bits of the id (plus 1, never zero) are unique enough per name.
        let uid_validity = (mailbox_id as u32).max(1);
        self.put_raw(ks::MAILBOX_NAMES, &name_key, mailbox_id.to_be_bytes().to_vec());
        let mailbox = Mailbox {
            id: mailbox_id,
            account_id,
            name,
            uid_validity,
            uid_next: 1,
            highest_modseq: 1,
            special_use,
            message_count: 0,
            size_bytes: 0,
            first_recent_uid: 1,
            unseen_count: 0,
            deleted_count: 0,
        };
        self.mailboxes.insert((account_id, mailbox_id), mailbox);
        self.record_change(account_id, Change::MailboxCreated { mailbox_id })?;
        Ok(Ok(Outcome::MailboxCreated { mailbox_id }))
    }

    /// Creates `name` after any of its superiors (`a` and `a/b` for `a/b/c`) that are
    /// missing, so the hierarchy has no holes (RFC 9051 §6.3.4 SHOULD).
    fn create_mailbox_with_superiors(
        &mut self,
        account_id: u64,
        name: String,
        special_use: Option<String>,
    ) -> Result<CommandResult> {
        if name.split(MAILBOX_SEPARATOR).any(str::is_empty) {
            return Ok(Err(CommandError::Invalid(format!("mailbox name {name:?} has an empty level"))));
        }
        for (index, _) in name.match_indices(MAILBOX_SEPARATOR) {
            let superior = &name[..index];
            if self.get_u64(ks::MAILBOX_NAMES, &ks::mailbox_name_key(account_id, superior))?.is_none()
                && let Err(refusal) = self.create_mailbox(account_id, superior.to_owned(), None)?
            {
                return Ok(Err(refusal));
            }
        }
        self.create_mailbox(account_id, name, special_use)
    }

    fn mailbox_id_by_name(&self, account_id: u64, name: &str) -> Result<Option<u64>> {
        self.get_u64(ks::MAILBOX_NAMES, &ks::mailbox_name_key(account_id, name))
    }

    fn rename_mailbox(&mut self, account_id: u64, from: &str, to: &str) -> Result<CommandResult> {
        let Some(from_id) = self.mailbox_id_by_name(account_id, from)? else {
            return Ok(Err(CommandError::not_found("mailbox", from)));
        };
        if to.split(MAILBOX_SEPARATOR).any(str::is_empty) {
            return Ok(Err(CommandError::Invalid(format!("mailbox name {to:?} has an empty level"))));
        }
        if to == from || to.starts_with(&format!("{from}{MAILBOX_SEPARATOR}")) {
            return Ok(Err(CommandError::Invalid(format!("cannot rename {from} to itself or below itself"))));
        }
        // The mailbox and every inferior, with their new names (INBOX's inferiors stay:
        // RFC 9051 §6.3.6 renames only INBOX's messages).
        let mut renames = vec![(from_id, from.to_owned(), to.to_owned())];
        if from != INBOX {
            let prefix = format!("{from}{MAILBOX_SEPARATOR}");
            for (key, id) in self.scan_raw(ks::MAILBOX_NAMES, &ks::mailbox_name_key(account_id, &prefix))? {
                let name = String::from_utf8_lossy(&key[8..]).into_owned();
                let id = u64::from_be_bytes(id.as_slice().try_into().map_err(|_| Error::corrupt("mailbox name id"))?);
                renames.push((id, name.clone(), format!("{to}{}", &name[from.len()..])));
            }
        }
        for (_, _, new_name) in &renames {
            if self.mailbox_id_by_name(account_id, new_name)?.is_some() {
                return Ok(Err(CommandError::exists("mailbox", new_name)));
            }
        }
        for (id, old_name, new_name) in renames {
            self.delete(ks::MAILBOX_NAMES, &ks::mailbox_name_key(account_id, &old_name));
            self.put_raw(ks::MAILBOX_NAMES, &ks::mailbox_name_key(account_id, &new_name), id.to_be_bytes().to_vec());
            let mailbox = self.mailbox(account_id, id)?.ok_or_else(|| vanished("mailbox"))?;
            mailbox.name = new_name;
            self.record_change(account_id, Change::MailboxRenamed { mailbox_id: id })?;
        }
        // Superiors of the new name, then a fresh INBOX if INBOX was the one renamed.
        for (index, _) in to.match_indices(MAILBOX_SEPARATOR) {
            let superior = &to[..index];
            if self.mailbox_id_by_name(account_id, superior)?.is_none()
                && let Err(refusal) = self.create_mailbox(account_id, superior.to_owned(), None)?
            {
                return Ok(Err(refusal));
            }
        }
        if from == INBOX
            && let Err(refusal) = self.create_mailbox(account_id, INBOX.to_owned(), None)?
        {
            return Ok(Err(refusal));
        }
        Ok(Ok(Outcome::Done))
    }

    fn delete_mailbox(&mut self, account_id: u64, name: &str) -> Result<CommandResult> {
        if name == INBOX {
            return Ok(Err(CommandError::Invalid("INBOX cannot be deleted".into())));
        }
        let Some(mailbox_id) = self.mailbox_id_by_name(account_id, name)? else {
            return Ok(Err(CommandError::not_found("mailbox", name)));
        };
        let mut removed_bytes = 0;
        let mut removed = 0;
        for (key, message) in self.scan::<MessageRecord>(ks::MESSAGES, &ks::mailbox_key(account_id, mailbox_id))? {
            self.release_blob(message.blob)?;
            self.delete(ks::MESSAGES, &key);
            removed_bytes += message.size;
            removed += 1;
        }
        let account = self.account(account_id)?.ok_or_else(|| vanished("account"))?;
        account.used_bytes -= removed_bytes;
        account.message_count -= removed;
        self.mailboxes.remove(&(account_id, mailbox_id));
        self.delete(ks::MAILBOXES, &ks::mailbox_key(account_id, mailbox_id));
        for (key, _) in self.scan_raw(ks::EXPUNGED, &ks::mailbox_key(account_id, mailbox_id))? {
            self.delete(ks::EXPUNGED, &key);
        }
        self.delete(ks::MAILBOX_NAMES, &ks::mailbox_name_key(account_id, name));
        self.record_change(account_id, Change::MailboxDeleted { mailbox_id })?;
        Ok(Ok(Outcome::Done))
    }

    /// The thread a message joins in an account: that of the first referenced message the
    /// account has, else a new one; records the message's own id for later replies.
    fn thread_of(&mut self, account_id: u64, threading: &Threading) -> Result<u64> {
        let mut thread_id = None;
        for reference in threading.references.iter().rev() {
            if let Some(id) = self.get_u64(ks::THREADS, &ks::thread_key(account_id, reference))? {
                thread_id = Some(id);
                break;
            }
        }
        let own = match &threading.message_id {
            Some(id) => self.get_u64(ks::THREADS, &ks::thread_key(account_id, id))?,
            None => None,
        };
        let thread_id = match thread_id.or(own) {
            Some(id) => id,
            None => self.next_id(ks::META_NEXT_THREAD_ID)?,
        };
        // The message's own id, and the ids it refers to that the account has not seen (so
        // a parent arriving after its reply joins the reply's thread).
        for id in threading.message_id.iter().chain(&threading.references) {
            let key = ks::thread_key(account_id, id);
            if self.get_u64(ks::THREADS, &key)?.is_none() {
                self.put_raw(ks::THREADS, &key, thread_id.to_be_bytes().to_vec());
            }
        }
        Ok(thread_id)
    }

    fn copy_messages(
        &mut self,
        account_id: u64,
        from_mailbox: u64,
        uids: &[u32],
        to_mailbox: u64,
        remove_source: bool,
    ) -> Result<CommandResult> {
        if self.mailbox(account_id, from_mailbox)?.is_none() {
            return Ok(Err(CommandError::not_found("mailbox", from_mailbox)));
        }
        let Some(target) = self.mailbox(account_id, to_mailbox)? else {
            return Ok(Err(CommandError::not_found("mailbox", to_mailbox)));
        };
        let uid_validity = target.uid_validity;
        let mut records = Vec::new();
        for &uid in uids {
            if let Some(record) =
                self.get::<MessageRecord>(ks::MESSAGES, &ks::message_key(account_id, from_mailbox, uid))?
            {
                records.push(record);
            }
        }
        records.sort_by_key(|record| record.uid);
        records.dedup_by_key(|record| record.uid);
        let bytes: u64 = records.iter().map(|record| record.size).sum();
        let account = self.account(account_id)?.ok_or_else(|| vanished("account"))?;
        // A move within one account does not change its usage; a copy adds to it.
        if !remove_source && account.quota_bytes.is_some_and(|quota| account.used_bytes.saturating_add(bytes) > quota) {
            return Ok(Err(CommandError::OverQuota { account: account.address.clone() }));
        }
        let mut source_uids = Vec::with_capacity(records.len());
        let mut new_uids = Vec::with_capacity(records.len());
        let target = self.mailbox(account_id, to_mailbox)?.ok_or_else(|| vanished("mailbox"))?;
        // RFC 7162 §3.1.2: one new modseq for everything this command adds.
        target.highest_modseq += 1;
        let modseq = target.highest_modseq;
        let first_uid = target.uid_next;
        target.uid_next += records.len() as u32;
        target.message_count += records.len() as u64;
        target.size_bytes += bytes;
        for record in &records {
            let (unseen, deleted) = flag_counts(&record.flags);
            target.unseen_count += unseen;
            target.deleted_count += deleted;
        }
        for (offset, record) in records.iter().enumerate() {
            let uid = first_uid + offset as u32;
            let copy = MessageRecord { uid, modseq, ..record.clone() };
            self.put(ks::MESSAGES, &ks::message_key(account_id, to_mailbox, uid), &copy);
            let blob_ref = self.blob_ref(record.blob)?;
            blob_ref.count += 1;
            blob_ref.zero_since_ms = None;
            self.record_change(account_id, Change::Added { mailbox_id: to_mailbox, uid, modseq })?;
            source_uids.push(record.uid);
            new_uids.push(uid);
        }
        let account = self.account(account_id)?.ok_or_else(|| vanished("account"))?;
        account.used_bytes += bytes;
        account.message_count += records.len() as u64;
        if remove_source && let Err(refusal) = self.expunge(account_id, from_mailbox, &source_uids)? {
            return Ok(Err(refusal));
        }
        Ok(Ok(Outcome::Copied { uid_validity, source_uids, new_uids }))
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        blob: BlobId,
        stored_after_index: u64,
        size: u64,
        internal_date_ms: u64,
        flags: Vec<String>,
        threading: Option<&Threading>,
        targets: &[DeliveryTarget],
    ) -> Result<CommandResult> {
        let record = *self.blob_ref(blob)?;
        let copy_may_be_deleted = record.deleted_at_index.is_some_and(|deleted| stored_after_index < deleted);
        if record.deleting || copy_may_be_deleted {
            return Ok(Err(CommandError::BlobCollected { blob: blob.to_hex() }));
        }
        let flags = normalize_flags(flags);
        let mut results = Vec::with_capacity(targets.len());
        for target in targets {
            let Some(account) = self.account(target.account_id)? else {
                results.push(DeliveryResult::NoSuchMailbox);
                continue;
            };
            if !account.state.receives_mail() {
                results.push(DeliveryResult::NotReceiving);
                continue;
            }
            if account.quota_bytes.is_some_and(|quota| account.used_bytes.saturating_add(size) > quota) {
                results.push(DeliveryResult::OverQuota);
                continue;
            }
            let mailbox_id = match target.mailbox_id {
                Some(id) => Some(id),
                None => self.get_u64(ks::MAILBOX_NAMES, &ks::mailbox_name_key(target.account_id, INBOX))?,
            };
            let Some(mailbox_id) = mailbox_id else {
                results.push(DeliveryResult::NoSuchMailbox);
                continue;
            };
            let Some(mailbox) = self.mailbox(target.account_id, mailbox_id)? else {
                results.push(DeliveryResult::NoSuchMailbox);
                continue;
            };
            let uid = mailbox.uid_next;
            mailbox.uid_next += 1;
            mailbox.highest_modseq += 1;
            mailbox.message_count += 1;
            let (unseen, deleted) = flag_counts(&flags);
            mailbox.unseen_count += unseen;
            mailbox.deleted_count += deleted;
            mailbox.size_bytes += size;
            let modseq = mailbox.highest_modseq;
            let account = self.account(target.account_id)?.ok_or_else(|| vanished("account"))?;
            account.used_bytes += size;
            account.message_count += 1;
            let thread_id = match threading {
                Some(threading) => self.thread_of(target.account_id, threading)?,
                None => 0,
            };
            let record = MessageRecord { uid, blob, size, internal_date_ms, flags: flags.clone(), modseq, thread_id };
            self.put(ks::MESSAGES, &ks::message_key(target.account_id, mailbox_id, uid), &record);
            let blob_ref = self.blob_ref(blob)?;
            blob_ref.count += 1;
            blob_ref.zero_since_ms = None;
            self.record_change(target.account_id, Change::Added { mailbox_id, uid, modseq })?;
            results.push(DeliveryResult::Stored { mailbox_id, uid, modseq });
        }
        // Referenced or not, the stored body is now known to the state: when nothing
        // references it, it becomes garbage after the grace period.
        let now_ms = self.now_ms;
        let blob_ref = self.blob_ref(blob)?;
        blob_ref.deleted_at_index = None;
        if blob_ref.count == 0 && blob_ref.zero_since_ms.is_none() {
            blob_ref.zero_since_ms = Some(now_ms);
        }
        Ok(Ok(Outcome::Delivered { results, queue_id: None }))
    }

    fn queue_entry(&self, id: u64) -> Result<Option<QueueEntry>> {
        self.get(ks::QUEUE, &ks::id_key(id))
    }

    /// Writes a queue entry and moves its due-index key from `old_due` (when it had one).
    fn put_queue_entry(&mut self, old_due: Option<u64>, entry: &QueueEntry) {
        if let Some(old_due) = old_due {
            self.delete(ks::QUEUE_DUE, &ks::queue_due_key(old_due, entry.id));
        }
        self.put_raw(ks::QUEUE_DUE, &ks::queue_due_key(entry.due_ms(), entry.id), Vec::new());
        self.put(ks::QUEUE, &ks::id_key(entry.id), entry);
    }

    /// Removes a queue entry filed in the due index under `due_ms`.
    fn remove_queue_entry(&mut self, due_ms: u64, entry: &QueueEntry) -> Result<()> {
        self.delete(ks::QUEUE_DUE, &ks::queue_due_key(due_ms, entry.id));
        self.delete(ks::QUEUE, &ks::id_key(entry.id));
        self.add_to_counter(ks::META_QUEUE_LENGTH, -1)?;
        self.release_blob(entry.blob)
    }

    fn add_to_counter(&mut self, counter: &'static [u8], delta: i64) -> Result<()> {
        let current = match self.counters.get(counter) {
            Some(value) => *value,
            None => self.get_u64(ks::META, counter)?.unwrap_or(0),
        };
        self.counters.insert(counter, current.saturating_add_signed(delta));
        Ok(())
    }

    /// Puts a delivered blob into the outbound queue, due at once.
    fn enqueue(&mut self, blob: BlobId, size: u64, envelope: OutboundEnvelope) -> Result<u64> {
        let id = self.next_id(ks::META_NEXT_QUEUE_ID)?;
        let entry = QueueEntry {
            id,
            blob,
            size,
            return_path: envelope.return_path,
            envid: envelope.envid,
            ret: envelope.ret,
            eight_bit: envelope.eight_bit,
            authenticated: envelope.authenticated,
            recipients: envelope
                .recipients
                .into_iter()
                .map(|recipient| QueuedRecipient { recipient, status: RecipientStatus::Pending { last_reply: None } })
                .collect(),
            created_ms: self.now_ms,
            attempts: 0,
            next_attempt_ms: self.now_ms,
            lease: None,
            delay_notified: false,
        };
        self.put_queue_entry(None, &entry);
        self.add_to_counter(ks::META_QUEUE_LENGTH, 1)?;
        let blob_ref = self.blob_ref(blob)?;
        blob_ref.count += 1;
        blob_ref.zero_since_ms = None;
        Ok(id)
    }

    fn claim_outbound(&mut self, ids: &[u64], holder: String, until_ms: u64) -> Result<CommandResult> {
        let mut claimed = Vec::new();
        for &id in ids {
            let Some(mut entry) = self.queue_entry(id)? else { continue };
            // The holder itself may claim again: to renew its lease during a long delivery,
            // or, restarted, to take back what its previous process held.
            let own = entry.lease.as_ref().is_some_and(|lease| lease.holder == holder);
            let due = if own { entry.next_attempt_ms } else { entry.due_ms() };
            if due > self.now_ms {
                continue; // leased by another live worker, or not due yet
            }
            let old_due = entry.due_ms();
            entry.lease = Some(Lease { holder: holder.clone(), until_ms });
            self.put_queue_entry(Some(old_due), &entry);
            claimed.push(id);
        }
        Ok(Ok(Outcome::OutboundClaimed { ids: claimed }))
    }

    fn record_attempt(
        &mut self,
        id: u64,
        holder: &str,
        results: Vec<AttemptResult>,
        next_attempt_ms: u64,
        delay_notified: bool,
    ) -> Result<CommandResult> {
        let Some(mut entry) = self.queue_entry(id)? else {
            return Ok(Err(CommandError::not_found("queue entry", id)));
        };
        if entry.lease.as_ref().is_none_or(|lease| lease.holder != holder) {
            return Ok(Err(CommandError::Conflict(format!("queue entry {id} is not leased to {holder}"))));
        }
        let old_due = entry.due_ms();
        for result in results {
            let Some(recipient) = entry.recipients.get_mut(result.index as usize) else {
                return Ok(Err(CommandError::Invalid(format!("queue entry {id} has no recipient {}", result.index))));
            };
            if !recipient.status.is_final() {
                recipient.status = result.status;
            }
        }
        entry.attempts += 1;
        entry.lease = None;
        entry.next_attempt_ms = next_attempt_ms;
        entry.delay_notified |= delay_notified;
        if entry.pending().next().is_none() {
            self.remove_queue_entry(old_due, &entry)?;
        } else {
            self.put_queue_entry(Some(old_due), &entry);
        }
        Ok(Ok(Outcome::Done))
    }

    fn retry_outbound(&mut self, ids: &[u64]) -> Result<CommandResult> {
        let mut found = false;
        for &id in ids {
            let Some(mut entry) = self.queue_entry(id)? else { continue };
            found = true;
            if entry.next_attempt_ms <= self.now_ms {
                continue; // due already (or being delivered)
            }
            let old_due = entry.due_ms();
            entry.next_attempt_ms = self.now_ms;
            self.put_queue_entry(Some(old_due), &entry);
        }
        if !found && let Some(id) = ids.first() {
            return Ok(Err(CommandError::not_found("queue entry", id)));
        }
        Ok(Ok(Outcome::Done))
    }

    fn remove_outbound(&mut self, id: u64) -> Result<CommandResult> {
        let Some(entry) = self.queue_entry(id)? else {
            return Ok(Err(CommandError::not_found("queue entry", id)));
        };
        self.remove_queue_entry(entry.due_ms(), &entry)?;
        Ok(Ok(Outcome::Done))
    }

    fn set_flags(
        &mut self,
        account_id: u64,
        mailbox_id: u64,
        uids: &[u32],
        action: FlagAction,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    ) -> Result<CommandResult> {
        let Some(mailbox) = self.mailbox(account_id, mailbox_id)? else {
            return Ok(Err(CommandError::not_found("mailbox", mailbox_id)));
        };
        // RFC 7162 §3.1.3: every message changed by this command gets the same new modseq.
        let modseq = mailbox.highest_modseq + 1;
        let flags = normalize_flags(flags);
        let mut changed = false;
        let (mut unseen_delta, mut deleted_delta) = (0i64, 0i64);
        let mut failed_unchanged_since = Vec::new();
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        for uid in uids {
            let key = ks::message_key(account_id, mailbox_id, uid);
            let Some(mut record) = self.get::<MessageRecord>(ks::MESSAGES, &key)? else { continue };
            if unchanged_since.is_some_and(|limit| record.modseq > limit) {
                failed_unchanged_since.push(uid);
                continue;
            }
            let new_flags: Vec<String> = match action {
                FlagAction::Replace => flags.clone(),
                FlagAction::Add => normalize_flags(record.flags.iter().chain(&flags).cloned().collect()),
                FlagAction::Remove => record.flags.iter().filter(|flag| !flags.contains(flag)).cloned().collect(),
            };
            if new_flags == record.flags {
                continue;
            }
            let (old_unseen, old_deleted) = flag_counts(&record.flags);
            let (new_unseen, new_deleted) = flag_counts(&new_flags);
            unseen_delta += new_unseen as i64 - old_unseen as i64;
            deleted_delta += new_deleted as i64 - old_deleted as i64;
            record.flags = new_flags;
            record.modseq = modseq;
            self.put(ks::MESSAGES, &key, &record);
            self.record_change(account_id, Change::FlagsChanged { mailbox_id, uid, modseq })?;
            changed = true;
        }
        let mailbox = self.mailbox(account_id, mailbox_id)?.ok_or_else(|| vanished("mailbox"))?;
        if changed {
            mailbox.highest_modseq = modseq;
            mailbox.unseen_count = mailbox.unseen_count.saturating_add_signed(unseen_delta);
            mailbox.deleted_count = mailbox.deleted_count.saturating_add_signed(deleted_delta);
        }
        Ok(Ok(Outcome::FlagsSet { modseq: mailbox.highest_modseq, modified: failed_unchanged_since }))
    }

    fn expunge(&mut self, account_id: u64, mailbox_id: u64, uids: &[u32]) -> Result<CommandResult> {
        let Some(mailbox) = self.mailbox(account_id, mailbox_id)? else {
            return Ok(Err(CommandError::not_found("mailbox", mailbox_id)));
        };
        let modseq = mailbox.highest_modseq + 1;
        let mut removed = Vec::new();
        let mut removed_bytes = 0;
        let (mut removed_unseen, mut removed_deleted) = (0, 0);
        for &uid in uids {
            let key = ks::message_key(account_id, mailbox_id, uid);
            // A UID given twice reads as deleted the second time (the overlay sees the delete).
            let Some(record) = self.get::<MessageRecord>(ks::MESSAGES, &key)? else { continue };
            self.delete(ks::MESSAGES, &key);
            self.release_blob(record.blob)?;
            self.record_change(account_id, Change::Expunged { mailbox_id, uid, modseq })?;
            self.put_raw(ks::EXPUNGED, &ks::expunged_key(account_id, mailbox_id, modseq, uid), Vec::new());
            removed_bytes += record.size;
            let (unseen, deleted) = flag_counts(&record.flags);
            removed_unseen += unseen;
            removed_deleted += deleted;
            removed.push(uid);
            self.expunged.push((account_id, mailbox_id, record));
        }
        if !removed.is_empty() {
            let count = removed.len() as u64;
            let mailbox = self.mailbox(account_id, mailbox_id)?.ok_or_else(|| vanished("mailbox"))?;
            mailbox.highest_modseq = modseq;
            mailbox.message_count -= count;
            mailbox.size_bytes -= removed_bytes;
            mailbox.unseen_count = mailbox.unseen_count.saturating_sub(removed_unseen);
            mailbox.deleted_count = mailbox.deleted_count.saturating_sub(removed_deleted);
            let account = self.account(account_id)?.ok_or_else(|| vanished("account"))?;
            account.message_count -= count;
            account.used_bytes -= removed_bytes;
        }
        Ok(Ok(Outcome::Expunged { uids: removed }))
    }

    fn claim_blob(&mut self, blob: BlobId, grace_ms: u64) -> Result<CommandResult> {
        let now_ms = self.now_ms;
        let record = self.blob_ref(blob)?;
        // No zero_since: a body the state never saw (an orphan the collector found by listing
        // and checked the age of).
        let expired = record.zero_since_ms.is_none_or(|since| since.saturating_add(grace_ms) <= now_ms);
        if record.count > 0 || record.deleting || !expired {
            return Ok(Err(CommandError::Conflict(format!(
                "blob {blob} is still referenced or within its grace period"
            ))));
        }
        record.deleting = true;
        Ok(Ok(Outcome::Done))
    }

    fn acquire_lease(&mut self, resource: String, holder: String, until_ms: u64) -> Result<CommandResult> {
        if let Some(lease) = self.get::<Lease>(ks::LEASES, resource.as_bytes())?
            && lease.holder != holder
            && lease.until_ms > self.now_ms
        {
            return Ok(Err(CommandError::Conflict(format!("{resource} is in use by another session"))));
        }
        self.put(ks::LEASES, resource.as_bytes(), &Lease { holder, until_ms });
        Ok(Ok(Outcome::Done))
    }

    fn release_lease(&mut self, resource: &str, holder: &str) -> Result<CommandResult> {
        match self.get::<Lease>(ks::LEASES, resource.as_bytes())? {
            Some(lease) if lease.holder == holder => {
                self.delete(ks::LEASES, resource.as_bytes());
                Ok(Ok(Outcome::Done))
            }
            _ => Ok(Err(CommandError::Conflict(format!("{resource} is not held by {holder}")))),
        }
    }

    fn forget_blob(&mut self, blob: BlobId) -> Result<CommandResult> {
        if !self.blob_ref(blob)?.deleting {
            return Ok(Err(CommandError::Conflict(format!("blob {blob} was not claimed for deletion"))));
        }
        let log_index = self.log_index;
        *self.blob_ref(blob)? = BlobRef { deleted_at_index: Some(log_index), ..BlobRef::UNREFERENCED };
        self.delete(ks::SUMMARIES, blob.as_bytes());
        Ok(Ok(Outcome::Done))
    }
}

/// How a message with `flags` counts towards its mailbox's `(unseen, deleted)` counters.
fn flag_counts(flags: &[String]) -> (u64, u64) {
    let has = |flag: &str| flags.iter().any(|f| f == flag);
    (u64::from(!has("\\Seen")), u64::from(has("\\Deleted")))
}

/// Sorts and deduplicates flags. System flags compare case-insensitively (RFC 9051 §2.3.2),
/// so they are stored in their canonical spelling.
fn normalize_flags(flags: Vec<String>) -> Vec<String> {
    const SYSTEM: [&str; 5] = ["\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen"];
    let mut flags: Vec<String> = flags
        .into_iter()
        .map(|flag| match SYSTEM.iter().find(|system| system.eq_ignore_ascii_case(&flag)) {
            Some(system) => (*system).to_owned(),
            None => flag,
        })
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

#[cfg(test)]
#[path = "state_test.rs"]
mod tests;

/// Two big-endian u64 (a Bayes counter pair); zeros when absent or malformed.
fn decode_pair(bytes: Option<&[u8]>) -> (u64, u64) {
    match bytes {
        Some(bytes) if bytes.len() == 16 => (
            u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")),
        ),
        _ => (0, 0),
    }
}
