//! The IMAP subcommands: `fill` (APPENDs of generated messages into one mailbox), `imap` (a
//! mixed user workload in the spirit of Dovecot's imaptest default profile, with latency
//! percentiles per command) and `idle` (many IDLE connections: the server's memory per
//! connection and how fast a delivery wakes them all).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::imap::{Client, Response, Status, Untagged, login_permit, quoted};
use crate::messages::Generator;
use crate::report::{progress, record};
use crate::{Api, PASSWORD, accounts, ensure_account, millis, percentile};

/// The IMAP server and output options every IMAP subcommand shares.
#[derive(clap::Args)]
pub struct ImapTarget {
    /// The server's IMAP address; LOGIN without TLS must be allowed there
    /// (`[imap] allow_plaintext_auth = true`).
    #[arg(long, default_value = "127.0.0.1:143")]
    imap: String,
    /// Do not create the domain and accounts through wmail's admin API.
    #[arg(long)]
    no_setup: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `fill`: APPENDs generated messages into one mailbox over several connections.
#[derive(clap::Args)]
pub struct FillArgs {
    #[command(flatten)]
    target: ImapTarget,
    /// The account to fill.
    #[arg(long, default_value = "user0@bench.test")]
    user: String,
    /// Its password.
    #[arg(long, default_value = PASSWORD)]
    password: String,
    /// Messages to APPEND.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// The mailbox to fill.
    #[arg(long, default_value = "INBOX")]
    mailbox: String,
    /// Connections APPENDing at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Afterwards, time SELECT and `FETCH 1:* (FLAGS)` of the whole mailbox.
    #[arg(long)]
    fetch_all: bool,
    /// Only short text messages (0.3-1.5 KB of text, no attachments): a million-message
    /// corpus in about 2 GB.
    #[arg(long)]
    small: bool,
}

/// What a batch of APPENDs gave.
struct Appended {
    /// Latencies of the accepted APPENDs, sorted.
    latencies: Vec<Duration>,
    bytes: usize,
    /// The refusals' status and text.
    refused: Vec<String>,
    seconds: f64,
}

/// What [`append_messages`] appends, where, and how.
struct AppendJob<'a> {
    imap: &'a str,
    user: &'a str,
    password: &'a str,
    mailbox: &'a str,
    /// The numbers of the generated messages (their Message-IDs and dates follow them).
    numbers: std::ops::Range<usize>,
    concurrency: usize,
    small: bool,
    /// Progress lines on stderr under this label.
    progress: &'a str,
}

/// APPENDs generated messages over `concurrency` connections.
async fn append_messages(job: &AppendJob<'_>) -> anyhow::Result<Appended> {
    let (next, done) = (AtomicUsize::new(job.numbers.start), AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..job.concurrency.max(1)).map(|_| {
        let (next, done) = (&next, &done);
        async move {
            let mut client = Client::login(job.imap, job.user, job.password).await?;
            let mut generator = Generator::new(rand::random(), job.user);
            if job.small {
                generator = generator.small();
            }
            let (mut latencies, mut bytes, mut refused) = (Vec::new(), 0, Vec::new());
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= job.numbers.end {
                    break;
                }
                let message = generator.message(n);
                let sent = Instant::now();
                let date = Some(message.internal_date.as_str());
                let response = client.append(job.mailbox, message.flags, date, &message.raw).await?;
                if response.status == Status::Ok {
                    latencies.push(sent.elapsed());
                    bytes += message.raw.len();
                } else {
                    refused.push(format!("{:?} {}", response.status, response.text));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            client.logout().await;
            anyhow::Ok((latencies, bytes, refused))
        }
    });
    let results = tokio::select! {
        results = futures::future::try_join_all(workers) => results?,
        _ = progress(job.progress, &done, job.numbers.len()) => unreachable!("progress never ends"),
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = results.iter().flat_map(|(latencies, ..)| latencies.clone()).collect();
    latencies.sort();
    let bytes = results.iter().map(|(_, bytes, _)| bytes).sum();
    let refused: Vec<String> = results.into_iter().flat_map(|(.., refused)| refused).collect();
    if let Some(first) = refused.first() {
        eprintln!("{} APPENDs refused; the first: {first}", refused.len());
    }
    Ok(Appended { latencies, bytes, refused, seconds })
}

/// APPENDs `--count` messages and reports messages/s and MB/s.
pub async fn fill(api: &Api, args: &FillArgs) -> anyhow::Result<()> {
    if !args.target.no_setup {
        ensure_account(api, &args.user, &args.password).await?;
    }
    let job = AppendJob {
        imap: &args.target.imap,
        user: &args.user,
        password: &args.password,
        mailbox: &args.mailbox,
        numbers: 0..args.count,
        concurrency: args.concurrency,
        small: args.small,
        progress: "appended",
    };
    let Appended { latencies, bytes, refused, seconds: elapsed } = append_messages(&job).await?;
    let (appended, megabytes) = (latencies.len(), bytes as f64 / 1e6);
    let fetch = if args.fetch_all {
        Some(time_fetch_all(&args.target.imap, &args.user, &args.password, &args.mailbox).await?)
    } else {
        None
    };
    let (p50, p99, max) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 1.0));
    let mut report = json!({
        "appended": appended,
        "refused": refused.len(),
        "bytes": bytes,
        "seconds": elapsed,
        "messages_per_second": appended as f64 / elapsed,
        "mb_per_second": megabytes / elapsed,
        "p50_ms": millis(p50),
        "p99_ms": millis(p99),
        "max_ms": millis(max),
    });
    if let Some((select, fetch, count)) = fetch {
        report["select_ms"] = json!(millis(select));
        report["fetch_all_ms"] = json!(millis(fetch));
        report["fetch_all_messages"] = json!(count);
    }
    record("fill", &report, args.target.json);
    if !args.target.json {
        println!(
            "appended {appended} messages ({megabytes:.1} MB) to {} {} over {} connections in {elapsed:.2} s: \
             {:.0} messages/s, {:.2} MB/s",
            args.user,
            args.mailbox,
            args.concurrency.max(1),
            appended as f64 / elapsed,
            megabytes / elapsed
        );
        println!(
            "APPEND latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} refused",
            millis(p50),
            millis(p99),
            millis(max),
            refused.len()
        );
        if let Some((select, fetch, count)) = fetch {
            println!(
                "SELECT {}: {:.1} ms; FETCH 1:* (FLAGS): {:.1} ms for {count} messages",
                args.mailbox,
                millis(select),
                millis(fetch)
            );
        }
    }
    if appended == 0 && args.count > 0 {
        bail!("no APPEND succeeded");
    }
    Ok(())
}

/// Times SELECT and `FETCH 1:* (FLAGS)` of a mailbox; returns both and the number of FETCH
/// responses.
async fn time_fetch_all(
    imap: &str,
    user: &str,
    password: &str,
    mailbox: &str,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let mut client = Client::login(imap, user, password).await?;
    let started = Instant::now();
    client.run(&format!("SELECT {}", quoted(mailbox))).await?.ok().context("SELECT")?;
    let select = started.elapsed();
    let started = Instant::now();
    let fetched = client.run("FETCH 1:* (FLAGS)").await?.ok().context("FETCH 1:* (FLAGS)")?;
    let fetch = started.elapsed();
    client.logout().await;
    Ok((select, fetch, fetched.untagged.iter().filter(|untagged| untagged.number_before("FETCH").is_some()).count()))
}

/// `scale`: APPEND latency as a mailbox grows.
#[derive(clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    target: ImapTarget,
    /// The account whose INBOX grows.
    #[arg(long, default_value = "scale@bench.test")]
    user: String,
    /// Its password.
    #[arg(long, default_value = PASSWORD)]
    password: String,
    /// Mailbox sizes at which to measure, comma-separated.
    #[arg(long, default_value = "1000,100000,1000000", value_delimiter = ',')]
    checkpoints: Vec<usize>,
    /// APPENDs timed at each checkpoint, one at a time on one connection.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Connections filling the mailbox between checkpoints (short text messages).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

/// Grows the INBOX to each checkpoint with short messages, then times `--samples` APPENDs
/// of realistic ones alone, SELECT, and `FETCH 1:* (FLAGS)`: one report per checkpoint.
pub async fn scale(api: &Api, args: &ScaleArgs) -> anyhow::Result<()> {
    if !args.target.no_setup {
        ensure_account(api, &args.user, &args.password).await?;
    }
    let mut client = Client::login(&args.target.imap, &args.user, &args.password).await?;
    let selected = client.run("SELECT INBOX").await?.ok().context("SELECT INBOX")?;
    client.logout().await;
    let mut exists =
        selected.untagged.iter().find_map(|untagged| untagged.number_before("EXISTS")).unwrap_or(0) as usize;
    if !args.target.json {
        println!("APPEND latency into {}'s INBOX as it grows (it holds {exists} messages)", args.user);
        println!(
            "{:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12}",
            "messages", "filled/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "SELECT ms", "FETCH 1:* ms"
        );
    }
    // The generator's next message number: past every number used, so Message-IDs never
    // repeat even when refused APPENDs leave the mailbox short of a checkpoint.
    let mut next_number = exists;
    for &checkpoint in &args.checkpoints {
        let missing = checkpoint.saturating_sub(exists);
        let fill = AppendJob {
            imap: &args.target.imap,
            user: &args.user,
            password: &args.password,
            mailbox: "INBOX",
            numbers: next_number..next_number + missing,
            concurrency: args.concurrency,
            small: true,
            progress: "filling",
        };
        let filled = append_messages(&fill).await?;
        let numbers = fill.numbers.end..fill.numbers.end + args.samples;
        next_number = numbers.end;
        let sampled =
            append_messages(&AppendJob { numbers, concurrency: 1, small: false, progress: "timing", ..fill }).await?;
        // What the mailbox holds now, as the server says.
        let (select, fetch, count) = time_fetch_all(&args.target.imap, &args.user, &args.password, "INBOX").await?;
        exists = count;
        let latencies = &sampled.latencies;
        let [p50, p90, p99, max] = [0.5, 0.9, 0.99, 1.0].map(|fraction| millis(percentile(latencies, fraction)));
        let fill_rate = filled.latencies.len() as f64 / filled.seconds;
        let report = json!({
            "messages": exists, "filled": filled.latencies.len(), "filled_per_second": fill_rate,
            "samples": latencies.len(), "append_p50_ms": p50, "append_p90_ms": p90, "append_p99_ms": p99,
            "append_max_ms": max, "select_ms": millis(select), "fetch_all_ms": millis(fetch),
            "refused": filled.refused.len() + sampled.refused.len(),
        });
        record("scale", &report, args.target.json);
        if !args.target.json {
            println!(
                "{exists:>10} {fill_rate:>11.0} {p50:>9.2} {p90:>9.2} {p99:>9.2} {max:>9.2} {:>10.1} {:>12.1}",
                millis(select),
                millis(fetch)
            );
        }
        if latencies.is_empty() {
            bail!("no timed APPEND succeeded at {checkpoint} messages");
        }
    }
    Ok(())
}

/// `imap`: the mixed workload.
#[derive(clap::Args)]
pub struct MixedArgs {
    #[command(flatten)]
    target: ImapTarget,
    /// Accounts user0..userN-1@bench.test.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Concurrent clients; client i logs in as user i mod N.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// How long the clients run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Each INBOX is first topped up to this many messages with APPEND.
    #[arg(long, default_value_t = 50)]
    messages: usize,
    /// Verify the answers: UID FETCH returns the requested UID, FLAGS after STORE contain
    /// \Seen, APPENDUID UIDs increase.
    #[arg(long)]
    check: bool,
}

/// The workload's commands, in the order of a round (the table's rows). LOGIN includes
/// connecting and the greeting (not the wait for a [`login_permit`]); IDLE is its two
/// round trips (IDLE to `+`, DONE to OK), not the 100 ms spent idling.
const COMMANDS: [&str; 11] = [
    "LOGIN",
    "SELECT",
    "FETCH 1:* (UID FLAGS)",
    "UID FETCH HEADER",
    "UID FETCH BODY[]",
    "STORE +\\Seen",
    "SEARCH UNSEEN",
    "APPEND",
    "STORE +\\Deleted",
    "EXPUNGE",
    "IDLE",
];

/// One command's outcomes.
#[derive(Default)]
struct CommandStats {
    latencies: Vec<Duration>,
    no: usize,
    bad: usize,
    disconnect: usize,
    inconsistent: usize,
}

/// Runs `--clients` clients for `--seconds` and prints ops/s and latency percentiles per
/// command, and errors by kind.
pub async fn mixed(api: &Api, args: &MixedArgs) -> anyhow::Result<()> {
    let users = accounts(api, args.users.max(1), args.target.no_setup).await?;
    futures::stream::iter(&users)
        .map(|user| top_up(&args.target.imap, user, args.messages))
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let clients = args.clients.max(1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let workers = (0..clients).map(|index| {
        let user = index % users.len();
        let sharing = clients / users.len() + usize::from(user < clients % users.len());
        MixedClient {
            args,
            user: &users[user],
            alone: sharing == 1,
            rng: StdRng::seed_from_u64(rand::random()),
            generator: Generator::new(rand::random(), &users[user]),
            stats: BTreeMap::new(),
            samples: Vec::new(),
            last_uid: None,
        }
        .run(deadline)
    });
    let results = futures::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut stats: BTreeMap<&str, CommandStats> = BTreeMap::new();
    for (client_stats, samples) in results {
        for (name, outcome) in client_stats {
            let total = stats.entry(name).or_default();
            total.latencies.extend(outcome.latencies);
            (total.no, total.bad) = (total.no + outcome.no, total.bad + outcome.bad);
            (total.disconnect, total.inconsistent) =
                (total.disconnect + outcome.disconnect, total.inconsistent + outcome.inconsistent);
        }
        for sample in samples {
            eprintln!("{sample}");
        }
    }
    let mut rows = serde_json::Map::new();
    let (mut ops, mut errors, mut inconsistent) = (0, 0, 0);
    if !args.target.json {
        let checked = if args.check { ", answers checked" } else { "" };
        println!("mixed IMAP workload: {clients} clients on {} accounts for {elapsed:.1} s{checked}", users.len());
        println!(
            "{:<22} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>5} {:>5} {:>5} {:>5}",
            "command", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "NO", "BAD", "disc", "check"
        );
    }
    for name in COMMANDS {
        let Some(outcome) = stats.get_mut(name) else { continue };
        outcome.latencies.sort();
        let latencies = &outcome.latencies;
        let [p50, p90, p99, max] = [0.5, 0.9, 0.99, 1.0].map(|fraction| millis(percentile(latencies, fraction)));
        let rate = latencies.len() as f64 / elapsed;
        ops += latencies.len();
        errors += outcome.no + outcome.bad + outcome.disconnect;
        inconsistent += outcome.inconsistent;
        let row = json!({
            "ops": latencies.len(), "ops_per_second": rate,
            "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max,
            "no": outcome.no, "bad": outcome.bad, "disconnect": outcome.disconnect,
            "inconsistent": outcome.inconsistent,
        });
        rows.insert(name.to_owned(), row);
        if !args.target.json {
            println!(
                "{name:<22} {:>8} {rate:>9.1} {p50:>8.2} {p90:>8.2} {p99:>8.2} {max:>8.2} {:>5} {:>5} {:>5} {:>5}",
                latencies.len(),
                outcome.no,
                outcome.bad,
                outcome.disconnect,
                outcome.inconsistent
            );
        }
    }
    let report = json!({
        "users": users.len(), "clients": clients, "seconds": elapsed, "ops": ops,
        "ops_per_second": ops as f64 / elapsed, "errors": errors, "inconsistent": inconsistent,
        "commands": rows,
    });
    record("imap", &report, args.target.json);
    if !args.target.json {
        let rate = ops as f64 / elapsed;
        println!("{:<22} {ops:>8} {rate:>9.1}   errors {errors}, inconsistent answers {inconsistent}", "total");
    }
    if ops == 0 {
        bail!("no command succeeded");
    }
    if inconsistent > 0 {
        bail!("{inconsistent} inconsistent answers (see above)");
    }
    Ok(())
}

/// APPENDs generated messages until `user`'s INBOX holds `messages`.
async fn top_up(address: &str, user: &str, messages: usize) -> anyhow::Result<()> {
    let mut client = Client::login(address, user, PASSWORD).await?;
    let selected = client.run("SELECT INBOX").await?.ok().context("SELECT INBOX")?;
    let exists = selected.untagged.iter().find_map(|untagged| untagged.number_before("EXISTS")).unwrap_or(0);
    let mut generator = Generator::new(rand::random(), user);
    for n in exists as usize..messages {
        let message = generator.message(n);
        let date = Some(message.internal_date.as_str());
        client.append("INBOX", message.flags, date, &message.raw).await?.ok().context("APPEND")?;
    }
    client.logout().await;
    Ok(())
}

/// One simulated user's client in the mixed workload.
struct MixedClient<'a> {
    args: &'a MixedArgs,
    user: &'a str,
    /// Whether no other client uses this account, so every answer can be checked exactly.
    alone: bool,
    rng: StdRng,
    generator: Generator,
    stats: BTreeMap<&'static str, CommandStats>,
    /// The first few errors and inconsistencies, for the report.
    samples: Vec<String>,
    /// UIDVALIDITY and UID of the last APPENDUID.
    last_uid: Option<(u64, u64)>,
}

impl MixedClient<'_> {
    /// Runs rounds until `deadline`, reconnecting after a failure.
    async fn run(mut self, deadline: Instant) -> (BTreeMap<&'static str, CommandStats>, Vec<String>) {
        let mut connection = None;
        while Instant::now() < deadline {
            let mut client = match connection.take() {
                Some(client) => client,
                None => match self.connect().await {
                    Some(client) => client,
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            match self.round(&mut client).await {
                Ok(true) => connection = Some(client),
                Ok(false) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(error) => self.sample(format!("{}: connection lost: {error:#}", self.user)),
            }
        }
        if let Some(client) = connection {
            client.logout().await;
        }
        (self.stats, self.samples)
    }

    async fn connect(&mut self) -> Option<Client> {
        let _permit = login_permit().await;
        let started = Instant::now();
        let mut client = match Client::connect(&self.args.target.imap).await {
            Ok(client) => client,
            Err(error) => {
                self.stats.entry("LOGIN").or_default().disconnect += 1;
                self.sample(format!("{}: {error:#}", self.user));
                return None;
            }
        };
        let result = client.run(&format!("LOGIN {} {}", quoted(self.user), quoted(PASSWORD))).await;
        self.record("LOGIN", started, result).ok().flatten().map(|_| client)
    }

    /// One round of the workload; false when the session cannot go on (SELECT failed).
    async fn round(&mut self, client: &mut Client) -> anyhow::Result<bool> {
        if self.timed(client, "SELECT", "SELECT INBOX").await?.is_none() {
            return Ok(false);
        }
        let Some(listing) = self.timed(client, COMMANDS[2], "FETCH 1:* (UID FLAGS)").await? else { return Ok(true) };
        let uids: Vec<u32> = listing.untagged.iter().filter_map(Untagged::fetch_uid).collect();
        // The messages seen now: seen in the listing, or read since with BODY[].
        let mut seen: Vec<u32> = listing
            .untagged
            .iter()
            .filter(|untagged| untagged.fetch_flags().is_some_and(has_seen))
            .filter_map(Untagged::fetch_uid)
            .collect();
        for (name, item) in [(COMMANDS[3], "BODY.PEEK[HEADER]"), (COMMANDS[4], "BODY[]")] {
            if let Some(&uid) = uids.choose(&mut self.rng)
                && let Some(response) = self.timed(client, name, &format!("UID FETCH {uid} ({item})")).await?
            {
                self.check_fetch(name, uid, &response);
                if item == "BODY[]" {
                    seen.push(uid);
                }
            }
        }
        if let Some(&uid) = uids.choose(&mut self.rng)
            && let Some(response) = self.timed(client, COMMANDS[5], &format!("UID STORE {uid} +FLAGS (\\Seen)")).await?
        {
            self.check_seen(uid, seen.contains(&uid), &response);
        }
        self.timed(client, COMMANDS[6], "SEARCH UNSEEN").await?;
        let message = self.generator.message(self.rng.r#gen());
        let started = Instant::now();
        let result = client.append("INBOX", "", None, &message.raw).await;
        if let Some(response) = self.record("APPEND", started, result)? {
            self.check_append_uid(&response);
        }
        if let Some(&uid) = uids.choose(&mut self.rng) {
            let command = format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)");
            if self.timed(client, COMMANDS[8], &command).await?.is_some() {
                self.timed(client, "EXPUNGE", "EXPUNGE").await?;
            }
        }
        if self.rng.gen_ratio(1, 4) {
            let started = Instant::now();
            if let Some(refused) = client.idle().await? {
                self.record("IDLE", started, Ok(refused))?;
            } else {
                let waited = started.elapsed();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let result = client.done().await;
                self.record("IDLE", Instant::now() - waited, result)?;
            }
        }
        Ok(true)
    }

    async fn timed(
        &mut self,
        client: &mut Client,
        name: &'static str,
        command: &str,
    ) -> anyhow::Result<Option<Response>> {
        let started = Instant::now();
        let result = client.run(command).await;
        self.record(name, started, result)
    }

    /// Records a command's latency or failure: `Ok(None)` for NO and BAD, the error when
    /// the connection broke.
    fn record(
        &mut self,
        name: &'static str,
        started: Instant,
        result: anyhow::Result<Response>,
    ) -> anyhow::Result<Option<Response>> {
        let stats = self.stats.entry(name).or_default();
        match result {
            Ok(response) if response.status == Status::Ok => {
                stats.latencies.push(started.elapsed());
                Ok(Some(response))
            }
            Ok(response) => {
                if response.status == Status::No {
                    stats.no += 1;
                } else {
                    stats.bad += 1;
                }
                self.sample(format!("{}: {name}: {:?} {}", self.user, response.status, response.text));
                Ok(None)
            }
            Err(error) => {
                stats.disconnect += 1;
                Err(error)
            }
        }
    }

    fn sample(&mut self, text: String) {
        if self.samples.len() < 3 {
            self.samples.push(text);
        }
    }

    fn inconsistent(&mut self, name: &'static str, text: String) {
        self.stats.entry(name).or_default().inconsistent += 1;
        self.sample(format!("{}: {name}: inconsistent: {text}", self.user));
    }

    /// A UID FETCH of a body section: the data comes with the requested UID.
    fn check_fetch(&mut self, name: &'static str, uid: u32, response: &Response) {
        let bodies: Vec<&Untagged> =
            response.untagged.iter().filter(|untagged| !untagged.literals.is_empty()).collect();
        let wrong = bodies.iter().any(|untagged| untagged.fetch_uid() != Some(uid));
        if self.args.check && (wrong || (self.alone && bodies.is_empty())) {
            let texts: Vec<&str> = response.untagged.iter().map(|untagged| untagged.text.as_str()).collect();
            self.inconsistent(name, format!("UID FETCH {uid} answered {texts:?}"));
        }
    }

    /// The FLAGS after `STORE +FLAGS (\Seen)` contain \Seen. A server may leave out the
    /// FETCH of a message whose flags did not change (Dovecot does), so for a message seen
    /// already no answer is consistent too.
    fn check_seen(&mut self, uid: u32, seen_before: bool, response: &Response) {
        let flags: Vec<&str> = response
            .untagged
            .iter()
            .filter(|untagged| untagged.fetch_uid() == Some(uid))
            .filter_map(Untagged::fetch_flags)
            .collect();
        let unseen = flags.iter().any(|flags| !has_seen(flags));
        if self.args.check && (unseen || (self.alone && flags.is_empty() && !seen_before)) {
            self.inconsistent(COMMANDS[5], format!("UID STORE {uid} +FLAGS (\\Seen) answered FLAGS {flags:?}"));
        }
    }

    /// APPENDUID is present and its UID above the previous one.
    fn check_append_uid(&mut self, response: &Response) {
        let parsed = response.code("APPENDUID").and_then(|arguments| {
            let (validity, uid) = arguments.split_once(' ')?;
            Some((validity.parse::<u64>().ok()?, uid.parse::<u64>().ok()?))
        });
        let increasing = match (parsed, self.last_uid) {
            (None, _) => false,
            (Some((validity, uid)), Some((last_validity, last_uid))) => validity != last_validity || uid > last_uid,
            (Some(_), None) => true,
        };
        self.last_uid = parsed.or(self.last_uid);
        if self.args.check && !increasing {
            let text = format!("APPEND answered {} after APPENDUID {:?}", response.text, self.last_uid);
            self.inconsistent("APPEND", text);
        }
    }
}

/// Whether a FETCH FLAGS list holds `\Seen`.
fn has_seen(flags: &str) -> bool {
    flags.split(' ').any(|flag| flag.eq_ignore_ascii_case("\\Seen"))
}

/// `idle`: many IDLE connections.
#[derive(clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: ImapTarget,
    /// IDLE connections to open (in batches of 200).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Accounts the connections log in as (connection i as user i mod N); the wake-up check
    /// delivers one message to each.
    #[arg(long, default_value_t = 1)]
    users: usize,
    /// The server's process id, to read its memory before and after: the proportional set
    /// size (PSS) of that process and all its descendants, so a server with a process per
    /// connection (Dovecot's master) is measured whole and shared pages count once.
    #[arg(long)]
    pid: Option<u32>,
}

/// Connections opened at once.
const BATCH: usize = 200;
/// How long idle connections get to see a delivery.
const WAKE_WINDOW: Duration = Duration::from_secs(2);

/// Opens `--connections` IDLE sessions, reports the server's memory per connection, then
/// delivers a message and reports how many saw it (and how fast) before closing them all.
pub async fn idle(api: &Api, args: &IdleArgs) -> anyhow::Result<()> {
    raise_open_files(args.connections + 256);
    if let Some((soft, _)) = args.pid.and_then(|pid| open_files_limit(&pid.to_string()))
        && soft < args.connections + 64
    {
        eprintln!("warning: the server may open only {soft} files; start it with a higher `ulimit -n`");
    }
    let users = accounts(api, args.users.max(1), args.target.no_setup).await?;
    let memory_before = args.pid.map(memory_kb).transpose()?;
    let (stop_sender, stop) = watch::channel(false);
    let woken = Arc::new(AtomicUsize::new(0));
    let (mut tasks, mut idling, mut failures) = (Vec::new(), 0, Vec::new());
    // Connections idling after the first batch, and the server's memory then: the first
    // logins also grow the allocator's arenas (password hashing), which later ones reuse.
    let mut first_batch = (0, None);
    let started = Instant::now();
    for first in (0..args.connections).step_by(BATCH) {
        let (ready_sender, mut ready) = mpsc::channel(BATCH);
        for index in first..(first + BATCH).min(args.connections) {
            let user = users[index % users.len()].clone();
            let idler = idler(args.target.imap.clone(), user, ready_sender.clone(), stop.clone(), woken.clone());
            tasks.push(tokio::spawn(idler));
        }
        drop(ready_sender);
        while let Some(result) = ready.recv().await {
            match result {
                Ok(()) => idling += 1,
                Err(error) => failures.push(error),
            }
        }
        if first == 0 {
            first_batch = (idling, args.pid.map(memory_kb).transpose()?);
        }
    }
    let opening = started.elapsed().as_secs_f64();
    let memory_after = args.pid.map(memory_kb).transpose()?;
    if let Some(error) = failures.first() {
        eprintln!("{} connections failed; the first: {error:#}", failures.len());
    }

    // The wake-up message is APPENDed over IMAP (any server can take it that way) by a
    // session per account that logs in before the clock starts.
    let mut senders = Vec::new();
    for user in &users {
        senders.push(Client::login(&args.target.imap, user, PASSWORD).await?);
    }
    let wake_start = Instant::now();
    let deliveries = senders.iter_mut().zip(&users).map(|(client, user)| async move {
        let message = format!(
            "From: bench@bench.test\r\nTo: {user}\r\nSubject: wake up\r\n\r\nA message for the idle connections.\r\n"
        );
        client.append("INBOX", "", None, message.as_bytes()).await.is_ok_and(|response| response.status == Status::Ok)
    });
    let delivered = futures::future::join_all(deliveries).await.into_iter().filter(|delivered| *delivered).count();
    let delivery = wake_start.elapsed();
    for client in senders {
        client.logout().await;
    }
    while woken.load(Ordering::Relaxed) < idling && wake_start.elapsed() < WAKE_WINDOW {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_sender.send_replace(true);
    let closing = Instant::now();
    let mut latencies: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|woke| woke.ok().flatten())
        .map(|woke| woke.saturating_duration_since(wake_start))
        .filter(|latency| *latency <= WAKE_WINDOW)
        .collect();
    let closing = closing.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let memory_closed = args.pid.map(memory_kb).transpose()?;
    latencies.sort();
    let per_connection = |from: Option<u64>, connections: usize| match (from, memory_after) {
        (Some(from), Some(after)) if connections > 0 => Some((after as f64 - from as f64) / connections as f64),
        _ => None,
    };
    let (first_idling, memory_first_batch) = first_batch;
    let (per_connection, marginal) =
        (per_connection(memory_before, idling), per_connection(memory_first_batch, idling - first_idling));
    let [p50, p99, max] = [0.5, 0.99, 1.0].map(|fraction| millis(percentile(&latencies, fraction)));
    let report = json!({
        "connections": args.connections, "idling": idling, "failed": failures.len(),
        "open_seconds": opening, "memory_before_kb": memory_before, "memory_first_batch_kb": memory_first_batch,
        "memory_after_kb": memory_after, "memory_closed_kb": memory_closed, "memory_per_connection_kb": per_connection,
        "memory_per_connection_after_first_batch_kb": marginal,
        "delivered": delivered, "delivery_ms": millis(delivery), "woken": latencies.len(),
        "wake_p50_ms": p50, "wake_p99_ms": p99, "wake_max_ms": max, "close_ms": closing * 1000.0,
    });
    record("idle", &report, args.target.json);
    if !args.target.json {
        println!(
            "{idling} of {} connections idling after {opening:.1} s ({:.0} connections/s); {} failed",
            args.connections,
            idling as f64 / opening,
            failures.len()
        );
        if let (Some(before), Some(first), Some(after), Some(closed)) =
            (memory_before, memory_first_batch, memory_after, memory_closed)
        {
            println!(
                "server memory (PSS) {before} KB before, {first} KB with the first {first_idling} idling, \
                 {after} KB with all, {closed} KB after closing"
            );
            let [all, marginal] = [per_connection, marginal].map(|kb| kb.map_or("-".into(), |kb| format!("{kb:.1}")));
            println!("  {all} KB per idle connection ({marginal} KB each beyond the first batch)");
        }
        println!(
            "{delivered} of {} deliveries in {:.1} ms; {} of {idling} connections saw EXISTS within {} s: \
             p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            users.len(),
            millis(delivery),
            latencies.len(),
            WAKE_WINDOW.as_secs()
        );
        println!("closed in {:.1} ms", closing * 1000.0);
    }
    if idling == 0 || delivered < users.len() {
        bail!("{idling} connections idling, {delivered} of {} deliveries accepted", users.len());
    }
    Ok(())
}

/// One IDLE connection: reports readiness (or why it failed), then returns when it saw
/// `* n EXISTS` (if it did) once told to stop.
async fn idler(
    address: String,
    user: String,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
    woken: Arc<AtomicUsize>,
) -> Option<Instant> {
    let opened = async {
        let mut client = Client::login(&address, &user, PASSWORD).await?;
        client.run("SELECT INBOX").await?.ok().context("SELECT INBOX")?;
        if let Some(refused) = client.idle().await? {
            bail!("IDLE refused: {:?} {}", refused.status, refused.text);
        }
        anyhow::Ok(client)
    };
    let mut client = match opened.await {
        Ok(client) => {
            let _ = ready.send(Ok(())).await;
            client
        }
        Err(error) => {
            let _ = ready.send(Err(error)).await;
            return None;
        }
    };
    drop(ready);
    let mut woke = None;
    loop {
        tokio::select! {
            untagged = client.next_untagged(), if woke.is_none() => match untagged {
                Ok(untagged) if untagged.number_before("EXISTS").is_some() => {
                    woke = Some(Instant::now());
                    woken.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => return None,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    if client.done().await.is_ok() {
        client.logout().await;
    }
    woke
}

/// The memory of a process and all its descendants in KB: the sum of their proportional
/// set sizes (`Pss` in /proc/PID/smaps_rollup), in which a page shared by n processes
/// counts 1/n in each.
fn memory_kb(pid: u32) -> anyhow::Result<u64> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(child) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(child);
        }
    }
    let (mut total, mut pending) = (0, vec![pid]);
    while let Some(process) = pending.pop() {
        let path = format!("/proc/{process}/smaps_rollup");
        match std::fs::read_to_string(&path) {
            Ok(rollup) => {
                let line = rollup.lines().find(|line| line.starts_with("Pss:")).context("no Pss")?;
                total += line.split_whitespace().nth(1).context("no Pss value")?.parse::<u64>().context("Pss")?;
            }
            // The server itself must be there; a child may have just exited, but one we may
            // not read (another user's, without root) makes the sum too small: say so.
            Err(error) if process == pid => return Err(error).with_context(|| format!("reading {path}")),
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("warning: cannot read {path} ({error}); the memory measured leaves that process out");
                continue;
            }
            Err(_) => continue,
        }
        pending.extend(children.get(&process).into_iter().flatten());
    }
    Ok(total)
}

/// A process's soft and hard limits on open files (`self` for this one).
fn open_files_limit(pid: &str) -> Option<(usize, usize)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    let mut values = line.split_whitespace().map(|value| value.parse().unwrap_or(usize::MAX));
    Some((values.next()?, values.next()?))
}

/// Raises this process's soft limit on open files towards `wanted` (at most to the hard
/// limit) with util-linux `prlimit`, as the standard library cannot call setrlimit.
fn raise_open_files(wanted: usize) {
    let Some((soft, hard)) = open_files_limit("self") else { return };
    if soft >= wanted {
        return;
    }
    let target = wanted.min(hard);
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), &format!("--nofile={target}:{hard}")])
        .status()
        .is_ok_and(|status| status.success());
    if !raised || target < wanted {
        let now = open_files_limit("self").map_or(soft, |(soft, _)| soft);
        eprintln!("warning: this process may open {now} files, {wanted} wanted (raise `ulimit -n`)");
    }
}
