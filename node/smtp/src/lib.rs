//! wmail-smtp serves SMTP (RFC 5321) on the `smtp` (inbound MX), `submission` (587,
//! STARTTLS + AUTH) and `submissions` (465, implicit TLS) listeners, and LMTP (RFC 2033)
//! on the `lmtp` listener. Command syntax comes
//! from `smtp-proto`; mail logic (who is local, authentication, delivery) from wmail-core.
//! Accepted mail is streamed into the blob store and committed through Raft before `250`.

mod body;
mod limits;
mod metrics;
mod reply;
mod session;

pub use limits::{LimitReached, SendLimiter, SendPolicy};
pub use metrics::SmtpMetrics;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use wmail_core::Core;
use wmail_net::{Refusal, SessionHandler, SessionStream, TlsAcceptor};
use wmail_protection::Protection;

/// Which service a listener provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Port 25: mail for local domains from anyone, no relaying, no AUTH.
    Mx,
    /// Port 587 (RFC 6409): STARTTLS, then AUTH, then mail to anywhere the user may send.
    Submission,
    /// Port 465 (RFC 8314): like submission, over implicit TLS.
    Submissions,
    /// LMTP (RFC 2033) for MTAs delivering into wmail: LHLO, local recipients only, one
    /// reply per recipient after the data.
    Lmtp,
}

impl Mode {
    /// Whether MAIL needs AUTH first (and AUTH is offered).
    pub fn requires_auth(self) -> bool {
        matches!(self, Mode::Submission | Mode::Submissions)
    }
}

/// Settings of an SMTP listener.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Name in the greeting, EHLO reply and Received headers.
    pub hostname: String,
    /// The service.
    pub mode: Mode,
    /// Largest message accepted, in bytes (announced in SIZE, checked while streaming).
    pub max_message_size: u64,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// Most RSET commands per session.
    pub max_rsets: usize,
    /// Most Received headers a message may carry (loop detection).
    pub max_received_headers: usize,
    /// Most protocol errors before the session is closed.
    pub max_errors: usize,
    /// How long to wait for a command.
    pub command_timeout: Duration,
    /// How long to wait for each piece of message data.
    pub data_timeout: Duration,
    /// Whether AUTH is allowed without TLS (never on by default).
    pub allow_plaintext_auth: bool,
    /// Whether VRFY says if a local address exists (off: always 252, RFC 5321 §3.5.3;
    /// on, it helps address harvesting).
    pub vrfy: bool,
    /// Whether EXPN lists an alias's members (off: 502).
    pub expn: bool,
}

impl SmtpConfig {
    /// Defaults for `mode` (limits from the seed manuals: 20 MB, 100 recipients).
    pub fn new(hostname: impl Into<String>, mode: Mode) -> Self {
        Self {
            hostname: hostname.into(),
            mode,
            max_message_size: 20 * 1024 * 1024,
            max_recipients: 100,
            max_rsets: 20,
            max_received_headers: 20,
            max_errors: 20,
            // RFC 5321 §4.5.3.2.7: at least 5 minutes between commands.
            command_timeout: Duration::from_secs(300),
            // RFC 5321 §4.5.3.2.6: at least 3 minutes per data block.
            data_timeout: Duration::from_secs(180),
            allow_plaintext_auth: false,
            vrfy: false,
            expn: false,
        }
    }
}

/// An SMTP service: one per listener.
pub struct SmtpServer {
    core: Arc<Core>,
    config: Arc<SmtpConfig>,
    tls: Option<TlsAcceptor>,
    metrics: Arc<SmtpMetrics>,
    listener: &'static str,
    protection: Option<Arc<Protection>>,
    send_limits: Option<Arc<SendLimiter>>,
}

impl SmtpServer {
    /// Creates the service; `tls` enables STARTTLS (and is required for submission).
    /// Metrics are labelled with `listener`.
    pub fn new(
        core: Arc<Core>,
        config: SmtpConfig,
        tls: Option<TlsAcceptor>,
        metrics: Arc<SmtpMetrics>,
        listener: &'static str,
    ) -> Self {
        Self { core, config: Arc::new(config), tls, metrics, listener, protection: None, send_limits: None }
    }

    /// Applies per-user sending limits to authenticated senders (submission); one limiter
    /// is shared by the listeners that should count together.
    pub fn with_send_limits(mut self, limits: Arc<SendLimiter>) -> Self {
        self.send_limits = Some(limits);
        self
    }

    /// Runs the inbound checks (sender authentication, DNSBL, content, antivirus) on the
    /// mail this listener receives; only the MX mode (port 25) uses them.
    pub fn with_protection(mut self, protection: Arc<Protection>) -> Self {
        self.protection = Some(protection);
        self
    }
}

impl SessionHandler for SmtpServer {
    fn handle(
        &self,
        stream: SessionStream,
        peer: std::net::SocketAddr,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        self.metrics.connections.with_label_values(&[self.listener]).inc();
        let observer = session::Observer { metrics: self.metrics.clone(), listener: self.listener };
        let session = session::Session::new(
            self.core.clone(),
            self.config.clone(),
            self.tls.clone(),
            observer,
            peer,
            stream,
            session::Policies { protection: self.protection.clone(), send_limits: self.send_limits.clone() },
        );
        Box::pin(session.run(shutdown))
    }

    fn refuse(&self, mut stream: SessionStream, refusal: Refusal) -> BoxFuture<'static, ()> {
        let hostname = self.config.hostname.clone();
        Box::pin(async move {
            let text = match refusal {
                Refusal::TooManyConnections => "too many connections, try again later",
                Refusal::TooManyFromAddress => "too many connections from your address, try again later",
                Refusal::ShuttingDown => "shutting down, try again later",
            };
            // RFC 5321 §3.8: a server may answer 421 instead of its greeting.
            let line = format!("421 4.7.0 {hostname} {text}\r\n");
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
            let _ = stream.shutdown().await;
        })
    }
}
