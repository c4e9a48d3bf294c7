//! The IMAP command parser (RFC 9051 §9 ABNF, the RFC 3501 forms, and the extensions wmail
//! announces). It turns the [`Segment`]s of one command into a [`Tagged`] command or a
//! [`ParseError`] the session answers with `tag BAD text`; it never panics on client input.
//!
//! A [`Cursor`] walks the segments: the text of each line up to its literal announcement,
//! then the literal, then the next line. Tokens are read by small methods on the cursor and
//! each command family has one function below.

use super::command::{
    AppendMessage, Command, FetchItem, ListOptions, MessageRef, QresyncParams, SearchKey, SearchReturn, Section,
    SectionText, SeqBound, SequenceSet, SortCriterion, SortKey, StatusItem, StoreAction, Tagged, ThreadAlgorithm,
};
use super::{LiteralAnnouncement, Segment};
use base64::Engine as _;
use chrono::{FixedOffset, NaiveDate};

/// How deeply search keys may nest (parentheses, NOT, OR) before the command is refused.
const MAX_SEARCH_DEPTH: usize = 50;

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];

/// A command the parser refused: the session answers `tag BAD text` (or untagged `BAD`
/// when the tag itself could not be read), RFC 9051 §7.1.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The command's tag, when it could be read.
    pub tag: Option<String>,
    /// What is wrong, in plain words.
    pub text: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ParseError {}

/// Errors inside the parser are plain text; the tag is added by [`parse_command`].
type R<T> = Result<T, String>;

fn fail<T>(text: impl Into<String>) -> R<T> {
    Err(text.into())
}

/// The literal announcement `{N}`, `{N+}` (RFC 7888), `~{N}` or `~{N+}` (RFC 3516) at the
/// end of `line` (one line without CRLF), RFC 9051 §4.3. N has at most 20 digits and must
/// fit in a u64.
pub fn literal_announcement(line: &[u8]) -> Option<LiteralAnnouncement> {
    split_announcement(line).map(|(_, announcement)| announcement)
}

/// The announcement and where it starts in `line`.
fn split_announcement(line: &[u8]) -> Option<(usize, LiteralAnnouncement)> {
    let body = line.strip_suffix(b"}")?;
    let (body, non_synchronizing) = match body.strip_suffix(b"+") {
        Some(body) => (body, true),
        None => (body, false),
    };
    let digits_start = body.iter().rposition(|byte| !byte.is_ascii_digit()).map_or(0, |i| i + 1);
    let open = digits_start.checked_sub(1)?;
    let digits = body.get(digits_start..)?;
    if body.get(open) != Some(&b'{') || digits.len() > 20 {
        return None;
    }
    let length = parse_digits(digits)?;
    let binary = open > 0 && body.get(open - 1) == Some(&b'~');
    let start = if binary { open - 1 } else { open };
    Some((start, LiteralAnnouncement { length, non_synchronizing, binary }))
}

/// True when the literal announced at the end of `segments` (the command so far) is an
/// APPEND message body (RFC 9051 §6.3.12, RFC 3502 MULTIAPPEND): the command is
/// `tag APPEND mailbox`, and the literal stands where a message belongs, after the mailbox
/// and any flags and date. The session streams such a literal to the blob store.
pub fn is_message_literal(segments: &[Segment]) -> bool {
    if check_framing(segments, true).is_err() {
        return false;
    }
    let mut c = Cursor::new(segments);
    let is_append = c.tag().is_ok() && c.eat(b' ') && c.try_keyword("APPEND");
    // The parse stops at the missing literal; `pending_message` says it was a message.
    is_append && append(&mut c).is_err() && c.pending_message
}

/// Parses one complete command (RFC 9051 §9 `command`). A text segment ending in a
/// literal announcement is followed by the literal's segment; `Segment::Message` becomes
/// the [`MessageRef`] of an APPEND message.
pub fn parse_command(segments: &[Segment]) -> Result<Tagged, ParseError> {
    let mut c = Cursor::new(segments);
    let tag = c.tag().map_err(|text| ParseError { tag: None, text })?;
    match check_framing(segments, false).and_then(|()| command(&mut c)) {
        Ok(command) => Ok(Tagged { tag, command }),
        Err(text) => Err(ParseError { tag: Some(tag), text }),
    }
}

/// Checks that the segments follow the framing contract of [`Segment`]: text first, each
/// announcement followed by a literal of the announced length, each literal by text.
/// `pending` means the last text's literal has not arrived yet.
fn check_framing(segments: &[Segment], pending: bool) -> R<()> {
    let mut announced: Option<LiteralAnnouncement> = None;
    for (i, segment) in segments.iter().enumerate() {
        match (segment, announced.take()) {
            (Segment::Text(line), None) => {
                announced = literal_announcement(line);
                if announced.is_none() && i + 1 < segments.len() {
                    return fail("command continues after the end of its line");
                }
            }
            (Segment::Literal(bytes), Some(announcement)) => {
                if u64::try_from(bytes.len()).ok() != Some(announcement.length) {
                    return fail("the literal's length differs from its announcement");
                }
            }
            (Segment::Message, Some(_)) => {}
            _ => return fail("a literal is not where one was announced"),
        }
    }
    if announced.is_some() != pending {
        return fail("the literal's data is missing");
    }
    Ok(())
}

/// What a literal turned out to hold.
enum LiteralValue<'a> {
    /// Its octets.
    Bytes(&'a [u8]),
    /// An APPEND message in the blob store: the command's n-th.
    Message(usize),
    /// Not received (yet).
    Missing,
}

/// A position in a command: the current line's text (without its announcement) and an
/// offset into it.
struct Cursor<'a> {
    segments: &'a [Segment],
    index: usize,
    text: &'a [u8],
    announcement: Option<LiteralAnnouncement>,
    pos: usize,
    /// Set when a message literal was wanted but has not arrived.
    pending_message: bool,
}

impl<'a> Cursor<'a> {
    fn new(segments: &'a [Segment]) -> Self {
        let mut cursor = Cursor { segments, index: 0, text: &[], announcement: None, pos: 0, pending_message: false };
        cursor.load(0);
        cursor
    }

    /// Moves to the start of segment `index` (empty text when it is not a text segment).
    fn load(&mut self, index: usize) {
        self.index = index;
        self.pos = 0;
        let (text, announcement): (&'a [u8], _) = match self.segments.get(index) {
            Some(Segment::Text(line)) => match split_announcement(line) {
                Some((start, announcement)) => (line.get(..start).unwrap_or_default(), Some(announcement)),
                None => (line, None),
            },
            _ => (&[], None),
        };
        (self.text, self.announcement) = (text, announcement);
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8, what: &str) -> R<()> {
        if self.eat(byte) { Ok(()) } else { fail(format!("expected {what}")) }
    }

    /// At the end of the line with a literal next.
    fn at_literal(&self) -> bool {
        self.pos >= self.text.len() && self.announcement.is_some()
    }

    /// At the end of the command.
    fn at_end(&self) -> bool {
        self.pos >= self.text.len() && self.announcement.is_none()
    }

    fn take_while(&mut self, accept: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while let Some(byte) = self.peek()
            && accept(byte)
        {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }

    /// A single space before `what`.
    fn sp(&mut self, what: &str) -> R<()> {
        if self.eat(b' ') {
            Ok(())
        } else if self.at_end() {
            fail(format!("expected {what}"))
        } else {
            fail(format!("expected a space before {what}"))
        }
    }

    fn end(&self, command: &str) -> R<()> {
        if self.at_end() { Ok(()) } else { fail(format!("unexpected data after the {command} command")) }
    }

    /// RFC 9051 `tag`: astring characters except `+`.
    fn tag(&mut self) -> R<String> {
        let tag = self.take_while(|byte| is_astring_char(byte) && byte != b'+');
        if tag.is_empty() {
            return fail("expected a tag at the start of the command");
        }
        if !self.at_end() && self.peek() != Some(b' ') {
            return fail("invalid character in the tag");
        }
        Ok(ascii(tag))
    }

    fn atom(&mut self, what: &str) -> R<&'a [u8]> {
        let atom = self.take_while(is_atom_char);
        if atom.is_empty() { fail(format!("expected {what}")) } else { Ok(atom) }
    }

    /// An atom in upper case, for case-insensitive keywords.
    fn keyword(&mut self, what: &str) -> R<String> {
        Ok(ascii(self.atom(what)?).to_ascii_uppercase())
    }

    /// Consumes the atom `keyword` (any case) if it is next.
    fn try_keyword(&mut self, keyword: &str) -> bool {
        let start = self.pos;
        let found = self.take_while(is_atom_char).eq_ignore_ascii_case(keyword.as_bytes());
        if !found {
            self.pos = start;
        }
        found
    }

    /// RFC 9051 `quoted`, at its opening quote.
    fn quoted(&mut self) -> R<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let mut value = Vec::new();
        loop {
            match self.peek() {
                None => return fail("unterminated quoted string"),
                Some(b'"') => break,
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(byte @ (b'\\' | b'"')) => value.push(byte),
                        _ => return fail("a backslash in a quoted string may only escape \\ or \""),
                    }
                }
                Some(b'\r' | b'\n' | 0) => return fail("quoted strings cannot contain CR, LF or NUL"),
                Some(byte) => value.push(byte),
            }
            self.pos += 1;
        }
        self.pos += 1;
        Ok(value)
    }

    /// Consumes the literal announced at the end of the current line.
    fn literal(&mut self) -> (bool, LiteralValue<'a>) {
        let binary = self.announcement.is_some_and(|announcement| announcement.binary);
        let value = match self.segments.get(self.index + 1) {
            Some(Segment::Literal(bytes)) => LiteralValue::Bytes(bytes),
            Some(Segment::Message) => LiteralValue::Message(
                self.segments.iter().take(self.index + 1).filter(|s| matches!(s, Segment::Message)).count(),
            ),
            Some(Segment::Text(_)) | None => LiteralValue::Missing,
        };
        self.load(self.index + 2);
        (binary, value)
    }

    /// RFC 9051 `string`: quoted or literal.
    fn string(&mut self, what: &str) -> R<Vec<u8>> {
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        if !self.at_literal() {
            return fail(format!("expected {what}"));
        }
        match self.literal() {
            (true, _) => fail("literal8 (~{N}) is only allowed for APPEND message data"),
            (false, LiteralValue::Bytes(bytes)) if bytes.contains(&0) => fail("literals cannot contain NUL"),
            (false, LiteralValue::Bytes(bytes)) => Ok(bytes.to_vec()),
            (false, LiteralValue::Message(_)) => fail(format!("expected {what}, not message data")),
            (false, LiteralValue::Missing) => fail("the literal's data is missing"),
        }
    }

    /// RFC 9051 `astring`: atom (with `]`) or string.
    fn astring(&mut self, what: &str) -> R<Vec<u8>> {
        if self.peek() == Some(b'"') || self.at_literal() {
            return self.string(what);
        }
        let atom = self.take_while(is_astring_char);
        if atom.is_empty() { fail(format!("expected {what}")) } else { Ok(atom.to_vec()) }
    }

    /// An astring that must be UTF-8.
    fn text(&mut self, what: &str) -> R<String> {
        utf8(self.astring(what)?, what)
    }

    /// RFC 9051 `mailbox`: an astring, with INBOX in any case spelled `INBOX`.
    fn mailbox(&mut self, what: &str) -> R<String> {
        let name = self.text(what)?;
        Ok(if name.eq_ignore_ascii_case("INBOX") { "INBOX".to_owned() } else { name })
    }

    fn number64(&mut self, what: &str) -> R<u64> {
        let digits = self.take_while(|byte| byte.is_ascii_digit());
        if digits.is_empty() {
            return fail(format!("expected {what}"));
        }
        parse_digits(digits).ok_or_else(|| format!("{what} is too large"))
    }

    fn number(&mut self, what: &str) -> R<u32> {
        u32::try_from(self.number64(what)?).map_err(|_| format!("{what} is too large"))
    }

    fn nz_number(&mut self, what: &str) -> R<u32> {
        match self.number(what)? {
            0 => fail(format!("{what} must not be 0")),
            n => Ok(n),
        }
    }

    /// RFC 7162 `mod-sequence-value` (`allow_zero`: `mod-sequence-valzer`), at most 2^63-1.
    fn modseq(&mut self, what: &str, allow_zero: bool) -> R<u64> {
        match self.number64(what)? {
            0 if !allow_zero => fail(format!("{what} must not be 0")),
            n if i64::try_from(n).is_err() => fail(format!("{what} is too large")),
            n => Ok(n),
        }
    }

    /// RFC 9051 `sequence-set`, or `$` (RFC 5182).
    fn sequence_set(&mut self, what: &str) -> R<SequenceSet> {
        let token = self.take_while(|byte| byte.is_ascii_digit() || b":,*$".contains(&byte));
        if token.is_empty() {
            return fail(format!("expected {what}"));
        }
        parse_sequence_set(token).ok_or_else(|| format!("invalid sequence set (numbers start at 1): {}", ascii(token)))
    }

    /// RFC 9051 `flag`: `\Name` or a keyword, as spelled; `\*` is refused.
    fn flag(&mut self) -> R<String> {
        if !self.eat(b'\\') {
            return Ok(ascii(self.atom("a flag")?));
        }
        if self.peek() == Some(b'*') {
            return fail("\\* is not a flag (it only appears in PERMANENTFLAGS)");
        }
        Ok(format!("\\{}", ascii(self.atom("a flag name after \\")?)))
    }

    /// `"(" [item *(SP item)] ")"`; `allow_empty` permits `()`.
    fn list<T>(&mut self, what: &str, allow_empty: bool, mut item: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        self.expect(b'(', what)?;
        let mut items = Vec::new();
        if self.eat(b')') {
            return if allow_empty { Ok(items) } else { fail(format!("{what} must not be empty")) };
        }
        loop {
            items.push(item(self)?);
            if self.eat(b')') {
                return Ok(items);
            }
            if !self.eat(b' ') {
                return fail(format!("expected a space or ) in {what}"));
            }
        }
    }

    /// An APPEND message literal (stored by the session as a `Segment::Message`).
    fn message(&mut self) -> R<MessageRef> {
        if !self.at_literal() {
            return fail("expected a message literal");
        }
        match self.literal().1 {
            LiteralValue::Message(index) => Ok(MessageRef { index }),
            LiteralValue::Missing => {
                self.pending_message = true;
                fail("the message data is missing")
            }
            LiteralValue::Bytes(_) => fail("the message literal was not stored as a message"),
        }
    }
}

/// RFC 9051 `ATOM-CHAR`: CHAR except `( ) { SP CTL % * " \ ]`.
fn is_atom_char(byte: u8) -> bool {
    (0x21..0x7f).contains(&byte) && !b"(){%*\"\\]".contains(&byte)
}

/// RFC 9051 `ASTRING-CHAR`.
fn is_astring_char(byte: u8) -> bool {
    is_atom_char(byte) || byte == b']'
}

/// RFC 9051 `list-char`.
fn is_list_char(byte: u8) -> bool {
    is_astring_char(byte) || byte == b'%' || byte == b'*'
}

/// Decimal digits (at least one, only digits) as a u64.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn parse_small(digits: &[u8]) -> Option<u32> {
    parse_digits(digits).and_then(|n| u32::try_from(n).ok())
}

/// ASCII bytes (as checked by the caller's character class) as a String.
fn ascii(bytes: &[u8]) -> String {
    bytes.iter().map(|&byte| char::from(byte)).collect()
}

fn utf8(bytes: Vec<u8>, what: &str) -> R<String> {
    String::from_utf8(bytes).map_err(|_| format!("{what} must be valid UTF-8"))
}

fn unknown(kind: &str, name: &str) -> String {
    if name.len() <= 32 { format!("unknown {kind} {name}") } else { format!("unknown {kind}") }
}

fn parse_sequence_set(token: &[u8]) -> Option<SequenceSet> {
    if token == b"$" {
        return Some(SequenceSet::Saved);
    }
    let bound = |text: &[u8]| match text {
        b"*" => Some(SeqBound::Largest),
        _ => parse_small(text).filter(|&n| n > 0).map(SeqBound::Number),
    };
    let ranges = token.split(|&byte| byte == b',').map(|range| {
        let mut ends = range.splitn(2, |&byte| byte == b':');
        let first = bound(ends.next()?)?;
        let last = match ends.next() {
            Some(text) => bound(text)?,
            None => first,
        };
        Some((first, last))
    });
    ranges.collect::<Option<Vec<_>>>().map(SequenceSet::Ranges)
}

fn month(name: &[u8]) -> Option<u32> {
    let index = MONTHS.iter().position(|month| month.as_bytes().eq_ignore_ascii_case(name))?;
    u32::try_from(index + 1).ok()
}

/// RFC 9051 `date-text`: `d-Mon-yyyy` or `dd-Mon-yyyy`.
fn parse_date(text: &[u8]) -> Option<NaiveDate> {
    let mut parts = text.split(|&byte| byte == b'-');
    let (day, month_name, year) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !(1..=2).contains(&day.len()) || year.len() != 4 {
        return None;
    }
    let year = i32::try_from(parse_digits(year)?).ok()?;
    NaiveDate::from_ymd_opt(year, month(month_name)?, parse_small(day)?)
}

/// RFC 9051 `date-time` without its quotes: `dd-Mon-yyyy hh:mm:ss +zzzz` (the day may be
/// space-padded), as milliseconds since the epoch.
fn parse_date_time(text: &[u8]) -> Option<i64> {
    let field = |from: usize, to: usize| text.get(from..to);
    let separators = [(2, b'-'), (6, b'-'), (11, b' '), (14, b':'), (17, b':'), (20, b' ')];
    if text.len() != 26 || separators.iter().any(|&(at, byte)| text.get(at) != Some(&byte)) {
        return None;
    }
    let day = if text.first() == Some(&b' ') { field(1, 2)? } else { field(0, 2)? };
    let year = i32::try_from(parse_digits(field(7, 11)?)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, month(field(3, 6)?)?, parse_small(day)?)?;
    let time =
        date.and_hms_opt(parse_small(field(12, 14)?)?, parse_small(field(15, 17)?)?, parse_small(field(18, 20)?)?)?;
    let (zone_hours, zone_minutes) = (parse_small(field(22, 24)?)?, parse_small(field(24, 26)?)?);
    if zone_minutes >= 60 {
        return None;
    }
    let seconds = i32::try_from(zone_hours * 3600 + zone_minutes * 60).ok()?;
    let offset = match text.get(21) {
        Some(b'+') => FixedOffset::east_opt(seconds)?,
        Some(b'-') => FixedOffset::west_opt(seconds)?,
        _ => return None,
    };
    Some(time.and_local_timezone(offset).single()?.timestamp_millis())
}

/// RFC 9051 §9 `command` after the tag.
fn command(c: &mut Cursor<'_>) -> R<Command> {
    c.sp("a command name after the tag")?;
    let name = c.keyword("a command name after the tag")?;
    let command = match name.as_str() {
        "CAPABILITY" => Command::Capability,
        "NOOP" => Command::Noop,
        "LOGOUT" => Command::Logout,
        "STARTTLS" => Command::StartTls,
        "NAMESPACE" => Command::Namespace,
        "IDLE" => Command::Idle,
        "CHECK" => Command::Check,
        "CLOSE" => Command::Close,
        "UNSELECT" => Command::Unselect,
        "EXPUNGE" => Command::Expunge { uids: None },
        "AUTHENTICATE" => authenticate(c)?,
        "LOGIN" => {
            c.sp("a user name after LOGIN")?;
            let user = c.text("a user name after LOGIN")?;
            c.sp("a password after the user name")?;
            Command::Login { user, password: c.text("a password after the user name")? }
        }
        "ENABLE" => {
            let mut capabilities = Vec::new();
            while capabilities.is_empty() || !c.at_end() {
                c.sp("a capability name after ENABLE")?;
                capabilities.push(c.keyword("a capability name after ENABLE")?);
            }
            Command::Enable { capabilities }
        }
        "ID" => id(c)?,
        "SELECT" => select(c, false)?,
        "EXAMINE" => select(c, true)?,
        "CREATE" => create(c)?,
        "DELETE" => Command::Delete { mailbox: sp_mailbox(c, "DELETE")? },
        "RENAME" => {
            let from = sp_mailbox(c, "RENAME")?;
            c.sp("a new mailbox name after RENAME")?;
            Command::Rename { from, to: c.mailbox("a new mailbox name after RENAME")? }
        }
        "SUBSCRIBE" => Command::Subscribe { mailbox: sp_mailbox(c, "SUBSCRIBE")? },
        "UNSUBSCRIBE" => Command::Unsubscribe { mailbox: sp_mailbox(c, "UNSUBSCRIBE")? },
        "LIST" => list(c)?,
        "LSUB" => {
            let reference = sp_mailbox(c, "LSUB")?;
            c.sp("a mailbox pattern after the reference name")?;
            let patterns = vec![list_mailbox(c)?];
            Command::List { reference, patterns, options: ListOptions::default(), lsub: true }
        }
        "STATUS" => {
            let mailbox = sp_mailbox(c, "STATUS")?;
            c.sp("a list of status items after the mailbox name")?;
            Command::Status { mailbox, items: c.list("a list of status items", false, status_item)? }
        }
        "APPEND" => append(c)?,
        "UID" => {
            c.sp("a command after UID")?;
            let name = c.keyword("a command after UID")?;
            message_command(c, &name, true)?
        }
        "SEARCH" | "SORT" | "THREAD" | "FETCH" | "STORE" | "COPY" | "MOVE" => message_command(c, &name, false)?,
        "GETQUOTA" => {
            c.sp("a quota root after GETQUOTA")?;
            Command::GetQuota { root: c.text("a quota root after GETQUOTA")? }
        }
        "GETQUOTAROOT" => Command::GetQuotaRoot { mailbox: sp_mailbox(c, "GETQUOTAROOT")? },
        "SETQUOTA" => {
            c.sp("a quota root after SETQUOTA")?;
            let root = c.text("a quota root after SETQUOTA")?;
            c.sp("a list of resource limits")?;
            c.list("a list of resource limits", true, |c| {
                c.atom("a resource name")?;
                c.sp("a resource limit")?;
                c.number64("a resource limit")
            })?;
            Command::SetQuota { root }
        }
        _ => return fail(unknown("command", &name)),
    };
    c.end(&name)?;
    Ok(command)
}

/// A space and a mailbox name, the argument of `command`.
fn sp_mailbox(c: &mut Cursor<'_>, command: &str) -> R<String> {
    let what = format!("a mailbox name after {command}");
    c.sp(&what)?;
    c.mailbox(&what)
}

/// The commands on message numbers or, after `UID`, on UIDs.
fn message_command(c: &mut Cursor<'_>, name: &str, uid: bool) -> R<Command> {
    match name {
        "SEARCH" => search(c, uid),
        "SORT" => sort(c, uid),
        "THREAD" => thread(c, uid),
        "FETCH" => fetch(c, uid),
        "STORE" => store(c, uid),
        "COPY" | "MOVE" => {
            let what = format!("a sequence set after {name}");
            c.sp(&what)?;
            let set = c.sequence_set(&what)?;
            c.sp("a mailbox name after the sequence set")?;
            let mailbox = c.mailbox("a mailbox name after the sequence set")?;
            Ok(if name == "COPY" { Command::Copy { uid, set, mailbox } } else { Command::Move { uid, set, mailbox } })
        }
        "EXPUNGE" if uid => {
            c.sp("a UID set after UID EXPUNGE")?;
            Ok(Command::Expunge { uids: Some(c.sequence_set("a UID set after UID EXPUNGE")?) })
        }
        _ if uid => fail("UID must be followed by FETCH, STORE, COPY, MOVE, SEARCH, SORT, THREAD or EXPUNGE"),
        _ => fail(unknown("command", name)),
    }
}

/// `AUTHENTICATE mechanism [initial-response]` (RFC 9051 §6.2.2, RFC 4959); the mechanism
/// is upper-cased, the initial response kept as sent.
fn authenticate(c: &mut Cursor<'_>) -> R<Command> {
    c.sp("a SASL mechanism after AUTHENTICATE")?;
    let mechanism = c.keyword("a SASL mechanism after AUTHENTICATE")?;
    let mut initial = None;
    if c.eat(b' ') {
        let response = c.take_while(|byte| byte.is_ascii_alphanumeric() || b"+/=".contains(&byte));
        let valid = response == b"="
            || (!response.is_empty() && base64::engine::general_purpose::STANDARD.decode(response).is_ok());
        if !valid {
            return fail("the initial response must be base64 or =");
        }
        initial = Some(ascii(response));
    }
    Ok(Command::Authenticate { mechanism, initial })
}

/// `ID (field value ...)` or `ID NIL` (RFC 2971 §3.1).
fn id(c: &mut Cursor<'_>) -> R<Command> {
    c.sp("a parameter list or NIL after ID")?;
    if c.try_keyword("NIL") {
        return Ok(Command::Id { params: None });
    }
    let params = c.list("a list of ID parameters", true, |c| {
        let field = utf8(c.string("an ID field name")?, "an ID field name")?;
        c.sp("a value after the ID field name")?;
        let value = if c.try_keyword("NIL") {
            None
        } else {
            Some(utf8(c.string("a value after the ID field name")?, "an ID value")?)
        };
        Ok((field, value))
    })?;
    Ok(Command::Id { params: Some(params) })
}

/// `SELECT`/`EXAMINE mailbox [(CONDSTORE | QRESYNC (...))]` (RFC 9051 §6.3.2, RFC 7162
/// §3.1.8 and §3.2.5).
fn select(c: &mut Cursor<'_>, read_only: bool) -> R<Command> {
    let name = if read_only { "EXAMINE" } else { "SELECT" };
    let mailbox = sp_mailbox(c, name)?;
    let (mut condstore, mut qresync) = (false, None);
    if c.eat(b' ') {
        c.list(&format!("a list of {name} parameters"), false, |c| {
            match c.keyword(&format!("a {name} parameter"))?.as_str() {
                "CONDSTORE" => condstore = true,
                "QRESYNC" => {
                    c.sp("QRESYNC parameters")?;
                    qresync = Some(qresync_params(c)?);
                }
                other => return fail(unknown(&format!("{name} parameter"), other)),
            }
            Ok(())
        })?;
    }
    Ok(Command::Select { mailbox, read_only, condstore, qresync })
}

/// `(uidvalidity modseq [known-uids] [(seq-match-seqs seq-match-uids)])` (RFC 7162 §3.2.5).
fn qresync_params(c: &mut Cursor<'_>) -> R<QresyncParams> {
    c.expect(b'(', "QRESYNC parameters in parentheses")?;
    let uid_validity = c.nz_number("a UIDVALIDITY in QRESYNC")?;
    c.sp("a mod-sequence in QRESYNC")?;
    let modseq = c.modseq("a mod-sequence in QRESYNC", false)?;
    let seq_match_data = |c: &mut Cursor<'_>| {
        c.expect(b'(', "sequence match data in parentheses")?;
        let sequences = known_set(c, "the known message numbers in QRESYNC")?;
        c.sp("the UIDs of the known message numbers")?;
        let uids = known_set(c, "the UIDs of the known message numbers")?;
        c.expect(b')', ") after the QRESYNC sequence match data")?;
        Ok::<_, String>((sequences, uids))
    };
    let (mut known_uids, mut seq_match) = (None, None);
    if c.eat(b' ') {
        if c.peek() == Some(b'(') {
            seq_match = Some(seq_match_data(c)?);
        } else {
            known_uids = Some(known_set(c, "the known UIDs in QRESYNC")?);
            if c.eat(b' ') {
                seq_match = Some(seq_match_data(c)?);
            }
        }
    }
    c.expect(b')', ") after the QRESYNC parameters")?;
    Ok(QresyncParams { uid_validity, modseq, known_uids, seq_match })
}

/// A sequence set of known numbers: no `*`, no `$`.
fn known_set(c: &mut Cursor<'_>, what: &str) -> R<SequenceSet> {
    let set = c.sequence_set(what)?;
    match &set {
        SequenceSet::Ranges(ranges)
            if ranges.iter().all(|range| matches!(range, (SeqBound::Number(_), SeqBound::Number(_)))) =>
        {
            Ok(set)
        }
        _ => fail(format!("{what} cannot contain * or $")),
    }
}

/// `CREATE mailbox [(USE (\attr ...))]` (RFC 9051 §6.3.4, RFC 6154 §5.2).
fn create(c: &mut Cursor<'_>) -> R<Command> {
    let mailbox = sp_mailbox(c, "CREATE")?;
    let mut special_use = Vec::new();
    if c.eat(b' ') {
        c.list("a list of CREATE parameters", false, |c| {
            if !c.try_keyword("USE") {
                return fail("the only CREATE parameter is USE");
            }
            c.sp("a list of special-use attributes after USE")?;
            special_use.extend(c.list("a list of special-use attributes after USE", true, |c| {
                c.expect(b'\\', "a special-use attribute such as \\Sent")?;
                Ok(format!("\\{}", ascii(c.atom("a special-use attribute such as \\Sent")?)))
            })?);
            Ok(())
        })?;
    }
    Ok(Command::Create { mailbox, special_use })
}

/// `LIST [(selection)] reference patterns [RETURN (options)]` (RFC 9051 §6.3.9, RFC 5258,
/// RFC 5819, RFC 6154).
fn list(c: &mut Cursor<'_>) -> R<Command> {
    let mut options = ListOptions::default();
    c.sp("a reference name after LIST")?;
    if c.peek() == Some(b'(') {
        c.list("a list of LIST selection options", true, |c| {
            match c.keyword("a LIST selection option")?.as_str() {
                "SUBSCRIBED" => options.select_subscribed = true,
                "RECURSIVEMATCH" => options.recursive_match = true,
                "SPECIAL-USE" => options.select_special_use = true,
                "REMOTE" => {}
                other => return fail(unknown("LIST selection option", other)),
            }
            Ok(())
        })?;
        if options.recursive_match && !options.select_subscribed && !options.select_special_use {
            return fail("RECURSIVEMATCH needs another selection option");
        }
        c.sp("a reference name after the selection options")?;
    }
    let reference = c.mailbox("a reference name after LIST")?;
    c.sp("a mailbox pattern after the reference name")?;
    let patterns = if c.peek() == Some(b'(') {
        c.list("a list of mailbox patterns", false, list_mailbox)?
    } else {
        vec![list_mailbox(c)?]
    };
    if c.eat(b' ') {
        if !c.try_keyword("RETURN") {
            return fail("expected RETURN after the mailbox patterns");
        }
        c.sp("a list of LIST return options")?;
        c.list("a list of LIST return options", true, |c| {
            match c.keyword("a LIST return option")?.as_str() {
                "SUBSCRIBED" => options.return_subscribed = true,
                "CHILDREN" => options.return_children = true,
                "SPECIAL-USE" => options.return_special_use = true,
                "STATUS" => {
                    c.sp("a list of status items after STATUS")?;
                    options.return_status = Some(c.list("a list of status items", false, status_item)?);
                }
                other => return fail(unknown("LIST return option", other)),
            }
            Ok(())
        })?;
    }
    Ok(Command::List { reference, patterns, options, lsub: false })
}

/// RFC 9051 `list-mailbox`: list characters (with `%` and `*`) or a string; kept as given.
fn list_mailbox(c: &mut Cursor<'_>) -> R<String> {
    const WHAT: &str = "a mailbox pattern";
    if c.peek() == Some(b'"') || c.at_literal() {
        return utf8(c.string(WHAT)?, WHAT);
    }
    let pattern = c.take_while(is_list_char);
    if pattern.is_empty() { fail(format!("expected {WHAT}")) } else { Ok(ascii(pattern)) }
}

/// RFC 9051 `status-att` with RFC 7162, RFC 8438 and RFC 8474 items.
fn status_item(c: &mut Cursor<'_>) -> R<StatusItem> {
    Ok(match c.keyword("a status item")?.as_str() {
        "MESSAGES" => StatusItem::Messages,
        "UIDNEXT" => StatusItem::UidNext,
        "UIDVALIDITY" => StatusItem::UidValidity,
        "UNSEEN" => StatusItem::Unseen,
        "DELETED" => StatusItem::Deleted,
        "SIZE" => StatusItem::Size,
        "RECENT" => StatusItem::Recent,
        "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
        "MAILBOXID" => StatusItem::MailboxId,
        other => return fail(unknown("status item", other)),
    })
}

/// `APPEND mailbox 1*([flags] [date-time] literal)` (RFC 9051 §6.3.12, RFC 3502).
fn append(c: &mut Cursor<'_>) -> R<Command> {
    let mailbox = sp_mailbox(c, "APPEND")?;
    let mut messages = Vec::new();
    while messages.is_empty() || !c.at_end() {
        c.sp("a message after the APPEND mailbox name")?;
        let mut flags = Vec::new();
        if c.peek() == Some(b'(') {
            flags = c.list("a flag list", true, Cursor::flag)?;
            c.sp("a message after the flag list")?;
        }
        let mut internal_date_ms = None;
        if c.peek() == Some(b'"') {
            let date =
                parse_date_time(&c.quoted()?).ok_or("invalid date-time, expected \"dd-Mon-yyyy hh:mm:ss +zzzz\"")?;
            internal_date_ms = Some(date);
            c.sp("a message after the date-time")?;
        }
        let body = c.message()?;
        messages.push(AppendMessage { flags, internal_date_ms, body });
    }
    Ok(Command::Append { mailbox, messages })
}

/// `RETURN (options) ` of SEARCH and SORT (RFC 4731 §3, RFC 5182, RFC 5267), if present;
/// `RETURN ()` means `ALL`.
fn search_returns(c: &mut Cursor<'_>, next: &str) -> R<Option<Vec<SearchReturn>>> {
    if !c.try_keyword("RETURN") {
        return Ok(None);
    }
    c.sp("a list of RETURN options")?;
    let mut returns = c.list("a list of RETURN options", true, |c| {
        Ok(match c.keyword("a RETURN option")?.as_str() {
            "MIN" => SearchReturn::Min,
            "MAX" => SearchReturn::Max,
            "ALL" => SearchReturn::All,
            "COUNT" => SearchReturn::Count,
            "SAVE" => SearchReturn::Save,
            other => return fail(unknown("RETURN option", other)),
        })
    })?;
    if returns.is_empty() {
        returns.push(SearchReturn::All);
    }
    c.sp(next)?;
    Ok(Some(returns))
}

/// `[UID] SEARCH [RETURN (...)] [CHARSET charset] keys` (RFC 9051 §6.4.4).
fn search(c: &mut Cursor<'_>, uid: bool) -> R<Command> {
    c.sp("search criteria after SEARCH")?;
    let returns = search_returns(c, "search criteria after the RETURN options")?;
    let mut charset = None;
    if c.try_keyword("CHARSET") {
        c.sp("a charset after CHARSET")?;
        charset = Some(c.text("a charset after CHARSET")?);
        c.sp("search criteria after the charset")?;
    }
    Ok(Command::Search { uid, returns, charset, key: search_keys(c)? })
}

/// `[UID] SORT [RETURN (...)] (criteria) charset keys` (RFC 5256 §3, RFC 5267).
fn sort(c: &mut Cursor<'_>, uid: bool) -> R<Command> {
    c.sp("sort criteria after SORT")?;
    let returns = search_returns(c, "sort criteria after the RETURN options")?;
    let criteria = c.list("sort criteria in parentheses", false, |c| {
        let reverse = c.try_keyword("REVERSE");
        if reverse {
            c.sp("a sort key after REVERSE")?;
        }
        let key = match c.keyword("a sort key")?.as_str() {
            "ARRIVAL" => SortKey::Arrival,
            "CC" => SortKey::Cc,
            "DATE" => SortKey::Date,
            "FROM" => SortKey::From,
            "SIZE" => SortKey::Size,
            "SUBJECT" => SortKey::Subject,
            "TO" => SortKey::To,
            "DISPLAYFROM" => SortKey::DisplayFrom,
            "DISPLAYTO" => SortKey::DisplayTo,
            other => return fail(unknown("sort key", other)),
        };
        Ok(SortCriterion { reverse, key })
    })?;
    c.sp("a charset after the sort criteria")?;
    let charset = c.text("a charset after the sort criteria")?;
    c.sp("search criteria after the charset")?;
    Ok(Command::Sort { uid, returns, criteria, charset, key: search_keys(c)? })
}

/// `[UID] THREAD algorithm charset keys` (RFC 5256 §3).
fn thread(c: &mut Cursor<'_>, uid: bool) -> R<Command> {
    c.sp("a threading algorithm after THREAD")?;
    let algorithm = match c.keyword("a threading algorithm after THREAD")?.as_str() {
        "REFERENCES" => ThreadAlgorithm::References,
        "ORDEREDSUBJECT" => ThreadAlgorithm::OrderedSubject,
        other => return fail(unknown("threading algorithm", other)),
    };
    c.sp("a charset after the threading algorithm")?;
    let charset = c.text("a charset after the threading algorithm")?;
    c.sp("search criteria after the charset")?;
    Ok(Command::Thread { uid, algorithm, charset, key: search_keys(c)? })
}

/// Search keys up to the end of the command: one key bare, several as `And`.
fn search_keys(c: &mut Cursor<'_>) -> R<SearchKey> {
    let mut keys = vec![search_key(c, 0)?];
    while c.eat(b' ') {
        keys.push(search_key(c, 0)?);
    }
    if keys.len() == 1
        && let Some(key) = keys.pop()
    {
        return Ok(key);
    }
    Ok(SearchKey::And(keys))
}

/// RFC 9051 `search-key` with RFC 7162 MODSEQ, RFC 5032 OLDER/YOUNGER and RFC 8474
/// EMAILID/THREADID; `depth` counts the enclosing parentheses, NOTs and ORs.
fn search_key(c: &mut Cursor<'_>, depth: usize) -> R<SearchKey> {
    if depth > MAX_SEARCH_DEPTH {
        return fail("search criteria are nested too deeply");
    }
    match c.peek() {
        Some(b'(') => return Ok(SearchKey::And(c.list("a list of search keys", false, |c| search_key(c, depth + 1))?)),
        Some(b'0'..=b'9' | b'*' | b'$') => return Ok(SearchKey::Sequence(c.sequence_set("a sequence set")?)),
        _ => {}
    }
    let name = c.keyword("a search key")?;
    let what = format!("an argument after {name}");
    let arg = |c: &mut Cursor<'_>| c.sp(&what).and_then(|()| c.text(&what));
    let key = match name.as_str() {
        "ALL" => SearchKey::All,
        "ANSWERED" => SearchKey::Answered,
        "DELETED" => SearchKey::Deleted,
        "DRAFT" => SearchKey::Draft,
        "FLAGGED" => SearchKey::Flagged,
        "NEW" => SearchKey::New,
        "OLD" => SearchKey::Old,
        "RECENT" => SearchKey::Recent,
        "SEEN" => SearchKey::Seen,
        "UNANSWERED" => SearchKey::Unanswered,
        "UNDELETED" => SearchKey::Undeleted,
        "UNDRAFT" => SearchKey::Undraft,
        "UNFLAGGED" => SearchKey::Unflagged,
        "UNSEEN" => SearchKey::Unseen,
        "BCC" => SearchKey::Bcc(arg(c)?),
        "BODY" => SearchKey::Body(arg(c)?),
        "CC" => SearchKey::Cc(arg(c)?),
        "FROM" => SearchKey::From(arg(c)?),
        "SUBJECT" => SearchKey::Subject(arg(c)?),
        "TEXT" => SearchKey::Text(arg(c)?),
        "TO" => SearchKey::To(arg(c)?),
        "HEADER" => {
            let field = arg(c)?;
            SearchKey::Header(field, arg(c)?)
        }
        "KEYWORD" | "UNKEYWORD" => {
            c.sp(&what)?;
            let keyword = ascii(c.atom("a keyword")?);
            if name == "KEYWORD" { SearchKey::Keyword(keyword) } else { SearchKey::Unkeyword(keyword) }
        }
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
            c.sp(&what)?;
            let date = if c.peek() == Some(b'"') { c.quoted()? } else { c.take_while(is_atom_char).to_vec() };
            let date = parse_date(&date).ok_or_else(|| format!("expected a date like 1-Feb-2024 after {name}"))?;
            match name.as_str() {
                "BEFORE" => SearchKey::Before(date),
                "ON" => SearchKey::On(date),
                "SINCE" => SearchKey::Since(date),
                "SENTBEFORE" => SearchKey::SentBefore(date),
                "SENTON" => SearchKey::SentOn(date),
                _ => SearchKey::SentSince(date),
            }
        }
        "LARGER" | "SMALLER" => {
            c.sp(&what)?;
            let size = c.number64(&format!("a size after {name}"))?;
            if name == "LARGER" { SearchKey::Larger(size) } else { SearchKey::Smaller(size) }
        }
        "OLDER" | "YOUNGER" => {
            c.sp(&what)?;
            let seconds = c.nz_number(&format!("a number of seconds after {name}"))?;
            if name == "OLDER" { SearchKey::Older(seconds) } else { SearchKey::Younger(seconds) }
        }
        "UID" => {
            c.sp("a UID set after UID")?;
            SearchKey::Uid(c.sequence_set("a UID set after UID")?)
        }
        "NOT" => {
            c.sp("a search key after NOT")?;
            SearchKey::Not(Box::new(search_key(c, depth + 1)?))
        }
        "OR" => {
            c.sp("two search keys after OR")?;
            let first = search_key(c, depth + 1)?;
            c.sp("a second search key after OR")?;
            SearchKey::Or(Box::new(first), Box::new(search_key(c, depth + 1)?))
        }
        "MODSEQ" => {
            c.sp(&what)?;
            if c.peek() == Some(b'"') {
                let entry = c.quoted()?;
                if entry.len() <= 7 || !entry.get(..7).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"/flags/")) {
                    return fail("a MODSEQ entry name must be \"/flags/<flag>\"");
                }
                c.sp("an entry type after the MODSEQ entry name")?;
                if !["ALL", "PRIV", "SHARED"].contains(&c.keyword("an entry type (all, priv or shared)")?.as_str()) {
                    return fail("the MODSEQ entry type must be all, priv or shared");
                }
                c.sp("a mod-sequence after the MODSEQ entry type")?;
            }
            SearchKey::ModSeq(c.modseq("a mod-sequence after MODSEQ", true)?)
        }
        "EMAILID" | "THREADID" => {
            c.sp(&what)?;
            let id = c.take_while(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
            if id.is_empty() || id.len() > 255 {
                return fail(format!("expected an object id after {name}"));
            }
            if name == "EMAILID" { SearchKey::EmailId(ascii(id)) } else { SearchKey::ThreadId(ascii(id)) }
        }
        _ => return fail(unknown("search key", &name)),
    };
    Ok(key)
}

/// `[UID] FETCH set (items | macro) [(CHANGEDSINCE n [VANISHED])]` (RFC 9051 §6.4.5,
/// RFC 7162 §3.1.4 and §3.2.6).
fn fetch(c: &mut Cursor<'_>, uid: bool) -> R<Command> {
    c.sp("a sequence set after FETCH")?;
    let set = c.sequence_set("a sequence set after FETCH")?;
    c.sp("fetch items after the sequence set")?;
    use FetchItem::{Body, Envelope, Flags, InternalDate, Rfc822Size};
    let items = if c.peek() == Some(b'(') {
        c.list("a list of fetch items", false, fetch_item)?
    } else if c.try_keyword("FAST") {
        vec![Flags, InternalDate, Rfc822Size]
    } else if c.try_keyword("ALL") {
        vec![Flags, InternalDate, Rfc822Size, Envelope]
    } else if c.try_keyword("FULL") {
        vec![Flags, InternalDate, Rfc822Size, Envelope, Body]
    } else {
        vec![fetch_item(c)?]
    };
    let (mut changed_since, mut vanished) = (None, false);
    if c.eat(b' ') {
        c.list("a list of FETCH modifiers", false, |c| {
            match c.keyword("a FETCH modifier")?.as_str() {
                "CHANGEDSINCE" => {
                    c.sp("a mod-sequence after CHANGEDSINCE")?;
                    changed_since = Some(c.modseq("a mod-sequence after CHANGEDSINCE", false)?);
                }
                "VANISHED" => vanished = true,
                other => return fail(unknown("FETCH modifier", other)),
            }
            Ok(())
        })?;
    }
    if vanished && (!uid || changed_since.is_none()) {
        return fail("VANISHED is only allowed in UID FETCH together with CHANGEDSINCE");
    }
    Ok(Command::Fetch { uid, set, items, changed_since, vanished })
}

/// RFC 9051 `fetch-att` with RFC 3516, RFC 7162 and RFC 8474 items.
fn fetch_item(c: &mut Cursor<'_>) -> R<FetchItem> {
    let name = ascii(c.take_while(|byte| byte.is_ascii_alphanumeric() || byte == b'.')).to_ascii_uppercase();
    Ok(match name.as_str() {
        "UID" => FetchItem::Uid,
        "FLAGS" => FetchItem::Flags,
        "INTERNALDATE" => FetchItem::InternalDate,
        "RFC822" => FetchItem::Rfc822,
        "RFC822.SIZE" => FetchItem::Rfc822Size,
        "RFC822.HEADER" => FetchItem::Rfc822Header,
        "RFC822.TEXT" => FetchItem::Rfc822Text,
        "ENVELOPE" => FetchItem::Envelope,
        "BODYSTRUCTURE" => FetchItem::BodyStructure,
        "MODSEQ" => FetchItem::ModSeq,
        "EMAILID" => FetchItem::EmailId,
        "THREADID" => FetchItem::ThreadId,
        "BODY" if c.peek() != Some(b'[') => FetchItem::Body,
        "BODY" | "BODY.PEEK" => {
            let section = section(c)?;
            FetchItem::BodySection { peek: name == "BODY.PEEK", section, partial: partial(c)? }
        }
        "BINARY" | "BINARY.PEEK" => {
            let section = section(c)?;
            FetchItem::Binary { peek: name == "BINARY.PEEK", section, partial: partial(c)? }
        }
        "BINARY.SIZE" => FetchItem::BinarySize { section: section(c)? },
        "" => return fail("expected a fetch item"),
        other => return fail(unknown("fetch item", other)),
    })
}

/// RFC 9051 `section`: `[` [part numbers] [HEADER | HEADER.FIELDS[.NOT] (names) | TEXT |
/// MIME] `]`.
fn section(c: &mut Cursor<'_>) -> R<Section> {
    c.expect(b'[', "a section in brackets")?;
    let spec = c.take_while(|byte| byte.is_ascii_alphanumeric() || byte == b'.');
    let components: Vec<&[u8]> = if spec.is_empty() { Vec::new() } else { spec.split(|&b| b == b'.').collect() };
    if components.iter().any(|component| component.is_empty()) {
        return fail("invalid section: empty part between dots");
    }
    let parts = components.iter().take_while(|component| component.iter().all(u8::is_ascii_digit)).count();
    let part = components[..parts]
        .iter()
        .map(|number| parse_small(number).filter(|&n| n > 0))
        .collect::<Option<Vec<u32>>>()
        .ok_or("invalid section: part numbers start at 1")?;
    let text = ascii(&components[parts..].join(&b'.')).to_ascii_uppercase();
    let header_names = |c: &mut Cursor<'_>| {
        c.sp("a list of header field names")?;
        c.list("a list of header field names", false, |c| c.text("a header field name"))
    };
    let text = match text.as_str() {
        "" => None,
        "HEADER" => Some(SectionText::Header),
        "HEADER.FIELDS" => Some(SectionText::HeaderFields(header_names(c)?)),
        "HEADER.FIELDS.NOT" => Some(SectionText::HeaderFieldsNot(header_names(c)?)),
        "TEXT" => Some(SectionText::Text),
        "MIME" if !part.is_empty() => Some(SectionText::Mime),
        "MIME" => return fail("MIME is only allowed after a part number"),
        other => return fail(unknown("section", other)),
    };
    c.expect(b']', "] after the section")?;
    Ok(Section { part, text })
}

/// RFC 9051 `partial`: `<offset.length>`, if present. `<offset>` alone (to the end) is
/// accepted too, as Dovecot does (imaptest sends it).
fn partial(c: &mut Cursor<'_>) -> R<Option<(u32, u32)>> {
    if !c.eat(b'<') {
        return Ok(None);
    }
    let offset = c.number("a partial offset")?;
    if c.eat(b'>') {
        return Ok(Some((offset, u32::MAX)));
    }
    c.expect(b'.', "a dot between the partial offset and length")?;
    let length = c.nz_number("a partial length")?;
    c.expect(b'>', "> after the partial length")?;
    Ok(Some((offset, length)))
}

/// `[UID] STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] flags` (RFC 9051 §6.4.6,
/// RFC 7162 §3.1.3).
fn store(c: &mut Cursor<'_>, uid: bool) -> R<Command> {
    c.sp("a sequence set after STORE")?;
    let set = c.sequence_set("a sequence set after STORE")?;
    c.sp("FLAGS, +FLAGS or -FLAGS after the sequence set")?;
    let mut unchanged_since = None;
    if c.peek() == Some(b'(') {
        c.list("a list of STORE modifiers", false, |c| {
            if !c.try_keyword("UNCHANGEDSINCE") {
                return fail("the only STORE modifier is UNCHANGEDSINCE");
            }
            c.sp("a mod-sequence after UNCHANGEDSINCE")?;
            unchanged_since = Some(c.modseq("a mod-sequence after UNCHANGEDSINCE", true)?);
            Ok(())
        })?;
        c.sp("FLAGS, +FLAGS or -FLAGS after the STORE modifiers")?;
    }
    let name = ascii(c.take_while(|byte| byte.is_ascii_alphanumeric() || b"+-.".contains(&byte))).to_ascii_uppercase();
    let (action, rest) = match name.as_bytes().first() {
        Some(b'+') => (StoreAction::Add, name.get(1..)),
        Some(b'-') => (StoreAction::Remove, name.get(1..)),
        _ => (StoreAction::Replace, Some(name.as_str())),
    };
    let silent = match rest {
        Some("FLAGS") => false,
        Some("FLAGS.SILENT") => true,
        _ => return fail("expected FLAGS, +FLAGS or -FLAGS (optionally .SILENT)"),
    };
    c.sp("flags")?;
    let flags = if c.peek() == Some(b'(') {
        c.list("a flag list", true, Cursor::flag)?
    } else {
        let mut flags = vec![c.flag()?];
        while c.eat(b' ') {
            flags.push(c.flag()?);
        }
        flags
    };
    Ok(Command::Store { uid, set, action, silent, flags, unchanged_since })
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
