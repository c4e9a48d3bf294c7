//! SMTP replies with enhanced status codes (RFC 2034, RFC 3463) on every line.

/// One reply: basic code, enhanced code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// RFC 5321 reply code.
    pub code: u16,
    /// RFC 3463 enhanced status code, e.g. "2.1.0"; empty for the greeting and the
    /// EHLO/HELO replies, which RFC 2034 §3 exempts.
    pub status: std::borrow::Cow<'static, str>,
    /// Human-readable text (may span lines).
    pub text: String,
}

impl Reply {
    /// Builds a reply.
    pub fn new(code: u16, status: impl Into<std::borrow::Cow<'static, str>>, text: impl Into<String>) -> Self {
        Self { code, status: status.into(), text: text.into() }
    }

    /// Writes the reply in wire form, one line per text line (RFC 5321 §4.2.1).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.lines().collect();
        let lines = if lines.is_empty() { vec![""] } else { lines };
        for (index, line) in lines.iter().enumerate() {
            let separator = if index + 1 == lines.len() { ' ' } else { '-' };
            let line = if self.status.is_empty() {
                format!("{}{}{}\r\n", self.code, separator, line)
            } else {
                format!("{}{}{} {}\r\n", self.code, separator, self.status, line)
            };
            out.extend_from_slice(line.as_bytes());
        }
    }

    /// Returns whether the reply is a success (2xx or 3xx).
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_use_dashes_and_carry_the_status_on_every_line() {
        let mut out = Vec::new();
        Reply::new(250, "2.0.0", "one\ntwo").write_to(&mut out);
        assert_eq!(out, b"250-2.0.0 one\r\n250 2.0.0 two\r\n");
        let mut out = Vec::new();
        Reply::new(250, "", "mx.test\nPIPELINING\nSIZE 10").write_to(&mut out);
        assert_eq!(out, b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
        let mut out = Vec::new();
        Reply::new(550, "5.1.1", "no such user").write_to(&mut out);
        assert_eq!(out, b"550 5.1.1 no such user\r\n");
    }
}
