//! Mailboxes and messages as IMAP (and later webmail and JMAP) see them: listing, creating,
//! renaming and deleting mailboxes, subscriptions, APPEND, flags, copy and move, and
//! notifications when an account's mailboxes change.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;
use wmail_storage::{
    BlobId, Change, Command, DeliveryResult, DeliveryTarget, FlagAction, Mailbox, MessageRecord, Outcome, StoredBlob,
    Threading,
};

use crate::message::{MessageSummary, summarize};
use crate::{Core, CoreError, ErrorCode, Result};

/// The special-use mailboxes every account gets on first login (RFC 6154 §2), with names
/// most clients look for.
pub const DEFAULT_MAILBOXES: [(&str, &str); 5] =
    [("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Junk", "\\Junk"), ("Archive", "\\Archive")];

/// Bodies up to this size are kept in memory while they are stored, to be summarised
/// without reading them back.
pub(crate) const SUMMARY_COPY_LIMIT: usize = 1024 * 1024;
/// Bodies larger than this are not summarised at delivery (readers parse on demand).
const SUMMARY_PARSE_LIMIT: u64 = 64 * 1024 * 1024;
/// Format byte of an encoded summary.
const SUMMARY_FORMAT: u8 = 1;

/// Most messages one flag-change command names (see [`Core::set_flags`]).
const FLAG_CHANGE_CHUNK: usize = 4096;

fn encode_summary(summary: &MessageSummary) -> Vec<u8> {
    let mut out = vec![SUMMARY_FORMAT];
    out.extend(postcard::to_stdvec(summary).expect("postcard encodes summaries"));
    out
}

pub(crate) fn decode_summary(bytes: &[u8]) -> Option<MessageSummary> {
    match bytes.split_first() {
        Some((&SUMMARY_FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// A message body stored in the blob store but not yet filed into a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBody {
    /// Its content address.
    pub blob: BlobId,
    /// Its size in octets.
    pub size: u64,
    /// The last applied log index before it was stored (see `Command::Deliver`).
    pub stored_after_index: u64,
    /// Its encoded summary, when it could be parsed.
    pub summary: Option<Vec<u8>>,
    /// Its threading links, when it could be parsed.
    pub threading: Option<Threading>,
}

/// The result of a copy or move (RFC 4315 COPYUID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    /// UIDVALIDITY of the destination.
    pub uid_validity: u32,
    /// The UIDs that were copied, ascending.
    pub source_uids: Vec<u32>,
    /// Their UIDs in the destination, pairwise.
    pub new_uids: Vec<u32>,
}

/// What opening a mailbox needs, gathered in one pass without holding every message.
#[derive(Debug, Clone, Default)]
pub struct MailboxScan {
    /// UIDs, ascending.
    pub uids: Vec<u32>,
    /// Keywords (flags not starting with `\\`) in use.
    pub keywords: std::collections::BTreeSet<String>,
    /// Index of the first message without `\\Seen`.
    pub first_unseen: Option<usize>,
    /// Messages with a MODSEQ above the one asked for, with their index.
    pub changed: Vec<(usize, MessageRecord)>,
}

/// Per-account change signals: sessions subscribe to an account and are woken after each
/// applied batch that changed one of its mailboxes.
#[derive(Default)]
pub(crate) struct ChangeNotifier {
    senders: Mutex<HashMap<u64, watch::Sender<()>>>,
}

impl ChangeNotifier {
    fn subscribe(&self, account_id: u64) -> watch::Receiver<()> {
        let mut senders = self.senders.lock().expect("notifier lock");
        senders.entry(account_id).or_insert_with(|| watch::channel(()).0).subscribe()
    }

    /// Wakes the subscribers of `accounts`; forgets accounts nobody watches any more.
    pub(crate) fn notify(&self, accounts: &[u64]) {
        let mut senders = self.senders.lock().expect("notifier lock");
        for account_id in accounts {
            if let Some(sender) = senders.get(account_id) {
                if sender.receiver_count() == 0 {
                    senders.remove(account_id);
                } else {
                    sender.send_replace(());
                }
            }
        }
    }
}

fn unexpected(context: &str, outcome: Outcome) -> CoreError {
    CoreError::internal(context, format!("unexpected outcome {outcome:?}"))
}

impl Core {
    /// Returns a receiver that changes after every applied change to `account_id`'s
    /// mailboxes (new, changed or expunged messages; created, renamed or deleted mailboxes).
    pub fn watch_account(&self, account_id: u64) -> watch::Receiver<()> {
        self.notifier.subscribe(account_id)
    }

    /// Lists an account's mailboxes.
    pub fn mailboxes(&self, account_id: u64) -> Result<Vec<Mailbox>> {
        Ok(self.state.mailboxes(account_id)?)
    }

    /// Returns a mailbox by name.
    pub fn mailbox_by_name(&self, account_id: u64, name: &str) -> Result<Option<Mailbox>> {
        Ok(self.state.mailbox_by_name(account_id, name)?)
    }

    /// Returns a mailbox by id.
    pub fn mailbox(&self, account_id: u64, mailbox_id: u64) -> Result<Option<Mailbox>> {
        Ok(self.state.mailbox(account_id, mailbox_id)?)
    }

    /// Lists a mailbox's messages in UID order, off the async executor (a large mailbox
    /// takes a while to read).
    pub async fn mailbox_messages(&self, account_id: u64, mailbox_id: u64) -> Result<Vec<MessageRecord>> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.messages(account_id, mailbox_id))
            .await
            .map_err(|e| CoreError::internal("listing messages", e))?
            .map_err(CoreError::from)
    }

    /// Reads a mailbox once for opening it: UIDs, keywords in use, the first unseen message
    /// and the messages changed after `changed_since` (for QRESYNC).
    pub async fn scan_mailbox(
        &self,
        account_id: u64,
        mailbox_id: u64,
        changed_since: Option<u64>,
    ) -> Result<MailboxScan> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut scan = MailboxScan::default();
            state.for_each_message(account_id, mailbox_id, |record| {
                let index = scan.uids.len();
                scan.uids.push(record.uid);
                for flag in record.flags.iter().filter(|flag| !flag.starts_with('\\')) {
                    if !scan.keywords.contains(flag) {
                        scan.keywords.insert(flag.clone());
                    }
                }
                if scan.first_unseen.is_none() && !record.flags.iter().any(|flag| flag == "\\Seen") {
                    scan.first_unseen = Some(index);
                }
                if changed_since.is_some_and(|since| record.modseq > since) {
                    scan.changed.push((index, record));
                }
            })?;
            Ok(scan)
        })
        .await
        .map_err(|e| CoreError::internal("reading a mailbox", e))?
    }

    /// Returns the index records of the given UIDs of a mailbox that exist, in the order
    /// asked.
    pub async fn messages_by_uid(
        &self,
        account_id: u64,
        mailbox_id: u64,
        uids: Vec<u32>,
    ) -> Result<Vec<MessageRecord>> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(uids.len());
            for uid in uids {
                out.extend(state.message(account_id, mailbox_id, uid)?);
            }
            Ok::<_, wmail_storage::Error>(out)
        })
        .await
        .map_err(|e| CoreError::internal("listing messages", e))?
        .map_err(CoreError::from)
    }

    /// Returns the messages with UIDs in `first..=last`, in UID order.
    pub async fn messages_between(
        &self,
        account_id: u64,
        mailbox_id: u64,
        first: u32,
        last: u32,
    ) -> Result<Vec<MessageRecord>> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.messages_between(account_id, mailbox_id, first, last))
            .await
            .map_err(|e| CoreError::internal("listing messages", e))?
            .map_err(CoreError::from)
    }

    /// Returns one message.
    pub fn message(&self, account_id: u64, mailbox_id: u64, uid: u32) -> Result<Option<MessageRecord>> {
        Ok(self.state.message(account_id, mailbox_id, uid)?)
    }

    /// The record of a message this node expunged lately (see
    /// [`wmail_storage::StateStore::recently_expunged`]).
    pub fn recently_expunged(&self, account_id: u64, mailbox_id: u64, uid: u32) -> Option<MessageRecord> {
        self.state.recently_expunged(account_id, mailbox_id, uid)
    }

    /// Returns an account's change-log entries after `after` (a change id), in order.
    pub fn changes_since(&self, account_id: u64, after: u64) -> Result<Vec<(u64, Change)>> {
        Ok(self.state.changes_since(account_id, after)?)
    }

    /// Returns the id of the account's latest change (0 when none): the starting point of a
    /// session that follows the account with [`Core::changes_since`].
    pub fn last_change_id(&self, account_id: u64) -> Result<u64> {
        Ok(self.state.last_change_id(account_id)?)
    }

    /// Returns the change id up to which the account's change log was trimmed: a session
    /// that last synced below it must resynchronise from the mailbox itself.
    pub fn change_floor(&self, account_id: u64) -> Result<u64> {
        Ok(self.state.change_floor(account_id)?)
    }

    /// Returns the UIDs expunged from a mailbox with a MODSEQ above `after`.
    pub fn expunged_since(&self, account_id: u64, mailbox_id: u64, after: u64) -> Result<Vec<u32>> {
        Ok(self.state.expunged_since(account_id, mailbox_id, after)?)
    }

    /// Returns the names an account subscribed to.
    pub fn subscriptions(&self, account_id: u64) -> Result<Vec<String>> {
        Ok(self.state.subscriptions(account_id)?)
    }

    /// Creates the default special-use mailboxes an account lacks (on its first login).
    pub async fn ensure_default_mailboxes(&self, account_id: u64) -> Result<()> {
        let existing = self.state.mailboxes(account_id)?;
        for (name, special_use) in DEFAULT_MAILBOXES {
            let present = existing.iter().any(|mailbox| {
                mailbox.name.eq_ignore_ascii_case(name) || mailbox.special_use.as_deref() == Some(special_use)
            });
            if present {
                continue;
            }
            match self.create_mailbox(account_id, name, Some(special_use.to_owned())).await {
                Ok(_) => {}
                // Another session of the same user created it first.
                Err(error) if error.code == ErrorCode::AlreadyExists => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Creates a mailbox (and its missing superiors); returns its id.
    pub async fn create_mailbox(&self, account_id: u64, name: &str, special_use: Option<String>) -> Result<u64> {
        let command = Command::CreateMailbox { account_id, name: name.to_owned(), special_use };
        match self.execute(command).await? {
            Outcome::MailboxCreated { mailbox_id } => Ok(mailbox_id),
            other => Err(unexpected("creating a mailbox", other)),
        }
    }

    /// Renames a mailbox with its inferiors.
    pub async fn rename_mailbox(&self, account_id: u64, from: &str, to: &str) -> Result<()> {
        self.execute(Command::RenameMailbox { account_id, from: from.to_owned(), to: to.to_owned() }).await.map(drop)
    }

    /// Deletes a mailbox and its messages.
    pub async fn delete_mailbox(&self, account_id: u64, name: &str) -> Result<()> {
        self.execute(Command::DeleteMailbox { account_id, name: name.to_owned() }).await.map(drop)
    }

    /// Subscribes to or unsubscribes from a name.
    pub async fn set_subscription(&self, account_id: u64, name: &str, subscribed: bool) -> Result<()> {
        self.execute(Command::SetSubscription { account_id, name: name.to_owned(), subscribed }).await.map(drop)
    }

    /// Streams a message body into the blob store, to be filed by [`Core::append`]. Fails
    /// with `InvalidInput` when the stream itself fails (the client went away).
    pub async fn store_message<S>(&self, body: S) -> Result<StoredBody>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        self.check_disk_space()?;
        let stored_after_index = self.consensus.metrics().last_applied.map_or(0, |id| id.index);
        let (stored, copy, _) = self.store_body(body).await?;
        let (summary, threading) = self.encoded_summary(&stored, copy).await.unzip();
        Ok(StoredBody { blob: stored.id, size: stored.size, stored_after_index, summary, threading })
    }

    /// Parses a stored message into its encoded [`MessageSummary`] (from `copy` when the
    /// body was small enough to keep, else read back) and its threading links. `None` when
    /// the body is too large to parse or cannot be read: readers then parse on demand.
    pub(crate) async fn encoded_summary(
        &self,
        stored: &StoredBlob,
        copy: Option<Vec<u8>>,
    ) -> Option<(Vec<u8>, Threading)> {
        // Large bodies are read back and parsed at most two at a time: the permit is held
        // until the parse (which needs the whole message and more) is done.
        let mut _permit = None;
        let raw = match copy {
            Some(copy) => Bytes::from(copy),
            None if stored.size <= SUMMARY_PARSE_LIMIT => {
                _permit = Some(self.summary_parses.acquire().await.ok()?);
                match self.blobs.read_all(&stored.id).await {
                    Ok(raw) => raw,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read a stored body back to summarise it");
                        return None;
                    }
                }
            }
            None => return None,
        };
        let summary = tokio::task::spawn_blocking(move || summarize(&raw)).await.ok()?;
        let mut references = summary.references.clone();
        references.extend(summary.in_reply_to.iter().filter(|id| !summary.references.contains(id)).cloned());
        let threading = Threading { message_id: summary.message_id.clone(), references };
        Some((encode_summary(&summary), threading))
    }

    /// Returns a message's summary: the one stored at delivery, or parsed now from the body.
    pub async fn message_summary(&self, blob: &BlobId) -> Result<MessageSummary> {
        if let Some(summary) = self.state.summary(blob)?.as_deref().and_then(decode_summary) {
            return Ok(summary);
        }
        let raw = self.read_blob(blob).await?;
        tokio::task::spawn_blocking(move || summarize(&raw))
            .await
            .map_err(|e| CoreError::internal("parsing a message", e))
    }

    /// Files stored bodies into a mailbox with their flags and internal dates, all in one
    /// replicated batch (MULTIAPPEND is all or nothing only per message; RFC 3502 §6 asks
    /// for all-or-nothing, so a failure after the first commit is reported with the UIDs
    /// already appended). Returns `(uid_validity, uids)`.
    pub async fn append(
        &self,
        account_id: u64,
        mailbox_id: u64,
        messages: Vec<(StoredBody, Vec<String>, u64)>,
    ) -> Result<(u32, Vec<u32>)> {
        let mailbox = self
            .mailbox(account_id, mailbox_id)?
            .ok_or_else(|| CoreError::new(ErrorCode::NotFound, "the mailbox does not exist any more"))?;
        let mut uids = Vec::with_capacity(messages.len());
        for (body, flags, internal_date_ms) in messages {
            let command = Command::Deliver {
                blob: body.blob,
                stored_after_index: body.stored_after_index,
                size: body.size,
                internal_date_ms,
                flags,
                summary: body.summary,
                threading: body.threading,
                targets: vec![DeliveryTarget { account_id, mailbox_id: Some(mailbox_id) }],
                outbound: None,
            };
            let results = match self.execute(command).await? {
                Outcome::Delivered { results, .. } => results,
                other => return Err(unexpected("appending", other)),
            };
            match results.first() {
                Some(DeliveryResult::Stored { uid, .. }) => uids.push(*uid),
                Some(DeliveryResult::OverQuota) => {
                    return Err(CoreError::new(ErrorCode::OverQuota, "the mailbox is over its storage quota"));
                }
                Some(DeliveryResult::NotReceiving) => {
                    return Err(CoreError::new(ErrorCode::Conflict, "the account does not accept messages"));
                }
                Some(DeliveryResult::NoSuchMailbox | DeliveryResult::Forwarded) | None => {
                    return Err(CoreError::new(ErrorCode::NotFound, "the mailbox does not exist any more"));
                }
            }
        }
        Ok((mailbox.uid_validity, uids))
    }

    /// Changes flags, 4,096 messages per command; returns the mailbox's new HIGHESTMODSEQ
    /// and the UIDs that failed an `unchanged_since` test (RFC 7162 §3.1.3). A failure after
    /// the first chunk leaves the earlier chunks changed (sessions hear of them from the
    /// change log); COPY and MOVE, which must be all or nothing (RFC 9051 §6.4.7), stay one
    /// command.
    pub async fn set_flags(
        &self,
        account_id: u64,
        mailbox_id: u64,
        uids: Vec<u32>,
        action: FlagAction,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    ) -> Result<(u64, Vec<u32>)> {
        // A change of many messages (`STORE 1:*` on a big mailbox) is committed as several
        // commands, so no log entry or apply batch grows with the mailbox. IMAP allows it:
        // each message's change stands alone (RFC 9051 §6.4.6, RFC 7162 §3.1.3).
        let mut chunks: Vec<&[u32]> = uids.chunks(FLAG_CHANGE_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let (mut highest, mut modified) = (0, Vec::new());
        for chunk in chunks {
            let uids = chunk.to_vec();
            let command =
                Command::SetFlags { account_id, mailbox_id, uids, action, flags: flags.clone(), unchanged_since };
            match self.execute(command).await? {
                Outcome::FlagsSet { modseq, modified: failed } => {
                    highest = highest.max(modseq);
                    modified.extend(failed);
                }
                other => return Err(unexpected("storing flags", other)),
            }
        }
        Ok((highest, modified))
    }

    /// Copies (or with `remove_source`, moves) messages to another mailbox of the account.
    pub async fn copy_messages(
        &self,
        account_id: u64,
        from_mailbox: u64,
        uids: Vec<u32>,
        to_mailbox: u64,
        remove_source: bool,
    ) -> Result<CopyResult> {
        let command = Command::CopyMessages { account_id, from_mailbox, uids, to_mailbox, remove_source };
        match self.execute(command).await? {
            Outcome::Copied { uid_validity, source_uids, new_uids } => {
                // What users file into or out of Junk teaches the domain's spam classifier.
                let use_of = |id| -> Option<String> { self.state.mailbox(account_id, id).ok()??.special_use };
                let (from_use, to_use) = (use_of(from_mailbox), use_of(to_mailbox));
                let lesson = match (from_use.as_deref(), to_use.as_deref()) {
                    (from, Some("\\Junk")) if from != Some("\\Junk") => Some(true),
                    (Some("\\Junk"), to) if !matches!(to, Some("\\Junk" | "\\Trash")) => Some(false),
                    _ => None,
                };
                if let Some(spam) = lesson
                    && let Err(error) = self.learn(account_id, to_mailbox, &new_uids, spam).await
                {
                    tracing::warn!(%error, "learning from a move into or out of Junk failed");
                }
                Ok(CopyResult { uid_validity, source_uids, new_uids })
            }
            other => Err(unexpected("copying messages", other)),
        }
    }

    /// Claims the unclaimed `\Recent` messages of a mailbox below UID `up_to` for the
    /// calling session, once it is committed; returns the UIDs it won (empty when another
    /// session was first).
    pub async fn claim_recent(&self, account_id: u64, mailbox_id: u64, up_to: u32) -> Result<std::ops::Range<u32>> {
        match self.execute(Command::ClaimRecentUpTo { account_id, mailbox_id, up_to }).await? {
            Outcome::RecentClaimed { first_recent_uid } => Ok(first_recent_uid..up_to.max(first_recent_uid)),
            other => Err(unexpected("claiming recent messages", other)),
        }
    }
}
