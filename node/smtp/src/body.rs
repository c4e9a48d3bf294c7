//! Turns the message data of one transaction into the bytes that are stored: trace headers
//! first (Return-Path, Received, RFC 5321 §4.4), then on submission the Date and
//! Message-ID a client left out (RFC 6409 §8), then the data as received. The header
//! section is held until its end (at most [`MAX_HEADER_BYTES`]) so the hop count is known
//! before anything is stored; the body after it streams through.

use bytes::Bytes;

/// Largest header section held back for inspection; beyond it the data streams on.
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

/// Builds the stored message from data chunks.
pub struct BodyAssembler {
    trace_headers: Option<Vec<u8>>,
    header: Vec<u8>,
    /// How much of `header` was already searched for its end (linear, not quadratic).
    searched: usize,
    header_done: bool,
    add_missing: Option<MissingHeaders>,
    received_headers: usize,
    authors: Authors,
    data_size: u64,
    /// Whether to keep the header section (for delivery reports), and the kept copy.
    keep_section: bool,
    section: Vec<u8>,
}

/// What submission adds when the client did not.
pub struct MissingHeaders {
    /// `Date:` value to add.
    pub date: String,
    /// `Message-ID:` value to add.
    pub message_id: String,
}

impl BodyAssembler {
    /// Starts a message whose stored form begins with `trace_headers`.
    pub fn new(trace_headers: Vec<u8>, add_missing: Option<MissingHeaders>) -> Self {
        Self {
            trace_headers: Some(trace_headers),
            header: Vec::new(),
            searched: 0,
            header_done: false,
            add_missing,
            received_headers: 0,
            authors: Authors::default(),
            data_size: 0,
            keep_section: false,
            section: Vec::new(),
        }
    }

    /// Keeps a copy of the header section for [`BodyAssembler::header_section`].
    pub fn keep_header_section(&mut self) {
        self.keep_section = true;
    }

    /// The message's header section as received when it was asked to be kept (bounded by
    /// [`MAX_HEADER_BYTES`]; empty before it ended).
    pub fn header_section(&self) -> &[u8] {
        &self.section
    }

    /// Takes `bytes` the server added to the data (CRs before bare LFs) off its size.
    pub fn uncount(&mut self, bytes: u64) {
        self.data_size = self.data_size.saturating_sub(bytes);
    }

    /// Size of the data received so far (without added headers).
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// Number of Received headers seen in the message's header section.
    pub fn received_headers(&self) -> usize {
        self.received_headers
    }

    /// Who wrote the message and who last resent it (see [`Authors`]).
    pub fn authors(&self) -> &Authors {
        &self.authors
    }

    /// Takes a data chunk; returns what may be stored now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.data_size += chunk.len() as u64;
        if self.header_done {
            return vec![Bytes::copy_from_slice(chunk)];
        }
        self.header.extend_from_slice(chunk);
        // A terminator may straddle the previous chunk: look back 3 bytes.
        let from = self.searched.saturating_sub(3);
        self.searched = self.header.len();
        match header_end(&self.header, from) {
            Some(end) => self.release(end),
            None if self.header.len() > MAX_HEADER_BYTES => {
                let all = self.header.len();
                self.release(all)
            }
            None => Vec::new(),
        }
    }

    /// Ends the data; returns what is left to store.
    pub fn finish(&mut self) -> Vec<Bytes> {
        if self.header_done {
            return Vec::new();
        }
        let all = self.header.len();
        self.release(all)
    }

    /// Inspects `header[..end]` and releases everything held.
    fn release(&mut self, end: usize) -> Vec<Bytes> {
        self.header_done = true;
        let header = std::mem::take(&mut self.header);
        let (section, rest) = header.split_at(end);
        let mut has_date = false;
        let mut has_message_id = false;
        let fields = unfolded_fields(section);
        for (name, _) in &fields {
            match name.as_str() {
                "received" => self.received_headers += 1,
                "date" => has_date = true,
                "message-id" => has_message_id = true,
                _ => {}
            }
        }
        self.authors = authors(section, &fields);
        if self.keep_section {
            self.section = section.to_vec();
        }
        let mut prefix = self.trace_headers.take().unwrap_or_default();
        if let Some(missing) = self.add_missing.take() {
            if !has_date {
                prefix.extend_from_slice(format!("Date: {}\r\n", missing.date).as_bytes());
            }
            if !has_message_id {
                prefix.extend_from_slice(format!("Message-ID: {}\r\n", missing.message_id).as_bytes());
            }
        }
        vec![Bytes::from(prefix), Bytes::copy_from_slice(section), Bytes::copy_from_slice(rest)]
            .into_iter()
            .filter(|bytes| !bytes.is_empty())
            .collect()
    }
}

/// Splits a header section into (lowercase name, unfolded value) pairs (RFC 5322 §2.2.3).
fn unfolded_fields(section: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in section.split(|&byte| byte == b'\n') {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    fields
}

/// Who wrote a message and who last resent it (lowercase addresses). A message the user
/// resends unchanged (a "bounce" or redirect) keeps its author's From: and gains a block
/// of Resent-* fields on top, the newest first (RFC 5322 §3.6.6), whose Resent-From:
/// names the user.
#[derive(Debug, Default)]
pub struct Authors {
    /// The From: field(s) (RFC 5322 §3.6.2).
    pub from: Vec<String>,
    /// Whether there is a From: field (with or without a readable address).
    pub has_from: bool,
    /// The topmost Resent-From: field, when there is one (possibly without a readable
    /// address).
    pub resent_from: Option<Vec<String>>,
}

/// Reads [`Authors`]: both mail-parser's reading and a plain scan of each field count, so
/// no address escapes a check by confusing one of them.
fn authors(section: &[u8], fields: &[(String, String)]) -> Authors {
    use mail_parser::HeaderName;
    let parsed = mail_parser::MessageParser::new().parse_headers(section);
    let read = |name: HeaderName, raw: &mut dyn Iterator<Item = &String>, first_only: bool| {
        let values: Vec<&mail_parser::HeaderValue> = match &parsed {
            Some(message) => message.header_values(name).take(if first_only { 1 } else { usize::MAX }).collect(),
            None => Vec::new(),
        };
        let mut addresses: Vec<String> = values
            .into_iter()
            .filter_map(mail_parser::HeaderValue::as_address)
            .flat_map(|address| address.iter().filter_map(|addr| addr.address()).map(str::to_ascii_lowercase))
            .filter(|address| !address.is_empty())
            .collect();
        raw.for_each(|value| addresses.extend(addresses_in(value)));
        let mut seen = std::collections::HashSet::new();
        addresses.retain(|address| seen.insert(address.clone()));
        addresses
    };
    let named = |wanted: &'static str| fields.iter().filter(move |(name, _)| name == wanted).map(|(_, value)| value);
    let resent = named("resent-from").next();
    Authors {
        from: read(HeaderName::From, &mut named("from"), false),
        has_from: named("from").next().is_some(),
        resent_from: resent.map(|value| read(HeaderName::ResentFrom, &mut std::iter::once(value), true)),
    }
}

/// Extracts the addresses of an address-list field value: every `<addr-spec>`, or when
/// there are no angle brackets, every comma-separated word with an `@`.
fn addresses_in(value: &str) -> Vec<String> {
    let bracketed: Vec<String> = value
        .split('<')
        .skip(1)
        .filter_map(|part| part.split_once('>').map(|(address, _)| address.trim().to_ascii_lowercase()))
        .filter(|address| address.contains('@'))
        .collect();
    if !bracketed.is_empty() || value.contains('<') {
        return bracketed;
    }
    value
        .split(',')
        .map(|part| part.split('(').next().unwrap_or_default().trim().to_ascii_lowercase())
        .filter(|address| address.contains('@'))
        .collect()
}

/// Returns the length of the header section including its terminating blank line, if
/// complete: RFC 5322 §2.1 (CRLF CRLF; a bare LF LF is accepted too). Searches from `from`.
fn header_end(data: &[u8], from: usize) -> Option<usize> {
    if data.starts_with(b"\r\n") {
        return Some(2);
    }
    if data.starts_with(b"\n") {
        return Some(1);
    }
    let tail = &data[from.min(data.len())..];
    let crlf = tail.windows(4).position(|window| window == b"\r\n\r\n").map(|pos| from + pos + 4);
    let lf = tail.windows(2).position(|window| window == b"\n\n").map(|pos| from + pos + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(chunks: &[&[u8]], add_missing: bool) -> (Vec<u8>, BodyAssembler) {
        let missing = add_missing.then(|| MissingHeaders { date: "DATE".into(), message_id: "<ID@mx.test>".into() });
        let mut assembler = BodyAssembler::new(b"Received: by mx.test\r\n".to_vec(), missing);
        let mut out = Vec::new();
        for chunk in chunks {
            assembler.push(chunk).iter().for_each(|bytes| out.extend_from_slice(bytes));
        }
        assembler.finish().iter().for_each(|bytes| out.extend_from_slice(bytes));
        (out, assembler)
    }

    #[test]
    fn trace_headers_come_first_and_data_is_unchanged() {
        let (out, assembler) = assemble(&[b"Subject: a\r\nRecei", b"ved: x\r\n\r\nbody\r\n"], false);
        assert_eq!(out, b"Received: by mx.test\r\nSubject: a\r\nReceived: x\r\n\r\nbody\r\n");
        assert_eq!(assembler.received_headers(), 1);
        assert_eq!(assembler.data_size(), 33);
    }

    #[test]
    fn submission_adds_only_missing_date_and_message_id() {
        let (out, _) = assemble(&[b"Date: already\r\nSubject: a\r\n\r\nbody"], true);
        assert_eq!(out, b"Received: by mx.test\r\nMessage-ID: <ID@mx.test>\r\nDate: already\r\nSubject: a\r\n\r\nbody");
        let (out, _) = assemble(&[b"Subject: a\r\n\r\n"], true);
        assert!(out.starts_with(b"Received: by mx.test\r\nDate: DATE\r\nMessage-ID: <ID@mx.test>\r\nSubject"));
    }

    #[test]
    fn hops_are_counted_in_the_header_only_and_folding_is_understood() {
        let data = b"Received: a\r\n  from b\r\nreceived:c\r\nX: y\r\n\r\nReceived: in body\r\n";
        let (_, assembler) = assemble(&[data], false);
        assert_eq!(assembler.received_headers(), 2);
    }

    #[test]
    fn a_header_end_split_across_chunks_at_any_point_is_found() {
        let message = b"Subject: a\r\nX: b\r\n\r\nbody\r\n";
        for split in 0..message.len() {
            let (out, _) = assemble(&[&message[..split], &message[split..]], false);
            assert_eq!(out, [&b"Received: by mx.test\r\n"[..], message].concat(), "split at {split}");
        }
        let bytewise: Vec<&[u8]> = message.chunks(1).collect();
        let (out, assembler) = assemble(&bytewise, false);
        assert_eq!(out, [&b"Received: by mx.test\r\n"[..], message].concat());
        assert_eq!(assembler.data_size(), message.len() as u64);
    }

    #[test]
    fn from_addresses_are_found_in_every_form() {
        let (_, assembler) = assemble(
            &[b"From: \"Smith, Alice\" <Alice@Example.com>,\r\n bob@example.com (Bob)\r\nTo: x@y\r\n\r\n"],
            false,
        );
        assert_eq!(
            assembler.authors().from,
            ["alice@example.com", "bob@example.com"],
            "a bare address after a bracketed one"
        );
        let (_, assembler) = assemble(&[b"from: bob@example.com (Bob), carol@example.com\r\n\r\n"], false);
        assert_eq!(assembler.authors().from, ["bob@example.com", "carol@example.com"]);
        let (_, assembler) = assemble(&[b"Subject: none\r\n\r\nFrom: body@example.com\r\n"], false);
        assert!(assembler.authors().from.is_empty() && !assembler.authors().has_from, "only the header counts");
        let (_, assembler) = assemble(&[b"From: =?utf-8?q?Al=C3=ADce?= <alice@example.com>\r\n\r\n"], false);
        assert_eq!(assembler.authors().from, ["alice@example.com"]);
    }

    #[test]
    fn a_resent_message_is_authored_by_its_newest_resent_from() {
        // RFC 5322 §3.6.6: the newest Resent-* block is on top; From: stays the original's.
        let section = b"Resent-From: Bob <bob@example.com>\r\nResent-To: dave@example.net\r\n\
            Resent-From: carol@remote.test\r\nFrom: Carol <carol@remote.test>\r\nSubject: fwd\r\n\r\nbody\r\n";
        let (_, assembler) = assemble(&[section], false);
        assert_eq!(assembler.authors().resent_from.as_deref(), Some(&["bob@example.com".to_string()][..]));
        assert_eq!(assembler.authors().from, ["carol@remote.test"]);
        let (_, assembler) = assemble(&[b"Resent-From:\r\nFrom: <ceo@example.com>\r\n\r\nx\r\n"], false);
        assert_eq!(assembler.authors().resent_from, Some(Vec::new()), "present, but no address");
    }

    #[test]
    fn a_message_without_header_end_is_released_at_finish() {
        let (out, _) = assemble(&[b"no blank line"], false);
        assert_eq!(out, b"Received: by mx.test\r\nno blank line");
    }
}
