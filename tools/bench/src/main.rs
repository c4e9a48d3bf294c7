//! wmail-bench: measures durable deliveries per second and their latency through a running
//! node, like a client would (over the network, never through server internals).
//!
//! `wmail-bench deliver` creates a domain and accounts, then for each concurrency level
//! keeps that many deliveries of a fixed-size message in flight for a fixed time (or
//! count) and reports accepts/s and p50/p99/max latency. Each delivery is acknowledged
//! only after its body is durable and its Raft command committed and applied.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "wmail-bench", about = "Load generator for wmail")]
struct Cli {
    /// Admin API of the node under test.
    #[arg(long, env = "WMAIL_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Admin token.
    #[arg(long, env = "WMAIL_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Durable message deliveries through the admin API's import endpoint.
    #[command(
        after_help = "Example: wmail-bench --token $(cat wmail-data/admin-token) deliver --concurrency 1,16,64 --seconds 10"
    )]
    Deliver {
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
    },
}

/// One level's results.
struct LevelReport {
    concurrency: usize,
    delivered: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl LevelReport {
    fn percentile(&self, fraction: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[index]
    }

    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

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
}

fn message(size: usize, n: usize) -> Vec<u8> {
    let header = format!("From: bench@bench.test\r\nTo: user@bench.test\r\nSubject: bench {n}\r\n\r\n");
    let mut body = header.into_bytes();
    // Distinct bodies, so every delivery stores a new blob.
    let filler = format!("{n:020} the quick brown fox jumps over the lazy dog\r\n");
    while body.len() < size {
        body.extend_from_slice(filler.as_bytes());
    }
    body.truncate(size.max(1));
    body
}

async fn setup(api: &Api, accounts: usize) -> anyhow::Result<Vec<String>> {
    let status = api.post("/domains", json!({ "name": "bench.test" })).await?;
    if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
        bail!("creating domain bench.test failed with {status} (check --token)");
    }
    let mut addresses = Vec::new();
    for index in 0..accounts {
        let address = format!("user{index}@bench.test");
        let status = api.post("/accounts", json!({ "address": address, "password": "bench password" })).await?;
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            bail!("creating {address} failed with {status}");
        }
        addresses.push(address);
    }
    Ok(addresses)
}

async fn run_level(
    api: &Api,
    addresses: &[String],
    concurrency: usize,
    duration: Duration,
    max_requests: Option<usize>,
    size: usize,
) -> LevelReport {
    let started = Instant::now();
    let issued = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..concurrency).map(|_| async {
        let mut latencies = Vec::new();
        let mut failed = 0;
        loop {
            let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if started.elapsed() >= duration || max_requests.is_some_and(|max| n >= max) {
                break;
            }
            let address = &addresses[n % addresses.len()];
            let sent = Instant::now();
            let result = api
                .http
                .post(format!("{}/api/v1/accounts/{address}/messages", api.server))
                .bearer_auth(&api.token)
                .body(message(size, n))
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => latencies.push(sent.elapsed()),
                _ => failed += 1,
            }
        }
        (latencies, failed)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let api =
        Api { http: reqwest::Client::new(), server: cli.server.trim_end_matches('/').to_owned(), token: cli.token };
    match cli.command {
        BenchCommand::Deliver { concurrency, seconds, requests, size, accounts, json } => {
            let addresses = setup(&api, accounts.max(1)).await?;
            if !json {
                println!(
                    "durable deliveries of {size}-byte messages to {} accounts via {}",
                    addresses.len(),
                    api.server
                );
                println!(
                    "{:>11} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9}",
                    "concurrency", "delivered", "failed", "accepts/s", "p50 ms", "p99 ms", "max ms"
                );
            }
            for level in concurrency {
                let report =
                    run_level(&api, &addresses, level.max(1), Duration::from_secs_f64(seconds), requests, size).await;
                if json {
                    println!(
                        "{}",
                        json!({
                            "concurrency": report.concurrency,
                            "delivered": report.delivered,
                            "failed": report.failed,
                            "accepts_per_second": report.rate(),
                            "p50_ms": millis(report.percentile(0.50)),
                            "p99_ms": millis(report.percentile(0.99)),
                            "max_ms": millis(report.percentile(1.0)),
                        })
                    );
                } else {
                    println!(
                        "{:>11} {:>10} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
                        report.concurrency,
                        report.delivered,
                        report.failed,
                        report.rate(),
                        millis(report.percentile(0.50)),
                        millis(report.percentile(0.99)),
                        millis(report.percentile(1.0)),
                    );
                }
                if report.failed > 0 && report.delivered == 0 {
                    bail!("every delivery failed at concurrency {level}; see the node's log");
                }
            }
            Ok(())
        }
    }
}
