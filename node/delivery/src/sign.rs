//! DKIM signing of outgoing mail (RFC 6376, RFC 8463) with mail-auth, using the active key
//! of the From: domain (so the signature aligns with DMARC, RFC 7489 §3.1.1).

use mail_auth::common::crypto::{DkimKey as SigningKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
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
    let signing_key: SigningKey = match key.algorithm {
        DkimAlgorithm::Rsa => {
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.private_key.as_slice());
            RsaKey::<Sha256>::from_key_der(der.into()).map_err(describe)?.into()
        }
        DkimAlgorithm::Ed25519 => Ed25519Key::from_pkcs8_der(&key.private_key).map_err(describe)?.into(),
    };
    let signer = DkimSigner::from_key(signing_key).domain(domain).selector(&key.selector).headers(SIGNED_HEADERS);
    Ok(signer.sign(message).map_err(describe)?.to_header())
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
