//! One POP3 session (RFC 1939): AUTHORIZATION, then TRANSACTION on a snapshot of the INBOX
//! taken at login, then UPDATE at QUIT, which removes the messages marked with DELE in one
//! replicated command. A replicated lease on the maildrop keeps other sessions out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use wmail_core::{Account, Core, ErrorCode, MessageRecord, now_ms};
use wmail_net::{Connection, LineRead, SessionStream, TlsAcceptor};

use crate::Pop3Config;
use wmail_net::DotStuffer;

/// Longest command line (RFC 2449 §4 allows 255 octets; AUTH responses may be longer).
const MAX_LINE: usize = 1024;
/// Pause after a failed login, to slow password guessing.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);
/// Most protocol errors before the session is closed.
const MAX_ERRORS: usize = 20;

/// One message of the maildrop snapshot.
struct Message {
    record: MessageRecord,
    deleted: bool,
}

/// The TRANSACTION state.
struct Maildrop {
    account: Account,
    mailbox_id: u64,
    uid_validity: u32,
    messages: Vec<Message>,
    lease: String,
    holder: String,
    renewed: Instant,
}

enum Flow {
    Continue,
    Close,
}

/// One client connection.
pub struct Session {
    core: Arc<Core>,
    config: Arc<Pop3Config>,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    connection: Connection,
    id: String,
    user: Option<String>,
    maildrop: Option<Maildrop>,
    /// Set when renewing the maildrop lease failed because another session took it.
    lease_lost: bool,
    errors: usize,
}

impl Session {
    /// Prepares a session for an accepted connection.
    pub fn new(
        core: Arc<Core>,
        config: Arc<Pop3Config>,
        tls: Option<TlsAcceptor>,
        peer: SocketAddr,
        stream: SessionStream,
    ) -> Self {
        Self {
            core,
            config,
            tls,
            peer,
            connection: Connection::new(stream, MAX_LINE),
            id: format!("{:016x}", rand::random::<u64>()),
            user: None,
            maildrop: None,
            lease_lost: false,
            errors: 0,
        }
    }

    fn ok(&mut self, text: &str) {
        self.connection.queue(format!("+OK {text}\r\n").as_bytes());
    }

    fn err(&mut self, text: &str) {
        self.errors += 1;
        self.connection.queue(format!("-ERR {text}\r\n").as_bytes());
    }

    /// Serves the session until QUIT, an error, the autologout timer or shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(session = %self.id, peer = %self.peer, "pop3 session started");
        self.ok(&format!("{} POP3 server ready", self.config.hostname));
        let timeout = self.config.idle_timeout;
        loop {
            // Pipelined LIST/RETR commands queue replies without a read in between: write
            // them out before taking more, so memory stays bounded.
            if self.connection.queued() > 64 * 1024 && self.connection.flush(timeout).await.is_err() {
                break;
            }
            if self.lease_lost {
                // RFC 1939 §8: exclusive access is gone; leave without UPDATE.
                self.err("[IN-USE] the maildrop lock was lost; no messages were deleted");
                self.maildrop = None;
                break;
            }
            let event = tokio::select! {
                event = self.connection.read_line(timeout) => event,
                () = wmail_net::stopped(&mut shutdown) => {
                    self.err("[SYS/TEMP] server shutting down");
                    break;
                }
            };
            let flow = match event {
                Ok(LineRead::Line(line)) => self.command(&line).await,
                Ok(LineRead::TooLong) => {
                    self.err("line too long");
                    Flow::Continue
                }
                // RFC 1939 §3: an autologout does not enter UPDATE; no deletions.
                Ok(LineRead::TimedOut) => {
                    self.err("autologout: idle for too long");
                    Flow::Close
                }
                Ok(LineRead::Closed) | Err(_) => Flow::Close,
            };
            if matches!(flow, Flow::Close) {
                break;
            }
            if self.errors > MAX_ERRORS {
                self.err("too many errors, closing connection");
                break;
            }
            self.renew_lease().await;
        }
        self.release_lease().await;
        self.connection.close(Duration::from_secs(5)).await;
        tracing::info!(session = %self.id, "pop3 session ended");
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, raw_argument) = match text.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument),
            None => (text.to_ascii_uppercase(), ""),
        };
        let argument = raw_argument.trim();
        tracing::debug!(session = %self.id, command = %verb, "command");
        let authorized = self.maildrop.is_some();
        match (verb.as_str(), authorized) {
            ("CAPA", _) => self.capa(),
            ("QUIT", false) => {
                self.ok("bye");
                return Flow::Close;
            }
            ("QUIT", true) => {
                self.update().await;
                return Flow::Close;
            }
            ("NOOP", true) => self.ok(""),
            ("STLS", false) => return self.stls().await,
            ("USER", false) => self.user(argument),
            // RFC 1939 §7: the password is everything after the space, spaces included.
            ("PASS", false) => return self.pass(raw_argument.to_owned()).await,
            ("AUTH", false) => return self.auth(argument).await,
            ("STAT", true) => self.stat(),
            ("LIST", true) => self.list(argument, false),
            ("UIDL", true) => self.list(argument, true),
            ("RETR", true) => return self.retrieve(argument, None).await,
            ("TOP", true) => {
                let mut parts = argument.split_whitespace();
                let (number, lines) = (parts.next().unwrap_or(""), parts.next().and_then(|l| l.parse().ok()));
                match (lines, parts.next()) {
                    (Some(lines), None) => return self.retrieve(number, Some(lines)).await,
                    _ => self.err("usage: TOP msg n"),
                }
            }
            ("DELE", true) => self.delete(argument),
            ("RSET", true) => {
                if let Some(maildrop) = self.maildrop.as_mut() {
                    maildrop.messages.iter_mut().for_each(|message| message.deleted = false);
                }
                self.ok("maildrop reset");
            }
            ("STLS" | "USER" | "PASS" | "AUTH", true) => self.err("already authenticated"),
            ("NOOP" | "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "RSET", false) => {
                self.err("authenticate first (USER/PASS or AUTH)")
            }
            _ => self.err("unknown command"),
        }
        Flow::Continue
    }

    fn auth_allowed(&self) -> bool {
        self.connection.is_tls() || self.config.allow_plaintext_auth
    }

    fn capa(&mut self) {
        let login_delay = format!("LOGIN-DELAY {}", self.config.login_delay.as_secs());
        let mut lines = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"];
        if !self.config.login_delay.is_zero() {
            lines.push(&login_delay);
        }
        if self.maildrop.is_none() {
            if self.auth_allowed() {
                lines.extend(["USER", "SASL PLAIN"]);
            }
            if self.tls.is_some() && !self.connection.is_tls() {
                lines.push("STLS");
            }
        }
        lines.push("IMPLEMENTATION wmail");
        let mut out = String::from("+OK capability list follows\r\n");
        for line in lines {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        self.connection.queue(out.as_bytes());
    }

    async fn stls(&mut self) -> Flow {
        let Some(acceptor) = self.tls.clone() else {
            self.err("STLS not available");
            return Flow::Continue;
        };
        if self.connection.is_tls() {
            self.err("already using TLS");
            return Flow::Continue;
        }
        self.ok("begin TLS negotiation");
        if self.connection.start_tls(&acceptor, Duration::from_secs(30)).await.is_err() {
            return Flow::Close;
        }
        self.user = None;
        Flow::Continue
    }

    fn user(&mut self, name: &str) {
        if !self.auth_allowed() {
            // RFC 2595 §4: no cleartext passwords before TLS.
            self.err("[AUTH] USER/PASS needs TLS first: use STLS");
        } else if name.is_empty() {
            self.err("usage: USER name");
        } else {
            self.user = Some(name.to_owned());
            self.ok("send PASS");
        }
    }

    async fn pass(&mut self, password: String) -> Flow {
        let Some(user) = self.user.take() else {
            self.err("send USER first");
            return Flow::Continue;
        };
        self.login(&user, &password).await
    }

    async fn auth(&mut self, argument: &str) -> Flow {
        if !self.auth_allowed() {
            self.err("[AUTH] authentication needs TLS first: use STLS");
            return Flow::Continue;
        }
        let mut parts = argument.split_whitespace();
        let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
        if mechanism != "PLAIN" {
            self.err("unsupported mechanism; use PLAIN");
            return Flow::Continue;
        }
        // RFC 5034 §4: an initial response, "=" for an empty one, or a "+" challenge.
        let response = match parts.next() {
            Some("=") => String::new(),
            Some(initial) => initial.to_owned(),
            None => {
                self.connection.queue(b"+ \r\n");
                match self.connection.read_line(self.config.idle_timeout).await {
                    Ok(LineRead::Line(line)) => String::from_utf8_lossy(&line).trim_end().to_owned(),
                    Ok(LineRead::TooLong) => String::from("!"),
                    _ => return Flow::Close,
                }
            }
        };
        if response == "*" {
            self.err("authentication cancelled");
            return Flow::Continue;
        }
        let Some((user, password)) = wmail_core::sasl::decode_plain(&response) else {
            self.err("cannot decode the authentication response");
            return Flow::Continue;
        };
        self.login(&user, &password).await
    }

    /// Checks the password, takes the maildrop lease and snapshots the INBOX.
    async fn login(&mut self, user: &str, password: &str) -> Flow {
        let account = match self.core.authenticate(user, password, Some(self.peer.ip())).await {
            Ok(account) => account,
            Err(error) if error.code == ErrorCode::Unavailable => {
                self.err(&format!("[SYS/TEMP] {}", error.message));
                return Flow::Continue;
            }
            Err(error) => {
                tracing::info!(session = %self.id, peer = %self.peer, %error, "pop3 authentication failed");
                tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                if error.message.starts_with("too many failed logins") {
                    self.err(&format!("[AUTH] {}", error.message));
                } else {
                    self.err("[AUTH] invalid user name or password");
                }
                return Flow::Continue;
            }
        };
        if !self.core.may_use(&account, wmail_core::Service::Pop3).unwrap_or(false) {
            self.err("[AUTH] POP3 is disabled for this account; ask your administrator");
            return Flow::Continue;
        }
        let lease = format!("pop3:{}", account.id);
        let holder = self.core.lease_holder(&self.id);
        let lease_ms = self.config.maildrop_lease.as_millis() as u64;
        match self.core.acquire_lease(&lease, &holder, now_ms() + lease_ms).await {
            Ok(()) => {}
            Err(error) if error.code == ErrorCode::Conflict => {
                // RFC 2449 §8.1.1.
                self.err("[IN-USE] the maildrop is in use by another session");
                return Flow::Continue;
            }
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "cannot lock the maildrop");
                self.err("[SYS/TEMP] cannot open the maildrop now; try again later");
                return Flow::Continue;
            }
        }
        // RFC 2449 §6.5 LOGIN-DELAY: a replicated lease that lapses after the delay marks
        // the last login, cluster-wide; a login while it holds is refused.
        if !self.config.login_delay.is_zero() {
            let until = now_ms() + self.config.login_delay.as_millis() as u64;
            if let Err(error) = self.core.acquire_lease(&format!("pop3-login:{}", account.id), &holder, until).await {
                let _ = self.core.release_lease(&lease, &holder).await;
                if error.code == ErrorCode::Conflict {
                    let seconds = self.config.login_delay.as_secs();
                    self.err(&format!("[LOGIN-DELAY] wait {seconds} seconds between logins"));
                } else {
                    self.err("[SYS/TEMP] cannot open the maildrop now; try again later");
                }
                return Flow::Continue;
            }
        }
        // See every message acknowledged anywhere in the cluster before this login.
        let snapshot = match self.core.read_barrier().await {
            Ok(()) => self.core.mailbox_with_messages(account.id, wmail_core::INBOX),
            Err(error) => Err(error),
        };
        let (mailbox, records) = match snapshot {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "cannot read the maildrop");
                let _ = self.core.release_lease(&lease, &holder).await;
                self.err("[SYS/TEMP] cannot read the maildrop now; try again later");
                return Flow::Continue;
            }
        };
        let count = records.len();
        self.maildrop = Some(Maildrop {
            account,
            mailbox_id: mailbox.id,
            uid_validity: mailbox.uid_validity,
            messages: records.into_iter().map(|record| Message { record, deleted: false }).collect(),
            lease,
            holder,
            renewed: Instant::now(),
        });
        self.ok(&format!("maildrop has {count} messages"));
        Flow::Continue
    }

    async fn renew_lease(&mut self) {
        let Some(maildrop) = self.maildrop.as_mut() else { return };
        if maildrop.renewed.elapsed() < self.config.maildrop_lease / 15 {
            return;
        }
        maildrop.renewed = Instant::now();
        let until = now_ms() + self.config.maildrop_lease.as_millis() as u64;
        match self.core.acquire_lease(&maildrop.lease, &maildrop.holder, until).await {
            Ok(()) => {}
            Err(error) if error.code == ErrorCode::Conflict => {
                tracing::warn!(session = %self.id, "the maildrop lease was taken over; ending the session");
                self.lease_lost = true;
            }
            Err(error) => tracing::warn!(session = %self.id, %error, "cannot renew the maildrop lease; retrying"),
        }
    }

    async fn release_lease(&mut self) {
        if let Some(maildrop) = self.maildrop.take()
            && let Err(error) = self.core.release_lease(&maildrop.lease, &maildrop.holder).await
        {
            tracing::warn!(session = %self.id, %error, "cannot release the maildrop lease; it expires by itself");
        }
    }

    /// Looks a message number up (1-based, not deleted).
    fn message(&mut self, argument: &str) -> Option<usize> {
        let maildrop = self.maildrop.as_ref()?;
        let number: Option<usize> = argument.parse().ok();
        match number {
            Some(number) if number >= 1 && number <= maildrop.messages.len() => {
                if maildrop.messages[number - 1].deleted {
                    self.err(&format!("message {number} is deleted"));
                    None
                } else {
                    Some(number - 1)
                }
            }
            _ => {
                self.err("no such message");
                None
            }
        }
    }

    fn stat(&mut self) {
        let Some(maildrop) = self.maildrop.as_ref() else { return };
        let live = maildrop.messages.iter().filter(|message| !message.deleted);
        let (count, size) = live.fold((0, 0), |(count, size), message| (count + 1, size + message.record.size));
        self.ok(&format!("{count} {size}"));
    }

    fn list(&mut self, argument: &str, unique_ids: bool) {
        let Some(uid_validity) = self.maildrop.as_ref().map(|m| m.uid_validity) else { return };
        // RFC 1939 §7: unique ids from UIDVALIDITY and UID are stable forever and the same
        // on every node.
        let describe = |message: &Message| {
            if unique_ids { format!("{uid_validity}.{}", message.record.uid) } else { message.record.size.to_string() }
        };
        if !argument.is_empty() {
            if let Some(index) = self.message(argument) {
                let line = describe(&self.maildrop.as_ref().expect("in transaction").messages[index]);
                self.ok(&format!("{} {line}", index + 1));
            }
            return;
        }
        let maildrop = self.maildrop.as_ref().expect("in transaction");
        let mut out = String::from("+OK listing follows\r\n");
        for (index, message) in maildrop.messages.iter().enumerate().filter(|(_, m)| !m.deleted) {
            out.push_str(&format!("{} {}\r\n", index + 1, describe(message)));
        }
        out.push_str(".\r\n");
        self.connection.queue(out.as_bytes());
    }

    fn delete(&mut self, argument: &str) {
        if let Some(index) = self.message(argument) {
            self.maildrop.as_mut().expect("in transaction").messages[index].deleted = true;
            self.ok(&format!("message {} deleted", index + 1));
        }
    }

    /// RETR (whole message) or TOP (header and `body_lines` lines), streamed from the blob
    /// store with dot-stuffing; memory stays bounded whatever the message size.
    async fn retrieve(&mut self, argument: &str, body_lines: Option<usize>) -> Flow {
        let Some(index) = self.message(argument) else { return Flow::Continue };
        let record = self.maildrop.as_ref().expect("in transaction").messages[index].record.clone();
        let mut stream = match self.core.blob_stream(&record.blob).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "cannot read a message body");
                self.err("[SYS/TEMP] cannot read the message now; try again later");
                return Flow::Continue;
            }
        };
        self.ok(&format!("{} octets", record.size));
        let mut stuffer = DotStuffer::new(body_lines);
        let mut out = Vec::with_capacity(64 * 1024);
        while !stuffer.is_done() {
            match stream.next().await {
                Some(Ok(chunk)) => stuffer.push(&chunk, &mut out),
                Some(Err(error)) => {
                    // The +OK is out: the only safe way to fail is to close the connection.
                    tracing::warn!(session = %self.id, %error, "message body failed mid-transfer");
                    return Flow::Close;
                }
                None => break,
            }
            if out.len() >= 64 * 1024 {
                self.connection.queue(&out);
                out.clear();
                if self.connection.flush(self.config.idle_timeout).await.is_err() {
                    return Flow::Close;
                }
                // A slow client may take longer than the lease to download a large message.
                self.renew_lease().await;
            }
        }
        stuffer.finish(&mut out);
        self.connection.queue(&out);
        Flow::Continue
    }

    /// RFC 1939 §6: the UPDATE state removes the messages marked as deleted.
    async fn update(&mut self) {
        let Some(maildrop) = self.maildrop.as_ref() else { return };
        let uids: Vec<u32> =
            maildrop.messages.iter().filter(|message| message.deleted).map(|message| message.record.uid).collect();
        let remaining = maildrop.messages.len() - uids.len();
        let (account_id, mailbox_id) = (maildrop.account.id, maildrop.mailbox_id);
        if uids.is_empty() {
            self.ok(&format!("bye ({remaining} messages left)"));
            return;
        }
        match self.core.expunge(account_id, mailbox_id, uids).await {
            Ok(_) => self.ok(&format!("bye ({remaining} messages left)")),
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "cannot remove deleted messages");
                self.err("[SYS/TEMP] some deleted messages were not removed");
            }
        }
    }
}
