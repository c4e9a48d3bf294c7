//! wmail-net owns the network edge every protocol shares: TCP listeners with connection
//! limits (in total and per client address), implicit TLS and STARTTLS upgrades, and
//! graceful shutdown. Protocol crates implement [`SessionHandler`] and never accept
//! sockets themselves.
//!
//! ```text
//!  TcpListener ─accept─► limits ─(implicit TLS handshake)─► SessionHandler::handle(stream)
//!                          └─ over a limit ─► SessionHandler::refuse(stream)
//! ```

mod connection;
pub mod dns;
mod dot_stuff;
mod listener;
mod proxy;
mod stream;
mod tls;

pub use connection::{Connection, LineRead};
pub use dot_stuff::DotStuffer;
pub use listener::{ConnectionLimits, ListenerHandle, Refusal, SessionHandler, serve, stopped};
pub use proxy::{ProxyProtocol, read_header as read_proxy_header};
pub use stream::SessionStream;
pub use tls::{TlsError, install_crypto_provider, load_tls_acceptor, opportunistic_tls_connector};
pub use tokio_rustls::TlsAcceptor;
