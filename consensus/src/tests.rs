//! Consensus tests: openraft's storage suite against our stores, a single node surviving a
//! restart, and a three-node cluster over the in-memory router failing over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use serde::{Deserialize, Serialize};

use super::*;

/// A tiny durable key-value state: `key=value` commands, previous value as response; the
/// whole state is rewritten to one JSON file per applied batch.
struct FileState {
    path: PathBuf,
    inner: Mutex<KvState>,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct KvState {
    map: BTreeMap<String, String>,
    applied_record: Option<Vec<u8>>,
}

const STATE_FILE: &str = "state.json";

impl FileState {
    fn open(dir: &Path) -> Arc<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(STATE_FILE);
        let inner = std::fs::read(&path).map(|bytes| serde_json::from_slice(&bytes).unwrap()).unwrap_or_default();
        Arc::new(Self { path, inner: Mutex::new(inner) })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.inner.lock().unwrap().map.get(key).cloned()
    }

    fn persist(path: &Path, state: &KvState) -> std::io::Result<()> {
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, serde_json::to_vec(state)?)?;
        std::fs::rename(temp, path)
    }
}

impl ReplicatedState for FileState {
    fn apply(&self, entries: Vec<StateEntry>) -> std::io::Result<Vec<Vec<Vec<u8>>>> {
        let mut state = self.inner.lock().unwrap();
        let mut responses = Vec::new();
        for entry in entries {
            assert!(entry.log_index > 0 || entry.commands.is_empty());
            let mut entry_responses = Vec::new();
            for command in entry.commands {
                let text = String::from_utf8(command).unwrap();
                let (key, value) = text.split_once('=').unwrap();
                entry_responses.push(state.map.insert(key.into(), value.into()).unwrap_or_default().into_bytes());
            }
            state.applied_record = Some(entry.applied_record);
            responses.push(entry_responses);
        }
        Self::persist(&self.path, &state)?;
        Ok(responses)
    }

    fn applied_record(&self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.inner.lock().unwrap().applied_record.clone())
    }

    fn checkpoint(&self, dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
        let state = self.inner.lock().unwrap();
        std::fs::create_dir(dir)?;
        Self::persist(&dir.join(STATE_FILE), &state)?;
        Ok(state.applied_record.clone())
    }

    fn restore(&self, dir: &Path) -> std::io::Result<()> {
        let restored: KvState = serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE))?)?;
        Self::persist(&self.path, &restored)?;
        *self.inner.lock().unwrap() = restored;
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<FileState>, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore<FileState>), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft")).unwrap();
        let state = FileState::open(&dir.path().join("state"));
        let sm = StateMachineStore::new(state, dir.path().join("snapshots")).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}

async fn open_node(
    dir: &Path,
    node_id: NodeId,
    transport: Arc<dyn Transport>,
    snapshot_every: u64,
) -> (Consensus, Arc<FileState>) {
    open_versioned_node(dir, node_id, transport, snapshot_every, CommandVersions::default()).await
}

async fn open_versioned_node(
    dir: &Path,
    node_id: NodeId,
    transport: Arc<dyn Transport>,
    snapshot_every: u64,
    versions: CommandVersions,
) -> (Consensus, Arc<FileState>) {
    let state = FileState::open(&dir.join("state"));
    let mut config = ConsensusConfig::new(node_id, format!("node-{node_id}"), dir);
    config.heartbeat = Duration::from_millis(50);
    config.snapshot_every = snapshot_every;
    config.logs_kept_after_snapshot = 0;
    config.versions = versions;
    (Consensus::open(config, state.clone(), transport).await.unwrap(), state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_applies_concurrent_proposals_and_recovers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let router = InMemoryRouter::default();
    let (node, state) = open_node(dir.path(), 1, router.transport_for(1), 3).await;
    assert!(node.initialize_single_node().await.unwrap());
    assert!(node.wait_ready(Duration::from_secs(30)).await, "single node never became ready");
    // Spawn all first (collect), then wait: the proposals are in flight together.
    let proposals: Vec<_> = (0..200)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.propose(format!("k{i}=v{i}").into_bytes()).await })
        })
        .collect();
    for proposal in proposals {
        assert_eq!(proposal.await.unwrap().unwrap(), Vec::<u8>::new());
    }
    assert_eq!(node.propose(b"k7=again".to_vec()).await.unwrap(), b"v7");
    // Group commit: 201 proposals, most of them concurrent, took far fewer log entries (and
    // so appends and fsyncs) than commands.
    let stats = node.log_stats();
    let (entries, syncs) = (stats.entries.load(Ordering::Relaxed), stats.wal_syncs.load(Ordering::Relaxed));
    assert!(entries < 150 && syncs <= entries, "201 proposals took {entries} entries and {syncs} syncs: no batching");
    node.shutdown().await;
    drop((node, state));

    tracing::info!("--- reopen: no re-initialisation, state and log are back");
    let (node, state) = open_node(dir.path(), 1, router.transport_for(1), 3).await;
    assert!(!node.initialize_single_node().await.unwrap());
    assert!(node.wait_ready(Duration::from_secs(30)).await);
    assert_eq!(state.get("k7").as_deref(), Some("again"));
    assert_eq!(state.get("k199").as_deref(), Some("v199"));
    assert!(node.metrics().snapshot.is_some(), "with snapshot_every = 3 a snapshot must exist");
    node.read_barrier().await.unwrap();
    node.shutdown().await;
}

async fn wait_for_leader(nodes: &[&Consensus], except: Option<NodeId>) -> NodeId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for node in nodes {
            let metrics = node.metrics();
            if metrics.state == ServerState::Leader && Some(node.node_id()) != except {
                return node.node_id();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens nodes 1, 2 and 3 in `dirs` on `router` (not joined yet); `versions` says what
/// each applies.
async fn open_three(
    dirs: &[tempfile::TempDir],
    router: &InMemoryRouter,
    snapshot_every: u64,
    versions: impl Fn(NodeId) -> CommandVersions,
) -> (Vec<Consensus>, Vec<Arc<FileState>>) {
    let (mut nodes, mut states) = (Vec::new(), Vec::new());
    for (index, dir) in dirs.iter().enumerate() {
        let id = index as NodeId + 1;
        let (node, state) =
            open_versioned_node(dir.path(), id, router.transport_for(id), snapshot_every, versions(id)).await;
        router.add(id, node.peer_handler(None));
        nodes.push(node);
        states.push(state);
    }
    (nodes, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up_by_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let router = InMemoryRouter::default();
    let (nodes, states) = open_three(&dirs, &router, 20, |_| CommandVersions::default()).await;
    let members: BTreeMap<_, _> = (1..=3).map(|id| (id, BasicNode::new(format!("node-{id}")))).collect();
    nodes[0].raft().initialize(members).await.unwrap();
    let all: Vec<&Consensus> = nodes.iter().collect();
    let leader = wait_for_leader(&all, None).await;
    let leader_node = &nodes[leader as usize - 1];
    leader_node.propose(b"a=1".to_vec()).await.unwrap();

    tracing::info!("--- a follower forwards proposals to the leader and reads its own write");
    let follower = nodes.iter().find(|node| node.node_id() != leader).unwrap();
    let follower_state = &states[follower.node_id() as usize - 1];
    assert_eq!(follower.propose(b"b=1".to_vec()).await.unwrap(), b"");
    assert_eq!(follower_state.get("b").as_deref(), Some("1"));
    assert_eq!(follower.propose(b"b=2".to_vec()).await.unwrap(), b"1");

    tracing::info!("--- a read barrier on a follower sees a write made through the leader");
    leader_node.propose(b"c=1".to_vec()).await.unwrap();
    follower.read_barrier().await.unwrap();
    assert_eq!(follower_state.get("c").as_deref(), Some("1"));
    assert_eq!(follower.status().applied_index, follower.metrics().last_applied.map(|id| id.index));

    tracing::info!("--- isolate the leader: the others elect a new one and keep committing");
    router.set_isolated(leader, true);
    let new_leader = wait_for_leader(&all, Some(leader)).await;
    let new_leader_node = &nodes[new_leader as usize - 1];
    for i in 0..60 {
        new_leader_node.propose(format!("n{i}={i}").into_bytes()).await.unwrap();
    }

    tracing::info!("--- reconnect: the old leader steps down and catches up (via snapshot)");
    router.set_isolated(leader, false);
    let old_state = &states[leader as usize - 1];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while old_state.get("n59").is_none() || nodes[leader as usize - 1].metrics().snapshot.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "old leader never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(old_state.get("a").as_deref(), Some("1"));
    for node in &nodes {
        node.shutdown().await;
    }
}

/// Command versions of the key-value test state: a key starting with `v2.` needs version 2.
fn kv_versions(supported: u16) -> CommandVersions {
    CommandVersions { supported, unreported: 1, required: |command| if command.starts_with(b"v2.") { 2 } else { 1 } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_waits_until_every_voter_applies_its_version() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let router = InMemoryRouter::default();
    // Node 3 runs an older release, which applies commands up to version 1.
    let (mut nodes, mut states) =
        open_three(&dirs, &router, 1_000, |id| kv_versions(if id == 3 { 1 } else { 2 })).await;
    let members: BTreeMap<_, _> = (1..=2).map(|id| (id, BasicNode::new(format!("node-{id}")))).collect();
    nodes[0].raft().initialize(members).await.unwrap();
    let leader = wait_for_leader(&[&nodes[0], &nodes[1]], None).await;
    let old_node = nodes.pop().unwrap();
    let (leader_node, follower) = if leader == 1 { (&nodes[0], &nodes[1]) } else { (&nodes[1], &nodes[0]) };
    assert_eq!(leader_node.status().command_version, 2);

    tracing::info!("--- an old learner does not hold back new commands (it would stop applying them)");
    leader_node.change_membership(MembershipChange::Add { id: 3, addr: "node-3".into(), voter: false }).await.unwrap();
    leader_node.propose(b"v2.learnt=1".to_vec()).await.unwrap();

    tracing::info!("--- once it votes, commands of version 2 are refused, through any node; older ones pass");
    leader_node.change_membership(MembershipChange::Promote { id: 3 }).await.unwrap();
    for node in [leader_node, follower] {
        let refused = node.propose(b"v2.new=1".to_vec()).await.unwrap_err().to_string();
        assert!(refused.contains("node 3 (wmail") && refused.contains("applies up to 1"), "{refused}");
        assert!(refused.contains("rolling upgrade"), "{refused}");
    }
    leader_node.propose(b"old=1".to_vec()).await.unwrap();
    // Proposed together (one batch, as often as not), only the new kind is refused.
    let (new, old) = tokio::join!(follower.propose(b"v2.again=1".to_vec()), follower.propose(b"older=1".to_vec()));
    assert!(new.is_err() && old.is_ok(), "{new:?} {old:?}");
    assert_eq!(states[leader as usize - 1].get("v2.new"), None, "a refused command was applied");

    tracing::info!("--- node 3 is upgraded: the leader asks it again and the command passes");
    old_node.shutdown().await;
    drop((old_node, states.pop()));
    let (upgraded, upgraded_state) =
        open_versioned_node(dirs[2].path(), 3, router.transport_for(3), 1_000, kv_versions(2)).await;
    router.add(3, upgraded.peer_handler(None));
    assert_eq!(leader_node.peer_status(3, "node-3").await.map(|status| status.command_version).ok(), Some(2));
    leader_node.propose(b"v2.new=1".to_vec()).await.unwrap();
    upgraded.read_barrier().await.unwrap();
    assert_eq!(upgraded_state.get("v2.new").as_deref(), Some("1"));
    assert_eq!(upgraded_state.get("v2.learnt").as_deref(), Some("1"));
    for node in nodes.iter().chain([&upgraded]) {
        node.shutdown().await;
    }
}

/// Answers enrolment requests by echoing them.
struct EchoJoin;

impl JoinHandler for EchoJoin {
    fn join(
        &self,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        Box::pin(async move { Ok(request) })
    }
}

fn identity(ca: &tls::CaMaterial, node_id: NodeId) -> tls::NodeIdentity {
    let key = tls::generate_node_key().unwrap();
    let cert_pem =
        tls::issue_node_certificate(ca, node_id, &key.public_key, tls::NODE_CERTIFICATE_VALIDITY).unwrap().cert_pem;
    tls::NodeIdentity { node_id, cert_pem, key_pem: key.key_pem, ca_pem: ca.cert_pem.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_replicate_over_quic_with_mutual_tls_and_refuse_a_foreign_ca() {
    let ca = tls::generate_ca().unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    let mut states = Vec::new();
    let mut addrs = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        let id = index as NodeId + 1;
        let transport = quic::QuicTransport::new();
        let (node, state) = open_node(dir.path(), id, transport.clone(), 1_000).await;
        let join: Arc<dyn JoinHandler> = Arc::new(EchoJoin);
        let bound = transport.start("127.0.0.1:0".parse().unwrap(), &identity(&ca, id), node.peer_handler(Some(join)));
        addrs.push(bound.unwrap().to_string());
        nodes.push((node, transport));
        states.push(state);
    }
    let (first, _) = &nodes[0];
    first.raft().initialize(BTreeMap::from([(1, BasicNode::new(&addrs[0]))])).await.unwrap();
    assert!(first.wait_ready(Duration::from_secs(30)).await);
    first.propose(b"a=1".to_vec()).await.unwrap();

    tracing::info!("--- node 2 asks node 1 to add it as a voter, then writes through the leader");
    let (second, _) = &nodes[1];
    second
        .ask_member(1, &addrs[0], MembershipChange::Add { id: 2, addr: addrs[1].clone(), voter: true })
        .await
        .unwrap();
    let voters: Vec<_> = first.metrics().membership_config.membership().voter_ids().collect();
    assert_eq!(voters, vec![1, 2]);
    assert_eq!(states[1].get("a").as_deref(), Some("1"), "the new node caught up before it votes");
    second.propose(b"b=2".to_vec()).await.unwrap();
    assert_eq!(states[0].get("b").as_deref(), Some("2"));
    assert_eq!(states[1].get("b").as_deref(), Some("2"));
    let status = second.peer_status(1, &addrs[0]).await.unwrap();
    assert_eq!((status.id, status.state.as_str()), (1, "Leader"));

    tracing::info!("--- enrolment works without a certificate, pinned to the CA's fingerprint");
    let fingerprint = tls::fingerprint(&ca.cert_pem).unwrap();
    assert_eq!(quic::enrol(&addrs[0], fingerprint, b"hello".to_vec()).await.unwrap(), b"hello");
    // A member without the token's CA is refused at once (asking again would not help).
    let wrong = quic::enrol(&addrs[0], [0; 32], b"hello".to_vec()).await.unwrap_err();
    assert!(matches!(&wrong, quic::EnrolError::Refused(reason) if reason.contains("TLS handshake")), "{wrong:?}");

    tracing::info!("--- a node with a certificate of another CA is refused");
    let foreign = quic::QuicTransport::new();
    let other_ca = tls::generate_ca().unwrap();
    let handler = nodes[1].0.peer_handler(None);
    foreign.start("127.0.0.1:0".parse().unwrap(), &identity(&other_ca, 3), handler).unwrap();
    let refused = foreign.call(1, &BasicNode::new(&addrs[0]), PeerRequest::Status).await;
    assert!(matches!(refused, Err(TransportError::Unreachable(1))), "{refused:?}");
    // And a member certificate used for another node id does not pass for it.
    let impostor = quic::QuicTransport::new();
    impostor.start("127.0.0.1:0".parse().unwrap(), &identity(&ca, 2), nodes[1].0.peer_handler(None)).unwrap();
    let wrong_name = impostor.call(2, &BasicNode::new(&addrs[0]), PeerRequest::Status).await;
    assert!(matches!(wrong_name, Err(TransportError::Unreachable(2))), "node 1 answered as node 2: {wrong_name:?}");

    tracing::info!("--- a member cannot send Raft requests in another member's name");
    let (_, second_transport) = &nodes[1];
    let leader_vote = first.metrics().vote;
    let forged = openraft::raft::VoteRequest::new(openraft::Vote::new(leader_vote.leader_id().term + 1, 1), None);
    let refused = second_transport.call(1, &BasicNode::new(&addrs[0]), PeerRequest::Raft(RaftRpc::Vote(forged))).await;
    assert!(
        matches!(&refused, Ok(PeerReply::Join(Err(reason))) if reason.contains("in the name of node Some(1)")),
        "{refused:?}"
    );
    let own = openraft::raft::VoteRequest::new(openraft::Vote::new(leader_vote.leader_id().term, 2), None);
    let answered = second_transport.call(1, &BasicNode::new(&addrs[0]), PeerRequest::Raft(RaftRpc::Vote(own))).await;
    assert!(matches!(answered, Ok(PeerReply::Raft(_))), "its own vote request is answered: {answered:?}");

    tracing::info!("--- a removed node's certificate stops working");
    first.change_membership(MembershipChange::Remove { id: 2 }).await.unwrap();
    let (_, second_transport) = &nodes[1];
    let refused = second_transport
        .call(1, &BasicNode::new(&addrs[0]), PeerRequest::Propose(Request(vec![b"c=3".to_vec()])))
        .await;
    assert!(matches!(refused, Ok(PeerReply::Join(Err(_)))), "a removed node still writes: {refused:?}");
    let asked = second_transport.call(1, &BasicNode::new(&addrs[0]), PeerRequest::ReadIndex).await;
    assert!(matches!(asked, Ok(PeerReply::Join(Err(_)))), "{asked:?}");

    foreign.stop().await;
    impostor.stop().await;
    for (node, transport) in &nodes {
        node.shutdown().await;
        transport.stop().await;
    }
}

#[test]
fn a_status_from_another_release_decodes_with_fields_it_lacks_or_adds() {
    let status = NodeStatus {
        id: 2,
        version: "0.1.0".into(),
        state: "Follower".into(),
        term: 3,
        leader: Some(1),
        last_log_index: Some(9),
        committed_index: Some(9),
        applied_index: Some(9),
        command_version: 4,
    };
    let bytes = postcard::to_allocvec(&PeerReply::Status(status.clone())).unwrap();
    assert!(matches!(postcard::from_bytes::<PeerReply>(&bytes).unwrap(), PeerReply::Status(s) if s == status));
    // On the wire as another release sends it: one field it does not have yet, one added
    // after it (the reply's variant 4, then the JSON as postcard bytes).
    let mut json = serde_json::to_value(&status).unwrap();
    json.as_object_mut().unwrap().remove("command_version");
    json["added_later"] = serde_json::json!({ "anything": [1, 2] });
    let mut wire = vec![4u8];
    wire.extend(postcard::to_allocvec(&serde_json::to_vec(&json).unwrap()).unwrap());
    let PeerReply::Status(decoded) = postcard::from_bytes::<PeerReply>(&wire).unwrap() else { panic!("not a status") };
    assert_eq!(decoded, NodeStatus { command_version: 0, ..status });
}
