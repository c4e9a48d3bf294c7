//! Outbound delivery end to end: mail submitted for other domains leaves through the
//! replicated queue to real receiving MTAs (aiosmtpd, and a second wmail node), routed by
//! MX records that dnsmasq serves on 127.0.0.1.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{WmailNode, python, succeeded};
use crate::peers::{Dnsmasq, MailSink};

async fn create(node: &WmailNode, domain: &str, accounts: &[&str]) {
    let (status, body) = node.api(Method::POST, "/domains", Some(json!({ "name": domain }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for address in accounts {
        let body = json!({ "address": address, "password": "secret password" });
        assert_eq!(node.api(Method::POST, "/accounts", Some(body)).await.0, StatusCode::CREATED);
    }
}

async fn inbox(node: &WmailNode, address: &str) -> Vec<Value> {
    let (status, messages) = node.api(Method::GET, &format!("/accounts/{address}/messages"), None).await;
    assert_eq!(status, StatusCode::OK, "{messages}");
    messages.as_array().expect("list").clone()
}

/// Waits until `address` has at least `count` messages and returns their texts.
async fn wait_for_inbox(node: &WmailNode, address: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = inbox(node, address).await;
        if messages.len() >= count {
            let mut texts = Vec::new();
            for message in messages {
                let uid = message["uid"].as_u64().expect("uid");
                texts.push(String::from_utf8_lossy(&node.read_message(address, uid).await).into_owned());
            }
            return texts;
        }
        assert!(Instant::now() < deadline, "{address} has {} of {count} messages:\n{}", messages.len(), node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn queue(node: &WmailNode) -> Value {
    let (status, page) = node.api(Method::GET, "/queue", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page
}

/// Waits (at most 60 s) until the oldest queue entry has had an attempt, and returns it.
async fn first_entry_once_attempted(node: &WmailNode) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = queue(node).await;
        let entry = &page["entries"][0];
        if entry["attempts"].as_u64().unwrap_or(0) >= 1 {
            return entry.clone();
        }
        assert!(Instant::now() < deadline, "no attempt made: {page}\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_empty_queue(node: &WmailNode) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue(node).await["total"] != 0 {
        assert!(Instant::now() < deadline, "queue not drained: {}\n{}", queue(node).await, node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that the MX port refuses `recipient` from another domain with `550`.
fn assert_mx_refuses_with_550(node: &WmailNode, recipient: &str) {
    let out = python(
        node,
        &format!(
            r#"
s = smtplib.SMTP("127.0.0.1", SMTP)
s.ehlo("outside.test")
try:
    s.sendmail("someone@outside.test", [{recipient:?}], b"Subject: x\r\n\r\nx\r\n")
    print("accepted", {recipient:?})
except smtplib.SMTPRecipientsRefused as e:
    assert list(e.recipients.values())[0][0] == 550, e
s.quit()
"#
        ),
    );
    assert!(out.is_empty(), "{out}");
}

/// Submits a message as alice over STARTTLS + AUTH; `options` is the Python text of
/// smtplib's `mail_options, rcpt_options` arguments.
fn submit(node: &WmailNode, recipients: &[&str], body: &str, options: &str) {
    submit_built(node, recipients, &format!("{body:?}"), options);
}

/// [`submit`] with the message given as a Python expression (for bodies too large for a
/// command line).
fn submit_built(node: &WmailNode, recipients: &[&str], body_expression: &str, options: &str) {
    let recipients: Vec<String> = recipients.iter().map(|r| format!("{r:?}")).collect();
    let out = python(
        node,
        &format!(
            r#"
s = smtplib.SMTP("127.0.0.1", SUBMISSION)
s.starttls(context=ctx)
s.login("alice@example.com", "secret password")
body = ({body_expression}).encode()
refused = s.sendmail("alice@example.com", [{}], body, {options})
assert refused == {{}}, refused
s.quit()
"#,
            recipients.join(", ")
        ),
    );
    assert!(out.is_empty(), "{out}");
}

/// Runs `check` (Python, with `message` holding the message and `lookup` answering key
/// lookups with the records the node says to publish for `domain`) under dkimpy, an
/// independent verifier; returns what it prints.
async fn dkimpy(node: &WmailNode, domain: &str, message: &[u8], check: &str) -> String {
    let (status, keys) = node.api(Method::GET, &format!("/domains/{domain}/dkim"), None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let records: serde_json::Map<String, Value> = keys
        .as_array()
        .into_iter()
        .flatten()
        .map(|key| (format!("{}.", key["dns_name"].as_str().unwrap()), key["dns_value"].clone()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("message.eml"), message).expect("message");
    std::fs::write(dir.path().join("records.json"), Value::Object(records).to_string()).expect("records");
    let python = format!("{}/venv/bin/python", std::env::var("WMAIL_PEERS_DIR").expect("WMAIL_PEERS_DIR"));
    let script = format!(
        r#"
import dkim, json, sys
records = json.load(open(sys.argv[2]))
def lookup(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name, "").encode() or None
message = open(sys.argv[1], "rb").read()
{check}
"#
    );
    let output = std::process::Command::new(python)
        .args(["-c", &script])
        .arg(dir.path().join("message.eml"))
        .arg(dir.path().join("records.json"))
        .output()
        .expect("dkimpy");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "dkimpy failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout.trim().to_owned()
}

/// Checks a message's DKIM signature with dkimpy; returns its verdict.
async fn dkim_verify(node: &WmailNode, domain: &str, message: &[u8]) -> bool {
    dkimpy(node, domain, message, "print(dkim.verify(message, dnsfunc=lookup))").await == "True"
}

fn sink_dns_records(remote_mx: bool) -> Vec<String> {
    let mut records = vec![
        "--mx-host=sink.test,mx.sink.test,10".to_owned(),
        // IPv6 first (where nothing listens), then IPv4: delivery tries both families.
        "--host-record=mx.sink.test,127.0.0.1,::1".to_owned(),
        "--mx-host=nullmx.test,.,0".to_owned(),
    ];
    if remote_mx {
        records.push("--mx-host=remote.test,mx.remote.test,10".to_owned());
        records.push("--host-record=mx.remote.test,127.0.0.1".to_owned());
    }
    records
}

#[tokio::test]
async fn outbound_mail_is_routed_retried_bounced_and_reported() {
    let dns = Dnsmasq::start(&sink_dns_records(true)).await;
    let mut sink = MailSink::new();
    sink.set_behaviour(json!({
        "rcpt": { "carol@sink.test": "550 5.1.1 <carol@sink.test>: no such user" },
        "rcpt_fail_first": { "retry@sink.test": [2, "451 4.2.0 greylisted, try again later"] },
    }));
    sink.start().await;
    // A second wmail node is the MX of remote.test, reached through a static route.
    let mut remote = WmailNode::new("");
    remote.start().await;
    create(&remote, "remote.test", &["bob@remote.test"]).await;
    let config = format!(
        "{}\n[delivery]\nremote_port = {}\nretry_schedule = [\"1s\"]\n\n[delivery.routes]\n\"remote.test\" = {{ targets = [\"127.0.0.1:{}\"] }}\n",
        dns.wmail_config(),
        sink.port,
        remote.smtp.port()
    );
    let mut node = WmailNode::new(&config);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    // The domain's first DKIM key signs at once; the CLI prints the record to publish.
    let generated = succeeded(node.cli(&["domain", "dkim", "generate", "example.com", "--selector", "rsa1"], None));
    assert!(generated.contains("rsa1._domainkey.example.com. IN TXT") && generated.contains("k=rsa"), "{generated}");

    // One message to five recipients in four domains.
    submit(
        &node,
        &["bob@sink.test", "carol@sink.test", "x@nullmx.test", "nobody@nxdomain.test", "bob@remote.test"],
        "From: alice@example.com\r\nSubject: outbound 1\r\nMessage-ID: <out-1@example.com>\r\n\r\nhello\r\n..dot\r\n",
        r#"["RET=HDRS", "ENVID=test-envelope-1"], ["NOTIFY=SUCCESS,FAILURE"]"#,
    );
    let messages = sink.wait_for_messages(1).await;
    let (envelope, body) = &messages[0];
    assert_eq!(envelope["to"], json!(["bob@sink.test"]), "carol was refused at RCPT");
    assert_eq!(envelope["from"], "alice@example.com");
    assert_eq!(envelope["tls"], true, "STARTTLS was used: {envelope}");
    let options = envelope["mail_options"].to_string();
    assert!(options.contains("SIZE=") && !options.contains("BODY="), "7-bit data is not declared 8-bit: {options}");
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains("Return-Path:"), "no Return-Path in transit (RFC 5321 §4.4):\n{text}");
    assert!(text.contains("Subject: outbound 1") && text.contains("\r\n..dot\r\n"), "dots as sent:\n{text}");
    assert!(text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;") && text.contains("s=rsa1"), "{text}");
    assert!(dkim_verify(&node, "example.com", body).await, "dkimpy rejects the signature:\n{text}");
    let mut tampered = body.clone();
    let at = tampered.windows(5).position(|w| w == b"hello").expect("body text");
    tampered[at] = b'j';
    assert!(!dkim_verify(&node, "example.com", &tampered).await, "a changed body must fail");

    // The other wmail node got its copy (over BDAT and STARTTLS).
    let delivered = wait_for_inbox(&remote, "bob@remote.test", 1).await;
    assert!(delivered[0].contains("Subject: outbound 1"), "{}", delivered[0]);
    assert!(delivered[0].contains("Return-Path: <alice@example.com>"), "{}", delivered[0]);
    assert!(delivered[0].contains("with ESMTPS"), "TLS between the nodes:\n{}", delivered[0]);

    // One report to alice: three failures and a "relayed" for the sink, which does not
    // offer DSN; the wmail node offers DSN, so it reports (or not) itself.
    let reports = wait_for_inbox(&node, "alice@example.com", 1).await;
    let report = &reports[0];
    assert!(report.contains("Subject: Undelivered Mail Returned to Sender"), "{report}");
    assert!(report.contains("report-type=delivery-status"), "{report}");
    assert!(report.contains("Original-Envelope-Id: test-envelope-1"), "{report}");
    for (recipient, action, status) in [
        ("carol@sink.test", "failed", "5.1.1"),
        ("x@nullmx.test", "failed", "5.1.10"),
        ("nobody@nxdomain.test", "failed", "5.1.2"),
        ("bob@sink.test", "relayed", "2.0.0"),
    ] {
        let block = format!("Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n");
        assert!(report.contains(&block), "missing {block:?} in\n{report}");
    }
    assert!(!report.contains("Final-Recipient: rfc822; bob@remote.test"), "{report}");
    assert!(report.contains("Content-Type: text/rfc822-headers"), "RET=HDRS: {report}");
    assert!(!report.contains("\r\nhello\r\n"), "RET=HDRS returns no body: {report}");

    // A recipient that is greylisted twice is delivered on the third attempt.
    submit(&node, &["retry@sink.test"], "From: alice@example.com\r\nSubject: retried\r\n\r\nx\r\n", "[], []");
    let messages = sink.wait_for_messages(2).await;
    assert_eq!(messages[1].0["to"], json!(["retry@sink.test"]));
    assert_eq!(sink.events().matches("<retry@sink.test>").count(), 3, "{}", sink.events());

    // Thirty recipients at one domain go in one transaction.
    let many: Vec<String> = (1..=30).map(|n| format!("user{n}@sink.test")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    submit(&node, &many_refs, "From: alice@example.com\r\nSubject: many\r\n\r\nx\r\n", "[], []");
    let messages = sink.wait_for_messages(3).await;
    assert_eq!(messages[2].0["to"].as_array().map(Vec::len), Some(30), "{}", messages[2].0);

    // A 5 MB message streams through unchanged.
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    let big_body = line.repeat(5 * 1024 * 1024 / line.len());
    let expression = format!(
        "'From: alice@example.com\\r\\nSubject: big\\r\\n\\r\\n' + {line:?} * {}",
        5 * 1024 * 1024 / line.len()
    );
    submit_built(&node, &["bob@sink.test"], &expression, "[], []");
    let messages = sink.wait_for_messages(4).await;
    assert!(messages[3].1.ends_with(big_body.as_bytes()), "the large body arrived intact");

    // Selector rotation: a new Ed25519 key waits for its DNS record, then takes over.
    let generated = succeeded(
        node.cli(&["domain", "dkim", "generate", "example.com", "--selector", "ed1", "--algorithm", "ed25519"], None),
    );
    assert!(generated.contains("inactive") && generated.contains("k=ed25519"), "{generated}");
    succeeded(node.cli(&["domain", "dkim", "activate", "example.com", "ed1"], None));
    let refused = node.cli(&["domain", "dkim", "remove", "example.com", "ed1"], None);
    assert!(!refused.status.success(), "the active key cannot be removed while others exist");
    submit(&node, &["bob@sink.test"], "From: Alice <alice@example.com>\r\nSubject: ed\r\n\r\ned\r\n", "[], []");
    let messages = sink.wait_for_messages(5).await;
    let text = String::from_utf8_lossy(&messages[4].1);
    assert!(text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;") && text.contains("s=ed1"), "{text}");
    assert!(dkim_verify(&node, "example.com", &messages[4].1).await, "dkimpy rejects the Ed25519 signature:\n{text}");

    // 8-bit data is declared (RFC 6152) and bounced at a server without 8BITMIME.
    let eight_bit = "From: alice@example.com\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ngrüße\r\n";
    submit(&node, &["bob@sink.test"], eight_bit, "[], []");
    let messages = sink.wait_for_messages(6).await;
    assert!(messages[5].0["mail_options"].to_string().contains("BODY=8BITMIME"), "{}", messages[5].0);
    // A restart closes the connection the node keeps open, so it sees the new EHLO reply.
    sink.set_behaviour(json!({ "no_8bitmime": true }));
    sink.stop();
    sink.start().await;
    submit(&node, &["bob@sink.test"], eight_bit, "[], []");
    let reports = wait_for_inbox(&node, "alice@example.com", 2).await;
    assert!(
        reports[1].contains("Final-Recipient: rfc822; bob@sink.test\r\nAction: failed\r\nStatus: 5.6.3"),
        "{}",
        reports[1]
    );
    assert_eq!(sink.messages().len(), 6, "nothing 8-bit went to the 7-bit server");

    wait_for_empty_queue(&node).await;
    let listed = succeeded(node.cli(&["queue", "list"], None));
    assert!(listed.contains("0 message(s) queued"), "{listed}");
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 2, "no reports for the other messages");
}

#[tokio::test]
async fn a_smarthost_is_used_with_starttls_and_a_login() {
    // The relay is another wmail node's submission port: STARTTLS, AUTH, send-as checks.
    let mut relay = WmailNode::new("");
    relay.start().await;
    create(&relay, "relay.test", &["relay@relay.test", "carol@relay.test"]).await;
    succeeded(relay.cli(&["account", "access", "relay@relay.test", "--send-as", "@example.com"], None));
    // Credentials only go to a verified relay: its self-signed certificate (for "localhost")
    // is trusted through tls_ca_file.
    let unverified = format!(
        "[delivery]\nsmarthost = \"localhost:{}\"\nsmarthost_user = \"relay@relay.test\"\nsmarthost_password = \"secret password\"\nretry_schedule = [\"1h\"]\n",
        relay.submission.port()
    );
    let config = format!("{unverified}tls_ca_file = {:?}\n", relay.data_dir.join("tls/cert.pem").display().to_string());
    let mut node = WmailNode::new(&config);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    submit(&node, &["carol@relay.test"], "From: alice@example.com\r\nSubject: relayed\r\n\r\nx\r\n", "[], []");
    let delivered = wait_for_inbox(&relay, "carol@relay.test", 1).await;
    assert!(delivered[0].contains("Subject: relayed"), "{}", delivered[0]);
    assert!(delivered[0].contains("(authenticated as relay@relay.test)"), "{}", delivered[0]);
    assert!(delivered[0].contains("with ESMTPSA"), "{}", delivered[0]);
    wait_for_empty_queue(&node).await;

    // A wrong password defers (the operator fixes the login; nothing bounces).
    let mut wrong = WmailNode::new(&config.replace("secret password", "wrong password"));
    wrong.start().await;
    create(&wrong, "example.com", &["alice@example.com"]).await;
    submit(&wrong, &["carol@relay.test"], "From: alice@example.com\r\nSubject: refused\r\n\r\nx\r\n", "[], []");
    let entry = first_entry_once_attempted(&wrong).await;
    assert_eq!(entry["recipients"][0]["status"], "pending", "{entry}");
    assert!(entry["recipients"][0]["reply"].as_str().unwrap().starts_with("535"), "{entry}");
    assert!(inbox(&wrong, "alice@example.com").await.is_empty(), "no bounce for a relay login problem");

    // Without the relay's certificate trusted, the login is never sent.
    let mut untrusting = WmailNode::new(&unverified);
    untrusting.start().await;
    create(&untrusting, "example.com", &["alice@example.com"]).await;
    submit(&untrusting, &["carol@relay.test"], "From: alice@example.com\r\nSubject: no\r\n\r\nx\r\n", "[], []");
    let entry = first_entry_once_attempted(&untrusting).await;
    let reply = entry["recipients"][0]["reply"].as_str().unwrap();
    assert!(reply.starts_with("451 4.7.5") && reply.contains("TLS"), "{entry}");
    assert_eq!(wait_for_inbox(&relay, "carol@relay.test", 1).await.len(), 1, "only the verified relay delivered");
}

#[tokio::test]
async fn queued_mail_survives_a_down_remote_kill_9_and_operator_actions() {
    let dns = Dnsmasq::start(&sink_dns_records(false)).await;
    let mut sink = MailSink::new(); // not started: connections are refused
    let config = format!(
        "{}\n[delivery]\nremote_port = {}\nretry_schedule = [\"1h\"]\ndelay_notice = \"1s\"\n",
        dns.wmail_config(),
        sink.port
    );
    let mut node = WmailNode::new(&config);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;

    submit(&node, &["later@sink.test"], "From: alice@example.com\r\nSubject: patience\r\n\r\nx\r\n", "[], []");
    // The first attempt fails to connect and is deferred for an hour.
    let entry = first_entry_once_attempted(&node).await;
    let reply = entry["recipients"][0]["reply"].as_str().unwrap_or_default().to_owned();
    assert!(reply.starts_with("451 4.4.1") && reply.contains("refused"), "{reply}");
    assert_eq!(entry["recipients"][0]["status"], "pending");
    let id = entry["id"].as_u64().expect("id");
    let shown = succeeded(node.cli(&["queue", "show", &id.to_string()], None));
    assert!(shown.contains("later@sink.test") && shown.contains("refused"), "{shown}");
    let (_, metrics) = node.get("/metrics").await;
    for line in ["wmail_queue_messages 1", "wmail_outbound_recipients_total{result=\"deferred\"} 1"] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }

    // Retrying after the delay-notice time tells alice once that the mail is late.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    succeeded(node.cli(&["queue", "retry", &id.to_string()], None));
    let reports = wait_for_inbox(&node, "alice@example.com", 1).await;
    assert!(reports[0].contains("Action: delayed\r\nStatus: 4.4.1"), "{}", reports[0]);
    assert!(reports[0].contains("Will-Retry-Until: "), "{}", reports[0]);

    // An operator removes a second message: it is never delivered and not bounced.
    submit(&node, &["unwanted@sink.test"], "From: alice@example.com\r\nSubject: unwanted\r\n\r\nx\r\n", "[], []");
    let deadline = Instant::now() + Duration::from_secs(60);
    let unwanted = loop {
        let page = queue(&node).await;
        if let Some(entry) = page["entries"].as_array().into_iter().flatten().find(|e| e["id"] != id) {
            break entry["id"].as_u64().expect("id");
        }
        assert!(Instant::now() < deadline, "second message not queued: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    succeeded(node.cli(&["queue", "remove", &unwanted.to_string()], None));
    let missing = node.cli(&["queue", "show", &unwanted.to_string()], None);
    assert!(!missing.status.success());

    // kill -9: the queued message survives; once the remote is up it is delivered.
    node.kill9();
    node.start().await;
    assert_eq!(queue(&node).await["total"], 1, "{}", queue(&node).await);
    sink.start().await;
    // `flush` (Postfix's `postqueue -f`) retries everything at once.
    let flushed = succeeded(node.cli(&["queue", "flush"], None));
    assert!(flushed.contains("retrying 1 queued message"), "{flushed}");
    let messages = sink.wait_for_messages(1).await;
    assert_eq!(messages[0].0["to"], json!(["later@sink.test"]));
    assert!(String::from_utf8_lossy(&messages[0].1).contains("Subject: patience"));
    wait_for_empty_queue(&node).await;
    assert_eq!(sink.messages().len(), 1, "the removed message was not sent");
    let (_, metrics) = node.get("/metrics").await;
    for line in [
        "wmail_queue_messages 0",
        "wmail_queue_oldest_age_seconds 0",
        "wmail_outbound_recipients_total{result=\"delivered\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 1, "one delay notice, no bounce");
}

#[tokio::test]
async fn a_delivery_cut_by_kill_9_is_taken_back_at_restart() {
    let dns = Dnsmasq::start(&sink_dns_records(false)).await;
    let mut sink = MailSink::new();
    // The sink holds the data reply long enough to kill the node mid-delivery.
    sink.set_behaviour(json!({ "data_delay": 30 }));
    sink.start().await;
    let config = format!("{}\n[delivery]\nremote_port = {}\n", dns.wmail_config(), sink.port);
    let mut node = WmailNode::new(&config);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    submit(&node, &["cut@sink.test"], "From: alice@example.com\r\nSubject: cut\r\n\r\nx\r\n", "[], []");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.events().contains("data-started") {
        assert!(Instant::now() < deadline, "no data sent: {}", sink.events());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.kill9();
    sink.set_behaviour(json!({}));
    // The entry is still leased to this node (for ten minutes); the restarted node takes
    // it back at once instead of waiting for the lease to lapse.
    node.start().await;
    wait_for_empty_queue(&node).await;
    let delivered = sink.messages();
    assert!(!delivered.is_empty(), "delivered at least once");
    assert!(node.log().contains("taking back outbound deliveries"), "{}", node.log());
}

#[tokio::test]
async fn tls_policies_expiry_notify_never_utf8_and_route_fallback() {
    let mut records = sink_dns_records(false);
    records.push("--mx-host=fallback.test,mx.sink.test,10".to_owned());
    let dns = Dnsmasq::start(&records).await;
    let mut sink = MailSink::new();
    sink.start().await;
    let base = format!("{}\n[delivery]\nremote_port = {}\nretry_schedule = [\"1s\"]\n", dns.wmail_config(), sink.port);

    // A node that requires a verified certificate from sink.test but does not trust the
    // sink's self-signed one: no cleartext fallback, retries, then gives up and bounces.
    let strict = format!("{base}queue_lifetime = \"3s\"\n\n[delivery.tls]\n\"sink.test\" = \"require-verified\"\n");
    let mut node = WmailNode::new(&strict);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    submit(&node, &["x@sink.test"], "From: alice@example.com\r\nSubject: strict\r\n\r\nx\r\n", "[], []");
    submit(
        &node,
        &["y@sink.test"],
        "From: alice@example.com\r\nSubject: silent\r\n\r\nx\r\n",
        r#"[], ["NOTIFY=NEVER"]"#,
    );
    let reports = wait_for_inbox(&node, "alice@example.com", 1).await;
    let report = &reports[0];
    assert!(report.contains("Final-Recipient: rfc822; x@sink.test\r\nAction: failed\r\nStatus: 4.7.5"), "{report}");
    assert!(report.contains("gave up after"), "{report}");
    wait_for_empty_queue(&node).await;
    assert!(sink.messages().is_empty(), "nothing went out unverified:\n{}", sink.events());
    assert!(!sink.events().contains("mail "), "no MAIL over an unverified connection:\n{}", sink.events());
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 1, "NOTIFY=NEVER: no report for y");

    // With the sink's certificate trusted, the same policy delivers; UTF-8 addresses go
    // with SMTPUTF8; a static route whose target is down falls back to the MX.
    let ca = sink.dir.join("cert.pem");
    let trusting = format!(
        "{base}tls_ca_file = {:?}\n\n[delivery.tls]\n\"sink.test\" = \"require-verified\"\n\n[delivery.routes]\n\"fallback.test\" = {{ targets = [\"127.0.0.1:1\"], mx_fallback = true }}\n",
        ca.display().to_string()
    );
    let mut node = WmailNode::new(&trusting);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    submit(&node, &["x@sink.test"], "From: alice@example.com\r\nSubject: verified\r\n\r\nx\r\n", "[], []");
    let messages = sink.wait_for_messages(1).await;
    assert_eq!(messages[0].0["tls"], true);
    submit(&node, &["用户@sink.test"], "From: alice@example.com\r\nSubject: utf8\r\n\r\nx\r\n", r#"["SMTPUTF8"], []"#);
    let messages = sink.wait_for_messages(2).await;
    assert_eq!(messages[1].0["to"], json!(["用户@sink.test"]));
    assert!(messages[1].0["mail_options"].to_string().contains("SMTPUTF8"), "{}", messages[1].0);
    submit(&node, &["z@fallback.test"], "From: alice@example.com\r\nSubject: fallback\r\n\r\nx\r\n", "[], []");
    let messages = sink.wait_for_messages(3).await;
    assert_eq!(messages[2].0["to"], json!(["z@fallback.test"]));
    wait_for_empty_queue(&node).await;
    assert!(inbox(&node, "alice@example.com").await.is_empty(), "no reports: {}", node.log());
}

#[tokio::test]
async fn aliases_forward_to_other_domains_through_the_queue() {
    let dns = Dnsmasq::start(&sink_dns_records(false)).await;
    let mut sink = MailSink::new();
    sink.start().await;
    let config = format!("{}\n[delivery]\nremote_port = {}\n", dns.wmail_config(), sink.port);
    let mut node = WmailNode::new(&config);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    for (alias, targets) in
        [("team@example.com", vec!["alice@example.com", "ext@sink.test"]), ("away@example.com", vec!["far@sink.test"])]
    {
        let (status, body) =
            node.api(Method::POST, "/aliases", Some(json!({ "alias": alias, "targets": targets }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // The domain signs its own users' mail; a stranger's forwarded mail is never signed,
    // even with a forged From: in our domain.
    succeeded(node.cli(&["domain", "dkim", "generate", "example.com", "--algorithm", "ed25519"], None));
    // Inbound mail from another domain, over the MX port, without AUTH.
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SMTP)
s.ehlo("outside.test")
refused = s.sendmail("someone@outside.test", ["team@example.com", "away@example.com"], b"From: ceo@example.com\r\nSubject: hello team\r\n\r\nx\r\n")
assert refused == {}, refused
s.quit()
"#,
    );
    assert!(out.is_empty(), "{out}");
    let local = wait_for_inbox(&node, "alice@example.com", 1).await;
    assert!(local[0].contains("Subject: hello team"));
    let messages = sink.wait_for_messages(1).await;
    let (envelope, body) = &messages[0];
    assert_eq!(envelope["from"], "someone@outside.test", "the envelope sender is kept: {envelope}");
    let mut to: Vec<String> =
        envelope["to"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    to.sort();
    assert_eq!(to, ["ext@sink.test", "far@sink.test"], "one copy per forward, one transaction");
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("Subject: hello team"));
    assert!(!text.contains("DKIM-Signature"), "forwarded mail from a stranger is not signed:\n{text}");
    wait_for_empty_queue(&node).await;
    // Unknown users are still refused.
    assert_mx_refuses_with_550(&node, "nobody@example.com");
}

#[tokio::test]
async fn notify_success_reports_local_deliveries() {
    let mut node = WmailNode::new("");
    node.start().await;
    create(&node, "example.com", &["alice@example.com", "bob@example.com", "carol@example.com"]).await;
    // Alice asks to hear about bob's copy (RFC 3461 NOTIFY=SUCCESS) but not carol's.
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SUBMISSION)
s.starttls(context=ctx)
s.login("alice@example.com", "secret password")
s.mail("alice@example.com", ["ENVID=track-7"])
assert s.rcpt("bob@example.com", ["NOTIFY=SUCCESS", "ORCPT=rfc822;bob@example.com"])[0] == 250
assert s.rcpt("carol@example.com", ["NOTIFY=FAILURE"])[0] == 250
code, _ = s.data(b"From: alice@example.com\r\nSubject: tracked\r\n\r\nx\r\n")
assert code == 250, code
s.quit()
"#,
    );
    assert!(out.is_empty(), "{out}");
    let reports = wait_for_inbox(&node, "alice@example.com", 1).await;
    let report = &reports[0];
    assert!(report.contains("Subject: Successful Mail Delivery Report"), "{report}");
    assert!(report.contains("Original-Envelope-Id: track-7"), "{report}");
    assert!(report.contains("Original-Recipient: rfc822;bob@example.com"), "{report}");
    assert!(
        report.contains("Final-Recipient: rfc822; bob@example.com\r\nAction: delivered\r\nStatus: 2.0.0"),
        "{report}"
    );
    assert!(!report.contains("carol@example.com"), "{report}");
    assert!(report.contains("Subject: tracked"), "the headers are returned: {report}");
    assert_eq!(wait_for_inbox(&node, "bob@example.com", 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 1, "one report");
}

#[tokio::test]
async fn unknown_recipients_of_a_domain_can_be_forwarded_to_its_old_server() {
    // During a migration the old server (here the sink) still holds some mailboxes.
    let mut old_server = MailSink::new();
    old_server.start().await;
    let mut node = WmailNode::new("");
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    let target = format!("127.0.0.1:{}", old_server.port);
    let set = succeeded(node.cli(&["domain", "forward-unknown", "example.com", &target], None));
    assert!(set.contains(&target), "{set}");
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SMTP)
s.ehlo("outside.test")
assert s.sendmail("someone@outside.test", ["alice@example.com", "legacy@example.com"], b"From: someone@outside.test\r\nSubject: both\r\n\r\nx\r\n") == {}
s.quit()
"#,
    );
    assert!(out.is_empty(), "{out}");
    assert_eq!(wait_for_inbox(&node, "alice@example.com", 1).await.len(), 1, "known users stay local");
    let messages = old_server.wait_for_messages(1).await;
    assert_eq!(messages[0].0["to"], json!(["legacy@example.com"]), "the recipient address is kept");
    assert_eq!(messages[0].0["from"], "someone@outside.test");
    wait_for_empty_queue(&node).await;
    // Switched off, unknown users are refused again.
    succeeded(node.cli(&["domain", "forward-unknown", "example.com"], None));
    assert_mx_refuses_with_550(&node, "legacy@example.com");
}

/// Checks a message's ARC chain with dkimpy; returns its chain validation (`pass`, `fail`
/// or `none`) and reason.
async fn arc_verify(node: &WmailNode, domain: &str, message: &[u8]) -> String {
    let check = r#"cv, results, reason = dkim.arc_verify(message, dnsfunc=lookup)
print(cv.decode() if isinstance(cv, bytes) else cv, reason)"#;
    dkimpy(node, domain, message, check).await
}

#[tokio::test]
async fn forwarded_mail_is_arc_sealed_by_the_forwarding_domain() {
    let mut records = sink_dns_records(false);
    records.push("--txt-record=outside.test,v=spf1 ip4:127.0.0.1 -all".into());
    let dns = Dnsmasq::start(&records).await;
    let mut sink = MailSink::new();
    sink.start().await;
    // Inbound checks on (loopback is not trusted here), so the message arrives with our
    // Authentication-Results, whose SPF result the seal carries on.
    let config =
        format!("{}\n[delivery]\nremote_port = {}\n[antispam]\ntrusted_networks = []\n", dns.wmail_config(), sink.port);
    let mut node = WmailNode::new(&config);
    node.start().await;
    create(&node, "example.com", &["alice@example.com"]).await;
    let alias = json!({ "alias": "fwd@example.com", "targets": ["far@sink.test"] });
    assert_eq!(node.api(Method::POST, "/aliases", Some(alias)).await.0, StatusCode::CREATED);
    succeeded(node.cli(&["domain", "dkim", "generate", "example.com", "--algorithm", "rsa"], None));
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SMTP)
s.ehlo("outside.test")
refused = s.sendmail("someone@outside.test", ["fwd@example.com"], b"From: someone@outside.test\r\nSubject: passed on\r\nMessage-ID: <arc@outside.test>\r\n\r\nbody\r\n")
assert refused == {}, refused
s.quit()
"#,
    );
    assert!(out.is_empty(), "{out}");
    let messages = sink.wait_for_messages(1).await;
    let text = String::from_utf8_lossy(&messages[0].1).into_owned();
    // RFC 8617 §4.1: one ARC set, instance 1, no chain before it, signed by example.com.
    assert!(text.starts_with("ARC-Seal: i=1; a=rsa-sha256;") || text.contains("\nARC-Seal: "), "{text}");
    assert!(text.contains("cv=none") && text.contains("d=example.com"), "{text}");
    assert!(
        text.contains("ARC-Message-Signature: i=1;") && text.contains("ARC-Authentication-Results: i=1;"),
        "{text}"
    );
    let aar = &text[text.find("ARC-Authentication-Results:").unwrap()..];
    let aar = &aar[..aar.find("\r\nARC-").or_else(|| aar.find("\r\nReturn-Path")).unwrap_or(aar.len())];
    assert!(aar.contains("spf=pass") && aar.contains("smtp.mailfrom=someone@outside.test"), "{aar}");
    let verdict = arc_verify(&node, "example.com", &messages[0].1).await;
    assert!(verdict.starts_with("pass"), "dkimpy says: {verdict}\n{text}");
    wait_for_empty_queue(&node).await;
}
