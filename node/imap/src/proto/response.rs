//! Writers for the pieces of server responses (RFC 9051 §4 and §9): strings as quoted
//! strings or literals, NIL, flag lists. The session assembles whole responses from them.

/// Appends `value` as a quoted string when it is short, 7-bit and free of CR, LF, NUL,
/// and as a literal otherwise (RFC 9051 §4.3). `utf8` allows 8-bit text in quoted strings
/// (after `ENABLE UTF8=ACCEPT` or IMAP4rev2, RFC 9051 §4.3 `quoted` includes UTF-8).
pub fn push_string(out: &mut Vec<u8>, value: &[u8], utf8: bool) {
    let quotable = value.len() <= 1024
        && value.iter().all(|&byte| byte != b'\r' && byte != b'\n' && byte != 0 && (utf8 || byte < 0x80))
        && (!utf8 || std::str::from_utf8(value).is_ok());
    if quotable {
        out.push(b'"');
        for &byte in value {
            if byte == b'"' || byte == b'\\' {
                out.push(b'\\');
            }
            out.push(byte);
        }
        out.push(b'"');
    } else {
        push_literal_header(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// Appends `NIL` or the string.
pub fn push_nstring(out: &mut Vec<u8>, value: Option<&[u8]>, utf8: bool) {
    match value {
        Some(value) => push_string(out, value, utf8),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends `value` as an atom when it is one (RFC 9051 `ASTRING-CHAR`), else as a string.
pub fn push_astring(out: &mut Vec<u8>, value: &[u8], utf8: bool) {
    let atom = !value.is_empty()
        && !value.eq_ignore_ascii_case(b"NIL")
        && value.iter().all(|&byte| byte > 0x20 && byte < 0x7f && !b"(){ %*\"\\".contains(&byte));
    if atom {
        out.extend_from_slice(value);
    } else {
        push_string(out, value, utf8);
    }
}

/// Appends the announcement of a literal of `length` octets: `{length}` CRLF.
pub fn push_literal_header(out: &mut Vec<u8>, length: u64) {
    out.extend_from_slice(format!("{{{length}}}\r\n").as_bytes());
}

/// Appends a parenthesised, space-separated flag list.
pub fn push_flags<S: AsRef<str>>(out: &mut Vec<u8>, flags: impl IntoIterator<Item = S>) {
    out.push(b'(');
    for (index, flag) in flags.into_iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(flag.as_ref().as_bytes());
    }
    out.push(b')');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(value: &[u8], utf8: bool) -> String {
        let mut out = Vec::new();
        push_string(&mut out, value, utf8);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        assert_eq!(string(b"hello \"you\" \\", false), r#""hello \"you\" \\""#);
        assert_eq!(string(b"two\r\nlines", false), "{10}\r\ntwo\r\nlines");
        assert_eq!(string("caf\u{e9}".as_bytes(), false), "{5}\r\ncaf\u{e9}");
        assert_eq!(string("caf\u{e9}".as_bytes(), true), "\"caf\u{e9}\"");
        let mut out = Vec::new();
        push_astring(&mut out, b"INBOX", false);
        push_astring(&mut out, b"a b", false);
        push_nstring(&mut out, None, false);
        assert_eq!(out, b"INBOX\"a b\"NIL");
    }
}
