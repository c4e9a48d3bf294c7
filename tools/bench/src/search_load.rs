//! `search`: full-text search latency and indexing speed. Waits until the node's index holds
//! the mailbox (reporting how fast it indexed), then times IMAP SEARCH text keys (which the
//! index narrows and the server then checks) and the ranked search API, and reports the
//! index size next to the raw mail.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::imap::{Client, quoted};
use crate::{Api, PASSWORD, millis, percentile};

/// Options of `wmail-bench search`.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// The server's IMAP address (LOGIN without TLS allowed).
    #[arg(long, default_value = "127.0.0.1:143")]
    imap: String,
    /// The account to search (fill it first with `wmail-bench fill`).
    #[arg(long, default_value = "user0@bench.test")]
    user: String,
    /// Its password.
    #[arg(long, default_value = PASSWORD)]
    password: String,
    /// The mailbox to search.
    #[arg(long, default_value = "INBOX")]
    mailbox: String,
    /// Queries of each kind.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Give up waiting for the index after this many seconds.
    #[arg(long, default_value_t = 3600)]
    wait_seconds: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Words the fill generator writes (common and rare), Chinese phrases, and words it never
/// writes: a mix of large, small and empty answers.
const NEEDLES: &[&str] = &[
    "meeting",
    "deadline",
    "latency",
    "customer",
    "Quarterly report",
    "Invoice 2024",
    "migration",
    "thanks",
    "会议安排",
    "服务器迁移",
    "预算",
    "发票",
    "Tanaka",
    "example.org",
    "zebra-crossing",
    "no-such-word-here",
];
const KEYS: &[&str] = &["BODY", "TEXT", "SUBJECT", "FROM"];

/// Runs the search benchmark.
pub async fn search(api: &Api, args: &SearchArgs) -> anyhow::Result<()> {
    let mut client = Client::login(&args.imap, &args.user, &args.password).await?;
    let status =
        client.run(&format!("STATUS {} (MESSAGES SIZE)", quoted(&args.mailbox))).await?.ok().context("STATUS")?;
    let line = status.untagged.first().map(|untagged| untagged.text.clone()).unwrap_or_default();
    let number_after = |word: &str| -> u64 {
        line.split_whitespace()
            .skip_while(|w| !w.trim_start_matches('(').eq_ignore_ascii_case(word))
            .nth(1)
            .and_then(|n| n.trim_end_matches(')').parse().ok())
            .unwrap_or(0)
    };
    let (messages, raw_bytes) = (number_after("MESSAGES"), number_after("SIZE"));

    // Indexing: wait until the index holds at least the mailbox.
    let started = Instant::now();
    let first = api.get("/search/status").await?["documents"].as_u64().unwrap_or(0);
    let mut last_report = Instant::now();
    let indexed = loop {
        let documents = api.get("/search/status").await?["documents"].as_u64().unwrap_or(0);
        if documents >= messages {
            break documents;
        }
        if started.elapsed() > Duration::from_secs(args.wait_seconds) {
            bail!("the index holds {documents} of {messages} messages after {} s", args.wait_seconds);
        }
        if !args.json && last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("waiting for the index: {documents}/{messages} documents");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let index_wait = started.elapsed().as_secs_f64();
    let index_rate = (indexed - first) as f64 / index_wait.max(0.001);

    client.run(&format!("SELECT {}", quoted(&args.mailbox))).await?.ok().context("SELECT")?;
    let mut rng = StdRng::seed_from_u64(11);
    let mut imap_latencies = Vec::new();
    for _ in 0..args.queries {
        let (key, needle) = (KEYS.choose(&mut rng).unwrap(), NEEDLES.choose(&mut rng).unwrap());
        let started = Instant::now();
        let literal = format!("{{{}+}}\r\n{needle}", needle.len());
        client.run(&format!("UID SEARCH CHARSET UTF-8 {key} {literal}")).await?.ok().context("SEARCH")?;
        imap_latencies.push(started.elapsed());
    }
    imap_latencies.sort();
    client.logout().await;

    let mut api_latencies = Vec::new();
    for _ in 0..args.queries {
        let mut query = NEEDLES.choose(&mut rng).unwrap().to_string();
        if rng.gen_bool(0.3) {
            query.push_str(" has:attachment");
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("limit", "20")
            .append_pair("q", &query)
            .finish();
        let path = format!("/accounts/{}/search?{query}", args.user);
        let started = Instant::now();
        api.get(&path).await?;
        api_latencies.push(started.elapsed());
    }
    api_latencies.sort();
    let index_bytes = api.get("/search/status").await?["index_bytes"].as_u64().unwrap_or(0);
    let share = index_bytes as f64 / raw_bytes.max(1) as f64;
    let stats = |sorted: &[Duration]| (millis(percentile(sorted, 0.5)), millis(percentile(sorted, 0.99)));
    let ((imap_p50, imap_p99), (api_p50, api_p99)) = (stats(&imap_latencies), stats(&api_latencies));
    let report = json!({
        "messages": messages,
        "raw_bytes": raw_bytes,
        "index_bytes": index_bytes,
        "index_share": share,
        "indexing_wait_seconds": index_wait,
        "indexed_per_second": index_rate,
        "imap_search_p50_ms": imap_p50,
        "imap_search_p99_ms": imap_p99,
        "ranked_p50_ms": api_p50,
        "ranked_p99_ms": api_p99,
    });
    crate::report::record("search", &report, args.json);
    if !args.json {
        println!(
            "{messages} messages, {:.1} MB raw; index {:.1} MB ({:.0}% of raw)",
            raw_bytes as f64 / 1e6,
            index_bytes as f64 / 1e6,
            share * 100.0
        );
        if indexed > first {
            println!("indexing: {} documents in {index_wait:.1} s ({index_rate:.0}/s)", indexed - first);
        }
        println!(
            "IMAP UID SEARCH (BODY/TEXT/SUBJECT/FROM): p50 {imap_p50:.1} ms, p99 {imap_p99:.1} ms over {} queries",
            args.queries
        );
        println!("ranked search API: p50 {api_p50:.1} ms, p99 {api_p99:.1} ms over {} queries", args.queries);
    }
    Ok(())
}
