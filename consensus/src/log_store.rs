//! [`LogStore`]: the Raft log and vote in RocksDB, with group commit.
//!
//! Appends are written to RocksDB without a sync and handed to one flusher thread, which
//! syncs the write-ahead log once for every append that queued up meanwhile and then
//! acknowledges them all. Concurrent proposals therefore share one fsync, and because the
//! WAL is sequential a sync covers every earlier write (truncations included).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::{NodeId, TypeConfig};

const LOGS: &str = "logs";
const RAFT_META: &str = "raft_meta";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&error).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&error).into()
}

/// Counters of the log's disk work; `entries / wal_syncs` is the group-commit factor.
#[derive(Debug, Default)]
pub struct LogIoStats {
    /// Entries appended.
    pub entries: AtomicU64,
    /// `append` calls (openraft already batches entries into one call when it can).
    pub appends: AtomicU64,
    /// WAL fsyncs made to acknowledge appends.
    pub wal_syncs: AtomicU64,
    /// Index of the last entry known committed, plus one (0: none yet).
    pub committed_plus_one: AtomicU64,
}

/// The Raft log store of a node. Cloning is cheap; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    stats: Arc<LogIoStats>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (or creates) the log database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, rocksdb::Error> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_keep_log_file_num(4);
        let descriptors = [LOGS, RAFT_META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = Arc::new(DB::open_cf_descriptors(&options, dir, descriptors)?);
        let (flusher, pending) = mpsc::channel::<LogFlushed<TypeConfig>>();
        // A weak handle, so the database closes as soon as the last store is dropped.
        let flush_db = Arc::downgrade(&db);
        let stats = Arc::new(LogIoStats::default());
        let flush_stats = stats.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(&flush_db, pending, &flush_stats))
            .expect("spawn the log flusher thread");
        Ok(Self { db, flusher, stats })
    }

    /// Returns the live disk-work counters.
    pub fn stats(&self) -> Arc<LogIoStats> {
        self.stats.clone()
    }

    fn logs(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(LOGS).expect("logs column family")
    }

    fn meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(RAFT_META).expect("raft_meta column family")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let Some(bytes) = self.db.get_cf(self.meta(), key).map_err(read_error)? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(read_error)
    }

    fn put_meta_synced<T: serde::Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(write_error)?;
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.put_cf_opt(self.meta(), key, bytes, &options).map_err(write_error)
    }

    fn last_entry_log_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        match self.db.iterator_cf(self.logs(), IteratorMode::End).next() {
            Some(item) => {
                let (_, value) = item.map_err(read_error)?;
                let entry: Entry<TypeConfig> = postcard::from_bytes(&value).map_err(read_error)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

/// Syncs the WAL once per group of queued appends, then acknowledges the group.
fn flush_loop(db: &std::sync::Weak<DB>, pending: mpsc::Receiver<LogFlushed<TypeConfig>>, stats: &LogIoStats) {
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        group.extend(pending.try_iter());
        let result = match db.upgrade() {
            Some(db) => {
                stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
                db.flush_wal(true).map_err(std::io::Error::other)
            }
            None => Err(std::io::Error::other("raft log closed before its flush")),
        };
        for callback in group {
            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(&index) => index,
            std::ops::Bound::Excluded(&index) => index + 1,
            std::ops::Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(self.logs(), IteratorMode::From(&index_key(start), Direction::Forward)) {
            let (key, value) = item.map_err(read_error)?;
            let index = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| read_error(std::fmt::Error))?);
            if !range.contains(&index) {
                break;
            }
            entries.push(postcard::from_bytes(&value).map_err(read_error)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED_KEY)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta_synced(VOTE_KEY, vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Durability comes with the next synced write; losing it only costs a re-apply.
        let committed_plus_one = committed.map_or(0, |id| id.index + 1);
        self.stats.committed_plus_one.store(committed_plus_one, Ordering::Relaxed);
        let bytes = serde_json::to_vec(&committed).map_err(write_error)?;
        self.db.put_cf(self.meta(), COMMITTED_KEY, bytes).map_err(write_error)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        for entry in entries {
            self.stats.entries.fetch_add(1, Ordering::Relaxed);
            let bytes = postcard::to_stdvec(&entry).map_err(write_error)?;
            batch.put_cf(self.logs(), index_key(entry.log_id.index), bytes);
        }
        // Readable as soon as this returns; durable when the flusher calls back.
        self.db.write(batch).map_err(write_error)?;
        self.flusher.send(callback).map_err(|_| write_error(std::io::Error::other("log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.db.delete_range_cf(self.logs(), index_key(log_id.index), index_key(u64::MAX)).map_err(write_error)?;
        // The largest possible index is not covered by the exclusive end of the range.
        self.db.delete_cf(self.logs(), index_key(u64::MAX)).map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: a crash in between leaves entries that are simply
        // ignored below the recorded point, never a hole above it.
        self.put_meta_synced(LAST_PURGED_KEY, &log_id)?;
        self.db.delete_range_cf(self.logs(), index_key(0), index_key(log_id.index + 1)).map_err(write_error)
    }
}
