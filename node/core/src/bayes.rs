//! A Bayesian spam classifier trained per domain from what users do: a message moved into
//! the Junk mailbox is learnt as spam, one moved out of Junk (not to Trash) as ham. Token
//! probabilities follow Robinson (with a prior for rare tokens) and are combined with
//! Fisher's chi-square method, as SpamBayes and SpamAssassin do. Token counts are
//! replicated (every node classifies alike); tokens are 64-bit FNV-1a hashes of words.

use mail_parser::MessageParser;
use wmail_storage::Command;

use crate::{Core, Result};

/// Most text tokenised per message (the start of its text parts).
const MAX_TEXT: usize = 256 * 1024;
/// Most distinct tokens per message.
const MAX_TOKENS: usize = 1_000;
/// Tokens used to decide: the most telling ones.
const MAX_CLUES: usize = 150;
/// Robinson's prior: strength and assumed probability of an unseen token.
const PRIOR_STRENGTH: f64 = 0.45;
const PRIOR: f64 = 0.5;

/// 64-bit FNV-1a: stable across processes and versions (the counts are replicated).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

/// Adds the tokens of `text` under `prefix`: lowercase words of 3 to 24 characters, and
/// pairs of neighbouring CJK characters (no spaces between words there).
fn add_tokens(prefix: &str, text: &str, out: &mut Vec<u64>) {
    let mut word = String::new();
    let mut previous_cjk: Option<char> = None;
    let flush = |word: &mut String, out: &mut Vec<u64>| {
        let length = word.chars().count();
        if (3..=24).contains(&length) {
            out.push(fnv1a(format!("{prefix}{word}").as_bytes()));
        }
        word.clear();
    };
    for c in text.chars() {
        if is_cjk(c) {
            flush(&mut word, out);
            if let Some(previous) = previous_cjk {
                out.push(fnv1a(format!("{prefix}{previous}{c}").as_bytes()));
            }
            previous_cjk = Some(c);
        } else {
            previous_cjk = None;
            if c.is_alphanumeric() || c == '\'' || c == '$' {
                word.extend(c.to_lowercase());
            } else {
                flush(&mut word, out);
            }
        }
    }
    flush(&mut word, out);
}

/// The distinct tokens of a message: subject words, the From: domain, and the text.
pub fn tokens(raw: &[u8]) -> Vec<u64> {
    let Some(message) = MessageParser::default().parse(raw) else { return Vec::new() };
    let mut out = Vec::new();
    add_tokens("subject:", message.subject().unwrap_or(""), &mut out);
    if let Some(domain) =
        message.from().and_then(|from| from.first()?.address()?.rsplit_once('@').map(|(_, d)| d.to_lowercase()))
    {
        out.push(fnv1a(format!("from-domain:{domain}").as_bytes()));
    }
    let mut text = String::new();
    for index in 0.. {
        let Some(part) = message.body_text(index) else { break };
        text.push_str(&part);
        text.push('\n');
        if text.len() >= MAX_TEXT {
            break;
        }
    }
    add_tokens("", &text[..text.floor_char_boundary(MAX_TEXT)], &mut out);
    out.sort_unstable();
    out.dedup();
    out.truncate(MAX_TOKENS);
    out
}

/// `P(-2 Σ ln p > x2)` for a chi-square distribution with `dof` (even) degrees of freedom.
fn chi2_survival(x2: f64, dof: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..dof / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

/// The probability that a message is spam from its tokens' (spam, ham) counts and the
/// domain's trained (spam, ham) message totals; `None` until each total reaches
/// `min_trained`.
pub fn spam_probability(totals: (u64, u64), counts: &[(u64, u64)], min_trained: u64) -> Option<f64> {
    let (spam_total, ham_total) = totals;
    if spam_total < min_trained.max(1) || ham_total < min_trained.max(1) {
        return None;
    }
    let mut clues: Vec<f64> = counts
        .iter()
        .filter(|(spam, ham)| spam + ham > 0)
        .map(|&(spam, ham)| {
            let spam_ratio = spam as f64 / spam_total as f64;
            let ham_ratio = ham as f64 / ham_total as f64;
            let p = spam_ratio / (spam_ratio + ham_ratio);
            let n = (spam + ham) as f64;
            // Robinson's f(w): the token's probability pulled towards the prior when rare.
            (PRIOR_STRENGTH * PRIOR + n * p) / (PRIOR_STRENGTH + n)
        })
        .filter(|f| (f - 0.5).abs() > 0.1)
        .collect();
    clues.sort_by(|a, b| (b - 0.5).abs().total_cmp(&(a - 0.5).abs()));
    clues.truncate(MAX_CLUES);
    if clues.is_empty() {
        return Some(0.5);
    }
    let n = clues.len();
    let ham_evidence = chi2_survival(-2.0 * clues.iter().map(|f| f.max(1e-200).ln()).sum::<f64>(), 2 * n);
    let spam_evidence = chi2_survival(-2.0 * clues.iter().map(|f| (1.0 - f).max(1e-200).ln()).sum::<f64>(), 2 * n);
    Some((1.0 + ham_evidence - spam_evidence) / 2.0)
}

/// Messages one COPY or MOVE teaches at most (learning is inline with the command).
const LESSONS_PER_COMMAND: usize = 20;

/// Lessons one account may give its domain's classifier per day: a user sorting mail
/// stays well under it, and one account (a compromised one, or a user set on teaching the
/// classifier that the domain's real mail is spam) cannot outweigh everyone else's.
pub const MAX_LESSONS_PER_ACCOUNT_PER_DAY: u64 = 200;

impl Core {
    /// How likely `raw` is spam for mail to `domain`, by what its users taught; `None`
    /// while fewer than `min_trained` spam or ham messages were learnt.
    pub fn bayes_probability(&self, domain: &str, raw: &[u8], min_trained: u64) -> Result<Option<f64>> {
        // An untrained classifier costs one read, not a tokenised message.
        let (spam, ham) = self.state.bayes_totals(&domain.to_lowercase())?;
        if spam < min_trained.max(1) || ham < min_trained.max(1) {
            return Ok(None);
        }
        let tokens = tokens(raw);
        let (totals, counts) = self.state.bayes_counts(&domain.to_lowercase(), &tokens)?;
        Ok(spam_probability(totals, &counts, min_trained))
    }

    /// Learns messages an account moved into (`spam`) or out of its Junk mailbox: at most
    /// [`LESSONS_PER_COMMAND`] per command and [`MAX_LESSONS_PER_ACCOUNT_PER_DAY`] new ones a
    /// day (checked here against the replicated count, so concurrent commands may pass it
    /// by a command's worth). Correcting a message learnt the other way is always allowed;
    /// one learnt the same way already is skipped.
    pub(crate) async fn learn(&self, account_id: u64, mailbox_id: u64, uids: &[u32], spam: bool) -> Result<()> {
        let Some(account) = self.state.account(account_id)? else { return Ok(()) };
        let domain = account.address.rsplit_once('@').map(|(_, domain)| domain.to_lowercase()).unwrap_or_default();
        let given = self.state.bayes_lessons_today(account_id, crate::now_ms())?;
        let mut room = MAX_LESSONS_PER_ACCOUNT_PER_DAY.saturating_sub(given);
        let (mut taught, mut capped) = (0, false);
        // Learning is inline with the user's MOVE: a bounded number of messages per command,
        // looked for among a bounded number of the moved ones.
        for &uid in uids.iter().take(LESSONS_PER_COMMAND * 10) {
            if taught == LESSONS_PER_COMMAND {
                break;
            }
            let Some(record) = self.state.message(account_id, mailbox_id, uid)? else { continue };
            match self.state.bayes_label(account_id, &record.blob)? {
                Some(label) if label == spam => continue, // learnt so already
                Some(_) => {}                             // a correction
                None if room == 0 => {
                    capped = true;
                    continue;
                }
                None => room -= 1,
            }
            taught += 1;
            let raw = self.read_blob(&record.blob).await?;
            let tokens = tokens(&raw);
            if !tokens.is_empty() {
                let command =
                    Command::TrainBayes { domain: domain.clone(), spam, tokens, account_id, blob: record.blob };
                self.execute(command).await?;
            }
        }
        if capped {
            tracing::info!(account = %account.address, given, "Bayes lessons of this account are capped for today");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_cjk_pairs_become_stable_tokens() {
        let message = "From: <a@Shop.example>\r\nSubject: Cheap pills\r\n\r\n便宜的药 now!!\r\n".as_bytes();
        let found = tokens(message);
        for expected in ["subject:cheap", "subject:pills", "from-domain:shop.example", "now", "便宜", "宜的", "的药"]
        {
            assert!(found.contains(&fnv1a(expected.as_bytes())), "{expected} missing");
        }
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 test vector");
    }

    #[test]
    fn spammy_tokens_push_the_probability_up_and_hammy_ones_down() {
        assert_eq!(spam_probability((10, 100), &[(10, 0)], 50), None, "not trained enough");
        let spammy = [(45, 1), (40, 0), (30, 2)];
        let hammy = [(0, 40), (1, 45), (2, 30)];
        assert!(spam_probability((50, 50), &spammy, 50).unwrap() > 0.95);
        assert!(spam_probability((50, 50), &hammy, 50).unwrap() < 0.05);
        assert_eq!(spam_probability((50, 50), &[(0, 0)], 50), Some(0.5), "nothing known");
    }
}
