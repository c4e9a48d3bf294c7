//! wmail-jepsen: runs a real wmail cluster in network namespaces, injects faults while
//! clients write and read, and checks the recorded history for lost, duplicated, stale or
//! diverging state. See README.md.

mod checker;
mod cluster;
mod history;
mod nemesis;
mod net;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;

use crate::cluster::{FAKETIME_LIBRARY, Node, SeaweedFs, api, join_token};
use crate::history::{FinalState, History, Recorder};
use crate::nemesis::{Cluster, Nemesis};
use crate::net::Network;
use crate::workload::{DOMAIN, PASSWORD, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "wmail-jepsen",
    about = "Fault injection and history checking for a wmail cluster",
    after_help = "Example (as root):\n  wmail-jepsen --nodes 3 --time 120 --nemesis partition,kill,pause,skew --seed 7\n  wmail-jepsen --check jepsen-reports/seed-7-1795000000"
)]
struct Cli {
    /// Number of nodes (3 or 5 voters).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload under faults (then everything heals and the checker runs).
    #[arg(long, default_value_t = 30)]
    time: u64,
    /// Comma-separated nemeses: partition, kill, pause, skew, disk, membership; `all`; `none`.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Seed of every random choice (nemesis targets and timing, client operations).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    concurrency: usize,
    /// Accounts the clients write to.
    #[arg(long, default_value_t = 3)]
    accounts: usize,
    /// Seconds before an operation counts as indeterminate.
    #[arg(long, default_value_t = 5)]
    op_timeout: u64,
    /// Where the report goes (default: jepsen-reports/seed-SEED-UNIXTIME).
    #[arg(long)]
    report: Option<PathBuf>,
    /// The wmail binary (default: `wmail` next to this program).
    #[arg(long, env = "WMAIL_BIN")]
    wmail: Option<PathBuf>,
    /// SeaweedFS's `weed` binary (installed by `bash tools/dev/deps.sh test`).
    #[arg(long, env = "WMAIL_WEED")]
    weed: Option<PathBuf>,
    /// Run the nodes with a deliberate bug the checker must catch (debug builds of wmail
    /// only): `ack-before-commit` answers SMTP DATA with 250 before the delivery commits.
    #[arg(long, value_name = "BUG")]
    bug: Option<String>,
    /// Check the history recorded in this report directory again instead of running.
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.check {
        Some(dir) => recheck(dir),
        // On SIGINT or SIGTERM the run is dropped: nodes are killed, disks unmounted and
        // namespaces deleted on the way out.
        None => tokio::select! {
            result = run(cli) => result,
            signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}; cleaned up")),
        },
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("wmail-jepsen: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Waits for SIGINT or SIGTERM; returns its name.
async fn interrupted() -> &'static str {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// Checks a recorded history again; true when valid.
fn recheck(dir: &Path) -> anyhow::Result<bool> {
    let path = dir.join("history.json");
    let history: History =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?;
    let verdict = checker::check(&history);
    print!("{}", checker::summary(&history, &verdict));
    Ok(verdict.valid)
}

/// One run: set up, run the workload under faults, heal, read the final state, check.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    // More nodes would join as learners, whose reads are allowed to be stale.
    if !(1..=5).contains(&cli.nodes) {
        bail!("--nodes must be between 1 and 5 (the cluster has at most 5 voters)");
    }
    let nemeses = Nemesis::parse_list(&cli.nemesis)?;
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
    });
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let report = cli.report.clone().unwrap_or_else(|| PathBuf::from(format!("jepsen-reports/seed-{seed}-{started}")));
    let wmail = match &cli.wmail {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.parent().context("program directory")?.join("wmail"),
    };
    if !wmail.exists() {
        bail!("{} is missing: build it with `cargo build -p wmail` or pass --wmail", wmail.display());
    }
    let weed = cli
        .weed
        .clone()
        .context("no SeaweedFS: pass --weed or set WMAIL_WEED (`bash tools/dev/deps.sh test` installs it)")?;
    let skew = nemeses.contains(&Nemesis::Skew);
    if skew && !Path::new(FAKETIME_LIBRARY).exists() {
        bail!("the skew nemesis needs libfaketime ({FAKETIME_LIBRARY}): apt-get install faketime");
    }
    let env = match cli.bug.as_deref() {
        None => Vec::new(),
        Some("ack-before-commit") => vec![("WMAIL_TEST_ACK_BEFORE_COMMIT".to_owned(), "1".to_owned())],
        Some(other) => bail!("unknown --bug {other:?}; the one there is: ack-before-commit"),
    };
    std::fs::create_dir_all(&report)?;
    let report = report.canonicalize()?;
    eprintln!(
        "wmail-jepsen: seed {seed}, {} nodes, {} s, nemeses {:?}, report in {}",
        cli.nodes,
        cli.time,
        nemeses,
        report.display()
    );

    let network = Network::create(cli.nodes)?;
    let seaweed = SeaweedFs::start(&weed, &report.join("s3"), &network).await?;
    let mut nodes = Vec::new();
    for index in 1..=cli.nodes {
        let node =
            Node::new(index, &network, report.join(format!("n{index}")), wmail.clone(), &seaweed, skew, env.clone())?;
        if nemeses.contains(&Nemesis::Disk) {
            node.mount_disk(512)?;
        }
        nodes.push(node);
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let recorder = Arc::new(Recorder::new());
    let mut cluster =
        Cluster { nodes, network, _seaweed: seaweed, token: Default::default(), http, recorder: recorder.clone() };
    form_cluster(&mut cluster).await?;
    let accounts: Vec<String> = (1..=cli.accounts).map(|i| format!("a{i}@{DOMAIN}")).collect();
    setup_accounts(&cluster, &accounts).await?;
    let workload = Arc::new(Workload::new(
        cluster.nodes.iter().map(|node| node.ip).collect(),
        accounts.clone(),
        cluster.token.clone(),
        recorder.clone(),
        Duration::from_secs(cli.op_timeout),
        seed,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> =
        (0..cli.concurrency).map(|process| tokio::spawn(workload.clone().client(process, stop.clone()))).collect();
    let deadline = Instant::now() + Duration::from_secs(cli.time);
    let mut cluster = nemesis::run(cluster, nemeses, seed, deadline).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    eprintln!("wmail-jepsen: workload done ({} operations); healing", recorder.ops().len());
    let heal = cluster.heal_all().await;
    let healed_ms = recorder.now_ms();
    recorder.nemesis(
        "all",
        "stop",
        "final heal".into(),
        Vec::new(),
        heal.as_ref().map_or_else(|e| format!("{e:#}"), |_| "ok".into()),
    );
    let final_state = match heal {
        Ok(()) => final_state(&cluster, &accounts).await,
        Err(_) => FinalState::default(),
    };

    let history = History {
        seed,
        nodes: cli.nodes,
        accounts,
        ops: recorder.ops(),
        nemesis: recorder.events(),
        final_state,
        healed_ms,
    };
    let verdict = checker::check(&history);
    report::write(&report, &history, &verdict)?;
    if let Err(error) = heal {
        bail!(
            "the final heal failed, so the final state could not be read ({error:#}); report in {}",
            report.display()
        );
    }
    drop(cluster);
    // Keep the logs and the history; the data directories and the S3 volumes are large.
    for index in 1..=cli.nodes {
        let _ = std::fs::remove_dir_all(report.join(format!("n{index}/disk")));
    }
    let _ = std::fs::remove_dir_all(report.join("s3/data"));
    print!("{}", checker::summary(&history, &verdict));
    println!("report: {}", report.display());
    Ok(verdict.valid)
}

/// Starts node 1, then every other node joining it with a fresh token.
async fn form_cluster(cluster: &mut Cluster) -> anyhow::Result<()> {
    let ready = Duration::from_secs(60);
    cluster.nodes[0].start(ready).await?;
    cluster.set_token(cluster.nodes[0].admin_token()?);
    for index in 1..cluster.nodes.len() {
        let token = join_token(&cluster.http, &cluster.nodes[0], &cluster.token(), false).await?;
        let first_ip = cluster.nodes[0].ip;
        cluster.nodes[index].set_join(first_ip, token);
        cluster.nodes[index].start(ready).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.status().await.unwrap_or_default();
        let members = status["members"].as_array().map_or(0, |members| members.len());
        if members == cluster.nodes.len() && !status["leader"].is_null() {
            eprintln!("wmail-jepsen: cluster of {members} formed");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cluster did not form in 60 s: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the domain and the workload's accounts.
async fn setup_accounts(cluster: &Cluster, accounts: &[String]) -> anyhow::Result<()> {
    let node = &cluster.nodes[0];
    let (status, body) =
        api(&cluster.http, node, &cluster.token(), reqwest::Method::POST, "/domains", Some(json!({ "name": DOMAIN })))
            .await?;
    if status != 201 {
        bail!("creating {DOMAIN}: {status} {body}");
    }
    for account in accounts {
        let body = json!({ "address": account, "password": PASSWORD });
        let (status, body) =
            api(&cluster.http, node, &cluster.token(), reqwest::Method::POST, "/accounts", Some(body)).await?;
        if status != 201 {
            bail!("creating {account}: {status} {body}");
        }
    }
    Ok(())
}

/// Waits until every node applied the same, stable commit index, then reads every
/// account's INBOX and the account list on every node.
async fn final_state(cluster: &Cluster, accounts: &[String]) -> FinalState {
    // A server-side task that outlived its client (a delivery still storing its body) can
    // commit while the nodes are read one after another: read again if anything was
    // applied meanwhile (three times at most).
    let mut state = FinalState::default();
    for _ in 0..3 {
        let quiesced = quiesce(cluster).await;
        let before = applied_indexes(cluster).await;
        state = read_everything(cluster, accounts).await;
        state.quiesced = quiesced;
        if applied_indexes(cluster).await == before {
            return state;
        }
        eprintln!("wmail-jepsen: the nodes applied more while they were read; reading again");
    }
    // Still moving after three reads: the nodes did not settle.
    state.quiesced = false;
    state
}

/// Every node's (applied, committed) index; `None` for a node that did not answer.
async fn applied_indexes(cluster: &Cluster) -> Vec<Option<(Option<u64>, Option<u64>)>> {
    let mut indexes = Vec::new();
    for node in &cluster.nodes {
        let status = api(&cluster.http, node, &cluster.token(), reqwest::Method::GET, "/cluster/status", None).await;
        indexes.push(match status {
            Ok((200, status)) => Some((status["applied_index"].as_u64(), status["committed_index"].as_u64())),
            _ => None,
        });
    }
    indexes
}

/// Reads every account's INBOX and the account list on every node.
async fn read_everything(cluster: &Cluster, accounts: &[String]) -> FinalState {
    let mut state = FinalState::default();
    for node in &cluster.nodes {
        let mut mailboxes = std::collections::BTreeMap::new();
        for account in accounts {
            for attempt in 0..20 {
                let address = std::net::SocketAddr::from((node.ip, cluster::IMAP_PORT));
                let read = tokio::time::timeout(Duration::from_secs(10), workload::read(address, account)).await;
                match read.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 10 s"))) {
                    Ok(read) => {
                        mailboxes.insert(account.clone(), read);
                        break;
                    }
                    Err(error) if attempt == 19 => eprintln!("final read of {account} on n{}: {error:#}", node.index),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        state.mailboxes.insert(node.index, mailboxes);
        for attempt in 0..20 {
            match api(&cluster.http, node, &cluster.token(), reqwest::Method::GET, "/accounts", None).await {
                Ok((200, list)) => {
                    let listed = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|account| account["address"].as_str().map(str::to_owned))
                        .collect();
                    state.accounts.insert(node.index, listed);
                    break;
                }
                other if attempt == 19 => eprintln!("final account list on n{}: {other:?}", node.index),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    state
}

/// Waits (up to 120 s) until every node reports the same applied index, equal to the
/// commit index, twice in a row 1 s apart; false if that never happened.
async fn quiesce(cluster: &Cluster) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut previous = None;
    while Instant::now() < deadline {
        let applied = applied_indexes(cluster).await;
        let first = applied.first().copied().flatten().and_then(|(a, _)| a);
        let settled =
            applied.iter().all(|answer| matches!(answer, Some((a, c)) if a.is_some() && a == c && *a == first));
        if settled && previous == Some(applied.clone()) {
            return true;
        }
        previous = settled.then_some(applied);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("wmail-jepsen: the cluster did not quiesce in 120 s; reading the final state anyway");
    false
}
