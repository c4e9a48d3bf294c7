//! The worker that feeds this node's full-text index from what the node applied.
//!
//! After each applied batch the state tells the indexer which accounts changed. The worker
//! reads those accounts' change logs from the last change it indexed (kept in the index's
//! commit record), adds a document for each message added and removes expunged messages and
//! deleted mailboxes. An account whose log was trimmed past that point (a lagging index, a
//! snapshot install) or that was never indexed is reconciled with its mailboxes: messages the
//! index lacks are added, ones it holds that are gone removed. Indexing runs
//! beside the write path and never holds it up: it lags, and SEARCH stays exact meanwhile
//! because messages the index does not hold are always candidates.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use wmail_search::{MessageDocument, OpenOutcome, Progress, RankedError, SearchIndex};
use wmail_storage::{BlobId, Change, MessageRecord};

use crate::message::{SearchField, attachment_names, search_texts};
use crate::{Core, CoreError, ErrorCode, Result, now_ms};

/// Messages larger than this are not read back for indexing: their subject and addresses
/// are indexed from the stored summary and they are marked truncated (SEARCH reads them).
const MAX_INDEXED_MESSAGE: u64 = 64 << 20;
/// Documents written between commits during a long pass.
const COMMIT_EVERY: usize = 2_000;
/// The least time between passes, so a busy node commits the index a few times a second
/// rather than after every applied batch.
const PASS_INTERVAL: Duration = Duration::from_millis(250);
/// The node counts as busy writing for this long after an applied change.
const BUSY_WINDOW: Duration = Duration::from_millis(500);
/// While the node is busy, the indexer sleeps this many times as long as it worked on a
/// message (Tantivy's indexing and merge threads follow the pace it sets). Measured on 2
/// cores, a 100k-message IMAP fill ran at 1,275 messages/s with it and 1,107 without
/// (1,603-1,825 with no index); a factor of 10 was not better.
const BUSY_YIELD_FACTOR: u32 = 3;
/// How long an account whose messages could not be read waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a reindex has done so far (`wmail search reindex`, `GET /api/v1/search/reindex`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReindexProgress {
    /// A reindex is running.
    pub running: bool,
    /// The account being reindexed, or `None` for all.
    pub account: Option<u64>,
    /// Messages to index.
    pub total: u64,
    /// Messages indexed so far.
    pub done: u64,
    /// When it started (ms since the epoch; 0: never).
    pub started_ms: u64,
    /// When it finished (ms since the epoch; 0: not yet).
    pub finished_ms: u64,
}

/// Shared between the worker, the change listener and the API.
#[derive(Default)]
pub(crate) struct IndexerState {
    dirty: Mutex<BTreeSet<u64>>,
    wake: tokio::sync::Notify,
    /// Accounts to rebuild from their mailboxes on the next pass.
    rebuild: Mutex<BTreeSet<u64>>,
    reindex: Mutex<ReindexProgress>,
    messages_read: AtomicU64,
    /// When the state last applied a change (ms since the epoch).
    last_apply_ms: AtomicU64,
    /// Bodies found missing from the blob store once (see `Pass::missing_body`).
    missing_bodies: Mutex<std::collections::HashSet<wmail_storage::BlobId>>,
}

impl IndexerState {
    /// Marks accounts as changed (called after each applied batch).
    pub(crate) fn notify(&self, accounts: &[u64]) {
        self.last_apply_ms.store(now_ms(), Ordering::Relaxed);
        self.dirty.lock().expect("indexer lock").extend(accounts);
        self.wake.notify_one();
    }

    /// After `worked` of indexing, gives the CPU back while the node is busy writing: the
    /// index lags rather than slowing mail intake, and catches up at full speed when the
    /// writes stop.
    async fn yield_if_busy(&self, worked: Duration) {
        if now_ms().saturating_sub(self.last_apply_ms.load(Ordering::Relaxed)) < BUSY_WINDOW.as_millis() as u64 {
            tokio::time::sleep(worked * BUSY_YIELD_FACTOR).await;
        }
    }
}

/// Opens (or rebuilds) the index in `<data_dir>/search` and logs what it found.
pub(crate) fn open_index(data_dir: &std::path::Path) -> Result<SearchIndex> {
    let dir = data_dir.join("search");
    let (index, outcome) = SearchIndex::open(&dir).map_err(|e| CoreError::internal("opening the search index", e))?;
    match outcome {
        OpenOutcome::Opened => tracing::debug!(dir = %dir.display(), "search index opened"),
        OpenOutcome::Created => tracing::info!(dir = %dir.display(), "search index created; indexing every account"),
        OpenOutcome::Rebuilding(reason) => tracing::warn!(
            dir = %dir.display(), %reason,
            "the search index could not be used and was removed; rebuilding it from the state (SEARCH stays exact meanwhile)"
        ),
    }
    Ok(index)
}

impl Core {
    /// Starts rebuilding the full-text index of one account, or of all; returns at once.
    /// Progress is in [`Core::reindex_progress`].
    pub async fn start_reindex(&self, account: Option<u64>) -> Result<ReindexProgress> {
        self.search_available()?;
        let state = self.state.clone();
        let (accounts, total) = tokio::task::spawn_blocking(move || -> Result<(Vec<u64>, u64)> {
            let accounts = match account {
                Some(id) if state.account(id)?.is_none() => {
                    return Err(CoreError::new(ErrorCode::NotFound, format!("no account with id {id}")));
                }
                Some(id) => vec![id],
                None => state.account_ids()?,
            };
            let mut total = 0;
            for id in &accounts {
                total += state.mailboxes(*id)?.iter().map(|mailbox| mailbox.message_count).sum::<u64>();
            }
            Ok((accounts, total))
        })
        .await
        .map_err(|e| CoreError::internal("counting messages to reindex", e))??;
        let progress = {
            let mut progress = self.indexer.reindex.lock().expect("indexer lock");
            if progress.running {
                return Err(CoreError::new(ErrorCode::Conflict, "a reindex is already running; wait for it"));
            }
            *progress =
                ReindexProgress { running: true, account, total, done: 0, started_ms: now_ms(), finished_ms: 0 };
            // Under the progress lock, so a pass ending now cannot see it finished.
            self.indexer.rebuild.lock().expect("indexer lock").extend(&accounts);
            progress.clone()
        };
        self.indexer.notify(&accounts);
        tracing::info!(?account, messages = total, "reindex started");
        Ok(progress)
    }

    /// Ranked search of an account's mail for people (the webmail's search box; query
    /// language in [`wmail_search::parse_query`]): the best `limit` messages, newest index
    /// state, each with its mailbox, subject, sender and a highlighted snippet.
    pub async fn search_messages(&self, account_id: u64, query: &str, limit: usize) -> Result<Vec<SearchHit>> {
        self.search_available()?;
        let clauses = wmail_search::parse_query(query).map_err(|e| CoreError::new(ErrorCode::InvalidInput, e.0))?;
        let mailboxes = self.state.mailboxes(account_id)?;
        let by_name: HashMap<String, u64> =
            mailboxes.iter().map(|mailbox| (mailbox.name.clone(), mailbox.id)).collect();
        let names: HashMap<u64, String> = mailboxes.into_iter().map(|mailbox| (mailbox.id, mailbox.name)).collect();
        let index = self.search.clone();
        // A few more than asked: some may have been expunged since they were indexed.
        let wanted = limit.clamp(1, 1000);
        let hits = tokio::task::spawn_blocking(move || index.ranked(account_id, &clauses, &by_name, wanted + 16))
            .await
            .map_err(|e| CoreError::internal("searching", e))?
            .map_err(|error| match error {
                RankedError::Query(error) => CoreError::new(ErrorCode::InvalidInput, error.0),
                RankedError::Index(error) => CoreError::internal("searching", error),
            })?;
        let mut out = Vec::with_capacity(wanted);
        for hit in hits {
            let (Some(mailbox), Some(record)) =
                (names.get(&hit.mailbox), self.state.message(account_id, hit.mailbox, hit.uid)?)
            else {
                continue;
            };
            let summary = self.message_summary(&record.blob).await?;
            out.push(SearchHit {
                mailbox: mailbox.clone(),
                uid: hit.uid,
                score: hit.score,
                internal_date_ms: record.internal_date_ms,
                subject: summary.subject_decoded,
                from: summary.display_from,
                snippet: hit.snippet,
            });
            if out.len() == wanted {
                break;
            }
        }
        Ok(out)
    }

    fn search_available(&self) -> Result<()> {
        match self.config.search_enabled {
            true => Ok(()),
            false => Err(CoreError::new(
                ErrorCode::Unavailable,
                "full-text search is turned off on this node ([search] enabled = false); ask another node or turn it on",
            )),
        }
    }

    /// What the last (or running) reindex did.
    pub fn reindex_progress(&self) -> ReindexProgress {
        self.indexer.reindex.lock().expect("indexer lock").clone()
    }

    /// The state of this node's full-text index.
    pub fn search_status(&self) -> SearchStatus {
        SearchStatus {
            documents: self.search.document_count(),
            index_bytes: self.search.size_on_disk(),
            messages_read: self.indexer.messages_read.load(Ordering::Relaxed),
            reindex: self.reindex_progress(),
        }
    }

    /// Counts messages whose content a SEARCH read to check them (the index narrows this).
    pub fn count_search_reads(&self, messages: u64) {
        self.indexer.messages_read.fetch_add(messages, Ordering::Relaxed);
    }
}

/// One message found by [`Core::search_messages`].
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    /// Its mailbox's name.
    pub mailbox: String,
    /// Its UID there.
    pub uid: u32,
    /// Relevance (higher is better; 0 for queries of filters only).
    pub score: f32,
    /// When it was received (ms since the epoch).
    pub internal_date_ms: u64,
    /// Its subject, decoded.
    pub subject: String,
    /// Its sender's display name, else address.
    pub from: String,
    /// Body text around the words found, HTML with `<b>` around them.
    pub snippet: String,
}

/// The state of a node's full-text index (`GET /api/v1/search/status`, metrics).
#[derive(Debug, Clone, Serialize)]
pub struct SearchStatus {
    /// Documents (message copies) in the index.
    pub documents: u64,
    /// Size of the index on disk.
    pub index_bytes: u64,
    /// Messages whose content SEARCH read since the node started.
    pub messages_read: u64,
    /// The last (or running) reindex.
    pub reindex: ReindexProgress,
}

/// Feeds the index until the core is dropped.
pub(crate) async fn indexer_worker(core: Weak<Core>) {
    let Some(state) = core.upgrade().map(|core| core.indexer.clone()) else { return };
    // Every account once at start: catches up on what was applied while the node was down.
    if let Some(core) = core.upgrade() {
        let store = core.state.clone();
        let indexed: Vec<u64> = core.search.progress().accounts.keys().copied().collect();
        match tokio::task::spawn_blocking(move || store.account_ids()).await {
            Ok(Ok(ids)) => state.notify(&[ids, indexed].concat()),
            other => tracing::warn!(?other, "cannot list accounts to index"),
        }
    }
    let mut retry = false;
    loop {
        let wait = if retry { RETRY_AFTER } else { Duration::from_secs(3600) };
        let _ = tokio::time::timeout(wait, state.wake.notified()).await;
        tokio::time::sleep(PASS_INTERVAL).await;
        let Some(core) = core.upgrade() else { return };
        let accounts = std::mem::take(&mut *state.dirty.lock().expect("indexer lock"));
        let mut pass =
            Pass { core: &core, progress: core.search.progress(), written: 0, texts: HashMap::new(), texts_bytes: 0 };
        retry = false;
        for account in accounts {
            if let Err(error) = pass.account(account).await {
                tracing::warn!(account, %error, "indexing an account failed; trying again shortly");
                state.dirty.lock().expect("indexer lock").insert(account);
                retry = true;
            }
        }
        if let Err(error) = pass.commit().await {
            tracing::warn!(%error, "committing the search index failed; trying again shortly");
            retry = true;
        }
        let mut reindex = state.reindex.lock().expect("indexer lock");
        if reindex.running && state.rebuild.lock().expect("indexer lock").is_empty() && !retry {
            reindex.running = false;
            reindex.finished_ms = now_ms();
            tracing::info!(messages = reindex.done, "reindex finished");
        }
    }
}

/// What is indexed of one message body.
struct MessageTexts {
    /// Each capped to [`wmail_search::MAX_INDEXED_TEXT`].
    texts: Vec<(SearchField, String)>,
    attachments: Vec<String>,
    /// Some of the text is left out (the message is too large to read back, or a text
    /// was over the cap).
    truncated: bool,
    /// CPU time it took to extract.
    extraction: Duration,
}

impl MessageTexts {
    fn bytes(&self) -> usize {
        self.texts.iter().map(|(_, text)| text.len()).sum::<usize>()
            + self.attachments.iter().map(String::len).sum::<usize>()
    }
}

/// Most text bytes a pass keeps for bodies it may meet again.
const PASS_CACHE_BYTES: usize = 64 << 20;

/// One pass over the changed accounts.
struct Pass<'a> {
    core: &'a Arc<Core>,
    progress: Progress,
    written: usize,
    /// Texts of bodies seen in this pass (one delivery to many accounts shares a body), at
    /// most [`PASS_CACHE_BYTES`] of them.
    texts: HashMap<BlobId, Arc<MessageTexts>>,
    texts_bytes: usize,
}

impl Pass<'_> {
    async fn account(&mut self, account: u64) -> Result<()> {
        let store = self.core.state.clone();
        let after = self.progress.accounts.get(&account).copied();
        let rebuild = self.core.indexer.rebuild.lock().expect("indexer lock").contains(&account);
        let (exists, floor, changes) = tokio::task::spawn_blocking(move || -> Result<_> {
            let exists = store.account(account)?.is_some();
            let floor = store.change_floor(account)?;
            let changes = match after {
                Some(after) if !rebuild && after >= floor => Some(store.changes_since(account, after)?),
                _ => None,
            };
            Ok((exists, floor, changes))
        })
        .await
        .map_err(|e| CoreError::internal("reading an account's changes", e))??;
        if !exists {
            self.core.search.remove_account(account);
            self.progress.accounts.remove(&account);
            self.core.indexer.rebuild.lock().expect("indexer lock").remove(&account);
            self.written += 1;
            return Ok(());
        }
        match changes {
            Some(changes) => {
                for (change_id, change) in changes {
                    self.apply_change(account, change).await?;
                    self.progress.accounts.insert(account, change_id);
                    self.maybe_commit().await?;
                }
            }
            None => {
                tracing::debug!(account, floor, ?after, rebuild, "reconciling an account's search documents");
                self.reconcile(account, rebuild).await?;
                self.core.indexer.rebuild.lock().expect("indexer lock").remove(&account);
            }
        }
        Ok(())
    }

    async fn apply_change(&mut self, account: u64, change: Change) -> Result<()> {
        match change {
            Change::Added { mailbox_id, uid, .. } => {
                if let Some(record) = self.core.state.message(account, mailbox_id, uid)? {
                    self.add(account, mailbox_id, record).await?;
                }
            }
            Change::Expunged { mailbox_id, uid, .. } => {
                self.core.search.remove_message(account, mailbox_id, uid);
                self.written += 1;
            }
            Change::MailboxDeleted { mailbox_id } => {
                self.core.search.remove_mailbox(account, mailbox_id);
                self.written += 1;
            }
            Change::FlagsChanged { .. } | Change::MailboxCreated { .. } | Change::MailboxRenamed { .. } => {}
        }
        Ok(())
    }

    /// Makes an account's documents match what its mailboxes hold, without its change log:
    /// adds the messages the index lacks and removes those it holds that are gone. A UID's
    /// message never changes, so what is indexed stays valid, and catching up costs what is
    /// missing, not the whole account (a large account whose log is trimmed faster than it
    /// is indexed still converges). `full` (a reindex) drops every document first.
    async fn reconcile(&mut self, account: u64, full: bool) -> Result<()> {
        let store = self.core.state.clone();
        // Read before the scan: changes after it are replayed next time (adding twice
        // replaces the document).
        let last = tokio::task::spawn_blocking(move || store.last_change_id(account))
            .await
            .map_err(|e| CoreError::internal("reading an account's changes", e))??;
        if full {
            self.core.search.remove_account(account);
            // Committed mid-way, this says "not indexed": a restart reconciles the account
            // instead of trusting a position whose documents are gone.
            self.progress.accounts.remove(&account);
        }
        for mailbox in self.core.state.mailboxes(account)? {
            let indexed = match full {
                true => Default::default(),
                false => {
                    let index = self.core.search.clone();
                    tokio::task::spawn_blocking(move || index.indexed(account, mailbox.id))
                        .await
                        .map_err(|e| CoreError::internal("reading the search index", e))?
                        .map_err(|e| CoreError::internal("reading the search index", e))?
                        .uids
                }
            };
            let records = self.core.mailbox_messages(account, mailbox.id).await?;
            let live: std::collections::HashSet<u32> = records.iter().map(|record| record.uid).collect();
            for gone in indexed.difference(&live) {
                self.core.search.remove_message(account, mailbox.id, *gone);
                self.written += 1;
            }
            for record in records.into_iter().filter(|record| !indexed.contains(&record.uid)) {
                self.add(account, mailbox.id, record).await?;
                if full {
                    self.core.indexer.reindex.lock().expect("indexer lock").done += 1;
                }
                self.maybe_commit().await?;
            }
        }
        self.progress.accounts.insert(account, last);
        Ok(())
    }

    async fn add(&mut self, account: u64, mailbox: u64, record: MessageRecord) -> Result<()> {
        // CPU spent on this message (not waiting for the body store), for the yield.
        let mut worked = Duration::ZERO;
        let texts = match self.texts.get(&record.blob) {
            Some(texts) => texts.clone(),
            None => {
                let texts = Arc::new(self.texts_of(&record).await?);
                worked += texts.extraction;
                if self.texts.len() >= 64 || self.texts_bytes + texts.bytes() > PASS_CACHE_BYTES {
                    self.texts.clear();
                    self.texts_bytes = 0;
                }
                self.texts_bytes += texts.bytes();
                self.texts.insert(record.blob, texts.clone());
                texts
            }
        };
        let document = MessageDocument {
            account,
            mailbox,
            uid: record.uid,
            texts: texts.texts.clone(),
            attachments: texts.attachments.clone(),
            date_ms: record.internal_date_ms,
            truncated: texts.truncated,
        };
        let index = self.core.search.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || index.add(&document))
            .await
            .map_err(|e| CoreError::internal("indexing a message", e))?
            .map_err(|e| CoreError::internal("indexing a message", e))?;
        worked += started.elapsed();
        self.written += 1;
        self.core.indexer.yield_if_busy(worked).await;
        Ok(())
    }

    /// The searchable texts of a message. A body missing from the blob store is indexed
    /// with no text and marked truncated (see [`Self::missing_body`]) instead of failing
    /// its account's indexing for ever; other read errors are retried.
    async fn texts_of(&self, record: &MessageRecord) -> Result<MessageTexts> {
        let raw = if record.size > MAX_INDEXED_MESSAGE {
            None
        } else {
            match self.core.blobs.read_all(&record.blob).await {
                Ok(raw) => Some(raw),
                Err(error) if error.kind() == wmail_storage::ErrorKind::NotFound => return self.missing_body(record),
                Err(error) => return Err(CoreError::internal("reading a message body", error)),
            }
        };
        let summary = match self.core.message_summary(&record.blob).await {
            Ok(summary) => summary,
            // A large message's summary is parsed from its body, which may be the one gone.
            Err(_) if raw.is_none() && matches!(self.core.blobs.exists(&record.blob).await, Ok(false)) => {
                return self.missing_body(record);
            }
            Err(error) => return Err(error),
        };
        let attachments = attachment_names(&summary.root);
        let Some(raw) = raw else {
            let texts = vec![(SearchField::Subject, summary.subject_decoded.clone())];
            return Ok(MessageTexts { texts, attachments, truncated: true, extraction: Duration::ZERO });
        };
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut texts = search_texts(&raw, &summary);
            drop(raw);
            let mut truncated = false;
            for (_, text) in &mut texts {
                truncated |= wmail_search::cap_text(text);
            }
            MessageTexts { texts, attachments, truncated, extraction: started.elapsed() }
        })
        .await
        .map_err(|e| CoreError::internal("extracting a message's text", e))
    }

    /// A body the blob store says is missing. The first time it is an error like any
    /// other (the account is retried shortly: an S3 endpoint may answer 404 for a moment);
    /// missing again on a later pass, the message is indexed with its stored subject only
    /// and marked truncated, so SEARCH reads it (and reports the loss) while the rest of
    /// the account stays indexed.
    fn missing_body(&self, record: &MessageRecord) -> Result<MessageTexts> {
        let first_time = self.core.indexer.missing_bodies.lock().expect("indexer lock").insert(record.blob);
        if first_time {
            return Err(CoreError::internal(
                "reading a message body",
                format!("blob {} is missing from the blob store (checked again shortly)", record.blob),
            ));
        }
        tracing::error!(blob = %record.blob, uid = record.uid, "a message body is missing from the blob store; indexing the message without its text");
        let subject =
            self.core.state.summary(&record.blob).ok().flatten().as_deref().and_then(crate::mailbox::decode_summary);
        let texts = subject.map(|s| vec![(SearchField::Subject, s.subject_decoded)]).unwrap_or_default();
        Ok(MessageTexts { texts, attachments: Vec::new(), truncated: true, extraction: Duration::ZERO })
    }

    async fn maybe_commit(&mut self) -> Result<()> {
        if self.written >= COMMIT_EVERY { self.commit().await } else { Ok(()) }
    }

    async fn commit(&mut self) -> Result<()> {
        if self.written == 0 && self.progress == self.core.search.progress() {
            return Ok(());
        }
        let index = self.core.search.clone();
        let progress = self.progress.clone();
        tokio::task::spawn_blocking(move || index.commit(progress))
            .await
            .map_err(|e| CoreError::internal("committing the search index", e))?
            .map_err(|e| CoreError::internal("committing the search index", e))?;
        self.written = 0;
        Ok(())
    }
}
