//! Character n-grams for exact substring search.
//!
//! IMAP SEARCH matches a case-insensitive substring (RFC 9051 §6.4.4), which a word index
//! cannot answer: `SUBJECT "voic"` must find "Invoice". So the IMAP fields are indexed as
//! every window of three characters of the lowercased text at its character position, plus
//! every pair of adjacent non-ASCII characters (Chinese, Japanese and Korean words are often
//! two characters). A needle of three or more characters is then a phrase of windows that
//! cover it at their offsets, which matches exactly where the lowercased text contains the
//! lowercased needle; a two-character CJK needle is one pair. Shorter needles are not
//! answered by the index.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// The name the n-gram tokenizer is registered under.
pub const GRAMS_TOKENIZER: &str = "wmail_grams";

/// Every n-gram of `text` (lowercased here) with its character position, in order: the
/// plain statement of what [`GramStream`] emits, which the tests hold it to.
#[cfg(test)]
pub(crate) fn text_grams(text: &str) -> Vec<(usize, String)> {
    let lower: Vec<char> = text.to_lowercase().chars().collect();
    let mut grams = Vec::with_capacity(lower.len());
    for (at, pair) in lower.windows(2).enumerate() {
        if let Some(third) = lower.get(at + 2) {
            grams.push((at, [pair[0], pair[1], *third].iter().collect()));
        }
        if !pair[0].is_ascii() && !pair[1].is_ascii() {
            grams.push((at, pair.iter().collect()));
        }
    }
    grams
}

/// The n-grams that find `needle` (case-insensitively) as a phrase, with their offsets in
/// it: windows of three at 0, 3, 6, ... and one ending at the needle's end. `None` when the
/// needle is too short for the index (one character, or two that are not both non-ASCII).
pub fn needle_grams(needle: &str) -> Option<Vec<(usize, String)>> {
    let lower: Vec<char> = needle.to_lowercase().chars().collect();
    let window = |at: usize, len: usize| lower[at..at + len].iter().collect::<String>();
    match lower.len() {
        0 | 1 => None,
        2 if lower.iter().all(|c| !c.is_ascii()) => Some(vec![(0, window(0, 2))]),
        2 => None,
        len => {
            let mut offsets: Vec<usize> = (0..=len - 3).step_by(3).collect();
            if offsets.last() != Some(&(len - 3)) {
                offsets.push(len - 3);
            }
            Some(offsets.into_iter().map(|at| (at, window(at, 3))).collect())
        }
    }
}

/// The tantivy tokenizer of the n-grams (see the module): a window's position is its
/// character position and it spans three positions, so a phrase never bridges two values
/// of a field.
#[derive(Clone, Default)]
pub struct GramTokenizer;

impl Tokenizer for GramTokenizer {
    type TokenStream<'a> = GramStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> GramStream {
        GramStream { chars: text.to_lowercase().chars().collect(), at: 0, pair_next: false, token: Token::default() }
    }
}

/// The n-grams of one text, made one at a time into one reused token: a body has a gram
/// per character, and a string and a token apiece for each of a million grams cost more
/// than indexing them.
pub struct GramStream {
    /// The lowercased text.
    chars: Vec<char>,
    /// Where the current window starts.
    at: usize,
    /// Whether the window's three-character gram was done and its pair comes next.
    pair_next: bool,
    token: Token,
}

impl GramStream {
    fn emit(&mut self, grams: &[char]) {
        self.token.text.clear();
        self.token.text.extend(grams);
        self.token.position = self.at;
        self.token.position_length = grams.len();
    }
}

impl TokenStream for GramStream {
    fn advance(&mut self) -> bool {
        // Per window: the three characters from it, then the pair at it when both are
        // non-ASCII.
        while self.at + 1 < self.chars.len() {
            let (first, second) = (self.chars[self.at], self.chars[self.at + 1]);
            if !self.pair_next {
                self.pair_next = true;
                if let Some(&third) = self.chars.get(self.at + 2) {
                    self.emit(&[first, second, third]);
                    return true;
                }
            }
            self.pair_next = false;
            let cjk_pair = !first.is_ascii() && !second.is_ascii();
            if cjk_pair {
                self.emit(&[first, second]);
            }
            self.at += 1;
            if cjk_pair {
                self.token.position = self.at - 1;
                return true;
            }
        }
        false
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

/// The distinct n-grams of a text (tests).
#[cfg(test)]
pub(crate) fn distinct_grams(text: &str) -> std::collections::HashSet<String> {
    text_grams(text).into_iter().map(|(_, gram)| gram).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_needle_s_grams_are_in_every_text_containing_it() {
        let text = "Re: Invoice 2026 — 关于下周的会议安排, ΣΊΣΥΦΟΣ";
        let grams = distinct_grams(text);
        for needle in ["voic", "INVOICE 20", "会议", "下周的会", "e: i", "σίσυ"] {
            let wanted = needle_grams(needle).unwrap();
            assert!(wanted.iter().all(|(_, gram)| grams.contains(gram)), "{needle}");
        }
        assert_eq!(needle_grams("ab"), None, "two ASCII characters are too short");
        assert_eq!(needle_grams("é"), None);
        assert_eq!(needle_grams("会议"), Some(vec![(0, "会议".to_owned())]));
        let offsets = |needle| needle_grams(needle).unwrap().into_iter().map(|(at, _)| at).collect::<Vec<_>>();
        assert_eq!(offsets("abc"), [0]);
        assert_eq!(offsets("abcdefg"), [0, 3, 4], "windows cover the needle to its end");
        assert_eq!(offsets("abcdef"), [0, 3]);
        assert!(!needle_grams("xyz").unwrap().iter().all(|(_, gram)| grams.contains(gram)));
    }

    #[test]
    fn the_stream_emits_text_grams_in_order() {
        let texts =
            ["", "a", "ab", "abc", "Re: Invoice 2026", "会议", "会议安排 ok 下周", "ΣΊΣΥΦΟΣ İx", "a会b议cd安排"];
        for text in texts {
            let mut stream = GramTokenizer.token_stream(text);
            let mut streamed = Vec::new();
            while stream.advance() {
                let token = stream.token();
                assert_eq!(token.position_length, token.text.chars().count(), "{text:?}");
                streamed.push((token.position, token.text.clone()));
            }
            assert_eq!(streamed, text_grams(text), "{text:?}");
        }
    }
}
