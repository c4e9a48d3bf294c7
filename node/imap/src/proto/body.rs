//! ENVELOPE, BODY and BODYSTRUCTURE (RFC 9051 §7.5.2), BODY[section] (RFC 9051 §6.4.5) and
//! BINARY[part] (RFC 3516): pure functions over a [`MessageSummary`] and the raw message.

use std::borrow::Cow;

use wmail_core::message::{Address, Envelope, MessageSummary, Part, PartBody, decode_transfer_encoding, raw_fields};

use crate::proto::command::{Section, SectionText};
use crate::proto::response::{push_nstring, push_string};

/// A BINARY fetch of a part whose Content-Transfer-Encoding the server cannot decode; the
/// session answers `NO [UNKNOWN-CTE]` (RFC 3516 §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCte {
    /// The encoding as written in the part's header.
    pub encoding: String,
}

impl std::fmt::Display for UnknownCte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown Content-Transfer-Encoding {:?}", self.encoding)
    }
}

impl std::error::Error for UnknownCte {}

/// Appends an ENVELOPE (RFC 9051 §7.5.2): date, subject, from, sender, reply-to, to, cc, bcc,
/// in-reply-to, message-id; NIL for absent fields and empty address lists.
pub fn write_envelope(out: &mut Vec<u8>, envelope: &Envelope, utf8: bool) {
    out.push(b'(');
    push_nstring(out, envelope.date.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    push_nstring(out, envelope.subject.as_deref().map(str::as_bytes), utf8);
    for list in [&envelope.from, &envelope.sender, &envelope.reply_to, &envelope.to, &envelope.cc, &envelope.bcc] {
        out.push(b' ');
        write_address_list(out, list, utf8);
    }
    out.push(b' ');
    push_nstring(out, envelope.in_reply_to.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    push_nstring(out, envelope.message_id.as_deref().map(str::as_bytes), utf8);
    out.push(b')');
}

/// `"(" 1*address ")"` or NIL; an address is `(name adl mailbox host)` (RFC 9051 §9 `address`).
fn write_address_list(out: &mut Vec<u8>, list: &[Address], utf8: bool) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for address in list {
        out.push(b'(');
        for (index, field) in [&address.name, &address.adl, &address.mailbox, &address.host].into_iter().enumerate() {
            if index > 0 {
                out.push(b' ');
            }
            push_nstring(out, field.as_deref().map(str::as_bytes), utf8);
        }
        out.push(b')');
    }
    out.push(b')');
}

/// Appends the body structure of `part` (RFC 9051 §7.5.2): BODYSTRUCTURE with the extension
/// data (MD5, disposition, language, location) when `extensible`, BODY without it.
///
/// A leaf whose type needs structure (a multipart without a usable boundary or nested deeper
/// than the summary follows, a message/rfc822 with a transfer encoding) is written as
/// application/octet-stream, since clients parse "MESSAGE" "RFC822" and multiparts by their
/// grammar and would misread a plain part.
pub fn write_body_structure(out: &mut Vec<u8>, part: &Part, extensible: bool, utf8: bool) {
    out.push(b'(');
    match &part.body {
        PartBody::Multipart(children) => {
            for child in children {
                write_body_structure(out, child, extensible, utf8);
            }
            if children.is_empty() {
                // `body-type-mpart` needs one part; a summary never has none, but stay valid.
                out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)");
            }
            out.push(b' ');
            push_upper(out, &part.media_subtype, utf8);
            if extensible {
                out.push(b' ');
                write_params(out, &part.params, utf8);
                write_common_extensions(out, part, utf8);
            }
        }
        PartBody::Message(message) => {
            out.extend_from_slice(b"\"MESSAGE\" ");
            push_upper(out, &part.media_subtype, utf8);
            write_body_fields(out, part, utf8);
            out.push(b' ');
            write_envelope(out, &message.envelope, utf8);
            out.push(b' ');
            write_body_structure(out, &message.root, extensible, utf8);
            out.extend_from_slice(format!(" {}", part.lines).as_bytes());
            if extensible {
                write_single_part_extensions(out, part, utf8);
            }
        }
        PartBody::Leaf => {
            let structural = part.media_type.eq_ignore_ascii_case("multipart")
                || part.is("message", "rfc822")
                || part.is("message", "global");
            if structural {
                out.extend_from_slice(b"\"APPLICATION\" \"OCTET-STREAM\"");
            } else {
                push_upper(out, &part.media_type, utf8);
                out.push(b' ');
                push_upper(out, &part.media_subtype, utf8);
            }
            write_body_fields(out, part, utf8);
            if part.media_type.eq_ignore_ascii_case("text") {
                out.extend_from_slice(format!(" {}", part.lines).as_bytes());
            }
            if extensible {
                write_single_part_extensions(out, part, utf8);
            }
        }
    }
    out.push(b')');
}

/// Appends `value` uppercased as a string.
fn push_upper(out: &mut Vec<u8>, value: &str, utf8: bool) {
    push_string(out, value.to_ascii_uppercase().as_bytes(), utf8);
}

/// SP body-fields: parameters, id, description, encoding, size in octets.
fn write_body_fields(out: &mut Vec<u8>, part: &Part, utf8: bool) {
    out.push(b' ');
    write_params(out, &part.params, utf8);
    out.push(b' ');
    push_nstring(out, part.id.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    push_nstring(out, part.description.as_deref().map(str::as_bytes), utf8);
    out.push(b' ');
    push_upper(out, &part.encoding, utf8);
    out.extend_from_slice(format!(" {}", part.size()).as_bytes());
}

/// SP body-ext-1part: MD5, then disposition, language and location.
fn write_single_part_extensions(out: &mut Vec<u8>, part: &Part, utf8: bool) {
    out.push(b' ');
    push_nstring(out, part.md5.as_deref().map(str::as_bytes), utf8);
    write_common_extensions(out, part, utf8);
}

/// SP body-fld-dsp SP body-fld-lang SP body-fld-loc.
fn write_common_extensions(out: &mut Vec<u8>, part: &Part, utf8: bool) {
    out.push(b' ');
    match &part.disposition {
        Some(disposition) => {
            out.push(b'(');
            push_upper(out, &disposition.kind, utf8);
            out.push(b' ');
            write_params(out, &disposition.params, utf8);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    if part.language.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        for (index, tag) in part.language.iter().enumerate() {
            if index > 0 {
                out.push(b' ');
            }
            push_string(out, tag.as_bytes(), utf8);
        }
        out.push(b')');
    }
    out.push(b' ');
    push_nstring(out, part.location.as_deref().map(str::as_bytes), utf8);
}

/// body-fld-param: `("NAME" "value" ...)` or NIL. Without UTF-8, a non-ASCII value goes out
/// as an RFC 2231 extended parameter (`NAME*` `utf-8''percent-encoded`), which clients
/// already decode in BODYSTRUCTURE.
fn write_params(out: &mut Vec<u8>, params: &[(String, String)], utf8: bool) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (index, (name, value)) in params.iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        if utf8 || value.is_ascii() {
            push_upper(out, name, utf8);
            out.push(b' ');
            push_string(out, value.as_bytes(), utf8);
        } else {
            push_upper(out, &format!("{name}*"), utf8);
            out.push(b' ');
            push_string(out, rfc2231_encode(value).as_bytes(), utf8);
        }
    }
    out.push(b')');
}

/// `utf-8''value` with every octet outside RFC 2231 `attribute-char` percent-encoded.
fn rfc2231_encode(value: &str) -> String {
    let mut encoded = String::from("utf-8''");
    for &byte in value.as_bytes() {
        let attribute_char = byte.is_ascii_graphic() && !b"*'%()<>@,;:\\\"/[]?=".contains(&byte);
        if attribute_char {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The part a section's part numbers name (RFC 9051 §6.4.5), `None` if there is none. The
/// first number counts the message's parts (a non-multipart message has only part 1, its
/// body); after a message/rfc822 part the next number counts the parts of the encapsulated
/// message. An empty list names the root.
pub fn find_part<'s>(summary: &'s MessageSummary, part: &[u32]) -> Option<&'s Part> {
    let Some((&first, rest)) = part.split_first() else {
        return Some(&summary.root);
    };
    let mut current = nth_part_of_message(&summary.root, first)?;
    for &number in rest {
        current = match &current.body {
            PartBody::Multipart(children) => children.get(index(number)?)?,
            PartBody::Message(message) => nth_part_of_message(&message.root, number)?,
            PartBody::Leaf => return None,
        };
    }
    Some(current)
}

/// Part `number` of the message whose root is `root`.
fn nth_part_of_message(root: &Part, number: u32) -> Option<&Part> {
    match &root.body {
        PartBody::Multipart(children) => children.get(index(number)?),
        _ => (number == 1).then_some(root),
    }
}

/// A 1-based part number as an index.
fn index(number: u32) -> Option<usize> {
    usize::try_from(number.checked_sub(1)?).ok()
}

/// The octets of BODY[section] (RFC 9051 §6.4.5), `None` when the section does not exist (the
/// session then returns an empty string). `HEADER`, `HEADER.FIELDS[.NOT]` and `TEXT` apply to
/// the whole message, or after part numbers to a message/rfc822 part's encapsulated message;
/// `MIME` is the header of the part itself.
pub fn section_bytes<'a>(raw: &'a [u8], summary: &MessageSummary, section: &Section) -> Option<Cow<'a, [u8]>> {
    if section.part.is_empty() {
        return match &section.text {
            None => Some(Cow::Borrowed(raw)),
            Some(SectionText::Mime) => None,
            Some(text) => message_text(raw, &summary.root, text),
        };
    }
    let part = find_part(summary, &section.part)?;
    match &section.text {
        None => Some(Cow::Borrowed(range(raw, part.body_start, part.body_end))),
        Some(SectionText::Mime) => Some(Cow::Borrowed(range(raw, part.header_start, part.header_end))),
        Some(text) => match &part.body {
            PartBody::Message(message) => message_text(raw, &message.root, text),
            _ => None,
        },
    }
}

/// HEADER, HEADER.FIELDS[.NOT] or TEXT of the message whose root part is `root`.
fn message_text<'a>(raw: &'a [u8], root: &Part, text: &SectionText) -> Option<Cow<'a, [u8]>> {
    let header = range(raw, root.header_start, root.header_end);
    Some(match text {
        SectionText::Header => Cow::Borrowed(header),
        SectionText::Text => Cow::Borrowed(range(raw, root.body_start, root.body_end)),
        SectionText::HeaderFields(names) => Cow::Owned(header_fields(header, names, true)),
        SectionText::HeaderFieldsNot(names) => Cow::Owned(header_fields(header, names, false)),
        SectionText::Mime => return None,
    })
}

/// The fields of `header` whose name is (`keep`) or is not among `names` (ASCII
/// case-insensitive), folded lines whole, each ending in a line end, then the blank line.
fn header_fields(header: &[u8], names: &[String], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for field in raw_fields(header) {
        let listed =
            !field.name.is_empty() && names.iter().any(|name| field.name.eq_ignore_ascii_case(name.as_bytes()));
        if listed == keep {
            out.extend_from_slice(field.line);
            if !field.line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `raw[start..end]`, clamped.
fn range(raw: &[u8], start: usize, end: usize) -> &[u8] {
    let end = end.min(raw.len());
    raw.get(start.min(end)..end).unwrap_or_default()
}

/// The content of BINARY[section] (RFC 3516 §4.1), empty when the section does not exist.
/// With part numbers only, it is the part's body with its Content-Transfer-Encoding removed
/// (an empty list is the whole message, unchanged). RFC 3516 stops there; like Dovecot we
/// also answer the BODY section texts: HEADER, HEADER.FIELDS and MIME as they are (headers
/// carry no transfer encoding), and TEXT as the body of the (encapsulated) message, decoded
/// when that message is not multipart.
pub fn binary_section<'a>(
    raw: &'a [u8],
    summary: &MessageSummary,
    section: &Section,
) -> Result<Cow<'a, [u8]>, UnknownCte> {
    match &section.text {
        None => decoded_part(raw, summary, &section.part),
        Some(SectionText::Text) => {
            let root = match find_part(summary, &section.part) {
                Some(part) if section.part.is_empty() => part,
                Some(Part { body: PartBody::Message(message), .. }) => &message.root,
                _ => return Ok(Cow::Borrowed(&[])),
            };
            match root.body {
                PartBody::Multipart(_) => Ok(Cow::Borrowed(range(raw, root.body_start, root.body_end))),
                _ => decode(raw, root),
            }
        }
        Some(_) => Ok(section_bytes(raw, summary, section).unwrap_or_default()),
    }
}

/// BINARY[part]: the part's body with its transfer encoding removed; an empty `part` is the
/// whole message, unchanged; a part that does not exist gives an empty body.
fn decoded_part<'a>(raw: &'a [u8], summary: &MessageSummary, part: &[u32]) -> Result<Cow<'a, [u8]>, UnknownCte> {
    if part.is_empty() {
        return Ok(Cow::Borrowed(raw));
    }
    match find_part(summary, part) {
        Some(found) => decode(raw, found),
        None => Ok(Cow::Borrowed(&[])),
    }
}

/// The body of `part` with its Content-Transfer-Encoding removed (base64 and
/// quoted-printable decoded, 7bit, 8bit and binary as they are).
fn decode<'a>(raw: &'a [u8], part: &Part) -> Result<Cow<'a, [u8]>, UnknownCte> {
    decode_transfer_encoding(&part.encoding, range(raw, part.body_start, part.body_end))
        .map(Cow::Owned)
        .ok_or_else(|| UnknownCte { encoding: part.encoding.clone() })
}

#[cfg(test)]
mod tests {
    use wmail_core::message::summarize;

    use super::*;

    fn crlf(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    fn envelope(summary: &MessageSummary, utf8: bool) -> String {
        let mut out = Vec::new();
        write_envelope(&mut out, &summary.envelope, utf8);
        String::from_utf8(out).unwrap()
    }

    fn structure(summary: &MessageSummary, extensible: bool, utf8: bool) -> String {
        let mut out = Vec::new();
        write_body_structure(&mut out, &summary.root, extensible, utf8);
        String::from_utf8(out).unwrap()
    }

    fn section(part: &[u32], text: Option<SectionText>) -> Section {
        Section { part: part.to_vec(), text }
    }

    fn fetch(raw: &[u8], summary: &MessageSummary, part: &[u32], text: Option<SectionText>) -> Option<String> {
        section_bytes(raw, summary, &section(part, text)).map(|bytes| String::from_utf8(bytes.into_owned()).unwrap())
    }

    const PLAIN: &str = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\n\
        From: Fred Foobar <foobar@Blurdybloop.example>\n\
        Subject: afternoon\n meeting\n\
        To: mooch@owatagu.siam.edu.example\n\
        Message-Id: <B27397-0100000@Blurdybloop.example>\n\
        MIME-Version: 1.0\n\
        Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\
        \n\
        Hello Joe, do you think we can meet at 3:30 tomorrow?\n";

    #[test]
    fn plain_text_envelope_and_structure() {
        let raw = crlf(PLAIN);
        let summary = summarize(&raw);
        let fred = r#"(("Fred Foobar" NIL "foobar" "Blurdybloop.example"))"#;
        assert_eq!(
            envelope(&summary, false),
            format!(
                concat!(
                    r#"("Mon, 7 Feb 1994 21:52:25 -0800 (PST)" "afternoon meeting" {fred} {fred} {fred} "#,
                    r#"((NIL NIL "mooch" "owatagu.siam.edu.example")) NIL NIL NIL "#,
                    r#""<B27397-0100000@Blurdybloop.example>")"#
                ),
                fred = fred
            )
        );
        // The body is "Hello Joe, do you think we can meet at 3:30 tomorrow?" (53 characters)
        // and CRLF: 55 octets, 1 line.
        assert_eq!(
            structure(&summary, true, false),
            r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1 NIL NIL NIL NIL)"#
        );
        assert_eq!(structure(&summary, false, false), r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1)"#);

        // A non-multipart message has one part, its body; MIME of it is the message header.
        let body = "Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n";
        assert_eq!(fetch(&raw, &summary, &[1], None).as_deref(), Some(body));
        assert_eq!(fetch(&raw, &summary, &[], Some(SectionText::Text)).as_deref(), Some(body));
        assert_eq!(fetch(&raw, &summary, &[], None).unwrap().as_bytes(), &raw[..]);
        let header = fetch(&raw, &summary, &[], Some(SectionText::Header)).unwrap();
        assert!(header.starts_with("Date: ") && header.ends_with("CHARSET=US-ASCII\r\n\r\n"));
        assert_eq!(fetch(&raw, &summary, &[1], Some(SectionText::Mime)), Some(header));
        assert_eq!(fetch(&raw, &summary, &[2], None), None);
        assert_eq!(fetch(&raw, &summary, &[1, 1], None), None);
        assert_eq!(fetch(&raw, &summary, &[1], Some(SectionText::Header)), None);
        assert_eq!(fetch(&raw, &summary, &[], Some(SectionText::Mime)), None);

        // HEADER.FIELDS keeps folded lines whole, in header order, and ends with the blank line.
        let fields = SectionText::HeaderFields(vec!["SUBJECT".into(), "from".into(), "x-absent".into()]);
        assert_eq!(
            fetch(&raw, &summary, &[], Some(fields)).as_deref(),
            Some("From: Fred Foobar <foobar@Blurdybloop.example>\r\nSubject: afternoon\r\n meeting\r\n\r\n")
        );
        let not = SectionText::HeaderFieldsNot(
            ["date", "from", "subject", "message-id", "mime-version", "content-type"].map(String::from).to_vec(),
        );
        assert_eq!(
            fetch(&raw, &summary, &[], Some(not)).as_deref(),
            Some("To: mooch@owatagu.siam.edu.example\r\n\r\n")
        );
        let none = SectionText::HeaderFields(vec!["cc".into()]);
        assert_eq!(fetch(&raw, &summary, &[], Some(none)).as_deref(), Some("\r\n"));

        assert_eq!(*decoded_part(&raw, &summary, &[1]).unwrap(), *body.as_bytes());
        assert_eq!(*decoded_part(&raw, &summary, &[]).unwrap(), *raw);
        assert_eq!(*decoded_part(&raw, &summary, &[3]).unwrap(), *b"");
    }

    const MIXED: &str = "From: Alice <alice@example.com>\n\
        To: Bob <bob@example.net>, Team: carol@example.org;\n\
        Subject: =?utf-8?q?caf=C3=A9?= plans\n\
        Date: Tue, 1 Apr 2025 10:00:00 +0000\n\
        Message-ID: <m1@example.com>\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed; boundary=\"outer\"\n\
        \n\
        This is a MIME message.\n\
        --outer\n\
        Content-Type: multipart/alternative; boundary=\"alt\"\n\
        \n\
        --alt\n\
        Content-Type: text/plain; charset=utf-8\n\
        \n\
        Hi Bob,\n\
        see you.\n\
        --alt\n\
        Content-Type: text/html; charset=utf-8\n\
        \n\
        <p>Hi Bob,</p>\n\
        --alt--\n\
        \n\
        --outer\n\
        Content-Type: application/pdf; name=\"plan.pdf\"\n\
        Content-Disposition: attachment; filename=\"plan.pdf\"\n\
        Content-Transfer-Encoding: base64\n\
        \n\
        JVBERi0xLjQK\n\
        --outer\n\
        Content-Type: message/rfc822\n\
        \n\
        From: Carol <carol@example.org>\n\
        Subject: original\n\
        \n\
        Original text.\n\
        --outer--\n";

    #[test]
    fn multipart_envelope_and_structure() {
        let raw = crlf(MIXED);
        let summary = summarize(&raw);
        assert_eq!(
            envelope(&summary, false),
            concat!(
                r#"("Tue, 1 Apr 2025 10:00:00 +0000" "=?utf-8?q?caf=C3=A9?= plans" "#,
                r#"(("Alice" NIL "alice" "example.com")) (("Alice" NIL "alice" "example.com")) "#,
                r#"(("Alice" NIL "alice" "example.com")) "#,
                r#"(("Bob" NIL "bob" "example.net")(NIL NIL "Team" NIL)"#,
                r#"(NIL NIL "carol" "example.org")(NIL NIL NIL NIL)) "#,
                r#"NIL NIL NIL "<m1@example.com>")"#
            )
        );
        // Sizes and lines, counting the CRLF before a boundary as the boundary's (RFC 2046
        // §5.1.1):
        // 1.1 "Hi Bob,\r\nsee you.": 7 + 2 + 8 = 17 octets, 2 lines.
        // 1.2 "<p>Hi Bob,</p>": 14 octets, 1 line.
        // 2 "JVBERi0xLjQK": 12 octets.
        // 3 "From: Carol <carol@example.org>\r\n" (33) "Subject: original\r\n" (19) "\r\n" (2)
        //   "Original text." (14): 68 octets, 4 lines; its own body is the last 14 octets, 1 line.
        let carol = r#"(("Carol" NIL "carol" "example.org"))"#;
        let expected = format!(
            concat!(
                r#"("#,
                r#"(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 17 2 NIL NIL NIL NIL)"#,
                r#"("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 14 1 NIL NIL NIL NIL)"#,
                r#" "ALTERNATIVE" ("BOUNDARY" "alt") NIL NIL NIL)"#,
                r#"("APPLICATION" "PDF" ("NAME" "plan.pdf") NIL NIL "BASE64" 12 NIL"#,
                r#" ("ATTACHMENT" ("FILENAME" "plan.pdf")) NIL NIL)"#,
                r#"("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 68"#,
                r#" (NIL "original" {carol} {carol} {carol} NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL)"#,
                r#" "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)"#
            ),
            carol = carol
        );
        assert_eq!(structure(&summary, true, false), expected);
        let expected_body = format!(
            concat!(
                r#"((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 17 2)"#,
                r#"("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 14 1) "ALTERNATIVE")"#,
                r#"("APPLICATION" "PDF" ("NAME" "plan.pdf") NIL NIL "BASE64" 12)"#,
                r#"("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 68"#,
                r#" (NIL "original" {carol} {carol} {carol} NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 14 1) 4) "MIXED")"#
            ),
            carol = carol
        );
        assert_eq!(structure(&summary, false, false), expected_body);

        let get = |part: &[u32], text: Option<SectionText>| fetch(&raw, &summary, part, text);
        assert!(get(&[], Some(SectionText::Text)).unwrap().starts_with("This is a MIME message.\r\n--outer\r\n"));
        let alternative = get(&[1], None).unwrap();
        assert!(alternative.starts_with("--alt\r\nContent-Type: text/plain") && alternative.ends_with("--alt--\r\n"));
        assert_eq!(get(&[1, 1], None).as_deref(), Some("Hi Bob,\r\nsee you."));
        assert_eq!(get(&[1, 2], None).as_deref(), Some("<p>Hi Bob,</p>"));
        assert_eq!(
            get(&[1, 2], Some(SectionText::Mime)).as_deref(),
            Some("Content-Type: text/html; charset=utf-8\r\n\r\n")
        );
        assert_eq!(get(&[2], None).as_deref(), Some("JVBERi0xLjQK"));
        let message = "From: Carol <carol@example.org>\r\nSubject: original\r\n\r\nOriginal text.";
        assert_eq!(get(&[3], None).as_deref(), Some(message));
        assert_eq!(get(&[3], Some(SectionText::Mime)).as_deref(), Some("Content-Type: message/rfc822\r\n\r\n"));
        assert_eq!(
            get(&[3], Some(SectionText::Header)).as_deref(),
            Some("From: Carol <carol@example.org>\r\nSubject: original\r\n\r\n")
        );
        assert_eq!(get(&[3], Some(SectionText::Text)).as_deref(), Some("Original text."));
        assert_eq!(get(&[3, 1], None).as_deref(), Some("Original text."));
        assert_eq!(
            get(&[3], Some(SectionText::HeaderFields(vec!["subject".into()]))).as_deref(),
            Some("Subject: original\r\n\r\n")
        );
        for missing in [&[0][..], &[4], &[1, 3], &[2, 1], &[3, 2], &[1, 1, 1]] {
            assert_eq!(get(missing, None), None, "{missing:?}");
        }
        assert_eq!(get(&[2], Some(SectionText::Header)), None);
        assert_eq!(get(&[1], Some(SectionText::Text)), None);

        assert_eq!(*decoded_part(&raw, &summary, &[2]).unwrap(), *b"%PDF-1.4\n");
        assert_eq!(*decoded_part(&raw, &summary, &[1, 1]).unwrap(), *b"Hi Bob,\r\nsee you.");

        // BINARY with BODY section texts (as Dovecot answers them): headers unchanged, TEXT
        // of a multipart message as it is, TEXT of an encapsulated leaf message decoded.
        let binary = |part: &[u32], text: Option<SectionText>| {
            String::from_utf8(binary_section(&raw, &summary, &section(part, text)).unwrap().into_owned()).unwrap()
        };
        assert_eq!(
            binary(&[2], Some(SectionText::Mime)),
            fetch(&raw, &summary, &[2], Some(SectionText::Mime)).unwrap()
        );
        assert_eq!(
            binary(&[], Some(SectionText::Header)),
            fetch(&raw, &summary, &[], Some(SectionText::Header)).unwrap()
        );
        assert_eq!(binary(&[], Some(SectionText::Text)), fetch(&raw, &summary, &[], Some(SectionText::Text)).unwrap());
        assert_eq!(binary(&[3], Some(SectionText::Text)), "Original text.");
        assert_eq!(binary(&[2], Some(SectionText::Text)), "");
        assert_eq!(binary(&[9], None), "");
        assert_eq!(find_part(&summary, &[3, 1]).map(|part| part.size()), Some(14));
    }

    #[test]
    fn encodings_and_eight_bit_names() {
        let raw = crlf(
            "From: =?gb2312?B?1tDOxA==?= <zh@example.cn>\n\
             To: \"Zo\u{eb}\" <zoe@example.com>\n\
             Subject: =?GB2312?B?1tDOxA==?=\n\
             Content-Type: multipart/mixed; boundary=b\n\
             \n\
             --b\n\
             Content-Type: application/octet-stream;\n \
             name*0*=utf-8''r%C3%A9sum;\n \
             name*1*=%C3%A9.bin\n\
             Content-Transfer-Encoding: x-uuencode\n\
             \n\
             begin 644 x\n\
             --b\n\
             Content-Type: message/rfc822\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             U3ViamVjdDogaGkNCg0KaGkNCg==\n\
             --b--\n",
        );
        let summary = summarize(&raw);
        let ascii = envelope(&summary, false);
        assert!(ascii.starts_with(r#"(NIL "=?GB2312?B?1tDOxA==?=" (("=?gb2312?B?1tDOxA==?=" NIL "zh" "example.cn"))"#));
        // Without UTF8=ACCEPT the 8-bit name is a literal; with it, a quoted string.
        assert!(ascii.contains("(({4}\r\nZo\u{eb} NIL \"zoe\" \"example.com\"))"), "{ascii}");
        assert!(envelope(&summary, true).contains("((\"Zo\u{eb}\" NIL \"zoe\" \"example.com\"))"));

        // The decoded RFC 2231 name goes back out as an extended parameter without UTF-8; the
        // base64 message/rfc822 is not analysed and shows as application/octet-stream.
        let expected = concat!(
            r#"(("APPLICATION" "OCTET-STREAM" ("NAME*" "utf-8''r%C3%A9sum%C3%A9.bin") NIL NIL "X-UUENCODE" 11)"#,
            r#"("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 28) "MIXED")"#
        );
        assert_eq!(structure(&summary, false, false), expected);
        assert!(structure(&summary, false, true).contains("(\"NAME\" \"résumé.bin\")"));

        assert_eq!(decoded_part(&raw, &summary, &[1]), Err(UnknownCte { encoding: "x-uuencode".into() }));
        assert_eq!(*decoded_part(&raw, &summary, &[2]).unwrap(), *b"Subject: hi\r\n\r\nhi\r\n");
    }

    #[test]
    fn binary_text_of_a_single_part_message_is_decoded() {
        let raw = crlf("Subject: b\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29ybGQ=\n");
        let summary = summarize(&raw);
        let text = binary_section(&raw, &summary, &section(&[], Some(SectionText::Text))).unwrap();
        assert_eq!(*text, *b"hello world");
        assert_eq!(*binary_section(&raw, &summary, &section(&[1], None)).unwrap(), *b"hello world");
    }

    #[test]
    fn junk_renders_without_panicking() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: [&[u8]; 8] = [
            b"Content-Type: multipart/mixed; boundary=x\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"--x\r\n",
            b"--x--\r\n",
            b"\r\n",
            b"From: a@b, g: c@d;\r\n",
            b"\xff\x00\"(",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
        ];
        for _ in 0..500 {
            let mut raw = Vec::new();
            for _ in 0..(next() % 20) {
                let choice = next();
                if choice % 4 == 0 {
                    raw.extend((0..choice % 30).map(|_| next() as u8));
                } else {
                    raw.extend_from_slice(pieces[(choice % pieces.len() as u64) as usize]);
                }
            }
            let summary = summarize(&raw);
            let mut out = Vec::new();
            write_envelope(&mut out, &summary.envelope, false);
            write_body_structure(&mut out, &summary.root, true, false);
            let texts = [None, Some(SectionText::Header), Some(SectionText::Text), Some(SectionText::Mime)];
            for part in [&[][..], &[1], &[1, 1], &[2, 1, 1]] {
                for text in &texts {
                    let _ = section_bytes(&raw, &summary, &section(part, text.clone()));
                }
                for text in &texts {
                    let _ = binary_section(&raw, &summary, &section(part, text.clone()));
                }
            }
        }
    }
}
