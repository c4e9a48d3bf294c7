//! POP3 end to end with Python's poplib (STLS and implicit TLS) and raw lines for the
//! protocol's corners: the maildrop snapshot, UPDATE at QUIT, exclusive access, UIDL.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{SteppedScript, WmailNode, pop3_message_count, python, succeeded};

async fn node_with_mail() -> WmailNode {
    node_with_mail_and_config("").await
}

async fn node_with_mail_and_config(extra_config: &str) -> WmailNode {
    let mut node = WmailNode::new(extra_config);
    node.start().await;
    assert_eq!(node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0, StatusCode::CREATED);
    let body = json!({ "address": "alice@example.com", "password": "alice password" });
    assert_eq!(node.api(Method::POST, "/accounts", Some(body)).await.0, StatusCode::CREATED);
    for n in 1..=3 {
        let message =
            format!("Subject: message {n}\r\nX-N: {n}\r\n\r\nline one\r\n.starts with a dot\r\nline three\r\n");
        assert_eq!(node.deliver("alice@example.com", message.into_bytes()).await.0, StatusCode::CREATED);
    }
    node
}

async fn inbox_len(node: &WmailNode) -> usize {
    let (_, messages) = node.api(Method::GET, "/accounts/alice@example.com/messages", None).await;
    messages.as_array().expect("list").len()
}

#[tokio::test]
async fn poplib_reads_and_deletes_over_stls_and_implicit_tls() {
    let node = node_with_mail().await;
    let out = python(
        &node,
        r#"
p = poplib.POP3("127.0.0.1", POP3)
caps = p.capa()
assert "STLS" in caps and "USER" not in caps, caps
try:
    p.user("alice@example.com")
    raise SystemExit("USER accepted before TLS")
except poplib.error_proto as e:
    assert b"STLS" in e.args[0], e
p.stls(context=ctx)
assert "USER" in p.capa() and "STLS" not in p.capa()
p.user("alice@example.com")
p.pass_("alice password")
count, size = p.stat()
assert count == 3, (count, size)
uids = [line.split()[1] for line in p.uidl()[1]]
assert len(set(uids)) == 3
response, lines, octets = p.retr(2)
assert b"Subject: message 2" in lines and b".starts with a dot" in lines, lines
response, lines, octets = p.top(1, 1)
assert lines[-1] == b"line one" and b"line three" not in lines, lines
p.dele(1)
try:
    p.retr(1)
    raise SystemExit("RETR of a deleted message")
except poplib.error_proto:
    pass
assert p.stat()[0] == 2
p.rset()
assert p.stat()[0] == 3
p.dele(3)
p.quit()

s = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
s.user("alice@example.com")
s.pass_("alice password")
assert s.stat()[0] == 2
again = [line.split()[1] for line in s.uidl()[1]]
assert again == uids[:2], (again, uids)
s.quit()
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(inbox_len(&node).await, 2, "DELE 3 applied at QUIT, the RSET one not");
}

#[tokio::test]
async fn maildrop_is_exclusive_and_deletes_happen_only_at_quit() {
    let node = node_with_mail().await;
    let out = python(
        &node,
        r#"
first = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
first.user("alice@example.com")
first.pass_("alice password")
second = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
second.user("alice@example.com")
try:
    second.pass_("alice password")
    raise SystemExit("a second session got the maildrop")
except poplib.error_proto as e:
    assert b"[IN-USE]" in e.args[0], e
first.dele(1)
first.dele(2)
# Leave without QUIT: RFC 1939 says no deletions.
first.sock.close()
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(inbox_len(&node).await, 3, "a session that did not QUIT deleted nothing");
    // The lease was released: a new session gets in. A message delivered while it is
    // logged in is not shown until the next session (RFC 1939's fixed maildrop).
    let mut script = SteppedScript::start(
        &node,
        "p = poplib.POP3_SSL('127.0.0.1', POP3S, context=ctx)\np.user('alice@example.com')\np.pass_('alice password')\nprint(p.stat()[0], flush=True)\nsys.stdin.readline()\nprint(p.stat()[0], flush=True)\np.quit()\n",
    );
    assert_eq!(script.checkpoint(), "3");
    assert_eq!(node.deliver("alice@example.com", b"Subject: later\r\n\r\nx\r\n".to_vec()).await.0, StatusCode::CREATED);
    script.resume();
    assert_eq!(script.checkpoint(), "3", "a message delivered after login appeared in the session");
    assert!(script.finish());
    assert_eq!(pop3_message_count(&node, "alice@example.com", "alice password"), "4", "the next session sees it");
}

#[tokio::test]
async fn kill_9_during_a_session_deletes_nothing_and_frees_the_maildrop() {
    let mut node = node_with_mail().await;
    let mut script = SteppedScript::start(
        &node,
        "p = poplib.POP3_SSL('127.0.0.1', POP3S, context=ctx)\np.user('alice@example.com')\np.pass_('alice password')\np.dele(1)\np.dele(2)\nprint('ready', flush=True)\nsys.stdin.readline()\n",
    );
    assert_eq!(script.checkpoint(), "ready");
    node.kill9();
    script.finish();
    node.start().await;
    assert_eq!(inbox_len(&node).await, 3, "marked messages were deleted without QUIT");
    // The dead session's lease does not lock the user out after the restart.
    assert_eq!(pop3_message_count(&node, "alice@example.com", "alice password"), "3");
}

#[tokio::test]
async fn fetchmail_downloads_the_mailbox() {
    let node = node_with_mail().await;
    let dir = tempfile::tempdir().unwrap();
    let delivered = dir.path().join("delivered.mbox");
    let rc = dir.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\npoll 127.0.0.1 protocol POP3 port {} auth password\n  user \"alice@example.com\" there with password \"alice password\" is \"nobody\" here\n  ssl sslproto '' no sslcertck fetchall\n  mda \"/bin/sh -c 'cat >> {}'\"\n",
            node.pop3s.port(),
            delivered.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let output = Command::new("fetchmail")
        .args(["-f", &rc.display().to_string(), "--nodetach", "-v"])
        .env("HOME", dir.path())
        .env("FETCHMAILHOME", dir.path())
        .output()
        .expect("fetchmail (Debian package) is installed by tests/run.sh");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "fetchmail failed:\n{log}");
    let mbox = std::fs::read_to_string(&delivered).unwrap_or_default();
    for n in 1..=3 {
        assert!(mbox.contains(&format!("Subject: message {n}")), "message {n} missing:\n{mbox}\n{log}");
    }
    assert!(mbox.contains("\n.starts with a dot"), "dot-unstuffed by fetchmail: {mbox}");
    assert_eq!(inbox_len(&node).await, 0, "fetchmail deletes what it downloaded");
}

#[tokio::test]
async fn curl_lists_and_retrieves_over_pop3s() {
    let node = node_with_mail().await;
    let base = format!("pop3s://127.0.0.1:{}/", node.pop3s.port());
    let curl = |url: &str| {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--insecure", "--user", "alice@example.com:alice password", url])
            .output()
            .expect("curl");
        assert!(output.status.success(), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let listing = curl(&base);
    assert_eq!(listing.lines().count(), 3, "{listing}");
    let message = curl(&format!("{base}2"));
    assert!(message.contains("Subject: message 2") && message.contains("\n.starts with a dot"), "{message}");
}

#[tokio::test]
async fn repeated_failures_lock_the_account_out_for_every_protocol() {
    let mut node = WmailNode::new("[security]\nmax_login_failures_per_account = 3\n");
    node.start().await;
    assert_eq!(node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0, StatusCode::CREATED);
    let body = json!({ "address": "alice@example.com", "password": "alice password" });
    assert_eq!(node.api(Method::POST, "/accounts", Some(body)).await.0, StatusCode::CREATED);
    let out = python(
        &node,
        r#"
import smtplib
for attempt in range(3):
    p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
    p.user("alice@example.com")
    try:
        p.pass_("wrong password")
        raise SystemExit("wrong password accepted")
    except poplib.error_proto:
        pass
    p.quit()
p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
p.user("alice@example.com")
try:
    p.pass_("alice password")
    raise SystemExit("a locked account logged in over POP3")
except poplib.error_proto as e:
    assert b"too many failed logins" in e.args[0], e
"#,
    );
    assert!(out.is_empty(), "{out}");
    // The lock holds for SMTP AUTH too (one guard per node, for every protocol).
    let submission = node.submissions.port();
    let out = python(
        &node,
        &format!(
            r#"
import smtplib
s = smtplib.SMTP_SSL("127.0.0.1", {submission}, context=ctx)
try:
    s.login("alice@example.com", "alice password")
    raise SystemExit("a locked account logged in over SMTP")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
print("ok")
"#
        ),
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn services_can_be_disabled_per_account_and_per_domain() {
    let node = node_with_mail().await;
    let login = "p = poplib.POP3_SSL('127.0.0.1', POP3S, context=ctx)\np.user('alice@example.com')\ntry:\n    p.pass_('alice password')\n    print('in')\nexcept poplib.error_proto as e:\n    print(e.args[0].decode())\n";
    succeeded(node.cli(&["account", "access", "alice@example.com", "--disable", "pop3"], None));
    assert!(python(&node, login).contains("POP3 is disabled"));
    succeeded(node.cli(&["account", "access", "alice@example.com", "--disable", "none"], None));
    assert_eq!(python(&node, login).trim(), "in");
    succeeded(node.cli(&["domain", "services", "example.com", "--disable", "pop3"], None));
    assert!(python(&node, login).contains("POP3 is disabled"), "the domain setting applies to its accounts");
    succeeded(node.cli(&["domain", "services", "example.com", "--disable", "none"], None));
    assert_eq!(python(&node, login).trim(), "in");
    let bad = node.cli(&["account", "access", "alice@example.com", "--disable", "telnet"], None);
    assert_eq!(bad.status.code(), Some(1), "an unknown service is refused");
}

#[tokio::test]
async fn pass_keeps_spaces_in_the_password() {
    let node = node_with_mail().await;
    let body = json!({ "address": "spaces@example.com", "password": " spaced pass " });
    assert_eq!(node.api(Method::POST, "/accounts", Some(body)).await.0, StatusCode::CREATED);
    assert_eq!(pop3_message_count(&node, "spaces@example.com", " spaced pass "), "0");
}

#[tokio::test]
async fn hostile_pop3_input_gets_clear_errors() {
    let node = node_with_mail().await;
    let out = python(
        &node,
        r#"
s = socket.create_connection(("127.0.0.1", POP3))
f = s.makefile("rwb")
def cmd(line):
    f.write(line + b"\r\n"); f.flush()
    return f.readline()
assert f.readline().startswith(b"+OK")
assert cmd(b"STAT").startswith(b"-ERR"), "STAT before login"
assert cmd(b"RETR 1").startswith(b"-ERR")
assert cmd(b"FROBNICATE").startswith(b"-ERR")
assert cmd(b"PASS x").startswith(b"-ERR")
assert cmd(b"NOOP " + b"x" * 2000).startswith(b"-ERR")
assert cmd(b"AUTH PLAIN").startswith(b"-ERR"), "AUTH before TLS"
# Pipelined commands each get their answer.
f.write(b"NOOP\r\nQUIT\r\n"); f.flush()
assert f.readline().startswith(b"-ERR")
assert f.readline().startswith(b"+OK")
s.close()

p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
try:
    p.user("alice@example.com"); p.pass_("wrong")
    raise SystemExit("wrong password accepted")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
import base64
assert p._shortcmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0alice password").decode()).startswith(b"+OK")
for bad in ["RETR 0", "RETR 99", "RETR x", "DELE 4", "LIST -1", "TOP 1", "TOP 1 x"]:
    try:
        p._shortcmd(bad)
        raise SystemExit(bad + " accepted")
    except poplib.error_proto:
        pass
p.quit()
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(inbox_len(&node).await, 3);
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

#[tokio::test]
async fn login_delay_is_advertised_and_enforced_per_account() {
    let node = node_with_mail_and_config("[pop3]\nlogin_delay_seconds = 2\n").await;
    let out = python(
        &node,
        r#"
import time
p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
assert "LOGIN-DELAY" in p.capa() and p.capa()["LOGIN-DELAY"] == ["2"], p.capa()
p.user("alice@example.com")
p.pass_("alice password")
p.quit()
again = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
again.user("alice@example.com")
try:
    again.pass_("alice password")
    raise SystemExit("a login within LOGIN-DELAY was accepted")
except poplib.error_proto as e:
    assert e.args[0].startswith(b"-ERR [LOGIN-DELAY]"), e
again.quit()
time.sleep(2.2)
late = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
late.user("alice@example.com")
late.pass_("alice password")
assert late.stat()[0] == 3
late.quit()
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn a_slow_download_keeps_the_maildrop_locked_past_the_lease() {
    // A 3-second lease and a download that takes about three times as long: the session
    // renews its lease while it sends, so a second login stays locked out throughout.
    let node = node_with_mail_and_config("[pop3]\nmaildrop_lease_seconds = 3\n").await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for line in 0..150_000 {
        big.extend_from_slice(format!("line {line:06} of a message that takes a while to download\r\n").as_bytes());
    }
    assert_eq!(node.deliver("alice@example.com", big.clone()).await.0, StatusCode::CREATED);
    let out = python(
        &node,
        r#"
import threading, time
slow = socket.create_connection(("127.0.0.1", POP3S))
slow = ctx.wrap_socket(slow, server_hostname="mx.test")
slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
f = slow.makefile("rb")
f.readline()
for command in [b"USER alice@example.com", b"PASS alice password", b"RETR 4"]:
    slow.sendall(command + b"\r\n")
    assert f.readline().startswith(b"+OK"), command
results = []
def second_login():
    for _ in range(3):
        time.sleep(2.5)
        p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
        p.user("alice@example.com")
        try:
            p.pass_("alice password")
            results.append("got the maildrop")
            p.quit()
        except poplib.error_proto as e:
            results.append(e.args[0][:12].decode())
            p.quit()
checker = threading.Thread(target=second_login)
checker.start()
received = 0
started = time.time()
while True:
    line = f.readline()
    if line in (b".\r\n", b""):
        break
    received += len(line)
    if received % (64 * 1024) < 80:
        time.sleep(0.05)
elapsed = time.time() - started
checker.join()
slow.sendall(b"QUIT\r\n")
assert line == b".\r\n", "the download was cut off"
assert elapsed > 7, "the download was too fast to test the lease (%.1f s)" % elapsed
assert results == ["-ERR [IN-USE"] * 3, results
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}
