//! The network seam: every request between nodes is one serialisable [`PeerRequest`]
//! (Raft RPCs, forwarded proposals, read-index queries, membership changes, status and
//! enrolment), sent by a [`Transport`] and answered by the receiving node's [`PeerHandler`].
//!
//! The cluster transport (QUIC with mutual TLS) implements [`Transport`]; so does
//! [`InMemoryRouter`], which connects nodes in one process for tests and can cut them off.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};

use crate::{NodeId, Request, Response, TypeConfig};

/// One Raft RPC, as it crosses the network.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    /// AppendEntries (also heartbeats).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    /// Answer to AppendEntries.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to RequestVote.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to a snapshot chunk.
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// One request between cluster nodes. Every kind travels on its own QUIC stream of the
/// one connection between two nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// A Raft RPC.
    Raft(RaftRpc),
    /// A batch of commands proposed on another node, for the leader to commit.
    Propose(Request),
    /// Asks the leader for the log index a linearizable read must wait for (read index).
    ReadIndex,
    /// Asks the leader to change the membership.
    Membership(MembershipChange),
    /// Asks a node how it is doing (`wmail cluster status`).
    Status,
    /// An application request from a node that is not a member yet: the only request a
    /// connection without a client certificate may send (enrolment).
    Join(Vec<u8>),
    /// An application request from a member: asks this node about its node-local data
    /// (the application's fan-out, such as the inbound-verdict log).
    App(Vec<u8>),
}

/// The answer to a [`PeerRequest`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// Answer to a Raft RPC.
    Raft(RaftRpcReply),
    /// The committed batch's log index and its responses.
    Propose(Result<(u64, Response), PeerError>),
    /// The read index.
    ReadIndex(Result<u64, PeerError>),
    /// The membership change is committed.
    Membership(Result<(), PeerError>),
    /// The node's status, as JSON inside the message so releases can add fields: a field
    /// another release does not send takes its default, one it does not know is ignored.
    Status(#[serde(with = "json_inside")] NodeStatus),
    /// The application's answer to a join request.
    Join(Result<Vec<u8>, String>),
    /// The application's answer to an [`PeerRequest::App`] request.
    App(Result<Vec<u8>, String>),
}

/// A membership change, applied by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds node `id` at `addr` as a learner, waits until it has caught up, then makes it a
    /// voter when `voter` is set and fewer than [`crate::MAX_VOTERS`] vote.
    Add { id: NodeId, addr: String, voter: bool },
    /// Makes a learner a voter.
    Promote { id: NodeId },
    /// Makes a voter a learner.
    Demote { id: NodeId },
    /// Removes a node from the cluster.
    Remove { id: NodeId },
}

/// Why a peer refused a [`PeerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The asked node does not lead; `leader` does, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's id and address, if known.
        leader: Option<(NodeId, String)>,
    },
    /// The request failed.
    #[error("{0}")]
    Failed(String),
}

/// Carries a value as JSON bytes inside the peer protocol's postcard, which has no field
/// names and so cannot skip or default a field.
mod json_inside {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        let json = serde_json::to_vec(value).map_err(serde::ser::Error::custom)?;
        json.serialize(serializer)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        let json = Vec::<u8>::deserialize(deserializer)?;
        serde_json::from_slice(&json).map_err(serde::de::Error::custom)
    }
}

/// What a node reports about itself. Fields added in later releases carry
/// `#[serde(default)]` (see [`PeerReply::Status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub id: NodeId,
    /// Its binary version.
    pub version: String,
    /// Leader, Follower, Learner, Candidate or Shutdown.
    pub state: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Its last log index.
    pub last_log_index: Option<u64>,
    /// The last index it knows committed.
    pub committed_index: Option<u64>,
    /// The last index it applied.
    pub applied_index: Option<u64>,
    /// The newest command version it applies ([`crate::CommandVersions::supported`]; 0
    /// from a node that does not say).
    #[serde(default)]
    pub command_version: u16,
}

/// Answers the requests of one node whose requests arrive through a [`Transport`].
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers `request` from `sender`.
    fn handle(&self, request: PeerRequest, sender: Sender) -> Pin<Box<dyn Future<Output = PeerReply> + Send + '_>>;
}

/// Who sent a request, as far as the transport could tell.
#[derive(Debug, Clone)]
pub enum Sender {
    /// A node in this process (the in-memory router of tests).
    Local,
    /// A connection without a client certificate: it may only enrol.
    Anonymous,
    /// A connection whose client certificate (DER) the cluster CA signed; the handler
    /// checks which node it names and whether that node is a member.
    Certified(Arc<Vec<u8>>),
}

/// Why a [`Transport`] could not deliver a request.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The target cannot be reached now (down, partitioned) and the request was not sent;
    /// openraft backs off and retries, proposals try again.
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    /// The exchange failed midway: the request may or may not have been acted on.
    #[error("request to node {node} failed: {reason}")]
    Failed {
        /// The target node.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },
}

/// A boxed future returned by [`Transport::call`].
pub type TransportFuture = Pin<Box<dyn Future<Output = Result<PeerReply, TransportError>> + Send>>;

/// Carries requests between nodes.
///
/// Contract: `call` delivers `request` to `target` at most once and returns its reply; on
/// any error openraft treats the outcome as unknown and retries with a fresh RPC, which
/// Raft makes safe. Dropping the future cancels the call.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to node `target`, reachable at `node.addr`.
    fn call(&self, target: NodeId, node: &BasicNode, request: PeerRequest) -> TransportFuture;
}

/// Answers a Raft RPC that arrived from another node.
pub async fn handle_raft_rpc(raft: &Raft<TypeConfig>, rpc: RaftRpc) -> RaftRpcReply {
    match rpc {
        RaftRpc::AppendEntries(request) => RaftRpcReply::AppendEntries(raft.append_entries(request).await),
        RaftRpc::Vote(request) => RaftRpcReply::Vote(raft.vote(request).await),
        RaftRpc::InstallSnapshot(request) => RaftRpcReply::InstallSnapshot(raft.install_snapshot(request).await),
    }
}

/// openraft's network factory over a [`Transport`].
#[derive(Clone)]
pub struct NetworkFactory {
    transport: Arc<dyn Transport>,
}

impl NetworkFactory {
    /// Wraps `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self { transport }
    }
}

/// openraft's client for one peer.
pub struct PeerClient {
    transport: Arc<dyn Transport>,
    target: NodeId,
    node: BasicNode,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { transport: self.transport.clone(), target, node: node.clone() }
    }
}

fn transport_error<E: std::error::Error>(error: TransportError) -> RPCError<NodeId, BasicNode, E> {
    match error {
        TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&error)),
        TransportError::Failed { .. } => RPCError::Network(NetworkError::new(&error)),
    }
}

impl PeerClient {
    /// Sends `rpc` and takes the answer `pick` expects out of the reply; a reply of another
    /// kind is a transport failure, an error the peer answered is a remote error.
    async fn call<T, E>(
        &self,
        rpc: RaftRpc,
        pick: impl FnOnce(RaftRpcReply) -> Option<Result<T, E>>,
    ) -> Result<T, RPCError<NodeId, BasicNode, E>>
    where
        E: std::error::Error,
    {
        let reply =
            self.transport.call(self.target, &self.node, PeerRequest::Raft(rpc)).await.map_err(transport_error)?;
        let reply = match reply {
            PeerReply::Raft(reply) => reply,
            // The peer refused this node (its certificate revoked, say): say why.
            PeerReply::Join(Err(refusal)) => {
                return Err(transport_error(TransportError::Failed { node: self.target, reason: refusal }));
            }
            _ => {
                return Err(transport_error(TransportError::Failed {
                    node: self.target,
                    reason: "reply of the wrong kind".into(),
                }));
            }
        };
        match pick(reply) {
            Some(answer) => {
                answer.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
            }
            None => Err(transport_error(TransportError::Failed {
                node: self.target,
                reason: "reply of the wrong kind".into(),
            })),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpc::AppendEntries(rpc), |reply| match reply {
            RaftRpcReply::AppendEntries(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RaftRpc::InstallSnapshot(rpc), |reply| match reply {
            RaftRpcReply::InstallSnapshot(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpc::Vote(rpc), |reply| match reply {
            RaftRpcReply::Vote(answer) => Some(answer),
            _ => None,
        })
        .await
    }
}

/// A [`Transport`] joining nodes of one process, for tests; nodes can be isolated to
/// simulate crashes and partitions.
#[derive(Clone, Default)]
pub struct InMemoryRouter {
    inner: Arc<Mutex<RouterState>>,
}

#[derive(Default)]
struct RouterState {
    nodes: BTreeMap<NodeId, Arc<dyn PeerHandler>>,
    isolated: BTreeSet<NodeId>,
}

impl InMemoryRouter {
    /// Registers the request handler of node `id` (see [`crate::Consensus::peer_handler`]).
    pub fn add(&self, id: NodeId, handler: Arc<dyn PeerHandler>) {
        self.inner.lock().expect("router lock").nodes.insert(id, handler);
    }

    /// Cuts node `id` off (or reconnects it): requests to or from it fail as unreachable.
    pub fn set_isolated(&self, id: NodeId, isolated: bool) {
        let mut state = self.inner.lock().expect("router lock");
        if isolated {
            state.isolated.insert(id)
        } else {
            state.isolated.remove(&id)
        };
    }

    /// Returns a transport that sends requests from node `from`.
    pub fn transport_for(&self, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(RouterTransport { router: self.clone(), from })
    }
}

struct RouterTransport {
    router: InMemoryRouter,
    from: NodeId,
}

impl Transport for RouterTransport {
    fn call(&self, target: NodeId, _node: &BasicNode, request: PeerRequest) -> TransportFuture {
        let handler = {
            let state = self.router.inner.lock().expect("router lock");
            let cut = state.isolated.contains(&target) || state.isolated.contains(&self.from);
            if cut { None } else { state.nodes.get(&target).cloned() }
        };
        Box::pin(async move {
            match handler {
                Some(handler) => Ok(handler.handle(request, Sender::Local).await),
                None => Err(TransportError::Unreachable(target)),
            }
        })
    }
}
