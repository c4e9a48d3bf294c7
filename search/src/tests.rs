use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const WORDS: &[&str] = &[
    "Invoice",
    "meeting",
    "QUARTERLY",
    "report",
    "résumé",
    "naïve",
    "Straße",
    "ΣΊΣΥΦΟΣ",
    "会议",
    "下周",
    "安排",
    "北京",
    "の",
    "東京都",
    "会議室",
    "회의",
    "invoice#42",
    "  ",
    "\t",
    "-",
    "re:",
    "Fwd:",
];

fn random_text(rng: &mut StdRng) -> String {
    let count = rng.gen_range(0..12);
    let mut text = String::new();
    for _ in 0..count {
        text.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        if rng.gen_bool(0.6) {
            text.push(' ');
        }
    }
    text
}

/// A needle: a random slice of a text seen (any case), or a random combination of words.
fn random_needle(rng: &mut StdRng, texts: &[String]) -> String {
    let source = &texts[rng.gen_range(0..texts.len())];
    let chars: Vec<char> = source.chars().collect();
    if chars.is_empty() || rng.gen_bool(0.3) {
        return random_text(rng).chars().take(rng.gen_range(1..8)).collect();
    }
    let start = rng.gen_range(0..chars.len());
    let end = rng.gen_range(start..=chars.len().min(start + 10));
    let needle: String = chars[start..end].iter().collect();
    if rng.gen_bool(0.5) { needle.to_uppercase() } else { needle }
}

fn contains(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

#[test]
fn candidates_hold_every_message_a_brute_force_scan_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (index, outcome) = SearchIndex::open(dir.path()).unwrap();
    assert_eq!(outcome, OpenOutcome::Created);
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mailbox = seed + 1;
        let mut messages = Vec::new();
        for uid in 1..=60u32 {
            let texts: Vec<(TextField, String)> =
                TextField::ALL.iter().map(|field| (*field, random_text(&mut rng))).collect();
            let message = MessageDocument { account: 1, mailbox, uid, texts, truncated: false };
            index.add(&message).unwrap();
            messages.push(message);
        }
        index.commit(Progress::default()).unwrap();
        let all_texts: Vec<String> = messages.iter().flat_map(|m| m.texts.iter().map(|(_, t)| t.clone())).collect();
        let mut narrowed = 0;
        for _ in 0..300 {
            let needle = random_needle(&mut rng, &all_texts);
            let field = TextField::ALL[rng.gen_range(0..TextField::ALL.len())];
            let expected: HashSet<u32> = messages
                .iter()
                .filter(|m| m.texts.iter().any(|(f, text)| *f == field && contains(text, &needle)))
                .map(|m| m.uid)
                .collect();
            match index.candidates(1, mailbox, &[field], &needle).unwrap() {
                Some(candidates) => {
                    assert!(expected.is_subset(&candidates), "{field:?} {needle:?}: {expected:?} ⊄ {candidates:?}");
                    narrowed += usize::from(candidates.len() < messages.len());
                }
                None => assert!(needle_grams(&needle).is_none()),
            }
        }
        assert!(narrowed > 100, "the index narrowed only {narrowed} of 300 queries");
    }
}

#[test]
fn a_chinese_word_is_found_inside_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = SearchIndex::open(dir.path()).unwrap();
    let sentence = "请大家准时参加明天下午的项目会议，地点在三楼。";
    for (uid, body) in [(1, sentence), (2, "明天下午不开会"), (3, "Meeting tomorrow")] {
        let texts = vec![(TextField::Body, body.to_owned())];
        index.add(&MessageDocument { account: 7, mailbox: 1, uid, texts, truncated: false }).unwrap();
    }
    index.commit(Progress::default()).unwrap();
    let find = |needle: &str| {
        let mut uids: Vec<u32> =
            index.candidates(7, 1, &[TextField::Body], needle).unwrap().unwrap().into_iter().collect();
        uids.sort();
        uids
    };
    assert_eq!(find("会议"), vec![1]);
    assert_eq!(find("明天下午"), vec![1, 2]);
    assert_eq!(find("项目会议"), vec![1]);
    assert_eq!(find("MEETING"), vec![3]);
    assert!(find("会谈").is_empty());
}

#[test]
fn documents_are_removed_by_message_mailbox_and_account_and_progress_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (index, _) = SearchIndex::open(dir.path()).unwrap();
        for (account, mailbox, uid) in [(1, 1, 1), (1, 1, 2), (1, 2, 1), (2, 3, 1)] {
            let texts = vec![(TextField::Subject, "quarterly report".to_owned())];
            index.add(&MessageDocument { account, mailbox, uid, texts, truncated: false }).unwrap();
        }
        let long = "x".repeat(MAX_INDEXED_TEXT + 10) + " needle";
        let texts = vec![(TextField::Body, long)];
        index.add(&MessageDocument { account: 1, mailbox: 1, uid: 3, texts, truncated: false }).unwrap();
        index.commit(Progress { version: 0, accounts: BTreeMap::from([(1, 10), (2, 4)]) }).unwrap();
        assert_eq!(index.document_count(), 5);
        let indexed = index.indexed(1, 1).unwrap();
        assert_eq!(indexed.uids, HashSet::from([1, 2, 3]));
        assert_eq!(indexed.truncated, HashSet::from([3]), "text past the cap marks the message truncated");
        assert_eq!(index.candidates(1, 1, &[TextField::Body], "needle").unwrap(), Some(HashSet::new()));

        index.remove_message(1, 1, 2);
        index.remove_mailbox(1, 2);
        index.remove_account(2);
        index.commit(Progress { version: 0, accounts: BTreeMap::from([(1, 12)]) }).unwrap();
        assert_eq!(index.indexed(1, 1).unwrap().uids, HashSet::from([1, 3]));
        assert!(index.indexed(1, 2).unwrap().uids.is_empty());
        assert!(index.indexed(2, 3).unwrap().uids.is_empty());
        index.wait_merging().unwrap();
    }
    let (index, outcome) = SearchIndex::open(dir.path()).unwrap();
    assert_eq!(outcome, OpenOutcome::Opened);
    assert_eq!(index.progress(), Progress { version: SCHEMA_VERSION, accounts: BTreeMap::from([(1, 12)]) });
    assert_eq!(index.candidates(1, 1, &[TextField::Subject], "Report").unwrap(), Some(HashSet::from([1])));
}

#[test]
fn an_unreadable_index_is_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (index, _) = SearchIndex::open(dir.path()).unwrap();
        let texts = vec![(TextField::Subject, "hello".to_owned())];
        index.add(&MessageDocument { account: 1, mailbox: 1, uid: 1, texts, truncated: false }).unwrap();
        index.commit(Progress::default()).unwrap();
        index.wait_merging().unwrap();
    }
    std::fs::write(dir.path().join("meta.json"), b"{ not json").unwrap();
    let (index, outcome) = SearchIndex::open(dir.path()).unwrap();
    assert!(matches!(outcome, OpenOutcome::Rebuilding(_)), "{outcome:?}");
    assert_eq!(index.document_count(), 0);
    assert_eq!(index.progress().accounts, BTreeMap::new());
}
