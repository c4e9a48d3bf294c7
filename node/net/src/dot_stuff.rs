//! Turns a stored message into the dot-terminated form of POP3 (RFC 1939 §3) and SMTP DATA
//! (RFC 5321 §4.5.2): CRLF line ends, a leading "." doubled, and (for POP3 TOP) only the
//! header and the first N body lines.

/// Streaming encoder; feed chunks in order, then call [`DotStuffer::finish`].
pub struct DotStuffer {
    at_line_start: bool,
    previous: u8,
    /// `None`: the whole message; `Some(n)`: the header and `n` body lines (TOP).
    body_lines_left: Option<usize>,
    in_header: bool,
    current_line_empty: bool,
    done: bool,
}

impl DotStuffer {
    /// An encoder for the whole message (`None`) or for TOP with `body_lines` lines.
    pub fn new(body_lines: Option<usize>) -> Self {
        Self {
            at_line_start: true,
            previous: b'\n',
            body_lines_left: body_lines,
            in_header: true,
            current_line_empty: true,
            done: false,
        }
    }

    /// Returns whether the encoder wants no more input (TOP reached its line count).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Appends the encoding of `chunk` to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &byte in chunk {
            if self.done {
                return;
            }
            if byte == b'\n' {
                if self.previous != b'\r' {
                    out.push(b'\r');
                }
                out.push(b'\n');
                self.end_line();
            } else {
                if self.at_line_start && byte == b'.' {
                    out.push(b'.');
                }
                if byte != b'\r' {
                    self.current_line_empty = false;
                }
                out.push(byte);
                self.at_line_start = false;
            }
            self.previous = byte;
        }
    }

    fn end_line(&mut self) {
        self.at_line_start = true;
        if self.in_header {
            if self.current_line_empty {
                self.in_header = false;
                if self.body_lines_left == Some(0) {
                    self.done = true;
                }
            }
        } else if let Some(left) = self.body_lines_left.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.done = true;
            }
        }
        self.current_line_empty = true;
    }

    /// Appends the terminator: a CRLF if the message did not end with one, then ".CRLF".
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(message: &[u8], body_lines: Option<usize>, chunk: usize) -> Vec<u8> {
        let mut stuffer = DotStuffer::new(body_lines);
        let mut out = Vec::new();
        for piece in message.chunks(chunk.max(1)) {
            stuffer.push(piece, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn leading_dots_are_doubled_and_line_ends_become_crlf() {
        let message = b"Subject: x\r\n\r\n.hidden\r\nbare lf\n..two\r\nno end";
        let expected = b"Subject: x\r\n\r\n..hidden\r\nbare lf\r\n...two\r\nno end\r\n.\r\n";
        for chunk in 1..message.len() {
            assert_eq!(encode(message, None, chunk), expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn top_sends_the_header_and_n_body_lines() {
        let message = b"A: 1\r\nB: 2\r\n\r\nline 1\r\nline 2\r\nline 3\r\n";
        assert_eq!(encode(message, Some(0), 3), b"A: 1\r\nB: 2\r\n\r\n.\r\n");
        assert_eq!(encode(message, Some(2), 1), b"A: 1\r\nB: 2\r\n\r\nline 1\r\nline 2\r\n.\r\n");
        assert_eq!(encode(message, Some(10), 7), [&message[..], b".\r\n"].concat());
    }
}
