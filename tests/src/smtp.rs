//! SMTP end to end: real clients (Python's smtplib, over plaintext, STARTTLS and implicit
//! TLS) and a raw-socket harness for hostile input, smuggling and pipelining.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{WmailNode, python, succeeded};
use crate::smtp_client::RawSmtp;

async fn node_with_accounts(extra_config: &str) -> WmailNode {
    let mut node = WmailNode::new(extra_config);
    node.start().await;
    let (status, _) = node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await;
    assert_eq!(status, StatusCode::CREATED);
    for (address, password) in [("alice@example.com", "alice password"), ("bob@example.com", "bob password")] {
        let body = json!({ "address": address, "password": password });
        assert_eq!(node.api(Method::POST, "/accounts", Some(body)).await.0, StatusCode::CREATED);
    }
    let alias = json!({ "alias": "team@example.com", "targets": ["alice@example.com", "bob@example.com"] });
    assert_eq!(node.api(Method::POST, "/aliases", Some(alias)).await.0, StatusCode::CREATED);
    node
}

async fn inbox(node: &WmailNode, address: &str) -> Vec<Value> {
    let (status, messages) = node.api(Method::GET, &format!("/accounts/{address}/messages"), None).await;
    assert_eq!(status, StatusCode::OK);
    messages.as_array().expect("list").clone()
}

async fn message_text(node: &WmailNode, address: &str, uid: u64) -> String {
    String::from_utf8(node.read_message(address, uid).await).expect("utf-8 message")
}

#[tokio::test]
async fn smtplib_delivers_over_plaintext_starttls_and_implicit_tls() {
    let node = node_with_accounts("").await;
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SMTP)
code, text = s.ehlo("client.test")
assert code == 250 and b"PIPELINING" in text and b"STARTTLS" in text and b"CHUNKING" in text, text
assert b"AUTH" not in text, "no AUTH on the MX port"
refused = s.sendmail("sender@remote.test", ["team@example.com", "Alice+news@Example.com"], b"Subject: to the team\r\n\r\nhello\r\n.leading dot\r\n")
assert refused == {}, refused
s.quit()

s = smtplib.SMTP("127.0.0.1", SUBMISSION)
s.ehlo()
assert not s.has_extn("auth"), "no AUTH before TLS on submission"
s.starttls(context=ctx)
s.ehlo()
assert s.has_extn("auth")
s.login("alice@example.com", "alice password")
assert s.sendmail("alice@example.com", ["bob@example.com"], b"Subject: submitted\r\n\r\nfrom alice\r\n") == {}
s.quit()

s = smtplib.SMTP_SSL("127.0.0.1", SUBMISSIONS, context=ctx)
s.login("bob@example.com", "bob password")
assert s.sendmail("team@example.com", ["alice@example.com"], b"Subject: over 465\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <keep@client.test>\r\n\r\nbody\r\n") == {}
s.quit()
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");

    // The team message reached each account once (alice through the alias and directly).
    let alice = inbox(&node, "alice@example.com").await;
    assert_eq!(alice.len(), 2, "{alice:?}");
    let bob = inbox(&node, "bob@example.com").await;
    assert_eq!(bob.len(), 2, "{bob:?}");
    assert_eq!(alice[0]["blob"], bob[0]["blob"], "one stored body for every recipient");

    let mx = message_text(&node, "alice@example.com", 1).await;
    assert!(mx.starts_with("Return-Path: <sender@remote.test>\r\nReceived: from client.test ([127.0.0.1])"), "{mx}");
    assert!(mx.contains("by mx.test (wmail) with ESMTP\r\n"), "{mx}");
    // smtplib dot-stuffs the line (RFC 5321 §4.5.2), the server removes the stuffing.
    assert!(mx.ends_with("\r\n\r\nhello\r\n.leading dot\r\n"), "dot-unstuffed: {mx}");
    assert!(!mx.contains("Message-ID"), "the MX adds no Message-ID");

    let submitted = message_text(&node, "bob@example.com", 2).await;
    assert!(submitted.contains("with ESMTPSA"), "{submitted}");
    assert!(submitted.contains("(using TLSv1_3 with cipher"), "{submitted}");
    assert!(submitted.contains("(authenticated as alice@example.com)"), "{submitted}");
    assert!(
        submitted.contains("\r\nDate: ") && submitted.contains("\r\nMessage-ID: <"),
        "submission adds them: {submitted}"
    );

    let implicit = message_text(&node, "alice@example.com", 2).await;
    assert!(implicit.contains("Message-ID: <keep@client.test>") && !implicit.contains("@mx.test>"), "{implicit}");
    assert_eq!(implicit.matches("Date:").count(), 1, "{implicit}");
}

#[tokio::test]
async fn lettre_submits_over_starttls_and_implicit_tls() {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let node = node_with_accounts("").await;
    // The node's certificate is self-signed: accept it, as the other client tests do.
    let tls =
        || TlsParameters::builder("localhost".into()).dangerous_accept_invalid_certs(true).build_rustls().unwrap();
    let credentials = Credentials::new("alice@example.com".into(), "alice password".into());
    let transports = [(node.submission.port(), Tls::Required(tls())), (node.submissions.port(), Tls::Wrapper(tls()))];
    for (index, (port, tls)) in transports.into_iter().enumerate() {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .tls(tls)
            .credentials(credentials.clone())
            .build();
        let message = Message::builder()
            .from("Alice <alice@example.com>".parse().unwrap())
            .to("Bob <bob@example.com>".parse().unwrap())
            .subject(format!("lettre {index}"))
            .body(String::from("sent by a Rust client\r\n.a line with a dot\r\n"))
            .unwrap();
        let response = transport.send(message).await.expect("lettre delivers");
        assert!(response.is_positive(), "{response:?}");
    }
    let bob = inbox(&node, "bob@example.com").await;
    assert_eq!(bob.len(), 2);
    let text = message_text(&node, "bob@example.com", 2).await;
    assert!(text.contains("Subject: lettre 1") && text.contains("(authenticated as alice@example.com)"), "{text}");
    assert!(text.contains("\r\n.a line with a dot\r\n"), "{text}");
}

#[tokio::test]
async fn no_open_relay_and_senders_must_own_their_address() {
    let node = node_with_accounts("").await;
    let mut mx = RawSmtp::connect(node.smtp).await;
    mx.command("EHLO attacker.test", 250).await;
    mx.command("MAIL FROM:<spam@attacker.test>", 250).await;
    let relay = mx.command("RCPT TO:<victim@elsewhere.test>", 550).await;
    assert!(relay.text().contains("5.7.1"), "{relay:?}");
    mx.command("RCPT TO:<nobody@example.com>", 550).await;
    mx.command("DATA", 554).await;
    mx.command("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlIHBhc3N3b3Jk", 502).await;
    mx.command("QUIT", 221).await;

    let mut submission = RawSmtp::connect(node.submission).await;
    submission.command("EHLO client.test", 250).await;
    submission.command("MAIL FROM:<alice@example.com>", 530).await;
    // RFC 4954 §6: no AUTH in cleartext.
    submission.command("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlIHBhc3N3b3Jk", 538).await;
    submission.command("QUIT", 221).await;

    // An administrator's send-as grant lets alice send as bob (checked below by the script).
    let grant = node.cli(&["account", "access", "alice@example.com", "--send-as", "bob@example.com"], None);
    assert!(grant.status.success(), "{}", String::from_utf8_lossy(&grant.stderr));
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SUBMISSION)
s.starttls(context=ctx)
s.login("alice@example.com", "alice password")
assert s.sendmail("bob@example.com", ["alice@example.com"], b"Subject: granted\r\n\r\nx\r\n") == {}
s.quit()
"#,
    );
    assert!(out.is_empty(), "{out}");
    // The header From: must be owned too.
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SUBMISSION)
s.starttls(context=ctx)
s.login("alice@example.com", "alice password")
try:
    s.sendmail("alice@example.com", ["alice@example.com"], b"From: The CEO <ceo@example.com>\r\nSubject: pay this\r\n\r\nx\r\n")
    print("spoofed header accepted")
except smtplib.SMTPDataError as e:
    assert e.smtp_code == 553, e
# Nor hidden behind an address of hers in the same field.
try:
    s.sendmail("alice@example.com", ["alice@example.com"], b"From: Alice <alice@example.com>, ceo@example.com\r\nSubject: pay\r\n\r\nx\r\n")
    print("second author accepted")
except smtplib.SMTPDataError as e:
    assert e.smtp_code == 553, e
# A message she resends unchanged (mutt's bounce, Roundcube's redirect, RFC 5322 §3.6.6)
# keeps its author's From: under her Resent-From:; someone else's Resent-From: is refused.
bounced = b"From: Carol <carol@remote.test>\r\nSubject: from carol\r\n\r\nx\r\n"
assert s.sendmail("alice@example.com", ["alice@example.com"], b"Resent-From: Alice <alice@example.com>\r\nResent-To: alice@example.com\r\n" + bounced) == {}
for spoof in [
    b"Resent-From: ceo@example.com\r\n" + bounced,
    # An empty Resent-From: does not hide a From: of someone else here...
    b"Resent-From:\r\nFrom: The CEO <ceo@example.com>\r\nSubject: pay\r\n\r\nx\r\n",
    # ... nor does her own: a From: in a domain hosted here must still be hers.
    b"Resent-From: alice@example.com\r\nFrom: The CEO <ceo@example.com>\r\nSubject: pay\r\n\r\nx\r\n",
    # A From: field without an address is no author at all.
    b"From: The CEO\r\nSubject: pay\r\n\r\nx\r\n",
]:
    try:
        s.sendmail("alice@example.com", ["alice@example.com"], spoof)
        print("spoof accepted: %r" % spoof[:60])
    except smtplib.SMTPDataError as e:
        assert e.smtp_code == 553, e
s.quit()
"#,
    );
    assert!(out.is_empty(), "{out}");
    let revoke = node.cli(&["account", "access", "alice@example.com", "--send-as", "none"], None);
    assert!(revoke.status.success());
    let out = python(
        &node,
        r#"
s = smtplib.SMTP("127.0.0.1", SUBMISSION)
s.starttls(context=ctx)
try:
    s.login("alice@example.com", "wrong password")
    print("logged in with a wrong password")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.login("alice@example.com", "alice password")
try:
    s.sendmail("bob@example.com", ["alice@example.com"], b"Subject: spoof\r\n\r\nx\r\n")
    print("spoofed")
except smtplib.SMTPSenderRefused as e:
    assert e.smtp_code == 553, e
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 2, "only the granted and the resent message");
}

#[tokio::test]
async fn smuggled_end_of_data_sequences_never_end_the_message() {
    let node = node_with_accounts("").await;
    for smuggle in ["\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n", "\r\n.\r"] {
        let mut client = RawSmtp::connect(node.smtp).await;
        client.command("EHLO client.test", 250).await;
        client.start_data("alice@example.com").await;
        let data = format!(
            "Subject: smuggle\r\n\r\nfirst{smuggle}MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
        );
        client.send_raw(data.as_bytes()).await;
        client.expect(250).await;
        client.command("QUIT", 221).await;
    }
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 5);
    assert!(inbox(&node, "bob@example.com").await.is_empty(), "a smuggled second message was delivered");
    let first = message_text(&node, "alice@example.com", 1).await;
    // Content, its bare LFs stored as CRLF (RFC 5321 §2.3.8), as Postfix and Dovecot do.
    assert!(first.contains("first\r\n.\r\nMAIL FROM:<evil@remote.test>"), "the smuggle attempt is content: {first}");
    assert!(!first.contains("\r\r\n") && !first.replace("\r\n", "").contains('\n'), "a bare LF is left: {first:?}");
}

#[tokio::test]
async fn bare_line_feeds_are_stored_as_crlf_and_count_as_sent() {
    let node = node_with_accounts("[smtp]\nmax_message_size = 100000\n").await;
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.start_data("alice@example.com").await;
    // 90,000 bytes as sent: within the limit, though the CRs the server adds make it 135,000.
    let body = "x\n".repeat(44_990);
    client.send_raw(format!("Subject: lf\n\n{body}\r\n.\r\n").as_bytes()).await;
    client.expect(250).await;
    let stored = message_text(&node, "alice@example.com", 1).await;
    assert!(stored.contains("Subject: lf\r\n\r\nx\r\nx\r\n"), "{}", &stored[..200.min(stored.len())]);
    assert!(!stored.replace("\r\n", "").contains('\n'), "a bare LF is left");
}

#[tokio::test]
async fn hostile_and_broken_input_gets_clear_errors() {
    let node = node_with_accounts("[smtp]\nmax_message_size = 100000\n").await;
    let mut client = RawSmtp::connect(node.smtp).await;
    // Out of sequence.
    client.command("MAIL FROM:<a@remote.test>", 503).await;
    client.command("EHLO client.test", 250).await;
    client.command("RCPT TO:<alice@example.com>", 503).await;
    client.command("DATA", 503).await;
    // Malformed lines.
    client.send_raw(format!("NOOP {}\r\n", "x".repeat(2000)).as_bytes()).await;
    let long = client.expect(500).await;
    assert!(long.text().contains("5.5.2"), "{long:?}");
    client.send_raw(b"NOOP\0x\r\n").await;
    client.expect(501).await;
    client.send_raw(b"NOOP a\rb\r\n").await;
    client.expect(501).await;
    client.command("FROBNICATE", 500).await;
    client.command("MAIL FROM:<not an address", 501).await;
    // Declared size over the limit (RFC 1870).
    client.command("MAIL FROM:<a@remote.test> SIZE=200000", 552).await;
    // Pipelined commands after a failed one are each answered.
    client.send_raw(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<alice@example.com>\r\nRSET\r\nNOOP\r\n").await;
    for code in [250, 550, 250, 250, 250] {
        client.expect(code).await;
    }
    // A message over the size limit while streaming: refused, nothing stored.
    client.start_data("alice@example.com").await;
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "0123456789abcdef\r\n".repeat(10_000));
    client.send_raw(big.as_bytes()).await;
    let refused = client.expect(552).await;
    assert!(refused.text().contains("5.3.4"), "{refused:?}");
    // Too many hops.
    client.start_data("alice@example.com").await;
    let looped = format!("{}Subject: loop\r\n\r\nbody\r\n.\r\n", "Received: from x by y; date\r\n".repeat(21));
    client.send_raw(looped.as_bytes()).await;
    let hops = client.expect(554).await;
    assert!(hops.text().contains("5.4.6"), "{hops:?}");
    // Broken MIME is delivered as is: the MTA does not judge MIME.
    client.start_data("alice@example.com").await;
    let broken = "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nno closing boundary\r\n";
    client.send_raw(format!("{broken}.\r\n").as_bytes()).await;
    client.expect(250).await;
    client.command("QUIT", 221).await;
    let messages = inbox(&node, "alice@example.com").await;
    assert_eq!(messages.len(), 1, "only the broken-MIME message: {messages:?}");
    assert!(message_text(&node, "alice@example.com", 1).await.ends_with(broken));

    // A client that disconnects in the middle of DATA: nothing delivered.
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("HELO client.test", 250).await;
    client.start_data("bob@example.com").await;
    client.send_raw(b"Subject: cut\r\n\r\nhalf a messa").await;
    drop(client);
    // RSET flood.
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    for _ in 0..20 {
        client.command("RSET", 250).await;
    }
    client.command("RSET", 421).await;
    assert!(client.is_closed().await);
    // The node is healthy, and the cut message was never delivered.
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.command("QUIT", 221).await;
    assert!(inbox(&node, "bob@example.com").await.is_empty());
    assert!(!node.log().contains("panicked"), "{}", node.log());

    // Every outcome is counted.
    let (_, metrics) = node.get("/metrics").await;
    for expected in [
        "wmail_smtp_messages_total{listener=\"smtp\",outcome=\"too_big\"} 1",
        "wmail_smtp_messages_total{listener=\"smtp\",outcome=\"loop\"} 1",
        "wmail_smtp_messages_total{listener=\"smtp\",outcome=\"accepted\"} 1",
        "wmail_smtp_messages_total{listener=\"smtp\",outcome=\"aborted\"} 1",
        "wmail_smtp_recipients_refused_total{listener=\"smtp\",reason=\"unknown_user\"} 1",
        "wmail_smtp_connections_total{listener=\"smtp\"} 4",
        "wmail_smtp_commit_duration_seconds_count{listener=\"smtp\"} 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
}

#[tokio::test]
async fn pipelining_and_chunking() {
    let node = node_with_accounts("").await;
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    // RFC 2920: the whole transaction in one write.
    client
        .send_raw(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        .await;
    for code in [250, 250, 250, 354] {
        client.expect(code).await;
    }
    client.send_raw(b"Subject: pipelined\r\n\r\nbody\r\n.\r\n").await;
    client.expect(250).await;
    // RFC 3030: BDAT chunks, the last one marked.
    client.send_raw(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.com>\r\n").await;
    client.expect(250).await;
    client.expect(250).await;
    let chunk1 = b"Subject: chunked\r\n\r\nline one\r\n.not stuffed\r\n";
    client.send_raw(format!("BDAT {}\r\n", chunk1.len()).as_bytes()).await;
    client.send_raw(chunk1).await;
    client.expect(250).await;
    let chunk2 = b"line two\r\n";
    client.send_raw(format!("BDAT {} LAST\r\n", chunk2.len()).as_bytes()).await;
    client.send_raw(chunk2).await;
    client.expect(250).await;
    // Review regressions: EHLO in the middle of BDAT abandons the message (nothing stored);
    // RCPT after BDAT is refused; a first data line starting with a dot is unstuffed and an
    // immediate "." ends an empty message.
    client.command("MAIL FROM:<a@remote.test>", 250).await;
    client.command("RCPT TO:<alice@example.com>", 250).await;
    client.send_raw(b"BDAT 10\r\nSubject: x").await;
    client.expect(250).await;
    client.command("RCPT TO:<bob@example.com>", 503).await;
    client.command("EHLO client.test", 250).await;
    client.start_data("alice@example.com").await;
    client.send_raw(b"..first line\r\n.\r\n").await;
    client.expect(250).await;
    client.start_data("alice@example.com").await;
    client.send_raw(b".\r\n").await;
    client.expect(250).await;
    client.command("QUIT", 221).await;
    let alice = inbox(&node, "alice@example.com").await;
    assert_eq!(alice.len(), 3, "pipelined + unstuffed + empty; the abandoned BDAT stored nothing: {alice:?}");
    assert!(message_text(&node, "alice@example.com", 2).await.ends_with("\r\n.first line\r\n"));
    assert!(message_text(&node, "alice@example.com", 3).await.ends_with("+0000\r\n"), "only trace headers");
    let bob = inbox(&node, "bob@example.com").await;
    assert_eq!(bob.len(), 2);
    let chunked = message_text(&node, "bob@example.com", 2).await;
    assert!(
        chunked.ends_with("\r\n\r\nline one\r\n.not stuffed\r\nline two\r\n"),
        "BDAT data is not unstuffed: {chunked}"
    );
}

#[tokio::test]
async fn domain_aliases_and_catch_all_route_mail() {
    let node = node_with_accounts("").await;
    assert!(
        succeeded(node.cli(&["domain", "add", "example.net", "--alias-of", "example.com"], None)).contains("alias")
    );
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.command("MAIL FROM:<a@remote.test>", 250).await;
    client.command("RCPT TO:<alice@example.net>", 250).await;
    client.command("RCPT TO:<unknown@example.com>", 550).await;
    client.command("RCPT TO:<postmaster>", 550).await;
    client.command("RSET", 250).await;
    let alias = json!({ "alias": "postmaster@example.com", "targets": ["alice@example.com"] });
    assert_eq!(node.api(Method::POST, "/aliases", Some(alias)).await.0, StatusCode::CREATED);
    client.command("MAIL FROM:<a@remote.test>", 250).await;
    client.command("RCPT TO:<Postmaster>", 250).await;
    client.command("RSET", 250).await;
    assert!(
        succeeded(node.cli(&["domain", "catch-all", "example.com", "bob@example.com"], None))
            .contains("bob@example.com")
    );
    client.command("MAIL FROM:<a@remote.test>", 250).await;
    client.command("RCPT TO:<alice@example.net>", 250).await;
    client.command("RCPT TO:<unknown@example.net>", 250).await;
    client.command("DATA", 354).await;
    client.send_raw(b"Subject: routed\r\n\r\nx\r\n.\r\n").await;
    client.expect(250).await;
    client.command("QUIT", 221).await;
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 1);
    assert_eq!(inbox(&node, "bob@example.com").await.len(), 1, "the catch-all got the unknown address");
    let listed = succeeded(node.cli(&["domain", "list"], None));
    assert!(
        listed.contains("example.com (catch-all bob@example.com)")
            && listed.contains("example.net (alias of example.com)"),
        "{listed}"
    );
    succeeded(node.cli(&["domain", "catch-all", "example.com"], None));
    let (_, domain) = node.api(Method::GET, "/domains/example.com", None).await;
    assert_eq!(domain["catch_all"], Value::Null);
}

#[tokio::test]
async fn lmtp_answers_once_per_recipient() {
    let node = node_with_accounts("").await;
    let mut client = RawSmtp::connect(node.lmtp).await;
    client.command("EHLO mta.test", 500).await;
    let lhlo = client.command("LHLO mta.test", 250).await;
    assert!(!lhlo.text().contains("AUTH"), "{lhlo:?}");
    client.command("MAIL FROM:<a@remote.test>", 250).await;
    client.command("RCPT TO:<alice@example.com>", 250).await;
    client.command("RCPT TO:<nobody@example.com>", 550).await;
    client.command("RCPT TO:<someone@elsewhere.test>", 550).await;
    client.command("RCPT TO:<bob@example.com>", 250).await;
    client.command("DATA", 354).await;
    client.send_raw(b"Subject: via lmtp\r\n\r\nhello\r\n.\r\n").await;
    // RFC 2033 §4.2: one reply per accepted recipient, in order.
    let first = client.expect(250).await;
    assert!(first.text().contains("alice@example.com"), "{first:?}");
    let second = client.expect(250).await;
    assert!(second.text().contains("bob@example.com"), "{second:?}");
    client.command("QUIT", 221).await;
    assert_eq!(inbox(&node, "alice@example.com").await.len(), 1);
    assert!(message_text(&node, "bob@example.com", 1).await.contains("with LMTP"));
}

#[tokio::test]
async fn vrfy_and_expn_are_off_unless_configured() {
    let node = node_with_accounts("").await;
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.command("VRFY <alice@example.com>", 252).await;
    client.command("VRFY <nobody@example.com>", 252).await;
    client.command("EXPN <team@example.com>", 502).await;
    client.command("QUIT", 221).await;

    let node = node_with_accounts("[smtp]\nvrfy = true\nexpn = true\n").await;
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.command("VRFY <alice@example.com>", 250).await;
    client.command("VRFY <nobody@example.com>", 550).await;
    let members = client.command("EXPN <team@example.com>", 250).await;
    assert!(
        members.text().contains("<alice@example.com>") && members.text().contains("<bob@example.com>"),
        "{members:?}"
    );
    client.command("EXPN <alice@example.com>", 550).await;
    client.command("QUIT", 221).await;
}

#[tokio::test]
async fn dsn_parameters_are_checked_and_unoffered_ones_refused() {
    let node = node_with_accounts("").await;
    let mut client = RawSmtp::connect(node.smtp).await;
    let ehlo = client.command("EHLO client.test", 250).await;
    assert!(ehlo.text().contains("DSN"), "{ehlo:?}");
    // RFC 5321 §4.1.1.11: REQUIRETLS and FUTURERELEASE are not offered.
    client.command("MAIL FROM:<a@remote.test> REQUIRETLS", 555).await;
    client.command("MAIL FROM:<a@remote.test> HOLDFOR=60", 555).await;
    // RFC 3461 §4.3, §4.4.
    client.command("MAIL FROM:<a@remote.test> RET=FULL RET=HDRS", 501).await;
    client.command(&format!("MAIL FROM:<a@remote.test> ENVID={}", "x".repeat(101)), 501).await;
    client.command("MAIL FROM:<a@remote.test> RET=HDRS ENVID=QQ314159 BODY=8BITMIME SMTPUTF8", 250).await;
    // RFC 3461 §4.1: NEVER stands alone.
    client.command("RCPT TO:<alice@example.com> NOTIFY=NEVER,SUCCESS", 501).await;
    client.command("RCPT TO:<alice@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.com", 250).await;
    client.command("QUIT", 221).await;
}

#[tokio::test]
async fn a_250_survives_kill_9() {
    let mut node = node_with_accounts("").await;
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.start_data("alice@example.com").await;
    client.send_raw(b"Subject: durable\r\n\r\nmust survive\r\n.\r\n").await;
    client.expect(250).await;
    node.kill9();
    node.start().await;
    let messages = inbox(&node, "alice@example.com").await;
    assert_eq!(messages.len(), 1);
    assert!(message_text(&node, "alice@example.com", 1).await.ends_with("must survive\r\n"));
}

#[tokio::test]
async fn many_parallel_connections_from_one_address_are_limited_without_harm() {
    let node = node_with_accounts("[smtp]\nmax_connections_per_ip = 20\n").await;
    let address = node.smtp;
    let attempts = futures::future::join_all(
        (0..1_000).map(|_| async move { tokio::net::TcpStream::connect(address).await.ok() }),
    )
    .await;
    // Every client reads its greeting at once (a refused one gets 421 and the close).
    let greeted = futures::future::join_all(attempts.into_iter().flatten().map(|stream| async move {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), reader.read_line(&mut line)).await;
        let code = match read {
            Ok(Ok(_)) => line.get(..3).unwrap_or("eof").to_owned(),
            _ => "timeout".to_owned(),
        };
        (code, reader)
    }))
    .await;
    let mut greetings = std::collections::HashMap::new();
    let mut held = Vec::new();
    for (code, reader) in greeted {
        *greetings.entry(code).or_insert(0) += 1;
        held.push(reader);
    }
    assert_eq!(greetings.get("220"), Some(&20), "{greetings:?}");
    // Every other client is told (421), none is left waiting for a greeting.
    assert_eq!(greetings.get("421").copied().unwrap_or(0), held.len() - 20, "{greetings:?}");
    drop(held);
    // Once the clients are gone the server serves again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (mut client, greeting) = RawSmtp::connect_raw(address).await;
        if greeting.as_ref().is_some_and(|reply| reply.code == 220) {
            client.command("QUIT", 221).await;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the listener did not recover");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_nearly_full_disk_refuses_new_mail_temporarily_and_accepts_it_again_when_there_is_room() {
    let mut node = node_with_accounts("").await;
    node.terminate().await;
    // A reserve larger than any disk: the node starts, serves, and refuses new mail.
    node.env.push(("WMAIL_SERVER_MIN_FREE_DISK_MB".into(), "1000000000".into()));
    node.start().await;
    let (mut smtp, _) = RawSmtp::connect_raw(node.smtp).await;
    smtp.command("EHLO client.test", 250).await;
    let refused = smtp.command("MAIL FROM:<sender@remote.test>", 452).await;
    assert!(refused.text().contains("4.3.1") && refused.text().contains("try again later"), "{}", refused.text());
    smtp.send("QUIT").await;
    let message = b"Subject: disk\r\n\r\nbody\r\n".to_vec();
    let (status, body) = node.deliver("alice@example.com", message.clone()).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let (_, metrics) = node.get("/metrics").await;
    assert!(metrics.contains("wmail_data_disk_available_bytes "), "{metrics}");
    assert!(node.log().contains("the data disk is nearly full"), "{}", node.log());
    // IMAP APPEND is refused the same way (NO, temporary).
    let out = python(
        &node,
        r#"
m = imaplib.IMAP4("127.0.0.1", IMAP)
m.starttls(ssl._create_unverified_context())
m.login("alice@example.com", "alice password")
typ, data = m.append("INBOX", None, None, b"Subject: x\r\n\r\ny\r\n")
print(typ, data)
m.noop()
print("still connected")
"#,
    );
    assert!(
        out.contains("NO [b\"[UNAVAILABLE] this server's disk is nearly full") && out.contains("still connected"),
        "{out}"
    );
    assert!(inbox(&node, "alice@example.com").await.is_empty());

    // With room again (the default reserve), the same node takes mail.
    node.terminate().await;
    node.env.clear();
    node.start().await;
    let (status, body) = node.deliver("alice@example.com", message).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
