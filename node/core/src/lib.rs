//! wmail-core is the mail logic of a node, with no protocol syntax: accounts, domains,
//! aliases, authentication and delivery. Protocol crates and the HTTP API call it; it is
//! the only gateway to storage and consensus.
//!
//! Every change is a [`Command`] proposed through consensus; [`Core::execute`] returns once
//! the command is committed and applied on this node. Reads come from the local state.

mod address;
pub mod bayes;
mod cluster;
mod disk;
pub mod dkim;
pub mod dsn;
mod error;
mod fanout;
mod indexer;
mod login_guard;
mod mailbox;
pub mod message;
mod outbound;
pub mod password;
mod quarantine;
mod replicated;
pub mod sasl;
mod security;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use address::{normalize_address, normalize_domain};
use bytes::Bytes;
pub use cluster::{ClusterView, DEFAULT_TOKEN_LIFETIME, JoinTarget, MemberView};
pub use error::{CoreError, ErrorCode, Result};
pub use fanout::{LocalQuery, NodeQuery};
use futures::Stream;
pub use indexer::{ReindexProgress, SearchHit, SearchStatus};
pub use login_guard::{Blocked, LockoutPolicy, LoginGuard, StartedBlock};
pub use mailbox::{CopyResult, MailboxScan, StoredBody};
pub use replicated::ReplicatedMailState;
pub use security::{GreylistDecision, GreylistPolicy, LoginBlock};
use wmail_consensus::quic::QuicTransport;
pub use wmail_consensus::{BasicNode, MembershipChange, NodeId, NodeStatus, RaftMetrics, ServerState};
use wmail_consensus::{Consensus, ConsensusConfig, ProposeError};
pub use wmail_search::{IndexedMailbox, Lookup as SearchLookup, TextField as SearchField};
pub use wmail_storage::{
    Account, AccountState, AddressTarget, BlobBackend, BlobId, Command, DeliveryResult, DeliveryTarget, Domain, INBOX,
    Mailbox, MessageRecord, Outcome, S3Config, Service,
};
pub use wmail_storage::{
    AttemptResult, Notify, OutboundEnvelope, OutboundRecipient, QueueEntry, QueuedRecipient, RecipientStatus, Ret,
};
use wmail_storage::{BlobStore, CommandEnvelope, StateStore};
pub use wmail_storage::{Change, FlagAction, MAILBOX_SEPARATOR, Threading};
pub use wmail_storage::{DkimAlgorithm, DkimKey};
pub use wmail_storage::{QuarantineEntry, QuarantineInfo};

/// Where a node is in `wmail node drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainState {
    /// Accepting sessions.
    Serving,
    /// Asked to drain: no new sessions; open ones are ending.
    Draining,
    /// Every mail session has ended (or the grace period passed).
    Drained,
}

/// What `wmail node drain` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainReport {
    /// This node led the cluster when asked.
    pub was_leader: bool,
    /// The leader afterwards.
    pub leader: Option<NodeId>,
    /// Every session ended within the grace period.
    pub drained: bool,
}

/// Settings core needs to start.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The node's data directory (state, raft log, snapshots, local blobs).
    pub data_dir: PathBuf,
    /// This node's id in the cluster.
    pub node_id: NodeId,
    /// The cluster address peers use for this node.
    pub advertise_addr: String,
    /// Where the cluster transport listens (QUIC) once the node has a cluster identity.
    pub cluster_listen: std::net::SocketAddr,
    /// The member to enrol at when the data directory is new.
    pub join: Option<JoinTarget>,
    /// SHA-256 of this node's admin API token: once the node is part of a cluster, every
    /// node accepts it (see [`Core::is_admin_token`]).
    pub admin_token_hash: [u8; 32],
    /// Where message bodies live.
    pub blob_backend: BlobBackend,
    /// Bytes of remote bodies kept on local disk (`<data_dir>/blob-cache`); 0: none.
    pub blob_cache_bytes: u64,
    /// How long an unreferenced blob is kept before garbage collection deletes it.
    pub blob_gc_grace: Duration,
    /// Applied entries between state snapshots (after which the log is purged).
    pub snapshot_every: u64,
    /// Login lockout thresholds.
    pub lockout: LockoutPolicy,
    /// How long a correct password is remembered so the same login skips argon2 (zero:
    /// never; see [`password::VerifiedPasswords`]).
    pub remember_logins: Duration,
    /// Keep the full-text index and let IMAP SEARCH use it (`[search] enabled`); off,
    /// nothing is indexed, IMAP SEARCH reads every message and ranked search is refused.
    pub search_enabled: bool,
    /// Free space kept on the data disk: below it new mail is refused, temporarily
    /// (`[server] min_free_disk_mb`).
    pub min_free_disk_bytes: u64,
}

/// Default of [`CoreConfig::snapshot_every`].
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 20_000;

/// Most messages one expunge command names (see [`Core::expunge`]).
const EXPUNGE_CHUNK: usize = 4096;

/// How long a login waits behind other password checks of the same account or address
/// before it is told to retry (each check costs Argon2's few milliseconds).
const LOGIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// What to create in [`Core::create_account`].
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Primary address.
    pub address: String,
    /// Clear-text password (hashed here with argon2id).
    pub password: String,
    /// Display name.
    pub display_name: String,
    /// Quota in bytes; `None` for unlimited.
    pub quota_bytes: Option<u64>,
    /// Initial state.
    pub state: AccountState,
}

/// Changes to an account; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct AccountChanges {
    /// New clear-text password.
    pub password: Option<String>,
    /// New display name.
    pub display_name: Option<String>,
    /// New quota (`Some(None)` removes it).
    pub quota_bytes: Option<Option<u64>>,
    /// New state.
    pub state: Option<AccountState>,
}

/// The outcome of delivering one message to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    /// The recipient as given.
    pub recipient: String,
    /// What happened.
    pub result: std::result::Result<DeliveryResult, CoreError>,
}

/// Where a recipient's mail goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Local accounts, each once.
    pub accounts: Vec<u64>,
    /// Addresses mail is forwarded to, each once: alias targets in other domains, and
    /// unknown local parts of a domain that forwards them to another server.
    pub forwards: Vec<Forward>,
}

/// One address that mail leaves for through the outbound queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The address.
    pub address: String,
    /// The `host:port` it goes to instead of its domain's MX hosts.
    pub relay: Option<String>,
}

/// Where the local copies of a submitted message are filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// The recipient's INBOX.
    Inbox,
    /// The recipient's `\\Junk` mailbox (spam that is delivered, not refused).
    Junk,
}

/// What [`Core::submit`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// One result per local recipient, in the order given.
    pub recipients: Vec<RecipientResult>,
    /// The outbound queue entry holding the remote recipients, if there were any.
    pub queue_id: Option<u64>,
}

/// A running node's mail logic.
pub struct Core {
    /// Wakes this node's delivery worker when it queued a message.
    queue_signal: tokio::sync::Notify,
    login_guard: LoginGuard,
    verified_passwords: password::VerifiedPasswords,
    /// Refuses new mail while the data disk is nearly full.
    disk: Arc<disk::DiskGuard>,
    /// The revoked node ids as of an applied log index (see `cluster::Enroller`).
    revoked_nodes: std::sync::Mutex<(Option<u64>, Vec<NodeId>)>,
    /// Answers other nodes' questions about this node's local data (see `fanout`).
    local_query: std::sync::OnceLock<LocalQuery>,
    /// Bounds how many large bodies are read back and parsed at once.
    summary_parses: tokio::sync::Semaphore,
    notifier: Arc<mailbox::ChangeNotifier>,
    /// This node's full-text index, fed by `indexer::indexer_worker`.
    search: Arc<wmail_search::SearchIndex>,
    indexer: Arc<indexer::IndexerState>,
    state: Arc<StateStore>,
    blobs: BlobStore,
    consensus: Consensus,
    transport: Arc<QuicTransport>,
    /// Serialises the first `issue_join_token`, which makes this node's cluster identity.
    cluster_setup: tokio::sync::Mutex<()>,
    /// `wmail node drain`: the binary stops its mail listeners when this turns Draining.
    drain: tokio::sync::watch::Sender<DrainState>,
    /// Leases a learner took while cut off from the cluster: resource -> (holder, until).
    local_leases: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
    config: CoreConfig,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("node_id", &self.config.node_id).finish()
    }
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    wmail_consensus::tls::fingerprint_der(bytes)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn unavailable(error: ProposeError) -> CoreError {
    match error {
        ProposeError::ForwardToLeader { leader } => CoreError::new(
            ErrorCode::Unavailable,
            format!("this node is not the cluster leader (leader: {leader:?}); retry on the leader"),
        ),
        ProposeError::Unavailable(reason) => {
            CoreError::new(ErrorCode::Unavailable, format!("consensus unavailable: {reason}; retry shortly"))
        }
    }
}

impl Core {
    /// Opens storage, starts consensus and, on a node that was never part of a cluster,
    /// either enrols at `config.join` and asks to be added, or initialises a one-node
    /// cluster. Returns once the node has replayed its log.
    pub async fn start(mut config: CoreConfig) -> Result<Arc<Self>> {
        let mut identity = cluster::load_identity(&config.data_dir)?;
        if let (None, Some(join)) = (&identity, &config.join) {
            if config.data_dir.join("raft").exists() {
                return Err(CoreError::new(
                    ErrorCode::Conflict,
                    "this data directory already holds a cluster of its own; a joining node needs an empty --data-dir",
                ));
            }
            identity = Some(cluster::enrol(&config.data_dir, join, &config.advertise_addr).await?);
        }
        if let Some(identity) = &identity {
            config.node_id = identity.node_id;
        }
        let state_dir = config.data_dir.join("state");
        let state = Arc::new(
            tokio::task::spawn_blocking(move || StateStore::open(state_dir))
                .await
                .map_err(|e| CoreError::internal("opening the state", e))?
                .map_err(|e| CoreError::internal("opening the state", e))?,
        );
        let notifier = Arc::new(mailbox::ChangeNotifier::default());
        let indexer = Arc::new(indexer::IndexerState::default());
        let (listener, index_listener) = (notifier.clone(), indexer.clone());
        state.set_change_listener(Arc::new(move |accounts: &[u64]| {
            listener.notify(accounts);
            index_listener.notify(accounts);
        }));
        let data_dir = config.data_dir.clone();
        let search = Arc::new(
            tokio::task::spawn_blocking(move || indexer::open_index(&data_dir))
                .await
                .map_err(|e| CoreError::internal("opening the search index", e))??,
        );
        let mut blobs =
            BlobStore::open(&config.blob_backend).map_err(|e| CoreError::internal("opening the blob store", e))?;
        if config.blob_cache_bytes > 0 {
            let cache = wmail_storage::BlobCache::open(&config.data_dir.join("blob-cache"), config.blob_cache_bytes)
                .map_err(|e| CoreError::internal("opening the blob cache", e))?;
            blobs = blobs.with_cache(cache);
        }
        let mut consensus_config = ConsensusConfig::new(config.node_id, &config.advertise_addr, &config.data_dir);
        consensus_config.snapshot_every = config.snapshot_every;
        consensus_config.logs_kept_after_snapshot = (config.snapshot_every / 2).min(1_000);
        consensus_config.versions = wmail_consensus::CommandVersions {
            supported: wmail_storage::COMMAND_VERSION,
            unreported: wmail_storage::UNREPORTED_COMMAND_VERSION,
            required: wmail_storage::CommandEnvelope::required_version,
        };
        // Listens once the node has a cluster identity (it joined, or issued a join token).
        let transport = QuicTransport::new();
        let consensus =
            Consensus::open(consensus_config, Arc::new(ReplicatedMailState(state.clone())), transport.clone())
                .await
                .map_err(|e| CoreError::internal("starting consensus", e))?;
        let core = Arc::new(Self {
            queue_signal: tokio::sync::Notify::new(),
            login_guard: LoginGuard::new(config.lockout),
            verified_passwords: password::VerifiedPasswords::new(config.remember_logins),
            disk: Arc::new(disk::DiskGuard::new(config.data_dir.clone(), config.min_free_disk_bytes)),
            revoked_nodes: std::sync::Mutex::new((None, Vec::new())),
            local_query: std::sync::OnceLock::new(),
            summary_parses: tokio::sync::Semaphore::new(2),
            notifier,
            search,
            indexer,
            state,
            blobs,
            consensus,
            transport,
            local_leases: std::sync::Mutex::default(),
            drain: tokio::sync::watch::Sender::new(DrainState::Serving),
            cluster_setup: tokio::sync::Mutex::new(()),
            config,
        });
        disk::DiskGuard::spawn_sampler(&core.disk);
        if identity.is_some() {
            // A node that was down long enough may hold an expired certificate: renew it
            // before presenting it (the CA is in its replicated state).
            if let Err(error) = core.renew_certificate_if_due().await {
                tracing::warn!(%error, "cannot renew this node's cluster certificate; will try again");
            }
            identity = cluster::load_identity(&core.config.data_dir)?;
        }
        if let Some(identity) = &identity {
            core.listen(identity)?;
        }
        let initialized = core.consensus.is_initialized().await.map_err(unavailable)?;
        match identity.as_ref().and_then(|identity| identity.enrolled_at.as_ref()) {
            Some(enrolment) if !initialized => {
                let voter = !enrolment.learner;
                let change =
                    MembershipChange::Add { id: core.config.node_id, addr: core.config.advertise_addr.clone(), voter };
                tracing::info!(member = %enrolment.member_addr, "asking the cluster to add this node; it catches up first");
                core.consensus
                    .ask_member(enrolment.member_id, &enrolment.member_addr, change)
                    .await
                    .map_err(unavailable)?;
                // Serve nothing older than what the cluster had when this node was added.
                core.consensus.read_barrier().await.map_err(unavailable)?;
            }
            _ => {
                if core.consensus.initialize_single_node().await.map_err(unavailable)? {
                    tracing::info!(node_id = core.config.node_id, "initialised a new one-node cluster");
                }
            }
        }
        if !core.consensus.wait_ready(Duration::from_secs(60)).await {
            return Err(CoreError::new(ErrorCode::Unavailable, "consensus did not become ready within 60 s"));
        }
        if core.transport.is_started() {
            core.share_admin_token().await?;
        }
        core.release_stale_leases().await;
        tokio::spawn(blob_gc_worker(Arc::downgrade(&core)));
        tokio::spawn(cluster::certificate_worker(Arc::downgrade(&core)));
        if core.config.search_enabled {
            tokio::spawn(indexer::indexer_worker(Arc::downgrade(&core)));
        }
        Ok(core)
    }

    /// Proposes `command` and returns its outcome once committed and applied here.
    pub async fn execute(&self, command: Command) -> Result<Outcome> {
        let envelope = CommandEnvelope::new(command, now_ms());
        let response = self.consensus.propose(envelope.encode()).await.map_err(unavailable)?;
        let result = replicated::decode_result(&response)
            .ok_or_else(|| CoreError::internal("decoding a command result", "undecodable response"))?;
        Ok(result?)
    }

    /// Returns whether the node knows a leader and has applied its log.
    pub fn is_ready(&self) -> bool {
        self.consensus.is_ready()
    }

    /// The bytes of remote message bodies cached on this node's disk, if it caches.
    pub fn blob_cache_bytes(&self) -> Option<u64> {
        self.blobs.cached_bytes()
    }

    /// How long this node, a learner, has been cut off from the cluster: it then serves
    /// reads of what it has and refuses writes. `None` while in touch, and on voters.
    pub fn detached(&self) -> Option<Duration> {
        self.consensus.detached()
    }

    /// Fails with `InsufficientStorage` while the data disk has less than its reserve
    /// free: callers refuse new mail early with it (SMTP MAIL, IMAP APPEND).
    pub fn check_disk_space(&self) -> Result<()> {
        self.disk.check()
    }

    /// Bytes free on the data disk (sampled every second).
    pub fn data_disk_available_bytes(&self) -> u64 {
        self.disk.available_bytes()
    }

    /// Returns the Raft metrics of this node.
    pub fn raft_metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.consensus.metrics()
    }

    /// Returns the Raft log's disk-work counters: `(entries appended, append calls, WAL
    /// syncs)`; entries per sync is the group-commit factor.
    pub fn raft_log_io(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.consensus.log_stats();
        (stats.entries.load(Relaxed), stats.appends.load(Relaxed), stats.wal_syncs.load(Relaxed))
    }

    /// Password checks of logins on this node: `(argon2 verifications, answered from the
    /// recently verified passwords)`.
    pub fn password_checks(&self) -> (u64, u64) {
        self.verified_passwords.counts()
    }

    /// Returns the index of the last entry this node knows to be committed.
    pub fn raft_committed_index(&self) -> Option<u64> {
        let plus_one = self.consensus.log_stats().committed_plus_one.load(std::sync::atomic::Ordering::Relaxed);
        plus_one.checked_sub(1)
    }

    /// Waits until reads here see every write acknowledged anywhere before the call.
    pub async fn read_barrier(&self) -> Result<()> {
        self.consensus.read_barrier().await.map_err(unavailable)
    }

    /// Stops consensus; in-flight proposals finish or fail.
    pub async fn shutdown(&self) {
        self.consensus.shutdown().await;
        self.transport.stop().await;
    }

    // ----- domains -----

    /// Sets (or with `None` removes) the `host:port` server that receives mail for a
    /// domain's unknown local parts when it has no catch-all.
    pub async fn set_unknown_forward(&self, domain: &str, target: Option<&str>) -> Result<()> {
        let domain = normalize_domain(domain)?;
        let target = target.map(|target| target.trim().to_ascii_lowercase());
        self.execute(Command::SetUnknownForward { domain, target }).await.map(drop)
    }

    /// The server a domain forwards unknown local parts to, if any.
    pub fn unknown_forward(&self, domain: &str) -> Result<Option<String>> {
        Ok(self.state.unknown_forward(&normalize_domain(domain)?)?)
    }

    /// Adds a local domain.
    pub async fn create_domain(&self, name: &str) -> Result<Domain> {
        let name = normalize_domain(name)?;
        self.execute(Command::CreateDomain { name: name.clone() }).await?;
        self.domain(&name)?.ok_or_else(|| CoreError::internal("reading a created domain", &name))
    }

    /// Adds a domain alias: mail for `x@alias` goes to `x@target`.
    pub async fn create_domain_alias(&self, alias: &str, target: &str) -> Result<Domain> {
        let (alias, target) = (normalize_domain(alias)?, normalize_domain(target)?);
        self.execute(Command::CreateDomainAlias { alias: alias.clone(), target }).await?;
        self.domain(&alias)?.ok_or_else(|| CoreError::internal("reading a created domain alias", &alias))
    }

    /// Sets (or removes, with `None`) a domain's catch-all address for unknown local parts.
    pub async fn set_catch_all(&self, domain: &str, address: Option<&str>) -> Result<Domain> {
        let domain = normalize_domain(domain)?;
        let address = address.map(normalize_address).transpose()?;
        self.execute(Command::SetCatchAll { domain: domain.clone(), address }).await?;
        self.domain(&domain)?.ok_or_else(|| CoreError::internal("reading a domain", &domain))
    }

    /// Removes a domain that has no accounts or aliases left.
    pub async fn remove_domain(&self, name: &str) -> Result<()> {
        let name = normalize_domain(name)?;
        self.execute(Command::RemoveDomain { name }).await.map(drop)
    }

    /// Returns a domain.
    pub fn domain(&self, name: &str) -> Result<Option<Domain>> {
        Ok(self.state.domain(&normalize_domain(name)?)?)
    }

    /// Lists domains.
    pub fn domains(&self) -> Result<Vec<Domain>> {
        Ok(self.state.domains()?)
    }

    // ----- accounts -----

    /// Creates an account (and its INBOX).
    pub async fn create_account(&self, new: NewAccount) -> Result<Account> {
        let address = normalize_address(&new.address)?;
        password::check_policy(&new.password)?;
        let password_hash = password::hash(new.password).await?;
        self.execute(Command::CreateAccount {
            address: address.clone(),
            display_name: new.display_name,
            password_hash,
            quota_bytes: new.quota_bytes,
            state: new.state,
        })
        .await?;
        self.account(&address)?.ok_or_else(|| CoreError::internal("reading a created account", &address))
    }

    /// Changes an account.
    pub async fn update_account(&self, address: &str, changes: AccountChanges) -> Result<Account> {
        let address = normalize_address(address)?;
        let password_hash = match changes.password {
            Some(password) => {
                password::check_policy(&password)?;
                Some(password::hash(password).await?)
            }
            None => None,
        };
        self.execute(Command::UpdateAccount {
            address: address.clone(),
            display_name: changes.display_name,
            password_hash,
            quota_bytes: changes.quota_bytes,
            state: changes.state,
        })
        .await?;
        self.account(&address)?.ok_or_else(|| CoreError::internal("reading an updated account", &address))
    }

    /// Removes an account with all its mail.
    pub async fn remove_account(&self, address: &str) -> Result<()> {
        let address = normalize_address(address)?;
        self.execute(Command::RemoveAccount { address }).await.map(drop)
    }

    /// Returns the account whose primary address is `address`.
    pub fn account(&self, address: &str) -> Result<Option<Account>> {
        Ok(self.state.account_by_address(&normalize_address(address)?)?)
    }

    /// Returns an account by id.
    pub fn account_by_id(&self, account_id: u64) -> Result<Option<Account>> {
        Ok(self.state.account(account_id)?)
    }

    /// Lists accounts, of one domain or all.
    pub fn accounts(&self, domain: Option<&str>) -> Result<Vec<Account>> {
        let domain = domain.map(normalize_domain).transpose()?;
        let mut accounts = Vec::new();
        for (_, target) in self.state.addresses(domain.as_deref())? {
            if let AddressTarget::Account(id) = target
                && let Some(account) = self.state.account(id)?
            {
                accounts.push(account);
            }
        }
        Ok(accounts)
    }

    /// Checks a password; returns the account if it matches and the account may log in.
    /// The error never says which part was wrong.
    ///
    /// Too many failures from `client` or for the account block further attempts for a
    /// while ([`LockoutPolicy`]); a blocked attempt does not even check the password.
    pub async fn authenticate(
        &self,
        address: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Account> {
        let denied = || CoreError::new(ErrorCode::Unauthorized, "authentication failed");
        let account_key = normalize_address(address).unwrap_or_else(|_| address.to_ascii_lowercase());
        let too_many = || {
            CoreError::new(ErrorCode::Unauthorized, "too many failed logins; try again later or ask your administrator")
        };
        // Blocks started on any node (replicated) come first.
        let blocked_cluster_wide = || -> Result<bool> {
            Ok(client.is_some_and(|ip| self.is_blocked("address", &LoginGuard::address_key(ip)).unwrap_or(false))
                || self.is_blocked("account", &account_key)?)
        };
        if blocked_cluster_wide()? {
            tracing::info!(?client, account = %account_key, "login refused: blocked cluster-wide");
            return Err(too_many());
        }
        let attempt = match self.login_guard.attempt_patiently(client, &account_key, LOGIN_PATIENCE).await {
            Ok(attempt) => attempt,
            Err(Blocked::Busy) => {
                return Err(CoreError::new(
                    ErrorCode::Unavailable,
                    "too many logins in progress for this account or address; try again in a moment",
                ));
            }
            Err(blocked) => {
                tracing::info!(?blocked, "login refused: too many recent failures");
                return Err(too_many());
            }
        };
        // A block replicated while this attempt waited its turn holds too.
        if blocked_cluster_wide()? {
            attempt.withdrawn();
            tracing::info!(?client, account = %account_key, "login refused: blocked cluster-wide");
            return Err(too_many());
        }
        let Ok(address) = normalize_address(address) else { return Err(denied()) };
        let account = self.state.account_by_address(&address)?;
        let credentials = match &account {
            Some(account) => self.state.credentials(account.id)?,
            None => None,
        };
        let account_id = account.as_ref().map(|account| account.id);
        let hash = credentials.map(|credentials| credentials.password_hash);
        let matches = self.verified_passwords.verify(account_id, password.to_owned(), hash).await;
        match account {
            Some(account) if matches && account.state.may_log_in() => {
                attempt.succeeded();
                Ok(account)
            }
            _ => {
                let started = attempt.failed();
                if !started.is_empty() {
                    self.replicate_blocks(started).await;
                }
                Err(denied())
            }
        }
    }

    // ----- aliases -----

    /// Creates an alias forwarding to `targets`.
    pub async fn create_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        let alias = normalize_address(alias)?;
        let targets = targets.iter().map(|target| normalize_address(target)).collect::<Result<Vec<_>>>()?;
        self.execute(Command::CreateAlias { alias, targets }).await.map(drop)
    }

    /// Removes an alias.
    pub async fn remove_alias(&self, alias: &str) -> Result<()> {
        let alias = normalize_address(alias)?;
        self.execute(Command::RemoveAlias { alias }).await.map(drop)
    }

    /// Returns the targets of an alias (`None` when the address is not an alias).
    pub fn alias_targets(&self, alias: &str) -> Result<Option<Vec<String>>> {
        match self.state.resolve_address(&normalize_address(alias)?)? {
            Some(AddressTarget::Alias(targets)) => Ok(Some(targets)),
            _ => Ok(None),
        }
    }

    /// Lists aliases with their targets, of one domain or all.
    pub fn aliases(&self, domain: Option<&str>) -> Result<Vec<(String, Vec<String>)>> {
        let domain = domain.map(normalize_domain).transpose()?;
        Ok(self
            .state
            .addresses(domain.as_deref())?
            .into_iter()
            .filter_map(|(address, target)| match target {
                AddressTarget::Alias(targets) => Some((address, targets)),
                AddressTarget::Account(_) => None,
            })
            .collect())
    }

    // ----- mail -----

    /// Returns whether `domain` is one of this cluster's domains.
    pub fn is_local_domain(&self, domain: &str) -> Result<bool> {
        match normalize_domain(domain) {
            Ok(domain) => Ok(self.state.domain(&domain)?.is_some()),
            Err(_) => Ok(false),
        }
    }

    /// Returns the address that receives mail for a bare `postmaster` (RFC 5321 §4.5.1):
    /// `postmaster@` the first local domain (by name) where that address delivers.
    pub fn postmaster(&self) -> Result<Option<String>> {
        for domain in self.state.domains()? {
            if domain.alias_of.is_some() {
                continue;
            }
            let address = format!("postmaster@{}", domain.name);
            let resolution = self.resolve(&address, false)?;
            if !resolution.accounts.is_empty() || !resolution.forwards.is_empty() {
                return Ok(Some(address));
            }
        }
        Ok(None)
    }

    /// Returns whether `account` may send as `address`: its own address, or an alias (or
    /// plus-address) that delivers to it.
    pub fn may_send_as(&self, account: &Account, address: &str) -> Result<bool> {
        let Ok(address) = normalize_address(address) else { return Ok(false) };
        let domain = address.rsplit_once('@').map(|(_, domain)| domain).unwrap_or_default();
        let granted = account.send_as.iter().any(|grant| {
            *grant == address || grant.strip_prefix('@').is_some_and(|granted_domain| granted_domain == domain)
        });
        // Never through a catch-all: it would let its owner send as any address.
        Ok(granted || self.resolve(&address, false).unwrap_or_default().accounts.contains(&account.id))
    }

    /// Returns whether `account` may use `service`: neither the account nor its domain
    /// has it disabled.
    pub fn may_use(&self, account: &Account, service: Service) -> Result<bool> {
        if account.disabled_services.contains(&service) {
            return Ok(false);
        }
        let domain = account.address.rsplit_once('@').map(|(_, domain)| domain).unwrap_or_default();
        Ok(!self.state.domain(domain)?.is_some_and(|domain| domain.disabled_services.contains(&service)))
    }

    /// Sets the services an account may not use and the extra sender addresses it is
    /// granted (`someone@domain` or `@domain`); `None` leaves a list unchanged.
    pub async fn set_account_access(
        &self,
        address: &str,
        disabled_services: Option<Vec<Service>>,
        send_as: Option<Vec<String>>,
    ) -> Result<Account> {
        let address = normalize_address(address)?;
        let send_as = send_as
            .map(|grants| {
                grants
                    .iter()
                    .map(|grant| match grant.strip_prefix('@') {
                        Some(domain) => normalize_domain(domain).map(|domain| format!("@{domain}")),
                        None => normalize_address(grant),
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        self.execute(Command::SetAccountAccess { address: address.clone(), disabled_services, send_as }).await?;
        self.account(&address)?.ok_or_else(|| CoreError::internal("reading an account", &address))
    }

    /// Sets the services no account of a domain may use.
    pub async fn set_domain_services(&self, domain: &str, disabled_services: Vec<Service>) -> Result<Domain> {
        let domain = normalize_domain(domain)?;
        self.execute(Command::SetDomainServices { domain: domain.clone(), disabled_services }).await?;
        self.domain(&domain)?.ok_or_else(|| CoreError::internal("reading a domain", &domain))
    }

    /// Resolves a recipient to local accounts (each once, in the order aliases name them).
    /// An address that is not itself known resolves, in this order, through its domain's
    /// alias (`x@alias.test` is `x@target.test`), without its `+tag` (`alice+news@` is
    /// `alice@`), or to its domain's catch-all address.
    pub fn resolve_recipient(&self, recipient: &str) -> Result<Vec<u64>> {
        Ok(self.resolve(recipient, true)?.accounts)
    }

    /// Like [`Core::resolve_recipient`], and also lists the addresses in other domains that
    /// aliases forward to (they leave through the outbound queue).
    pub fn resolve_with_forwards(&self, recipient: &str) -> Result<Resolution> {
        self.resolve(recipient, true)
    }

    fn resolve(&self, recipient: &str, use_catch_all: bool) -> Result<Resolution> {
        let mut accounts = Vec::new();
        let mut forwards = Vec::new();
        let mut pending = std::collections::VecDeque::from([normalize_address(recipient)?]);
        let mut seen = std::collections::HashSet::new();
        while let Some(address) = pending.pop_front() {
            if !seen.insert(address.clone()) || seen.len() > 1_000 {
                continue;
            }
            match self.state.resolve_address(&address)? {
                Some(AddressTarget::Account(id)) => {
                    if !accounts.contains(&id) {
                        accounts.push(id);
                    }
                }
                Some(AddressTarget::Alias(targets)) => pending.extend(targets),
                None => {
                    let (local, domain) = address.rsplit_once('@').expect("normalized address has @");
                    let Some(record) = self.state.domain(domain)? else {
                        // Only an alias leads outside the local domains.
                        if seen.len() > 1 && !forwards.iter().any(|f: &Forward| f.address == address) {
                            forwards.push(Forward { address, relay: None });
                        }
                        continue;
                    };
                    if let Some(target) = record.alias_of {
                        pending.push_back(format!("{local}@{target}"));
                    } else if let Some((base, _tag)) = local.split_once('+').filter(|(base, _)| !base.is_empty()) {
                        pending.push_back(format!("{base}@{domain}"));
                    } else if let Some(catch_all) = record.catch_all.filter(|_| use_catch_all) {
                        pending.push_back(catch_all);
                    } else if let Some(relay) = self.state.unknown_forward(domain)?.filter(|_| use_catch_all) {
                        // The domain's other server holds the mailboxes we do not know.
                        if !forwards.iter().any(|f| f.address == address) {
                            forwards.push(Forward { address, relay: Some(relay) });
                        }
                    }
                }
            }
        }
        Ok(Resolution { accounts, forwards })
    }

    /// The account's `\\Junk` mailbox (RFC 6154), created with the other default mailboxes
    /// when it has none.
    async fn junk_mailbox(&self, account_id: u64) -> Result<u64> {
        let find = || -> Result<Option<u64>> {
            Ok(self
                .state
                .mailboxes(account_id)?
                .into_iter()
                .find(|mailbox| mailbox.special_use.as_deref() == Some("\\Junk"))
                .map(|mailbox| mailbox.id))
        };
        if let Some(id) = find()? {
            return Ok(id);
        }
        self.ensure_default_mailboxes(account_id).await?;
        find()?.ok_or_else(|| CoreError::new(ErrorCode::NotFound, "the account has no Junk mailbox"))
    }

    /// Stores a message body once and files it into the INBOX of every recipient, with one
    /// replicated command. Returns when the delivery is committed and applied.
    pub async fn deliver<S>(&self, recipients: &[String], body: S) -> Result<Vec<RecipientResult>>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        Ok(self.submit(recipients, "", None, body).await?.recipients)
    }

    /// Stores a message body once, files it into the INBOX of every local recipient and,
    /// when `outbound` names remote recipients or aliases forward to other domains, puts it
    /// into the outbound queue, all with one replicated command: either every local copy and
    /// the queue entry exist, or none. Forwarded copies keep `return_path` (the envelope
    /// sender) and carry the alias as ORCPT (RFC 3461 §4.2). Returns when that command is
    /// committed and applied.
    pub async fn submit<S>(
        &self,
        recipients: &[String],
        return_path: &str,
        outbound: Option<OutboundEnvelope>,
        body: S,
    ) -> Result<Submitted>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        self.submit_filed(recipients, return_path, outbound, body, Folder::Inbox).await
    }

    /// [`Core::submit`], filing the local copies into `folder` (the Junk mailbox for mail
    /// the inbound checks judged as spam; created when the account has none yet).
    pub async fn submit_filed<S>(
        &self,
        recipients: &[String],
        return_path: &str,
        outbound: Option<OutboundEnvelope>,
        body: S,
        folder: Folder,
    ) -> Result<Submitted>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        self.disk.check()?;
        // Each account gets one copy however many recipients (addresses, aliases, groups)
        // lead to it; each recipient reports the result of its first account.
        let mut plan = Vec::new();
        let mut targets: Vec<DeliveryTarget> = Vec::new();
        let mut forwards: Vec<OutboundRecipient> = Vec::new();
        for recipient in recipients {
            let resolution = match self.resolve_with_forwards(recipient) {
                Ok(resolution) if resolution.accounts.is_empty() && resolution.forwards.is_empty() => {
                    Err(CoreError::new(ErrorCode::NotFound, format!("no local mailbox for {recipient}")))
                }
                other => other,
            };
            let planned = resolution.map(|resolution| {
                for Forward { address, relay } in resolution.forwards {
                    if !forwards.iter().any(|forward| forward.address == address) {
                        let orcpt = Some(format!("rfc822;{recipient}"));
                        forwards.push(OutboundRecipient { address, orcpt, notify: Notify::default(), relay });
                    }
                }
                let mut first = None;
                for account_id in resolution.accounts {
                    let index = match targets.iter().position(|target| target.account_id == account_id) {
                        Some(index) => index,
                        None => {
                            targets.push(DeliveryTarget { account_id, mailbox_id: None });
                            targets.len() - 1
                        }
                    };
                    first.get_or_insert(index);
                }
                first // None: forwarded only
            });
            plan.push((recipient.clone(), planned));
        }
        let outbound = match (outbound, forwards.is_empty()) {
            (outbound, true) => outbound,
            (Some(mut envelope), false) => {
                for forward in forwards {
                    if !envelope.recipients.iter().any(|r| r.address == forward.address) {
                        envelope.recipients.push(forward);
                    }
                }
                Some(envelope)
            }
            (None, false) => Some(OutboundEnvelope {
                return_path: return_path.to_owned(),
                envid: None,
                ret: None,
                recipients: forwards,
                eight_bit: false,
                authenticated: false,
            }),
        };
        let outbound = outbound.filter(|envelope| !envelope.recipients.is_empty());
        if folder == Folder::Junk {
            for target in &mut targets {
                target.mailbox_id = Some(self.junk_mailbox(target.account_id).await?);
            }
        }
        if targets.is_empty() && outbound.is_none() {
            // Nothing local: every entry of the plan is an error; store nothing.
            let recipients = plan
                .into_iter()
                .map(|(recipient, planned)| RecipientResult {
                    recipient,
                    result: planned.and_then(|_| Err(CoreError::internal("planning a delivery", "no targets"))),
                })
                .collect();
            return Ok(Submitted { recipients, queue_id: None });
        }
        // Read before storing: garbage collection that finishes after this index cannot
        // have deleted the copy stored below (see `Command::Deliver`).
        let stored_after_index = self.consensus.metrics().last_applied.map_or(0, |id| id.index);
        let (stored, copy, eight_bit) = self.store_body(body).await?;
        // Only mailboxes need the summary; a message that only leaves is not parsed.
        let (summary, threading) = match targets.is_empty() {
            true => (None, None),
            false => self.encoded_summary(&stored, copy).await.unzip(),
        };
        let outbound = outbound.map(|envelope| OutboundEnvelope { eight_bit, ..envelope });
        let outcome = self
            .execute(Command::Deliver {
                blob: stored.id,
                stored_after_index,
                size: stored.size,
                internal_date_ms: now_ms(),
                flags: Vec::new(),
                summary,
                threading,
                targets,
                outbound,
            })
            .await?;
        let Outcome::Delivered { results, queue_id } = outcome else {
            return Err(CoreError::internal("delivering", format!("unexpected outcome {outcome:?}")));
        };
        if queue_id.is_some() {
            self.queue_signal.notify_one();
        }
        let recipients = plan
            .into_iter()
            .map(|(recipient, planned)| RecipientResult {
                recipient,
                // The first account of a recipient stands for it (aliases fan out further).
                result: planned.map(|index| index.map_or(DeliveryResult::Forwarded, |index| results[index])),
            })
            .collect();
        Ok(Submitted { recipients, queue_id })
    }

    /// Streams a message body into the blob store, keeping a copy of small bodies for
    /// [`Core::encoded_summary`] and noting whether any byte has the high bit set (8-bit
    /// data, RFC 6152). A failure of the body itself (the client went away, a size limit in
    /// the caller's stream) is the caller's fault, not ours.
    pub(crate) async fn store_body<S>(&self, body: S) -> Result<(wmail_storage::StoredBlob, Option<Vec<u8>>, bool)>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        use futures::StreamExt;
        let body_error: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        let copy: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(Some(Vec::new()));
        let eight_bit = std::sync::atomic::AtomicBool::new(false);
        let watched = body.map(|chunk| {
            match &chunk {
                Err(error) => *body_error.lock().expect("body error lock") = Some(error.to_string()),
                Ok(bytes) => {
                    if !bytes.is_ascii() {
                        eight_bit.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let mut copy = copy.lock().expect("copy lock");
                    let keep =
                        copy.as_ref().is_some_and(|kept| kept.len() + bytes.len() <= mailbox::SUMMARY_COPY_LIMIT);
                    if keep {
                        copy.as_mut().expect("checked").extend_from_slice(bytes);
                    } else {
                        *copy = None;
                    }
                }
            }
            chunk
        });
        match self.blobs.put_stream(watched).await {
            Ok(stored) => Ok((stored, copy.into_inner().expect("copy lock"), eight_bit.into_inner())),
            Err(error) => match body_error.into_inner().expect("body error lock") {
                Some(reason) => Err(CoreError::invalid(format!("the message body could not be received: {reason}"))),
                None => Err(CoreError::internal("storing a message body", error)),
            },
        }
    }

    /// Lists the messages of an account's mailbox (INBOX when `mailbox` is `None`).
    pub fn messages(&self, address: &str, mailbox: Option<&str>) -> Result<Vec<MessageRecord>> {
        let account = self
            .account(address)?
            .ok_or_else(|| CoreError::new(ErrorCode::NotFound, format!("account {address} does not exist")))?;
        let name = mailbox.unwrap_or(wmail_storage::INBOX);
        let mailbox = self
            .state
            .mailbox_by_name(account.id, name)?
            .ok_or_else(|| CoreError::new(ErrorCode::NotFound, format!("mailbox {name} does not exist")))?;
        Ok(self.state.messages(account.id, mailbox.id)?)
    }

    /// This node's id (for lease holders and logs).
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Returns an account's mailbox by name, with its messages in UID order.
    pub fn mailbox_with_messages(&self, account_id: u64, name: &str) -> Result<(Mailbox, Vec<MessageRecord>)> {
        let mailbox = self
            .state
            .mailbox_by_name(account_id, name)?
            .ok_or_else(|| CoreError::new(ErrorCode::NotFound, format!("mailbox {name} does not exist")))?;
        let messages = self.state.messages(account_id, mailbox.id)?;
        Ok((mailbox, messages))
    }

    /// Removes messages from a mailbox, 4,096 per replicated command (so no log entry grows
    /// with the mailbox; IMAP EXPUNGE and POP3 UPDATE may remove some and fail on the rest,
    /// RFC 9051 §6.4.3, RFC 1939 §6); returns the UIDs removed.
    pub async fn expunge(&self, account_id: u64, mailbox_id: u64, uids: Vec<u32>) -> Result<Vec<u32>> {
        let mut removed = Vec::new();
        for chunk in uids.chunks(EXPUNGE_CHUNK) {
            match self.execute(Command::Expunge { account_id, mailbox_id, uids: chunk.to_vec() }).await? {
                Outcome::Expunged { uids } => removed.extend(uids),
                other => return Err(CoreError::internal("expunging", format!("unexpected outcome {other:?}"))),
            }
        }
        Ok(removed)
    }

    /// Takes or renews the exclusive lease on `resource` until `until_ms`; `Conflict` when
    /// another holder has it. Leases are replicated, so they hold cluster-wide.
    ///
    /// A learner cut off from the cluster cannot take replicated leases: it keeps them in
    /// memory instead (they exclude its own sessions only) until the link is back.
    pub async fn acquire_lease(&self, resource: &str, holder: &str, until_ms: u64) -> Result<()> {
        if self.detached().is_some() {
            let mut leases = self.local_leases.lock().expect("local leases");
            leases.retain(|_, (_, until)| *until > now_ms());
            return match leases.get(resource) {
                Some((other, _)) if other != holder => {
                    Err(CoreError::new(ErrorCode::Conflict, format!("{resource} is leased to {other}")))
                }
                _ => {
                    leases.insert(resource.to_string(), (holder.to_string(), until_ms));
                    Ok(())
                }
            };
        }
        // A lease taken while cut off still holds after the link came back.
        if let Some((other, _)) = self
            .local_leases
            .lock()
            .expect("local leases")
            .get(resource)
            .filter(|(other, until)| other != holder && *until > now_ms())
        {
            return Err(CoreError::new(ErrorCode::Conflict, format!("{resource} is leased to {other}")));
        }
        let command = Command::AcquireLease { resource: resource.into(), holder: holder.into(), until_ms };
        self.execute(command).await.map(drop)
    }

    /// Returns the lease holder name for a session of this node: `node/session`. Sessions
    /// die with their process, so at start-up a node gives up every lease it still holds.
    pub fn lease_holder(&self, session: &str) -> String {
        format!("{}/{session}", self.config.node_id)
    }

    async fn release_stale_leases(&self) {
        let prefix = format!("{}/", self.config.node_id);
        let leases = match self.state.leases() {
            Ok(leases) => leases,
            Err(error) => return tracing::warn!(%error, "cannot list leases"),
        };
        for (resource, lease) in leases.into_iter().filter(|(_, lease)| lease.holder.starts_with(&prefix)) {
            match self.release_lease(&resource, &lease.holder).await {
                Ok(()) => tracing::info!(%resource, "released a lease held before this node restarted"),
                Err(error) => tracing::warn!(%resource, %error, "cannot release a stale lease; it expires by itself"),
            }
        }
    }

    /// Gives a lease up.
    pub async fn release_lease(&self, resource: &str, holder: &str) -> Result<()> {
        {
            let mut leases = self.local_leases.lock().expect("local leases");
            if leases.get(resource).is_some_and(|(other, _)| other == holder) {
                leases.remove(resource);
                return Ok(());
            }
        }
        self.execute(Command::ReleaseLease { resource: resource.into(), holder: holder.into() }).await.map(drop)
    }

    /// Streams a message body.
    pub async fn blob_stream(&self, blob: &BlobId) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        use futures::TryStreamExt;
        let stream = self.blobs.get(blob).await.map_err(|e| CoreError::internal("reading a message body", e))?;
        Ok(Box::pin(stream.map_err(|e| CoreError::internal("reading a message body", e))))
    }

    /// Asks the full-text index about a mailbox: what it holds, and for each `(fields,
    /// needle)` the UIDs whose fields (any of them) contain the needle, exact for every
    /// message it holds whole (`None`: the needle is too short for the index). Messages it
    /// does not hold whole are the caller's to check. `None` when the index is turned off
    /// (`[search] enabled = false`).
    pub async fn search_lookup(
        &self,
        account_id: u64,
        mailbox_id: u64,
        lookups: Vec<(&'static [SearchField], String)>,
    ) -> Result<Option<SearchLookup>> {
        if !self.config.search_enabled {
            return Ok(None);
        }
        let index = self.search.clone();
        tokio::task::spawn_blocking(move || {
            let lookups: Vec<(&[SearchField], &str)> =
                lookups.iter().map(|(fields, needle)| (*fields, needle.as_str())).collect();
            index.lookup(account_id, mailbox_id, &lookups)
        })
        .await
        .map_err(|e| CoreError::internal("querying the search index", e))?
        .map(Some)
        .map_err(|e| CoreError::internal("querying the search index", e))
    }

    /// Reads a message body.
    pub async fn read_blob(&self, blob: &BlobId) -> Result<Bytes> {
        self.blobs.read_all(blob).await.map_err(|e| CoreError::internal("reading a message body", e))
    }

    /// Runs one round of blob garbage collection (leader only); returns how many blobs it
    /// deleted.
    pub async fn collect_blob_garbage(&self) -> Result<usize> {
        if self.consensus.metrics().state != ServerState::Leader {
            return Ok(0);
        }
        let grace_ms = self.config.blob_gc_grace.as_millis() as u64;
        let cutoff_ms = now_ms().saturating_sub(grace_ms);
        // Act on everything committed so far: a new leader must not trust a stale view.
        self.read_barrier().await?;
        let mut candidates = self.state.unreferenced_blobs(cutoff_ms, 1_000)?;
        // Orphans: bodies stored longer ago than the grace period that no delivery ever
        // named (the node stopped between storing and committing, for example).
        let written_before = self
            .blobs
            .list_written_before(cutoff_ms, 1_000)
            .await
            .map_err(|e| CoreError::internal("listing blobs", e))?;
        for blob in written_before {
            // No record at all, or a tombstone whose object was stored again by a delivery
            // that was then refused (`BlobCollected`): nothing references it.
            let orphan = self
                .state
                .blob_ref(&blob)?
                .is_none_or(|record| record.count == 0 && !record.deleting && record.zero_since_ms.is_none());
            if orphan {
                candidates.push(blob);
            }
        }
        let mut deleted = 0;
        for blob in candidates {
            // Claim first (unless a previous round did): from the claim on, deliveries of this
            // blob are refused, and after the deletion only copies stored later are accepted,
            // so deleting the object never leaves a message without its body.
            let claimed = self.state.blob_ref(&blob)?.is_some_and(|record| record.deleting);
            if !claimed && self.execute(Command::ClaimBlobForDeletion { blob, grace_ms }).await.is_err() {
                continue;
            }
            self.blobs.delete(&blob).await.map_err(|e| CoreError::internal("deleting a blob", e))?;
            self.execute(Command::ForgetBlob { blob }).await?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

async fn blob_gc_worker(core: std::sync::Weak<Core>) {
    let mut interval = tokio::time::interval(Duration::from_secs(600));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(core) = core.upgrade() else { return };
        match core.collect_blob_garbage().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "blob garbage collection deleted unreferenced blobs"),
            Err(error) => tracing::warn!(%error, "blob garbage collection failed; retrying later"),
        }
    }
}

#[cfg(test)]
mod tests;
