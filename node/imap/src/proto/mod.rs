//! The sans-IO half of IMAP: command syntax in, response syntax out. Nothing here knows
//! what a mailbox is or does I/O, so it can be fuzzed and reused by tools.
//!
//! A command arrives as [`Segment`]s: the text of each line (without CRLF) and the literals
//! between them. A text segment ending in a literal announcement (`{N}`, `{N+}`, `~{N}`)
//! is followed by that literal. APPEND message literals are streamed to the blob store by
//! the session instead of being held here; they appear as [`Segment::Message`].

pub mod body;
pub mod command;
pub mod parser;
pub mod response;

/// One piece of a command as read from the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A line without its CRLF; may end with a literal announcement.
    Text(Vec<u8>),
    /// The octets of a literal announced at the end of the previous text segment.
    Literal(Vec<u8>),
    /// An APPEND message literal, stored elsewhere; the n-th `Message` segment of a
    /// command is `MessageRef { index: n }`.
    Message,
}

/// A literal announcement at the end of a line (RFC 9051 §4.3, RFC 7888 `{N+}`, RFC 3516
/// `~{N}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiteralAnnouncement {
    /// Octets that follow.
    pub length: u64,
    /// `{N+}`: the client does not wait for a continuation request.
    pub non_synchronizing: bool,
    /// `~{N}`: may contain NUL (literal8).
    pub binary: bool,
}
