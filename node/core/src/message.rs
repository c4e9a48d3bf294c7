//! Protocol-neutral analysis of a raw message: the MIME tree with byte offsets into the raw
//! octets, the envelope, and the keys SORT, THREAD and SEARCH need. [`summarize`] parses a
//! message once (with mail-parser) into a [`MessageSummary`], plain owned data meant to be
//! stored next to the message so later commands never parse it again.
//!
//! Protocol syntax (IMAP's BODYSTRUCTURE, section numbers) lives in the protocol crates; this
//! module only knows RFC 5322 and MIME (RFC 2045-2049, RFC 2231).

use std::borrow::Cow;

use mail_parser::decoders::html::html_to_text;
use mail_parser::parsers::MessageStream;
use mail_parser::{Header, HeaderName, HeaderValue, Message, MessageParser, MessagePart, PartType};
use serde::{Deserialize, Serialize};
pub use wmail_search::TextField as SearchField;

/// Nesting depth (multiparts and encapsulated messages) beyond which parts are leaves.
pub const MAX_DEPTH: usize = 20;

/// One address of an envelope address list, in RFC 9051 §7.5.2 form. A group is a start marker
/// (`mailbox` = group name, `host` = `None`), its members, then an end marker (all `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// The display name as written (quotes removed, RFC 2047 encoded words kept).
    pub name: Option<String>,
    /// The source route (RFC 5322 §4.4 obs-route, such as `@relay.example`), if any.
    pub adl: Option<String>,
    /// The local part, or the group name of a group start marker.
    pub mailbox: Option<String>,
    /// The domain (empty when the address has none); `None` only for group markers.
    pub host: Option<String>,
}

impl Address {
    /// Whether this entry is a group start or end marker rather than an address.
    pub fn is_group_marker(&self) -> bool {
        self.host.is_none()
    }

    /// `mailbox@host`, or the bare mailbox when the host is empty.
    pub fn addr_spec(&self) -> String {
        let mailbox = self.mailbox.as_deref().unwrap_or_default();
        match self.host.as_deref() {
            Some(host) if !host.is_empty() => format!("{mailbox}@{host}"),
            _ => mailbox.to_string(),
        }
    }
}

/// The RFC 9051 §7.5.2 ENVELOPE fields of a message header: raw header values (unfolded, not
/// decoded) and parsed address lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The Date field as written.
    pub date: Option<String>,
    /// The Subject field as written (RFC 2047 encoded words kept).
    pub subject: Option<String>,
    /// From.
    pub from: Vec<Address>,
    /// Sender; From when absent (RFC 9051 §7.5.2).
    pub sender: Vec<Address>,
    /// Reply-To; From when absent (RFC 9051 §7.5.2).
    pub reply_to: Vec<Address>,
    /// To.
    pub to: Vec<Address>,
    /// Cc.
    pub cc: Vec<Address>,
    /// Bcc.
    pub bcc: Vec<Address>,
    /// The In-Reply-To field as written.
    pub in_reply_to: Option<String>,
    /// The Message-ID field as written.
    pub message_id: Option<String>,
}

/// A Content-Disposition (RFC 2183): its type (lowercase) and parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disposition {
    /// `inline`, `attachment`, ...
    pub kind: String,
    /// Parameters in header order, RFC 2231 continuations joined and decoded.
    pub params: Vec<(String, String)>,
}

/// One MIME part. Offsets index the raw message: the part's own header is
/// `raw[header_start..header_end]` (with its blank line, so `header_end == body_start`) and its
/// body `raw[body_start..body_end]` (without the line end before a following boundary, RFC 2046
/// §5.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Media type, lowercase (`text` when there is no Content-Type, RFC 2045 §5.2).
    pub media_type: String,
    /// Media subtype, lowercase.
    pub media_subtype: String,
    /// Content-Type parameters in header order (lowercase names; RFC 2231 continuations joined
    /// and decoded). A `text/plain` part without a charset gets `charset=us-ascii` (RFC 2046
    /// §4.1.2).
    pub params: Vec<(String, String)>,
    /// Content-ID as written.
    pub id: Option<String>,
    /// Content-Description as written.
    pub description: Option<String>,
    /// Content-Transfer-Encoding as written; `7BIT` when absent (RFC 2045 §6.1).
    pub encoding: String,
    /// Start of the part's header.
    pub header_start: usize,
    /// End of the part's header, after the blank line.
    pub header_end: usize,
    /// Start of the body.
    pub body_start: usize,
    /// End of the body.
    pub body_end: usize,
    /// Lines of the body (a last line without a line end counts).
    pub lines: u64,
    /// Content-MD5 as written (RFC 1864).
    pub md5: Option<String>,
    /// Content-Disposition.
    pub disposition: Option<Disposition>,
    /// Content-Language tags (RFC 3282).
    pub language: Vec<String>,
    /// Content-Location as written (RFC 2557).
    pub location: Option<String>,
    /// What is inside.
    pub body: PartBody,
}

/// The content of a [`Part`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartBody {
    /// A leaf: text, an attachment, or a structure not analysed (deeper than [`MAX_DEPTH`], a
    /// multipart without a usable boundary, a message/rfc822 with a transfer encoding).
    Leaf,
    /// The parts of a multipart, never empty.
    Multipart(Vec<Part>),
    /// The message a message/rfc822 or message/global part encapsulates.
    Message(Box<Encapsulated>),
}

/// An encapsulated message: its envelope and root part (whose range is the outer part's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encapsulated {
    /// The encapsulated message's envelope.
    pub envelope: Envelope,
    /// Its root part.
    pub root: Part,
}

impl Part {
    /// Size of the body in octets.
    pub fn size(&self) -> usize {
        self.body_end.saturating_sub(self.body_start)
    }

    /// Whether this is a `type/subtype` part (ASCII case-insensitive).
    pub fn is(&self, media_type: &str, media_subtype: &str) -> bool {
        self.media_type.eq_ignore_ascii_case(media_type) && self.media_subtype.eq_ignore_ascii_case(media_subtype)
    }
}

/// What a message is, computed once at delivery or APPEND by [`summarize`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// The top-level envelope.
    pub envelope: Envelope,
    /// The Date field, parsed, in ms since the epoch.
    pub sent_date_ms: Option<i64>,
    /// The subject with RFC 2047 encoded words decoded.
    pub subject_decoded: String,
    /// The RFC 5256 §2.1 base subject (not lowercased; comparisons fold case).
    pub base_subject: String,
    /// The Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// The References ids in order, without angle brackets.
    pub references: Vec<String>,
    /// The In-Reply-To ids in order, without angle brackets.
    pub in_reply_to: Vec<String>,
    /// RFC 5256 §3 FROM key: the addr-mailbox of the first From address, ASCII lowercase.
    pub from_sort_key: String,
    /// RFC 5256 §3 TO key.
    pub to_sort_key: String,
    /// RFC 5256 §3 CC key.
    pub cc_sort_key: String,
    /// RFC 5957 DISPLAYFROM: the decoded display name of the first From address, else its
    /// addr-spec (not case-folded).
    pub display_from: String,
    /// RFC 5957 DISPLAYTO, like `display_from` for To.
    pub display_to: String,
    /// The MIME tree.
    pub root: Part,
}

impl MessageSummary {
    /// The calendar date of the Date field in the sender's own time zone (what IMAP's SENT*
    /// search keys compare: RFC 9051 §6.4.4 "disregarding time and timezone").
    pub fn sent_date(&self) -> Option<chrono::NaiveDate> {
        let written = self.envelope.date.as_deref()?;
        let date = mail_parser::DateTime::parse_rfc822(written).filter(mail_parser::DateTime::is_valid)?;
        chrono::NaiveDate::from_ymd_opt(i32::from(date.year), u32::from(date.month), u32::from(date.day))
    }
}

/// Parses `raw` once and returns its summary. Never panics: broken MIME is recovered as well
/// as mail-parser can, and input it cannot read at all becomes one text/plain body.
pub fn summarize(raw: &[u8]) -> MessageSummary {
    // mail-parser is meant not to panic; the guard keeps a parser bug from taking the
    // session down (the default hook still logs it).
    match std::panic::catch_unwind(|| summarize_parsed(raw)) {
        Ok(Some(summary)) => summary,
        _ => unparsed_summary(raw),
    }
}

/// The raw values of the fields named `name` (ASCII case-insensitive) in the top-level header
/// `raw[..header_end]` (pass [`Part::header_end`] of the root), in order, unfolded (RFC 5322
/// §2.2.3) and trimmed but not decoded; for SEARCH HEADER.
pub fn header_values(raw: &[u8], header_end: usize, name: &str) -> Vec<String> {
    let header = raw.get(..header_end.min(raw.len())).unwrap_or_default();
    raw_fields(header)
        .filter(|field| field.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|field| unfold(field.value))
        .collect()
}

/// Decodes the RFC 2047 encoded words of a header value (any charset mail-parser knows);
/// text without encoded words comes back as it is. For SEARCH, which compares decoded
/// text (RFC 9051 §6.4.4).
pub fn decode_header_text(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_owned();
    }
    // mail-parser decodes unstructured fields; parse the value as a Subject.
    let field = format!("Subject: {}\r\n\r\n", value.replace(['\r', '\n'], " "));
    MessageParser::default()
        .parse_headers(field.as_bytes())
        .and_then(|message| message.subject().map(str::to_owned))
        .unwrap_or_else(|| value.to_owned())
}

/// The text an address key (IMAP SEARCH FROM, TO, CC, BCC) is matched against: each
/// address's name and `mailbox@host`, plus the decoded display form.
pub fn address_text(addresses: &[Address], display: &str) -> String {
    let mut text = String::from(display);
    for address in addresses {
        if address.is_group_marker() {
            // A group's name is part of the field SEARCH looks in (RFC 9051 §6.4.4).
            if let Some(group) = &address.mailbox {
                text.push('\n');
                text.push_str(&decode_header_text(group));
            }
            continue;
        }
        text.push('\n');
        if let Some(name) = &address.name {
            text.push_str(&decode_header_text(name));
            text.push(' ');
        }
        text.push_str(&address.addr_spec());
    }
    text
}

/// The texts each IMAP SEARCH text key is matched against (RFC 9051 §6.4.4), by key; a key
/// matches when one of its texts contains the needle case-insensitively. IMAP SEARCH and the
/// full-text index both take them from here, so the index never misses a match.
pub fn search_texts(raw: &[u8], summary: &MessageSummary) -> Vec<(SearchField, String)> {
    let header_end = summary.root.header_end.min(raw.len());
    let mut texts = vec![
        (SearchField::Subject, summary.subject_decoded.clone()),
        (SearchField::From, address_text(&summary.envelope.from, &summary.display_from)),
        (SearchField::To, address_text(&summary.envelope.to, &summary.display_to)),
        (SearchField::Cc, address_text(&summary.envelope.cc, "")),
        (SearchField::Bcc, address_text(&summary.envelope.bcc, "")),
        (SearchField::Header, String::from_utf8_lossy(&raw[..header_end]).into_owned()),
        (SearchField::Header, decoded_header_text(raw, header_end)),
        (SearchField::Header, summary.subject_decoded.clone()),
        (SearchField::Body, body_text(raw)),
    ];
    if let Some(subject) = &summary.envelope.subject {
        texts.push((SearchField::Subject, subject.clone()));
    }
    texts
}

/// The file names of a message's attachments (Content-Disposition `filename`, else
/// Content-Type `name`; RFC 2231 and RFC 2047 encodings decoded), nested messages included.
pub fn attachment_names(root: &Part) -> Vec<String> {
    fn walk(part: &Part, out: &mut Vec<String>) {
        let named = |params: &[(String, String)], key: &str| {
            params.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone())
        };
        let name = part
            .disposition
            .as_ref()
            .and_then(|disposition| named(&disposition.params, "filename"))
            .or_else(|| named(&part.params, "name"));
        if let Some(name) = name.filter(|name| !name.trim().is_empty()) {
            out.push(decode_header_text(&name));
        }
        match &part.body {
            PartBody::Multipart(parts) => parts.iter().for_each(|part| walk(part, out)),
            PartBody::Message(inner) => walk(&inner.root, out),
            PartBody::Leaf => {}
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// Every top-level header field as `name: decoded value` lines, for SEARCH TEXT.
pub fn decoded_header_text(raw: &[u8], header_end: usize) -> String {
    let header = raw.get(..header_end.min(raw.len())).unwrap_or_default();
    let mut out = String::new();
    for field in raw_fields(header) {
        out.push_str(&String::from_utf8_lossy(field.name));
        out.push_str(": ");
        out.push_str(&decode_header_text(&unfold(field.value)));
        out.push('\n');
    }
    out
}

/// The decoded text of every text/* part, nested messages included, HTML converted to plain
/// text, parts separated by a newline; for SEARCH BODY and TEXT.
pub fn body_text(raw: &[u8]) -> String {
    std::panic::catch_unwind(|| {
        let Some(message) = MessageParser::default().parse(raw) else {
            return String::from_utf8_lossy(raw).into_owned();
        };
        let mut text = String::new();
        collect_text(&message, 0, &mut text);
        dismantle(message);
        text
    })
    .unwrap_or_default()
}

/// Decodes a body in the transfer encoding `encoding` (RFC 2045 §6): base64 and
/// quoted-printable are decoded leniently, 7bit, 8bit and binary returned as they are. `None`
/// when the encoding is not one of these (IMAP answers that with UNKNOWN-CTE, RFC 3516).
pub fn decode_transfer_encoding(encoding: &str, body: &[u8]) -> Option<Vec<u8>> {
    let token = encoding.trim().split(|c: char| c.is_whitespace() || c == ';' || c == '(').next().unwrap_or_default();
    let token = token.trim_matches('"');
    if token.is_empty() || ["7bit", "8bit", "binary"].iter().any(|identity| token.eq_ignore_ascii_case(identity)) {
        Some(body.to_vec())
    } else if token.eq_ignore_ascii_case("base64") {
        let (end, decoded) = MessageStream::new(body).decode_base64_mime(b"");
        if end != usize::MAX {
            return Some(decoded.into_owned());
        }
        // Junk in the data: decode what is left after dropping anything outside the alphabet.
        let cleaned: Vec<u8> =
            body.iter().copied().filter(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(b)).collect();
        let (end, decoded) = MessageStream::new(&cleaned).decode_base64_mime(b"");
        Some(if end == usize::MAX { Vec::new() } else { decoded.into_owned() })
    } else if token.eq_ignore_ascii_case("quoted-printable") {
        let (end, decoded) = MessageStream::new(body).decode_quoted_printable_mime(b"");
        Some(if end == usize::MAX { body.to_vec() } else { decoded.into_owned() })
    } else {
        None
    }
}

/// One field of a raw header block (RFC 5322 §2.2), with its folded continuation lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawField<'a> {
    /// The field name (trimmed); empty for a line without a colon.
    pub name: &'a [u8],
    /// What follows the colon, up to and including the field's last line end.
    pub value: &'a [u8],
    /// The whole field as written, including its last line end (if the header had one).
    pub line: &'a [u8],
}

/// Iterator over the fields of a header block, returned by [`raw_fields`].
#[derive(Debug, Clone)]
pub struct RawFields<'a> {
    rest: &'a [u8],
}

/// The fields of the header block `header` in order, stopping at the blank line that ends it.
pub fn raw_fields(header: &[u8]) -> RawFields<'_> {
    RawFields { rest: header }
}

impl<'a> Iterator for RawFields<'a> {
    type Item = RawField<'a>;

    fn next(&mut self) -> Option<RawField<'a>> {
        let rest = self.rest;
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return None;
        }
        let mut end = line_end(rest, 0);
        while end < rest.len() && matches!(rest[end], b' ' | b'\t') {
            end = line_end(rest, end);
        }
        let (line, tail) = rest.split_at(end);
        self.rest = tail;
        Some(match line.iter().position(|&b| b == b':') {
            Some(colon) => RawField { name: line[..colon].trim_ascii(), value: &line[colon + 1..], line },
            None => RawField { name: b"", value: b"", line },
        })
    }
}

/// The index after the line end of the line starting at `start` (or the end of `bytes`).
fn line_end(bytes: &[u8], start: usize) -> usize {
    bytes[start..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |lf| start + lf + 1)
}

/// RFC 5322 §2.2.3 unfolding (every CR and LF of one field value goes), trimmed.
fn unfold(value: &[u8]) -> String {
    let bytes: Vec<u8> = value.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    String::from_utf8_lossy(bytes.trim_ascii()).into_owned()
}

/// `Some(value)` unless it is empty.
fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// `raw[start..end]`, clamped to the message.
fn slice(raw: &[u8], start: usize, end: usize) -> &[u8] {
    let end = end.min(raw.len());
    raw.get(start.min(end)..end).unwrap_or_default()
}

/// Lines in `body`: its LFs, plus one for a last line without a line end.
fn count_lines(body: &[u8]) -> u64 {
    let newlines = body.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(body.last().is_some_and(|&b| b != b'\n'))
}

/// The summary of input mail-parser finds no header in: one text/plain body.
fn unparsed_summary(raw: &[u8]) -> MessageSummary {
    MessageSummary {
        envelope: Envelope::default(),
        sent_date_ms: None,
        subject_decoded: String::new(),
        base_subject: String::new(),
        message_id: None,
        references: Vec::new(),
        in_reply_to: Vec::new(),
        from_sort_key: String::new(),
        to_sort_key: String::new(),
        cc_sort_key: String::new(),
        display_from: String::new(),
        display_to: String::new(),
        root: leaf_text_part(0, 0, raw.len(), raw),
    }
}

/// A text/plain us-ascii leaf with no header fields of its own.
fn leaf_text_part(header_start: usize, body_start: usize, body_end: usize, raw: &[u8]) -> Part {
    Part {
        media_type: "text".into(),
        media_subtype: "plain".into(),
        params: vec![("charset".into(), "us-ascii".into())],
        id: None,
        description: None,
        encoding: "7BIT".into(),
        header_start,
        header_end: body_start,
        body_start,
        body_end,
        lines: count_lines(slice(raw, body_start, body_end)),
        md5: None,
        disposition: None,
        language: Vec::new(),
        location: None,
        body: PartBody::Leaf,
    }
}

fn summarize_parsed(raw: &[u8]) -> Option<MessageSummary> {
    let message = MessageParser::default().parse(raw)?;
    let mut root = build_part(raw, &message, 0, 0, false)?;
    root.header_start = 0;
    root.body_end = raw.len();
    let header = slice(raw, 0, root.header_end);
    let envelope = envelope_of(header);

    let subject_decoded = message.subject().unwrap_or_default().to_string();
    let sent_date_ms =
        message.date().filter(|date| date.is_valid()).and_then(|date| date.to_timestamp().checked_mul(1000));
    let message_id = ids(message.header(HeaderName::MessageId)).into_iter().next();
    let references = ids(message.header(HeaderName::References));
    let in_reply_to = ids(message.header(HeaderName::InReplyTo));
    let display_from = display_name(header, "from");
    let display_to = display_name(header, "to");
    let summary = MessageSummary {
        base_subject: base_subject(&subject_decoded),
        subject_decoded,
        sent_date_ms,
        message_id,
        references,
        in_reply_to,
        from_sort_key: sort_key(&envelope.from),
        to_sort_key: sort_key(&envelope.to),
        cc_sort_key: sort_key(&envelope.cc),
        display_from,
        display_to,
        envelope,
        root,
    };
    dismantle(message);
    Some(summary)
}

/// Drops a parsed message without recursing once per nesting level (a message nested a
/// hundred thousand times deep would otherwise overflow the stack).
fn dismantle(message: Message<'_>) {
    let mut stack = vec![message];
    while let Some(mut message) = stack.pop() {
        for part in &mut message.parts {
            if let PartType::Message(inner) = &mut part.body {
                stack.push(std::mem::take(inner));
            }
        }
    }
}

/// The ids of a Message-ID, References or In-Reply-To header as mail-parser read them.
fn ids(value: Option<&HeaderValue<'_>>) -> Vec<String> {
    match value {
        Some(HeaderValue::Text(id)) => vec![id.to_string()],
        Some(HeaderValue::TextList(ids)) => ids.iter().map(|id| id.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The first header of `name` among `headers`.
fn find_header<'h, 'x>(headers: &'h [Header<'x>], name: HeaderName<'_>) -> Option<&'h Header<'x>> {
    headers.iter().find(|header| header.name == name)
}

/// The raw value of the first header of `name`, unfolded and trimmed; `None` when absent or empty.
fn raw_header(raw: &[u8], headers: &[Header<'_>], name: HeaderName<'_>) -> Option<String> {
    let header = find_header(headers, name)?;
    non_empty(unfold(slice(raw, header.offset_start as usize, header.offset_end as usize)))
}

/// Converts mail-parser's part `index` of `message` (and what it contains) into a [`Part`].
fn build_part(raw: &[u8], message: &Message<'_>, index: usize, depth: usize, in_digest: bool) -> Option<Part> {
    let source: &MessagePart<'_> = message.parts.get(index)?;
    let headers = &source.headers[..];
    let content_type = find_header(headers, HeaderName::ContentType).and_then(|h| h.value.as_content_type());
    let (media_type, media_subtype, mut params) = match content_type {
        Some(ct) if !ct.c_type.is_empty() => {
            let media_type = ct.c_type.to_ascii_lowercase();
            let media_subtype = match ct.c_subtype.as_deref() {
                Some(subtype) if !subtype.is_empty() => subtype.to_ascii_lowercase(),
                _ => match media_type.as_str() {
                    "text" => "plain".into(),
                    "multipart" => "mixed".into(),
                    _ => "octet-stream".into(),
                },
            };
            (media_type, media_subtype, parameters(ct.attributes.as_deref()))
        }
        // RFC 2046 §5.1.5: in a digest the default is message/rfc822; elsewhere RFC 2045 §5.2.
        _ if in_digest => ("message".into(), "rfc822".into(), Vec::new()),
        _ => ("text".into(), "plain".into(), Vec::new()),
    };
    if media_type == "text" && media_subtype == "plain" && !params.iter().any(|(name, _)| name == "charset") {
        params.push(("charset".into(), "us-ascii".into()));
    }
    let disposition = find_header(headers, HeaderName::ContentDisposition)
        .and_then(|h| h.value.as_content_type())
        .filter(|d| !d.c_type.is_empty())
        .map(|d| Disposition { kind: d.c_type.to_ascii_lowercase(), params: parameters(d.attributes.as_deref()) });
    let language = match find_header(headers, HeaderName::ContentLanguage).map(|h| &h.value) {
        Some(HeaderValue::Text(tag)) => vec![tag.trim().to_string()],
        Some(HeaderValue::TextList(tags)) => tags.iter().map(|tag| tag.trim().to_string()).collect(),
        _ => Vec::new(),
    };
    let length = raw.len();
    let header_start = (source.offset_header as usize).min(length);
    let body_start = (source.offset_body as usize).clamp(header_start, length);
    let body_end = (source.offset_end as usize).clamp(body_start, length);
    let mut part = Part {
        media_type,
        media_subtype,
        params,
        id: raw_header(raw, headers, HeaderName::ContentId),
        description: raw_header(raw, headers, HeaderName::ContentDescription),
        encoding: raw_header(raw, headers, HeaderName::ContentTransferEncoding).unwrap_or_else(|| "7BIT".into()),
        header_start,
        header_end: body_start,
        body_start,
        body_end,
        lines: 0,
        md5: raw_header(raw, headers, HeaderName::ContentMd5),
        disposition,
        language,
        location: raw_header(raw, headers, HeaderName::ContentLocation),
        body: PartBody::Leaf,
    };
    if depth < MAX_DEPTH {
        part.body = match &source.body {
            PartType::Multipart(children) if part.media_type == "multipart" => {
                let digest = part.media_subtype == "digest";
                let mut parts: Vec<Part> = children
                    .iter()
                    .map(|&child| child as usize)
                    // Sub-parts always come after their multipart; anything else would be a cycle.
                    .filter(|&child| child > index)
                    .filter_map(|child| build_part(raw, message, child, depth + 1, digest))
                    .collect();
                if let Some(last) = parts.last() {
                    part.body_end = part.body_end.max(last.body_end);
                } else {
                    // `multipart` needs at least one part: an empty text/plain one.
                    parts.push(leaf_text_part(part.body_start, part.body_start, part.body_start, raw));
                }
                PartBody::Multipart(parts)
            }
            PartType::Message(inner)
                if part.media_type == "message"
                    && matches!(part.media_subtype.as_str(), "rfc822" | "global")
                    && source.encoding == mail_parser::Encoding::None =>
            {
                build_part(raw, inner, 0, depth + 1, false).map_or(PartBody::Leaf, |mut root| {
                    // The encapsulated message is exactly this part's body.
                    root.header_start = part.body_start;
                    root.header_end = root.header_end.clamp(part.body_start, part.body_end);
                    root.body_start = root.body_start.clamp(root.header_end, part.body_end);
                    root.body_end = part.body_end;
                    if !matches!(root.body, PartBody::Multipart(_)) {
                        root.lines = count_lines(slice(raw, root.body_start, root.body_end));
                    }
                    let envelope = envelope_of(slice(raw, root.header_start, root.header_end));
                    PartBody::Message(Box::new(Encapsulated { envelope, root }))
                })
            }
            _ => PartBody::Leaf,
        };
    }
    part.lines = count_lines(slice(raw, part.body_start, part.body_end));
    Some(part)
}

/// Content-Type or Content-Disposition parameters, without the `NAME-language` entries
/// mail-parser adds for RFC 2231 language tags.
fn parameters(attributes: Option<&[mail_parser::Attribute<'_>]>) -> Vec<(String, String)> {
    let attributes = attributes.unwrap_or_default();
    attributes
        .iter()
        .filter(|attribute| {
            attribute.name.strip_suffix("-language").is_none_or(|base| !attributes.iter().any(|a| a.name == base))
        })
        .map(|attribute| (attribute.name.to_ascii_lowercase(), attribute.value.to_string()))
        .collect()
}

/// The envelope of the header block `header` (RFC 9051 §7.5.2).
fn envelope_of(header: &[u8]) -> Envelope {
    let mut envelope = Envelope::default();
    let mut seen = [false; 10];
    for field in raw_fields(header) {
        let slot = match field.name.to_ascii_lowercase().as_slice() {
            b"date" => 0,
            b"subject" => 1,
            b"from" => 2,
            b"sender" => 3,
            b"reply-to" => 4,
            b"to" => 5,
            b"cc" => 6,
            b"bcc" => 7,
            b"in-reply-to" => 8,
            b"message-id" => 9,
            _ => continue,
        };
        // The first field of each name counts.
        if std::mem::replace(&mut seen[slot], true) {
            continue;
        }
        match slot {
            0 => envelope.date = non_empty(unfold(field.value)),
            1 => envelope.subject = non_empty(unfold(field.value)),
            2 => envelope.from = addresses(field.value),
            3 => envelope.sender = addresses(field.value),
            4 => envelope.reply_to = addresses(field.value),
            5 => envelope.to = addresses(field.value),
            6 => envelope.cc = addresses(field.value),
            7 => envelope.bcc = addresses(field.value),
            8 => envelope.in_reply_to = non_empty(unfold(field.value)),
            _ => envelope.message_id = non_empty(unfold(field.value)),
        }
    }
    if envelope.sender.is_empty() {
        envelope.sender = envelope.from.clone();
    }
    if envelope.reply_to.is_empty() {
        envelope.reply_to = envelope.from.clone();
    }
    envelope
}

/// Stands in for `=` before `?` while parsing addresses, so mail-parser keeps RFC 2047 encoded
/// words as written instead of decoding them (IMAP returns names raw).
const ENCODED_WORD_MASK: u8 = 0;

/// An address list field value parsed by mail-parser, names kept raw, groups as RFC 9051
/// markers.
fn addresses(value: &[u8]) -> Vec<Address> {
    let mut masked: Vec<u8> = Vec::with_capacity(value.len() + 1);
    for (index, &byte) in value.iter().enumerate() {
        match byte {
            ENCODED_WORD_MASK => {}
            b'=' if value.get(index + 1) == Some(&b'?') => masked.push(ENCODED_WORD_MASK),
            _ => masked.push(byte),
        }
    }
    // The parser only takes the last token once it sees the line end.
    masked.push(b'\n');
    let unmask = |text: &str| text.replace(char::from(ENCODED_WORD_MASK), "=");
    let mut list = Vec::new();
    let push_addr = |list: &mut Vec<Address>, addr: &mail_parser::Addr<'_>| {
        let name = addr.name.as_deref().map(unmask).filter(|name| !name.is_empty());
        let address = addr.address.as_deref().map(unmask).unwrap_or_default();
        // RFC 5322 §4.4 obs-route ("@relay.example,@other:user@host"): the route goes to
        // the address's adl (RFC 9051 §7.5.2), not into its mailbox name.
        let (adl, address) = match address.strip_prefix('@').and_then(|_| address.split_once(':')) {
            Some((route, rest)) => (Some(route.to_string()), rest.to_string()),
            None => (None, address),
        };
        let (mailbox, host) = match address.rsplit_once('@') {
            Some((mailbox, host)) => (mailbox.to_string(), host.to_string()),
            None => (address, String::new()),
        };
        if mailbox.is_empty() && host.is_empty() {
            // A phrase without an address: nothing IMAP can represent.
            return;
        }
        list.push(Address { name, adl, mailbox: Some(mailbox), host: Some(host) });
    };
    match MessageStream::new(&masked).parse_address() {
        HeaderValue::Address(mail_parser::Address::List(addrs)) => {
            addrs.iter().for_each(|addr| push_addr(&mut list, addr));
        }
        HeaderValue::Address(mail_parser::Address::Group(groups)) => {
            for group in &groups {
                match group.name.as_deref() {
                    Some(name) => {
                        list.push(Address { mailbox: Some(unmask(name)), ..Address::default() });
                        group.addresses.iter().for_each(|addr| push_addr(&mut list, addr));
                        list.push(Address::default());
                    }
                    None => group.addresses.iter().for_each(|addr| push_addr(&mut list, addr)),
                }
            }
        }
        _ => {}
    }
    list
}

/// RFC 5256 §3: the addr-mailbox of the first address (group markers skipped), lowercase
/// (the default i;ascii-casemap comparator folds ASCII only).
fn sort_key(list: &[Address]) -> String {
    list.iter()
        .find(|address| !address.is_group_marker())
        .and_then(|address| address.mailbox.as_deref())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// RFC 5957 §3 DISPLAYFROM/DISPLAYTO of the first `field` in `header`: the decoded display name
/// of the first address (or group), else its addr-spec; empty when there is none.
fn display_name(header: &[u8], field: &str) -> String {
    let Some(value) = raw_fields(header).find(|f| f.name.eq_ignore_ascii_case(field.as_bytes())).map(|f| f.value)
    else {
        return String::new();
    };
    let mut value = value.to_vec();
    value.push(b'\n');
    let from_addr = |addr: &mail_parser::Addr<'_>| match addr.name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => addr.address.as_deref().unwrap_or_default().to_string(),
    };
    match MessageStream::new(&value).parse_address() {
        HeaderValue::Address(mail_parser::Address::List(addrs)) => addrs.first().map(from_addr).unwrap_or_default(),
        HeaderValue::Address(mail_parser::Address::Group(groups)) => groups
            .first()
            .map(|group| match group.name.as_deref() {
                Some(name) if !name.trim().is_empty() => name.trim().to_string(),
                _ => group.addresses.first().map(from_addr).unwrap_or_default(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Appends the text of every text/* part of `message` to `out`, nested messages included.
fn collect_text(message: &Message<'_>, depth: usize, out: &mut String) {
    for part in &message.parts {
        let text: Cow<'_, str> = match &part.body {
            PartType::Text(text) => Cow::Borrowed(text),
            PartType::Html(html) => Cow::Owned(html_to_text(html)),
            PartType::Message(inner) if depth < MAX_DEPTH => {
                collect_text(inner, depth + 1, out);
                continue;
            }
            _ => continue,
        };
        if !out.is_empty() && !text.is_empty() {
            out.push('\n');
        }
        out.push_str(&text);
    }
}

/// The RFC 5256 §2.1 base subject of an (already decoded) subject, without lowercasing.
pub fn base_subject(subject: &str) -> String {
    // Step 1: tabs and line ends become spaces, runs of spaces one space.
    let mut text = subject.split([' ', '\t', '\r', '\n']).filter(|w| !w.is_empty());
    let mut current = text.next().map(str::to_string).unwrap_or_default();
    for word in text {
        current.push(' ');
        current.push_str(word);
    }
    let mut current = current.as_str();
    loop {
        // Step 2: remove trailing "(fwd)" and whitespace.
        loop {
            let trimmed = current.trim_end_matches(' ');
            let trimmed = match trimmed.len().checked_sub(5).and_then(|at| trimmed.get(at..)) {
                Some(tail) if tail.eq_ignore_ascii_case("(fwd)") => &trimmed[..trimmed.len() - 5],
                _ => trimmed,
            };
            if trimmed.len() == current.len() {
                break;
            }
            current = trimmed;
        }
        // Steps 3 to 5: remove leaders (blobs followed by re/fwd, whitespace) and a leading
        // blob that is not all that is left, until neither applies.
        loop {
            let before = current.len();
            current = strip_leader(current);
            if let Some(after) = strip_blob(current)
                && after.contains(|c: char| c != ' ')
            {
                current = after;
            }
            if current.len() == before {
                break;
            }
        }
        // Step 6: "[fwd: ... ]" wrapping: unwrap and start again from step 2.
        let unwrapped = current
            .get(..5)
            .filter(|head| head.eq_ignore_ascii_case("[fwd:"))
            .and_then(|_| current[5..].strip_suffix(']'));
        match unwrapped {
            Some(inner) => current = inner,
            None => return current.to_string(),
        }
    }
}

/// Removes one subj-leader (`*subj-blob subj-refwd` or one space) from the start, if any.
fn strip_leader(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix(' ') {
        return rest;
    }
    let mut rest = text;
    while let Some(after) = strip_blob(rest) {
        rest = after;
    }
    strip_refwd(rest).unwrap_or(text)
}

/// Removes a subj-blob (`"[" *BLOBCHAR "]" *WSP`) from the start.
fn strip_blob(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('[')?;
    let close = inner.find([']', '['])?;
    inner[close..].strip_prefix(']').map(|rest| rest.trim_start_matches(' '))
}

/// Removes a subj-refwd (`("re" / "fw" / "fwd") *WSP [subj-blob] ":"`) from the start.
fn strip_refwd(text: &str) -> Option<&str> {
    let lower = |n: usize| text.get(..n).map(str::to_ascii_lowercase);
    let rest = if lower(3).as_deref() == Some("fwd") {
        &text[3..]
    } else if matches!(lower(2).as_deref(), Some("re" | "fw")) {
        &text[2..]
    } else {
        return None;
    };
    let rest = rest.trim_start_matches(' ');
    let rest = strip_blob(rest).unwrap_or(rest);
    rest.strip_prefix(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crlf(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    fn addr(name: Option<&str>, mailbox: &str, host: &str) -> Address {
        Address { name: name.map(Into::into), adl: None, mailbox: Some(mailbox.into()), host: Some(host.into()) }
    }

    fn body<'r>(raw: &'r [u8], part: &Part) -> &'r [u8] {
        &raw[part.body_start..part.body_end]
    }

    fn header<'r>(raw: &'r [u8], part: &Part) -> &'r [u8] {
        &raw[part.header_start..part.header_end]
    }

    fn children(part: &Part) -> &[Part] {
        match &part.body {
            PartBody::Multipart(parts) => parts,
            other => panic!("not a multipart: {other:?}"),
        }
    }

    fn encapsulated(part: &Part) -> &Encapsulated {
        match &part.body {
            PartBody::Message(message) => message,
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn plain_text_message() {
        let raw = crlf(
            "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\n\
             From: Fred Foobar <foobar@Blurdybloop.example>\n\
             Subject: afternoon\n meeting\n\
             To: mooch@owatagu.siam.edu.example\n\
             Message-Id: <B27397-0100000@Blurdybloop.example>\n\
             MIME-Version: 1.0\n\
             Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\
             \n\
             Hello Joe, do you think we can meet at 3:30 tomorrow?\n",
        );
        let summary = summarize(&raw);
        let envelope = &summary.envelope;
        assert_eq!(envelope.date.as_deref(), Some("Mon, 7 Feb 1994 21:52:25 -0800 (PST)"));
        assert_eq!(envelope.subject.as_deref(), Some("afternoon meeting"));
        let fred = vec![addr(Some("Fred Foobar"), "foobar", "Blurdybloop.example")];
        assert_eq!(envelope.from, fred);
        assert_eq!(envelope.sender, fred);
        assert_eq!(envelope.reply_to, fred);
        assert_eq!(envelope.to, vec![addr(None, "mooch", "owatagu.siam.edu.example")]);
        assert!(envelope.cc.is_empty() && envelope.bcc.is_empty() && envelope.in_reply_to.is_none());
        assert_eq!(envelope.message_id.as_deref(), Some("<B27397-0100000@Blurdybloop.example>"));
        assert_eq!(summary.message_id.as_deref(), Some("B27397-0100000@Blurdybloop.example"));
        // 1994-02-08T05:52:25Z
        assert_eq!(summary.sent_date_ms, Some(760_686_745_000));
        assert_eq!(summary.subject_decoded, "afternoon meeting");
        assert_eq!(summary.base_subject, "afternoon meeting");
        assert_eq!(summary.from_sort_key, "foobar");
        assert_eq!(summary.to_sort_key, "mooch");
        assert_eq!(summary.cc_sort_key, "");
        assert_eq!(summary.display_from, "Fred Foobar");
        assert_eq!(summary.display_to, "mooch@owatagu.siam.edu.example");

        let root = &summary.root;
        assert!(root.is("text", "plain"));
        assert_eq!(root.params, vec![("charset".to_string(), "US-ASCII".to_string())]);
        assert_eq!(root.encoding, "7BIT");
        assert_eq!(body(&raw, root), b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n");
        assert!(header(&raw, root).starts_with(b"Date: ") && header(&raw, root).ends_with(b"US-ASCII\r\n\r\n"));
        assert_eq!((root.size(), root.lines), (55, 1));
        assert_eq!(root.body_end, raw.len());

        assert_eq!(header_values(&raw, root.header_end, "SUBJECT"), vec!["afternoon meeting".to_string()]);
        assert!(header_values(&raw, root.header_end, "cc").is_empty());
        assert_eq!(body_text(&raw), "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n");
    }

    #[test]
    fn missing_headers_and_defaults() {
        let raw = crlf("X-Nothing: here\n\nline one\nline two");
        let summary = summarize(&raw);
        assert_eq!(summary.envelope, Envelope::default());
        assert_eq!((summary.sent_date_ms, summary.message_id.as_deref()), (None, None));
        assert_eq!((summary.display_from.as_str(), summary.from_sort_key.as_str()), ("", ""));
        let root = &summary.root;
        assert!(root.is("text", "plain"));
        assert_eq!(root.params, vec![("charset".to_string(), "us-ascii".to_string())]);
        assert_eq!(root.encoding, "7BIT");
        // "line one\r\nline two": 18 octets, the last line has no line end but counts.
        assert_eq!((root.size(), root.lines), (18, 2));

        // A header without a body, and without even a blank line.
        let raw = b"Subject: only a header\r\n";
        let summary = summarize(raw);
        assert_eq!(summary.envelope.subject.as_deref(), Some("only a header"));
        assert_eq!((summary.root.body_start, summary.root.body_end), (raw.len(), raw.len()));
    }

    const ALTERNATIVE: &str = "From: \"Doe, Jane\" <jane@example.com>\n\
        To: team: a@example.com, \"B\" <b@example.org>;, c@example.net\n\
        Cc: undisclosed-recipients:;\n\
        Subject: Re: [list] Fwd: =?utf-8?q?caf=C3=A9?= (fwd)\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/alternative; boundary=\"alt\"\n\
        \n\
        preamble\n\
        --alt\n\
        Content-Type: text/plain; charset=utf-8\n\
        \n\
        Plain text\n\
        --alt\n\
        Content-Type: text/html; charset=utf-8\n\
        Content-Transfer-Encoding: quoted-printable\n\
        \n\
        <p>HTML =3D text</p>\n\
        --alt--\n\
        epilogue\n";

    #[test]
    fn multipart_alternative_groups_and_encoded_subject() {
        let raw = crlf(ALTERNATIVE);
        let summary = summarize(&raw);
        let envelope = &summary.envelope;
        assert_eq!(envelope.from, vec![addr(Some("Doe, Jane"), "jane", "example.com")]);
        let group = |name: &str| Address { mailbox: Some(name.into()), ..Address::default() };
        assert_eq!(
            envelope.to,
            vec![
                group("team"),
                addr(None, "a", "example.com"),
                addr(Some("B"), "b", "example.org"),
                Address::default(),
                addr(None, "c", "example.net"),
            ]
        );
        assert_eq!(envelope.cc, vec![group("undisclosed-recipients"), Address::default()]);
        assert_eq!(envelope.subject.as_deref(), Some("Re: [list] Fwd: =?utf-8?q?caf=C3=A9?= (fwd)"));
        assert_eq!(summary.subject_decoded, "Re: [list] Fwd: café (fwd)");
        assert_eq!(summary.base_subject, "café");
        assert_eq!(summary.to_sort_key, "a");
        assert_eq!(summary.display_to, "team");
        assert_eq!(summary.display_from, "Doe, Jane");

        let root = &summary.root;
        assert!(root.is("multipart", "alternative"));
        assert_eq!(root.params, vec![("boundary".to_string(), "alt".to_string())]);
        let parts = children(root);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].is("text", "plain"));
        assert_eq!(header(&raw, &parts[0]), b"Content-Type: text/plain; charset=utf-8\r\n\r\n");
        assert_eq!(body(&raw, &parts[0]), b"Plain text");
        assert_eq!((parts[0].size(), parts[0].lines), (10, 1));
        assert!(parts[1].is("text", "html"));
        assert_eq!(parts[1].encoding, "quoted-printable");
        assert_eq!(body(&raw, &parts[1]), b"<p>HTML =3D text</p>");
        assert!(body(&raw, root).starts_with(b"preamble\r\n--alt\r\n") && body(&raw, root).ends_with(b"epilogue\r\n"));

        let text = body_text(&raw);
        assert!(text.contains("Plain text") && text.contains("HTML = text") && !text.contains("<p>"), "{text}");
    }

    /// multipart/mixed: a text part, a base64 PDF named with RFC 2231 continuations, and a
    /// forwarded message that is itself multipart.
    const MIXED: &str = "From: sender@example.com\n\
        To: rcpt@example.com\n\
        Subject: report\n\
        Content-Type: multipart/mixed; boundary=\"==outer==\"\n\
        \n\
        --==outer==\n\
        Content-Type: text/plain\n\
        \n\
        See attached.\n\
        \n\
        --==outer==\n\
        Content-Type: application/pdf;\n \
        name*0*=utf-8''r%C3%A9sum;\n \
        name*1*=%C3%A9.pdf\n\
        Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\n\
        Content-Transfer-Encoding: base64\n\
        Content-ID: <pdf@example.com>\n\
        Content-Description: the CV\n\
        Content-Language: fr, en\n\
        \n\
        JVBERi0xLjQK\n\
        --==outer==\n\
        Content-Type: message/rfc822\n\
        \n\
        From: Inner <inner@example.org>\n\
        Subject: inner\n\
        Content-Type: multipart/mixed; boundary=inner\n\
        \n\
        --inner\n\
        \n\
        inner text\n\
        --inner--\n\
        \n\
        --==outer==--\n";

    #[test]
    fn multipart_mixed_with_attachment_and_nested_message() {
        let raw = crlf(MIXED);
        let summary = summarize(&raw);
        let parts = children(&summary.root);
        assert_eq!(parts.len(), 3);

        assert_eq!(body(&raw, &parts[0]), b"See attached.\r\n");
        assert_eq!(parts[0].params, vec![("charset".to_string(), "us-ascii".to_string())]);

        let pdf = &parts[1];
        assert!(pdf.is("application", "pdf"));
        assert_eq!(pdf.params, vec![("name".to_string(), "résumé.pdf".to_string())]);
        let disposition = pdf.disposition.as_ref().unwrap();
        assert_eq!(disposition.kind, "attachment");
        assert_eq!(disposition.params, vec![("filename".to_string(), "résumé.pdf".to_string())]);
        assert_eq!(pdf.encoding, "base64");
        assert_eq!(pdf.id.as_deref(), Some("<pdf@example.com>"));
        assert_eq!(pdf.description.as_deref(), Some("the CV"));
        assert_eq!(pdf.language, vec!["fr".to_string(), "en".to_string()]);
        assert_eq!(body(&raw, pdf), b"JVBERi0xLjQK");
        assert_eq!(decode_transfer_encoding(&pdf.encoding, body(&raw, pdf)).unwrap(), b"%PDF-1.4\n");

        let forwarded = &parts[2];
        assert!(forwarded.is("message", "rfc822"));
        let inner = encapsulated(forwarded);
        assert_eq!(inner.envelope.subject.as_deref(), Some("inner"));
        assert_eq!(inner.envelope.from, vec![addr(Some("Inner"), "inner", "example.org")]);
        assert_eq!((inner.root.header_start, inner.root.body_end), (forwarded.body_start, forwarded.body_end));
        assert!(body(&raw, forwarded).starts_with(b"From: Inner") && body(&raw, forwarded).ends_with(b"--inner--\r\n"));
        assert!(header(&raw, &inner.root).ends_with(b"boundary=inner\r\n\r\n"));
        let inner_parts = children(&inner.root);
        assert_eq!(inner_parts.len(), 1);
        assert_eq!(header(&raw, &inner_parts[0]), b"\r\n");
        assert_eq!(body(&raw, &inner_parts[0]), b"inner text");
        // The forwarded message: 3 header lines, the blank line, then "--inner", the inner
        // part's empty header line, "inner text" and "--inner--".
        assert_eq!(forwarded.lines, 8);

        let text = body_text(&raw);
        assert!(text.contains("See attached.") && text.contains("inner text"), "{text}");
    }

    #[test]
    fn chinese_subject_and_body() {
        // "中文" in GB2312 is D6 D0 CE C4; as an encoded word, base64 "1tDOxA==".
        let mut raw = crlf(
            "From: =?gb2312?B?1tDOxA==?= <zh@example.cn>\n\
             Subject: =?GB2312?B?1tDOxA==?= test\n\
             Content-Type: text/plain; charset=gbk\n\
             Content-Transfer-Encoding: 8bit\n\
             \n",
        );
        raw.extend_from_slice(b"\xd6\xd0\xce\xc4\r\n");
        let summary = summarize(&raw);
        assert_eq!(summary.envelope.subject.as_deref(), Some("=?GB2312?B?1tDOxA==?= test"));
        assert_eq!(summary.subject_decoded, "中文 test");
        assert_eq!(summary.envelope.from, vec![addr(Some("=?gb2312?B?1tDOxA==?="), "zh", "example.cn")]);
        assert_eq!(summary.display_from, "中文");
        assert_eq!(summary.root.params, vec![("charset".to_string(), "gbk".to_string())]);
        assert_eq!((summary.root.size(), summary.root.lines), (6, 1));
        assert_eq!(body_text(&raw), "中文\r\n");
    }

    #[test]
    fn broken_boundary_is_recovered() {
        // The closing boundary never comes; the second part runs to the end.
        let raw = crlf(
            "Subject: broken\n\
             Content-Type: multipart/mixed; boundary=b1\n\
             \n\
             --b1\n\
             \n\
             first\n\
             --b1\n\
             Content-Type: text/plain\n\
             \n\
             second, never closed\n",
        );
        let summary = summarize(&raw);
        let parts = children(&summary.root);
        assert_eq!(body(&raw, &parts[0]), b"first");
        assert!(body(&raw, &parts[1]).starts_with(b"second, never closed"));
        assert!(parts.iter().all(|p| p.body_end <= raw.len() && p.header_start <= p.body_start));

        // The boundary parameter names a string that never appears: one text leaf.
        let raw = crlf("Content-Type: multipart/mixed; boundary=nothere\n\nno parts at all\n");
        let summary = summarize(&raw);
        assert!(summary.root.is("multipart", "mixed"));
        assert_eq!(summary.root.body, PartBody::Leaf);
        assert_eq!(body(&raw, &summary.root), b"no parts at all\r\n");
    }

    #[test]
    fn bare_line_feeds_digest_defaults_and_raw_utf8() {
        let raw = "Subject: caf\u{e9} \u{4e2d}\nContent-Type: multipart/digest; boundary=d\n\n--d\n\n\
                   Subject: one\n\nfirst\n--d\nContent-Type: text/plain\n\nsecond\n--d--\n"
            .as_bytes();
        let summary = summarize(raw);
        assert_eq!(summary.envelope.subject.as_deref(), Some("caf\u{e9} \u{4e2d}"));
        assert_eq!(summary.subject_decoded, "caf\u{e9} \u{4e2d}");
        let parts = children(&summary.root);
        // RFC 2046 §5.1.5: a digest part without Content-Type is a message.
        assert!(parts[0].is("message", "rfc822"));
        let inner = encapsulated(&parts[0]);
        assert_eq!(inner.envelope.subject.as_deref(), Some("one"));
        assert_eq!(body(raw, &inner.root), b"first");
        assert_eq!(header(raw, &parts[0]), b"\n");
        assert!(parts[1].is("text", "plain"));
        assert_eq!(header(raw, &parts[1]), b"Content-Type: text/plain\n\n");
        assert_eq!(body(raw, &parts[1]), b"second");
    }

    #[test]
    fn top_level_message_rfc822() {
        let raw = crlf("Content-Type: message/rfc822\n\nSubject: wrapped\n\nwrapped body\n");
        let summary = summarize(&raw);
        let inner = encapsulated(&summary.root);
        assert_eq!(inner.envelope.subject.as_deref(), Some("wrapped"));
        assert_eq!(body(&raw, &inner.root), b"wrapped body\r\n");
        assert_eq!(summary.root.lines, 3);
    }

    #[test]
    fn base_subject_extraction() {
        for (subject, base) in [
            ("Re: hello", "hello"),
            ("RE: Re[2]: hello", "hello"),
            ("Fwd:  Re:\thello   world (fwd) (FWD) ", "hello world"),
            ("[list] Re: [other] FW: topic", "topic"),
            ("[list] topic", "topic"),
            ("[only a blob]", "[only a blob]"),
            ("[Fwd: Re: wrapped]", "wrapped"),
            ("Re: [Fwd: [x] Re: deep (fwd)]", "deep"),
            ("", ""),
            ("re:", ""),
            ("Regarding things", "Regarding things"),
        ] {
            assert_eq!(base_subject(subject), base, "{subject:?}");
        }
    }

    #[test]
    fn raw_fields_keep_folding() {
        let header = b"A: 1\r\nB: two\r\n  lines\r\nno colon\r\nC:3\n\r\nbody: not a header\r\n";
        let fields: Vec<_> = raw_fields(header).collect();
        assert_eq!(fields.len(), 4);
        assert_eq!((fields[1].name, fields[1].line), (&b"B"[..], &b"B: two\r\n  lines\r\n"[..]));
        assert_eq!(fields[2].name, b"");
        assert_eq!((fields[3].name, fields[3].value), (&b"C"[..], &b"3\n"[..]));
        assert_eq!(header_values(header, header.len(), "b"), vec!["two  lines".to_string()]);
    }

    #[test]
    fn transfer_encodings() {
        assert_eq!(decode_transfer_encoding("Base64", b"aGVs\r\nbG8=\r\n").unwrap(), b"hello");
        assert_eq!(decode_transfer_encoding("base64", b"aGVs!!bG8=").unwrap(), b"hello");
        assert_eq!(decode_transfer_encoding("quoted-printable", b"a=3Db=\r\nc\r\n").unwrap(), b"a=bc\r\n");
        assert_eq!(decode_transfer_encoding("8bit", b"\xff").unwrap(), b"\xff");
        assert_eq!(decode_transfer_encoding(" 7BIT (comment)", b"x").unwrap(), b"x");
        assert_eq!(decode_transfer_encoding("x-uuencode", b"x"), None);
    }

    #[test]
    fn no_panic_on_junk() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: [&[u8]; 12] = [
            b"Content-Type: multipart/mixed; boundary=x\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"--x\r\n",
            b"--x--\r\n",
            b"\r\n",
            b"From: a@b\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"=?utf-8?b?",
            b"\xff\xfe\x00",
            b"To: g: ;\r\n",
            b"Content-Type: multipart/digest; boundary=\"x\"\r\n",
            b" folded\r\n",
        ];
        for _ in 0..2000 {
            let mut raw = Vec::new();
            for _ in 0..(next() % 24) {
                let choice = next();
                if choice % 3 == 0 {
                    raw.extend((0..choice % 40).map(|_| next() as u8));
                } else {
                    raw.extend_from_slice(pieces[(choice % pieces.len() as u64) as usize]);
                }
            }
            let summary = summarize(&raw);
            check_offsets(&summary.root, raw.len(), 0);
            let _ = body_text(&raw);
        }
    }

    fn check_offsets(part: &Part, length: usize, depth: usize) {
        assert!(depth <= MAX_DEPTH + 1);
        assert!(part.header_start <= part.header_end && part.header_end <= part.body_start);
        assert!(part.body_start <= part.body_end && part.body_end <= length);
        match &part.body {
            PartBody::Leaf => {}
            PartBody::Multipart(parts) => {
                assert!(!parts.is_empty());
                parts.iter().for_each(|p| check_offsets(p, length, depth + 1));
            }
            PartBody::Message(inner) => check_offsets(&inner.root, length, depth + 1),
        }
    }

    #[test]
    fn deep_nesting_is_capped() {
        let mut raw = Vec::new();
        for level in 0..200 {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n").as_bytes(),
            );
        }
        raw.extend_from_slice(b"\r\ndeepest\r\n");
        let summary = summarize(&raw);
        check_offsets(&summary.root, raw.len(), 0);
        let mut depth = 0;
        let mut part = &summary.root;
        while let PartBody::Multipart(parts) = &part.body {
            part = &parts[0];
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH);

        // Encapsulated messages nested far deeper than any stack would take recursively.
        let raw = b"Content-Type: message/rfc822\r\n\r\n".repeat(100_000);
        let summary = summarize(&raw);
        check_offsets(&summary.root, raw.len(), 0);
        let _ = body_text(&raw);
    }

    #[test]
    fn summary_round_trips_through_serde() {
        let summary = summarize(&crlf(MIXED));
        let bytes = postcard::to_allocvec(&summary).unwrap();
        assert_eq!(postcard::from_bytes::<MessageSummary>(&bytes).unwrap(), summary);
    }
}
