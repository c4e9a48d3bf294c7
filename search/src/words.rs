//! Word search for people (the webmail): a tokenizer that stems English words and splits
//! Chinese, Japanese and Korean text (written without spaces) into overlapping character
//! pairs, and the query language `invoice from:alice in:Sent has:attachment after:2026-01-01`.

use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, Stemmer, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the word analyzer is registered under.
pub const WORDS_TOKENIZER: &str = "wmail_words";

/// The analyzer of the word fields: words and CJK pairs, lowercased, English stems.
pub fn word_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(WordTokenizer)
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Chinese, Japanese and Korean characters: indexed as overlapping pairs.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F    // Halfwidth Katakana
        | 0x20000..=0x2FA1F) // CJK Extensions B-F, compatibility supplement
}

/// Splits text into words (runs of letters and digits) and CJK character pairs.
#[derive(Clone, Default)]
pub struct WordTokenizer;

impl Tokenizer for WordTokenizer {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let mut tokens = Vec::new();
        let mut push = |from: usize, to: usize| {
            let position = tokens.len();
            tokens.push(Token {
                offset_from: from,
                offset_to: to,
                position,
                text: text[from..to].to_owned(),
                position_length: 1,
            });
        };
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let end_of = |at: usize| chars.get(at + 1).map_or(text.len(), |(offset, _)| *offset);
        let mut at = 0;
        while at < chars.len() {
            let (start, c) = chars[at];
            if is_cjk(c) {
                let run_end = (at..chars.len()).find(|i| !is_cjk(chars[*i].1)).unwrap_or(chars.len());
                if run_end - at == 1 {
                    push(start, end_of(at));
                }
                for (pair, (offset, _)) in chars.iter().enumerate().take(run_end.saturating_sub(1)).skip(at) {
                    push(*offset, end_of(pair + 1));
                }
                at = run_end;
            } else if c.is_alphanumeric() {
                let run_end = (at..chars.len())
                    .find(|i| !chars[*i].1.is_alphanumeric() || is_cjk(chars[*i].1))
                    .unwrap_or(chars.len());
                push(start, end_of(run_end - 1));
                at = run_end;
            } else {
                at += 1;
            }
        }
        VecTokenStream::new(tokens)
    }
}

/// The tokens of one text, made up front (words are few next to a text's characters).
pub struct VecTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl VecTokenStream {
    pub(crate) fn new(tokens: Vec<Token>) -> Self {
        Self { tokens, next: 0 }
    }
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

/// The analysed terms of `text` (what the index holds for it).
pub fn terms(text: &str) -> Vec<String> {
    let mut analyzer = word_analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// Where a query word is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordScope {
    /// Subject, addresses, body and attachment names.
    Anywhere,
    /// `subject:`.
    Subject,
    /// `from:`.
    From,
    /// `to:` (To, Cc and Bcc).
    To,
    /// `body:`.
    Body,
    /// `filename:`: attachment file names.
    Attachment,
}

/// One part of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// Every word of `text` in `scope` (`-` in front: none of them).
    Words {
        /// Where.
        scope: WordScope,
        /// The words, as typed.
        text: String,
        /// Messages that match are left out.
        negated: bool,
    },
    /// `in:NAME`: one mailbox (the caller resolves the name).
    Mailbox(String),
    /// `has:attachment`.
    HasAttachment,
    /// `before:YYYY-MM-DD`: received before that day (UTC).
    Before(u64),
    /// `after:YYYY-MM-DD`: received on or after that day (UTC).
    After(u64),
}

/// A query that could not be read; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

const OPERATORS: &str = "from:, to:, subject:, body:, filename:, in:, has:attachment, before:, after:";

/// Parses the webmail query language: words (all must match), `"quoted text"` (its words,
/// all required; the word fields keep no positions, so not as a phrase),
/// `operator:value` (see [`OPERATORS`]), and `-` in front of a word or operator to exclude.
pub fn parse_query(query: &str) -> Result<Vec<Clause>, QueryError> {
    let mut clauses = Vec::new();
    for (raw, quoted) in split(query)? {
        let (negated, item) = match raw.strip_prefix('-') {
            Some(rest) if !quoted && !rest.is_empty() => (true, rest.to_owned()),
            _ => (false, raw.clone()),
        };
        let operator = if quoted { None } else { item.split_once(':') };
        let clause = match operator {
            None => Clause::Words { scope: WordScope::Anywhere, text: item, negated },
            Some((name, value)) => {
                let value = value.trim_matches('"').to_owned();
                if value.is_empty() {
                    return Err(QueryError(format!("\"{name}:\" needs a value, as in {name}:something")));
                }
                let words = |scope| Clause::Words { scope, text: value.clone(), negated };
                let clause = match name.to_ascii_lowercase().as_str() {
                    "from" => words(WordScope::From),
                    "to" => words(WordScope::To),
                    "subject" => words(WordScope::Subject),
                    "body" => words(WordScope::Body),
                    "filename" => words(WordScope::Attachment),
                    "in" => Clause::Mailbox(value),
                    "has" if value.eq_ignore_ascii_case("attachment") => Clause::HasAttachment,
                    "has" => return Err(QueryError(format!("has:{value} is unknown; only has:attachment exists"))),
                    "before" => Clause::Before(day_ms(&value, "before")?),
                    "after" => Clause::After(day_ms(&value, "after")?),
                    // A colon after something other than letters (a time such as 10:30) is
                    // text; `http:` and other letter names are unknown operators (quote them).
                    _ if name.is_empty() || name.chars().any(|c| !c.is_ascii_alphabetic()) => {
                        Clause::Words { scope: WordScope::Anywhere, text: item.clone(), negated }
                    }
                    _ => {
                        return Err(QueryError(format!(
                            "unknown operator \"{name}:\"; use one of {OPERATORS}, or quote the text"
                        )));
                    }
                };
                if negated && !matches!(clause, Clause::Words { .. }) {
                    return Err(QueryError(format!(
                        "\"-{name}:\" cannot be negated; only words and from:/to:/subject:/body:/filename: can"
                    )));
                }
                clause
            }
        };
        clauses.push(clause);
    }
    if clauses.is_empty() {
        return Err(QueryError("the query is empty; type some words or an operator such as from:".into()));
    }
    Ok(clauses)
}

/// Splits on whitespace, keeping `"quoted text"` (also after `operator:`) together.
/// Returns each item and whether it was quoted as a whole.
fn split(query: &str) -> Result<Vec<(String, bool)>, QueryError> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut quoted_whole = false;
    for c in query.chars() {
        match c {
            '"' => {
                if !in_quotes && current.is_empty() {
                    quoted_whole = true;
                }
                in_quotes = !in_quotes;
                if !quoted_whole {
                    current.push(c);
                }
            }
            c if c.is_whitespace() && !in_quotes => {
                if !current.is_empty() {
                    items.push((std::mem::take(&mut current), quoted_whole));
                }
                quoted_whole = false;
            }
            c => current.push(c),
        }
    }
    if in_quotes {
        return Err(QueryError("a quote is not closed; add the closing \"".into()));
    }
    if !current.is_empty() {
        items.push((current, quoted_whole));
    }
    Ok(items)
}

/// The start of a day (UTC) in ms since the epoch.
fn day_ms(value: &str, operator: &str) -> Result<u64, QueryError> {
    let wrong = || QueryError(format!("{operator}: needs a date like 2026-11-23, not \"{value}\""));
    let mut parts = value.split('-');
    let (Some(year), Some(month), Some(day), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(wrong());
    };
    let (year, month, day): (i64, u32, u32) =
        (year.parse().map_err(|_| wrong())?, month.parse().map_err(|_| wrong())?, day.parse().map_err(|_| wrong())?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(wrong());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok((days * 86_400_000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_stemmed_and_cjk_text_becomes_pairs() {
        assert_eq!(terms("Meetings REPORTED, invoices!"), ["meet", "report", "invoic"]);
        assert_eq!(terms("请参加项目会议"), ["请参", "参加", "加项", "项目", "目会", "会议"]);
        assert_eq!(terms("Q3 会 budget"), ["q3", "会", "budget"]);
        assert_eq!(terms("東京都のmeeting"), ["東京", "京都", "都の", "meet"]);
    }

    #[test]
    fn queries_parse_with_operators_and_clear_errors() {
        let clauses = parse_query(r#"invoice -draft from:alice subject:"quarterly report" in:Sent has:attachment after:2026-01-02 before:2026-02-01 10:30"#).unwrap();
        assert_eq!(clauses[0], Clause::Words { scope: WordScope::Anywhere, text: "invoice".into(), negated: false });
        assert_eq!(clauses[1], Clause::Words { scope: WordScope::Anywhere, text: "draft".into(), negated: true });
        assert_eq!(clauses[2], Clause::Words { scope: WordScope::From, text: "alice".into(), negated: false });
        assert_eq!(
            clauses[3],
            Clause::Words { scope: WordScope::Subject, text: "quarterly report".into(), negated: false }
        );
        assert_eq!(clauses[4], Clause::Mailbox("Sent".into()));
        assert_eq!(clauses[5], Clause::HasAttachment);
        assert_eq!(clauses[6], Clause::After(1_767_312_000_000));
        assert_eq!(clauses[7], Clause::Before(1_769_904_000_000));
        assert_eq!(clauses[8], Clause::Words { scope: WordScope::Anywhere, text: "10:30".into(), negated: false });
        assert_eq!(parse_query("\"exact words\"").unwrap().len(), 1);
        for (query, wanted) in [
            ("", "empty"),
            ("   ", "empty"),
            ("foo:bar", "unknown operator \"foo:\""),
            ("from:", "needs a value"),
            ("before:yesterday", "a date like"),
            ("after:2026-13-01", "a date like"),
            ("has:pdf", "only has:attachment"),
            ("subject:\"open", "not closed"),
            ("-in:Sent", "cannot be negated"),
        ] {
            let error = parse_query(query).unwrap_err().0;
            assert!(error.contains(wanted), "{query:?}: {error}");
        }
    }
}
