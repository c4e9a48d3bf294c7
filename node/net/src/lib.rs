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
pub use listener::{
    ConnectionLimits, ListenerHandle, Refusal, SessionCount, SessionHandler, accept_clients, serve, stopped,
};
pub use proxy::{ProxyProtocol, read_header as read_proxy_header};
pub use stream::SessionStream;
pub use tls::{TlsError, install_crypto_provider, load_tls_acceptor, opportunistic_tls_connector};
pub use tokio_rustls::TlsAcceptor;

/// The network a client address is counted under for limits and shares: the address
/// itself for IPv4, its /64 for IPv6 (the block one subscriber usually holds).
pub fn client_network(address: std::net::IpAddr) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}
