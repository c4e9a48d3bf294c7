//! wmail-bench: measures durable deliveries per second and their latency through a running
//! node, like a client would (over the network, never through server internals).
//!
//! `wmail-bench deliver` (through the admin API's import endpoint) and `wmail-bench smtp`
//! (real SMTP sessions, one per concurrent sender, with PIPELINING) create a domain and
//! accounts, then for each concurrency level keep that many deliveries of a fixed-size
//! message in flight for a fixed time (or count) and report accepts/s and p50/p99/max
//! latency. Each delivery is acknowledged only after its body is durable and its Raft
//! command committed and applied.
//!
//! `fill`, `imap` and `idle` drive the IMAP server like mail clients do (see [`imap_load`]):
//! APPEND throughput, a mixed user workload with per-command latencies, and the memory and
//! wake-up latency of many IDLE connections.

mod imap;
mod imap_load;
mod messages;
mod smtp;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "wmail-bench", about = "Load generator for wmail")]
struct Cli {
    /// Admin API of the node under test (used to create the test domain and accounts).
    #[arg(long, env = "WMAIL_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Admin token (not needed with --no-setup, except by `idle`, which delivers a message).
    #[arg(long, env = "WMAIL_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    #[command(subcommand)]
    command: BenchCommand,
}

/// What every load shape shares.
#[derive(clap::Args, Clone)]
struct LoadShape {
    /// Comma-separated concurrency levels.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Seconds per level.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop each level after this many deliveries (whichever comes first).
    #[arg(long)]
    requests: Option<usize>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 10_240)]
    size: usize,
    /// Number of receiving accounts (deliveries rotate over them).
    #[arg(long, default_value_t = 16)]
    accounts: usize,
    /// Print one JSON object per level instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable deliveries through the admin API's import endpoint.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) deliver --concurrency 1,16,64")]
    Deliver {
        #[command(flatten)]
        shape: LoadShape,
    },
    /// Durable deliveries over SMTP (the node's `[listen] smtp`), one session per sender.
    /// With --no-setup it drives any SMTP server (Postfix, for a side-by-side run) that
    /// accepts user0..userN@bench.test.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) smtp --smtp 127.0.0.1:25")]
    Smtp {
        /// The SMTP (MX) address of the server.
        #[arg(long, default_value = "127.0.0.1:25")]
        smtp: String,
        /// Do not create the domain and accounts through wmail's admin API.
        #[arg(long)]
        no_setup: bool,
        #[command(flatten)]
        shape: LoadShape,
    },
    /// APPENDs generated, realistic messages to one mailbox over IMAP (LITERAL+: one round
    /// trip each), reporting messages/s and MB/s.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) fill --imap 127.0.0.1:143 \
                              --count 100000 --fetch-all")]
    Fill(imap_load::FillArgs),
    /// A mixed IMAP user workload (like imaptest's default profile): ops/s and latency
    /// percentiles per command, errors by kind.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) imap --imap 127.0.0.1:143 \
                              --users 50 --clients 50 --seconds 20 --check")]
    Imap(imap_load::MixedArgs),
    /// Many IMAP IDLE connections: the server's memory per connection and how fast a
    /// delivery wakes them.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) idle --imap 127.0.0.1:143 \
                              --connections 2000 --pid $(pidof wmail)")]
    Idle(imap_load::IdleArgs),
}

/// The password of every account the benchmark creates.
const PASSWORD: &str = "bench password";

/// One level's results.
struct LevelReport {
    concurrency: usize,
    delivered: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// The latency at `fraction` (0.5 for the median) of sorted latencies; zero when empty.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

/// A duration in milliseconds.
fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl LevelReport {
    fn percentile(&self, fraction: f64) -> Duration {
        percentile(&self.latencies, fraction)
    }

    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, json: bool) {
        if json {
            let line = json!({
                "concurrency": self.concurrency,
                "delivered": self.delivered,
                "failed": self.failed,
                "accepts_per_second": self.rate(),
                "p50_ms": millis(self.percentile(0.50)),
                "p99_ms": millis(self.percentile(0.99)),
                "max_ms": millis(self.percentile(1.0)),
            });
            println!("{line}");
        } else {
            println!(
                "{:>11} {:>10} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
                self.concurrency,
                self.delivered,
                self.failed,
                self.rate(),
                millis(self.percentile(0.50)),
                millis(self.percentile(0.99)),
                millis(self.percentile(1.0)),
            );
        }
    }
}

/// The admin API, for setup and the import endpoint.
struct Api {
    http: reqwest::Client,
    server: String,
    token: String,
}

impl Api {
    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<reqwest::StatusCode> {
        let response = self
            .http
            .post(format!("{}/api/v1{path}", self.server))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach {}; is `wmail serve` running?", self.server))?;
        Ok(response.status())
    }

    async fn deliver(&self, address: &str, message: Vec<u8>) -> bool {
        let url = format!("{}/api/v1/accounts/{address}/messages", self.server);
        let result = self.http.post(url).bearer_auth(&self.token).body(message).send().await;
        result.is_ok_and(|response| response.status().is_success())
    }
}

/// A distinct message of about `size` bytes (distinct bodies: every delivery stores a blob).
fn message(size: usize, n: usize) -> Vec<u8> {
    let header = format!("From: bench@bench.test\r\nTo: user@bench.test\r\nSubject: bench {n}\r\n\r\n");
    let mut body = header.into_bytes();
    let filler = format!("{n:020} the quick brown fox jumps over the lazy dog\r\n");
    while body.len() < size {
        body.extend_from_slice(filler.as_bytes());
    }
    body.truncate(size.max(1));
    body
}

/// Creates `address`'s domain and the account (either may exist already).
async fn ensure_account(api: &Api, address: &str, password: &str) -> anyhow::Result<()> {
    let domain = address.rsplit_once('@').map_or(address, |(_, domain)| domain);
    let status = api.post("/domains", json!({ "name": domain })).await?;
    if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
        bail!("creating domain {domain} failed with {status} (check --token)");
    }
    let status = api.post("/accounts", json!({ "address": address, "password": password })).await?;
    if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
        bail!("creating {address} failed with {status}");
    }
    Ok(())
}

/// The addresses user0..user{count-1}@bench.test, created with [`PASSWORD`] unless `no_setup`.
async fn accounts(api: &Api, count: usize, no_setup: bool) -> anyhow::Result<Vec<String>> {
    let addresses: Vec<String> = (0..count).map(|index| format!("user{index}@bench.test")).collect();
    if !no_setup {
        for address in &addresses {
            ensure_account(api, address, PASSWORD).await?;
        }
    }
    Ok(addresses)
}

/// Runs `concurrency` workers; each calls `deliver(n)` until time or count runs out.
async fn run_level<F, Fut>(concurrency: usize, shape: &LoadShape, deliver: F) -> LevelReport
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let duration = Duration::from_secs_f64(shape.seconds);
    let started = Instant::now();
    let issued = AtomicUsize::new(0);
    let workers = (0..concurrency).map(|worker| {
        let (issued, deliver) = (&issued, &deliver);
        async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() >= duration || shape.requests.is_some_and(|max| n >= max) {
                    break;
                }
                let sent = Instant::now();
                if deliver(worker, n).await {
                    latencies.push(sent.elapsed());
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        }
    });
    let results = futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = results.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    latencies.sort();
    LevelReport {
        concurrency,
        delivered: latencies.len(),
        failed: results.iter().map(|(_, f)| f).sum(),
        elapsed,
        latencies,
    }
}

fn header(shape: &LoadShape, accounts: usize, via: &str) {
    if !shape.json {
        println!("durable deliveries of {}-byte messages to {accounts} accounts via {via}", shape.size);
        println!(
            "{:>11} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9}",
            "concurrency", "delivered", "failed", "accepts/s", "p50 ms", "p99 ms", "max ms"
        );
    }
}

fn check(report: &LevelReport) -> anyhow::Result<()> {
    if report.failed > 0 && report.delivered == 0 {
        bail!("every delivery failed at concurrency {}; see the node's log", report.concurrency);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let api =
        Api { http: reqwest::Client::new(), server: cli.server.trim_end_matches('/').to_owned(), token: cli.token };
    match cli.command {
        BenchCommand::Deliver { shape } => {
            let addresses = accounts(&api, shape.accounts.max(1), false).await?;
            header(&shape, addresses.len(), &api.server);
            for &level in &shape.concurrency {
                let report = run_level(level.max(1), &shape, |_, n| {
                    api.deliver(&addresses[n % addresses.len()], message(shape.size, n))
                })
                .await;
                report.print(shape.json);
                check(&report)?;
            }
        }
        BenchCommand::Smtp { smtp: address, no_setup, shape } => {
            let addresses = accounts(&api, shape.accounts.max(1), no_setup).await?;
            header(&shape, addresses.len(), &format!("smtp://{address}"));
            for &level in &shape.concurrency {
                let level = level.max(1);
                let mut sessions = Vec::new();
                for _ in 0..level {
                    sessions.push(tokio::sync::Mutex::new(smtp::Sender::connect(&address).await?));
                }
                let report = run_level(level, &shape, |worker, n| {
                    let (sessions, addresses) = (&sessions, &addresses);
                    async move {
                        let mut session = sessions[worker].lock().await;
                        let recipient = &addresses[n % addresses.len()];
                        session.send(recipient, &message(shape.size, n)).await.is_ok()
                    }
                })
                .await;
                for session in sessions {
                    session.into_inner().quit().await;
                }
                report.print(shape.json);
                check(&report)?;
            }
        }
        BenchCommand::Fill(args) => imap_load::fill(&api, &args).await?,
        BenchCommand::Imap(args) => imap_load::mixed(&api, &args).await?,
        BenchCommand::Idle(args) => imap_load::idle(&api, &args).await?,
    }
    Ok(())
}
