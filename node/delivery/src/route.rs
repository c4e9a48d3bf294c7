//! Where mail for a domain goes: a smarthost, a static route, or the domain's MX hosts
//! (RFC 5321 §5.1), resolved with hickory-resolver.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

use crate::client::Reply;

/// One host to try, with its addresses in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The host name (for TLS server names, logs and DSNs' Remote-MTA).
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
    /// Credentials to authenticate with (the smarthost's, when configured).
    pub credentials: Option<Arc<Credentials>>,
}

/// A relay login (RFC 4954).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

/// A static route of the `[delivery.routes]` table (the seeds' "direct delivery" list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// `host:port` targets, tried in order.
    pub targets: Vec<String>,
    /// Whether the domain's MX hosts are tried when every target fails to connect.
    pub mx_fallback: bool,
}

/// Why no host could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The domain cannot receive mail: it does not exist or publishes a null MX.
    Permanent(Reply),
    /// DNS failed for now.
    Temporary(Reply),
}

/// Resolves destinations.
pub struct Router {
    resolver: TokioResolver,
    remote_port: u16,
    smarthost: Option<String>,
    smarthost_credentials: Option<Arc<Credentials>>,
    routes: HashMap<String, StaticRoute>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("remote_port", &self.remote_port).field("smarthost", &self.smarthost).finish()
    }
}

impl Router {
    /// A router using `dns_servers` (`ip:port`; empty: the system's resolv.conf).
    pub fn new(
        dns_servers: &[SocketAddr],
        remote_port: u16,
        smarthost: Option<String>,
        routes: HashMap<String, StaticRoute>,
    ) -> std::io::Result<Self> {
        let resolver = wmail_net::dns::resolver(dns_servers)?;
        let routes = routes.into_iter().map(|(domain, route)| (domain.to_ascii_lowercase(), route)).collect();
        Ok(Router { resolver, remote_port, smarthost, smarthost_credentials: None, routes })
    }

    /// The resolver routes are looked up with (shared with ARC verification).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// Authenticates to the smarthost with these credentials (over TLS only).
    pub fn with_smarthost_credentials(mut self, credentials: Credentials) -> Self {
        self.smarthost_credentials = Some(Arc::new(credentials));
        self
    }

    /// The hosts to try for `domain`, best first.
    pub async fn route(&self, domain: &str) -> Result<Vec<Hop>, RouteError> {
        if let Some(smarthost) = &self.smarthost {
            let mut hop = self.target(smarthost).await?;
            hop.credentials = self.smarthost_credentials.clone();
            return Ok(vec![hop]);
        }
        if let Some(route) = self.routes.get(&domain.to_ascii_lowercase()) {
            let mut hops = Vec::new();
            for target in &route.targets {
                match self.target(target).await {
                    Ok(hop) => hops.push(hop),
                    Err(error) if route.targets.len() == 1 && !route.mx_fallback => return Err(error),
                    Err(error) => tracing::warn!(%domain, %target, ?error, "static route target does not resolve"),
                }
            }
            if route.mx_fallback
                && let Ok(mx) = self.mx_hops(domain).await
            {
                hops.extend(mx);
            }
            return Ok(hops);
        }
        if let Some(literal) = domain.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            // RFC 5321 §4.1.3 address literal.
            let ip_text = match literal.get(..5) {
                Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &literal[5..],
                _ => literal,
            };
            let ip: IpAddr = ip_text.parse().map_err(|_| {
                RouteError::Permanent(Reply::local(553, [5, 1, 2], format!("bad address literal [{literal}]")))
            })?;
            let addrs = vec![SocketAddr::new(ip, self.remote_port)];
            return Ok(vec![Hop { name: literal.to_owned(), addrs, credentials: None }]);
        }
        self.mx_hops(domain).await
    }

    /// The host of a forward server (`host:port`) that replicated state names, e.g. where a
    /// domain's unknown recipients go; like a static route, DNS trouble defers.
    pub async fn relay(&self, target: &str) -> Result<Vec<Hop>, RouteError> {
        self.target(target).await.map(|hop| vec![hop])
    }

    /// A `host:port` target (smarthost, static route).
    async fn target(&self, target: &str) -> Result<Hop, RouteError> {
        let (host, port) = target.rsplit_once(':').ok_or_else(|| {
            RouteError::Permanent(Reply::local(554, [5, 3, 5], format!("route {target:?} has no port")))
        })?;
        let port: u16 = port.parse().map_err(|_| {
            RouteError::Permanent(Reply::local(554, [5, 3, 5], format!("route {target:?} has a bad port")))
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // A configured host that does not resolve is the operator's to fix: defer, never
        // bounce everything that goes through it.
        let addrs = self.addresses(host, port).await.map_err(|error| match error {
            RouteError::Permanent(reply) => RouteError::Temporary(Reply::local(
                451,
                [4, 4, 3],
                format!("configured route {target} does not resolve ({}); check [delivery]", reply.text),
            )),
            temporary => temporary,
        })?;
        Ok(Hop { name: host.to_owned(), addrs, credentials: None })
    }

    /// The domain's MX hosts by preference, equal preferences in random order (RFC 5321
    /// §5.1); without MX records the domain itself (implicit MX); a null MX (RFC 7505) or a
    /// domain that does not exist fails at once.
    async fn mx_hops(&self, domain: &str) -> Result<Vec<Hop>, RouteError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut exchanges: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(error) if error.is_nx_domain() => {
                return Err(RouteError::Permanent(Reply::local(
                    550,
                    [5, 1, 2],
                    format!("the domain {domain} does not exist (DNS NXDOMAIN); check the recipient's address"),
                )));
            }
            Err(error) if error.is_no_records_found() => Vec::new(),
            Err(error) => {
                return Err(RouteError::Temporary(Reply::local(
                    451,
                    [4, 4, 3],
                    format!("DNS lookup of MX records for {domain} failed: {error}"),
                )));
            }
        };
        if exchanges.len() == 1 && exchanges[0].1.trim_end_matches('.').is_empty() {
            // RFC 7505 §4.1.
            return Err(RouteError::Permanent(Reply::local(
                556,
                [5, 1, 10],
                format!("the domain {domain} does not accept mail (null MX)"),
            )));
        }
        exchanges.retain(|(_, host)| !host.trim_end_matches('.').is_empty());
        if exchanges.is_empty() {
            // RFC 5321 §5.1: no MX records, the domain is its own mail exchanger.
            let addrs = self.addresses(domain, self.remote_port).await?;
            return Ok(vec![Hop { name: domain.to_owned(), addrs, credentials: None }]);
        }
        exchanges.shuffle(&mut rand::thread_rng());
        exchanges.sort_by_key(|(preference, _)| *preference); // stable: shuffled within a preference
        let mut hops = Vec::new();
        let mut last_error = None;
        for (_, host) in exchanges {
            let name = host.trim_end_matches('.').to_owned();
            match self.addresses(&name, self.remote_port).await {
                Ok(addrs) => hops.push(Hop { name, addrs, credentials: None }),
                Err(error) => last_error = Some(error),
            }
        }
        match (hops.is_empty(), last_error) {
            (true, Some(RouteError::Permanent(_))) => Err(RouteError::Temporary(Reply::local(
                451,
                [4, 4, 4],
                format!("no MX host of {domain} has an address yet"),
            ))),
            (true, Some(error)) => Err(error),
            _ => Ok(hops),
        }
    }

    /// The IPv6 and IPv4 addresses of a host (an IP literal is its own address).
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => {
                let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                if addrs.is_empty() {
                    return Err(RouteError::Permanent(Reply::local(
                        550,
                        [5, 1, 2],
                        format!("the host {host} has no address"),
                    )));
                }
                Ok(addrs)
            }
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => Err(RouteError::Permanent(
                Reply::local(550, [5, 1, 2], format!("the host {host} has no address (DNS: {error})")),
            )),
            Err(error) => Err(RouteError::Temporary(Reply::local(
                451,
                [4, 4, 3],
                format!("DNS lookup of {host} failed: {error}"),
            ))),
        }
    }
}
