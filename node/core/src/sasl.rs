//! SASL PLAIN (RFC 4616), shared by every protocol that offers AUTH.

use base64::Engine;

/// Decodes a base64 PLAIN response, `[authzid] NUL authcid NUL passwd`, into the user name
/// and password. An authorization identity other than the authentication identity (acting
/// as someone else) is refused, like malformed input: `None`.
pub fn decode_plain(response: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(response.trim()).ok()?;
    let mut parts = decoded.split(|&byte| byte == 0);
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || (!authzid.is_empty() && authzid != authcid) {
        return None;
    }
    Some((String::from_utf8(authcid.to_vec()).ok()?, String::from_utf8(password.to_vec()).ok()?))
}

/// Decodes a base64 response line (SASL LOGIN steps) into text.
pub fn decode_text(response: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(response.trim()).ok()?;
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(raw: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn plain_responses_follow_rfc_4616() {
        assert_eq!(decode_plain(&encode(b"\0alice@x.test\0secret")), Some(("alice@x.test".into(), "secret".into())));
        assert_eq!(
            decode_plain(&encode(b"alice@x.test\0alice@x.test\0secret")),
            Some(("alice@x.test".into(), "secret".into()))
        );
        assert_eq!(decode_plain(&encode(b"bob@x.test\0alice@x.test\0secret")), None, "acting as another user");
        assert_eq!(decode_plain(&encode(b"\0alice")), None);
        assert_eq!(decode_plain(&encode(b"\0a\0b\0c")), None);
        assert_eq!(decode_plain("not base64!"), None);
        assert_eq!(decode_text(&encode(b"alice")), Some("alice".into()));
    }
}
