//! Character n-grams for exact substring search.
//!
//! IMAP SEARCH matches a case-insensitive substring (RFC 9051 §6.4.4), which a word index
//! cannot answer: `SUBJECT "voic"` must find "Invoice". So the IMAP fields are indexed as
//! every window of three characters of the lowercased text, plus every pair of adjacent
//! non-ASCII characters (Chinese, Japanese and Korean words are often two characters). A
//! message whose lowercased text contains the lowercased needle holds every window of the
//! needle, so the conjunction of the needle's windows finds a superset of the matches; the
//! caller verifies each candidate against the text.

use std::collections::HashSet;

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// The name the n-gram tokenizer is registered under.
pub const GRAMS_TOKENIZER: &str = "wmail_grams";

/// The n-grams of `text` (lowercased here), each once.
pub fn text_grams(text: &str) -> HashSet<String> {
    let lower: Vec<char> = text.to_lowercase().chars().collect();
    let mut grams = HashSet::new();
    for (at, window) in lower.windows(2).enumerate() {
        if !window[0].is_ascii() && !window[1].is_ascii() {
            grams.insert(window.iter().collect());
        }
        if let Some(third) = lower.get(at + 2) {
            grams.insert([window[0], window[1], *third].iter().collect());
        }
    }
    grams
}

/// The n-grams every text containing `needle` (case-insensitively) holds, or `None` when
/// the needle is too short for the index to narrow anything down (then every message is a
/// candidate).
pub fn needle_grams(needle: &str) -> Option<Vec<String>> {
    let lower: Vec<char> = needle.to_lowercase().chars().collect();
    let grams: Vec<String> = match lower.len() {
        0 | 1 => return None,
        2 if lower.iter().all(|c| !c.is_ascii()) => vec![lower.iter().collect()],
        2 => return None,
        _ => {
            let mut seen = HashSet::new();
            lower.windows(3).map(|w| w.iter().collect::<String>()).filter(|gram| seen.insert(gram.clone())).collect()
        }
    };
    Some(grams)
}

/// The tantivy tokenizer that emits [`text_grams`].
#[derive(Clone, Default)]
pub struct GramTokenizer;

/// The tokens of one text.
pub struct GramStream {
    tokens: Vec<Token>,
    next: usize,
}

impl Tokenizer for GramTokenizer {
    type TokenStream<'a> = GramStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> GramStream {
        let tokens = text_grams(text)
            .into_iter()
            .enumerate()
            .map(|(position, text)| Token { offset_from: 0, offset_to: 0, position, text, position_length: 1 })
            .collect();
        GramStream { tokens, next: 0 }
    }
}

impl TokenStream for GramStream {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_needle_s_grams_are_in_every_text_containing_it() {
        let text = "Re: Invoice 2026 — 关于下周的会议安排, ΣΊΣΥΦΟΣ";
        let grams = text_grams(text);
        for needle in ["voic", "INVOICE 20", "会议", "下周的会", "e: i", "σίσυ"] {
            let wanted = needle_grams(needle).unwrap();
            assert!(wanted.iter().all(|gram| grams.contains(gram)), "{needle}");
        }
        assert_eq!(needle_grams("ab"), None, "two ASCII characters are too short");
        assert_eq!(needle_grams("é"), None);
        assert_eq!(needle_grams("会议"), Some(vec!["会议".to_owned()]));
        assert!(!needle_grams("xyz").unwrap().iter().all(|gram| grams.contains(gram)));
    }
}
