//! wmail-imap serves IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501) with the extensions in
//! [`session::Session::capabilities`] on the `imap` (STARTTLS) and `imaps` listeners.
//! Mailbox state lives in the replicated index; bodies come from the blob store.
//!
//! ```text
//!  proto/      sans-IO: command parser, response writers, ENVELOPE/BODYSTRUCTURE
//!  session     reading commands (literals, APPEND streamed), states, login, IDLE
//!  mailboxes   SELECT, LIST, STATUS, CREATE/DELETE/RENAME, APPEND, QUOTA
//!  selected    the selected mailbox's view, change sync, STORE/COPY/MOVE/EXPUNGE
//!  fetch       FETCH;  search: SEARCH/SORT/THREAD;  thread: RFC 5256 algorithms
//! ```

mod fetch;
mod mailboxes;
pub mod proto;
mod search;
mod selected;
pub mod session;
mod thread;
mod uid_list;
mod utf7;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use wmail_core::Core;
use wmail_net::{Refusal, SessionHandler, SessionStream, TlsAcceptor};

/// Settings of an IMAP listener.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// Name in the greeting and logs.
    pub hostname: String,
    /// RFC 9051 §5.4: the autologout timer once logged in, at least 30 minutes.
    pub idle_timeout: Duration,
    /// How long a client may take to log in.
    pub login_timeout: Duration,
    /// Whether LOGIN and AUTHENTICATE work without TLS (never on by default).
    pub allow_plaintext_auth: bool,
    /// Largest message APPEND accepts, in octets (RFC 7889 APPENDLIMIT).
    pub append_limit: u64,
}

impl ImapConfig {
    /// Defaults: 30-minute autologout, 60 s to log in, no cleartext login, 50 MB messages.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            idle_timeout: Duration::from_secs(30 * 60),
            login_timeout: Duration::from_secs(60),
            allow_plaintext_auth: false,
            append_limit: 50 * 1024 * 1024,
        }
    }
}

/// An IMAP service: one per listener.
pub struct ImapServer {
    core: Arc<Core>,
    config: Arc<ImapConfig>,
    tls: Option<TlsAcceptor>,
}

impl ImapServer {
    /// Creates the service; `tls` enables STARTTLS.
    pub fn new(core: Arc<Core>, config: ImapConfig, tls: Option<TlsAcceptor>) -> Self {
        Self { core, config: Arc::new(config), tls }
    }
}

impl SessionHandler for ImapServer {
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
                Refusal::TooManyConnections | Refusal::TooManyFromAddress => {
                    "* BYE [UNAVAILABLE] too many connections; try again later\r\n"
                }
                Refusal::ShuttingDown => "* BYE [UNAVAILABLE] shutting down\r\n",
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(text.as_bytes())).await;
            let _ = stream.shutdown().await;
        })
    }
}
