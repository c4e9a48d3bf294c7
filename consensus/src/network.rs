//! The network seam: openraft's RPCs as one serialisable [`RaftRpc`] enum, sent by a
//! [`Transport`] and answered on the receiving node by [`handle_rpc`].
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

use crate::{NodeId, TypeConfig};

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

/// Why a [`Transport`] could not deliver an RPC.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The target cannot be reached now (down, partitioned); openraft backs off and retries.
    #[error("node {0} is unreachable")]
    Unreachable(NodeId),
    /// The exchange failed midway.
    #[error("rpc to node {node} failed: {reason}")]
    Failed {
        /// The target node.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },
}

/// A boxed future returned by [`Transport::call`].
pub type TransportFuture = Pin<Box<dyn Future<Output = Result<RaftRpcReply, TransportError>> + Send>>;

/// Carries Raft RPCs between nodes.
///
/// Contract: `call` delivers `rpc` to `target` at most once and returns its reply; on any
/// error openraft treats the outcome as unknown and retries with a fresh RPC, which Raft
/// makes safe. Dropping the future cancels the call.
pub trait Transport: Send + Sync + 'static {
    /// Sends `rpc` to node `target`, reachable at `node.addr`.
    fn call(&self, target: NodeId, node: &BasicNode, rpc: RaftRpc) -> TransportFuture;
}

/// Answers an RPC that arrived from another node.
pub async fn handle_rpc(raft: &Raft<TypeConfig>, rpc: RaftRpc) -> RaftRpcReply {
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
        let reply = self.transport.call(self.target, &self.node, rpc).await.map_err(transport_error)?;
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
    nodes: BTreeMap<NodeId, Raft<TypeConfig>>,
    isolated: BTreeSet<NodeId>,
}

impl InMemoryRouter {
    /// Registers the Raft instance of node `id`.
    pub fn add(&self, id: NodeId, raft: Raft<TypeConfig>) {
        self.inner.lock().expect("router lock").nodes.insert(id, raft);
    }

    /// Cuts node `id` off (or reconnects it): RPCs to or from it fail as unreachable.
    pub fn set_isolated(&self, id: NodeId, isolated: bool) {
        let mut state = self.inner.lock().expect("router lock");
        if isolated {
            state.isolated.insert(id)
        } else {
            state.isolated.remove(&id)
        };
    }

    /// Returns a transport that sends RPCs from node `from`.
    pub fn transport_for(&self, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(RouterTransport { router: self.clone(), from })
    }
}

struct RouterTransport {
    router: InMemoryRouter,
    from: NodeId,
}

impl Transport for RouterTransport {
    fn call(&self, target: NodeId, _node: &BasicNode, rpc: RaftRpc) -> TransportFuture {
        let raft = {
            let state = self.router.inner.lock().expect("router lock");
            let cut = state.isolated.contains(&target) || state.isolated.contains(&self.from);
            if cut { None } else { state.nodes.get(&target).cloned() }
        };
        Box::pin(async move {
            match raft {
                Some(raft) => Ok(handle_rpc(&raft, rpc).await),
                None => Err(TransportError::Unreachable(target)),
            }
        })
    }
}
