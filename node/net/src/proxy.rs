//! PROXY protocol version 2 (HAProxy's `send-proxy-v2`): a load balancer in front of the
//! node opens each connection with a binary header naming the real client, so limits,
//! logs and `Received` headers see the client rather than the balancer.
//!
//! Only peers in `[listen] proxy_protocol_from` may send it, and from them it is required
//! (a spoofed client address from anyone else would defeat per-address limits).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::v2::{Addresses, Command, Header};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a trusted proxy may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The fixed part of a v2 header: signature (12), version and command, family, length.
const FIXED_LEN: usize = 16;
/// The 12-byte signature every v2 header starts with.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The peers allowed (and required) to start connections with a PROXY v2 header.
#[derive(Debug, Clone, Default)]
pub struct ProxyProtocol {
    trusted: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Parses CIDRs (`10.0.0.0/8`) or single addresses; the error names the bad entry.
    pub fn new(cidrs: &[String]) -> Result<Self, String> {
        let trusted = cidrs
            .iter()
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an IP address or CIDR (like 10.0.0.0/8)"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { trusted })
    }

    /// Whether connections from `ip` carry a PROXY header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// Reads the PROXY v2 header at the start of `tcp` and returns the client it names, or
/// `None` for a `LOCAL` header (the proxy's own health check: the connection is the
/// proxy's). Nothing after the header is consumed.
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let read = async {
        let mut fixed = [0u8; FIXED_LEN];
        tcp.read_exact(&mut fixed).await.map_err(|e| e.to_string())?;
        if &fixed[..12] != SIGNATURE {
            return Err("no PROXY protocol v2 header from a proxy_protocol_from peer".to_string());
        }
        let length = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        let mut header = vec![0u8; FIXED_LEN + length];
        header[..FIXED_LEN].copy_from_slice(&fixed);
        tcp.read_exact(&mut header[FIXED_LEN..]).await.map_err(|e| e.to_string())?;
        let header = Header::try_from(header.as_slice()).map_err(|e| format!("bad PROXY v2 header: {e}"))?;
        Ok(match (header.command, header.addresses) {
            (Command::Local, _) => None,
            (Command::Proxy, Addresses::IPv4(ip)) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
            (Command::Proxy, Addresses::IPv6(ip)) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
            // UNIX or unspecified sources: keep the proxy's address.
            (Command::Proxy, _) => None,
        })
    };
    tokio::time::timeout(HEADER_TIMEOUT, read).await.map_err(|_| "no PROXY header within 5 s".to_string())?
}

#[cfg(test)]
mod tests {
    use ppp::v2::{Builder, Protocol, Version};
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[test]
    fn trusted_peers_are_cidrs_or_addresses() {
        let proxy = ProxyProtocol::new(&["10.0.0.0/8".into(), "::1".into(), "192.0.2.7".into()]).unwrap();
        assert!(proxy.trusts("10.1.2.3".parse().unwrap()));
        assert!(proxy.trusts("::1".parse().unwrap()));
        assert!(proxy.trusts("::ffff:192.0.2.7".parse().unwrap()), "IPv4-mapped addresses count as IPv4");
        assert!(!proxy.trusts("192.0.2.8".parse().unwrap()));
        assert!(ProxyProtocol::new(&["10.0.0.0/33".into()]).unwrap_err().contains("10.0.0.0/33"));
    }

    #[tokio::test]
    async fn the_header_names_the_client_and_leaves_the_rest() {
        let (mut client, mut server) = pair().await;
        let addresses =
            ("203.0.113.9:4711".parse::<SocketAddr>().unwrap(), "192.0.2.1:25".parse::<SocketAddr>().unwrap());
        let header =
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses).build().unwrap();
        client.write_all(&[header.as_slice(), b"EHLO x\r\n"].concat()).await.unwrap();
        assert_eq!(read_header(&mut server).await.unwrap(), Some("203.0.113.9:4711".parse().unwrap()));
        let mut rest = [0u8; 8];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"EHLO x\r\n");

        let (mut client, mut server) = pair().await;
        let local =
            Builder::with_addresses(Version::Two | Command::Local, Protocol::Unspecified, Addresses::Unspecified)
                .build()
                .unwrap();
        client.write_all(&local).await.unwrap();
        assert_eq!(read_header(&mut server).await.unwrap(), None, "a health check keeps the proxy's address");

        let (mut client, mut server) = pair().await;
        client.write_all(b"EHLO spoofing.example\r\n").await.unwrap();
        assert!(read_header(&mut server).await.is_err(), "a trusted peer must send the header");
    }
}
