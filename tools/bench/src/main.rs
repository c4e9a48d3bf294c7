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

mod imap_load;
mod messages;
mod pop3_load;
mod search_load;

use wmail_bench::{imap, smtp};

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
        /// Say STARTTLS before sending (for submission ports; any certificate is accepted).
        #[arg(long)]
        starttls: bool,
        /// Authenticate (AUTH PLAIN) as user0@bench.test and send from it (submission).
        #[arg(long)]
        auth: bool,
        #[command(flatten)]
        shape: LoadShape,
    },
    /// Outbound delivery: submits messages for other domains (STARTTLS + AUTH as
    /// user0@bench.test) and measures until the node's queue is empty again. Point the
    /// node at a sink first, e.g. Postfix's `smtp-sink -u nobody 127.0.0.1:2525 1000` and
    /// `[delivery] smarthost = "127.0.0.1:2525"`.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) outbound \
                              --submission 127.0.0.1:587 --destinations 10 --count 5000")]
    Outbound(OutboundArgs),
    /// POP3 download-and-delete cycles over implicit TLS: fills each mailbox through the
    /// admin API, then logs in, RETRs and DELEs everything, QUITs; messages/s and session
    /// latency, and a check that every mailbox is empty afterwards.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) pop3 --pop3s 127.0.0.1:995 \
                              --users 64 --messages 50 --concurrency 16")]
    Pop3(pop3_load::Pop3Args),
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
    /// Full-text search: waits for the node's index to hold the mailbox (indexing rate),
    /// then times IMAP SEARCH text keys and the ranked search API, and reports the index
    /// size next to the raw mail.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) fill --count 100000, then\n  \
                              wmail-bench --token $(cat wmail-data/admin-token) search --imap 127.0.0.1:143")]
    Search(search_load::SearchArgs),
}

/// Options of `wmail-bench outbound`.
#[derive(clap::Args, Clone)]
struct OutboundArgs {
    /// The node's submission address (STARTTLS + AUTH).
    #[arg(long, default_value = "127.0.0.1:587")]
    submission: String,
    /// How many destination domains the recipients spread over (dest0.bench-out.test ...).
    #[arg(long, default_value_t = 1)]
    destinations: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 2_000)]
    count: usize,
    /// Submission sessions at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 10_240)]
    size: usize,
    /// Give up waiting for the queue to drain after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
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

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .get(format!("{}/api/v1{path}", self.server))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}; is `wmail serve` running?", self.server))?;
        if !response.status().is_success() {
            bail!("GET {path} failed with {} (check --token)", response.status());
        }
        Ok(response.json().await?)
    }

    async fn deliver(&self, address: &str, message: Vec<u8>) -> bool {
        let url = format!("{}/api/v1/accounts/{address}/messages", self.server);
        let result = self.http.post(url).bearer_auth(&self.token).body(message).send().await;
        result.is_ok_and(|response| response.status().is_success())
    }
}

/// A distinct message of about `size` bytes (distinct bodies: every delivery stores a blob).
fn message(size: usize, n: usize) -> Vec<u8> {
    message_from("bench@bench.test", size, n)
}

/// [`message`] with `from` in its From: header (submission only accepts the sender's own).
fn message_from(from: &str, size: usize, n: usize) -> Vec<u8> {
    let header = format!("From: {from}\r\nTo: user@bench.test\r\nSubject: bench {n}\r\n\r\n");
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

/// Submits `count` messages for remote domains, then waits for the queue to drain.
async fn outbound(api: &Api, args: &OutboundArgs) -> anyhow::Result<()> {
    let sender = accounts(api, 1, false).await?.remove(0);
    let options = smtp::SessionOptions { starttls: true, auth: Some((sender.clone(), PASSWORD.to_owned())) };
    let destinations = args.destinations.max(1);
    // Sessions log in one after another: the server holds back many parallel logins of
    // one account (a guessing defence), which would fail the run.
    let mut sessions = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        sessions.push(smtp::Sender::connect_with(&args.submission, &options).await?);
    }
    let started = Instant::now();
    let issued = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let workers = sessions.into_iter().map(|mut session| {
        let (issued, failed, options, sender) = (&issued, &failed, &options, &sender);
        async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= args.count {
                    break;
                }
                let recipient = format!("rcpt{n}@dest{}.bench-out.test", n % destinations);
                if session.send(&recipient, &message_from(sender, args.size, n)).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    session = smtp::Sender::connect_with(&args.submission, options).await?;
                }
            }
            session.quit().await;
            anyhow::Ok(())
        }
    });
    for result in futures::future::join_all(workers).await {
        result?;
    }
    let submitted_in = started.elapsed();
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let total = api.get("/queue?limit=1").await?["total"].as_u64().unwrap_or(u64::MAX);
        if total == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{total} messages still queued after {} s; see `wmail queue list`", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_in = started.elapsed();
    let accepted = args.count - failed.load(Ordering::Relaxed);
    let report = json!({
        "workload": "outbound",
        "destinations": destinations,
        "messages": accepted,
        "failed_submissions": failed.load(Ordering::Relaxed),
        "size": args.size,
        "concurrency": args.concurrency,
        "submitted_per_second": accepted as f64 / submitted_in.as_secs_f64(),
        "delivered_per_second": accepted as f64 / drained_in.as_secs_f64(),
        "seconds": drained_in.as_secs_f64(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "outbound: {accepted} messages of {} B to {destinations} destination(s), {} sessions: submitted {:.0}/s, \
             delivered {:.0}/s end to end ({:.1} s until the queue was empty)",
            args.size,
            args.concurrency,
            report["submitted_per_second"].as_f64().unwrap_or(0.0),
            report["delivered_per_second"].as_f64().unwrap_or(0.0),
            drained_in.as_secs_f64()
        );
    }
    if failed.load(Ordering::Relaxed) > 0 {
        bail!("{} submissions failed", failed.load(Ordering::Relaxed));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wmail_net::install_crypto_provider();
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
        BenchCommand::Smtp { smtp: address, no_setup, starttls, auth, shape } => {
            let addresses = accounts(&api, shape.accounts.max(1), no_setup).await?;
            header(&shape, addresses.len(), &format!("smtp://{address}"));
            let options =
                smtp::SessionOptions { starttls, auth: auth.then(|| (addresses[0].clone(), PASSWORD.to_owned())) };
            let sender = if auth { addresses[0].clone() } else { "bench@bench.test".to_owned() };
            for &level in &shape.concurrency {
                let level = level.max(1);
                let mut sessions = Vec::new();
                for _ in 0..level {
                    sessions.push(tokio::sync::Mutex::new(smtp::Sender::connect_with(&address, &options).await?));
                }
                let report = run_level(level, &shape, |worker, n| {
                    let (sessions, addresses, sender) = (&sessions, &addresses, &sender);
                    async move {
                        let mut session = sessions[worker].lock().await;
                        let recipient = &addresses[n % addresses.len()];
                        session.send(recipient, &message_from(sender, shape.size, n)).await.is_ok()
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
        BenchCommand::Outbound(args) => outbound(&api, &args).await?,
        BenchCommand::Pop3(args) => pop3_load::pop3(&api, &args).await?,
        BenchCommand::Fill(args) => imap_load::fill(&api, &args).await?,
        BenchCommand::Imap(args) => imap_load::mixed(&api, &args).await?,
        BenchCommand::Idle(args) => imap_load::idle(&api, &args).await?,
        BenchCommand::Search(args) => search_load::search(&api, &args).await?,
    }
    Ok(())
}
