//! Full-text search end to end: IMAP SEARCH narrowed by the node's Tantivy index gives
//! exactly what a scan of every message gives, over a generated corpus in several charsets
//! (UTF-8, GB18030, ISO-2022-JP, HTML, attachments); expunged messages leave the index; a
//! deleted or damaged index is rebuilt at start; `wmail search reindex` shows progress.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::harness::{WmailNode, succeeded};
use crate::imap::{imap, node_with_account};

/// Messages in the generated corpus.
const CORPUS: u64 = 150;

/// Appends the corpus (seeded, so every run sees the same mail) to alice's INBOX.
const APPEND_CORPUS: &str = r#####"
import random, html, email.header, email.policy
from email.mime.text import MIMEText
from email.mime.multipart import MIMEMultipart
from email.mime.application import MIMEApplication
from email.utils import formataddr

rng = random.Random(7)
EN = ["invoice", "Meeting", "quarterly", "REPORT", "budget", "travel", "Résumé", "naïve", "Straße", "project",
      "deadline", "Zürich", "agenda"]
ZH = ["会议", "项目", "明天下午", "预算", "北京", "报告", "请大家准时参加", "地点在三楼"]
JA = ["会議室", "東京都", "予算", "報告書", "よろしくお願いします", "打ち合わせ"]
NAMES = ["张伟", "Jürgen Müller", "田中太郎", "Zoë Smith", "Bob"]

def sentence(words, n):
    out = ""
    for _ in range(n):
        word = rng.choice(words)
        out += word + ("" if word in ZH + JA and rng.random() < 0.5 else " ")
    return out.strip()

for i in range(CORPUS):
    kind = i % 5
    words = EN + JA if kind == 2 else EN + ZH + JA
    body = sentence(words, rng.randint(5, 40))
    if kind == 0:
        msg = MIMEText(body, "plain", "utf-8")
    elif kind == 1:
        msg = MIMEText(sentence(EN + ZH, rng.randint(5, 40)), "plain", "gb18030")
    elif kind == 2:
        msg = MIMEText(sentence(["meeting", "agenda", "budget"] + JA, rng.randint(5, 30)), "plain", "iso-2022-jp")
    elif kind == 3:
        msg = MIMEText("<html><body><p>%s</p><p>&amp; more</p></body></html>" % html.escape(body), "html", "utf-8")
    else:
        msg = MIMEMultipart()
        msg.attach(MIMEText(body, "plain", "utf-8"))
        attachment = MIMEApplication(bytes(rng.getrandbits(8) for _ in range(300)), "zip")
        attachment.add_header("Content-Disposition", "attachment", filename="报告-%d.zip" % i)
        msg.attach(attachment)
    msg["Subject"] = email.header.Header(sentence(words, rng.randint(1, 6)), "utf-8")
    msg["From"] = formataddr((rng.choice(NAMES), "sender%d@example.net" % (i % 7)), "utf-8")
    msg["To"] = formataddr((rng.choice(NAMES), "alice@example.com"), "utf-8")
    if rng.random() < 0.5:
        msg["Cc"] = formataddr((rng.choice(NAMES), "team%d@example.org" % (i % 3)), "utf-8")
    r = Raw() if i == 0 else r
    untagged, status = r.append("INBOX", msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n")))
    assert status.startswith("OK"), status
print("appended")
"#####;

/// Runs random text searches two ways: as asked (the index narrows them) and under `NOT
/// NOT` (which the index never narrows, so every message is read and checked); prints
/// `same N` when every pair agreed.
const COMPARE_SEARCHES: &str = r#####"
import random
rng = random.Random(SEED)
WORDS = ["invoice", "meeting", "QUARTERLY", "report", "Résumé", "NAÏVE", "straße", "zürich", "会议", "项目",
         "明天下午", "北京", "会議室", "東京都", "報告書", "お願い", "张伟", "Jürgen", "müller", "田中", "Zoë",
         "sender3", "example.net", "team1@", "报告-", ".zip", "more", "&", "a", "会", "xq", "no-such-word"]
KEYS = ["SUBJECT", "FROM", "TO", "CC", "BODY", "TEXT"]

def lit(text):
    data = text.encode()
    return b"{%d+}\r\n" % len(data) + data

def uid_search(criteria):
    tag = r.start(b"UID SEARCH CHARSET UTF-8 " + criteria)
    untagged, status = r.finish(tag)
    assert status.startswith("OK"), (criteria, status)
    return numbers(untagged)

def needle():
    word = rng.choice(WORDS)
    if len(word) > 3 and rng.random() < 0.4:
        start = rng.randrange(len(word) - 2)
        word = word[start:start + rng.randint(2, len(word) - start)]
    return word.upper() if rng.random() < 0.3 else word

r = Raw()
r.ok("SELECT INBOX")
same = 0
for _ in range(COUNT):
    shape = rng.random()
    if shape < 0.6:
        criteria = rng.choice(KEYS).encode() + b" " + lit(needle())
    elif shape < 0.8:
        criteria = b"OR " + rng.choice(KEYS).encode() + b" " + lit(needle()) + b" " + rng.choice(KEYS).encode() + b" " + lit(needle())
    else:
        criteria = rng.choice(KEYS).encode() + b" " + lit(needle()) + b" " + rng.choice(KEYS).encode() + b" " + lit(needle())
    narrowed = uid_search(criteria)
    scanned = uid_search(b"NOT NOT (" + criteria + b")")
    assert narrowed == scanned, (criteria, narrowed, scanned)
    same += 1
print("same", same)
"#####;

async fn search_status(node: &WmailNode) -> Value {
    let (status, body) = node.api(Method::GET, "/search/status", None).await;
    assert!(status.is_success(), "{body}");
    body
}

/// Waits until the node's index holds `documents` documents.
async fn wait_indexed(node: &WmailNode, documents: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = search_status(node).await;
        if status["documents"] == documents {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the index never reached {documents} documents: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Percent-encodes a query-string value.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn messages_read(status: &Value) -> u64 {
    status["messages_read"].as_u64().expect("messages_read")
}

#[tokio::test]
async fn imap_search_through_the_index_equals_a_full_scan_and_the_index_rebuilds_itself() {
    let mut node = node_with_account("", None).await;
    assert!(imap(&node, &format!("CORPUS = {CORPUS}\n{APPEND_CORPUS}")).contains("appended"));
    wait_indexed(&node, CORPUS).await;

    // Each pair is one narrowed search and one full scan of the 150 messages.
    let before = messages_read(&search_status(&node).await);
    let compare = |seed: u64, count: u64| format!("SEED = {seed}\nCOUNT = {count}\n{COMPARE_SEARCHES}");
    let out = imap(&node, &compare(1, 150));
    assert!(out.contains("same 150"), "{out}");
    let read = messages_read(&search_status(&node).await) - before;
    let scans = 150 * CORPUS;
    assert!(read >= scans, "the NOT NOT scans alone read {scans} messages, counted {read}");
    assert!(
        read - scans < scans / 3,
        "narrowed searches read {} messages: the index did not narrow them",
        read - scans
    );

    // A Chinese word inside a GB18030 sentence, a Japanese one in ISO-2022-JP, both exact.
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("SELECT INBOX")
for word in ["会议", "会議室", "明天下午"]:
    data = word.encode()
    narrowed = numbers(r.ok(b"UID SEARCH CHARSET UTF-8 BODY {%d+}\r\n" % len(data) + data))
    scanned = numbers(r.ok(b"UID SEARCH CHARSET UTF-8 NOT NOT BODY {%d+}\r\n" % len(data) + data))
    assert narrowed and narrowed == scanned, (word, narrowed, scanned)
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");

    // Ranked search for the webmail: CJK words, operators, snippets, clear query errors.
    let search = |query: &str| {
        let path = format!("/accounts/alice@example.com/search?limit=100&q={}", urlencode(query));
        let node = &node;
        async move { node.api(Method::GET, &path, None).await }
    };
    let (status, hits) = search("会议").await;
    assert!(status.is_success(), "{hits}");
    let hits = hits.as_array().unwrap().clone();
    assert!(!hits.is_empty() && hits.iter().all(|hit| hit["mailbox"] == "INBOX"), "{hits:?}");
    assert!(hits.iter().any(|hit| hit["snippet"].as_str().unwrap().contains("<b>会议</b>")), "{hits:?}");
    let (_, with_attachments) = search("has:attachment").await;
    assert_eq!(with_attachments.as_array().unwrap().len(), 30, "{with_attachments}");
    let (_, from) = search("from:张伟 has:attachment").await;
    let from = from.as_array().unwrap();
    assert!(!from.is_empty() && from.iter().all(|hit| hit["from"] == "张伟"), "{from:?}");
    let (_, reports) = search("filename:报告 -budget").await;
    assert!(!reports.as_array().unwrap().is_empty(), "{reports}");
    let (status, error) = search("invoice foo:bar").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{error}");
    assert!(error.to_string().contains("unknown operator"), "{error}");

    // Expunged messages leave the index.
    imap(&node, "r = Raw()\nr.ok('SELECT INBOX')\nr.ok('STORE 1:10 +FLAGS (\\\\Deleted)')\nr.ok('EXPUNGE')\n");
    let remaining = CORPUS - 10;
    wait_indexed(&node, remaining).await;

    // A deleted index is built again at start, a damaged one removed and rebuilt.
    node.terminate().await;
    std::fs::remove_dir_all(node.data_dir.join("search")).unwrap();
    node.start().await;
    wait_indexed(&node, remaining).await;
    assert!(node.log().contains("search index created"), "{}", node.log());
    node.terminate().await;
    std::fs::write(node.data_dir.join("search/meta.json"), b"{ damaged").unwrap();
    node.start().await;
    wait_indexed(&node, remaining).await;
    assert!(node.log().contains("rebuilding it from the state"), "{}", node.log());
    let out = imap(&node, &compare(2, 30));
    assert!(out.contains("same 30"), "{out}");

    // wmail search reindex: progress on stderr, a summary on stdout.
    let output = node.cli(&["search", "reindex", "alice@example.com"], None);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = succeeded(output);
    assert!(stdout.contains(&format!("reindexed {remaining} messages")), "{stdout}");
    assert!(stderr.contains("reindexing [") && stderr.contains("messages"), "{stderr}");
    let status = search_status(&node).await;
    assert_eq!(status["documents"], remaining);
    assert_eq!(status["reindex"]["running"], false);
    let unknown = node.cli(&["search", "reindex", "nobody@example.com"], None);
    assert!(!unknown.status.success());
    let metrics = node.get("/metrics").await.1;
    assert!(metrics.contains(&format!("wmail_search_documents {remaining}")), "{metrics}");
}
