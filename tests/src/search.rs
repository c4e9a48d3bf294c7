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

/// Runs random text searches (single keys, OR, AND, NOT; several charsets and cases) and
/// prints each result, one line per search.
const RANDOM_SEARCHES: &str = r#####"
import random
rng = random.Random(SEED)
WORDS = ["invoice", "meeting", "QUARTERLY", "report", "Résumé", "NAÏVE", "straße", "zürich", "会议", "项目",
         "明天下午", "北京", "会議室", "東京都", "報告書", "お願い", "张伟", "Jürgen", "müller", "田中", "Zoë",
         "sender3", "example.net", "team1@", "报告-", ".zip", "more", "&", "a", "会", "xq", "no-such-word",
         "zebracrossing"]
KEYS = ["SUBJECT", "FROM", "TO", "CC", "BODY", "TEXT"]

def lit(text):
    data = text.encode()
    return b"{%d+}\r\n" % len(data) + data

def key():
    return rng.choice(KEYS).encode() + b" " + lit(needle())

def needle():
    word = rng.choice(WORDS)
    if len(word) > 3 and rng.random() < 0.4:
        start = rng.randrange(len(word) - 2)
        word = word[start:start + rng.randint(2, len(word) - start)]
    return word.upper() if rng.random() < 0.3 else word

r = Raw()
r.ok("SELECT INBOX")
for _ in range(COUNT):
    shape = rng.random()
    if shape < 0.5:
        criteria = key()
    elif shape < 0.7:
        criteria = b"OR " + key() + b" " + key()
    elif shape < 0.85:
        criteria = key() + b" " + key()
    else:
        criteria = b"NOT " + key() + b" UNSEEN"
    tag = r.start(b"UID SEARCH CHARSET UTF-8 " + criteria)
    untagged, status = r.finish(tag)
    assert status.startswith("OK"), (criteria, status)
    print(criteria, numbers(untagged))
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

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Runs [`RANDOM_SEARCHES`] with the index, then again after a restart with `[search]
/// enabled = false` (every message read and checked), asserts the answers are the
/// same, and restarts with the index again (waiting until it holds `documents`). Returns
/// how many messages SEARCH read each way.
async fn compare_with_scan(node: &mut WmailNode, seed: u64, count: u64, documents: u64) -> (u64, u64) {
    let script = format!("SEED = {seed}\nCOUNT = {count}\n{RANDOM_SEARCHES}");
    let before = messages_read(&search_status(node).await);
    let indexed = imap(node, &script);
    let read_indexed = messages_read(&search_status(node).await) - before;
    node.terminate().await;
    node.reconfigure("[search]\nenabled = false\n");
    node.start().await;
    let scanned = imap(node, &script);
    let (status, refused) = node.api(Method::GET, "/accounts/alice@example.com/search?q=invoice", None).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert!(refused.to_string().contains("[search] enabled = false"), "{refused}");
    let read_scanning = messages_read(&search_status(node).await);
    node.terminate().await;
    node.reconfigure("");
    node.start().await;
    wait_indexed(node, documents).await;
    for (line, (with_index, by_scan)) in indexed.lines().zip(scanned.lines()).enumerate() {
        assert_eq!(with_index, by_scan, "search {line} differs with the index");
    }
    assert_eq!(indexed.lines().count(), count as usize);
    (read_indexed, read_scanning)
}

fn messages_read(status: &Value) -> u64 {
    status["messages_read"].as_u64().expect("messages_read")
}

#[tokio::test]
async fn imap_search_through_the_index_equals_a_full_scan_and_the_index_rebuilds_itself() {
    let mut node = node_with_account("", None).await;
    assert!(imap(&node, &format!("CORPUS = {CORPUS}\n{APPEND_CORPUS}")).contains("appended"));
    wait_indexed(&node, CORPUS).await;

    // The same searches with the index and with a scan of every message give the same
    // answers; the index spares reading almost every message.
    let (with_index, without) = compare_with_scan(&mut node, 1, 150, CORPUS).await;
    assert!(with_index < without / 3, "SEARCH read {with_index} messages with the index, {without} without");

    // A Chinese word inside GB18030 sentences (every fifth message, uid 2, 7, ...) and a
    // Japanese one in ISO-2022-JP ones (uid 3, 8, ...) are found there.
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("SELECT INBOX")
for word, kind in [("会议", 2), ("会議室", 3)]:
    data = word.encode()
    found = numbers(r.ok(b"UID SEARCH CHARSET UTF-8 BODY {%d+}\r\n" % len(data) + data))
    assert any(uid % 5 == kind % 5 for uid in found), (word, found)
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");

    // Ranked search for the webmail: CJK words, operators, snippets, clear query errors.
    let search = |query: &str| {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("limit", "100")
            .append_pair("q", query)
            .finish();
        let path = format!("/accounts/alice@example.com/search?{query}");
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
    compare_with_scan(&mut node, 2, 30, remaining).await;

    // An old copy of the index (a restored backup) behind a trimmed change log: the account
    // is reconciled with its mailbox, gone messages removed and new ones added.
    node.terminate().await;
    let old_copy = node.data_dir.with_file_name("search-old");
    copy_dir(&node.data_dir.join("search"), &old_copy);
    node.start().await;
    imap(
        &node,
        r#"
r = Raw()
r.ok("SELECT INBOX")
r.ok("STORE 1:5 +FLAGS (\Deleted)")
r.ok("EXPUNGE")
for n in range(3):
    assert r.append("INBOX", b"Subject: late %d\r\n\r\nzebracrossing\r\n" % n)[1].startswith("OK")
# 21,000 flag changes: the account's change log is trimmed well past the old copy.
for n in range(1050):
    r.ok("STORE 1:10 %sFLAGS (\Flagged)" % ("+" if n % 2 == 0 else "-"))
"#,
    );
    let now = remaining - 5 + 3;
    wait_indexed(&node, now).await;
    node.terminate().await;
    std::fs::remove_dir_all(node.data_dir.join("search")).unwrap();
    std::fs::rename(&old_copy, node.data_dir.join("search")).unwrap();
    node.start().await;
    wait_indexed(&node, now).await;
    compare_with_scan(&mut node, 3, 30, now).await;
    let out = imap(
        &node,
        "r = Raw()\nr.ok('SELECT INBOX')\nprint(numbers(r.ok('SEARCH BODY zebracrossing')), numbers(r.ok('SEARCH NOT NOT BODY zebracrossing')))\n",
    );
    let expected = format!("[{}, {}, {}]", now - 2, now - 1, now);
    assert_eq!(out.trim(), format!("{expected} {expected}"));

    // Another account's mail, one message in an unknown charset with invalid bytes, one
    // labelled GB18030 that is not: indexed without harm, and gone with the account.
    let (status, body) = node
        .api(
            Method::POST,
            "/accounts",
            Some(serde_json::json!({ "address": "bob@example.com", "password": "bob password" })),
        )
        .await;
    assert!(status.is_success(), "{body}");
    for body in [
        b"Subject: odd\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nbroken \xff\xfe bytes\r\n".to_vec(),
        b"Subject: gb\r\nContent-Type: text/plain; charset=gb18030\r\n\r\n\x81\x30 half \xd6\r\n".to_vec(),
    ] {
        let (status, reply) = node.deliver("bob@example.com", body).await;
        assert!(status.is_success(), "{reply}");
    }
    wait_indexed(&node, now + 2).await;

    // The webmail's search: each user, with their own password, finds their own mail only.
    let user_search = |user: &str, password: &str, query: &str| {
        let query = form_urlencoded::Serializer::new(String::new()).append_pair("q", query).finish();
        let request = reqwest::Client::new()
            .get(format!("http://{}/user/v1/search?limit=100&{query}", node.http))
            .basic_auth(user, Some(password));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, own) = user_search("bob@example.com", "bob password", "subject:odd").await;
    assert!(status.is_success(), "{own}");
    assert_eq!(own.as_array().map(Vec::len), Some(1), "{own}");
    let (_, others) = user_search("bob@example.com", "bob password", "zebracrossing").await;
    assert_eq!(others, serde_json::json!([]), "bob sees alice's mail");
    let (_, alices) = user_search("alice@example.com", "password", "zebracrossing").await;
    let (_, by_admin) =
        node.api(Method::GET, "/accounts/alice@example.com/search?q=zebracrossing&limit=100", None).await;
    assert_eq!(alices.as_array().map(Vec::len), Some(3), "{alices}");
    assert_eq!(alices, by_admin);
    let (status, _) = user_search("alice@example.com", "not her password", "zebracrossing").await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    let (status, error) = user_search("alice@example.com", "password", "before:someday").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{error}");

    let (status, body) = node.api(Method::DELETE, "/accounts/bob@example.com", None).await;
    assert!(status.is_success(), "{body}");
    wait_indexed(&node, now).await;

    // wmail search reindex: progress on stderr, a summary on stdout.
    let output = node.cli(&["search", "reindex", "alice@example.com"], None);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = succeeded(output);
    assert!(stdout.contains(&format!("reindexed {now} messages")), "{stdout}");
    assert!(stderr.contains("reindexing [") && stderr.contains("messages"), "{stderr}");
    let status = search_status(&node).await;
    assert_eq!(status["documents"], now);
    assert_eq!(status["reindex"]["running"], false);
    let unknown = node.cli(&["search", "reindex", "nobody@example.com"], None);
    assert!(!unknown.status.success());
    assert_eq!(node.metric("wmail_search_documents").await, now as f64);
}

#[tokio::test]
async fn text_past_the_indexed_cap_is_still_found() {
    // A body of 3 MB of text: the index keeps its first 1 MiB and marks the message
    // truncated, so SEARCH reads it for needles the index does not hold.
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
r = Raw()
body = b"start-marker\r\n" + (b"lorem ipsum dolor sit amet " * 40 + b"\r\n") * 2800 + b"end-marker\r\n"
assert r.append("INBOX", b"Subject: big\r\n\r\n" + body)[1].startswith("OK")
assert r.append("INBOX", b"Subject: small\r\n\r\nstart-marker only\r\n")[1].startswith("OK")
print(len(body))
"#,
    );
    assert!(out.trim().parse::<usize>().unwrap() > 3_000_000, "{out}");
    wait_indexed(&node, 2).await;
    let before = messages_read(&search_status(&node).await);
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("SELECT INBOX")
print(numbers(r.ok("UID SEARCH BODY start-marker")), numbers(r.ok("UID SEARCH BODY end-marker")), numbers(r.ok("UID SEARCH BODY no-such-marker")))
"#,
    );
    assert_eq!(out.trim(), "[1, 2] [1] []");
    // Only the truncated message was read, once per search.
    assert_eq!(messages_read(&search_status(&node).await) - before, 3);
}

#[tokio::test]
async fn a_message_whose_body_is_lost_does_not_stop_its_account_being_indexed() {
    let mut node = node_with_account("", None).await;
    for body in ["Subject: first\r\n\r\nalpha bravo\r\n", "Subject: second\r\n\r\ncharlie delta\r\n"] {
        let (status, reply) = node.deliver("alice@example.com", body.as_bytes().to_vec()).await;
        assert!(status.is_success(), "{reply}");
    }
    wait_indexed(&node, 2).await;
    // The first body is lost (a bad restore, a bucket mishap) and the index must be rebuilt.
    let (_, messages) = node.api(Method::GET, "/accounts/alice@example.com/messages", None).await;
    let blob = messages[0]["blob"].as_str().expect("blob").to_owned();
    node.terminate().await;
    std::fs::remove_file(node.data_dir.join("blobs").join(&blob[..2]).join(&blob)).expect("remove the body");
    std::fs::remove_dir_all(node.data_dir.join("search")).expect("remove the index");
    node.start().await;
    // Both messages are indexed again, the lost one without its text, and the rest of the
    // account stays searchable.
    wait_indexed(&node, 2).await;
    let (status, hits) = node.api(Method::GET, "/accounts/alice@example.com/search?q=charlie", None).await;
    assert!(status.is_success(), "{hits}");
    assert_eq!(hits.as_array().map(Vec::len), Some(1), "{hits}");
    assert!(node.log().contains("a message body is missing from the blob store"), "{}", node.log());
}
