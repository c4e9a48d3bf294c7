//! Content checks: header and body rules (regular expressions with scores), keyword lists,
//! and attachment types refused by extension or by what the bytes are (executables, also
//! inside zip archives), the seeds' "attachment filtering".

use std::io::Read;

use mail_parser::{MessageParser, MimeHeaders};
use regex::Regex;

use crate::verdict::{Refusal, Verdict};
use crate::{ConfigError, ProtectionConfig};

/// Most text of a message the body rules and keywords look at (the start of the text
/// parts; spam puts its payload early).
const MAX_SCANNED_TEXT: usize = 256 * 1024;
/// Most entries of a zip archive listed, the deepest nesting of archives opened, and the
/// most bytes decompressed for one message (zip bombs stop there).
const MAX_ARCHIVE_ENTRIES: usize = 1_000;
const MAX_ARCHIVE_DEPTH: usize = 2;
const MAX_UNZIPPED_BYTES: u64 = 32 * 1024 * 1024;

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleTarget {
    /// The decoded value of every header field with this name (case-insensitive).
    Header(String),
    /// The text of the message (plain parts, and HTML converted to text).
    Body,
}

/// A scoring rule: when `pattern` matches `target`, `score` is added.
#[derive(Debug, Clone)]
pub struct ContentRule {
    /// Shown in `X-Spam-Status` and the verdict log.
    pub name: String,
    /// What is matched.
    pub target: RuleTarget,
    /// A regular expression (Rust `regex` syntax; `(?i)` for case-insensitive).
    pub pattern: String,
    /// Added when it matches (may be negative).
    pub score: f32,
}

struct CompiledRule {
    name: String,
    target: RuleTarget,
    pattern: Regex,
    score: f32,
}

/// The compiled content checks.
pub(crate) struct ContentChecks {
    rules: Vec<CompiledRule>,
    keywords: Vec<String>,
    keyword_score: f32,
    blocked_extensions: Vec<String>,
}

impl ContentChecks {
    pub fn new(config: &ProtectionConfig) -> Result<Self, ConfigError> {
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let pattern = regex::RegexBuilder::new(&rule.pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|error| ConfigError::Rule { rule: rule.name.clone(), error })?;
                Ok(CompiledRule { name: rule.name.clone(), target: rule.target.clone(), pattern, score: rule.score })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            rules,
            keywords: config.keywords.iter().map(|keyword| keyword.to_lowercase()).filter(|k| !k.is_empty()).collect(),
            keyword_score: config.keyword_score,
            blocked_extensions: config
                .blocked_extensions
                .iter()
                .map(|ext| ext.trim_start_matches('.').to_lowercase())
                .collect(),
        })
    }

    /// Scores `raw` and refuses blocked attachments.
    pub fn check(&self, raw: &[u8], verdict: &mut Verdict) {
        let Some(message) = MessageParser::default().parse(raw) else {
            verdict.add("PARSE", "not a MIME message", 1.0);
            return;
        };
        if message.date().is_none() {
            verdict.add("MISSING_DATE", "no Date: header", 1.0);
        }
        if message.message_id().is_none() {
            verdict.add("MISSING_MESSAGE_ID", "no Message-ID: header", 1.0);
        }
        let mut text = String::new();
        for index in 0.. {
            let Some(part) = message.body_text(index) else { break };
            text.push_str(&part);
            text.push('\n');
            if text.len() >= MAX_SCANNED_TEXT {
                text.truncate(text.floor_char_boundary(MAX_SCANNED_TEXT));
                break;
            }
        }
        for rule in &self.rules {
            let matched = match &rule.target {
                RuleTarget::Body => rule.pattern.is_match(&text),
                RuleTarget::Header(name) => message.headers().iter().any(|header| {
                    header.name().eq_ignore_ascii_case(name)
                        && header_text(&header.value).is_some_and(|value| rule.pattern.is_match(&value))
                }),
            };
            if matched {
                verdict.add(rule.name.clone(), "matched", rule.score);
            }
        }
        if !self.keywords.is_empty() {
            let haystack = format!("{}\n{}", message.subject().unwrap_or(""), text).to_lowercase();
            for keyword in &self.keywords {
                if haystack.contains(keyword.as_str()) {
                    verdict.add("KEYWORD", keyword.clone(), self.keyword_score);
                }
            }
        }
        let mut budget = MAX_UNZIPPED_BYTES;
        for attachment in message.attachments() {
            let name = attachment.attachment_name().unwrap_or("").to_owned();
            if let Some(reason) = self.blocked(&name, attachment.contents(), 0, &mut budget) {
                verdict.add("ATTACHMENT", reason.clone(), 0.0);
                verdict.refuse(Refusal::permanent("5.7.1", format!("attachment refused: {reason}")));
                return;
            }
        }
    }

    /// Why an attachment (or an entry of an archive) is refused, if it is.
    fn blocked(&self, name: &str, contents: &[u8], depth: usize, budget: &mut u64) -> Option<String> {
        let lower = name.to_lowercase();
        if let Some((_, extension)) = lower.rsplit_once('.')
            && self.blocked_extensions.iter().any(|blocked| blocked == extension)
        {
            return Some(format!("{name:?} has a blocked file type (.{extension})"));
        }
        if !self.blocked_extensions.is_empty() {
            // What the bytes are, whatever the name says: Windows PE ("MZ") and ELF.
            if contents.starts_with(b"MZ") || contents.starts_with(b"\x7fELF") {
                return Some(format!("{name:?} is an executable program"));
            }
        }
        if contents.starts_with(b"PK\x03\x04") && depth < MAX_ARCHIVE_DEPTH {
            return self.blocked_in_zip(name, contents, depth + 1, budget);
        }
        None
    }

    fn blocked_in_zip(&self, name: &str, contents: &[u8], depth: usize, budget: &mut u64) -> Option<String> {
        let Ok(mut archive) = zip::ZipArchive::new(std::io::Cursor::new(contents)) else { return None };
        for index in 0..archive.len().min(MAX_ARCHIVE_ENTRIES) {
            let Ok(mut entry) = archive.by_index(index) else { continue };
            let entry_name = entry.name().to_owned();
            // Names are always checked; contents only within what is left of the
            // message's decompression budget: the first bytes to recognise a program, a
            // nested archive whole (its declared size is the sender's word, not trusted).
            let nested = entry_name.to_lowercase().ends_with(".zip");
            let limit = if nested { (*budget).min(16 * 1024 * 1024) } else { 4.min(*budget) };
            let mut head = Vec::new();
            let _ = (&mut entry).take(limit).read_to_end(&mut head);
            *budget = budget.saturating_sub(head.len() as u64);
            if let Some(reason) = self.blocked(&entry_name, &head, depth, budget) {
                return Some(format!("{reason} inside {name:?}"));
            }
        }
        None
    }
}

/// The text of a header value, when it is text (or addresses).
fn header_text(value: &mail_parser::HeaderValue<'_>) -> Option<String> {
    use mail_parser::HeaderValue;
    match value {
        HeaderValue::Text(text) => Some(text.to_string()),
        HeaderValue::TextList(list) => Some(list.join(", ")),
        HeaderValue::Address(address) => Some(
            address
                .iter()
                .map(|addr| match (&addr.name, &addr.address) {
                    (Some(name), Some(address)) => format!("{name} <{address}>"),
                    (None, Some(address)) => address.to_string(),
                    (Some(name), None) => name.to_string(),
                    (None, None) => String::new(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        HeaderValue::ContentType(content_type) => {
            Some(format!("{}/{}", content_type.ctype(), content_type.subtype().unwrap_or("")))
        }
        HeaderValue::DateTime(date) => Some(date.to_rfc822()),
        HeaderValue::Received(_) | HeaderValue::Empty => None,
    }
}
