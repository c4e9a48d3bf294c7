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
    let state = FileState::open(&dir.join("state"));
    let mut config = ConsensusConfig::new(node_id, format!("node-{node_id}"), dir);
    config.heartbeat = Duration::from_millis(50);
    config.snapshot_every = snapshot_every;
    config.logs_kept_after_snapshot = 0;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up_by_snapshot() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let router = InMemoryRouter::default();
    let mut nodes = Vec::new();
    let mut states = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        let id = index as NodeId + 1;
        let (node, state) = open_node(dir.path(), id, router.transport_for(id), 20).await;
        router.add(id, node.raft().clone());
        nodes.push(node);
        states.push(state);
    }
    let members: BTreeMap<_, _> = (1..=3).map(|id| (id, BasicNode::new(format!("node-{id}")))).collect();
    nodes[0].raft().initialize(members).await.unwrap();
    let all: Vec<&Consensus> = nodes.iter().collect();
    let leader = wait_for_leader(&all, None).await;
    let leader_node = &nodes[leader as usize - 1];
    leader_node.propose(b"a=1".to_vec()).await.unwrap();

    tracing::info!("--- a follower refuses proposals and names the leader");
    let follower = nodes.iter().find(|node| node.node_id() != leader).unwrap();
    match follower.propose(b"b=1".to_vec()).await {
        Err(ProposeError::ForwardToLeader { leader: Some((id, _)) }) => assert_eq!(id, leader),
        other => panic!("expected ForwardToLeader, got {other:?}"),
    }

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
