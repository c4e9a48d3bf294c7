//! Inbound protection end to end: SPF, DKIM, DMARC and DNSBL answered by a real DNS server
//! (dnsmasq) on 127.0.0.1, messages signed with a test key, content rules, blocked
//! attachments, the Authentication-Results header, and the verdict log API.

use std::net::IpAddr;

use base64::Engine;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::WmailNode;
use crate::peers::Dnsmasq;
use crate::smtp_client::{RawSmtp, SmtpReply};

/// An Ed25519 DKIM key: its PKCS#8 document and the TXT record publishing it (RFC 8463).
fn dkim_key() -> (Vec<u8>, String) {
    use aws_lc_rs::signature::KeyPair;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("decode");
    let public = base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
    (pkcs8.as_ref().to_vec(), format!("v=DKIM1; k=ed25519; p={public}"))
}

fn sign(pkcs8: &[u8], domain: &str, message: &str) -> String {
    let key: DkimKey = Ed25519Key::from_pkcs8_der(pkcs8).expect("mail-auth key").into();
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(message.as_bytes())
        .expect("sign");
    format!("{}{message}", signature.to_header())
}

fn message(from: &str, message_id: &str, subject: &str, body: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <alice@example.com>\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <{message_id}>\r\n\r\n{body}"
    )
}

/// Sends one message; returns the reply that ended the attempt (a refusal at MAIL, RCPT or
/// the final reply to the data).
async fn send(node: &WmailNode, source: &str, mail_from: &str, data: &str) -> SmtpReply {
    let mut client = RawSmtp::connect_from(source.parse::<IpAddr>().expect("ip"), node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.send(&format!("MAIL FROM:<{mail_from}>")).await;
    let reply = client.reply().await.expect("MAIL reply");
    if reply.code != 250 {
        return reply;
    }
    client.command("RCPT TO:<alice@example.com>", 250).await;
    client.command("DATA", 354).await;
    let stuffed = data.replace("\r\n.", "\r\n..");
    client.send_raw(format!("{stuffed}\r\n.\r\n").as_bytes()).await;
    let reply = client.reply().await.expect("final reply");
    client.command("QUIT", 221).await;
    reply
}

/// A started node with `extra_config`, the domain example.com and alice@example.com
/// (password "alice password").
async fn node_with_alice(extra_config: &str) -> WmailNode {
    let mut node = WmailNode::new(extra_config);
    node.start().await;
    assert_eq!(node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0, StatusCode::CREATED);
    let account = json!({ "address": "alice@example.com", "password": "alice password" });
    assert_eq!(node.api(Method::POST, "/accounts", Some(account)).await.0, StatusCode::CREATED);
    node
}

async fn mailbox(node: &WmailNode, name: &str) -> Vec<Value> {
    let path = format!("/accounts/alice@example.com/messages?mailbox={name}");
    let (status, messages) = node.api(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{messages}");
    messages.as_array().expect("list").clone()
}

async fn newest_inbox_text(node: &WmailNode) -> String {
    let inbox = mailbox(node, "INBOX").await;
    let uid = inbox.last().expect("a message")["uid"].as_u64().expect("uid");
    String::from_utf8(node.read_message("alice@example.com", uid).await).expect("utf-8")
}

/// A 2048-bit RSA DKIM key (RFC 6376's usual algorithm): its PKCS#8 document and the TXT
/// record publishing it (longer than one DNS string: see [`txt_record`]).
fn rsa_dkim_key() -> (Vec<u8>, String) {
    use aws_lc_rs::encoding::AsDer;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("generate");
    let private = pair.as_der().expect("PKCS#8").as_ref().to_vec();
    let public = aws_lc_rs::signature::KeyPair::public_key(&pair).as_der().expect("public key");
    let record = format!("v=DKIM1; k=rsa; p={}", base64::engine::general_purpose::STANDARD.encode(public.as_ref()));
    (private, record)
}

/// A dnsmasq `--txt-record` option publishing `value` at `name`, split into strings of at
/// most 200 bytes (one string holds 255 at most; the verifier joins them).
fn txt_record(name: &str, value: &str) -> String {
    let strings: Vec<String> =
        value.as_bytes().chunks(200).map(|chunk| String::from_utf8_lossy(chunk).into()).collect();
    format!("--txt-record={name},{}", strings.join(","))
}

#[tokio::test]
async fn rsa_signed_mail_passes_dkim_and_a_tampered_copy_is_refused() {
    let (key, record) = rsa_dkim_key();
    let dns = Dnsmasq::start(&[
        "--txt-record=rsa.test,v=spf1 ip4:127.0.0.1 -all".into(),
        "--txt-record=_dmarc.rsa.test,v=DMARC1; p=reject".into(),
        txt_record("sel._domainkey.rsa.test", &record),
        "--txt-record=relay.test,v=spf1 ip4:127.0.0.1 -all".into(),
    ])
    .await;
    let config = format!("{}\n[antispam]\ntrusted_networks = []\n", dns.wmail_config());
    let node = node_with_alice(&config).await;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.as_slice());
    let rsa_key: DkimKey = RsaKey::<Sha256>::from_key_der(der.into()).expect("mail-auth RSA key").into();
    let signed = DkimSigner::from_key(rsa_key)
        .domain("rsa.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(message("news@rsa.test", "rsa@rsa.test", "hello", "rsa body\r\n").as_bytes())
        .expect("sign");
    let signed = format!("{}{}", signed.to_header(), message("news@rsa.test", "rsa@rsa.test", "hello", "rsa body\r\n"));
    // Through a relay (SPF passes for relay.test, not aligned with rsa.test), DMARC rests on
    // the RSA signature alone: intact it passes, tampered it fails and p=reject refuses.
    let reply = send(&node, "127.0.0.1", "bounces@relay.test", &signed).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let stored = newest_inbox_text(&node).await;
    assert!(stored.contains("dkim=pass") && stored.contains("header.d=rsa.test"), "{stored}");
    assert!(stored.contains("dmarc=pass"), "{stored}");
    let tampered = signed.replace("rsa body", "RSA body");
    let reply = send(&node, "127.0.0.1", "bounces@relay.test", &tampered).await;
    assert_eq!((reply.code, reply.text().contains("DMARC policy of rsa.test")), (550, true), "{reply:?}");
}

/// The directory of mail-auth's DKIM test vectors (`resources/dkim` in its crate source,
/// found through `cargo metadata`): RFC 8463's example signed with Ed25519 and RSA, and
/// real messages from several signers. Each file is DNS records, a blank line, a message.
fn mail_auth_dkim_vectors() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata");
    let package =
        metadata["packages"].as_array().unwrap().iter().find(|p| p["name"] == "mail-auth").expect("mail-auth");
    let manifest = std::path::PathBuf::from(package["manifest_path"].as_str().unwrap());
    manifest.parent().unwrap().join("resources/dkim")
}

/// mail-auth's public DKIM test vectors through SMTP, their keys served by a real DNS
/// server: every signature that has not expired verifies (`dkim=pass` for its domain).
#[tokio::test]
async fn mail_auth_dkim_test_vectors_pass_through_smtp() {
    let mut files: Vec<_> =
        std::fs::read_dir(mail_auth_dkim_vectors()).expect("vectors").map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut vectors = Vec::new();
    let mut records = vec!["--txt-record=vectors.test,v=spf1 ip4:127.0.0.1 -all".to_owned()];
    for file in &files {
        let text = std::fs::read_to_string(file).expect("vector");
        let (dns, message) = text.split_once("\n\n").expect("records, a blank line, the message");
        // Signatures with an expiry (x=) were valid when recorded, not today.
        if message.contains(" x=") || message.contains(";x=") || message.contains("\tx=") {
            continue;
        }
        for line in dns.lines().filter(|line| !line.trim().is_empty()) {
            let (name, value) = line.split_once(' ').expect("name value");
            records.push(txt_record(name, value));
            // Everything else under the signer's domain is NXDOMAIN (no DMARC record).
            let domain = name.split_once("._domainkey.").expect("a key record").1;
            records.push(format!("--local=/{domain}/"));
        }
        let domains: Vec<String> = message
            .split("DKIM-Signature:")
            .skip(1)
            .filter_map(|signature| {
                let at = signature.find("d=")?;
                let rest = &signature[at + 2..];
                Some(rest[..rest.find(';')?].trim().to_owned())
            })
            .collect();
        vectors.push((file.display().to_string(), message.replace('\n', "\r\n"), domains));
    }
    assert!(vectors.len() >= 4, "too few usable vectors: {files:?}");
    let dns = Dnsmasq::start(&records).await;
    let node = node_with_alice(&format!("{}\n[antispam]\ntrusted_networks = []\n", dns.wmail_config())).await;
    for (name, message, domains) in &vectors {
        let reply = send(&node, "127.0.0.1", "bounces@vectors.test", message.trim_end_matches("\r\n")).await;
        assert_eq!(reply.code, 250, "{name}: {reply:?}");
        let stored = newest_inbox_text(&node).await;
        let results = stored.split("\r\n\r\n").next().unwrap_or_default();
        // One `dkim=pass` per signature, naming its domain (as header.d or header.i).
        let passes: Vec<&str> =
            results.split(';').filter(|result| result.trim_start().starts_with("dkim=pass")).collect();
        assert_eq!(passes.len(), domains.len(), "{name}:\n{results}");
        for domain in domains {
            assert!(
                passes.iter().any(|pass| pass.contains(domain.as_str())),
                "{name}: {domain} did not pass:\n{results}"
            );
        }
        assert!(!results.contains("dkim=fail"), "{name}:\n{results}");
    }
}

#[tokio::test]
async fn sender_authentication_dnsbl_and_content_rules_decide_with_real_dns() {
    let (good_key, good_record) = dkim_key();
    let (other_key, _) = dkim_key();
    let dns = Dnsmasq::start(&[
        "--txt-record=good.test,v=spf1 ip4:127.0.0.1 -all".into(),
        "--txt-record=_dmarc.good.test,v=DMARC1; p=reject".into(),
        format!("--txt-record=sel._domainkey.good.test,{good_record}"),
        "--txt-record=forged.test,v=spf1 ip4:192.0.2.1 -all".into(),
        "--txt-record=_dmarc.forged.test,v=DMARC1; p=reject".into(),
        "--txt-record=quarantined.test,v=spf1 ip4:192.0.2.1 -all".into(),
        "--txt-record=_dmarc.quarantined.test,v=DMARC1; p=quarantine".into(),
        "--txt-record=relay.test,v=spf1 ip4:127.0.0.1 -all".into(),
        // 127.0.0.2 is listed (RFC 5782 §5 test entry form), 127.0.0.1 is not.
        "--host-record=2.0.0.127.bl.test,127.0.0.2".into(),
    ])
    .await;
    let config = format!(
        r#"{}
[antispam]
trusted_networks = []
dnsbl = [{{ zone = "bl.test", action = "reject" }}]
keywords = ["miracle cure"]
keyword_score = 5.5

[[antispam.rules]]
name = "PILLS_SUBJECT"
header = "Subject"
pattern = "(?i)cheap\\s+pills"
score = 20.0
"#,
        dns.wmail_config()
    );
    let mut node = node_with_alice(&config).await;

    // A signed message from an SPF-authorised client passes everything, and a forged
    // Authentication-Results header claiming to be this server is dropped.
    let signed =
        sign(&good_key, "good.test", &message("news@good.test", "signed@good.test", "hello", "signed body\r\n"));
    let forged_results = format!("Authentication-Results: mx.test; dkim=pass (forged by the sender)\r\n{signed}");
    let reply = send(&node, "127.0.0.1", "news@good.test", &forged_results).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let stored = newest_inbox_text(&node).await;
    assert!(stored.contains("Authentication-Results: mx.test;"), "{stored}");
    assert!(stored.contains("dkim=pass"), "{stored}");
    assert!(stored.contains("spf=pass"), "{stored}");
    assert!(stored.contains("dmarc=pass"), "{stored}");
    assert!(!stored.contains("forged by the sender"), "a foreign claim under our authserv-id survives: {stored}");
    assert!(stored.contains("X-Spam-Status: No"), "{stored}");
    assert!(stored.starts_with("Return-Path: <news@good.test>\r\nReceived: from client.test"), "{stored}");

    // The same signature over a changed body fails; sent through a relay whose own SPF
    // passes but does not align with good.test, DMARC fails and p=reject refuses it.
    let tampered = signed.replace("signed body", "changed body");
    let reply = send(&node, "127.0.0.1", "bounces@relay.test", &tampered).await;
    assert_eq!((reply.code, reply.lines[0].contains("5.7.1")), (550, true), "{reply:?}");
    assert!(reply.text().contains("DMARC policy of good.test"), "{reply:?}");
    // Signed with a key good.test never published: also a DKIM failure.
    let wrong_key = sign(&other_key, "good.test", &message("news@good.test", "wrongkey@good.test", "hi", "body\r\n"));
    let reply = send(&node, "127.0.0.1", "bounces@relay.test", &wrong_key).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    // The untampered message through the same relay passes on its DKIM signature alone.
    let relayed = sign(&good_key, "good.test", &message("news@good.test", "relayed@good.test", "hi", "body\r\n"));
    assert_eq!(send(&node, "127.0.0.1", "bounces@relay.test", &relayed).await.code, 250);

    // A forged sender (SPF fail, no signature) is refused by its domain's DMARC policy.
    let forged = message("ceo@forged.test", "forged@forged.test", "wire money", "now\r\n");
    let reply = send(&node, "127.0.0.1", "ceo@forged.test", &forged).await;
    assert_eq!(reply.code, 550, "{reply:?}");

    // p=quarantine: accepted, filed in Junk, marked as spam.
    let before = mailbox(&node, "INBOX").await.len();
    let quarantined = message("x@quarantined.test", "q@quarantined.test", "offer", "body\r\n");
    assert_eq!(send(&node, "127.0.0.1", "x@quarantined.test", &quarantined).await.code, 250);
    assert_eq!(mailbox(&node, "INBOX").await.len(), before, "not in the INBOX");
    let junk = mailbox(&node, "Junk").await;
    assert_eq!(junk.len(), 1, "{junk:?}");

    // A client listed by the DNSBL is refused at MAIL FROM.
    let reply = send(&node, "127.0.0.2", "news@good.test", "unused").await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text().contains("bl.test"), "{reply:?}");

    // Content: a rule over the reject threshold refuses; a keyword tags and prefixes the
    // subject; an executable attachment (renamed .txt, or a .exe inside a zip) is refused.
    let pills = message("news@good.test", "pills@good.test", "Cheap   PILLS", "buy\r\n");
    let reply = send(&node, "127.0.0.1", "news@good.test", &pills).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text().contains("spam"), "{reply:?}");
    let cure = message("news@good.test", "cure@good.test", "news", "a Miracle Cure for all\r\n");
    assert_eq!(send(&node, "127.0.0.1", "news@good.test", &cure).await.code, 250);
    let stored = newest_inbox_text(&node).await;
    assert!(stored.contains("Subject: [SPAM] news\r\n"), "{stored}");
    assert!(stored.contains("X-Spam-Flag: YES\r\n"), "{stored}");
    assert!(stored.contains("KEYWORD"), "{stored}");
    for (name, content) in [("invoice.txt", b"MZ\x90\x00 program".to_vec()), ("docs.zip", zip_with("setup.exe"))] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&content);
        let body = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
--b\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b--\r\n"
        );
        let with_attachment = format!(
            "From: <news@good.test>\r\nSubject: attachment\r\nMessage-ID: <{name}@good.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n{body}"
        );
        let reply = send(&node, "127.0.0.1", "news@good.test", &with_attachment).await;
        assert_eq!(reply.code, 550, "{name}: {reply:?}");
        assert!(reply.text().contains("attachment refused"), "{reply:?}");
    }

    // Every verdict is in the log: by Message-ID and by sender, newest first.
    let (status, found) = node.api(Method::GET, "/security/verdicts?message_id=forged@forged.test", None).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let verdicts = found["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 1, "{found}");
    assert_eq!(verdicts[0]["verdict"]["action"]["action"], "refuse", "{found}");
    let checks = verdicts[0]["verdict"]["checks"].to_string();
    assert!(checks.contains("DMARC") && checks.contains("policy=reject"), "{checks}");
    let (_, by_sender) = node.api(Method::GET, "/security/verdicts?sender=bounces@relay.test", None).await;
    let by_sender = by_sender["verdicts"].as_array().expect("verdicts").clone();
    assert_eq!(by_sender.len(), 3, "{by_sender:?}");
    assert_eq!(by_sender[0]["message_id"], "relayed@good.test", "newest first: {by_sender:?}");
    node.terminate().await;
}

/// A zip archive holding one entry named `name` that is a (tiny) Windows program.
fn zip_with(name: &str) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    writer.start_file(name, options).expect("zip entry");
    writer.write_all(b"MZ\x90\x00 a program").expect("zip data");
    writer.finish().expect("zip").into_inner()
}

#[tokio::test]
async fn clamd_refuses_a_virus_and_its_failure_defers_mail() {
    let mut clamd = crate::peers::Clamd::start().await;
    let dns = Dnsmasq::start(&["--txt-record=good.test,v=spf1 ip4:127.0.0.1 -all".into()]).await;
    let config = format!("{}{}[antispam]\ntrusted_networks = []\n", dns.wmail_config(), clamd.wmail_config());
    let mut node = node_with_alice(&config).await;

    let clean = message("news@good.test", "clean@good.test", "clean", "nothing to see\r\n");
    assert_eq!(send(&node, "127.0.0.1", "news@good.test", &clean).await.code, 250);
    assert!(newest_inbox_text(&node).await.contains("X-Virus-Scanned: clamd (clean)"));

    // The EICAR string in a base64 attachment: clamd decodes the MIME part and finds it.
    let encoded = base64::engine::general_purpose::STANDARD.encode(crate::peers::Clamd::EICAR);
    let infected = format!(
        "From: <news@good.test>\r\nSubject: invoice\r\nMessage-ID: <virus@good.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
Content-Type: application/octet-stream; name=\"eicar.bin.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b--\r\n"
    );
    let reply = send(&node, "127.0.0.1", "news@good.test", &infected).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text().contains("virus (Wmail.Test.EICAR"), "{reply:?}");
    assert_eq!(mailbox(&node, "INBOX").await.len(), 1, "the infected message is not stored");

    // clamd down: the default is a temporary failure, so the sender retries later.
    clamd.stop();
    let reply = send(&node, "127.0.0.1", "news@good.test", &clean.replace("clean@", "later@")).await;
    assert_eq!(reply.code, 451, "{reply:?}");
    let (_, found) = node.api(Method::GET, "/security/verdicts?message_id=virus@good.test", None).await;
    assert_eq!(found["verdicts"][0]["verdict"]["action"]["code"], 550, "{found}");
    node.terminate().await;
}

#[tokio::test]
async fn a_message_over_the_scan_limit_still_streams_through_clamd() {
    let mut clamd = crate::peers::Clamd::start().await;
    let dns = Dnsmasq::start(&["--txt-record=good.test,v=spf1 ip4:127.0.0.1 -all".into()]).await;
    // Content checks hold at most 1 MiB; messages up to 4 MB are accepted.
    let config = format!(
        "{}{}[smtp]\nmax_message_size = 4000000\n[antispam]\ntrusted_networks = []\nmax_scan_size_mb = 1\nscan_memory_mb = 4\n",
        dns.wmail_config(),
        clamd.wmail_config()
    );
    let mut node = node_with_alice(&config).await;
    let filler = "the quarterly figures are attached as promised\r\n".repeat(40_000); // ~1.9 MB
    let big = |id: &str, attachment: &str| {
        format!(
            "From: <news@good.test>\r\nSubject: big {id}\r\nMessage-ID: <{id}@good.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{filler}--b\r\n\
Content-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b--\r\n"
        )
    };
    // The virus comes after the first MiB, past what is held: only the stream sees it.
    let eicar = base64::engine::general_purpose::STANDARD.encode(crate::peers::Clamd::EICAR);
    let reply = send(&node, "127.0.0.1", "news@good.test", &big("infected", &eicar)).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text().contains("virus (Wmail.Test.EICAR"), "{reply:?}");
    let clean = base64::engine::general_purpose::STANDARD.encode(b"just numbers 1 2 3");
    assert_eq!(send(&node, "127.0.0.1", "news@good.test", &big("clean", &clean)).await.code, 250);
    assert_eq!(mailbox(&node, "INBOX").await.len(), 1, "only the clean message is stored");
    let (_, found) = node.api(Method::GET, "/security/verdicts?message_id=clean@good.test", None).await;
    let checks = found["verdicts"][0]["verdict"]["checks"].to_string();
    assert!(checks.contains("over the scan limit") && checks.contains("clean (streamed)"), "{found}");
    let (_, found) = node.api(Method::GET, "/security/verdicts?message_id=infected@good.test", None).await;
    assert_eq!(found["verdicts"][0]["verdict"]["action"]["code"], 550, "{found}");

    // clamd down: a big message is deferred like a small one.
    clamd.stop();
    let reply = send(&node, "127.0.0.1", "news@good.test", &big("later", &clean)).await;
    assert_eq!(reply.code, 451, "{reply:?}");
    node.terminate().await;
}

/// A node of a two-node cluster for the shared-state tests.
fn cluster_node(seaweed: &crate::peers::SeaweedFs, extra: &str) -> WmailNode {
    WmailNode::new(&format!("{}{extra}", seaweed.wmail_config()))
}

/// One SMTP attempt up to RCPT: returns the RCPT reply, and if it was accepted, sends a
/// message and returns the final reply as well.
async fn attempt(node: &WmailNode, subject: &str) -> (u16, Option<u16>) {
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.command("MAIL FROM:<someone@remote.test>", 250).await;
    client.send("RCPT TO:<alice@example.com>").await;
    let rcpt = client.reply().await.expect("RCPT reply");
    if rcpt.code != 250 {
        assert!(rcpt.text().contains("4.7.1 greylisted"), "{rcpt:?}");
        return (rcpt.code, None);
    }
    client.command("DATA", 354).await;
    client.send_raw(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes()).await;
    let done = client.reply().await.expect("final reply").code;
    client.command("QUIT", 221).await;
    (rcpt.code, Some(done))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_and_login_blocks_hold_on_every_node() {
    let seaweed = crate::peers::SeaweedFs::start().await;
    let dns = Dnsmasq::start(&[]).await;
    let extra = format!(
        "{}[antispam]\ntrusted_networks = []\nspf = false\n\n[antispam.greylist]\nenabled = true\ndelay_seconds = 2\n\n\
[security]\nmax_login_failures_per_account = 3\n",
        dns.wmail_config()
    );
    let mut first = cluster_node(&seaweed, &extra);
    first.start().await;
    let token: Value =
        serde_json::from_str(&crate::harness::succeeded(first.cli(&["cluster", "token", "--json"], None)))
            .expect("token json");
    let mut second = cluster_node(&seaweed, &extra);
    second.serve_args = vec![
        "--join".into(),
        first.cluster.to_string(),
        "--join-token".into(),
        token["token"].as_str().expect("token").into(),
    ];
    second.start().await;
    assert_eq!(
        first.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0,
        StatusCode::CREATED
    );
    let account = json!({ "address": "alice@example.com", "password": "alice password" });
    assert_eq!(first.api(Method::POST, "/accounts", Some(account)).await.0, StatusCode::CREATED);

    // Greylisting: deferred on the first node, still deferred on the second before the
    // delay, passed on the second after it, and from then on passed at once everywhere.
    assert_eq!(attempt(&first, "one").await, (451, None));
    assert_eq!(attempt(&second, "one").await, (451, None));
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(attempt(&second, "one").await, (250, Some(250)));
    assert_eq!(attempt(&first, "two").await, (250, Some(250)));
    assert_eq!(mailbox(&second, "INBOX").await.len(), 2);
    // Each node logged the verdict of the message it received; asking either shows both.
    let (status, found) = first.api(Method::GET, "/security/verdicts?sender=someone@remote.test", None).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let nodes: std::collections::BTreeSet<u64> =
        found["verdicts"].as_array().expect("verdicts").iter().filter_map(|v| v["node_id"].as_u64()).collect();
    assert_eq!(nodes.len(), 2, "{found}");
    assert_eq!(found["unanswered"], json!([]), "{found}");

    // Three failed IMAP logins on the first node block the account on the second (POP3).
    let out = crate::harness::python(
        &first,
        r#"
for attempt in range(3):
    m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
    try:
        m.login("alice@example.com", "wrong password")
        raise SystemExit("a wrong password was accepted")
    except imaplib.IMAP4.error:
        pass
    m.logout()
"#,
    );
    assert!(out.is_empty(), "{out}");
    let pop3_login = r#"
p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
p.user("alice@example.com")
try:
    p.pass_("alice password")
    print("in")
except poplib.error_proto as e:
    print(e.args[0].decode())
"#;
    let refused = crate::harness::python(&second, pop3_login);
    assert!(refused.contains("too many failed logins"), "{refused}");
    let listed = crate::harness::succeeded(second.cli(&["security", "blocks", "list"], None));
    assert!(listed.contains("account") && listed.contains("alice@example.com"), "{listed}");
    let (status, blocks) = second.api(Method::GET, "/security/blocks", None).await;
    assert_eq!(
        (status, blocks[0]["reason"].as_str().unwrap_or("").contains("3 failed logins")),
        (StatusCode::OK, true)
    );

    // Lifted on the second node, the account logs in on the first again.
    let lifted =
        crate::harness::succeeded(second.cli(&["security", "blocks", "remove", "account", "alice@example.com"], None));
    assert!(lifted.contains("lifted"), "{lifted}");
    assert_eq!(crate::harness::python(&first, pop3_login).trim(), "in");
    let out = crate::harness::succeeded(first.cli(&["security", "blocks", "list"], None));
    assert!(out.contains("no login blocks"), "{out}");
    second.terminate().await;
    first.terminate().await;
}

#[tokio::test]
async fn abuse_limits_spam_traps_sending_budgets_and_connection_rate() {
    let dns = Dnsmasq::start(&[]).await;
    let config = format!(
        "{}[antispam]\ntrusted_networks = []\nspf = false\ntrap_addresses = [\"trap@example.com\"]\n\n\
[smtp]\nmax_recipients_per_hour = 3\nmax_same_subject_per_day = 2\n\n\
[security]\nmax_connections_per_minute_per_ip = 12\nrate_limit_exempt = []\n",
        dns.wmail_config()
    );
    let mut node = WmailNode::new(&config);
    node.start().await;
    assert_eq!(node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0, StatusCode::CREATED);
    for address in ["alice@example.com", "bob@example.com"] {
        let account = json!({ "address": address, "password": "a good password" });
        assert_eq!(node.api(Method::POST, "/accounts", Some(account)).await.0, StatusCode::CREATED);
    }

    // Submission: the fourth recipient within the hour is deferred, and the third message
    // with one subject today is refused.
    let out = crate::harness::python(
        &node,
        r#"
s = smtplib.SMTP_SSL("127.0.0.1", SUBMISSIONS, context=ctx)
s.login("alice@example.com", "a good password")
for n in range(2):
    s.sendmail("alice@example.com", ["bob@example.com"], b"Subject: same\r\n\r\nbody\r\n")
try:
    s.sendmail("alice@example.com", ["bob@example.com"], b"Subject: Same \r\n\r\nbody\r\n")
    raise SystemExit("a third message with one subject was accepted")
except smtplib.SMTPDataError as e:
    assert e.smtp_code == 550 and b"with this subject today" in e.smtp_error, e
s.rset()
s.mail("alice@example.com")
code, text = s.rcpt("bob@example.com")
assert code == 452 and b"recipients per hour" in text, (code, text)
s.quit()
"#,
    );
    assert!(out.is_empty(), "{out}");

    // A spam trap: "no such user", then the client is blocked on connect (554) until
    // the block is lifted.
    let mut client = RawSmtp::connect(node.smtp).await;
    client.command("EHLO client.test", 250).await;
    client.command("MAIL FROM:<spammer@remote.test>", 250).await;
    let trapped = client.command("RCPT TO:<trap@example.com>", 550).await;
    assert!(trapped.text().contains("no such user"), "{trapped:?}");
    client.command("RCPT TO:<alice@example.com>", 550).await;
    let (mut blocked, greeting) = RawSmtp::connect_raw(node.smtp).await;
    let greeting = greeting.expect("a reply");
    assert_eq!(greeting.code, 554, "{greeting:?}");
    // RFC 5321 §3.1: then 503 to everything but QUIT.
    blocked.command("EHLO client.test", 503).await;
    blocked.command("QUIT", 221).await;
    let listed = crate::harness::succeeded(node.cli(&["security", "blocks", "list"], None));
    assert!(listed.contains("client") && listed.contains("127.0.0.1") && listed.contains("spam trap"), "{listed}");
    crate::harness::succeeded(node.cli(&["security", "blocks", "remove", "client", "127.0.0.1"], None));
    RawSmtp::connect(node.smtp).await.command("QUIT", 221).await;

    // The connection rate: 12 a minute from one address on one listener; the next is
    // refused with 421 before any session starts. (Connections so far on the MX
    // listener: 3.)
    let mut refused = None;
    for attempt in 0..12 {
        let (mut client, greeting) = RawSmtp::connect_raw(node.smtp).await;
        let code = greeting.map(|reply| reply.code);
        if code == Some(421) {
            refused = Some(attempt);
            break;
        }
        client.send("QUIT").await;
    }
    assert_eq!(refused, Some(9), "the 13th connection within the minute is refused");
    node.terminate().await;
}

#[tokio::test]
async fn quarantine_holds_releases_deletes_notifies_and_allowed_senders_skip_it() {
    let dns = Dnsmasq::start(&["--txt-record=remote.test,v=spf1 ip4:127.0.0.1 -all".into()]).await;
    let config = format!(
        "{}[antispam]\ntrusted_networks = []\n\n[[antispam.rules]]\nname = \"LOTTERY\"\n\
header = \"Subject\"\npattern = \"(?i)lottery\"\nscore = 11.0\n",
        dns.wmail_config()
    );
    let mut node = node_with_alice(&config).await;
    let cli = |args: &[&str]| crate::harness::succeeded(node.cli(args, None));

    // Two messages over the quarantine threshold are accepted but held.
    for n in 1..=2 {
        let held = message("luck@remote.test", &format!("held{n}@remote.test"), "You won the LOTTERY", "claim\r\n");
        assert_eq!(send(&node, "127.0.0.1", "luck@remote.test", &held).await.code, 250);
    }
    assert!(mailbox(&node, "INBOX").await.is_empty(), "held, not delivered");
    let (status, held) = node.api(Method::GET, "/accounts/alice@example.com/quarantine", None).await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let held = held.as_array().expect("entries").clone();
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(held[0]["subject"], "You won the LOTTERY");
    assert!(held[0]["reason"].as_str().unwrap().contains("spam score 11.0"), "{held:?}");
    let listed = cli(&["quarantine", "list"]);
    assert!(listed.contains("You won the LOTTERY") && listed.contains("luck@remote.test"), "{listed}");

    // The digest lists both, once.
    assert!(cli(&["quarantine", "notify"]).contains("sent 1"));
    assert!(cli(&["quarantine", "notify"]).contains("sent 0"), "already notified");
    let digest = newest_inbox_text(&node).await;
    assert!(digest.contains("2 message(s) held in quarantine"), "{digest}");
    assert!(digest.contains(&format!("#{}", held[1]["id"])) && digest.contains("wmail quarantine release"), "{digest}");

    // Release one (it arrives with the verdict's headers), delete the other.
    let (first, second) = (held[0]["id"].to_string(), held[1]["id"].to_string());
    assert!(cli(&["quarantine", "release", "alice@example.com", &first]).contains("delivered"));
    let released = newest_inbox_text(&node).await;
    assert!(
        released.contains("Subject: [SPAM] You won the LOTTERY") && released.contains("X-Spam-Flag: YES"),
        "{released}"
    );
    // Alice herself, through the user API (HTTP Basic with her own password).
    let user_api = |method: reqwest::Method, path: &str, password: &str| {
        reqwest::Client::new()
            .request(method, format!("http://{}/user/v1{path}", node.http))
            .basic_auth("alice@example.com", Some(password))
    };
    let mine: Value =
        user_api(Method::GET, "/quarantine", "alice password").send().await.unwrap().json().await.unwrap();
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    let wrong = user_api(Method::GET, "/quarantine", "not her password").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let deleted = user_api(Method::DELETE, &format!("/quarantine/{second}"), "alice password").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let third = message("luck@remote.test", "held3@remote.test", "LOTTERY again", "claim\r\n");
    assert_eq!(send(&node, "127.0.0.1", "luck@remote.test", &third).await.code, 250);
    let (_, held) = node.api(Method::GET, "/accounts/alice@example.com/quarantine", None).await;
    let third_id = held[0]["id"].to_string();
    assert!(cli(&["quarantine", "delete", "alice@example.com", &third_id]).contains("deleted"));
    assert!(cli(&["quarantine", "list", "alice@example.com"]).contains("empty"));
    let failed = node.cli(&["quarantine", "release", "alice@example.com", &second], None);
    assert!(!failed.status.success(), "a deleted message cannot be released");

    // An allowed sender skips the thresholds.
    let allowed = user_api(Method::POST, "/allowed-senders", "alice password")
        .json(&json!({ "sender": "Luck@Remote.test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::CREATED);
    assert!(cli(&["quarantine", "allowed", "alice@example.com"]).contains("luck@remote.test"));
    let again = message("luck@remote.test", "allowed@remote.test", "LOTTERY news", "hello\r\n");
    assert_eq!(send(&node, "127.0.0.1", "luck@remote.test", &again).await.code, 250);
    let delivered = newest_inbox_text(&node).await;
    assert!(delivered.contains("Subject: LOTTERY news") && delivered.contains("X-Spam-Status: No"), "{delivered}");
    let (_, found) = node.api(Method::GET, "/security/verdicts?message_id=allowed@remote.test", None).await;
    assert!(found["verdicts"][0]["verdict"]["checks"].to_string().contains("ALLOWED_SENDER"), "{found}");
    node.terminate().await;
}

#[tokio::test]
async fn the_bayes_classifier_learns_from_moves_into_and_out_of_junk() {
    let dns = Dnsmasq::start(&[]).await;
    let config =
        format!("{}[antispam]\ntrusted_networks = []\nspf = false\nbayes_min_messages = 2\n", dns.wmail_config());
    let mut node = node_with_alice(&config).await;

    // Alice files two spam runs into Junk and rescues two newsletters from it.
    let out = crate::harness::python(
        &node,
        r#"
m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
m.login("alice@example.com", "alice password")
spam = [b"Subject: cheap replica watches\r\n\r\nbuy cheap replica watches, rolex discount, order now\r\n",
        b"Subject: replica rolex discount\r\n\r\ncheap watches order now, best replica prices\r\n"]
ham = [b"Subject: project meeting notes\r\n\r\nthe quarterly project meeting agenda and budget review\r\n",
       b"Subject: budget review agenda\r\n\r\nnotes from the project meeting about the quarterly budget\r\n"]
for body in spam:
    m.append("INBOX", None, None, body)
for body in ham:
    m.append("Junk", None, None, body)
m.select("INBOX")
typ, data = m.uid("SEARCH", None, "ALL")
for uid in data[0].split():
    assert m.uid("MOVE", uid, "Junk")[0] == "OK"
m.select("Junk")
typ, data = m.uid("SEARCH", None, "SUBJECT", "project")
typ2, data2 = m.uid("SEARCH", None, "SUBJECT", "budget")
for uid in set(data[0].split() + data2[0].split()):
    assert m.uid("MOVE", uid, "INBOX")[0] == "OK"
m.logout()
"#,
    );
    assert!(out.is_empty(), "{out}");

    // New mail in the same vein is scored by what she taught.
    let spammy =
        message("deals@remote.test", "spammy@remote.test", "cheap rolex", "replica watches discount order now\r\n");
    assert_eq!(send(&node, "127.0.0.1", "deals@remote.test", &spammy).await.code, 250);
    let hammy = message("boss@remote.test", "hammy@remote.test", "meeting", "the project budget agenda\r\n");
    assert_eq!(send(&node, "127.0.0.1", "boss@remote.test", &hammy).await.code, 250);
    let probability = |found: &Value| -> f64 {
        let checks = found["verdicts"][0]["verdict"]["checks"].as_array().expect("checks").clone();
        let bayes = checks.iter().find(|check| check["name"] == "BAYES").unwrap_or_else(|| panic!("no BAYES: {found}"));
        bayes["result"].as_str().unwrap().trim_start_matches("spam probability ").parse().unwrap()
    };
    let (_, found) = node.api(Method::GET, "/security/verdicts?message_id=spammy@remote.test", None).await;
    assert!(probability(&found) > 0.9, "{found}");
    let (_, found) = node.api(Method::GET, "/security/verdicts?message_id=hammy@remote.test", None).await;
    assert!(probability(&found) < 0.1, "{found}");
    node.terminate().await;
}

/// One account teaches its domain's classifier at most 200 messages a day: the 201st move
/// into Junk is not learnt (the node says so in its log).
#[tokio::test]
async fn one_account_s_bayes_lessons_are_capped_per_day() {
    let node = node_with_alice("").await;
    let out = crate::harness::python(
        &node,
        r#"
m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
m.login("alice@example.com", "alice password")
for n in range(205):
    m.append("INBOX", None, None, b"Subject: offer %d\r\n\r\ncheap offer number %d\r\n" % (n, n))
m.select("INBOX")
for first in range(1, 206, 20):
    assert m.uid("MOVE", "%d:%d" % (first, min(first + 19, 205)), "Junk")[0] == "OK"
m.logout()
"#,
    );
    assert!(out.is_empty(), "{out}");
    let log = node.log();
    assert!(log.contains("Bayes lessons of this account are capped for today"), "no cap in the log:\n{log}");
    assert!(log.contains("given=200"), "the cap is 200 lessons:\n{log}");
}

#[tokio::test]
async fn clamd_strip_removes_only_the_infected_attachment() {
    let clamd = crate::peers::Clamd::start().await;
    let dns = Dnsmasq::start(&[]).await;
    let config = format!(
        "{}{}action = \"strip\"\n[antispam]\ntrusted_networks = []\nspf = false\n",
        dns.wmail_config(),
        clamd.wmail_config()
    );
    let mut node = node_with_alice(&config).await;

    let eicar = base64::engine::general_purpose::STANDARD.encode(crate::peers::Clamd::EICAR);
    let notes = base64::engine::general_purpose::STANDARD.encode("meeting notes, all clean");
    let mixed = format!(
        "From: <news@remote.test>\r\nSubject: two files\r\nMessage-ID: <mixed@remote.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n\
Content-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n{notes}\r\n--b\r\nContent-Type: application/octet-stream; name=\"eicar.bin\"\r\n\
Content-Disposition: attachment; filename=\"eicar.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{eicar}\r\n--b--\r\n"
    );
    assert_eq!(send(&node, "127.0.0.1", "news@remote.test", &mixed).await.code, 250);
    let stored = newest_inbox_text(&node).await;
    assert!(stored.contains("The attachment eicar.bin (Wmail.Test.EICAR"), "{stored}");
    assert!(stored.contains("X-Virus-Scanned: clamd (removed: eicar.bin"), "{stored}");
    assert!(stored.contains(&notes) && stored.contains("see attached"), "the clean parts stay: {stored}");
    assert!(!stored.contains(&eicar), "{stored}");
    assert!(stored.trim_end().ends_with("\r\n--b--"), "the MIME structure is intact: {stored}");

    // A virus in the text itself cannot be cut out: refused.
    let in_body =
        message("news@remote.test", "body@remote.test", "inline", &format!("{}\r\n", crate::peers::Clamd::EICAR));
    assert_eq!(send(&node, "127.0.0.1", "news@remote.test", &in_body).await.code, 550);
    node.terminate().await;
}

#[tokio::test]
async fn a_quarantined_virus_is_released_by_an_administrator_only() {
    let clamd = crate::peers::Clamd::start().await;
    let dns = Dnsmasq::start(&[]).await;
    let config = format!(
        "{}{}action = \"quarantine\"\n[antispam]\ntrusted_networks = []\nspf = false\n",
        dns.wmail_config(),
        clamd.wmail_config()
    );
    let mut node = node_with_alice(&config).await;
    let infected =
        message("x@remote.test", "virus@remote.test", "invoice", &format!("{}\r\n", crate::peers::Clamd::EICAR));
    assert_eq!(send(&node, "127.0.0.1", "x@remote.test", &infected).await.code, 250, "held, not refused");
    let (_, held) = node.api(Method::GET, "/accounts/alice@example.com/quarantine", None).await;
    assert!(held[0]["reason"].as_str().unwrap_or("").starts_with("virus"), "{held}");
    let id = held[0]["id"].to_string();
    let by_user = reqwest::Client::new()
        .post(format!("http://{}/user/v1/quarantine/{id}/release", node.http))
        .basic_auth("alice@example.com", Some("alice password"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_user.status(), StatusCode::FORBIDDEN);
    assert!(mailbox(&node, "INBOX").await.is_empty());
    let (status, _) =
        node.api(Method::POST, &format!("/accounts/alice@example.com/quarantine/{id}/release"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "an administrator may");
    assert_eq!(mailbox(&node, "INBOX").await.len(), 1);
    node.terminate().await;
}

#[tokio::test]
async fn the_user_api_counts_failed_logins_per_client_address() {
    let mut node = WmailNode::new("[security]\nmax_login_failures_per_address = 2\n");
    node.start().await;
    assert_eq!(node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0, StatusCode::CREATED);
    let account = json!({ "address": "alice@example.com", "password": "alice password" });
    assert_eq!(node.api(Method::POST, "/accounts", Some(account)).await.0, StatusCode::CREATED);
    let login = |user: &'static str, password: &'static str| {
        let url = format!("http://{}/user/v1/quarantine", node.http);
        async move { reqwest::Client::new().get(url).basic_auth(user, Some(password)).send().await.unwrap() }
    };
    let first = login("alice@example.com", "alice password").await;
    assert_eq!(first.status(), StatusCode::OK);
    // Two different accounts guessed from one address: the address is blocked, so even
    // alice's right password is refused from it (the per-account limit is not reached).
    for user in ["bob@example.com", "carol@example.com"] {
        let guess = login(user, "guess").await;
        assert_eq!(guess.status(), StatusCode::UNAUTHORIZED);
        assert!(guess.headers().get("www-authenticate").is_some_and(|v| v.to_str().unwrap().starts_with("Basic")));
    }
    let blocked = login("alice@example.com", "alice password").await;
    assert_eq!(blocked.status(), StatusCode::UNAUTHORIZED);
    assert!(blocked.text().await.unwrap().contains("too many failed logins"));
    node.terminate().await;
}
