//! The clients: each runs one operation at a time on a random node (as behind a load
//! balancer) and records it. SMTP deliveries and IMAP APPENDs carry unique Message-IDs,
//! reads fetch every message of an INBOX with its UID, flags and MODSEQ, flag changes
//! only ever add a flag (so the final flags follow from the acknowledged ones), and admin
//! writes create accounts with unique names.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wmail_bench::imap;

use crate::cluster::{HTTP_PORT, IMAP_PORT, SMTP_PORT};
use crate::history::{MailboxRead, Op, OpKind, Outcome, Recorder, SeenMessage};

/// The domain of the workload's accounts.
pub const DOMAIN: &str = "jepsen.test";
/// The password of every account.
pub const PASSWORD: &str = "jepsen password";
/// The flags that flag operations add.
const FLAGS: [&str; 5] = ["\\Flagged", "\\Seen", "\\Answered", "$Jepsen1", "$Jepsen2"];

/// What every client shares.
#[derive(Debug)]
pub struct Workload {
    /// Node addresses, index 0 is node 1.
    pub nodes: Vec<Ipv4Addr>,
    /// The accounts deliveries, APPENDs, reads and flags go to.
    pub accounts: Vec<String>,
    /// The admin token (the nemesis swaps it when it removes the node it belongs to).
    pub token: Arc<std::sync::RwLock<String>>,
    /// Where operations are recorded.
    pub recorder: Arc<Recorder>,
    /// How long one operation may take before it counts as indeterminate.
    pub op_timeout: Duration,
    /// The run's seed (part of every Message-ID, so runs never mix).
    pub seed: u64,
    /// UIDs known to exist per account (from reads and APPENDUID), for flag operations.
    known_uids: Mutex<HashMap<String, Vec<u32>>>,
    http: reqwest::Client,
}

/// An operation's result before it is recorded.
#[derive(Default)]
struct Done {
    uid: Option<u32>,
    read: Option<MailboxRead>,
}

impl Workload {
    /// The shared state of the clients.
    pub fn new(
        nodes: Vec<Ipv4Addr>,
        accounts: Vec<String>,
        token: Arc<std::sync::RwLock<String>>,
        recorder: Arc<Recorder>,
        op_timeout: Duration,
        seed: u64,
    ) -> Self {
        let http = reqwest::Client::builder().timeout(op_timeout).build().expect("HTTP client");
        Self { nodes, accounts, token, recorder, op_timeout, seed, known_uids: Mutex::new(HashMap::new()), http }
    }

    /// Runs client `process` until `stop` is set.
    pub async fn client(self: Arc<Self>, process: usize, stop: Arc<AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(process as u64));
        while !stop.load(Ordering::Relaxed) {
            let node = rng.gen_range(1..=self.nodes.len());
            let account = self.accounts[rng.gen_range(0..self.accounts.len())].clone();
            let kind = match rng.gen_range(0..100) {
                0..35 => OpKind::Deliver,
                35..55 => OpKind::Append,
                55..80 => OpKind::Read,
                80..95 => OpKind::Flag,
                _ => OpKind::CreateAccount,
            };
            self.run_op(process, node, kind, account, &mut rng).await;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..60))).await;
        }
    }

    async fn run_op(&self, process: usize, node: usize, kind: OpKind, mut account: String, rng: &mut StdRng) {
        let id = self.recorder.next_id();
        let mut op = Op {
            id,
            process,
            node,
            kind,
            account: account.clone(),
            invoked_ms: 0.0,
            completed_ms: 0.0,
            outcome: Outcome::Fail,
            message_id: None,
            uid: None,
            flag: None,
            read: None,
            error: None,
        };
        let ip = self.nodes[node - 1];
        match kind {
            OpKind::Deliver | OpKind::Append => op.message_id = Some(format!("jepsen-{}-{id}@{DOMAIN}", self.seed)),
            OpKind::Flag => {
                let Some(uid) = self.known_uid(&account, rng) else { return };
                op.uid = Some(uid);
                op.flag = Some(FLAGS[rng.gen_range(0..FLAGS.len())].to_owned());
            }
            OpKind::CreateAccount => {
                account = format!("c{}-{id}@{DOMAIN}", self.seed);
                op.account = account.clone();
            }
            OpKind::Read => {}
        }
        // Set once the request that changes state may have reached the server: a failure
        // after it is indeterminate, before it definite.
        let sent = AtomicBool::new(false);
        op.invoked_ms = self.recorder.now_ms();
        let attempt = async {
            match kind {
                OpKind::Deliver => {
                    let message = message(&account, op.message_id.as_deref().unwrap_or_default());
                    deliver(SocketAddr::from((ip, SMTP_PORT)), &account, &message, &sent)
                        .await
                        .map(|()| Done::default())
                }
                OpKind::Append => {
                    let message = message(&account, op.message_id.as_deref().unwrap_or_default());
                    append(SocketAddr::from((ip, IMAP_PORT)), &account, &message, &sent)
                        .await
                        .map(|uid| Done { uid, ..Done::default() })
                }
                OpKind::Read => read(SocketAddr::from((ip, IMAP_PORT)), &account)
                    .await
                    .map(|read| Done { read: Some(read), ..Done::default() }),
                OpKind::Flag => {
                    let (uid, flag) = (op.uid.unwrap_or_default(), op.flag.clone().unwrap_or_default());
                    store_flag(SocketAddr::from((ip, IMAP_PORT)), &account, uid, &flag, &sent)
                        .await
                        .map(|()| Done::default())
                }
                OpKind::CreateAccount => self.create_account(ip, &account, &sent).await.map(|()| Done::default()),
            }
        };
        let result = match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("timed out after {:?}", self.op_timeout)),
        };
        op.completed_ms = self.recorder.now_ms();
        match result {
            Ok(done) => {
                op.outcome = Outcome::Ok;
                if let Some(uid) = done.uid {
                    op.uid = Some(uid);
                    self.learn_uids(&account, [uid]);
                }
                if let Some(read) = &done.read {
                    self.learn_uids(&account, read.messages.iter().map(|m| m.uid));
                }
                op.read = done.read;
            }
            Err(error) => {
                op.outcome = if kind.is_write() && sent.load(Ordering::SeqCst) { Outcome::Info } else { Outcome::Fail };
                op.error = Some(format!("{error:#}"));
            }
        }
        self.recorder.op(op);
    }

    fn known_uid(&self, account: &str, rng: &mut StdRng) -> Option<u32> {
        let known = self.known_uids.lock().expect("uids lock");
        let uids = known.get(account)?;
        (!uids.is_empty()).then(|| uids[rng.gen_range(0..uids.len())])
    }

    fn learn_uids(&self, account: &str, uids: impl IntoIterator<Item = u32>) {
        let mut known = self.known_uids.lock().expect("uids lock");
        let list = known.entry(account.to_owned()).or_default();
        for uid in uids {
            if let Err(position) = list.binary_search(&uid) {
                list.insert(position, uid);
            }
        }
    }

    async fn create_account(&self, ip: Ipv4Addr, address: &str, sent: &AtomicBool) -> anyhow::Result<()> {
        let url = format!("http://{ip}:{HTTP_PORT}/api/v1/accounts");
        let token = self.token.read().expect("token lock").clone();
        let request = self.http.post(url).bearer_auth(token).json(&json!({ "address": address, "password": PASSWORD }));
        sent.store(true, Ordering::SeqCst);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if error.is_connect() => {
                // Never reached the server.
                sent.store(false, Ordering::SeqCst);
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.as_u16() == 201 {
            return Ok(());
        }
        if status.is_client_error() {
            // Refused as invalid or conflicting: nothing was written.
            sent.store(false, Ordering::SeqCst);
        }
        bail!("{status} {body}")
    }
}

/// A small message with a unique Message-ID.
fn message(recipient: &str, message_id: &str) -> Vec<u8> {
    format!(
        "From: client@remote.{DOMAIN}\r\nTo: {recipient}\r\nSubject: {message_id}\r\nMessage-ID: <{message_id}>\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\n\r\nWritten by wmail-jepsen.\r\n"
    )
    .into_bytes()
}

/// One SMTP transaction (RFC 5321): only a `250` to the end of the data acknowledges it.
async fn deliver(address: SocketAddr, recipient: &str, message: &[u8], sent: &AtomicBool) -> anyhow::Result<()> {
    let stream = TcpStream::connect(address).await.context("connect")?;
    let mut stream = BufReader::new(stream);
    expect(&mut stream, 220).await?;
    let steps: [(String, u16); 4] = [
        (format!("EHLO client.{DOMAIN}"), 250),
        (format!("MAIL FROM:<client@remote.{DOMAIN}>"), 250),
        (format!("RCPT TO:<{recipient}>"), 250),
        ("DATA".to_owned(), 354),
    ];
    for (command, code) in steps {
        stream.get_mut().write_all(format!("{command}\r\n").as_bytes()).await?;
        expect(&mut stream, code).await.with_context(|| command.clone())?;
    }
    let mut data = message.to_vec();
    data.extend_from_slice(b".\r\n");
    sent.store(true, Ordering::SeqCst);
    stream.get_mut().write_all(&data).await?;
    expect(&mut stream, 250).await.context("end of data")?;
    let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
    Ok(())
}

/// Reads one (possibly multi-line) SMTP reply and fails unless its code is `code`.
async fn expect(stream: &mut BufReader<TcpStream>, code: u16) -> anyhow::Result<()> {
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        let got: u16 = line.get(..3).and_then(|c| c.parse().ok()).context("malformed reply")?;
        if got != code {
            bail!("{}", line.trim_end());
        }
        return Ok(());
    }
}

/// IMAP APPEND (RFC 9051 §6.3.12) to INBOX; returns the UID from APPENDUID (RFC 4315).
async fn append(address: SocketAddr, user: &str, message: &[u8], sent: &AtomicBool) -> anyhow::Result<Option<u32>> {
    let mut client = imap::Client::login(&address.to_string(), user, PASSWORD).await?;
    sent.store(true, Ordering::SeqCst);
    let response = client.append("INBOX", "", None, message).await?.ok()?;
    let uid = response.code("APPENDUID").and_then(|arguments| arguments.split(' ').nth(1)?.parse().ok());
    client.logout().await;
    Ok(uid)
}

/// IMAP `UID STORE uid +FLAGS.SILENT (flag)`.
async fn store_flag(address: SocketAddr, user: &str, uid: u32, flag: &str, sent: &AtomicBool) -> anyhow::Result<()> {
    let mut client = imap::Client::login(&address.to_string(), user, PASSWORD).await?;
    client.run("SELECT INBOX").await?.ok()?;
    sent.store(true, Ordering::SeqCst);
    client.run(&format!("UID STORE {uid} +FLAGS.SILENT ({flag})")).await?.ok()?;
    client.logout().await;
    Ok(())
}

/// SELECT INBOX with CONDSTORE (RFC 7162) and fetch every message's UID, flags, MODSEQ
/// and Message-ID.
pub async fn read(address: SocketAddr, user: &str) -> anyhow::Result<MailboxRead> {
    let mut client = imap::Client::login(&address.to_string(), user, PASSWORD).await?;
    let selected = client.run("SELECT INBOX (CONDSTORE)").await?.ok()?;
    let code = |name: &str| {
        selected.untagged.iter().find_map(|response| {
            let text = response.text.strip_prefix("OK [")?;
            text.strip_prefix(name)?.strip_prefix(' ')?.split(']').next()?.parse::<u64>().ok()
        })
    };
    let uid_validity = code("UIDVALIDITY").context("SELECT without UIDVALIDITY")? as u32;
    let highest_modseq = code("HIGHESTMODSEQ").context("SELECT without HIGHESTMODSEQ")?;
    let fetched = client.run("UID FETCH 1:* (UID FLAGS MODSEQ BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").await?.ok()?;
    let mut messages = Vec::new();
    for response in &fetched.untagged {
        // Unsolicited FETCHes (another session's flag change) carry no header literal.
        let (Some(uid), Some(header)) = (response.fetch_uid(), response.literals.first()) else { continue };
        let header = String::from_utf8_lossy(header);
        let message_id = header
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("message-id").then(|| value.trim().trim_matches(['<', '>']).to_owned())
            })
            .unwrap_or_default();
        let mut flags: Vec<String> = response
            .fetch_flags()
            .unwrap_or_default()
            .split_whitespace()
            .filter(|flag| !flag.eq_ignore_ascii_case("\\Recent"))
            .map(str::to_owned)
            .collect();
        flags.sort();
        let modseq = response
            .text
            .find("MODSEQ (")
            .and_then(|start| response.text[start + 8..].split(')').next()?.parse().ok())
            .context("FETCH without MODSEQ")?;
        messages.push(SeenMessage { uid, message_id, flags, modseq });
    }
    messages.sort_by_key(|message| message.uid);
    messages.dedup_by_key(|message| message.uid);
    client.logout().await;
    Ok(MailboxRead { uid_validity, highest_modseq, messages })
}
