//! The verdict on a message (which checks ran, their results and scores, the action), the
//! headers it adds, and the node's verdict log that the admin API queries.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::ProtectionConfig;

/// A refusal: the SMTP reply a check leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// `550`/`554` (permanent) or `451` (temporary).
    pub code: u16,
    /// The enhanced status code (RFC 3463), such as `5.7.1`.
    pub status: String,
    /// What the client is told.
    pub text: String,
}

impl Refusal {
    /// A permanent refusal (`550`).
    pub fn permanent(status: &str, text: impl Into<String>) -> Self {
        Self { code: 550, status: status.to_owned(), text: text.into() }
    }

    /// A temporary refusal (`451`): the sender retries later.
    pub fn temporary(status: &str, text: impl Into<String>) -> Self {
        Self { code: 451, status: status.to_owned(), text: text.into() }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The check (`SPF`, `DKIM`, `DMARC`, `DNSBL zone`, a rule's name, ...).
    pub name: String,
    /// What it found.
    pub result: String,
    /// What it added to the score.
    pub score: f32,
}

/// What becomes of a message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Delivered to the inbox.
    #[default]
    Deliver,
    /// Delivered to the inbox, marked as spam.
    Tag,
    /// Filed in the recipient's Junk mailbox (marked as spam).
    Junk {
        /// Why.
        reason: String,
    },
    /// Held in the recipients' quarantine (released, dropped or purged later).
    Quarantine {
        /// Why.
        reason: String,
    },
    /// Refused at the end of the data.
    Refuse(Refusal),
}

impl Action {
    /// A short name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Deliver => "deliver",
            Action::Tag => "tag",
            Action::Junk { .. } => "junk",
            Action::Quarantine { .. } => "quarantine",
            Action::Refuse(refusal) if refusal.code < 500 => "tempfail",
            Action::Refuse(_) => "reject",
        }
    }
}

/// The verdict on one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Every check that ran, in order.
    pub checks: Vec<Check>,
    /// The sum of their scores.
    pub score: f32,
    /// What becomes of the message.
    pub action: Action,
    /// The `Authentication-Results` header field (CRLF included).
    #[serde(skip)]
    pub authentication_results: String,
    /// A refusal decided by a check (a virus, a DMARC reject, a blocked attachment).
    #[serde(skip)]
    refusal: Option<Refusal>,
    /// Filing as junk asked for by a check (DMARC quarantine).
    #[serde(skip)]
    junk: Option<String>,
    /// Quarantine asked for by a check (a virus, when so configured).
    #[serde(skip)]
    quarantine: Option<String>,
    /// The message to store instead of the one received (infected attachments stripped).
    #[serde(skip)]
    pub replacement: Option<Vec<u8>>,
}

impl Verdict {
    /// A copy without the replacement message (for the log).
    pub fn clone_without_message(&self) -> Verdict {
        Verdict {
            checks: self.checks.clone(),
            score: self.score,
            action: self.action.clone(),
            authentication_results: String::new(),
            refusal: None,
            junk: None,
            quarantine: None,
            replacement: None,
        }
    }

    /// Records a check.
    pub fn add(&mut self, name: impl Into<String>, result: impl Into<String>, score: f32) {
        self.score += score;
        self.checks.push(Check { name: name.into(), result: result.into(), score });
    }

    /// A check refuses the message (the first refusal, or a permanent one over a
    /// temporary one, wins).
    pub fn refuse(&mut self, refusal: Refusal) {
        match &self.refusal {
            Some(existing) if existing.code >= 500 || refusal.code < 500 => {}
            _ => self.refusal = Some(refusal),
        }
    }

    /// A check asks for the message to be held in quarantine.
    pub fn hold(&mut self, reason: &str) {
        self.quarantine.get_or_insert_with(|| reason.to_owned());
    }

    /// A check asks for the message to be filed as junk.
    pub fn file_as_junk(&mut self, reason: &str) {
        self.junk.get_or_insert_with(|| reason.to_owned());
    }

    /// Whether the message counts as spam (tagged, junk).
    pub fn is_spam(&self) -> bool {
        matches!(self.action, Action::Tag | Action::Junk { .. } | Action::Quarantine { .. })
    }

    /// Turns the checks into the action, by the thresholds of `config`. Mail from a
    /// sender every recipient allows skips the score thresholds (not refusals or holds
    /// that checks asked for).
    pub(crate) fn decide(&mut self, config: &ProtectionConfig, allowed_sender: bool) {
        let score = if allowed_sender { f32::MIN } else { self.score };
        self.action = if let Some(refusal) = self.refusal.clone() {
            Action::Refuse(refusal)
        } else if let Some(reason) = self.quarantine.clone() {
            Action::Quarantine { reason }
        } else if score >= config.reject_score {
            Action::Refuse(Refusal::permanent(
                "5.7.1",
                format!("message refused as spam (score {score:.1}, the limit is {:.1})", config.reject_score),
            ))
        } else if score >= config.quarantine_score {
            Action::Quarantine { reason: format!("spam score {score:.1}") }
        } else if let Some(reason) = self.junk.clone() {
            Action::Junk { reason }
        } else if score >= config.junk_score {
            Action::Junk { reason: format!("spam score {score:.1}") }
        } else if score >= config.spam_score {
            Action::Tag
        } else {
            Action::Deliver
        };
    }

    /// `X-Spam-*` header fields (SpamAssassin's names, which clients and Sieve scripts know).
    fn spam_headers(&self, config: &ProtectionConfig) -> String {
        let tests: Vec<&str> = self.checks.iter().filter(|check| check.score != 0.0).map(|c| c.name.as_str()).collect();
        let spam = if self.is_spam() { "Yes" } else { "No" };
        let mut headers = format!(
            "X-Spam-Status: {spam}, score={:.1} required={:.1} tests={}\r\nX-Spam-Score: {:.1}\r\n",
            self.score,
            config.spam_score,
            if tests.is_empty() { "none".to_owned() } else { sanitize(&tests.join(",")) },
            self.score
        );
        if self.is_spam() {
            headers.push_str("X-Spam-Flag: YES\r\n");
        }
        if let Some(check) = self.checks.iter().find(|check| check.name == "CLAMD_STRIPPED") {
            headers.push_str(&format!("X-Virus-Scanned: clamd (removed: {})\r\n", sanitize(&check.result)));
        } else if let Some(check) = self.checks.iter().find(|check| check.name == "CLAMD") {
            headers.push_str(&format!("X-Virus-Scanned: clamd ({})\r\n", sanitize(&check.result)));
        }
        headers
    }
}

/// Keeps header values on one line and within printable ASCII.
fn sanitize(value: &str) -> String {
    value.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' }).take(900).collect()
}

/// The header section's end (the offset of the body), or the message length.
fn header_end(message: &[u8]) -> usize {
    let mut line_start = 0;
    while line_start < message.len() {
        let line_end =
            message[line_start..].iter().position(|&b| b == b'\n').map_or(message.len(), |p| line_start + p + 1);
        let line = &message[line_start..line_end];
        if line == b"\r\n" || line == b"\n" {
            return line_start;
        }
        line_start = line_end;
    }
    message.len()
}

/// The header fields of a header section: (start, end) of each field, folding included.
fn fields(header: &[u8]) -> Vec<(usize, usize)> {
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < header.len() {
        let end = header[start..].iter().position(|&b| b == b'\n').map_or(header.len(), |p| start + p + 1);
        if matches!(header[start], b' ' | b'\t')
            && let Some(last) = fields.last_mut()
        {
            last.1 = end; // a continuation line (RFC 5322 §2.2.3)
        } else {
            fields.push((start, end));
        }
        start = end;
    }
    fields
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2), leading CFWS
/// (comments included) skipped.
fn authserv_id(value: &str) -> &str {
    let mut rest = value.trim_start();
    while let Some(comment) = rest.strip_prefix('(') {
        let mut depth = 1;
        let mut end = comment.len();
        let mut escaped = false;
        for (index, c) in comment.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = index + 1;
                break;
            }
        }
        rest = comment[end.min(comment.len())..].trim_start();
    }
    rest.split([';', ' ', '\t', '\r', '\n', '(']).next().unwrap_or("").trim_matches('"')
}

/// The stored form of a message: the verdict's headers first, `Authentication-Results`
/// fields that claim this server's authserv-id removed (RFC 8601 §5: a receiver must not
/// trust or pass on results it did not produce under its own name), and spam's subject
/// prefixed.
pub(crate) fn rewrite(config: &ProtectionConfig, verdict: &Verdict, message: &[u8]) -> Vec<u8> {
    let message = verdict.replacement.as_deref().unwrap_or(message);
    let mut out = Vec::with_capacity(message.len() + 1024);
    out.extend_from_slice(verdict.authentication_results.as_bytes());
    out.extend_from_slice(verdict.spam_headers(config).as_bytes());
    let end = header_end(message);
    let header = &message[..end];
    let ours = config.hostname.to_ascii_lowercase();
    let mut prefixed = false;
    for (start, field_end) in fields(header) {
        let field = &header[start..field_end];
        let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
        let name = String::from_utf8_lossy(&field[..colon]).trim().to_ascii_lowercase();
        if name == "authentication-results" {
            let value = String::from_utf8_lossy(&field[colon + 1..]).to_ascii_lowercase();
            if authserv_id(&value) == ours {
                continue;
            }
        }
        // Only this server's verdict headers are trusted: a sender's own are dropped.
        if name.starts_with("x-spam-") || name == "x-virus-scanned" {
            continue;
        }
        if name == "subject" && verdict.is_spam() && !config.subject_prefix.is_empty() && !prefixed {
            prefixed = true;
            let value = &field[colon + 1..];
            let already = String::from_utf8_lossy(value).trim_start().starts_with(&config.subject_prefix);
            out.extend_from_slice(&field[..colon + 1]);
            if !already {
                out.push(b' ');
                out.extend_from_slice(config.subject_prefix.as_bytes());
            }
            out.extend_from_slice(value);
            continue;
        }
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&message[end..]);
    out
}

/// One line of the verdict log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// When (ms since the epoch).
    pub time_ms: u64,
    /// The SMTP session and message (`session.n`), as in the `Received` header.
    pub queue_id: String,
    /// The client's address.
    pub client: String,
    /// Its HELO name.
    pub helo: String,
    /// The reverse path.
    pub mail_from: String,
    /// The recipients.
    pub recipients: Vec<String>,
    /// The `Message-ID` (without angle brackets), when there was one.
    pub message_id: Option<String>,
    /// The `From:` address.
    pub from: Option<String>,
    /// The subject (truncated).
    pub subject: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
}

/// What to look for in the verdict log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerdictQuery {
    /// Records of this Message-ID (angle brackets optional).
    pub message_id: Option<String>,
    /// Records whose reverse path or `From:` is this address (case-insensitive).
    pub sender: Option<String>,
    /// Most records returned (newest first); default 100, at most 1,000.
    pub limit: Option<usize>,
}

impl VerdictQuery {
    fn matches(&self, record: &VerdictRecord) -> bool {
        let message_id = self.message_id.as_deref().map(|id| id.trim().trim_start_matches('<').trim_end_matches('>'));
        message_id.is_none_or(|id| record.message_id.as_deref() == Some(id))
            && self.sender.as_deref().is_none_or(|sender| {
                record.mail_from.eq_ignore_ascii_case(sender)
                    || record.from.as_deref().is_some_and(|from| from.eq_ignore_ascii_case(sender))
            })
    }
}

/// The node's verdict log: JSON lines in `<dir>/verdicts.jsonl`, rotated to
/// `verdicts.1.jsonl` past a size, so it holds between one and two rotations' worth.
/// Node-local on purpose: every node logs what it decided (refused spam never reaches the
/// replicated log), and the admin API asks every node.
pub struct VerdictLog {
    dir: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
}

impl std::fmt::Debug for VerdictLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictLog").field("dir", &self.dir).finish()
    }
}

impl VerdictLog {
    /// A log in `dir` (created when needed), rotated past `max_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self { dir: dir.into(), max_bytes, file: Mutex::new(None) }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("verdicts.jsonl")
    }

    fn previous(&self) -> PathBuf {
        self.dir.join("verdicts.1.jsonl")
    }

    /// Appends a record (a small write to the page cache; errors are logged, never fatal:
    /// the log is a diagnostic, not mail).
    pub fn record(&self, record: &VerdictRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else { return };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = self.append(&mut file, &line) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot write the verdict log");
            *file = None;
        }
    }

    fn append(&self, file: &mut Option<(File, u64)>, line: &[u8]) -> std::io::Result<()> {
        if file.as_ref().is_some_and(|(_, size)| *size + line.len() as u64 > self.max_bytes) {
            *file = None;
            std::fs::rename(self.current(), self.previous())?;
        }
        if file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let opened = OpenOptions::new().create(true).append(true).open(self.current())?;
            let size = opened.metadata()?.len();
            *file = Some((opened, size));
        }
        let (handle, size) = file.as_mut().expect("opened above");
        handle.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }

    /// The records matching `query`, newest first (blocking file reads: call it off the
    /// async runtime's worker threads).
    pub fn query(&self, query: &VerdictQuery) -> std::io::Result<Vec<VerdictRecord>> {
        let limit = query.limit.unwrap_or(100).min(1_000);
        let mut found = Vec::new();
        for path in [self.current(), self.previous()] {
            let mut in_file = Vec::new();
            match File::open(&path) {
                Ok(file) => read_matching(&path, BufReader::new(file), query, &mut in_file),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            }
            in_file.reverse();
            found.extend(in_file);
            if found.len() >= limit {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }
}

fn read_matching(path: &Path, reader: impl BufRead, query: &VerdictQuery, found: &mut Vec<VerdictRecord>) {
    for line in reader.lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<VerdictRecord>(&line) {
            Ok(record) if query.matches(&record) => found.push(record),
            Ok(_) => {}
            // A line cut by a crash mid-write: skip it.
            Err(error) => tracing::debug!(path = %path.display(), %error, "skipping an unreadable verdict log line"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProtectionConfig {
        ProtectionConfig::new("mx.local.test")
    }

    #[test]
    fn forged_results_are_dropped_and_spam_subjects_prefixed() {
        let message = b"Authentication-Results: MX.local.test; dkim=pass\r\n (forged)\r\n\
Authentication-Results: (hidden (nested)) mx.local.test; dkim=pass (forged too)\r\nX-Spam-Status: No (forged)\r\n\
Authentication-Results: (x\\)) \"mx.local.test\"; dkim=pass (forged, escaped and quoted)\r\n\
Authentication-Results: other.test; spf=pass\r\nSubject: cheap\r\n pills\r\n\r\nbody\r\n";
        let mut verdict = Verdict::default();
        verdict.add("RULE", "matched", 5.5);
        verdict.decide(&config(), false);
        assert_eq!(verdict.action, Action::Tag);
        verdict.authentication_results = "Authentication-Results: mx.local.test; none\r\n".into();
        let stored = String::from_utf8(rewrite(&config(), &verdict, message)).unwrap();
        assert!(stored.starts_with("Authentication-Results: mx.local.test; none\r\nX-Spam-Status: Yes, score=5.5"));
        assert!(!stored.contains("forged"), "{stored}");
        assert!(stored.contains("Authentication-Results: other.test; spf=pass\r\n"));
        assert!(stored.contains("Subject: [SPAM] cheap\r\n pills\r\n\r\nbody\r\n"), "{stored}");
        assert!(stored.contains("X-Spam-Flag: YES\r\n"));
    }

    #[test]
    fn thresholds_and_refusals_decide_the_action() {
        let mut verdict = Verdict::default();
        verdict.add("A", "x", 7.0);
        verdict.decide(&config(), false);
        assert!(matches!(verdict.action, Action::Junk { .. }));
        verdict.add("B", "x", 4.0);
        verdict.decide(&config(), false);
        assert!(matches!(verdict.action, Action::Quarantine { .. }));
        verdict.decide(&config(), true);
        assert_eq!(verdict.action, Action::Deliver, "an allowed sender skips the thresholds");
        verdict.add("C", "x", 4.0);
        verdict.decide(&config(), false);
        assert!(matches!(&verdict.action, Action::Refuse(r) if r.code == 550));
        let mut tempfail = Verdict::default();
        tempfail.refuse(Refusal::temporary("4.3.0", "scanner down"));
        tempfail.refuse(Refusal::permanent("5.7.1", "virus"));
        tempfail.refuse(Refusal::temporary("4.3.0", "later"));
        tempfail.decide(&config(), true);
        assert!(matches!(&tempfail.action, Action::Refuse(r) if r.text == "virus"));
    }

    #[test]
    fn the_log_rotates_and_answers_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = VerdictLog::new(dir.path(), 600);
        for n in 0..10 {
            log.record(&VerdictRecord {
                time_ms: n,
                queue_id: format!("q.{n}"),
                client: "192.0.2.1".into(),
                helo: "h".into(),
                mail_from: if n % 2 == 0 { "a@x.test".into() } else { "b@x.test".into() },
                recipients: vec!["r@local.test".into()],
                message_id: Some(format!("m{n}@x.test")),
                from: None,
                subject: None,
                verdict: Verdict::default(),
            });
        }
        let by_sender = log.query(&VerdictQuery { sender: Some("A@x.test".into()), ..Default::default() }).unwrap();
        assert!(by_sender.len() >= 2 && by_sender.iter().all(|r| r.mail_from == "a@x.test"));
        assert!(by_sender.windows(2).all(|w| w[0].time_ms > w[1].time_ms), "newest first");
        let by_id = log.query(&VerdictQuery { message_id: Some("<m9@x.test>".into()), ..Default::default() }).unwrap();
        assert_eq!(by_id.len(), 1);
        assert!(std::fs::metadata(dir.path().join("verdicts.1.jsonl")).is_ok(), "rotated");
    }
}
