//! The nemeses: faults injected one at a time, each held for a few seconds and then
//! healed, with every action recorded. Targets are drawn from the run's seeded random
//! source; about half of the node faults aim at the current leader.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::cluster::{CLUSTER_PORT, Node, SeaweedFs, api, join_token};
use crate::history::Recorder;
use crate::net::Network;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Nemesis {
    /// Network partitions: isolate the leader, split majority/minority, a bridge.
    Partition,
    /// `kill -9` of a node, restarted when healed.
    Kill,
    /// SIGSTOP of a node, SIGCONT when healed.
    Pause,
    /// Wall clocks set ahead or behind (libfaketime), or strobed back and forth.
    Skew,
    /// A node's data disk fills up.
    Disk,
    /// A node is removed from the cluster, wiped, and joins again as a new node.
    Membership,
}

impl Nemesis {
    /// Every nemesis.
    pub const ALL: [Nemesis; 6] = [Self::Partition, Self::Kill, Self::Pause, Self::Skew, Self::Disk, Self::Membership];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Partition => "partition",
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Skew => "skew",
            Self::Disk => "disk",
            Self::Membership => "membership",
        }
    }

    /// Parses a comma-separated list (`all` for every nemesis, `none` for none).
    pub fn parse_list(list: &str) -> anyhow::Result<Vec<Nemesis>> {
        let mut chosen = BTreeSet::new();
        for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            match name {
                "all" => chosen.extend(Self::ALL),
                "none" => {}
                _ => {
                    let nemesis = Self::ALL.into_iter().find(|n| n.name() == name).with_context(|| {
                        format!("unknown nemesis {name:?}; choose from all, none, partition, kill, pause, skew, disk, membership")
                    })?;
                    chosen.insert(nemesis);
                }
            }
        }
        Ok(chosen.into_iter().collect())
    }
}

/// The nodes, their network and what the nemeses need to act on them.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, index 0 is node 1 (dropped, so killed, before their namespaces go).
    pub nodes: Vec<Node>,
    /// The namespaces and links.
    pub network: Network,
    /// The S3 server, kept running as long as the cluster.
    pub _seaweed: SeaweedFs,
    /// The admin token (a node's; every node accepts it until that node is removed),
    /// shared with the clients.
    pub token: Arc<std::sync::RwLock<String>>,
    /// For admin API calls.
    pub http: reqwest::Client,
    /// Where nemesis actions and node crashes are recorded.
    pub recorder: Arc<Recorder>,
}

/// A fault in force, to be healed.
enum Fault {
    Partition,
    Kill(usize),
    Pause(usize),
    Skew(Vec<usize>, Option<tokio::task::JoinHandle<()>>),
    Disk(usize),
    Membership(usize),
}

/// How long a node may take to come back after a restart.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Records nodes whose process ended by itself since the last look (a crash the
    /// nemeses did not cause directly, such as an abort on a full disk).
    pub fn note_crashes(&mut self) {
        for node in &mut self.nodes {
            if let Some(status) = node.exited() {
                let detail = format!("n{} exited by itself ({status}); see {}", node.index, node.log_path().display());
                self.recorder.nemesis("crash", "observed", detail, Vec::new(), "ok".into());
            }
        }
    }

    /// Uses `token` from now on, and has the clients use it.
    pub fn set_token(&mut self, token: String) {
        *self.token.write().expect("token lock") = token;
    }

    /// The admin token now.
    pub fn token(&self) -> String {
        self.token.read().expect("token lock").clone()
    }

    /// The node with `index` (1-based).
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    fn node_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index - 1]
    }

    /// The cluster status as a live node reports it.
    pub async fn status(&self) -> Option<Value> {
        for node in self.nodes.iter().filter(|node| node.running() && !node.paused) {
            if let Ok((200, status)) =
                api(&self.http, node, &self.token(), reqwest::Method::GET, "/cluster/status", None).await
            {
                return Some(status);
            }
        }
        None
    }

    /// The node index a Raft node id belongs to (found by its cluster address).
    fn index_of(&self, status: &Value, id: u64) -> Option<usize> {
        let members = status["members"].as_array()?;
        let addr = members.iter().find(|m| m["id"] == id)?["addr"].as_str()?.to_owned();
        self.nodes.iter().find(|node| addr == format!("{}:{CLUSTER_PORT}", node.ip)).map(|node| node.index)
    }

    /// The current leader's node index, if some live node knows one.
    pub async fn leader(&self) -> Option<usize> {
        let status = self.status().await?;
        let id = status["leader"].as_u64()?;
        self.index_of(&status, id)
    }

    /// The Raft node id of node `index`.
    async fn node_id(&self, index: usize) -> anyhow::Result<u64> {
        let (_, status) =
            api(&self.http, self.node(index), &self.token(), reqwest::Method::GET, "/cluster/status", None).await?;
        status["node_id"].as_u64().with_context(|| format!("no node id from n{index}: {status}"))
    }

    /// Starts a fault of kind `nemesis`; returns what to heal, a description and the
    /// impaired nodes.
    async fn start_fault(&mut self, nemesis: Nemesis, rng: &mut StdRng) -> anyhow::Result<(Fault, String, Vec<usize>)> {
        let n = self.nodes.len();
        let leader = self.leader().await;
        // Both draws are made every time, so the seed fixes the sequence of choices.
        let (aim_at_leader, random_node) = (rng.gen_bool(0.5), rng.gen_range(1..=n));
        let target = match leader {
            Some(leader) if aim_at_leader => leader,
            _ => random_node,
        };
        let aimed = if Some(target) == leader { " (leader)" } else { "" };
        match nemesis {
            Nemesis::Kill => {
                self.node_mut(target).kill9();
                Ok((Fault::Kill(target), format!("kill -9 n{target}{aimed}"), vec![target]))
            }
            Nemesis::Pause => {
                self.node_mut(target).pause(true)?;
                Ok((Fault::Pause(target), format!("SIGSTOP n{target}{aimed}"), vec![target]))
            }
            Nemesis::Partition => {
                let mut order: Vec<usize> = (1..=n).collect();
                order.shuffle(rng);
                let (groups, impaired, name) = match rng.gen_range(0..3) {
                    0 => {
                        let rest = (1..=n).filter(|&i| i != target).collect();
                        (vec![vec![target], rest], vec![target], format!("isolate n{target}{aimed}"))
                    }
                    1 => {
                        let minority = order[..(n - 1) / 2].to_vec();
                        let majority = order[(n - 1) / 2..].to_vec();
                        (vec![minority.clone(), majority], minority, "majority/minority".to_owned())
                    }
                    _ => {
                        // Two halves that only the bridge node links: a majority is still
                        // connected through it, but the halves cannot talk directly.
                        let bridge = order[0];
                        let half = (n - 1) / 2;
                        let (a, b) = order[1..].split_at(half);
                        let pairs: Vec<(usize, usize)> =
                            a.iter().flat_map(|&x| b.iter().map(move |&y| (x, y))).collect();
                        self.network.cut_links(&pairs)?;
                        return Ok((Fault::Partition, format!("bridge via n{bridge}: {a:?} / {b:?}"), Vec::new()));
                    }
                };
                self.network.partition(&groups)?;
                Ok((Fault::Partition, format!("{name}: {:?}", groups), impaired))
            }
            Nemesis::Skew => {
                let mut nodes: Vec<usize> = (1..=n).collect();
                nodes.shuffle(rng);
                nodes.truncate(rng.gen_range(1..=n));
                nodes.sort();
                if rng.gen_bool(0.3) {
                    // Strobe: the clocks jump between ahead and behind every 200 ms.
                    let files: Vec<_> = nodes.iter().map(|&i| self.node(i).skew_file()).collect();
                    let seconds = rng.gen_range(5..=60);
                    let strobe = tokio::spawn(async move {
                        let mut ahead = true;
                        loop {
                            for file in &files {
                                let _ = crate::cluster::write_skew(file, if ahead { seconds } else { -seconds });
                            }
                            ahead = !ahead;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    });
                    return Ok((
                        Fault::Skew(nodes.clone(), Some(strobe)),
                        format!("strobe ±{seconds} s on {nodes:?}"),
                        Vec::new(),
                    ));
                }
                let mut detail = Vec::new();
                for &i in &nodes {
                    let seconds: i64 = rng.gen_range(-300..=300);
                    self.node(i).set_skew(seconds)?;
                    detail.push(format!("n{i} {seconds:+} s"));
                }
                Ok((Fault::Skew(nodes, None), format!("clocks {}", detail.join(", ")), Vec::new()))
            }
            Nemesis::Disk => {
                // Half the time 8 MiB stay free: below the node's free-space reserve, so it
                // refuses new mail but must keep running. Otherwise the disk is full.
                let leave = if rng.gen_bool(0.5) { 8 << 20 } else { 64 << 10 };
                let free = self.node(target).fill_disk(leave)?;
                let detail = format!(
                    "filled n{target}{aimed}'s data disk to {} KiB free (from {} MiB)",
                    leave >> 10,
                    free >> 20
                );
                Ok((Fault::Disk(target), detail, vec![target]))
            }
            Nemesis::Membership => {
                // A follower: a node may not remove itself, and the leader is the node that
                // would carry the change out.
                let victim = if Some(target) == leader { (target % n) + 1 } else { target };
                let id = self.node_id(victim).await?;
                // The victim's admin token dies with it: use another node's from now on.
                let other = self
                    .nodes
                    .iter()
                    .find(|node| node.index != victim && node.running())
                    .context("no other running node")?;
                let token = other.admin_token()?;
                self.set_token(token);
                let mut removed = false;
                for node in self.nodes.iter().filter(|node| node.index != victim && node.running()) {
                    let path = format!("/cluster/nodes/{id}");
                    if let Ok((204, _)) =
                        api(&self.http, node, &self.token(), reqwest::Method::DELETE, &path, None).await
                    {
                        removed = true;
                        break;
                    }
                }
                if !removed {
                    bail!("no node removed n{victim} (id {id}) from the cluster");
                }
                self.node_mut(victim).wipe()?;
                Ok((Fault::Membership(victim), format!("removed n{victim} (id {id}) and wiped it"), vec![victim]))
            }
        }
    }

    /// Heals `fault`.
    async fn heal(&mut self, fault: Fault) -> anyhow::Result<String> {
        match fault {
            Fault::Partition => {
                self.network.heal()?;
                Ok("network healed".into())
            }
            Fault::Kill(index) => {
                self.node_mut(index).start(RESTART_TIMEOUT).await?;
                Ok(format!("n{index} restarted"))
            }
            Fault::Pause(index) => {
                self.node_mut(index).pause(false)?;
                Ok(format!("SIGCONT n{index}"))
            }
            Fault::Skew(nodes, strobe) => {
                if let Some(strobe) = strobe {
                    strobe.abort();
                    let _ = strobe.await;
                }
                for &index in &nodes {
                    self.node(index).set_skew(0)?;
                }
                Ok(format!("clocks of {nodes:?} reset"))
            }
            Fault::Disk(index) => {
                self.node(index).free_disk()?;
                self.note_crashes();
                if self.node(index).running() {
                    return Ok(format!("n{index}'s disk freed"));
                }
                self.node_mut(index).start(RESTART_TIMEOUT).await?;
                Ok(format!("n{index}'s disk freed; restarted it after its crash"))
            }
            Fault::Membership(index) => {
                let member = self
                    .nodes
                    .iter()
                    .find(|node| node.index != index && node.running() && !node.paused)
                    .context("no running member to join")?;
                let token = join_token(&self.http, member, &self.token(), false).await?;
                let member_ip = member.ip;
                let node = self.node_mut(index);
                node.set_join(member_ip, token);
                node.start(RESTART_TIMEOUT).await?;
                Ok(format!("n{index} joined again"))
            }
        }
    }

    /// Heals everything the nemeses may have left: links, paused, stopped and full nodes.
    pub async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.note_crashes();
        self.network.heal()?;
        for node in &mut self.nodes {
            node.set_skew(0)?;
            node.free_disk()?;
            if node.paused {
                node.pause(false)?;
            }
        }
        for index in 1..=self.nodes.len() {
            if !self.node(index).running() {
                self.node_mut(index).start(RESTART_TIMEOUT).await?;
            }
        }
        Ok(())
    }
}

/// Injects faults from `nemeses` until `deadline`, one at a time: a quiet spell of 1-3 s,
/// then a fault held for 2-6 s, then its heal. The nemeses take turns in rounds, each
/// round in a new random order, so a run of a few rounds meets every one of them. Returns
/// the cluster once the last fault is healed.
pub async fn run(mut cluster: Cluster, nemeses: Vec<Nemesis>, seed: u64, deadline: Instant) -> Cluster {
    let recorder = cluster.recorder.clone();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    if nemeses.is_empty() {
        tokio::time::sleep_until(deadline.into()).await;
        return cluster;
    }
    let mut round = Vec::new();
    // The first round runs to its end even past the deadline (by two minutes at most):
    // every nemesis gets a turn, and one that could not start gets a second try.
    let mut rounds_started = 0;
    let mut retried = BTreeSet::new();
    let hard_deadline = deadline + Duration::from_secs(120);
    loop {
        let quiet = Duration::from_millis(rng.gen_range(1_000..3_000));
        let first_round_done = rounds_started > 1 || (rounds_started == 1 && round.is_empty());
        if (first_round_done || Instant::now() >= hard_deadline)
            && Instant::now() + quiet + Duration::from_secs(2) >= deadline
        {
            tokio::time::sleep_until(deadline.into()).await;
            return cluster;
        }
        tokio::time::sleep(quiet).await;
        cluster.note_crashes();
        if round.is_empty() {
            round = nemeses.clone();
            round.shuffle(&mut rng);
            rounds_started += 1;
        }
        let nemesis = round.pop().expect("a round is never empty");
        let (fault, detail, impaired) = match cluster.start_fault(nemesis, &mut rng).await {
            Ok(started) => started,
            Err(error) => {
                recorder.nemesis(nemesis.name(), "start", "could not start".into(), Vec::new(), format!("{error:#}"));
                if rounds_started == 1 && retried.insert(nemesis) {
                    round.insert(0, nemesis);
                }
                continue;
            }
        };
        recorder.nemesis(nemesis.name(), "start", detail, impaired, "ok".into());
        let hold = Duration::from_millis(rng.gen_range(2_000..6_000));
        let until = if rounds_started > 1 { (Instant::now() + hold).min(deadline) } else { Instant::now() + hold };
        tokio::time::sleep_until(until.into()).await;
        cluster.note_crashes();
        let outcome = cluster.heal(fault).await;
        let (detail, outcome) = match outcome {
            Ok(detail) => (detail, "ok".to_owned()),
            Err(error) => ("heal failed".to_owned(), format!("{error:#}")),
        };
        recorder.nemesis(nemesis.name(), "stop", detail, Vec::new(), outcome);
    }
}
