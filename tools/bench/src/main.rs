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
mod report;
mod search_load;

use wmail_bench::{imap, smtp};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
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
    /// Also write every result to PREFIX.json and a Markdown summary to PREFIX.md.
    #[arg(long, value_name = "PREFIX")]
    out: Option<std::path::PathBuf>,
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
    /// A realistic mix of sizes instead of --size: 80 % 4-20 KB, 15 % 100 KB-1 MB,
    /// 5 % 5-10 MB (the same sizes in the same order on every run).
    #[arg(long)]
    mix: bool,
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
    /// accepts user0..userN@bench.test. Given several addresses (the nodes of a cluster),
    /// sessions spread over them, and a session whose node dies reconnects to the next:
    /// kill the leader during a run and the report shows the errors clients saw and the
    /// longest time without an accepted message.
    #[command(
        after_help = "Examples:\n  wmail-bench --token $(cat wmail-data/admin-token) smtp --smtp 127.0.0.1:25 --mix\n  \
                              wmail-bench --token T smtp --smtp 127.0.0.1:18125,127.0.0.1:18225,127.0.0.1:18325 \
                              --concurrency 16 --seconds 60"
    )]
    Smtp {
        /// The SMTP (MX) address of the server, or a comma-separated list of nodes.
        #[arg(long, default_value = "127.0.0.1:25", value_delimiter = ',')]
        smtp: Vec<String>,
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
    /// APPEND latency as one mailbox grows: fills it with short messages to each checkpoint
    /// (1,000, 100,000 and 1,000,000 by default), then times APPENDs one at a time, SELECT
    /// and `FETCH 1:* (FLAGS)` there.
    #[command(after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) scale --imap 127.0.0.1:143 \
                              --checkpoints 1000,100000,1000000")]
    Scale(imap_load::ScaleArgs),
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
    /// Bytes of the accepted messages.
    bytes: usize,
    /// Failed deliveries by class: the reply code, `connection`, `http 503`...
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The longest time without an accepted delivery (from the level's start to the first
    /// acceptance, between two, or from the last to the end) and when it ended.
    longest_gap: Duration,
    longest_gap_ended: SystemTime,
    /// When the level's clock started (after setup and connecting).
    started: SystemTime,
}

/// What one delivery attempt gives: the accepted message's size, or the error's class.
type Delivery = Result<usize, String>;

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

    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    /// Prints the level (as JSON or a table row) and keeps it for `--out` as `workload`.
    fn print(&self, workload: &str, json: bool) {
        let unix_millis = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let line = json!({
                "concurrency": self.concurrency,
                "delivered": self.delivered,
                "failed": self.failed,
                "errors": self.errors,
                "seconds": self.elapsed.as_secs_f64(),
                "accepts_per_second": self.rate(),
                "bytes": self.bytes,
                "mb_per_second": self.megabytes_per_second(),
                "p50_ms": millis(self.percentile(0.50)),
                "p90_ms": millis(self.percentile(0.90)),
                "p99_ms": millis(self.percentile(0.99)),
                "max_ms": millis(self.percentile(1.0)),
                "longest_gap_ms": millis(self.longest_gap),
                "longest_gap_ended_unix_ms": unix_millis(self.longest_gap_ended),
                "started_unix_ms": unix_millis(self.started),
        });
        report::record(workload, &line, json);
        if !json {
            println!(
                "{:>11} {:>10} {:>7} {:>10.0} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.0}",
                self.concurrency,
                self.delivered,
                self.failed,
                self.rate(),
                self.megabytes_per_second(),
                millis(self.percentile(0.50)),
                millis(self.percentile(0.90)),
                millis(self.percentile(0.99)),
                millis(self.percentile(1.0)),
                millis(self.longest_gap),
            );
            if !self.errors.is_empty() {
                let errors: Vec<String> =
                    self.errors.iter().map(|(class, count)| format!("{class}: {count}")).collect();
                println!("{:>11} errors by kind: {}", "", errors.join(", "));
            }
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
        self.import(address, message).await.is_ok()
    }

    /// Delivers `message` through the import endpoint: its size, or the error's class.
    async fn import(&self, address: &str, message: Vec<u8>) -> Delivery {
        let (url, size) = (format!("{}/api/v1/accounts/{address}/messages", self.server), message.len());
        match self.http.post(url).bearer_auth(&self.token).body(message).send().await {
            Ok(response) if response.status().is_success() => Ok(size),
            Ok(response) => Err(format!("http {}", response.status().as_u16())),
            Err(_) => Err("connection".to_owned()),
        }
    }
}

/// A distinct message of about `size` bytes (distinct bodies: every delivery stores a blob).
fn message(size: usize, n: usize) -> Vec<u8> {
    message_from("bench@bench.test", size, n)
}

/// The size of delivery `n`: `--size`, or with `--mix` one drawn from the realistic mix
/// (seeded by `n`, so every run and every server gets the same sizes).
fn message_size(shape: &LoadShape, n: usize) -> usize {
    if !shape.mix {
        return shape.size;
    }
    let mut rng = StdRng::seed_from_u64(n as u64);
    match rng.gen_range(0..100) {
        0..80 => rng.gen_range(4_096..=20_480),
        80..95 => rng.gen_range(102_400..=1_048_576),
        _ => rng.gen_range(5_242_880..=10_485_760),
    }
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

/// One worker's outcomes in a level.
#[derive(Default)]
struct WorkerOutcome {
    latencies: Vec<Duration>,
    /// When each accepted delivery completed, from the level's start.
    completions: Vec<Duration>,
    bytes: usize,
    errors: BTreeMap<String, usize>,
}

/// Runs `concurrency` workers; each calls `deliver(worker, n)` until time or count runs out.
async fn run_level<F, Fut>(concurrency: usize, shape: &LoadShape, deliver: F) -> LevelReport
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = Delivery>,
{
    let duration = Duration::from_secs_f64(shape.seconds);
    let (started, started_at) = (Instant::now(), SystemTime::now());
    let issued = AtomicUsize::new(0);
    let workers = (0..concurrency).map(|worker| {
        let (issued, deliver) = (&issued, &deliver);
        async move {
            let mut outcome = WorkerOutcome::default();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() >= duration || shape.requests.is_some_and(|max| n >= max) {
                    break;
                }
                let sent = Instant::now();
                match deliver(worker, n).await {
                    Ok(size) => {
                        outcome.latencies.push(sent.elapsed());
                        outcome.completions.push(started.elapsed());
                        outcome.bytes += size;
                    }
                    Err(class) => *outcome.errors.entry(class).or_default() += 1,
                }
            }
            outcome
        }
    });
    let outcomes = futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    let mut errors = BTreeMap::new();
    for (class, count) in outcomes.iter().flat_map(|outcome| &outcome.errors) {
        *errors.entry(class.clone()).or_default() += count;
    }
    let mut latencies: Vec<Duration> = outcomes.iter().flat_map(|outcome| outcome.latencies.iter().copied()).collect();
    latencies.sort();
    let mut moments: Vec<Duration> = outcomes.iter().flat_map(|outcome| outcome.completions.iter().copied()).collect();
    moments.extend([Duration::ZERO, elapsed]);
    moments.sort();
    let (longest_gap, gap_end) =
        moments.windows(2).map(|pair| (pair[1] - pair[0], pair[1])).max().unwrap_or((elapsed, elapsed));
    LevelReport {
        concurrency,
        delivered: latencies.len(),
        failed: errors.values().sum(),
        bytes: outcomes.iter().map(|outcome| outcome.bytes).sum(),
        errors,
        elapsed,
        latencies,
        longest_gap,
        longest_gap_ended: started_at + gap_end,
        started: started_at,
    }
}

fn header(shape: &LoadShape, accounts: usize, via: &str) {
    if !shape.json {
        let sizes = if shape.mix {
            "a realistic mix of sizes (80 % 4-20 KB, 15 % 100 KB-1 MB, 5 % 5-10 MB)".to_owned()
        } else {
            format!("{}-byte messages", shape.size)
        };
        println!("durable deliveries of {sizes} to {accounts} accounts via {via}");
        println!(
            "{:>11} {:>10} {:>7} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "concurrency", "delivered", "failed", "accepts/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "gap ms"
        );
    }
}

fn check(report: &LevelReport) -> anyhow::Result<()> {
    if report.failed > 0 && report.delivered == 0 {
        bail!("every delivery failed at concurrency {}; see the node's log", report.concurrency);
    }
    Ok(())
}

/// How long an SMTP load session may take to connect and be greeted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one message may take from MAIL to the final reply.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);

/// One SMTP load worker's session, on one of the servers.
struct SmtpSession {
    /// None after the connection broke.
    session: Option<smtp::Sender>,
    /// The index of the server it is (or will be) connected to.
    server: usize,
}

impl SmtpSession {
    /// Connects to its server; a server that is down (or does not greet in time) moves the
    /// session on to the next one (the way clients behind a load balancer land on a live
    /// node).
    async fn connect(&mut self, servers: &[String], options: &smtp::SessionOptions) -> anyhow::Result<()> {
        let connecting = smtp::Sender::connect_with(&servers[self.server], options);
        let connected = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(anyhow::anyhow!("no greeting within {CONNECT_TIMEOUT:?}")),
        };
        match connected {
            Ok(session) => {
                self.session = Some(session);
                Ok(())
            }
            Err(error) => {
                self.server = (self.server + 1) % servers.len();
                Err(error)
            }
        }
    }

    /// Sends one message, reconnecting first if the last connection broke; a broken
    /// connection moves the session on to the next server.
    async fn send(
        &mut self,
        servers: &[String],
        options: &smtp::SessionOptions,
        recipient: &str,
        message: &[u8],
    ) -> Delivery {
        if self.session.is_none() && self.connect(servers, options).await.is_err() {
            // Down or refusing: a client waits a moment before trying again.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Err("connect".to_owned());
        }
        let Some(session) = &mut self.session else { unreachable!("connected above") };
        // A node that hangs (stopped, cut off) must not stall the worker past the run.
        let sent = tokio::time::timeout(SEND_TIMEOUT, session.send(recipient, message)).await;
        match sent.unwrap_or_else(|_| Err(smtp::SendError::Broken(anyhow::anyhow!("no reply within {SEND_TIMEOUT:?}"))))
        {
            Ok(()) => Ok(message.len()),
            Err(error) => {
                if matches!(error, smtp::SendError::Broken(_)) {
                    self.session = None;
                    self.server = (self.server + 1) % servers.len();
                }
                Err(error.class())
            }
        }
    }
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
                match session.send(&recipient, &message_from(sender, args.size, n)).await {
                    Ok(()) => {}
                    Err(smtp::SendError::Refused(..)) => _ = failed.fetch_add(1, Ordering::Relaxed),
                    Err(smtp::SendError::Broken(_)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        session = smtp::Sender::connect_with(&args.submission, options).await?;
                    }
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
    report::record("outbound", &report, args.json);
    if !args.json {
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
    let out = cli.out.clone();
    let result = run(cli).await;
    // What was measured is written out even when a later step failed (whose error wins).
    if let Some(prefix) = out {
        let written = report::write_out(&prefix, &format!("wmail-bench {}", command_line()));
        result?;
        written?;
        return Ok(());
    }
    result
}

/// This run's arguments without the admin token, for the summary's title.
fn command_line() -> String {
    let mut arguments = std::env::args().skip(1);
    let mut shown = Vec::new();
    while let Some(argument) = arguments.next() {
        if argument == "--token" {
            arguments.next();
        } else if !argument.starts_with("--token=") {
            shown.push(argument);
        }
    }
    shown.join(" ")
}

/// Runs the subcommand.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let api =
        Api { http: reqwest::Client::new(), server: cli.server.trim_end_matches('/').to_owned(), token: cli.token };
    match cli.command {
        BenchCommand::Deliver { shape } => {
            let addresses = accounts(&api, shape.accounts.max(1), false).await?;
            header(&shape, addresses.len(), &api.server);
            for &level in &shape.concurrency {
                let report = run_level(level.max(1), &shape, |_, n| {
                    api.import(&addresses[n % addresses.len()], message(message_size(&shape, n), n))
                })
                .await;
                report.print("deliver", shape.json);
                check(&report)?;
            }
        }
        BenchCommand::Smtp { smtp: servers, no_setup, starttls, auth, shape } => {
            let addresses = accounts(&api, shape.accounts.max(1), no_setup).await?;
            header(&shape, addresses.len(), &format!("smtp://{}", servers.join(",")));
            let options =
                smtp::SessionOptions { starttls, auth: auth.then(|| (addresses[0].clone(), PASSWORD.to_owned())) };
            let sender = if auth { addresses[0].clone() } else { "bench@bench.test".to_owned() };
            for &level in &shape.concurrency {
                let level = level.max(1);
                // Sessions connect before the clock starts; one whose server is down
                // moves on to the next and connects when its turn comes.
                let (mut sessions, mut refused) = (Vec::new(), Vec::new());
                for worker in 0..level {
                    let mut session = SmtpSession { session: None, server: worker % servers.len() };
                    if let Err(error) = session.connect(&servers, &options).await {
                        refused.push(error);
                    }
                    sessions.push(tokio::sync::Mutex::new(session));
                }
                if refused.len() == level {
                    return Err(refused.remove(0).context("no SMTP session could start"));
                }
                if let Some(error) = refused.first() {
                    eprintln!("{} of {level} sessions could not connect; the first: {error:#}", refused.len());
                }
                let report = run_level(level, &shape, |worker, n| {
                    let (sessions, addresses, sender, servers, options, shape) =
                        (&sessions, &addresses, &sender, &servers, &options, &shape);
                    async move {
                        let mut session = sessions[worker].lock().await;
                        let message = message_from(sender, message_size(shape, n), n);
                        session.send(servers, options, &addresses[n % addresses.len()], &message).await
                    }
                })
                .await;
                for session in sessions {
                    if let Some(session) = session.into_inner().session {
                        session.quit().await;
                    }
                }
                report.print("smtp", shape.json);
                check(&report)?;
            }
        }
        BenchCommand::Outbound(args) => outbound(&api, &args).await?,
        BenchCommand::Pop3(args) => pop3_load::pop3(&api, &args).await?,
        BenchCommand::Fill(args) => imap_load::fill(&api, &args).await?,
        BenchCommand::Imap(args) => imap_load::mixed(&api, &args).await?,
        BenchCommand::Idle(args) => imap_load::idle(&api, &args).await?,
        BenchCommand::Scale(args) => imap_load::scale(&api, &args).await?,
        BenchCommand::Search(args) => search_load::search(&api, &args).await?,
    }
    Ok(())
}
