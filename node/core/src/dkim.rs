//! DKIM keys of local domains (RFC 6376, Ed25519 per RFC 8463): generated here with
//! aws-lc-rs, kept in the replicated state, published by the operator as DNS TXT records.
//! Signing itself happens where mail leaves (the delivery worker).

use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use wmail_storage::{DkimAlgorithm, DkimKey};

use crate::{Command, Core, CoreError, ErrorCode, Result};

/// The TXT record that publishes `key` (RFC 6376 §3.6.1), as `(name, value)`.
pub fn dns_record(domain: &str, key: &DkimKey) -> (String, String) {
    let kind = match key.algorithm {
        DkimAlgorithm::Rsa => "rsa",
        DkimAlgorithm::Ed25519 => "ed25519",
    };
    let public = base64::engine::general_purpose::STANDARD.encode(&key.public_key);
    (format!("{}._domainkey.{domain}", key.selector), format!("v=DKIM1; k={kind}; p={public}"))
}

/// The record in zone-file form; TXT strings longer than 255 octets are split
/// (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2).
pub fn zone_line(domain: &str, key: &DkimKey) -> String {
    let (name, value) = dns_record(domain, key);
    let strings: Vec<String> =
        value.as_bytes().chunks(255).map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk))).collect();
    format!("{name}. IN TXT ( {} )", strings.join(" "))
}

fn generate(algorithm: DkimAlgorithm) -> Result<(Vec<u8>, Vec<u8>)> {
    let failed = |what: &str| CoreError::internal("generating a DKIM key", what.to_owned());
    match algorithm {
        DkimAlgorithm::Rsa => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| failed("RSA key generation failed"))?;
            let private = pair.as_der().map_err(|_| failed("RSA private key encoding failed"))?;
            let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
                .as_der()
                .map_err(|_| failed("RSA public key encoding failed"))?;
            Ok((private.as_ref().to_vec(), public.as_ref().to_vec()))
        }
        DkimAlgorithm::Ed25519 => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let document = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| failed("Ed25519 key generation failed"))?;
            let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(document.as_ref())
                .map_err(|_| failed("Ed25519 key decoding failed"))?;
            let public = aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref().to_vec();
            Ok((document.as_ref().to_vec(), public))
        }
    }
}

impl Core {
    /// Generates a DKIM key for a local domain and stores it. The selector defaults to
    /// `wmail<yyyymmdd>`. The domain's first key signs at once; a later one only with
    /// `activate` (publish its record first, then activate, for rotation without failures).
    pub async fn generate_dkim_key(
        &self,
        domain: &str,
        selector: Option<&str>,
        algorithm: DkimAlgorithm,
        activate: bool,
    ) -> Result<DkimKey> {
        let domain = crate::normalize_domain(domain)?;
        let selector = match selector {
            Some(selector) => selector.to_ascii_lowercase(),
            None => format!("wmail{}", chrono::Utc::now().format("%Y%m%d")),
        };
        let (private_key, public_key) = tokio::task::spawn_blocking(move || generate(algorithm))
            .await
            .map_err(|error| CoreError::internal("generating a DKIM key", error))??;
        let key =
            DkimKey { selector, algorithm, private_key, public_key, created_ms: crate::now_ms(), active: activate };
        self.execute(Command::AddDkimKey { domain: domain.clone(), key: key.clone() }).await?;
        self.dkim_keys(&domain)?
            .into_iter()
            .find(|stored| stored.selector == key.selector)
            .ok_or_else(|| CoreError::internal("generating a DKIM key", "the stored key vanished"))
    }

    /// A domain's DKIM keys.
    pub fn dkim_keys(&self, domain: &str) -> Result<Vec<DkimKey>> {
        Ok(self.state.dkim_keys(&crate::normalize_domain(domain)?)?)
    }

    /// Whether any local domain has a DKIM key (cheap: lets senders skip reading messages).
    pub fn has_dkim_keys(&self) -> Result<bool> {
        Ok(self.state.has_dkim_keys()?)
    }

    /// The key that signs mail from `domain`, if it has one.
    pub fn dkim_signing_key(&self, domain: &str) -> Result<Option<DkimKey>> {
        Ok(self.dkim_keys(domain)?.into_iter().find(|key| key.active))
    }

    /// Makes `selector` the domain's signing key.
    pub async fn activate_dkim_key(&self, domain: &str, selector: &str) -> Result<()> {
        let domain = crate::normalize_domain(domain)?;
        self.execute(Command::ActivateDkimKey { domain, selector: selector.to_ascii_lowercase() }).await.map(drop)
    }

    /// Removes a DKIM key; refuses to remove the active one while others exist, since mail
    /// would silently go unsigned (activate another first).
    pub async fn remove_dkim_key(&self, domain: &str, selector: &str) -> Result<()> {
        let domain = crate::normalize_domain(domain)?;
        let selector = selector.to_ascii_lowercase();
        let keys = self.dkim_keys(&domain)?;
        if keys.len() > 1 && keys.iter().any(|key| key.active && key.selector == selector) {
            return Err(CoreError::new(
                ErrorCode::Conflict,
                format!("{selector} is the active DKIM key of {domain}; activate another selector first"),
            ));
        }
        self.execute(Command::RemoveDkimKey { domain, selector }).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_as_mail_auth_would_and_publish_as_txt() {
        for algorithm in [DkimAlgorithm::Rsa, DkimAlgorithm::Ed25519] {
            let (private_key, public_key) = generate(algorithm).unwrap();
            let key =
                DkimKey { selector: "s1".into(), algorithm, private_key, public_key, created_ms: 0, active: true };
            let (name, value) = dns_record("example.com", &key);
            assert_eq!(name, "s1._domainkey.example.com");
            assert!(value.starts_with("v=DKIM1; k="), "{value}");
            let line = zone_line("example.com", &key);
            assert!(line.split('"').all(|part| part.len() <= 255), "{line}");
            match algorithm {
                DkimAlgorithm::Rsa => {
                    assert!(key.public_key.len() > 256, "a 2048-bit SubjectPublicKeyInfo");
                    aws_lc_rs::rsa::KeyPair::from_pkcs8(&key.private_key).unwrap();
                }
                DkimAlgorithm::Ed25519 => {
                    assert_eq!(key.public_key.len(), 32);
                    aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&key.private_key).unwrap();
                }
            }
        }
    }
}
