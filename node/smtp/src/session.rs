//! One SMTP session: reads command lines (pipelined, RFC 2920), keeps the transaction
//! state, streams message data into core, and writes replies.
//!
//! ```text
//!  greeting ─► EHLO/HELO ─► [STARTTLS ─► EHLO] ─► [AUTH] ─► MAIL ─► RCPT+ ─► DATA | BDAT+ ─► 250
//!                 ▲                                            │
//!                 └──────────────── RSET / after each message ─┘
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, Request};
use tokio::sync::{mpsc, watch};
use wmail_core::{
    Account, Core, CoreError, DeliveryResult, ErrorCode, Folder, Notify, OutboundEnvelope, OutboundRecipient,
    RecipientResult, Ret, Submitted,
};
use wmail_net::{Connection, LineRead, SessionStream, TlsAcceptor};
use wmail_protection::{Action, ConnectionReport, Envelope, Protection, Refusal, SenderReport, Verdict, VerdictRecord};

use crate::body::{BodyAssembler, MissingHeaders};
use crate::limits::{LimitReached, SendLimiter};
use crate::reply::Reply;
use crate::{Mode, SmtpConfig};

/// Longest command line accepted, CRLF included. RFC 5321 §4.5.3.1.4 sets 512 as the
/// minimum; extensions (SMTPUTF8, DSN parameters) need more.
const MAX_COMMAND_LINE: usize = 1000;
/// Pause after a failed AUTH, to slow password guessing.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);

/// What happens after a command.
enum Flow {
    Continue,
    Close,
}

/// What the session hands to a delivery task.
enum Piece {
    /// More of the stored message.
    Data(Bytes),
    /// The message is complete: commit it. A channel closed without `End` (an error, RSET,
    /// a disconnect, a dropped session) aborts the delivery, so nothing partial is stored.
    End,
}

/// A message being received with DATA or BDAT: its delivery runs in its own task and
/// consumes the body through a bounded channel (backpressure, no whole-message buffer).
struct BodyInProgress {
    assembler: BodyAssembler,
    sender: Option<mpsc::Sender<Piece>>,
    /// The delivery task; `None` while the message is held for the inbound checks.
    delivery: Option<tokio::task::JoinHandle<wmail_core::Result<Submitted>>>,
    too_big: bool,
    /// A message held in memory for the inbound checks until its data is complete (then
    /// checked, rewritten and stored), or `None` when it streams straight into storage.
    scan: Option<ScanBuffer>,
    /// The verdict on a message that outgrew the scan limit and was streamed unscanned.
    unscanned: Option<Verdict>,
    /// The reply already decided for the message (an unscanned one refused on what the
    /// envelope showed); the rest of its data is discarded.
    settled: Option<Reply>,
    /// The antivirus scan of a message that outgrew the scan limit, fed as it is stored.
    virus_scan: Option<StreamedScan>,
}

/// The antivirus scan of a message too large to hold (it streams through clamd as it is
/// stored, so content rules are skipped but the virus scan never is).
enum StreamedScan {
    /// Opened with the first data stored (when an antivirus is configured).
    Pending,
    /// Being fed.
    Open(wmail_protection::clamd::Stream),
    /// clamd could not be reached.
    Failed(wmail_protection::clamd::ScanError),
}

/// A message held for the inbound checks.
struct ScanBuffer {
    /// Return-Path and Received, stored ahead of the verdict's headers.
    trace: Vec<u8>,
    /// The message as received.
    data: Vec<u8>,
    /// Memory reserved from the node's scan budget for `data`.
    reserved: Option<wmail_protection::ScanReservation>,
    /// The scan budget ran out: the message is refused with a temporary error.
    busy: bool,
}

/// The state of one mail transaction (MAIL .. end of data).
struct Transaction {
    reverse_path: String,
    /// Every accepted recipient, local and remote, in RCPT order.
    recipients: Vec<String>,
    /// The remote ones (authenticated submission only), for the outbound queue.
    outbound: Vec<OutboundRecipient>,
    /// RFC 3461 §4.4 ENVID and §4.3 RET.
    envid: Option<String>,
    ret: Option<Ret>,
    /// Local recipients that asked for a success notification (NOTIFY=SUCCESS), with
    /// their ORCPT.
    notify_success: Vec<(String, Option<String>)>,
    /// SPF of the HELO and MAIL FROM identities (inbound checks only).
    sender_report: Option<SenderReport>,
    body: Option<BodyInProgress>,
}

/// Who asked for success notifications, taken from a finished transaction.
struct SuccessReport {
    return_path: String,
    envid: Option<String>,
    /// Local recipients with NOTIFY=SUCCESS and their ORCPT.
    recipients: Vec<(String, Option<String>)>,
}

impl Transaction {
    fn local_recipients(&self) -> Vec<String> {
        let remote: std::collections::HashSet<&str> = self.outbound.iter().map(|r| r.address.as_str()).collect();
        self.recipients.iter().filter(|r| !remote.contains(r.as_str())).cloned().collect()
    }

    fn outbound_envelope(&self) -> Option<OutboundEnvelope> {
        (!self.outbound.is_empty()).then(|| OutboundEnvelope {
            eight_bit: false,
            // Only authenticated sessions get remote recipients, and their From: is checked.
            authenticated: true,
            return_path: self.reverse_path.clone(),
            envid: self.envid.clone(),
            ret: self.ret,
            recipients: self.outbound.clone(),
        })
    }
}

/// The client's answer to a SASL challenge.
enum SaslResponse {
    Text(String),
    /// The client sent `*` (already answered with 501).
    Cancelled,
    Closed,
}

/// Where a session reports its metrics.
pub struct Observer {
    /// The shared metrics.
    pub metrics: Arc<crate::SmtpMetrics>,
    /// The listener label.
    pub listener: &'static str,
}

impl Observer {
    fn message(&self, outcome: &str) {
        self.metrics.messages.with_label_values(&[self.listener, outcome]).inc();
    }

    fn refused_recipient(&self, reply: &Reply) {
        let reason = match reply.status.as_ref() {
            "5.1.1" => "unknown_user",
            "5.7.1" => "relay_denied",
            "4.3.2" => "outbound_unavailable",
            "5.2.2" => "mailbox_full",
            "5.2.1" => "mailbox_disabled",
            "4.5.3" => "too_many_recipients",
            "4.7.1" => "greylisted",
            _ => "other",
        };
        self.metrics.recipients_refused.with_label_values(&[self.listener, reason]).inc();
    }
}

/// The mail policies a session enforces.
pub struct Policies {
    /// Inbound checks (used on the MX listener only).
    pub protection: Option<Arc<Protection>>,
    /// Per-user sending limits (authenticated senders).
    pub send_limits: Option<Arc<SendLimiter>>,
}

/// One client connection.
pub struct Session {
    observer: Observer,
    core: Arc<Core>,
    config: Arc<SmtpConfig>,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    connection: Connection,
    id: String,
    helo: Option<String>,
    esmtp: bool,
    authenticated: Option<Account>,
    transaction: Option<Transaction>,
    /// The inbound checks, on the MX listener only.
    protection: Option<Arc<Protection>>,
    /// The connection checks (DNSBL, reverse DNS), started at connect, awaited at MAIL.
    connection_check: Option<tokio::task::JoinHandle<ConnectionReport>>,
    connection_report: Option<ConnectionReport>,
    /// Why the HELO name is refused, when it is (reported at MAIL).
    helo_refusal: Option<Refusal>,
    /// The client sent to a spam trap: nothing more is accepted from it.
    trapped: bool,
    /// The client is blocked and got 554 instead of the greeting.
    refused_at_greeting: bool,
    /// Per-user sending limits (authenticated senders).
    send_limits: Option<Arc<SendLimiter>>,
    messages: u64,
    rsets: usize,
    errors: usize,
}

fn reply(code: u16, status: impl Into<std::borrow::Cow<'static, str>>, text: impl Into<String>) -> Reply {
    Reply::new(code, status, text)
}

impl Session {
    /// Prepares a session for an accepted connection.
    pub fn new(
        core: Arc<Core>,
        config: Arc<SmtpConfig>,
        tls: Option<TlsAcceptor>,
        observer: Observer,
        peer: SocketAddr,
        stream: SessionStream,
        policies: Policies,
    ) -> Self {
        let Policies { protection, send_limits } = policies;
        let protection = protection.filter(|checks| config.mode == Mode::Mx && !checks.trusts(peer.ip()));
        Self {
            observer,
            core,
            config,
            tls,
            peer,
            connection: Connection::new(stream, MAX_COMMAND_LINE),
            id: format!("{:016x}", rand_u64()),
            helo: None,
            esmtp: false,
            authenticated: None,
            transaction: None,
            protection,
            connection_check: None,
            connection_report: None,
            helo_refusal: None,
            trapped: false,
            refused_at_greeting: false,
            send_limits,
            messages: 0,
            rsets: 0,
            errors: 0,
        }
    }

    fn is_tls(&self) -> bool {
        self.connection.is_tls()
    }

    fn send(&mut self, reply: Reply) {
        if !reply.is_positive() {
            self.errors += 1;
        }
        tracing::debug!(session = %self.id, code = reply.code, text = %reply.text, "reply");
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        self.connection.queue(&wire);
    }

    /// Serves the session until QUIT, a fatal error, a timeout or shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(session = %self.id, peer = %self.peer, tls = self.is_tls(), "smtp session started");
        // RFC 5321 §4.2: the greeting carries no enhanced status code (RFC 2034 §3).
        let kind = if self.config.mode == Mode::Lmtp { "LMTP" } else { "ESMTP" };
        // A client blocked for sending to a spam trap gets 554 instead of the greeting until
        // its block lapses; RFC 5321 §3.1: the session then waits for QUIT and answers any
        // other command with 503.
        let blocked = match &self.protection {
            Some(_) => self.core.client_block(self.peer.ip()).ok().flatten(),
            None => None,
        };
        if let Some(until_ms) = blocked {
            let until = chrono::DateTime::from_timestamp_millis(until_ms as i64).unwrap_or_default();
            let text = format!(
                "{} your address {} is blocked until {} UTC for sending to a spam trap",
                self.config.hostname,
                self.peer.ip(),
                until.format("%Y-%m-%d %H:%M")
            );
            self.send(reply(554, "", text));
            tracing::info!(session = %self.id, peer = %self.peer, "blocked client refused");
            self.refused_at_greeting = true;
        } else {
            let greeting = format!("{} {kind} wmail ready", self.config.hostname);
            self.send(reply(220, "", greeting));
        }
        if let Some(protection) = self.protection.clone().filter(|_| !self.refused_at_greeting) {
            let client = self.peer.ip();
            self.connection_check = Some(tokio::spawn(async move { protection.connection(client).await }));
        }
        loop {
            let timeout = self.config.command_timeout;
            let event = tokio::select! {
                event = self.connection.read_line(timeout) => event,
                () = wmail_net::stopped(&mut shutdown) => {
                    self.send(reply(421, "4.3.2", format!("{} shutting down, try again later", self.config.hostname)));
                    break;
                }
            };
            let flow = match event {
                Ok(LineRead::Line(line)) => self.command(line).await,
                Ok(LineRead::TooLong) => {
                    self.errors += 1;
                    self.send(reply(500, "5.5.2", "line too long"));
                    Ok(Flow::Continue)
                }
                Ok(LineRead::Closed) | Err(_) => break,
                Ok(LineRead::TimedOut) => {
                    self.send(reply(421, "4.4.2", format!("{} timeout, closing connection", self.config.hostname)));
                    Ok(Flow::Close)
                }
            };
            match flow {
                Ok(Flow::Continue) if self.errors > self.config.max_errors => {
                    self.send(reply(421, "4.7.0", "too many errors, closing connection"));
                    break;
                }
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) | Err(_) => break,
            }
        }
        self.abort_body().await;
        self.connection.close(Duration::from_secs(5)).await;
        tracing::info!(session = %self.id, messages = self.messages, "smtp session ended");
    }

    async fn command(&mut self, line: BytesMut) -> io::Result<Flow> {
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.contains(&b'\r') || body.contains(&0) {
            // RFC 5321 §2.3.8: CR only before LF; NUL is never part of a command.
            self.send(reply(501, "5.5.2", "syntax error: bare CR or NUL in command"));
            return Ok(Flow::Continue);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(error) => {
                self.send(parse_error_reply(error));
                return Ok(Flow::Continue);
            }
        };
        tracing::debug!(session = %self.id, command = request.name(), "command");
        if self.refused_at_greeting {
            if matches!(request, Request::Quit) {
                self.send(reply(221, "2.0.0", format!("{} closing connection", self.config.hostname)));
                return Ok(Flow::Close);
            }
            self.send(reply(503, "5.5.1", "this server refused the connection; send QUIT"));
            return Ok(Flow::Continue);
        }
        match request {
            // RFC 2033 §4.1: LMTP knows LHLO only; SMTP does not know it.
            Request::Lhlo { host } if self.config.mode == Mode::Lmtp => self.ehlo(host, true).await,
            Request::Ehlo { .. } | Request::Helo { .. } if self.config.mode == Mode::Lmtp => {
                self.send(reply(500, "5.5.1", "this is LMTP: use LHLO"))
            }
            Request::Ehlo { host } => self.ehlo(host, true).await,
            Request::Helo { host } => self.ehlo(host, false).await,
            Request::Lhlo { .. } => self.send(reply(500, "5.5.1", "LHLO is for LMTP; this is SMTP")),
            Request::Mail { from } => self.mail(from).await?,
            Request::Rcpt { to } => self.rcpt(to).await?,
            Request::Data => return self.data().await,
            Request::Bdat { chunk_size, is_last } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.rsets += 1;
                self.abort_body().await;
                if self.rsets > self.config.max_rsets {
                    self.send(reply(421, "4.7.0", "too many RSET commands, closing connection"));
                    return Ok(Flow::Close);
                }
                self.send(reply(250, "2.0.0", "OK"));
            }
            Request::Noop { .. } => self.send(reply(250, "2.0.0", "OK")),
            Request::Quit => {
                self.send(reply(221, "2.0.0", format!("{} closing connection", self.config.hostname)));
                return Ok(Flow::Close);
            }
            // RFC 5321 §3.5.3: VRFY may answer 252 without revealing whether a user exists.
            Request::Vrfy { value } => {
                let reply = self.vrfy(&value);
                self.send(reply)
            }
            Request::Expn { value } => {
                let reply = self.expn(&value);
                self.send(reply)
            }
            Request::Help { .. } => self.send(reply(
                214,
                "2.0.0",
                "see RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS AUTH",
            )),
            Request::StartTls => return self.starttls().await,
            Request::Auth { mechanism, initial_response } => return self.auth(mechanism, initial_response).await,
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.send(reply(502, "5.5.1", "command not implemented"))
            }
        }
        Ok(Flow::Continue)
    }

    async fn ehlo(&mut self, host: String, esmtp: bool) {
        // RFC 5321 §4.1.4: EHLO/HELO reset the transaction state.
        self.abort_body().await;
        self.transaction = None;
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        if let Some(protection) = &self.protection {
            self.helo_refusal = protection.helo(self.peer.ip(), &host).await;
        }
        let first = format!("{} hello {host} [{}]", self.config.hostname, self.peer.ip());
        if !esmtp {
            self.send(reply(250, "", first));
            return;
        }
        let mut lines = vec![
            first,
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
            "DSN".to_owned(),
        ];
        if self.tls.is_some() && !self.is_tls() {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        lines.push("HELP".to_owned());
        self.send(reply(250, "", lines.join("\n")));
    }

    /// RFC 5321 §3.5: VRFY. Unless enabled, 252 without saying whether the user exists.
    fn vrfy(&self, value: &str) -> Reply {
        let address = value.trim().trim_start_matches('<').trim_end_matches('>');
        if !self.config.vrfy || !address.contains('@') {
            return reply(252, "2.0.0", "cannot VRFY user, but will accept the message and attempt delivery");
        }
        let domain = address.rsplit_once('@').map(|(_, domain)| domain).unwrap_or_default();
        match (self.core.is_local_domain(domain), self.core.resolve_recipient(address)) {
            (Ok(true), Ok(accounts)) if !accounts.is_empty() => reply(250, "2.1.5", format!("<{address}>")),
            (Ok(true), _) => reply(550, "5.1.1", format!("<{address}>: no such user here")),
            _ => reply(252, "2.0.0", "not a local address; will attempt delivery"),
        }
    }

    /// RFC 5321 §3.5: EXPN lists an alias's members, when enabled.
    fn expn(&self, value: &str) -> Reply {
        if !self.config.expn {
            return reply(502, "5.5.1", "EXPN is disabled");
        }
        let address = value.trim().trim_start_matches('<').trim_end_matches('>');
        match self.core.alias_targets(address) {
            Ok(Some(targets)) if !targets.is_empty() => {
                reply(250, "2.1.5", targets.iter().map(|target| format!("<{target}>")).collect::<Vec<_>>().join("\n"))
            }
            _ => reply(550, "5.1.1", format!("<{address}>: no such list here")),
        }
    }

    fn auth_offered(&self) -> bool {
        self.config.mode.requires_auth()
            && self.authenticated.is_none()
            && (self.is_tls() || self.config.allow_plaintext_auth)
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> io::Result<()> {
        if self.trapped {
            self.send(reply(550, "5.7.1", "your address is blocked"));
            return Ok(());
        }
        if self.helo.is_none() {
            self.send(reply(503, "5.5.1", "send EHLO or HELO first"));
            return Ok(());
        }
        if self.transaction.is_some() {
            self.send(reply(503, "5.5.1", "nested MAIL command; send RSET first"));
            return Ok(());
        }
        if self.config.mode.requires_auth() && self.authenticated.is_none() {
            // RFC 4954 §6: submission needs authentication first.
            self.send(reply(530, "5.7.0", "authentication required"));
            return Ok(());
        }
        // RFC 5321 §4.1.1.11: parameters of extensions not offered are refused (555).
        if from.flags & smtp_proto::MAIL_REQUIRETLS != 0 || from.hold_for != 0 || from.hold_until != 0 {
            self.send(reply(555, "5.5.4", "unsupported MAIL parameter (REQUIRETLS and FUTURERELEASE are not offered)"));
            return Ok(());
        }
        // RFC 3461 §4.3, §4.4.
        let ret = match (from.flags & smtp_proto::MAIL_RET_FULL != 0, from.flags & smtp_proto::MAIL_RET_HDRS != 0) {
            (true, true) => {
                self.send(reply(501, "5.5.4", "RET may be given once: FULL or HDRS"));
                return Ok(());
            }
            (true, false) => Some(Ret::Full),
            (false, true) => Some(Ret::Headers),
            (false, false) => None,
        };
        if from.env_id.as_ref().is_some_and(|id| id.len() > 100) {
            self.send(reply(501, "5.5.4", "ENVID is longer than 100 characters"));
            return Ok(());
        }
        if from.size as u64 > self.config.max_message_size {
            // RFC 1870 §6.
            let text = format!("message size exceeds the fixed maximum of {} bytes", self.config.max_message_size);
            self.send(reply(552, "5.3.4", text));
            return Ok(());
        }
        // A nearly full data disk: refuse before the client sends the data (452 4.3.1).
        if let Err(error) = self.core.check_disk_space() {
            self.send(core_error_reply(&error));
            return Ok(());
        }
        let reverse_path = from.address.clone();
        if let Some(account) = &self.authenticated {
            let allowed = !reverse_path.is_empty() && self.core.may_send_as(account, &reverse_path).unwrap_or(false);
            if !allowed {
                let text = format!("{} is not authorised to send as <{reverse_path}>", account.address);
                self.send(reply(553, "5.7.1", text));
                return Ok(());
            }
        }
        let sender_report = match self.sender_checks(&reverse_path).await {
            Ok(report) => report,
            Err(refusal) => {
                self.send(refusal_reply(&refusal));
                return Ok(());
            }
        };
        self.transaction = Some(Transaction {
            reverse_path,
            recipients: Vec::new(),
            outbound: Vec::new(),
            envid: from.env_id,
            ret,
            notify_success: Vec::new(),
            sender_report,
            body: None,
        });
        self.send(reply(250, "2.1.0", "sender OK"));
        Ok(())
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> io::Result<()> {
        if self.trapped {
            self.send(reply(550, "5.7.1", "your address is blocked"));
            return Ok(());
        }
        let Some(transaction) = &self.transaction else {
            self.send(reply(503, "5.5.1", "need MAIL before RCPT"));
            return Ok(());
        };
        if transaction.body.is_some() {
            // RFC 3030 §2: the recipients are fixed once message data has begun.
            self.send(reply(503, "5.5.1", "RCPT is not allowed after BDAT"));
            return Ok(());
        }
        if transaction.recipients.len() >= self.config.max_recipients {
            // RFC 5321 §4.5.3.1.10.
            self.send(reply(452, "4.5.3", "too many recipients"));
            return Ok(());
        }
        // RFC 3461 §4.1: NEVER excludes the others.
        let never = to.flags & smtp_proto::RCPT_NOTIFY_NEVER != 0;
        let notify = if to.flags == 0 {
            Notify::default()
        } else if never && to.flags != smtp_proto::RCPT_NOTIFY_NEVER {
            self.send(reply(501, "5.5.4", "NOTIFY=NEVER cannot be combined with other values"));
            return Ok(());
        } else {
            Notify {
                success: to.flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
                failure: to.flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
                delay: to.flags & smtp_proto::RCPT_NOTIFY_DELAY != 0,
            }
        };
        let orcpt = to.orcpt.map(|address| format!("rfc822;{address}"));
        let mut address = to.address;
        // smtp-proto hands "<postmaster>" over as an empty address (RCPT never has a null path).
        if address.is_empty() || address.eq_ignore_ascii_case("postmaster") {
            // RFC 5321 §4.5.1: "postmaster" without a domain must be accepted.
            match self.core.postmaster() {
                Ok(Some(postmaster)) => address = postmaster,
                _ => {
                    let text = "no postmaster mailbox here; the administrator should create postmaster@<domain>";
                    self.send(reply(550, "5.1.1", text));
                    return Ok(());
                }
            }
        }
        if let Some(protection) = self.protection.clone()
            && protection.is_trap(&address)
        {
            // The seeds' trap mailbox: the client is blocked on every node for a while. It
            // is told what any unknown address gets, so the trap stays unknown.
            self.trapped = true;
            let (client, block) = (self.peer.ip(), protection.config().trap_block);
            tracing::warn!(session = %self.id, %client, trap = %address, "spam trap hit; blocking the client");
            if let Err(error) = self.core.block_client(client, block, &format!("sent to the spam trap {address}")).await
            {
                tracing::warn!(session = %self.id, %error, "cannot block the client cluster-wide");
            }
            self.abort_body().await;
            self.send(reply(550, "5.1.1", format!("<{address}>: no such user here")));
            return Ok(());
        }
        let domain = address.rsplit_once('@').map(|(_, domain)| domain).unwrap_or_default();
        let reply = match self.core.is_local_domain(domain) {
            Ok(true) => {
                let mut reply = self.local_recipient(&address);
                if reply.is_positive()
                    && let Some(deferral) = self.greylist(&address).await
                {
                    reply = deferral;
                }
                if reply.is_positive() && notify.success {
                    let transaction = self.transaction.as_mut().expect("checked above");
                    transaction.notify_success.push((address.clone(), orcpt.clone()));
                }
                reply
            }
            Ok(false) if self.config.mode == Mode::Lmtp => {
                reply(550, "5.1.1", format!("<{address}> is not a local address"))
            }
            Ok(false) if self.authenticated.is_some() => {
                if address.rsplit_once('@').is_none_or(|(local, domain)| local.is_empty() || domain.is_empty()) {
                    reply(501, "5.1.3", format!("bad recipient address syntax: <{address}>"))
                } else {
                    let transaction = self.transaction.as_mut().expect("checked above");
                    if !transaction.outbound.iter().any(|r| r.address == address) {
                        transaction.outbound.push(OutboundRecipient {
                            address: address.clone(),
                            orcpt,
                            notify,
                            relay: None,
                        });
                    }
                    reply(250, "2.1.5", "recipient OK; will be relayed")
                }
            }
            Ok(false) => reply(550, "5.7.1", format!("relaying to <{address}> denied")),
            Err(error) => core_error_reply(&error),
        };
        let reply = match (&self.authenticated, &self.send_limits) {
            (Some(account), Some(limits)) if reply.is_positive() => {
                match limits.admit_recipient(account.id, wmail_core::now_ms()) {
                    Ok(()) => reply,
                    Err(reached) => limit_reply(reached),
                }
            }
            _ => reply,
        };
        if reply.is_positive() {
            self.transaction.as_mut().expect("checked above").recipients.push(address);
        } else {
            self.observer.refused_recipient(&reply);
        }
        self.send(reply);
        Ok(())
    }

    /// Greylisting of the current sender and `recipient` (RFC 6647), shared by every node:
    /// the deferral when the triplet must wait.
    async fn greylist(&self, recipient: &str) -> Option<Reply> {
        let protection = self.protection.as_ref()?;
        let sender = &self.transaction.as_ref()?.reverse_path;
        let settings = protection.greylisting(self.peer.ip(), sender)?;
        let policy = wmail_core::GreylistPolicy {
            delay: settings.delay,
            retry_window: settings.retry_window,
            lifetime: settings.lifetime,
        };
        match self.core.greylist(self.peer.ip(), sender, recipient, &policy).await {
            Ok(wmail_core::GreylistDecision::Pass) => None,
            Ok(wmail_core::GreylistDecision::Defer { retry_in }) => {
                tracing::info!(session = %self.id, %sender, %recipient, "greylisted");
                let seconds = retry_in.as_secs().max(1);
                Some(reply(451, "4.7.1", format!("greylisted: please try again in {seconds} seconds (RFC 6647)")))
            }
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "greylisting failed; the recipient is not held back");
                None
            }
        }
    }

    fn local_recipient(&self, address: &str) -> Reply {
        let (accounts, forwards) = match self.core.resolve_with_forwards(address) {
            Ok(resolution) => (resolution.accounts, resolution.forwards),
            Err(error) if error.code == ErrorCode::InvalidInput => {
                return reply(501, "5.1.3", format!("bad recipient address syntax: {}", error.message));
            }
            Err(error) => return core_error_reply(&error),
        };
        if accounts.is_empty() {
            if !forwards.is_empty() {
                return reply(250, "2.1.5", "recipient OK; will be forwarded");
            }
            return reply(550, "5.1.1", format!("<{address}>: no such user here"));
        }
        if accounts.len() == 1 {
            let account = self.core.account_by_id(accounts[0]).ok().flatten();
            if let Some(account) = account {
                if !account.state.receives_mail() {
                    return reply(550, "5.2.1", format!("<{address}>: mailbox disabled"));
                }
                if account.quota_bytes.is_some_and(|quota| account.used_bytes >= quota) {
                    return reply(552, "5.2.2", format!("<{address}>: mailbox full"));
                }
            }
        }
        reply(250, "2.1.5", "recipient OK")
    }

    /// The inbound checks of the sender at MAIL: the connection checks started at connect
    /// (DNSBL, reverse DNS), the HELO name, and SPF; the refusal one of them leads to.
    async fn sender_checks(&mut self, reverse_path: &str) -> Result<Option<SenderReport>, Refusal> {
        let Some(protection) = self.protection.clone() else { return Ok(None) };
        if let Some(check) = self.connection_check.take() {
            self.connection_report = Some(check.await.unwrap_or_default());
        }
        if let Some(refusal) = self.connection_report.as_ref().and_then(|report| report.refusal.clone()) {
            tracing::info!(session = %self.id, peer = %self.peer, reason = %refusal.text, "client refused");
            return Err(refusal);
        }
        if let Some(refusal) = self.helo_refusal.clone() {
            return Err(refusal);
        }
        let helo = self.helo.clone().unwrap_or_default();
        let report = protection.sender(self.peer.ip(), &helo, reverse_path).await;
        if let Some(refusal) = report.as_ref().and_then(|report| protection.sender_refusal(report)) {
            tracing::info!(session = %self.id, sender = %reverse_path, reason = %refusal.text, "sender refused");
            return Err(refusal);
        }
        Ok(report)
    }

    /// Starts the delivery task of a transaction's message, filed into `folder`.
    fn spawn_delivery(
        &self,
        transaction: &Transaction,
        folder: Folder,
    ) -> (mpsc::Sender<Piece>, tokio::task::JoinHandle<wmail_core::Result<Submitted>>) {
        let (sender, mut receiver) = mpsc::channel::<Piece>(8);
        let core = self.core.clone();
        let recipients = transaction.local_recipients();
        let outbound = transaction.outbound_envelope();
        let return_path = transaction.reverse_path.clone();
        let delivery = tokio::spawn(async move {
            let mut ended = false;
            let body = futures::stream::poll_fn(move |context| {
                if ended {
                    return std::task::Poll::Ready(None);
                }
                receiver.poll_recv(context).map(|piece| match piece {
                    Some(Piece::Data(bytes)) => Some(Ok(bytes)),
                    Some(Piece::End) => {
                        ended = true;
                        None
                    }
                    None => {
                        ended = true;
                        Some(Err(io::Error::other("the SMTP transaction ended before its data was complete")))
                    }
                })
            });
            core.submit_filed(&recipients, &return_path, outbound, body, folder).await
        });
        (sender, delivery)
    }

    /// Starts receiving the current transaction's message: straight into storage, or (with
    /// inbound checks) into a scan buffer first.
    fn begin_body(&mut self) -> Option<&mut BodyInProgress> {
        let submission = self.config.mode.requires_auth();
        let trace = self.trace_headers();
        let hostname = self.config.hostname.clone();
        let scanning = self.protection.is_some();
        let limited = self.authenticated.is_some() && self.send_limits.is_some();
        let transaction = self.transaction.take()?;
        let mut transaction = transaction;
        if transaction.body.is_none() {
            let missing = submission.then(|| MissingHeaders {
                date: chrono::Utc::now().to_rfc2822(),
                message_id: format!("<{:016x}{:016x}@{hostname}>", rand_u64(), rand_u64()),
            });
            let (assembler, sender, delivery, scan) = if scanning {
                // The trace headers are stored ahead of the verdict's, so they are kept aside.
                let scan = ScanBuffer { trace, data: Vec::new(), reserved: None, busy: false };
                (BodyAssembler::new(Vec::new(), missing), None, None, Some(scan))
            } else {
                let (sender, delivery) = self.spawn_delivery(&transaction, Folder::Inbox);
                (BodyAssembler::new(trace, missing), Some(sender), Some(delivery), None)
            };
            let mut assembler = assembler;
            if !transaction.notify_success.is_empty() || scanning || limited {
                assembler.keep_header_section();
            }
            transaction.body = Some(BodyInProgress {
                assembler,
                sender,
                delivery,
                too_big: false,
                scan,
                unscanned: None,
                settled: None,
                virus_scan: None,
            });
        }
        self.transaction = Some(transaction);
        self.transaction.as_mut().and_then(|t| t.body.as_mut())
    }

    /// What the inbound checks know of the current transaction.
    fn envelope<'a>(&'a self, transaction: &'a Transaction) -> Envelope<'a> {
        static NO_REPORT: std::sync::OnceLock<ConnectionReport> = std::sync::OnceLock::new();
        Envelope {
            client: self.peer.ip(),
            helo: self.helo.as_deref().unwrap_or(""),
            mail_from: &transaction.reverse_path,
            recipients: &transaction.recipients,
            connection: self.connection_report.as_ref().unwrap_or_else(|| NO_REPORT.get_or_init(Default::default)),
            sender: transaction.sender_report.as_ref(),
            allowed_sender: self
                .core
                .sender_allowed_by_all(&transaction.recipients, &transaction.reverse_path)
                .unwrap_or(false),
            bayes: None,
        }
    }

    /// Adds a verdict to the node's verdict log.
    fn log_verdict(&self, transaction: &Transaction, header: &[u8], verdict: &Verdict) {
        let Some(protection) = &self.protection else { return };
        let parsed = mail_parser::MessageParser::new().parse_headers(header);
        let message_id = parsed.as_ref().and_then(|m| m.message_id()).map(str::to_owned);
        let from =
            parsed.as_ref().and_then(|m| m.from()).and_then(|f| f.first()).and_then(|a| a.address()).map(str::to_owned);
        let subject = parsed.as_ref().and_then(|m| m.subject()).map(|s| s.chars().take(200).collect());
        let record = VerdictRecord {
            time_ms: wmail_core::now_ms(),
            queue_id: format!("{}.{}", self.id, self.messages + 1),
            client: self.peer.ip().to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: transaction.reverse_path.clone(),
            recipients: transaction.recipients.clone(),
            message_id,
            from,
            subject,
            verdict: verdict.clone_without_message(),
        };
        tracing::info!(
            session = %self.id, action = verdict.action.label(), score = verdict.score,
            message_id = record.message_id.as_deref().unwrap_or(""), "inbound verdict"
        );
        protection.log().record(&record);
    }

    /// Return-Path and Received headers (RFC 5321 §4.4; RFC 3848 protocol names).
    fn trace_headers(&self) -> Vec<u8> {
        let Some(transaction) = &self.transaction else { return Vec::new() };
        let protocol = match (self.esmtp, self.is_tls(), self.authenticated.is_some()) {
            _ if self.config.mode == Mode::Lmtp => "LMTP",
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let mut received = format!(
            "Return-Path: <{}>\r\nReceived: from {} ([{}])\r\n\tby {} (wmail) with {protocol}",
            transaction.reverse_path,
            self.helo.as_deref().unwrap_or("unknown"),
            self.peer.ip(),
            self.config.hostname
        );
        if let Some(tls) = self.connection.tls_description() {
            received.push_str(&format!("\r\n\t(using {tls})"));
        }
        if let Some(account) = &self.authenticated {
            received.push_str(&format!("\r\n\t(authenticated as {})", account.address));
        }
        received.push_str(&format!("\r\n\tid {}.{}", self.id, self.messages + 1));
        if let [recipient] = transaction.recipients.as_slice() {
            received.push_str(&format!("\r\n\tfor <{recipient}>"));
        }
        received.push_str(&format!("; {}\r\n", chrono::Utc::now().to_rfc2822()));
        received.into_bytes()
    }

    /// Passes data to the delivery task (or drops it once the message is too big).
    /// `added`: bytes of `data` the server added (CRs before bare LFs), which do not count
    /// against the client's size limit.
    async fn feed_body(&mut self, data: &[u8], added: u64) {
        let max = self.config.max_message_size;
        let Some(body) = self.transaction.as_mut().and_then(|t| t.body.as_mut()) else { return };
        if body.too_big {
            return;
        }
        let chunks = body.assembler.push(data);
        body.assembler.uncount(added);
        if body.assembler.data_size() > max {
            body.too_big = true;
            body.sender = None; // aborts the delivery
            body.scan = None;
            return;
        }
        let chunks = match self.hold_for_scan(chunks) {
            Some(chunks) => chunks,
            None => return,
        };
        self.feed_virus_scan(&chunks).await;
        let Some(body) = self.transaction.as_mut().and_then(|t| t.body.as_mut()) else { return };
        if let Some(sender) = &body.sender {
            for chunk in chunks {
                if sender.send(Piece::Data(chunk)).await.is_err() {
                    break; // the delivery failed early; its result says why
                }
            }
        }
    }

    /// Feeds what is stored of a message over the scan limit to its antivirus scan (opening
    /// it with the first data).
    async fn feed_virus_scan(&mut self, chunks: &[Bytes]) {
        let Some(body) = self.transaction.as_mut().and_then(|t| t.body.as_mut()) else { return };
        if matches!(body.virus_scan, Some(StreamedScan::Pending)) {
            let opened = match &self.protection {
                Some(protection) => protection.stream_scan().await,
                None => None,
            };
            body.virus_scan = opened.map(|opened| match opened {
                Ok(stream) => StreamedScan::Open(stream),
                Err(error) => StreamedScan::Failed(error),
            });
        }
        if let Some(StreamedScan::Open(stream)) = &mut body.virus_scan {
            for chunk in chunks {
                stream.push(chunk).await;
            }
        }
    }

    /// Ends the antivirus scan of a message over the scan limit; returns the refusal it
    /// leads to (a virus, or clamd failing when that defers mail), noted in its verdict.
    async fn finish_virus_scan(&mut self) -> Option<Reply> {
        let protection = self.protection.clone()?;
        let body = self.transaction.as_mut()?.body.as_mut()?;
        let result = match body.virus_scan.take()? {
            StreamedScan::Pending => return None, // nothing was stored
            StreamedScan::Open(stream) => stream.finish().await,
            StreamedScan::Failed(error) => Err(error),
        };
        let verdict = body.unscanned.get_or_insert_with(Verdict::default);
        protection.judge_stream_scan(result, verdict).map(|refusal| refusal_reply(&refusal))
    }

    /// Keeps chunks of a message held for the inbound checks, within the scan size limit and
    /// the node's scan memory budget. Returns the chunks to stream to storage: all of them
    /// when the message is not held, or (once it outgrows the scan limit) what was held
    /// so far, behind an `Authentication-Results` header with the envelope's results.
    fn hold_for_scan(&mut self, chunks: Vec<Bytes>) -> Option<Vec<Bytes>> {
        let Some(protection) = self.protection.clone() else { return Some(chunks) };
        let body = self.transaction.as_mut()?.body.as_mut()?;
        let Some(scan) = body.scan.as_mut() else { return Some(chunks) };
        if scan.busy {
            return None; // discarded: the message is deferred at its end
        }
        let incoming: usize = chunks.iter().map(Bytes::len).sum();
        if scan.data.len() + incoming <= protection.config().max_scan_size {
            if protection.reserve_scan_memory(self.peer.ip(), &mut scan.reserved, scan.data.len() + incoming) {
                chunks.iter().for_each(|chunk| scan.data.extend_from_slice(chunk));
            } else {
                tracing::warn!(session = %self.id, "scan memory budget exhausted; the message will be deferred");
                *scan = ScanBuffer { trace: Vec::new(), data: Vec::new(), reserved: None, busy: true };
            }
            return None;
        }
        // Too large to scan: store it as it comes, as what the envelope showed decides.
        let mut transaction = self.transaction.take()?;
        let verdict = protection.unscanned(&self.envelope(&transaction));
        let folder = match &verdict.action {
            Action::Refuse(refusal) => {
                let body = transaction.body.as_mut()?;
                body.scan = None;
                body.settled = Some(refusal_reply(refusal));
                body.unscanned = Some(verdict);
                self.transaction = Some(transaction);
                return None;
            }
            // Too large to hold for the quarantine: Junk is the nearest place.
            Action::Junk { .. } | Action::Quarantine { .. } => Folder::Junk,
            Action::Deliver | Action::Tag => Folder::Inbox,
        };
        let (sender, delivery) = self.spawn_delivery(&transaction, folder);
        let body = transaction.body.as_mut()?;
        let scan = body.scan.take()?;
        body.virus_scan = Some(StreamedScan::Pending);
        let mut held = scan.trace;
        held.extend_from_slice(&protection.rewrite(&verdict, &scan.data));
        let mut out = vec![Bytes::from(held)];
        out.extend(chunks);
        body.sender = Some(sender);
        body.delivery = Some(delivery);
        body.unscanned = Some(verdict);
        self.transaction = Some(transaction);
        Some(out)
    }

    /// Runs the inbound checks on a held message and starts its delivery as the verdict
    /// says; returns the final reply instead when the verdict settles it (refused, or held
    /// in quarantine).
    async fn deliver_scanned(&mut self, transaction: &mut Transaction) -> Option<Reply> {
        let protection = self.protection.clone()?;
        let scan = transaction.body.as_mut()?.scan.take()?;
        if scan.busy {
            return Some(reply(451, "4.3.1", "the server is busy checking other messages; try again later"));
        }
        let mut envelope = self.envelope(transaction);
        // The classifier of the domain the first recipient's account is in (an alias domain
        // learns nothing of its own).
        let account_domain = transaction
            .recipients
            .first()
            .and_then(|recipient| self.core.resolve_recipient(recipient).ok()?.first().copied())
            .and_then(|account_id| self.core.account_by_id(account_id).ok()?)
            .and_then(|account| account.address.rsplit_once('@').map(|(_, domain)| domain.to_owned()));
        if protection.config().bayes
            && let Some(domain) = account_domain
        {
            let minimum = protection.config().bayes_min_messages;
            let ask = || self.core.bayes_probability(&domain, &scan.data, minimum);
            // Tokenising is CPU work: off the async workers when the runtime allows.
            let answer = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(ask),
                _ => ask(),
            };
            envelope.bayes = answer.unwrap_or_else(|error| {
                tracing::warn!(session = %self.id, %error, "cannot ask the spam classifier");
                None
            });
        }
        let verdict = protection.message(&envelope, &scan.data).await;
        self.log_verdict(transaction, &scan.data, &verdict);
        let mut stored = scan.trace;
        stored.extend_from_slice(&protection.rewrite(&verdict, &scan.data));
        let folder = match &verdict.action {
            Action::Refuse(refusal) => {
                self.observer.message(if refusal.code >= 500 { "rejected" } else { "deferred" });
                return Some(refusal_reply(refusal));
            }
            Action::Quarantine { reason }
                if !self.core.recipients_forward(&transaction.local_recipients()).unwrap_or(true) =>
            {
                let headers = mail_parser::MessageParser::new().parse_headers(&scan.data);
                let info = wmail_core::QuarantineInfo {
                    sender: transaction.reverse_path.clone(),
                    from: headers.as_ref().and_then(|m| m.from()?.first()?.address().map(str::to_owned)),
                    subject: headers.as_ref().and_then(|m| m.subject().map(|s| s.chars().take(200).collect())),
                    reason: reason.clone(),
                };
                drop(scan.data);
                let body = futures::stream::once(async move { Ok(Bytes::from(stored)) });
                let recipients = transaction.local_recipients();
                return Some(match self.core.quarantine(&recipients, body, info).await {
                    Ok(ids) => {
                        self.observer.message("quarantined");
                        tracing::info!(session = %self.id, held = ids.len(), "message held in quarantine");
                        reply(250, "2.0.0", format!("OK: queued as {}.{}", self.id, self.messages + 1))
                    }
                    Err(error) => core_error_reply(&error),
                });
            }
            // A recipient forwards elsewhere: hold nothing back from it, file it as junk.
            Action::Junk { .. } | Action::Quarantine { .. } => Folder::Junk,
            Action::Deliver | Action::Tag => Folder::Inbox,
        };
        drop(scan.data);
        let (sender, delivery) = self.spawn_delivery(transaction, folder);
        let body = transaction.body.as_mut()?;
        body.delivery = Some(delivery);
        if sender.send(Piece::Data(Bytes::from(stored))).await.is_ok() {
            let _ = sender.send(Piece::End).await;
        }
        None
    }

    /// Ends the message and returns its replies (RFC 5321 §4.2.5: after the data): one for
    /// SMTP, one per accepted recipient in RCPT order for LMTP (RFC 2033 §4.2).
    async fn finish_body(&mut self) -> Vec<Reply> {
        let max_hops = self.config.max_received_headers;
        let max_size = self.config.max_message_size;
        let lmtp = self.config.mode == Mode::Lmtp;
        // The end of the data: the assembler releases what it held back; a message held for
        // the inbound checks keeps it (or, outgrown, streams it).
        let rest = match self.transaction.as_mut().and_then(|t| t.body.as_mut()) {
            Some(body) => {
                let rest = body.assembler.finish();
                if body.too_big { Vec::new() } else { self.hold_for_scan(rest).unwrap_or_default() }
            }
            None => Vec::new(),
        };
        self.feed_virus_scan(&rest).await;
        let virus_refusal = self.finish_virus_scan().await;
        let Some(mut transaction) = self.transaction.take() else {
            return vec![reply(554, "5.5.1", "no valid recipients")];
        };
        let recipients = transaction.recipients.len();
        // RFC 3461 §6.2.1: a final delivery with NOTIFY=SUCCESS is reported as "delivered";
        // never to the null reverse-path.
        let success_report =
            (!transaction.reverse_path.is_empty() && !transaction.notify_success.is_empty()).then(|| SuccessReport {
                return_path: transaction.reverse_path.clone(),
                envid: transaction.envid.clone(),
                recipients: transaction.notify_success.clone(),
            });
        let Some(body) = transaction.body.as_ref() else {
            return vec![reply(554, "5.5.1", "no valid recipients")];
        };
        let for_all = |reply: Reply| if lmtp { vec![reply; recipients] } else { vec![reply] };
        let started = std::time::Instant::now();
        let listener = self.observer.listener;
        self.observer.metrics.bytes_received.with_label_values(&[listener]).inc_by(body.assembler.data_size());
        let refusal = if body.too_big || body.assembler.data_size() > max_size {
            self.observer.message("too_big");
            Some(reply(552, "5.3.4", format!("message exceeds the fixed maximum size of {max_size} bytes")))
        } else if let Some(settled) = body.settled.clone() {
            self.observer.message("rejected");
            Some(settled)
        } else if let Some(refused) = virus_refusal {
            self.observer.message("rejected");
            Some(refused)
        } else if let Some(foreign) = self.foreign_from(body) {
            self.observer.message("spoofed_from");
            Some(reply(553, "5.7.1", foreign))
        } else if let Err(reached) = self.check_subject(body) {
            self.observer.message("rate_limited");
            Some(limit_reply(reached))
        } else if body.assembler.received_headers() > max_hops {
            self.observer.message("loop");
            Some(reply(
                554,
                "5.4.6",
                format!("too many hops ({} Received headers): mail loop?", body.assembler.received_headers()),
            ))
        } else {
            None
        };
        let refusal = match refusal {
            None => self.deliver_scanned(&mut transaction).await,
            refused => refused,
        };
        let Some(mut body) = transaction.body.take() else {
            return for_all(
                refusal.unwrap_or_else(|| reply(451, "4.3.0", "local error in processing; try again later")),
            );
        };
        if let Some(verdict) = body.unscanned.take() {
            self.log_verdict(&transaction, body.assembler.header_section(), &verdict);
        }
        if let Some(sender) = body.sender.take()
            && refusal.is_none()
        {
            for chunk in rest {
                if sender.send(Piece::Data(chunk)).await.is_err() {
                    break;
                }
            }
            let _ = sender.send(Piece::End).await;
        }
        #[cfg(debug_assertions)]
        if refusal.is_none() && acknowledge_before_commit() {
            // The deliberate bug: the delivery goes on in the background and may fail.
            self.messages += 1;
            return for_all(reply(250, "2.0.0", "OK (acknowledged before the commit: WMAIL_TEST_ACK_BEFORE_COMMIT)"));
        }
        // A refused message's delivery (if one started) ends with the closed channel.
        let delivery = body.delivery.take();
        if let Some(settled) = refusal {
            if let Some(delivery) = delivery {
                let _ = delivery.await;
            }
            if settled.is_positive() {
                self.messages += 1; // held in quarantine
            }
            return for_all(settled);
        }
        let delivered = match delivery {
            Some(delivery) => delivery.await,
            None => Ok(Err(CoreError::internal("receiving a message", "no delivery was started"))),
        };
        if let (Ok(Ok(submitted)), Some(report)) = (&delivered, &success_report) {
            self.report_success(report, submitted, body.assembler.header_section());
        }
        let replies = match delivered {
            Ok(Ok(submitted)) if lmtp => submitted.recipients.iter().map(recipient_reply).collect(),
            Ok(Ok(submitted)) => vec![self.delivery_reply(submitted)],
            Ok(Err(error)) => for_all(core_error_reply(&error)),
            Err(_) => for_all(reply(451, "4.3.0", "local error in processing; try again later")),
        };
        let accepted = replies.iter().any(|reply| reply.code == 250);
        if accepted {
            self.messages += 1;
            if let (Some(account), Some(limits)) = (&self.authenticated, &self.send_limits) {
                let subject = subject_of(body.assembler.header_section());
                limits.record_subject(account.id, &subject, wmail_core::now_ms());
            }
        }
        self.observer.message(if accepted { "accepted" } else { "failed" });
        self.observer.metrics.commit_seconds.with_label_values(&[listener]).observe(started.elapsed().as_secs_f64());
        replies
    }

    /// Sends "delivered" reports (RFC 3464) for the stored recipients that asked for them,
    /// in the background: the client's reply does not wait for them.
    fn report_success(&self, report: &SuccessReport, submitted: &Submitted, header: &[u8]) {
        use wmail_core::dsn::{Action, ReportContext, ReportedRecipient, Returned, build_report};
        let SuccessReport { return_path, envid, recipients: wanted } = report;
        let delivered: Vec<ReportedRecipient> = wanted
            .iter()
            .filter(|(address, _)| {
                submitted
                    .recipients
                    .iter()
                    .any(|r| r.recipient == *address && matches!(r.result, Ok(DeliveryResult::Stored { .. })))
            })
            .map(|(address, orcpt)| ReportedRecipient {
                address: address.clone(),
                orcpt: orcpt.clone(),
                action: Action::Delivered,
                reply: "250 2.0.0 delivered to the recipient's mailbox".into(),
                remote_mta: None,
            })
            .collect();
        if delivered.is_empty() {
            return;
        }
        let context = ReportContext {
            hostname: &self.config.hostname,
            return_path,
            envid: envid.as_deref(),
            arrival_ms: wmail_core::now_ms(),
            retry_until_ms: 0,
        };
        let message = build_report(&context, &delivered, &Returned::Headers(header.to_vec()));
        let (core, to, session) = (self.core.clone(), return_path.clone(), self.id.clone());
        tokio::spawn(async move {
            if let Err(error) = core.send_report(&to, message).await {
                tracing::warn!(%session, %to, %error, "could not send a success notification");
            }
        });
    }

    /// The same-subject limit of an authenticated sender.
    fn check_subject(&self, body: &BodyInProgress) -> Result<(), LimitReached> {
        let (Some(account), Some(limits)) = (&self.authenticated, &self.send_limits) else { return Ok(()) };
        limits.check_subject(account.id, &subject_of(body.assembler.header_section()), wmail_core::now_ms())
    }

    /// On submission, says why the message's authors are not the authenticated user's to
    /// claim (the header must be as honest as the envelope): every From: address must be
    /// one the user may send as; a message the user resends (RFC 5322 §3.6.6) is checked by
    /// its topmost Resent-From: instead, but a From: address in a domain hosted here must
    /// still be the user's (this server signs such mail with that domain's DKIM key). A
    /// From: or Resent-From: field without a readable address is refused.
    fn foreign_from(&self, body: &BodyInProgress) -> Option<String> {
        let account = self.authenticated.as_ref()?;
        let authors = body.assembler.authors();
        let mine = |address: &String| self.core.may_send_as(account, address).unwrap_or(false);
        let hosted = |address: &String| {
            address.rsplit_once('@').is_some_and(|(_, domain)| self.core.is_local_domain(domain).unwrap_or(true))
        };
        let foreign =
            |address: &String, field: &str| format!("the {field} address <{address}> is not yours to send as");
        match &authors.resent_from {
            Some(resent) if resent.is_empty() => Some("the Resent-From: field names no address".into()),
            Some(resent) => {
                resent.iter().find(|address| !mine(address)).map(|address| foreign(address, "Resent-From:")).or_else(
                    || authors.from.iter().find(|a| hosted(a) && !mine(a)).map(|address| foreign(address, "From:")),
                )
            }
            None if authors.has_from && authors.from.is_empty() => Some("the From: field names no address".into()),
            None => authors.from.iter().find(|address| !mine(address)).map(|address| foreign(address, "From:")),
        }
    }

    /// The single SMTP reply for a delivery to every recipient of a transaction.
    fn delivery_reply(&self, submitted: Submitted) -> Reply {
        let Submitted { recipients: results, queue_id } = submitted;
        let accepted =
            |r: &&RecipientResult| matches!(r.result, Ok(DeliveryResult::Stored { .. } | DeliveryResult::Forwarded));
        let stored = results.iter().filter(accepted).count();
        if stored == results.len() {
            tracing::info!(session = %self.id, stored, ?queue_id, "message accepted");
            return match queue_id {
                Some(queue_id) => {
                    reply(250, "2.0.0", format!("OK: queued as {}.{}, outbound {queue_id}", self.id, self.messages + 1))
                }
                None => reply(250, "2.0.0", format!("OK: queued as {}.{}", self.id, self.messages + 1)),
            };
        }
        if stored > 0 {
            // Some recipients accepted at RCPT failed at commit (a quota race, an account
            // removed meanwhile). Without DSNs yet, a 250 would lose their copy silently;
            // a temporary failure makes the client retry (the stored copies may then be
            // duplicated, which is the lesser harm).
            for failed in results.iter().filter(|r| !accepted(r)) {
                tracing::warn!(session = %self.id, recipient = %failed.recipient, result = ?failed.result, "recipient not delivered at commit");
            }
            return reply(451, "4.3.0", "some recipients could not be delivered; try again later");
        }
        results.first().map(recipient_reply).unwrap_or_else(|| reply(550, "5.1.1", "no such mailbox"))
    }

    /// Cancels a message in progress: nothing of it is delivered.
    async fn abort_body(&mut self) {
        if let Some(mut body) = self.transaction.take().and_then(|t| t.body) {
            self.observer.message("aborted");
            body.sender = None; // closing without `Piece::End` aborts the delivery
            if let Some(delivery) = body.delivery.take() {
                let _ = delivery.await;
            }
        }
    }

    fn data_allowed(&mut self) -> bool {
        match &self.transaction {
            None => self.send(reply(503, "5.5.1", "need MAIL and RCPT before DATA")),
            Some(transaction) if transaction.recipients.is_empty() => {
                self.send(reply(554, "5.5.1", "no valid recipients"))
            }
            Some(transaction) if transaction.body.is_some() => {
                self.send(reply(503, "5.5.1", "DATA cannot follow BDAT in one transaction"))
            }
            Some(_) => return true,
        }
        false
    }

    async fn data(&mut self) -> io::Result<Flow> {
        if !self.data_allowed() {
            return Ok(Flow::Continue);
        }
        self.send(reply(354, "", "end data with <CR><LF>.<CR><LF>"));
        self.begin_body();
        let mut receiver = DataReceiver::new();
        // The CRLF that ended the DATA command counts as the line end before the first data
        // line, so a leading "." is unstuffed and an immediate ".CRLF" ends an empty message.
        receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
        // RFC 5321 §4.5.2 dot-unstuffing and the end marker come from smtp-proto, which
        // ends data only at CRLF.CRLF (no smuggling with bare LF or CR).
        let mut chunk = Vec::with_capacity(16 * 1024);
        loop {
            let input = self.connection.input();
            let mut bytes = input.iter();
            let done = receiver.ingest(&mut bytes, &mut chunk);
            let consumed = input.len() - bytes.len();
            input.advance(consumed);
            // Hold back a trailing CR: it may be the start of the CRLF.CRLF the receiver
            // removes when the next bytes arrive.
            let held_cr = !done && chunk.last() == Some(&b'\r');
            if held_cr {
                chunk.pop();
            }
            if !chunk.is_empty() {
                let (data, added) = crlf_line_ends(std::mem::take(&mut chunk));
                self.feed_body(&data, added).await;
            }
            if held_cr {
                chunk.push(b'\r');
            }
            if done {
                break;
            }
            if !self.fill_data().await? {
                return Ok(Flow::Close);
            }
        }
        for reply in self.finish_body().await {
            self.send(reply);
        }
        Ok(Flow::Continue)
    }

    /// Reads more message data. Returns false when the session must end: the client left
    /// or stalled past the data timeout (then told so); the message is abandoned.
    async fn fill_data(&mut self) -> io::Result<bool> {
        match self.connection.fill(self.config.data_timeout).await? {
            Some(0) => {}
            Some(_) => return Ok(true),
            None => self.send(reply(421, "4.4.2", "timeout waiting for data, closing connection")),
        }
        self.abort_body().await;
        Ok(false)
    }

    /// RFC 3030 BDAT: exactly `size` octets follow the command line.
    async fn bdat(&mut self, size: usize, last: bool) -> io::Result<Flow> {
        let accepted = match &self.transaction {
            None => Err(reply(503, "5.5.1", "need MAIL and RCPT before BDAT")),
            Some(transaction) if transaction.recipients.is_empty() => Err(reply(554, "5.5.1", "no valid recipients")),
            Some(_) => Ok(()),
        };
        if accepted.is_ok() {
            self.begin_body();
        }
        let mut left = size;
        while left > 0 {
            if self.connection.input().is_empty() && !self.fill_data().await? {
                return Ok(Flow::Close);
            }
            let input = self.connection.input();
            let take = left.min(input.len());
            let data = input.split_to(take);
            left -= take;
            if accepted.is_ok() {
                self.feed_body(&data, 0).await;
            }
        }
        if let Err(refusal) = accepted {
            self.send(refusal);
            return Ok(Flow::Continue);
        }
        if last {
            for reply in self.finish_body().await {
                self.send(reply);
            }
        } else if self.transaction.as_ref().and_then(|t| t.body.as_ref()).is_some_and(|b| b.too_big) {
            self.abort_body().await;
            let text = format!("message exceeds the fixed maximum size of {} bytes", self.config.max_message_size);
            self.send(reply(552, "5.3.4", text));
        } else {
            self.send(reply(250, "2.0.0", format!("{size} octets received")));
        }
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
        let Some(acceptor) = self.tls.clone() else {
            self.send(reply(454, "4.7.0", "TLS not available"));
            return Ok(Flow::Continue);
        };
        if self.is_tls() {
            self.send(reply(503, "5.5.1", "already using TLS"));
            return Ok(Flow::Continue);
        }
        self.send(reply(220, "2.0.0", "ready to start TLS"));
        // The connection drops anything pipelined in cleartext after STARTTLS.
        if self.connection.start_tls(&acceptor, Duration::from_secs(30)).await.is_err() {
            return Ok(Flow::Close);
        }
        // RFC 3207 §4.2: forget everything learnt before TLS.
        self.abort_body().await;
        self.helo = None;
        self.authenticated = None;
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, mechanism: u64, initial_response: String) -> io::Result<Flow> {
        if !self.config.mode.requires_auth() {
            self.send(reply(502, "5.5.1", "authentication is not offered on this port; use submission (587)"));
            return Ok(Flow::Continue);
        }
        if self.authenticated.is_some() {
            self.send(reply(503, "5.5.1", "already authenticated"));
            return Ok(Flow::Continue);
        }
        if self.transaction.is_some() {
            self.send(reply(503, "5.5.1", "AUTH is not allowed during a mail transaction"));
            return Ok(Flow::Continue);
        }
        if !self.is_tls() && !self.config.allow_plaintext_auth {
            // RFC 4954 §6.
            self.send(reply(538, "5.7.11", "encryption required: use STARTTLS first"));
            return Ok(Flow::Continue);
        }
        let credentials = match mechanism {
            AUTH_PLAIN => {
                let response = match initial_response.as_str() {
                    "" => match self.sasl_challenge("").await? {
                        SaslResponse::Text(response) => response,
                        SaslResponse::Cancelled => return Ok(Flow::Continue),
                        SaslResponse::Closed => return Ok(Flow::Close),
                    },
                    // RFC 4954 §4: "=" is an empty initial response.
                    "=" => String::new(),
                    other => other.to_owned(),
                };
                wmail_core::sasl::decode_plain(&response)
            }
            AUTH_LOGIN => {
                let username = match initial_response.as_str() {
                    "" | "=" => match self.sasl_challenge("VXNlcm5hbWU6").await? {
                        SaslResponse::Text(response) => response,
                        SaslResponse::Cancelled => return Ok(Flow::Continue),
                        SaslResponse::Closed => return Ok(Flow::Close),
                    },
                    other => other.to_owned(),
                };
                let password = match self.sasl_challenge("UGFzc3dvcmQ6").await? {
                    SaslResponse::Text(response) => response,
                    SaslResponse::Cancelled => return Ok(Flow::Continue),
                    SaslResponse::Closed => return Ok(Flow::Close),
                };
                wmail_core::sasl::decode_text(&username).zip(wmail_core::sasl::decode_text(&password))
            }
            _ => {
                self.send(reply(504, "5.5.4", "unsupported authentication mechanism; use PLAIN or LOGIN"));
                return Ok(Flow::Continue);
            }
        };
        let Some((username, password)) = credentials else {
            self.send(reply(501, "5.5.2", "cannot decode the authentication response"));
            return Ok(Flow::Continue);
        };
        match self.core.authenticate(&username, &password, Some(self.peer.ip())).await {
            Ok(account) if !self.core.may_use(&account, wmail_core::Service::Smtp).unwrap_or(false) => {
                tracing::info!(session = %self.id, user = %account.address, "smtp is disabled for this account");
                self.send(reply(535, "5.7.8", "sending mail is disabled for this account; ask your administrator"));
            }
            Ok(account) => {
                tracing::info!(session = %self.id, user = %account.address, "authenticated");
                self.authenticated = Some(account);
                self.send(reply(235, "2.7.0", "authentication successful"));
            }
            Err(error) if error.code == ErrorCode::Unavailable => {
                // RFC 4954 §6: a temporary failure; the client may retry at once.
                self.send(reply(454, "4.7.0", error.message));
            }
            Err(error) => {
                // The username is not logged: clients sometimes send a password in it.
                tracing::info!(session = %self.id, peer = %self.peer, %error, "authentication failed");
                tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                self.send(reply(535, "5.7.8", "authentication credentials invalid"));
            }
        }
        Ok(Flow::Continue)
    }

    /// Sends a `334` challenge and reads the response line. A `*` response cancels the
    /// exchange (RFC 4954 §4) and is answered here.
    async fn sasl_challenge(&mut self, challenge: &str) -> io::Result<SaslResponse> {
        self.connection.queue(format!("334 {challenge}\r\n").as_bytes());
        match self.connection.read_line(self.config.command_timeout).await? {
            LineRead::Line(line) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if text == "*" {
                    self.send(reply(501, "5.7.0", "authentication cancelled"));
                    return Ok(SaslResponse::Cancelled);
                }
                Ok(SaslResponse::Text(text))
            }
            // Undecodable, answered as such by the caller.
            LineRead::TooLong => Ok(SaslResponse::Text(String::from("!"))),
            _ => Ok(SaslResponse::Closed),
        }
    }
}

/// Fault injection for the checker of `jepsen/`, in debug builds only (release builds have
/// no such switch): with `WMAIL_TEST_ACK_BEFORE_COMMIT=1`, DATA is answered `250` before
/// the delivery is committed, breaking RFC 5321 §6.1 (an accepted message must not be lost).
/// The harness must then find acknowledged messages missing.
#[cfg(debug_assertions)]
fn acknowledge_before_commit() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        let enabled = std::env::var_os("WMAIL_TEST_ACK_BEFORE_COMMIT").is_some_and(|value| value == "1");
        if enabled {
            tracing::error!("WMAIL_TEST_ACK_BEFORE_COMMIT=1: SMTP acknowledges messages before they are committed (a deliberate bug for testing; never in production)");
        }
        enabled
    })
}

/// RFC 5321 §2.3.8: lines end with CRLF. A bare LF in DATA (sent by some scripts and
/// broken clients) is stored as CRLF, as Postfix and Dovecot do, so IMAP and POP3 serve
/// CRLF lines and MIME parts split where clients expect. (The end of data is still only
/// CRLF.CRLF, and POP3 and outbound SMTP dot-stuff every line, so a "\n.\n" in the data
/// stays content.) `data` never ends in a CR whose LF is in the next chunk (the caller
/// holds such a CR back), so an LF at its start is bare.
/// Returns the data and how many CRs it added.
fn crlf_line_ends(data: Vec<u8>) -> (Vec<u8>, u64) {
    let bare = |(index, byte): (usize, &u8)| *byte == b'\n' && (index == 0 || data[index - 1] != b'\r');
    let count = data.iter().enumerate().filter(|&entry| bare(entry)).count();
    if count == 0 {
        return (data, 0);
    }
    let mut out = Vec::with_capacity(data.len() + count);
    for (index, byte) in data.iter().enumerate() {
        if bare((index, byte)) {
            out.push(b'\r');
        }
        out.push(*byte);
    }
    (out, count as u64)
}

/// The decoded subject of a header section ("" when it has none).
fn subject_of(header: &[u8]) -> String {
    mail_parser::MessageParser::new()
        .parse_headers(header)
        .and_then(|message| message.subject().map(str::to_owned))
        .unwrap_or_default()
}

/// The reply for a sending limit: temporary for the hourly and daily recipient budgets,
/// permanent for the same-subject limit (a retry today would fail again).
fn limit_reply(reached: LimitReached) -> Reply {
    match reached {
        LimitReached::RecipientsPerHour(limit) => {
            reply(452, "4.7.1", format!("you reached your limit of {limit} recipients per hour; try again later"))
        }
        LimitReached::RecipientsPerDay(limit) => {
            reply(452, "4.7.1", format!("you reached your limit of {limit} recipients per day; try again tomorrow"))
        }
        LimitReached::SameSubject(limit) => reply(
            550,
            "5.7.1",
            format!("you already sent {limit} messages with this subject today (a limit against spam runs)"),
        ),
    }
}

/// The SMTP reply for a refusal by the inbound checks.
fn refusal_reply(refusal: &Refusal) -> Reply {
    reply(refusal.code, refusal.status.clone(), refusal.text.clone())
}

fn parse_error_reply(error: smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match error {
        E::UnknownCommand => reply(500, "5.5.1", "command not recognized"),
        E::InvalidSenderAddress => reply(501, "5.1.7", "bad sender address syntax"),
        E::InvalidRecipientAddress => reply(501, "5.1.3", "bad recipient address syntax"),
        E::SyntaxError { syntax } => reply(501, "5.5.4", format!("syntax: {syntax}")),
        E::InvalidParameter { param } => reply(501, "5.5.4", format!("invalid parameter {param}")),
        // RFC 5321 §4.1.1.11: parameters not recognised get 555.
        E::UnsupportedParameter { param } => reply(555, "5.5.4", format!("unsupported parameter {param}")),
        E::ResponseTooLong => reply(500, "5.5.2", "line too long"),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => reply(501, "5.5.2", "syntax error"),
    }
}

/// The reply for one recipient's delivery result.
fn recipient_reply(result: &RecipientResult) -> Reply {
    match &result.result {
        Ok(DeliveryResult::Stored { .. }) => reply(250, "2.1.5", format!("<{}> delivered", result.recipient)),
        Ok(DeliveryResult::Forwarded) => reply(250, "2.1.5", format!("<{}> forwarded", result.recipient)),
        Ok(DeliveryResult::OverQuota) => reply(552, "5.2.2", format!("<{}> mailbox full", result.recipient)),
        Ok(DeliveryResult::NotReceiving) => reply(550, "5.2.1", format!("<{}> mailbox disabled", result.recipient)),
        Ok(DeliveryResult::NoSuchMailbox) => reply(550, "5.1.1", format!("<{}> no such mailbox", result.recipient)),
        Err(error) => core_error_reply(error),
    }
}

fn core_error_reply(error: &CoreError) -> Reply {
    match error.code {
        ErrorCode::Unavailable | ErrorCode::Internal => reply(451, "4.3.0", "temporary local problem; try again later"),
        ErrorCode::InvalidInput => reply(554, "5.6.0", error.message.clone()),
        ErrorCode::NotFound => reply(550, "5.1.1", error.message.clone()),
        ErrorCode::Unauthorized => reply(535, "5.7.8", "authentication credentials invalid"),
        ErrorCode::OverQuota => reply(552, "5.2.2", error.message.clone()),
        // RFC 5321 §4.2.3 (452: insufficient system storage), RFC 3463 X.3.1 (mail system full).
        ErrorCode::InsufficientStorage => reply(452, "4.3.1", error.message.clone()),
        ErrorCode::AlreadyExists | ErrorCode::Conflict => reply(451, "4.3.0", error.message.clone()),
    }
}

fn rand_u64() -> u64 {
    rand::random()
}
