//! wmail-consensus replicates an opaque state machine with openraft.
//!
//! ```text
//!  propose(bytes) ──► Raft (openraft) ──► LogStore (RocksDB, group-committed fsync)
//!                        │    ▲
//!             Transport  │    │ committed entries
//!        (QUIC / router) ▼    │
//!                     peers   └──► StateMachineStore ──► ReplicatedState::apply (the app)
//! ```
//! It knows nothing of mail: commands and responses are bytes, the state machine is any
//! [`ReplicatedState`], the network any [`Transport`].

// openraft's `StorageError` is large, and its storage traits make us return it.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod peer;
pub mod quic;
mod state_machine;
pub mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use log_store::{LogIoStats, LogStore};
pub use network::{
    InMemoryRouter, MembershipChange, NetworkFactory, NodeStatus, PeerError, PeerHandler, PeerReply, PeerRequest,
    RaftRpc, RaftRpcReply, Sender, Transport, TransportError, TransportFuture, handle_raft_rpc,
};
use openraft::error::{ClientWriteError, RaftError};
pub use openraft::{BasicNode, RaftMetrics, ServerState};
pub use peer::JoinHandler;
use serde::{Deserialize, Serialize};
pub use state_machine::{ReplicatedState, StateEntry, StateMachineStore};

/// A node's id in the cluster.
pub type NodeId = u64;

/// The payload of one Raft entry: a batch of opaque application commands, proposed
/// concurrently and committed together (one log append, one fsync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Vec<Vec<u8>>);

/// The application's responses to a [`Request`], one per command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Vec<Vec<u8>>);

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request({} commands)", self.0.len())
    }
}

/// Most commands one Raft entry carries.
const MAX_BATCH_COMMANDS: usize = 1_024;
/// Most command bytes one Raft entry carries (a batch always takes at least one command).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches proposed to Raft and not yet answered; more proposals wait and join a batch.
const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// How long a batch may wait for its commit before its proposers are told "unavailable".
const PROPOSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a read barrier may wait for a leader and its read index.
const READ_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most voters a cluster gets by joining or promotion; more nodes stay learners.
pub const MAX_VOTERS: usize = 5;

/// A command waiting to be proposed, and where its result goes.
struct Proposal {
    command: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, ProposeError>>,
}

fn propose_error(error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ProposeError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::ForwardToLeader { leader: forward.leader_id.zip(forward.leader_node.map(|node| node.addr)) }
        }
        error => ProposeError::Unavailable(error.to_string()),
    }
}

/// Group commit: takes every proposal queued while earlier batches were in flight and
/// proposes them as one Raft entry (openraft appends and fsyncs each entry on its own).
/// On a node that does not lead, the batch goes to the leader as one request.
async fn batch_proposals(peers: peer::Peers, mut queue: tokio::sync::mpsc::Receiver<Proposal>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut bytes = first.command.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(proposal) => {
                    bytes += proposal.command.len();
                    batch.push(proposal);
                }
                Err(_) => break,
            }
        }
        let peers = peers.clone();
        tokio::spawn(async move {
            // A command some voter cannot apply yet is refused on its own (rolling
            // upgrades), not with the batch it happened to join.
            let required: Vec<u16> = batch.iter().map(|proposal| peers.required_version(&proposal.command)).collect();
            let mut refusals: BTreeMap<u16, Option<ProposeError>> = BTreeMap::new();
            for &version in &required {
                if let std::collections::btree_map::Entry::Vacant(slot) = refusals.entry(version) {
                    slot.insert(peers.version_refusal(version).await);
                }
            }
            let mut admitted = Vec::with_capacity(batch.len());
            for (proposal, version) in batch.into_iter().zip(required) {
                match &refusals[&version] {
                    Some(error) => {
                        let _ = proposal.reply.send(Err(error.clone()));
                    }
                    None => admitted.push(proposal),
                }
            }
            if admitted.is_empty() {
                drop(permit);
                return;
            }
            let (commands, replies): (Vec<_>, Vec<_>) =
                admitted.into_iter().map(|proposal| (proposal.command, proposal.reply)).unzip();
            match peers.commit(Request(commands)).await {
                Ok(response) => {
                    for (reply, result) in replies.into_iter().zip(response.0) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for wmail.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = tokio::fs::File,
);

/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig>;

/// Settings of the consensus layer of one node.
#[derive(Debug, Clone)]
pub struct ConsensusConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The address peers reach this node at (for membership records).
    pub advertise_addr: String,
    /// Directory of the Raft log database.
    pub log_dir: PathBuf,
    /// Directory of snapshots; same filesystem as the application state.
    pub snapshot_dir: PathBuf,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Number of applied entries after which a snapshot is taken and the log purged.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so slightly lagging followers catch up from the
    /// log instead of a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How the application versions its commands (none by default).
    pub versions: CommandVersions,
}

/// How the application versions its commands, so that a leader proposes a command only once
/// every voter can apply it: during a rolling upgrade, a new kind of command waits until
/// the last voter runs a release that knows it. Learners are not waited for: one that
/// meets a command it does not know stops applying until it is upgraded.
#[derive(Debug, Clone, Copy)]
pub struct CommandVersions {
    /// The newest version this node applies (reported to its peers in its status).
    pub supported: u16,
    /// What a voter this node has not heard from yet is taken to apply.
    pub unreported: u16,
    /// The version a command needs, read from its bytes.
    pub required: fn(&[u8]) -> u16,
}

impl Default for CommandVersions {
    /// Unversioned commands: every node applies every command.
    fn default() -> Self {
        Self { supported: 0, unreported: 0, required: |_| 0 }
    }
}

impl ConsensusConfig {
    /// Defaults for a node whose data lives under `data_dir`.
    pub fn new(node_id: NodeId, advertise_addr: impl Into<String>, data_dir: &std::path::Path) -> Self {
        Self {
            node_id,
            advertise_addr: advertise_addr.into(),
            log_dir: data_dir.join("raft"),
            snapshot_dir: data_dir.join("snapshots"),
            heartbeat: Duration::from_millis(75),
            snapshot_every: 20_000,
            logs_kept_after_snapshot: 1_000,
            versions: CommandVersions::default(),
        }
    }

    /// Checks the settings for mistakes an operator can make.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be 1 or greater".into());
        }
        if self.heartbeat.is_zero() {
            return Err("heartbeat must be positive".into());
        }
        Ok(())
    }
}

/// Why a proposal did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; the caller should forward to `leader` (if known).
    #[error("this node is not the leader (leader: {leader:?})")]
    ForwardToLeader {
        /// The current leader's id and address, if known.
        leader: Option<(NodeId, String)>,
    },
    /// The node cannot make progress (shutting down, or a fatal storage error).
    #[error("consensus unavailable: {0}")]
    Unavailable(String),
}

/// Why starting consensus failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The log database could not be opened.
    #[error("cannot open the raft log at {path}: {source}")]
    Log {
        /// Its directory.
        path: PathBuf,
        /// The cause.
        source: rocksdb::Error,
    },
    /// Other I/O failed (the snapshot directory).
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// openraft refused the configuration or failed to start.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// A running consensus member: propose commands, wait for reads, watch metrics.
#[derive(Clone)]
pub struct Consensus {
    raft: Raft,
    config: Arc<ConsensusConfig>,
    /// The last log index when the node started: ready once applied up to it.
    startup_log_index: Option<u64>,
    log_stats: Arc<LogIoStats>,
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    peers: peer::Peers,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus").field("node_id", &self.config.node_id).finish()
    }
}

impl Consensus {
    /// Opens the log and starts Raft over `state`, talking to peers through `transport`.
    pub async fn open<S: ReplicatedState>(
        config: ConsensusConfig,
        state: Arc<S>,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, OpenError> {
        let peers_transport = transport.clone();
        config.validate().map_err(OpenError::Raft)?;
        std::fs::create_dir_all(&config.log_dir)
            .map_err(|source| OpenError::Io { path: config.log_dir.clone(), source })?;
        let mut log_store = LogStore::open(&config.log_dir)
            .map_err(|source| OpenError::Log { path: config.log_dir.clone(), source })?;
        // Read before Raft starts: its metrics only catch up once its core task has run.
        let log_stats = log_store.stats();
        let startup_log_index = {
            use openraft::storage::RaftLogStorage;
            // What was known committed: an uncommitted tail may be truncated by a new
            // leader and never applied, so it is no readiness target.
            let committed = log_store.read_committed().await.map_err(|e| OpenError::Raft(e.to_string()))?;
            committed.map(|id| id.index)
        };
        let state_machine = StateMachineStore::new(state, config.snapshot_dir.clone())
            .map_err(|source| OpenError::Io { path: config.snapshot_dir.clone(), source })?;
        let heartbeat = config.heartbeat.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "wmail".into(),
            heartbeat_interval: heartbeat,
            // A follower stands for election after the leader lease (openraft: the maximum
            // election timeout) plus a random election timeout without a heartbeat: with
            // 75 ms heartbeats, 0.9 to 1.2 s after the leader died. The random range is
            // wide so that the two survivors of a three-node cluster rarely split the vote.
            election_timeout_min: heartbeat * 4,
            election_timeout_max: heartbeat * 8,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            // Commands are small (bodies live in the blob store) but a batch may reach 4 MiB:
            // bound one AppendEntries request to 64 entries.
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| OpenError::Raft(e.to_string()))?;
        let raft =
            Raft::new(config.node_id, Arc::new(raft_config), NetworkFactory::new(transport), log_store, state_machine)
                .await
                .map_err(|e| OpenError::Raft(e.to_string()))?;
        let (proposals, queue) = tokio::sync::mpsc::channel(4 * MAX_BATCH_COMMANDS);
        let peers = peer::Peers {
            raft: raft.clone(),
            transport: peers_transport,
            log_stats: log_stats.clone(),
            leader_contact: Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())),
            stepping_down: Arc::default(),
            versions: Arc::new(peer::VersionBook::new(config.versions)),
        };
        tokio::spawn(batch_proposals(peers.clone(), queue));
        tokio::spawn(peers.clone().refresh_versions());
        Ok(Self { raft, config: Arc::new(config), startup_log_index, log_stats, proposals, peers })
    }

    /// Returns the handler of requests from other nodes; `join` answers enrolment requests
    /// from nodes that are not members yet (none: they are refused).
    pub fn peer_handler(&self, join: Option<Arc<dyn JoinHandler>>) -> Arc<dyn PeerHandler> {
        Arc::new(peer::ConsensusPeer { peers: self.peers.clone(), join })
    }

    /// Whether this node has been part of a cluster (initialised, or added by a leader).
    pub async fn is_initialized(&self) -> Result<bool, ProposeError> {
        self.raft.is_initialized().await.map_err(|e| ProposeError::Unavailable(e.to_string()))
    }

    /// Asks the leader (this node or another) to change the membership, and returns once
    /// the change is committed.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ProposeError> {
        self.peers.change_membership(change).await
    }

    /// Asks node `target` at `addr` for a membership change it forwards to its leader
    /// (a joining node asks the member that enrolled it to add it).
    pub async fn ask_member(&self, target: NodeId, addr: &str, change: MembershipChange) -> Result<(), ProposeError> {
        self.peers.ask(target, addr, change).await
    }

    /// Hands leadership to the voters once this leader has left them (see
    /// [`MembershipChange::Demote`]); waits up to `timeout` for one of them to lead.
    pub async fn step_down(&self, timeout: Duration) -> Result<(), ProposeError> {
        self.peers.step_down(timeout).await
    }

    /// How long this node, a learner, has been cut off from the leader (it then serves
    /// reads of what it has and refuses writes); `None` while in touch and on voters.
    pub fn detached(&self) -> Option<Duration> {
        self.peers.detached()
    }

    /// This node's status.
    pub fn status(&self) -> NodeStatus {
        self.peers.status()
    }

    /// Asks node `id` at `addr` for its status (over the transport; this node answers
    /// itself).
    pub async fn peer_status(&self, id: NodeId, addr: &str) -> Result<NodeStatus, ProposeError> {
        if id == self.config.node_id {
            return Ok(self.status());
        }
        match self.peers.transport.call(id, &BasicNode::new(addr), PeerRequest::Status).await {
            Ok(PeerReply::Status(status)) => {
                self.peers.versions.note(id, &status);
                Ok(status)
            }
            Ok(_) => Err(ProposeError::Unavailable("reply of the wrong kind".into())),
            Err(error) => Err(ProposeError::Unavailable(error.to_string())),
        }
    }

    /// Sends an application request to member `id` at `addr` (see [`PeerRequest::App`]).
    pub async fn ask_peer(&self, id: NodeId, addr: &str, request: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        match self.peers.transport.call(id, &BasicNode::new(addr), PeerRequest::App(request)).await {
            Ok(PeerReply::App(Ok(answer))) => Ok(answer),
            Ok(PeerReply::App(Err(refusal))) => Err(ProposeError::Unavailable(refusal)),
            Ok(_) => Err(ProposeError::Unavailable("reply of the wrong kind".into())),
            Err(error) => Err(ProposeError::Unavailable(error.to_string())),
        }
    }

    /// Returns the openraft handle (for the transport's receiving side and tests).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Makes this node a one-node cluster if it has never been part of one. Returns whether
    /// it initialised now.
    pub async fn initialize_single_node(&self) -> Result<bool, ProposeError> {
        let initialized = self.raft.is_initialized().await.map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.config.node_id, BasicNode::new(&self.config.advertise_addr))]);
        self.raft.initialize(members).await.map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        Ok(true)
    }

    /// Proposes one command and returns its response once it is committed (durable on a
    /// majority) and applied on this node. Concurrent proposals are batched into one Raft
    /// entry: they share one log append and one fsync.
    ///
    /// Cancel safety: dropping the future does not withdraw a queued command; it may still
    /// be committed.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let stopped = || ProposeError::Unavailable("consensus stopped".into());
        self.proposals.send(Proposal { command, reply }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Waits until this node has applied everything committed when the call was made, as
    /// confirmed by the leader (a read-index barrier); reads after it see every write
    /// acknowledged before it. On a follower or learner the leader is asked for its read
    /// index. Exception: a learner cut off from the leader (or whose barrier takes over
    /// 2 s) returns at once and reads what it has, possibly stale (a branch office keeps
    /// serving); voters never do.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        self.peers.read_barrier().await
    }

    /// Returns the log's disk-work counters (appended entries, WAL syncs).
    pub fn log_stats(&self) -> &LogIoStats {
        &self.log_stats
    }

    /// Returns the current Raft metrics.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Returns whether the node knows a leader and has replayed the log it had at startup.
    pub fn is_ready(&self) -> bool {
        let metrics = self.metrics();
        metrics.current_leader.is_some() && metrics.last_applied.map(|id| id.index) >= self.startup_log_index
    }

    /// Waits up to `timeout` for [`Self::is_ready`].
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut watch = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return true;
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                // Raft stopped (its metrics sender is gone), or the deadline passed.
                Ok(Err(_)) | Err(_) => return self.is_ready(),
            }
        }
    }

    /// Stops Raft, letting in-flight log writes finish.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown reported an error");
        }
    }
}

#[cfg(test)]
mod tests;
