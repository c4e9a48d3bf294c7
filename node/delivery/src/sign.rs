//! DKIM signing of outgoing mail (RFC 6376, RFC 8463) with mail-auth, using the active key
//! of the From: domain (so the signature aligns with DMARC, RFC 7489 §3.1.1).

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{DkimKey as SigningKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcOutput, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult,
};
use wmail_core::{DkimAlgorithm, DkimKey};

/// The header fields signed when present (RFC 6376 §5.4.1 lists these as the ones that
/// should be signed).
const SIGNED_HEADERS: [&str; 13] = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
];

/// The domain of the message's (first) From: address, lowercased, from its header section.
pub fn from_domain(header_section: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(header_section)?;
    let address = message.from()?.first()?.address()?.to_owned();
    address.rsplit_once('@').map(|(_, domain)| domain.trim_end_matches('>').to_ascii_lowercase())
}

/// Signs `message` (the complete message as sent) for `domain`; returns the
/// `DKIM-Signature:` header field to put in front of it, CRLF-terminated.
pub fn sign(message: &[u8], domain: &str, key: &DkimKey) -> Result<String, String> {
    let describe = |error: mail_auth::Error| format!("DKIM signing for {domain} failed: {error}");
    let signer = DkimSigner::from_key(signing_key(key).map_err(describe)?)
        .domain(domain)
        .selector(&key.selector)
        .headers(SIGNED_HEADERS);
    Ok(signer.sign(message).map_err(describe)?.to_header())
}

fn signing_key(key: &DkimKey) -> Result<SigningKey, mail_auth::Error> {
    Ok(match key.algorithm {
        DkimAlgorithm::Rsa => {
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.private_key.as_slice());
            RsaKey::<Sha256>::from_key_der(der.into())?.into()
        }
        DkimAlgorithm::Ed25519 => Ed25519Key::from_pkcs8_der(&key.private_key)?.into(),
    })
}

/// Seals a forwarded message (RFC 8617 §5.1): verifies its DKIM signatures and ARC chain
/// as it leaves, records them in ARC-Authentication-Results under `hostname`, and adds
/// an ARC set signed with `domain`'s key (the forwarding domain), so the next receiver can
/// trust the results even though forwarding broke SPF. Returns the three header fields
/// (CRLF-terminated), or `None` when the incoming chain failed (it cannot be sealed).
pub async fn arc_seal(
    authenticator: &MessageAuthenticator,
    message: &[u8],
    domain: &str,
    key: &DkimKey,
    hostname: &str,
    remote_ip: std::net::IpAddr,
) -> Result<Option<String>, String> {
    let describe = |error: mail_auth::Error| format!("ARC sealing for {domain} failed: {error}");
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        return Err(format!("ARC sealing for {domain} failed: the header section cannot be parsed"));
    };
    let arc = authenticator.verify_arc(&parsed).await;
    // Seal only a chain that verifies (or none at all): RFC 8617 §5.1.2 has a failed
    // chain end with cv=fail, which tells the next hop nothing it can use.
    let has_chain = !parsed.as_headers.is_empty() || !parsed.ams_headers.is_empty() || !parsed.aar_headers.is_empty();
    if has_chain && !matches!(arc.result(), mail_auth::DkimResult::Pass) {
        return Ok(None);
    }
    let dkim = authenticator.verify_dkim(&parsed).await;
    let mut results =
        AuthenticationResults::new(hostname).with_dkim_results(&dkim, parsed.from()).with_arc_result(&arc, remote_ip);
    // SPF and DMARC can only be judged where the message arrived: carry over what this
    // server recorded then (its own Authentication-Results), which forwarding would
    // otherwise lose (RFC 8617 §4.1.1, the AAR is a copy of the receiver's results).
    let receipt = ReceiptResults::parse(message, hostname);
    if let Some((result, mail_from)) = &receipt.spf {
        let spf = SpfOutput::new(mail_from.rsplit_once('@').map_or("", |(_, d)| d).to_owned()).with_result(*result);
        results = results.with_spf_mailfrom_result(&spf, remote_ip, mail_from, "");
    }
    if let Some((result, domain)) = &receipt.dmarc {
        let dmarc = DmarcOutput::new(domain.clone()).with_spf_result(result.clone()).with_dkim_result(result.clone());
        results = results.with_dmarc_result(&dmarc);
    }
    let mut headers: Vec<&str> = SIGNED_HEADERS.to_vec();
    headers.push("DKIM-Signature");
    let sealer = ArcSealer::from_key(signing_key(key).map_err(describe)?)
        .domain(domain)
        .selector(&key.selector)
        .headers(headers);
    // RSA signing is CPU work: off the async workers when the runtime allows.
    let seal = || sealer.seal(&parsed, &results, &arc).map(|set| set.to_header());
    let sealed = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(seal),
        _ => seal(),
    };
    Ok(Some(sealed.map_err(describe)?))
}

/// The SPF (MAIL FROM) and DMARC results this server recorded when the message arrived.
#[derive(Debug, Default, PartialEq)]
struct ReceiptResults {
    spf: Option<(SpfResult, String)>,
    /// (result, From: domain)
    dmarc: Option<(DmarcResult, String)>,
}

impl ReceiptResults {
    /// Reads them from the first `Authentication-Results` field under `hostname` (the
    /// inbound checks put it first and drop any other claiming that name).
    fn parse(message: &[u8], hostname: &str) -> Self {
        let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else { return Self::default() };
        let ours = parsed.headers().iter().find_map(|header| {
            if !header.name().eq_ignore_ascii_case("Authentication-Results") {
                return None;
            }
            let start = header.offset_start() as usize;
            let end = (header.offset_end() as usize).min(message.len());
            let value = String::from_utf8_lossy(message.get(start..end)?).into_owned();
            let (id, rest) = value.split_once(';')?;
            id.trim().eq_ignore_ascii_case(hostname).then(|| rest.to_owned())
        });
        let Some(clauses) = ours else { return Self::default() };
        let mut found = Self::default();
        for clause in clauses.split(';') {
            let clause = clause.split_whitespace().collect::<Vec<_>>();
            let Some((method, result)) = clause.first().and_then(|first| first.split_once('=')) else { continue };
            let property = |name: &str| {
                clause.iter().find_map(|part| part.strip_prefix(name)).map(|value| value.trim_matches('"').to_owned())
            };
            match method.to_ascii_lowercase().as_str() {
                "spf" => {
                    let Some(mail_from) = property("smtp.mailfrom=") else { continue };
                    let result = match result.to_ascii_lowercase().as_str() {
                        "pass" => SpfResult::Pass,
                        "fail" => SpfResult::Fail,
                        "softfail" => SpfResult::SoftFail,
                        "neutral" => SpfResult::Neutral,
                        "temperror" => SpfResult::TempError,
                        "permerror" => SpfResult::PermError,
                        _ => SpfResult::None,
                    };
                    found.spf = Some((result, mail_from));
                }
                "dmarc" => {
                    if let Some(domain) = property("header.from=") {
                        let result = match result.to_ascii_lowercase().as_str() {
                            "pass" => DmarcResult::Pass,
                            "fail" => DmarcResult::Fail(mail_auth::Error::NotAligned),
                            "temperror" => DmarcResult::TempError(mail_auth::Error::NotAligned),
                            "permerror" => DmarcResult::PermError(mail_auth::Error::NotAligned),
                            _ => DmarcResult::None,
                        };
                        found.dmarc = Some((result, domain));
                    }
                }
                _ => {}
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_results_are_read_from_our_own_field_only() {
        let message = b"Authentication-Results: other.test; spf=fail smtp.mailfrom=x@evil.test\r\n\
Authentication-Results: mx.test;\r\n\tdkim=pass header.d=a.test;\r\n\tspf=none (mx.test: no SPF records) smtp.helo=h.test;\r\n\
\tspf=pass (mx.test: domain of n@a.test designates 192.0.2.1 as permitted sender) smtp.mailfrom=n@a.test;\r\n\
\tdmarc=pass header.from=a.test policy.dmarc=reject\r\nSubject: x\r\n\r\nbody\r\n";
        let found = ReceiptResults::parse(message, "mx.test");
        assert_eq!(found.spf, Some((SpfResult::Pass, "n@a.test".to_owned())));
        assert_eq!(found.dmarc, Some((DmarcResult::Pass, "a.test".to_owned())));
        assert_eq!(ReceiptResults::parse(message, "nobody.test"), ReceiptResults::default());
    }

    #[test]
    fn the_from_domain_is_found_in_display_name_forms() {
        assert_eq!(
            from_domain(b"From: Alice <alice@Example.COM>\r\nSubject: x\r\n\r\n").as_deref(),
            Some("example.com")
        );
        assert_eq!(from_domain(b"Subject: x\r\n\r\n"), None);
    }
}
