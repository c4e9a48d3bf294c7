//! The `pop3` subcommand: download-and-delete cycles, the way POP3 clients use a mailbox
//! (log in over implicit TLS, STAT, RETR and DELE every message, QUIT).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::{Api, PASSWORD, accounts, message, millis, percentile};

/// Options of `wmail-bench pop3`.
#[derive(clap::Args)]
pub struct Pop3Args {
    /// The server's POP3S (implicit TLS) address; any certificate is accepted.
    #[arg(long, default_value = "127.0.0.1:995")]
    pop3s: String,
    /// Mailboxes (user0..userN@bench.test), each filled through the admin API first.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Fill the mailboxes by IMAP APPEND at this address (LOGIN without TLS) instead of
    /// through wmail's admin API, and do not create the accounts: for any POP3 server
    /// (Dovecot, in a side-by-side run) that knows user0..userN@bench.test.
    #[arg(long)]
    fill_imap: Option<String>,
    /// Messages put into each mailbox before its cycle.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 10_240)]
    size: usize,
    /// Sessions at once (each on its own mailbox: a maildrop has one session at a time).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Session {
    stream: BufReader<Box<dyn Io>>,
}

impl Session {
    async fn connect(address: &str) -> anyhow::Result<Self> {
        let tcp =
            tokio::net::TcpStream::connect(address).await.with_context(|| format!("cannot connect to {address}"))?;
        tcp.set_nodelay(true)?;
        let tls = crate::smtp::connector().connect("bench.invalid".try_into()?, tcp).await?;
        let mut session = Session { stream: BufReader::new(Box::new(tls)) };
        session.status().await.context("greeting")?;
        Ok(session)
    }

    /// Reads a `+OK`/`-ERR` line; an `-ERR` is an error.
    async fn status(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        if !line.starts_with("+OK") {
            bail!("{}", line.trim_end());
        }
        Ok(line)
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<String> {
        self.stream.get_mut().write_all(format!("{line}\r\n").as_bytes()).await?;
        self.stream.get_mut().flush().await?;
        self.status().await.with_context(|| line.split(' ').next().unwrap_or_default().to_owned())
    }

    /// RETR: the message's size as received (dot-stuffing undone, CRLF kept).
    async fn retrieve(&mut self, n: usize) -> anyhow::Result<usize> {
        self.command(&format!("RETR {n}")).await?;
        let mut size = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.stream.read_until(b'\n', &mut line).await? == 0 {
                bail!("the server closed the connection during RETR");
            }
            if line == b".\r\n" {
                return Ok(size);
            }
            size += line.len() - usize::from(line.starts_with(b".."));
        }
    }
}

impl Session {
    /// Connects and logs in with USER and PASS; returns the session and STAT's message count.
    async fn login(address: &str, user: &str) -> anyhow::Result<(Self, usize)> {
        let mut session = Session::connect(address).await?;
        session.command(&format!("USER {user}")).await?;
        session.command(&format!("PASS {PASSWORD}")).await?;
        let stat = session.command("STAT").await?;
        let count = stat.split_whitespace().nth(1).and_then(|n| n.parse().ok()).context("malformed STAT")?;
        Ok((session, count))
    }

    /// Says QUIT (best effort).
    async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }
}

/// One download-and-delete cycle of a mailbox: returns the messages and bytes fetched.
async fn cycle(address: &str, user: &str) -> anyhow::Result<(usize, usize)> {
    let (mut session, count) = Session::login(address, user).await?;
    let mut bytes = 0;
    for n in 1..=count {
        bytes += session.retrieve(n).await?;
        session.command(&format!("DELE {n}")).await?;
    }
    // RFC 1939 §6: the deletions take effect at QUIT (UPDATE state).
    session.command("QUIT").await?;
    Ok((count, bytes))
}

/// Fills the mailboxes, then runs one cycle per mailbox with `--concurrency` sessions and
/// checks that every mailbox is empty afterwards.
pub async fn pop3(api: &Api, args: &Pop3Args) -> anyhow::Result<()> {
    let users = accounts(api, args.users.max(1), args.fill_imap.is_some()).await?;
    let filling = users.iter().enumerate().map(|(u, user)| async move {
        let messages = (0..args.messages).map(|m| message(args.size, u * args.messages + m));
        if let Some(imap) = &args.fill_imap {
            let mut client = crate::imap::Client::login(imap, user, PASSWORD).await?;
            for message in messages {
                client.append("INBOX", "", None, &message).await?.ok().with_context(|| format!("APPEND to {user}"))?;
            }
            client.logout().await;
        } else {
            for message in messages {
                if !api.deliver(user, message).await {
                    bail!("delivering to {user} failed");
                }
            }
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(filling).await?;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let workers = (0..args.concurrency.max(1)).map(|_| {
        let (next, users) = (&next, &users);
        async move {
            let (mut latencies, mut messages, mut bytes, mut errors) = (Vec::new(), 0, 0, Vec::new());
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = users.get(index) else { break };
                let begun = Instant::now();
                match cycle(&args.pop3s, user).await {
                    Ok((count, size)) => {
                        latencies.push(begun.elapsed());
                        messages += count;
                        bytes += size;
                    }
                    Err(error) => errors.push(format!("{user}: {error:#}")),
                }
            }
            (latencies, messages, bytes, errors)
        }
    });
    let results = futures::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.0.clone()).collect();
    latencies.sort();
    let messages: usize = results.iter().map(|r| r.1).sum();
    let bytes: usize = results.iter().map(|r| r.2).sum();
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.3).collect();
    // Every cycle deleted what it downloaded: a new session finds the maildrops empty.
    let mut left = 0;
    for user in &users {
        let (session, count) = Session::login(&args.pop3s, user).await.with_context(|| format!("checking {user}"))?;
        session.quit().await;
        left += count;
    }
    let report = json!({
        "workload": "pop3",
        "sessions": latencies.len(),
        "messages": messages,
        "errors": errors.len(),
        "left_in_mailboxes": left,
        "sessions_per_second": latencies.len() as f64 / elapsed,
        "messages_per_second": messages as f64 / elapsed,
        "mb_per_second": bytes as f64 / elapsed / 1e6,
        "session_p50_ms": millis(percentile(&latencies, 0.5)),
        "session_p99_ms": millis(percentile(&latencies, 0.99)),
    });
    crate::report::record("pop3", &report, args.json);
    if !args.json {
        println!(
            "pop3: {} download-and-delete sessions of {} messages of {} B, {} at once: {:.0} messages/s, {:.1} MB/s, \
             session p50 {:.1} ms p99 {:.1} ms, {} errors, {left} messages left",
            latencies.len(),
            args.messages,
            args.size,
            args.concurrency,
            report["messages_per_second"].as_f64().unwrap_or(0.0),
            report["mb_per_second"].as_f64().unwrap_or(0.0),
            report["session_p50_ms"].as_f64().unwrap_or(0.0),
            report["session_p99_ms"].as_f64().unwrap_or(0.0),
            errors.len()
        );
    }
    if let Some(first) = errors.first() {
        bail!("{} sessions failed; the first: {first}", errors.len());
    }
    if left > 0 {
        bail!("{left} messages were still in the mailboxes after their sessions deleted them");
    }
    Ok(())
}
