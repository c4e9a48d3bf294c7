//! What a node does for its peers and asks of them: commits (here when it leads, else
//! through the leader), read-index barriers, membership changes and status.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::time::Instant;

use crate::network::{
    MembershipChange, NodeStatus, PeerError, PeerHandler, PeerReply, PeerRequest, Sender, Transport, TransportError,
    handle_raft_rpc,
};
use crate::{
    CommandVersions, LogIoStats, MAX_VOTERS, NodeId, PROPOSAL_TIMEOUT, ProposeError, READ_BARRIER_TIMEOUT, Raft,
    Request, Response, propose_error,
};

/// How long a membership change may take (adding a node waits until it has caught up,
/// which may mean installing a snapshot).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause before trying again while the cluster has no reachable leader.
const LEADER_RETRY: Duration = Duration::from_millis(50);

/// Answers the enrolment requests of nodes that are not members yet (the application
/// checks the join token and signs the node's certificate).
pub trait JoinHandler: Send + Sync + 'static {
    /// Answers one enrolment request.
    fn join(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;

    /// The nodes whose certificates are revoked (removed from the cluster): every request
    /// from them is refused, Raft RPCs and asking to be added back included.
    fn revoked(&self) -> Vec<NodeId> {
        Vec::new()
    }

    /// Answers a member's application request about this node's local data.
    fn app(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        let _ = request;
        Box::pin(async { Err("this node answers no application requests".to_owned()) })
    }
}

/// Who leads, as this node sees it.
enum Leader {
    Me,
    Other(NodeId, BasicNode),
    Unknown,
}

/// A learner that has heard nothing from a leader for this long is cut off from the
/// voters: it serves reads of what it has and refuses writes at once.
const DETACHED_AFTER: Duration = Duration::from_secs(3);
/// How long a learner's read barrier may take before it reads what it has.
const LEARNER_READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a leader waits for a voter's status when it must learn its command version.
const VERSION_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a node asks its peers which command versions they apply (so that a new leader
/// already knows them).
const VERSION_REFRESH: Duration = Duration::from_secs(10);

/// What this node knows of the command versions its peers apply.
pub(crate) struct VersionBook {
    config: CommandVersions,
    /// Per peer: the command version and release it last reported.
    reported: std::sync::Mutex<HashMap<NodeId, (u16, String)>>,
    /// Per peer: when a proposal last asked it again (at most every [`ASK_AGAIN_AFTER`]).
    asked: std::sync::Mutex<HashMap<NodeId, Instant>>,
}

/// How soon a proposal may ask a lagging voter for its version again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(2);

impl VersionBook {
    pub(crate) fn new(config: CommandVersions) -> Self {
        Self { config, reported: Default::default(), asked: Default::default() }
    }

    /// The command version `id` applies, as far as this node knows.
    fn applies(&self, id: NodeId) -> u16 {
        self.report(id).0
    }

    /// The command version and release `id` last reported (`unreported` and `None` when it
    /// has not).
    fn report(&self, id: NodeId) -> (u16, Option<String>) {
        match self.reported.lock().expect("version lock").get(&id) {
            Some((version, release)) => (*version, Some(release.clone())),
            None => (self.config.unreported, None),
        }
    }

    /// Notes what `id` said of itself.
    pub(crate) fn note(&self, id: NodeId, status: &NodeStatus) {
        let reported = (status.command_version, status.version.clone());
        self.reported.lock().expect("version lock").insert(id, reported);
    }

    /// Whether no peer reported a version below `required` (the fast path of proposals).
    fn none_below(&self, required: u16) -> bool {
        self.reported.lock().expect("version lock").values().all(|(version, _)| *version >= required)
    }

    /// Whether a proposal may ask `id` again now (and notes that it does).
    fn may_ask(&self, id: NodeId) -> bool {
        let mut asked = self.asked.lock().expect("version lock");
        let now = Instant::now();
        if asked.get(&id).is_some_and(|last| now.duration_since(*last) < ASK_AGAIN_AFTER) {
            return false;
        }
        asked.insert(id, now);
        true
    }
}

/// The parts of a node that talk to its peers.
#[derive(Clone)]
pub(crate) struct Peers {
    pub(crate) raft: Raft,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) log_stats: Arc<LogIoStats>,
    /// When a leader last sent AppendEntries (or this node started).
    pub(crate) leader_contact: Arc<std::sync::Mutex<Instant>>,
    /// Set while this leader hands over leadership: it takes no more writes.
    pub(crate) stepping_down: Arc<std::sync::atomic::AtomicBool>,
    /// The command versions of this node and its peers.
    pub(crate) versions: Arc<VersionBook>,
}

fn not_leader(error: ProposeError) -> PeerError {
    match error {
        ProposeError::ForwardToLeader { leader } => PeerError::NotLeader { leader },
        ProposeError::Unavailable(reason) => PeerError::Failed(reason),
    }
}

fn from_peer(error: PeerError) -> ProposeError {
    match error {
        PeerError::NotLeader { leader } => ProposeError::ForwardToLeader { leader },
        PeerError::Failed(reason) => ProposeError::Unavailable(reason),
    }
}

/// A request that may be retried: it was refused before anything happened.
fn retryable(result: &Result<impl Sized, ProposeError>) -> bool {
    matches!(result, Err(ProposeError::ForwardToLeader { .. }))
}

impl Peers {
    /// How long this node, a learner, has been cut off from the leader; `None` while in
    /// touch, and always for voters (they never serve stale reads).
    pub(crate) fn detached(&self) -> Option<Duration> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Learner {
            return None;
        }
        let silent = self.leader_contact.lock().expect("contact lock").elapsed();
        (silent >= DETACHED_AFTER).then_some(silent)
    }

    fn leader(&self) -> Leader {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(id) if id == metrics.id => {
                if metrics.state == ServerState::Leader && !self.stepping_down.load(std::sync::atomic::Ordering::SeqCst)
                {
                    Leader::Me
                } else {
                    Leader::Unknown
                }
            }
            Some(id) => match metrics.membership_config.membership().get_node(&id) {
                Some(node) => Leader::Other(id, node.clone()),
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// Commits `request` through the leader and returns its responses once committed. A
    /// forwarded batch also waits (until the deadline) for this node to apply it, so the
    /// caller normally reads its own write; a node lagging past the deadline still answers
    /// with the committed result rather than an error that would invite a duplicate. While there is no leader, or the
    /// leader refuses because it just lost leadership, it tries again until
    /// [`PROPOSAL_TIMEOUT`].
    pub(crate) async fn commit(&self, request: Request) -> Result<Response, ProposeError> {
        if let Some(silent) = self.detached() {
            return Err(ProposeError::Unavailable(format!(
                "this learner has been cut off from the cluster for {} s: it serves reads but takes no writes until the link is back",
                silent.as_secs()
            )));
        }
        let deadline = Instant::now() + PROPOSAL_TIMEOUT;
        loop {
            let attempt = match self.leader() {
                Leader::Me => match tokio::time::timeout_at(deadline, self.write_here(request.clone())).await {
                    Ok(written) => written.map(|(_, response)| response),
                    Err(_) => Err(ProposeError::Unavailable("no quorum within 30 s; the outcome is unknown".into())),
                },
                Leader::Other(id, node) => self.forward(id, &node, request.clone(), deadline).await,
                Leader::Unknown => Err(ProposeError::ForwardToLeader { leader: None }),
            };
            if !retryable(&attempt) || Instant::now() >= deadline {
                return attempt.map_err(|error| match error {
                    ProposeError::ForwardToLeader { .. } => {
                        ProposeError::Unavailable("no reachable leader within 30 s; nothing was written".into())
                    }
                    error => error,
                });
            }
            tokio::time::sleep(LEADER_RETRY).await;
        }
    }

    /// Hands leadership over: this node, no longer a voter (the caller demoted it), stops
    /// taking writes and sending heartbeats, so the voters elect one of themselves, whose
    /// first AppendEntries makes this node follow. openraft 0.9 has no transfer call, and
    /// its leader keeps leading after leaving the voters.
    pub(crate) async fn step_down(&self, timeout: Duration) -> Result<(), ProposeError> {
        use std::sync::atomic::Ordering::SeqCst;
        let me = self.raft.metrics().borrow().id;
        self.stepping_down.store(true, SeqCst);
        self.raft.runtime_config().heartbeat(false);
        let mut metrics = self.raft.metrics();
        let elected = metrics.wait_for(|m| m.current_leader.is_some_and(|leader| leader != me));
        let handed_over = tokio::time::timeout(timeout, elected).await.is_ok_and(|changed| changed.is_ok());
        self.raft.runtime_config().heartbeat(true);
        self.stepping_down.store(false, SeqCst);
        if handed_over {
            Ok(())
        } else {
            Err(ProposeError::Unavailable(format!("no other voter took over within {timeout:?}")))
        }
    }

    /// Appends `request` on this node, which must lead; returns the entry's index.
    async fn write_here(&self, request: Request) -> Result<(u64, Response), ProposeError> {
        if self.stepping_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ProposeError::ForwardToLeader { leader: None });
        }
        let written = self.raft.client_write(request).await.map_err(propose_error)?;
        Ok((written.log_id.index, written.data))
    }

    /// Refuses `request` unless this node and every voter apply each command in it (see
    /// [`Self::version_refusal`]).
    async fn check_versions(&self, request: &Request) -> Result<(), ProposeError> {
        let required = request.0.iter().map(|command| self.required_version(command)).max().unwrap_or(0);
        self.version_refusal(required).await.map_or(Ok(()), Err)
    }

    /// The version `command` needs.
    pub(crate) fn required_version(&self, command: &[u8]) -> u16 {
        (self.versions.config.required)(command)
    }

    /// Why a command of version `required` may not be proposed (this node or a voter does
    /// not apply it); `None` when it may. Every node checks its own proposals before they
    /// are batched or forwarded (a leader of an older release would not), and the leader
    /// checks what it appends.
    pub(crate) async fn version_refusal(&self, required: u16) -> Option<ProposeError> {
        let config = self.versions.config;
        if required <= config.unreported.min(config.supported) && self.versions.none_below(required) {
            return None;
        }
        let metrics = self.raft.metrics().borrow().clone();
        if required > config.supported {
            return Some(ProposeError::Unavailable(format!(
                "this change needs command version {required}, but node {} (wmail {}) applies up to {}: \
                 upgrade it to the release of the node that made the change, then retry",
                metrics.id,
                env!("CARGO_PKG_VERSION"),
                config.supported
            )));
        }
        let membership = metrics.membership_config.membership();
        let mut behind = Vec::new();
        for id in membership.voter_ids().filter(|id| *id != metrics.id) {
            if self.versions.applies(id) >= required {
                continue;
            }
            if let Some(node) = membership.get_node(&id)
                && self.versions.may_ask(id)
            {
                self.ask_version(id, node).await;
            }
            let (version, release) = self.versions.report(id);
            if version < required {
                behind.push(format!(
                    "node {id} (wmail {}) applies up to {version}",
                    release.as_deref().unwrap_or("of unknown version")
                ));
            }
        }
        if behind.is_empty() {
            return None;
        }
        Some(ProposeError::Unavailable(format!(
            "this change needs command version {required}, which not every voter applies yet: {}; \
             finish the rolling upgrade of the voters, then retry",
            behind.join(", ")
        )))
    }

    /// Asks `id` for its status and notes its command version (nothing when it does not
    /// answer, or answers in an older release's format). Returns whether it answered.
    async fn ask_version(&self, id: NodeId, node: &BasicNode) -> bool {
        let call = self.transport.call(id, node, PeerRequest::Status);
        match tokio::time::timeout(VERSION_QUERY_TIMEOUT, call).await {
            Ok(Ok(PeerReply::Status(status))) => {
                self.versions.note(id, &status);
                true
            }
            Ok(Ok(_)) => true,
            _ => false,
        }
    }

    /// Keeps the peers' command versions fresh on every node (a new leader then knows them,
    /// including those of voters that are down), until Raft stops. Logs when a peer stops
    /// or starts answering: one line per change, where openraft's own replication log
    /// repeats every heartbeat (it is off by default; see `wmail serve`'s log filter).
    pub(crate) async fn refresh_versions(self) {
        let mut answering: HashMap<NodeId, bool> = HashMap::new();
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.state == ServerState::Shutdown {
                return;
            }
            for (id, node) in metrics.membership_config.membership().nodes() {
                if *id == metrics.id {
                    continue;
                }
                let answers = self.ask_version(*id, node).await;
                match answering.insert(*id, answers) {
                    Some(true) | None if !answers => tracing::warn!(
                        node = id,
                        addr = %node.addr,
                        "a cluster member does not answer (stopped, or unreachable); the cluster carries on while most voters answer"
                    ),
                    Some(false) if answers => {
                        tracing::info!(node = id, addr = %node.addr, "a cluster member answers again")
                    }
                    _ => {}
                }
            }
            answering.retain(|id, _| metrics.membership_config.membership().get_node(id).is_some());
            tokio::time::sleep(VERSION_REFRESH).await;
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        node: &BasicNode,
        request: Request,
        deadline: Instant,
    ) -> Result<Response, ProposeError> {
        let call = self.transport.call(leader, node, PeerRequest::Propose(request));
        let answer = tokio::select! {
            biased;
            answer = tokio::time::timeout_at(deadline, call) => answer,
            // The cluster moved on (the leader died or was cut off): waiting for its answer
            // would only delay the caller's retry.
            () = self.leader_changes_from(leader) => {
                return Err(ProposeError::Unavailable(
                    "the leader changed while it held this write; the outcome is unknown".into(),
                ));
            }
        };
        match answer {
            Err(_) => {
                Err(ProposeError::Unavailable("no answer from the leader within 30 s; the outcome is unknown".into()))
            }
            // Never sent: safe to send again.
            Ok(Err(TransportError::Unreachable(_))) => Err(ProposeError::ForwardToLeader { leader: None }),
            Ok(Err(error)) => Err(ProposeError::Unavailable(format!("{error}; the outcome is unknown"))),
            Ok(Ok(PeerReply::Propose(Ok((index, response))))) => {
                self.wait_applied(index, deadline).await;
                Ok(response)
            }
            Ok(Ok(PeerReply::Propose(Err(error)))) => Err(from_peer(error)),
            Ok(Ok(_)) => Err(ProposeError::Unavailable("the leader answered with the wrong kind of reply".into())),
        }
    }

    /// Returns once this node knows another leader than `leader` (or none).
    async fn leader_changes_from(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        while metrics.borrow_and_update().current_leader == Some(leader) {
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until this node has applied `index`, or `deadline`; returns whether it has.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> bool {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "read own write").await.is_ok()
    }

    /// Waits until this node has applied everything committed when the call was made: the
    /// leader confirms its leadership with a quorum and names its commit index (the "read
    /// index" of Ongaro's Raft thesis, §6.4); a follower or learner asks the leader for it.
    /// A learner cut off from the leader reads what it has instead (a branch office keeps
    /// serving its users while its link is down).
    pub(crate) async fn read_barrier(&self) -> Result<(), ProposeError> {
        if self.raft.metrics().borrow().state != ServerState::Learner {
            return self.read_barrier_until(Instant::now() + READ_BARRIER_TIMEOUT).await;
        }
        if self.detached().is_some() {
            return Ok(());
        }
        if let Err(error) = self.read_barrier_until(Instant::now() + LEARNER_READ_BARRIER_TIMEOUT).await {
            tracing::debug!(%error, "learner read barrier failed; reading local state");
        }
        Ok(())
    }

    async fn read_barrier_until(&self, deadline: Instant) -> Result<(), ProposeError> {
        loop {
            let attempt = match self.leader() {
                Leader::Me => match tokio::time::timeout_at(deadline, self.read_index_here()).await {
                    Ok(index) => index.map_err(from_peer),
                    Err(_) => Err(ProposeError::Unavailable("leadership not confirmed by a quorum within 10 s".into())),
                },
                Leader::Other(id, node) => {
                    match tokio::time::timeout_at(deadline, self.transport.call(id, &node, PeerRequest::ReadIndex))
                        .await
                    {
                        Ok(Ok(PeerReply::ReadIndex(index))) => index.map_err(from_peer),
                        Ok(Ok(_)) => Err(ProposeError::Unavailable("wrong kind of reply to a read index".into())),
                        Ok(Err(_)) => Err(ProposeError::ForwardToLeader { leader: None }),
                        Err(_) => Err(ProposeError::Unavailable("the leader did not answer within 10 s".into())),
                    }
                }
                Leader::Unknown => Err(ProposeError::ForwardToLeader { leader: None }),
            };
            match attempt {
                Ok(index) => {
                    return if self.wait_applied(index, deadline).await {
                        Ok(())
                    } else {
                        Err(ProposeError::Unavailable(format!("this node has not applied up to {index} within 10 s")))
                    };
                }
                Err(ProposeError::ForwardToLeader { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(LEADER_RETRY).await
                }
                Err(ProposeError::ForwardToLeader { .. }) => {
                    return Err(ProposeError::Unavailable("no reachable leader within 10 s".into()));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The leader's read index.
    async fn read_index_here(&self) -> Result<u64, PeerError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |id| id.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(PeerError::NotLeader { leader: forward.leader_id.zip(forward.leader_node.map(|n| n.addr)) })
            }
            Err(error) => Err(PeerError::Failed(error.to_string())),
        }
    }

    /// Applies `change` through the leader (this node or the one it knows).
    pub(crate) async fn change_membership(&self, change: MembershipChange) -> Result<(), ProposeError> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            let attempt = match self.leader() {
                Leader::Me => self.change_membership_here(change.clone()).await.map_err(from_peer),
                Leader::Other(id, node) => self.ask_node(id, &node, change.clone(), deadline).await,
                Leader::Unknown => Err(ProposeError::ForwardToLeader { leader: None }),
            };
            if !retryable(&attempt) || Instant::now() >= deadline {
                return attempt;
            }
            tokio::time::sleep(LEADER_RETRY).await;
        }
    }

    /// Asks node `target` (any member) to have `change` applied.
    pub(crate) async fn ask(&self, target: NodeId, addr: &str, change: MembershipChange) -> Result<(), ProposeError> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            let attempt = self.ask_node(target, &BasicNode::new(addr), change.clone(), deadline).await;
            if !retryable(&attempt) || Instant::now() >= deadline {
                return attempt;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ask_node(
        &self,
        target: NodeId,
        node: &BasicNode,
        change: MembershipChange,
        deadline: Instant,
    ) -> Result<(), ProposeError> {
        let call = self.transport.call(target, node, PeerRequest::Membership(change));
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(PeerReply::Membership(result))) => result.map_err(from_peer),
            // Refused outright (a revoked certificate): the reason is for the operator.
            Ok(Ok(PeerReply::Join(Err(refusal)))) => Err(ProposeError::Unavailable(refusal)),
            Ok(Ok(_)) => Err(ProposeError::Unavailable("wrong kind of reply to a membership change".into())),
            Ok(Err(TransportError::Unreachable(_))) => Err(ProposeError::ForwardToLeader { leader: None }),
            Ok(Err(error)) => Err(ProposeError::Unavailable(error.to_string())),
            Err(_) => Err(ProposeError::Unavailable("the membership change did not finish in time".into())),
        }
    }

    async fn change_membership_here(&self, change: MembershipChange) -> Result<(), PeerError> {
        let refused = |error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| not_leader(propose_error(error));
        let voters: BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        let change_voters = |members: ChangeMembers<NodeId, BasicNode>, retain: bool| async move {
            self.raft.change_membership(members, retain).await.map(|_| ()).map_err(refused)
        };
        match change {
            MembershipChange::Add { id, addr, voter } => {
                let added = self.raft.add_learner(id, BasicNode::new(addr), false).await.map_err(refused)?;
                // openraft's own wait ends within 5,000 entries of the leader; a node only
                // votes once it holds everything up to its own addition (log or snapshot).
                let caught_up = self
                    .raft
                    .wait(Some(MEMBERSHIP_TIMEOUT))
                    .metrics(
                        |metrics| {
                            let matched = metrics.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten());
                            matched.is_some_and(|matched| matched.index >= added.log_id.index)
                        },
                        "the new node caught up",
                    )
                    .await;
                if caught_up.is_err() {
                    return Err(PeerError::Failed(format!(
                        "node {id} did not catch up; is it reachable at its address?"
                    )));
                }
                if voter && !voters.contains(&id) && voters.len() < MAX_VOTERS {
                    change_voters(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await?;
                }
                Ok(())
            }
            MembershipChange::Promote { id } => {
                if voters.contains(&id) {
                    return Ok(());
                }
                if voters.len() >= MAX_VOTERS {
                    return Err(PeerError::Failed(format!("the cluster has {MAX_VOTERS} voters already")));
                }
                change_voters(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await
            }
            MembershipChange::Demote { id } => {
                change_voters(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true).await
            }
            MembershipChange::Remove { id } if voters.contains(&id) => {
                change_voters(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await
            }
            MembershipChange::Remove { id } => {
                change_voters(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await
            }
        }
    }

    /// This node's status.
    pub(crate) fn status(&self) -> NodeStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let applied = metrics.last_applied.map(|id| id.index);
        // What was applied was committed (the committed record is only written on the
        // next commit after a restart).
        let committed =
            self.log_stats.committed_plus_one.load(std::sync::atomic::Ordering::Relaxed).checked_sub(1).max(applied);
        NodeStatus {
            id: metrics.id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: format!("{:?}", metrics.state),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            committed_index: committed,
            applied_index: applied,
            command_version: self.versions.config.supported,
        }
    }
}

/// The [`PeerHandler`] of a consensus member.
pub(crate) struct ConsensusPeer {
    pub(crate) peers: Peers,
    pub(crate) join: Option<Arc<dyn JoinHandler>>,
}

impl ConsensusPeer {
    /// Whether `sender` may make `request`. Anyone may enrol. Raft RPCs and status need a
    /// certificate of the cluster CA (a lagging node must accept a leader it does not
    /// know of yet; Raft's own membership decides whose log counts). Proposals, read
    /// indexes and membership changes need a certificate naming a node of this node's
    /// membership, or a node asking to add itself (a joining node). Nothing is taken from a
    /// certificate naming a revoked (removed) node, whose key still signs a valid one.
    fn admit(&self, request: &PeerRequest, sender: &Sender) -> Result<(), String> {
        let certificate = match sender {
            Sender::Local => return Ok(()),
            _ if matches!(request, PeerRequest::Join(_)) => return Ok(()),
            Sender::Anonymous => return Err("only enrolment is allowed without a cluster certificate".into()),
            Sender::Certified(der) => der,
        };
        let names = |id: NodeId| crate::tls::certificate_names_node(certificate, id);
        // A removed node keeps its key and its CA-signed certificate: refuse it by id.
        if let Some(join) = &self.join
            && join.revoked().into_iter().any(names)
        {
            return Err("this node was removed from the cluster and its certificate revoked; wipe its data directory and join again with a new token (`wmail cluster token`)".into());
        }
        if let PeerRequest::Raft(rpc) = request {
            // A Raft RPC speaks for the node in its vote (the candidate asking for votes,
            // the leader sending entries or a snapshot): only that node may send it, or one
            // member could campaign or lead in another's name.
            let vote = match rpc {
                crate::RaftRpc::AppendEntries(rpc) => &rpc.vote,
                crate::RaftRpc::Vote(rpc) => &rpc.vote,
                crate::RaftRpc::InstallSnapshot(rpc) => &rpc.vote,
            };
            return match vote.leader_id().voted_for() {
                Some(claimed) if names(claimed) => Ok(()),
                claimed => {
                    Err(format!("a Raft request in the name of node {claimed:?} from another node's certificate"))
                }
            };
        }
        if matches!(request, PeerRequest::Status) {
            return Ok(());
        }
        let metrics = self.peers.raft.metrics();
        let member = metrics.borrow().membership_config.membership().nodes().any(|(id, _)| names(*id));
        let adds_itself = matches!(request, PeerRequest::Membership(MembershipChange::Add { id, .. }) if names(*id));
        if member || adds_itself {
            Ok(())
        } else {
            Err("this certificate names no member of the cluster (a removed node?)".into())
        }
    }
}

impl PeerHandler for ConsensusPeer {
    fn handle(&self, request: PeerRequest, sender: Sender) -> Pin<Box<dyn Future<Output = PeerReply> + Send + '_>> {
        Box::pin(async move {
            if let Err(refusal) = self.admit(&request, &sender) {
                return PeerReply::Join(Err(refusal));
            }
            match request {
                PeerRequest::Raft(rpc) => {
                    if matches!(rpc, crate::RaftRpc::AppendEntries(_) | crate::RaftRpc::InstallSnapshot(_)) {
                        *self.peers.leader_contact.lock().expect("contact lock") = Instant::now();
                    }
                    PeerReply::Raft(handle_raft_rpc(&self.peers.raft, rpc).await)
                }
                PeerRequest::Propose(request) => {
                    // This node's own proposals were checked before they were batched; a
                    // forwarded batch is checked here, as its sender may be of a release
                    // that does not check.
                    let written = match self.peers.check_versions(&request).await {
                        Ok(()) => self.peers.write_here(request).await,
                        Err(refusal) => Err(refusal),
                    };
                    PeerReply::Propose(written.map_err(not_leader))
                }
                PeerRequest::ReadIndex => PeerReply::ReadIndex(self.peers.read_index_here().await),
                PeerRequest::Membership(change) => {
                    PeerReply::Membership(self.peers.change_membership(change).await.map_err(not_leader))
                }
                PeerRequest::Status => PeerReply::Status(self.peers.status()),
                PeerRequest::Join(request) => PeerReply::Join(match &self.join {
                    Some(join) => join.join(request).await,
                    None => Err("this node does not enrol new nodes".into()),
                }),
                PeerRequest::App(request) => PeerReply::App(match &self.join {
                    Some(handler) => handler.app(request).await,
                    None => Err("this node answers no application requests".into()),
                }),
            }
        })
    }
}
