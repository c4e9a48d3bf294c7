//! wmail-pop3 serves POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595) and SASL PLAIN
//! (RFC 5034) on the `pop3` and `pop3s` listeners. The maildrop is the account's INBOX as it
//! was at login; deletions are applied at QUIT with one replicated command, and a
//! replicated lease gives one session at a time exclusive access, cluster-wide.

mod session;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use wmail_core::Core;
use wmail_net::{Refusal, SessionHandler, SessionStream, TlsAcceptor};

/// Settings of a POP3 listener.
#[derive(Debug, Clone)]
pub struct Pop3Config {
    /// Name in the greeting and logs.
    pub hostname: String,
    /// RFC 1939 §3: the inactivity autologout timer, at least 10 minutes.
    pub idle_timeout: Duration,
    /// Whether USER/PASS and AUTH work without TLS (never on by default).
    pub allow_plaintext_auth: bool,
    /// RFC 2449 §6.5 LOGIN-DELAY: least time between two logins of one account (zero: none).
    pub login_delay: Duration,
    /// How long the exclusive maildrop lease lasts unless renewed (a session that dies
    /// leaves the maildrop locked this long); renewed every fifteenth of it while in use.
    pub maildrop_lease: Duration,
}

impl Pop3Config {
    /// Defaults: 10-minute autologout, no authentication in cleartext, no login delay, a
    /// 15-minute maildrop lease.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            idle_timeout: Duration::from_secs(600),
            allow_plaintext_auth: false,
            login_delay: Duration::ZERO,
            maildrop_lease: Duration::from_secs(15 * 60),
        }
    }
}

/// A POP3 service: one per listener.
pub struct Pop3Server {
    core: Arc<Core>,
    config: Arc<Pop3Config>,
    tls: Option<TlsAcceptor>,
}

impl Pop3Server {
    /// Creates the service; `tls` enables STLS.
    pub fn new(core: Arc<Core>, config: Pop3Config, tls: Option<TlsAcceptor>) -> Self {
        Self { core, config: Arc::new(config), tls }
    }
}

impl SessionHandler for Pop3Server {
    fn handle(
        &self,
        stream: SessionStream,
        peer: std::net::SocketAddr,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let session = session::Session::new(self.core.clone(), self.config.clone(), self.tls.clone(), peer, stream);
        Box::pin(session.run(shutdown))
    }

    fn refuse(&self, mut stream: SessionStream, refusal: Refusal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let text = match refusal {
                Refusal::TooManyConnections | Refusal::TooManyFromAddress => "-ERR [SYS/TEMP] too many connections\r\n",
                Refusal::ShuttingDown => "-ERR [SYS/TEMP] shutting down\r\n",
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(text.as_bytes())).await;
            let _ = stream.shutdown().await;
        })
    }
}
