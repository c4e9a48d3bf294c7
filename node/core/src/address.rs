//! Validation and normalisation of domain names and addresses.

use crate::error::{CoreError, Result};

/// Normalises a domain name: lowercase ASCII, no trailing dot, RFC 1035 §2.3.1 labels.
pub fn normalize_domain(name: &str) -> Result<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(CoreError::invalid(format!("domain {name:?} must be 1 to 253 characters long")));
    }
    if !name.is_ascii() {
        return Err(CoreError::invalid(format!("domain {name} is not ASCII; give its IDNA (punycode, xn--...) form")));
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
        if !valid {
            return Err(CoreError::invalid(format!(
                "domain {name} has an invalid label {label:?}: use letters, digits and inner hyphens, at most 63 each"
            )));
        }
    }
    Ok(name)
}

/// Normalises an address `local@domain`: lowercase (local parts are case-insensitive in
/// wmail, as in most deployments), RFC 5321 §4.1.2 dot-atom local part of at most 64 octets
/// (§4.5.3.1.1).
pub fn normalize_address(address: &str) -> Result<String> {
    let address = address.trim();
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(CoreError::invalid(format!("{address:?} is not an address: expected local@domain")));
    };
    let domain = normalize_domain(domain)?;
    let local = local.to_lowercase();
    const SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~.";
    let valid = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.bytes().all(|byte| byte.is_ascii_alphanumeric() || SPECIALS.contains(&byte) || byte >= 0x80);
    if !valid {
        return Err(CoreError::invalid(format!(
            "local part {local:?} of {address} is invalid: use letters, digits and . ! # $ % & ' * + - / = ? ^ _ ` {{ | }} ~, at most 64 characters"
        )));
    }
    Ok(format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_lowercased_and_checked() {
        assert_eq!(normalize_domain("Example.COM.").unwrap(), "example.com");
        for bad in ["", "-a.com", "a..com", "a_b.com", "bücher.de", &"a".repeat(64)] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn addresses_are_lowercased_and_checked() {
        assert_eq!(normalize_address(" Alice.Smith+tag@Example.com ").unwrap(), "alice.smith+tag@example.com");
        for bad in ["alice", "@example.com", "a..b@example.com", ".a@example.com", "a b@example.com", "a@b@"] {
            assert!(normalize_address(bad).is_err(), "{bad:?} accepted");
        }
    }
}
