//! DKIM signing of outgoing mail (RFC 6376, RFC 8463) with mail-auth, using the active key
//! of the From: domain (so the signature aligns with DMARC, RFC 7489 §3.1.1).

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{DkimKey as SigningKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};
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
    let results =
        AuthenticationResults::new(hostname).with_dkim_results(&dkim, parsed.from()).with_arc_result(&arc, remote_ip);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_from_domain_is_found_in_display_name_forms() {
        assert_eq!(
            from_domain(b"From: Alice <alice@Example.COM>\r\nSubject: x\r\n\r\n").as_deref(),
            Some("example.com")
        );
        assert_eq!(from_domain(b"Subject: x\r\n\r\n"), None);
    }
}
