//! DNS block lists (RFC 5782): the client address, reversed, looked up under each zone;
//! an A record in 127.0.0.0/8 means listed. Answers are cached by the resolver for their
//! TTL.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;

/// What a listing in a zone leads to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DnsblAction {
    /// Refuse the client (at MAIL FROM, `550 5.7.1`).
    Reject,
    /// Add this to the message's spam score.
    Score(f32),
}

/// A DNSBL zone and its action.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsblZone {
    /// The zone, such as `zen.spamhaus.org`.
    pub zone: String,
    /// What a listing leads to.
    pub action: DnsblAction,
}

/// A zone that lists the client.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsblHit {
    /// The zone.
    pub zone: String,
    /// The A records it answered (the list's return codes).
    pub answer: String,
    /// Its action.
    pub action: DnsblAction,
}

impl DnsblHit {
    /// The score this hit adds (a rejecting zone never gets as far as scoring).
    pub fn score(&self) -> f32 {
        match self.action {
            DnsblAction::Score(score) => score,
            DnsblAction::Reject => 0.0,
        }
    }
}

/// The name to look up for `address` in `zone` (RFC 5782 §2.1 IPv4 octets reversed, §2.4
/// IPv6 nibbles reversed).
pub(crate) fn query_name(address: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str(zone);
            name.push('.');
            name
        }
    }
}

/// Looks `client` up in every zone at once; zones that fail to answer are skipped (logged).
pub(crate) async fn lookup_all(resolver: &TokioResolver, zones: &[DnsblZone], client: IpAddr) -> Vec<DnsblHit> {
    // Loopback and private clients are never listed, but some lists answer for 127.0.0.2
    // as a test entry; only skip the unspecified address.
    if client.is_unspecified() {
        return Vec::new();
    }
    let lookups = zones.iter().map(|zone| async move {
        let name = query_name(client, &zone.zone);
        match resolver.ipv4_lookup(name.as_str()).await {
            Ok(answer) => {
                let codes: Vec<String> = answer
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        hickory_resolver::proto::rr::RData::A(a) if a.0.octets()[0] == 127 => Some(a.0.to_string()),
                        _ => None,
                    })
                    .collect();
                (!codes.is_empty()).then(|| DnsblHit {
                    zone: zone.zone.clone(),
                    answer: codes.join(","),
                    action: zone.action,
                })
            }
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => None,
            Err(error) => {
                tracing::warn!(zone = %zone.zone, %client, %error, "DNSBL lookup failed; the zone is skipped");
                None
            }
        }
    });
    futures::future::join_all(lookups).await.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(query_name("192.0.2.99".parse().unwrap(), "bl.test"), "99.2.0.192.bl.test.");
        let v6 = query_name("2001:db8:1:2:3:4:567:89ab".parse().unwrap(), "ugly.example.com.");
        assert_eq!(v6, "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com.");
    }
}
