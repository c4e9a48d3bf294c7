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
    "aaaaaaa",
    "banana",
    "nanab",
    "İstanbul",
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
fn the_index_finds_exactly_what_a_brute_force_scan_finds() {
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
            let message = MessageDocument { account: 1, mailbox, uid, texts, truncated: false, ..Default::default() };
            index.add(&message).unwrap();
            messages.push(message);
        }
        index.commit(Progress::default()).unwrap();
        let all_texts: Vec<String> = messages.iter().flat_map(|m| m.texts.iter().map(|(_, t)| t.clone())).collect();
        let mut answered = 0;
        for _ in 0..300 {
            let needle = random_needle(&mut rng, &all_texts);
            let field = TextField::ALL[rng.gen_range(0..TextField::ALL.len())];
            let expected: HashSet<u32> = messages
                .iter()
                .filter(|m| m.texts.iter().any(|(f, text)| *f == field && contains(text, &needle)))
                .map(|m| m.uid)
                .collect();
            match index.candidates(1, mailbox, &[field], &needle).unwrap() {
                Some(found) => {
                    assert_eq!(found, expected, "{field:?} {needle:?}");
                    answered += 1;
                }
                None => assert!(needle_grams(&needle).is_none()),
            }
        }
        assert!(answered > 150, "the index answered only {answered} of 300 queries");
    }
}

#[test]
fn a_chinese_word_is_found_inside_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = SearchIndex::open(dir.path()).unwrap();
    let sentence = "请大家准时参加明天下午的项目会议，地点在三楼。";
    for (uid, body) in [(1, sentence), (2, "明天下午不开会"), (3, "Meeting tomorrow")] {
        let texts = vec![(TextField::Body, body.to_owned())];
        index
            .add(&MessageDocument { account: 7, mailbox: 1, uid, texts, truncated: false, ..Default::default() })
            .unwrap();
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
            index
                .add(&MessageDocument { account, mailbox, uid, texts, truncated: false, ..Default::default() })
                .unwrap();
        }
        let long = "x".repeat(MAX_INDEXED_TEXT + 10) + " needle";
        let texts = vec![(TextField::Body, long)];
        index
            .add(&MessageDocument { account: 1, mailbox: 1, uid: 3, texts, truncated: false, ..Default::default() })
            .unwrap();
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
        index
            .add(&MessageDocument { account: 1, mailbox: 1, uid: 1, texts, truncated: false, ..Default::default() })
            .unwrap();
        index.commit(Progress::default()).unwrap();
        index.wait_merging().unwrap();
    }
    std::fs::write(dir.path().join("meta.json"), b"{ not json").unwrap();
    let (index, outcome) = SearchIndex::open(dir.path()).unwrap();
    assert!(matches!(outcome, OpenOutcome::Rebuilding(_)), "{outcome:?}");
    assert_eq!(index.document_count(), 0);
    assert_eq!(index.progress().accounts, BTreeMap::new());
}

#[test]
fn ranked_search_stems_splits_cjk_filters_and_highlights() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = SearchIndex::open(dir.path()).unwrap();
    let day = 86_400_000;
    let add = |mailbox: u64, uid: u32, subject: &str, from: &str, body: &str, attachments: &[&str], date_ms: u64| {
        let texts = vec![
            (TextField::Subject, subject.to_owned()),
            (TextField::From, from.to_owned()),
            (TextField::Body, body.to_owned()),
        ];
        let attachments = attachments.iter().map(|name| name.to_string()).collect();
        let document = MessageDocument { account: 1, mailbox, uid, texts, truncated: false, attachments, date_ms };
        index.add(&document).unwrap();
    };
    add(
        1,
        1,
        "Quarterly meetings",
        "Alice <alice@example.com>",
        "The meeting is on Monday. Bring the invoice.",
        &[],
        10 * day,
    );
    add(
        1,
        2,
        "项目进度",
        "张伟 <zw@example.cn>",
        "请大家准时参加明天下午的项目会议，地点在三楼。",
        &["报告.pdf"],
        20 * day,
    );
    add(2, 1, "Re: invoice", "Bob <bob@example.org>", "Paid, see the attached invoice.", &["invoice-42.pdf"], 30 * day);
    add(1, 3, "Lunch", "Alice <alice@example.com>", "Nothing to see here.", &[], 40 * day);
    let other = vec![(TextField::Subject, "meeting".to_owned())];
    index.add(&MessageDocument { account: 2, mailbox: 9, uid: 1, texts: other, ..Default::default() }).unwrap();
    index.commit(Progress::default()).unwrap();

    let mailboxes = std::collections::HashMap::from([("INBOX".to_owned(), 1), ("Archive".to_owned(), 2)]);
    let search = |query: &str| -> Vec<(u64, u32)> {
        let clauses = parse_query(query).unwrap();
        index.ranked(1, &clauses, &mailboxes, 10).unwrap().iter().map(|hit| (hit.mailbox, hit.uid)).collect()
    };
    assert_eq!(search("meeting"), vec![(1, 1)], "stems match, and only this account's mail");
    assert_eq!(search("Meetings"), vec![(1, 1)]);
    assert_eq!(search("会议"), vec![(1, 2)], "a Chinese word inside a sentence");
    assert_eq!(search("invoice").len(), 2);
    assert_eq!(search("invoice")[0], (2, 1), "the subject and attachment name rank it first");
    assert_eq!(search("invoice in:archive"), vec![(2, 1)]);
    assert_eq!(search("invoice -bob"), vec![(1, 1)]);
    assert_eq!(search("from:alice").len(), 2);
    assert_eq!(search("has:attachment").len(), 2);
    assert_eq!(search("filename:报告"), vec![(1, 2)]);
    assert_eq!(search("from:alice before:1970-01-21"), vec![(1, 1)]);
    assert_eq!(search("from:alice after:1970-01-21"), vec![(1, 3)]);
    let hits = index.ranked(1, &parse_query("monday").unwrap(), &mailboxes, 10).unwrap();
    assert!(hits[0].snippet.contains("<b>Monday</b>"), "{}", hits[0].snippet);
    let error = index.ranked(1, &parse_query("in:Nowhere").unwrap(), &mailboxes, 10).unwrap_err();
    assert!(error.to_string().contains("no mailbox"), "{error}");
    let error = index.ranked(1, &parse_query("&&").unwrap(), &mailboxes, 10).unwrap_err();
    assert!(error.to_string().contains("no words"), "{error}");
}

#[test]
fn a_needle_too_long_for_the_index_is_left_to_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _) = SearchIndex::open(dir.path()).unwrap();
    let long = "word ".repeat(40);
    let texts = vec![(TextField::Body, long.clone())];
    index.add(&MessageDocument { account: 1, mailbox: 1, uid: 1, texts, ..Default::default() }).unwrap();
    index.commit(Progress::default()).unwrap();
    assert_eq!(index.candidates(1, 1, &[TextField::Body], &long[..90]).unwrap(), Some(HashSet::from([1])));
    assert_eq!(index.candidates(1, 1, &[TextField::Body], &long[..150]).unwrap(), None, "over 32 windows");
}

#[test]
fn texts_are_capped_in_place_on_a_character_boundary() {
    let mut short = "短い text".to_string();
    assert!(!cap_text(&mut short));
    assert_eq!(short, "短い text");
    // Three-byte characters straddling the cap: the cut falls before the one that crosses it.
    let mut long = "会".repeat(MAX_INDEXED_TEXT / 3 + 2);
    assert!(cap_text(&mut long));
    assert!(long.len() <= MAX_INDEXED_TEXT && long.len() > MAX_INDEXED_TEXT - 3);
    assert!(long.chars().all(|c| c == '会'));
}
