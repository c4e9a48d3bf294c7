//! The DNS resolver every part of a node uses (outbound routing, sender authentication,
//! DNSBL): hickory-resolver with its answer cache (honouring TTLs), pointed at the
//! `[dns] servers` of the config or at the system's resolv.conf.

use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// A caching resolver using `servers` (`ip:port`, over UDP with TCP fallback); empty: the
/// system's resolv.conf.
pub fn resolver(servers: &[SocketAddr]) -> std::io::Result<TokioResolver> {
    if servers.is_empty() {
        return TokioResolver::builder_tokio().and_then(|builder| builder.build()).map_err(std::io::Error::other);
    }
    let servers = servers
        .iter()
        .map(|server| {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            NameServerConfig::new(server.ip(), true, vec![udp, tcp])
        })
        .collect();
    let config = ResolverConfig::from_name_servers(servers);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build().map_err(std::io::Error::other)
}
