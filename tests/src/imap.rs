//! IMAP end to end: Python's imaplib (implicit TLS and STARTTLS), curl, and a raw-socket
//! client that sends exact lines and reads exact responses, for the protocol's corners:
//! mailbox management, APPEND and FETCH byte for byte, STORE with CONDSTORE, SEARCH/SORT/
//! THREAD, COPY/MOVE/EXPUNGE, two sessions on one mailbox, IDLE, QRESYNC, QUOTA, hostile
//! input, kill -9 durability and the INBOX shared with POP3.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{SteppedScript, WmailNode, python};

pub(crate) const ALICE: &str = "alice@example.com";
pub(crate) const PASSWORD: &str = "password";

/// Python helpers every script gets after [`crate::harness::python_prelude`]: `Raw`, a line-exact IMAP
/// client over (by default) implicit TLS, and parsers for its responses.
pub(crate) const HELPERS: &str = r#####"
import re, base64, time, threading

ALICE = "alice@example.com"
PASSWORD = "password"
LITERAL = re.compile(rb"~?\{(\d+)\}\r\n")

def q(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

def literals(resp):
    """The literals of a response, in order."""
    out, pos = [], 0
    while True:
        m = LITERAL.search(resp, pos)
        if not m:
            return out
        end = m.end() + int(m.group(1))
        out.append(resp[m.end():end])
        pos = end

def item(resp, label):
    """The literal that follows `label` (bytes, e.g. b"BODY[TEXT]") in a FETCH response."""
    m = re.search(re.escape(label) + rb" ~?\{(\d+)\}\r\n", resp)
    assert m, (label, resp)
    return resp[m.end():m.end() + int(m.group(1))]

def flags(resp):
    """The FLAGS of a FETCH response, without the rev1 session flag Recent."""
    m = re.search(rb"FLAGS \(([^)]*)\)", resp)
    assert m, resp
    return set(m.group(1).decode().split()) - {"\\Recent"}

def modseq_of(resp):
    m = re.search(rb"MODSEQ \((\d+)\)", resp)
    assert m, resp
    return int(m.group(1))

def uid_of(resp):
    m = re.search(rb"UID (\d+)", resp)
    assert m, resp
    return int(m.group(1))

def numbers(untagged, kind="SEARCH"):
    """The numbers of the one `* SEARCH` (or `* SORT`) response."""
    prefix = ("* %s" % kind).encode()
    lines = [u for u in untagged if u == prefix + b"\r\n" or u.startswith(prefix + b" ")]
    assert len(lines) == 1, untagged
    text = re.sub(r"\(MODSEQ \d+\)", "", lines[0].decode()[len(prefix):])
    return [int(n) for n in text.split()]

def code(untagged, name):
    """The number in the `* OK [NAME n]` response."""
    for u in untagged:
        m = re.match(rb"\* OK \[" + name.encode() + rb" (\d+)\]", u)
        if m:
            return int(m.group(1))
    raise AssertionError("no %s in %r" % (name, untagged))

def fetches(untagged):
    """Message number -> its FETCH responses (joined when there are several)."""
    out = {}
    for u in untagged:
        m = re.match(rb"\* (\d+) FETCH ", u)
        if m:
            out[int(m.group(1))] = out.get(int(m.group(1)), b"") + u
    return out

def apply_expunges(uids, untagged):
    """The client's view (UIDs by message number) after the EXPUNGE responses."""
    uids = list(uids)
    for u in untagged:
        m = re.match(rb"\* (\d+) EXPUNGE\r\n", u)
        if m:
            del uids[int(m.group(1)) - 1]
    return uids

def sized(size, subject="padding"):
    """A message of exactly `size` octets."""
    head = ("Subject: %s\r\n\r\n" % subject).encode()
    pad = size - len(head)
    body = (b"y" * 98 + b"\r\n") * (pad // 100) + b"y" * (pad % 100 - 2) + b"\r\n"
    assert pad % 100 >= 2 and len(head + body) == size
    return head + body

class Raw:
    """One IMAP connection driven line by line."""

    def __init__(self, port=None, tls=True, user=ALICE, password=PASSWORD):
        sock = socket.create_connection(("127.0.0.1", port or IMAPS), timeout=20)
        self.sock = ctx.wrap_socket(sock) if tls else sock
        self.buf = b""
        self.n = 0
        self.tag = None
        self.greeting = self.response()
        assert self.greeting.startswith(b"* OK"), self.greeting
        if user:
            self.ok("LOGIN %s %s" % (q(user), q(password)))

    def fill(self):
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self):
        """One whole response, its literals inlined."""
        out = b""
        while True:
            line = self.line()
            out += line
            m = re.search(rb"~?\{(\d+)\}\r\n$", line)
            if not m:
                return out
            out += self.exact(int(m.group(1)))

    def wait_for(self, wanted, seconds):
        """Reads responses until `wanted` arrives; fails after `seconds`."""
        deadline = time.time() + seconds
        seen = []
        try:
            while time.time() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.time()))
                resp = self.response()
                if resp == wanted:
                    return seen
                seen.append(resp)
        except (socket.timeout, TimeoutError):
            pass
        finally:
            self.sock.settimeout(20)
        raise AssertionError("%r did not arrive within %s s; got %r" % (wanted, seconds, seen))

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def start(self, command):
        self.n += 1
        self.tag = "T%d" % self.n
        command = command.encode() if isinstance(command, str) else command
        self.send(self.tag.encode() + b" " + command + b"\r\n")
        return self.tag

    def finish(self, tag):
        """Reads up to the tagged response: (untagged responses, status text after the tag)."""
        untagged = []
        while True:
            resp = self.response()
            if resp.startswith(tag.encode() + b" "):
                return untagged, resp[len(tag) + 1:].decode("utf-8", "replace").rstrip("\r\n")
            untagged.append(resp)

    def cmd(self, command):
        return self.finish(self.start(command))

    def ok(self, command):
        untagged, status = self.cmd(command)
        assert status.startswith("OK"), (command, status, untagged)
        return untagged

    def append(self, mailbox, message, flags=None, date=None):
        """APPEND with a synchronising literal: (untagged, status); a refusal instead of
        the continuation request is returned as is."""
        args = q(mailbox)
        if flags is not None:
            args += " (%s)" % flags
        if date:
            args += " " + q(date)
        tag = self.start("APPEND %s {%d}" % (args, len(message)))
        first = self.response()
        if not first.startswith(b"+"):
            assert first.startswith(tag.encode() + b" "), first
            return [], first[len(tag) + 1:].decode().rstrip("\r\n")
        self.send(message + b"\r\n")
        return self.finish(tag)

    def close(self):
        self.sock.close()

def appenduid(status):
    m = re.match(r"OK \[APPENDUID (\d+) (\d+)\]", status)
    assert m, status
    return int(m.group(1)), int(m.group(2))

def imaps():
    m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
    m.login(ALICE, PASSWORD)
    return m
"#####;

/// Runs `script` with [`HELPERS`] against `node`; panics with its output when it fails.
pub(crate) fn imap(node: &WmailNode, script: &str) -> String {
    python(node, &format!("{HELPERS}{script}"))
}

/// A node with example.com and alice@example.com (optionally with a storage quota).
pub(crate) async fn node_with_account(extra_config: &str, quota_bytes: Option<u64>) -> WmailNode {
    let mut node = WmailNode::new(extra_config);
    node.start().await;
    add_example_com_and_alice(&node, quota_bytes).await;
    node
}

/// Creates example.com and alice on a running node.
async fn add_example_com_and_alice(node: &WmailNode, quota_bytes: Option<u64>) {
    let (status, body) = node.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut account = json!({ "address": ALICE, "password": PASSWORD });
    if let Some(quota) = quota_bytes {
        account["quota_bytes"] = json!(quota);
    }
    let (status, body) = node.api(Method::POST, "/accounts", Some(account)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Delivers `count` small messages ("message 1", ...) to alice's INBOX over the API.
async fn deliver_numbered(node: &WmailNode, count: usize) {
    for n in 1..=count {
        let message = format!("From: sender@remote.test\r\nTo: {ALICE}\r\nSubject: message {n}\r\n\r\nbody {n}\r\n");
        let (status, body) = node.deliver(ALICE, message.into_bytes()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

#[tokio::test]
async fn login_over_imaps_and_starttls_and_no_credentials_in_cleartext() {
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
# imaplib over implicit TLS.
m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
assert "AUTH=PLAIN" in m.capabilities and "SASL-IR" in m.capabilities, m.capabilities
assert "LOGINDISABLED" not in m.capabilities and "STARTTLS" not in m.capabilities, m.capabilities
typ, data = m.login(ALICE, PASSWORD)
assert typ == "OK", data
assert m.select("INBOX")[0] == "OK"
m.logout()

# imaplib over STARTTLS: no credentials before TLS, then LOGIN works.
m = imaplib.IMAP4("127.0.0.1", IMAP)
assert "STARTTLS" in m.capabilities and "LOGINDISABLED" in m.capabilities, m.capabilities
assert "AUTH=PLAIN" not in m.capabilities, m.capabilities
m.starttls(ssl_context=ctx)
assert "LOGINDISABLED" not in m.capabilities and "STARTTLS" not in m.capabilities, m.capabilities
assert "AUTH=PLAIN" in m.capabilities, m.capabilities
assert m.login(ALICE, PASSWORD)[0] == "OK"
assert m.select("INBOX")[0] == "OK"
m.logout()

# The exact refusals on the plain port before STARTTLS.
r = Raw(port=IMAP, tls=False, user=None)
assert b"LOGINDISABLED" in r.greeting and b"STARTTLS" in r.greeting, r.greeting
untagged = r.ok("CAPABILITY")
assert len(untagged) == 1 and b" LOGINDISABLED" in untagged[0] and b"AUTH=PLAIN" not in untagged[0], untagged
status = r.cmd("LOGIN %s %s" % (q(ALICE), q(PASSWORD)))[1]
assert status.startswith("NO [PRIVACYREQUIRED]"), status
status = r.cmd("AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice@example.com\0password").decode())[1]
assert status.startswith("NO [PRIVACYREQUIRED]"), status
status = r.cmd("SELECT INBOX")[1]
assert status.startswith("BAD"), status
r.ok("LOGOUT")

# Commands pipelined in cleartext after STARTTLS are never run inside TLS (CVE-2011-0411).
s = socket.create_connection(("127.0.0.1", IMAP), timeout=20)
f = s.makefile("rb")
assert f.readline().startswith(b"* OK")
s.sendall(b"S1 STARTTLS\r\nS2 CAPABILITY\r\n")
line = f.readline()
assert line.startswith(b"S1 OK"), line
tls = ctx.wrap_socket(s)
tls.sendall(b"S3 NOOP\r\n")
got = b""
while b"S3 " not in got:
    data = tls.recv(4096)
    if not data:
        break
    got += data
assert got.startswith(b"S3 OK"), "a command sent before the TLS handshake ran inside TLS: %r" % got
tls.close()

# Wrong credentials over TLS.
r = Raw(user=None)
assert b"AUTH=PLAIN" in r.greeting and b"SASL-IR" in r.greeting, r.greeting
status = r.cmd("LOGIN %s %s" % (q(ALICE), q("wrong password")))[1]
assert status.startswith("NO [AUTHENTICATIONFAILED]"), status
status = r.cmd("LOGIN %s %s" % (q("nobody@example.com"), q(PASSWORD)))[1]
assert status.startswith("NO [AUTHENTICATIONFAILED]"), status
status = r.cmd("AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice@example.com\0wrong").decode())[1]
assert status.startswith("NO [AUTHENTICATIONFAILED]"), status
status = r.cmd("SELECT INBOX")[1]
assert status.startswith("BAD"), "still not authenticated: " + status

# AUTHENTICATE PLAIN with an initial response (SASL-IR).
status = r.cmd("AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice@example.com\0password").decode())[1]
assert status.startswith("OK [CAPABILITY "), status
assert "AUTH=PLAIN" not in status and "LOGINDISABLED" not in status, status
r.ok("SELECT INBOX")
status = r.cmd("LOGIN %s %s" % (q(ALICE), q(PASSWORD)))[1]
assert status.startswith("BAD"), "LOGIN twice: " + status
r.ok("LOGOUT")

# Without an initial response: the server asks with "+", and "*" cancels.
r = Raw(user=None)
tag = r.start("AUTHENTICATE PLAIN")
assert r.response().startswith(b"+"), "no continuation request"
r.send("*\r\n")
assert r.finish(tag)[1].startswith("BAD"), "cancelled AUTHENTICATE"
tag = r.start("AUTHENTICATE PLAIN")
assert r.response().startswith(b"+")
r.send(base64.b64encode(b"\0alice@example.com\0password") + b"\r\n")
assert r.finish(tag)[1].startswith("OK"), "AUTHENTICATE PLAIN after +"

# imaplib's AUTHENTICATE (no initial response) works too.
m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
assert m.authenticate("PLAIN", lambda challenge: b"\0alice@example.com\0password")[0] == "OK"
assert m.select("INBOX")[0] == "OK"
m.logout()
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn mailboxes_list_create_rename_delete_subscribe_and_utf8_names() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 2).await;
    let out = imap(
        &node,
        r#"
r = Raw()

def listing(command, conn=None):
    """name -> set of attributes of the LIST/LSUB responses."""
    untagged = (conn or r).ok(command)
    out = {}
    for u in untagged:
        m = re.match(rb'\* (LIST|LSUB) \(([^)]*)\) "/" ("(?:[^"\\]|\\.)*"|[^ \r]+)', u)
        assert m, (command, u)
        name = m.group(3)
        if name.startswith(b'"'):
            name = re.sub(rb'\\(.)', rb'\1', name[1:-1])
        out[name.decode()] = set(m.group(2).decode().split())
    return out

# The default mailboxes, with their special uses (RFC 6154).
boxes = listing('LIST "" "*"')
assert set(boxes) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}, boxes
for name in ["Sent", "Drafts", "Trash", "Junk", "Archive"]:
    assert "\\" + name in boxes[name], (name, boxes)
assert "\\HasNoChildren" in boxes["INBOX"] and not boxes["INBOX"] & {"\\Sent", "\\Trash", "\\Noselect"}, boxes
special = listing('LIST (SPECIAL-USE) "" "*"')
assert set(special) == {"Sent", "Drafts", "Trash", "Junk", "Archive"}, special
assert listing('LIST "" "%"').keys() == boxes.keys()

# CREATE makes the missing parent.
r.ok('CREATE "Projects/2026"')
boxes = listing('LIST "" "Projects*"')
assert set(boxes) == {"Projects", "Projects/2026"}, boxes
assert "\\HasChildren" in boxes["Projects"] and not boxes["Projects"] & {"\\NonExistent", "\\Noselect"}, boxes
assert "\\HasNoChildren" in boxes["Projects/2026"], boxes
assert set(listing('LIST "" "Projects/%"')) == {"Projects/2026"}
assert "Projects/2026" not in listing('LIST "" "%"')
r.ok('SELECT "Projects"')
r.ok("UNSELECT")
status = r.cmd('CREATE "Projects"')[1]
assert status.startswith("NO [ALREADYEXISTS]"), status
status = r.cmd('CREATE "inbox"')[1]
assert status.startswith("NO"), status
assert r.append("Projects/2026", b"Subject: plan\r\n\r\nthe plan\r\n")[1].startswith("OK")

# RENAME moves the children (and their messages) along.
r.ok('RENAME "Projects" "Work"')
boxes = listing('LIST "" "*"')
assert "Work" in boxes and "Work/2026" in boxes, boxes
assert not any(name.startswith("Projects") for name in boxes), boxes
assert r.ok('STATUS "Work/2026" (MESSAGES)') == [b'* STATUS "Work/2026" (MESSAGES 1)\r\n']
status = r.cmd('SELECT "Projects/2026"')[1]
assert status.startswith("NO [NONEXISTENT]"), status

# DELETE.
r.ok('DELETE "Work/2026"')
boxes = listing('LIST "" "*"')
assert "Work/2026" not in boxes and "\\HasNoChildren" in boxes["Work"], boxes
r.ok('DELETE "Work"')
assert "Work" not in listing('LIST "" "*"')
status = r.cmd('DELETE "Work"')[1]
assert status.startswith("NO [NONEXISTENT]"), status
status = r.cmd("DELETE INBOX")[1]
assert status.startswith("NO"), status

# SUBSCRIBE, LSUB, LIST (SUBSCRIBED), RETURN (SUBSCRIBED).
r.ok('CREATE "Lists"')
r.ok('CREATE "Unsubscribed"')
r.ok('SUBSCRIBE "Lists"')
lsub = listing('LSUB "" "*"')
assert "Lists" in lsub and "Unsubscribed" not in lsub, lsub
subscribed = listing('LIST (SUBSCRIBED) "" "*"')
assert "Lists" in subscribed and "\\Subscribed" in subscribed["Lists"], subscribed
assert "Unsubscribed" not in subscribed, subscribed
everything = listing('LIST "" "*" RETURN (SUBSCRIBED)')
assert "\\Subscribed" in everything["Lists"] and "\\Subscribed" not in everything["Unsubscribed"], everything
r.ok('UNSUBSCRIBE "Lists"')
assert "Lists" not in listing('LSUB "" "*"')

# LIST-STATUS: each STATUS right after its LIST.
r.ok("SELECT INBOX")
r.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
r.ok("UNSELECT")
untagged = r.ok('LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))')
index = [i for i, u in enumerate(untagged) if re.match(rb'\* LIST \([^)]*\) "/" "INBOX"\r\n', u)]
assert len(index) == 1, untagged
assert untagged[index[0] + 1] == b'* STATUS "INBOX" (MESSAGES 2 UNSEEN 1)\r\n', untagged
index = [i for i, u in enumerate(untagged) if re.match(rb'\* LIST \([^)]*\) "/" "Sent"\r\n', u)]
assert untagged[index[0] + 1] == b'* STATUS "Sent" (MESSAGES 0 UNSEEN 0)\r\n', untagged

# Modified UTF-7 for a rev1 client, UTF-8 after ENABLE UTF8=ACCEPT.
r.ok('CREATE "Entw&APw-rfe"')
assert set(listing('LIST "" "Entw*"')) == {"Entw&APw-rfe"}
u = Raw()
assert u.ok("ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT\r\n"]
names = listing('LIST "" "*"', u)
assert "Entwürfe" in names and "Entw&APw-rfe" not in names, names
u.ok('SELECT "Entwürfe"')
u.ok('CREATE "Café/Menü"')
assert set(listing('LIST "" "Caf*"')) == {"Caf&AOk-", "Caf&AOk-/Men&APw-"}
r.ok('SELECT "Caf&AOk-/Men&APw-"')
status = r.cmd('CREATE "bad&name"')[1]
assert status.startswith("BAD") or status.startswith("NO"), "invalid modified UTF-7: " + status
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

/// The multipart message of the APPEND/FETCH test, as Python.
const REPORT_MESSAGE: &str = r#"
ATTACHMENT = bytes(range(256)) * 4
B64 = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")
TEXT_BODY = b"Hello Bob,\r\nthe report is attached."
HEADER = (
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: Quarterly report\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"Message-ID: <report-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
    b"\r\n"
)
PART2_MIME = (
    b'Content-Type: application/octet-stream; name="data.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="data.bin"\r\n'
    b"\r\n"
)
BODY = (
    b"This is a multi-part message.\r\n"
    + b"--XYZ\r\n"
    + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    + TEXT_BODY
    + b"\r\n--XYZ\r\n"
    + PART2_MIME
    + B64
    + b"--XYZ--\r\n"
)
MSG = HEADER + BODY
"#;

#[tokio::test]
async fn append_then_fetch_every_item_byte_for_byte() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 1).await;
    let out = imap(
        &node,
        &format!(
            "{REPORT_MESSAGE}{}",
            r#"
r = Raw()
# APPEND with flags and an internal date in another zone.
untagged, status = r.append("INBOX", MSG, flags="\\Flagged $Important", date="02-Mar-2026 12:00:00 +0200")
validity, uid = appenduid(status)
assert uid == 2, status
# imaplib's APPEND of a second, plain message.
PLAIN = b"From: Carol <carol@example.net>\r\nSubject: plain\r\n\r\nJust text.\r\n"
im = imaps()
typ, data = im.append("INBOX", None, None, PLAIN)
assert typ == "OK" and data[0].startswith(b"[APPENDUID %d 3]" % validity), data

untagged = r.ok("SELECT INBOX")
assert b"* 3 EXISTS\r\n" in untagged, untagged
assert code(untagged, "UIDVALIDITY") == validity, untagged
assert code(untagged, "UIDNEXT") == 4, untagged
assert code(untagged, "HIGHESTMODSEQ") > 0, untagged

f = fetches(r.ok("FETCH 2 (FLAGS INTERNALDATE RFC822.SIZE)"))[2]
assert flags(f) == {"\\Flagged", "$Important"}, f
assert b'INTERNALDATE "02-Mar-2026 10:00:00 +0000"' in f, f
assert int(re.search(rb"RFC822.SIZE (\d+)", f).group(1)) == len(MSG), (f, len(MSG))

f = fetches(r.ok("FETCH 2 ENVELOPE"))[2]
alice = b'(("Alice Example" NIL "alice" "example.com"))'
envelope = (
    b'ENVELOPE ("Mon, 02 Mar 2026 10:00:00 +0000" "Quarterly report" '
    + alice + b" " + alice + b" " + alice
    + b' (("Bob" NIL "bob" "example.com")) NIL NIL NIL "<report-1@example.com>")'
)
assert envelope in f, f

f = fetches(r.ok("FETCH 2 BODYSTRUCTURE"))[2].decode().upper()
text = r'\("TEXT" "PLAIN" \("CHARSET" "UTF-8"\) NIL NIL "7BIT" %d [12]( NIL)*\)' % len(TEXT_BODY)
attachment = (
    r'\("APPLICATION" "OCTET-STREAM" \("NAME" "DATA.BIN"\) NIL NIL "BASE64" %d NIL'
    r' \("ATTACHMENT" \("FILENAME" "DATA.BIN"\)\)( NIL)*\)' % (len(B64) - 2)
)
structure = r"BODYSTRUCTURE \(" + text + " ?" + attachment + r' "MIXED" \("BOUNDARY" "XYZ"\)( NIL)*\)'
assert re.search(structure, f), (structure, f)

f = fetches(r.ok("FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))[2]
assert item(f, b"BODY[HEADER.FIELDS (SUBJECT)]") == b"Subject: Quarterly report\r\n\r\n", f
assert item(fetches(r.ok("FETCH 2 BODY.PEEK[HEADER]"))[2], b"BODY[HEADER]") == HEADER
assert item(fetches(r.ok("FETCH 2 BODY.PEEK[TEXT]"))[2], b"BODY[TEXT]") == BODY
assert item(fetches(r.ok("FETCH 2 BODY.PEEK[1]"))[2], b"BODY[1]") == TEXT_BODY
assert item(fetches(r.ok("FETCH 2 BODY.PEEK[2]"))[2], b"BODY[2]") == B64[:-2]
assert item(fetches(r.ok("FETCH 2 BODY.PEEK[2.MIME]"))[2], b"BODY[2.MIME]") == PART2_MIME
assert item(fetches(r.ok("FETCH 2 BODY.PEEK[]<0.10>"))[2], b"BODY[]<0>") == MSG[:10]
assert item(fetches(r.ok("FETCH 2 BODY.PEEK[]<20.15>"))[2], b"BODY[]<20>") == MSG[20:35]
f = fetches(r.ok("FETCH 2 BINARY.PEEK[2]"))[2]
assert b"BINARY[2] ~{1024}\r\n" in f, f[:200]
assert item(f, b"BINARY[2]") == ATTACHMENT
assert item(fetches(r.ok("FETCH 2 BINARY.PEEK[1]"))[2], b"BINARY[1]") == TEXT_BODY
assert b"BINARY.SIZE[2] 1024" in fetches(r.ok("FETCH 2 BINARY.SIZE[2]"))[2]

# Peeking left \Seen alone; BODY[] sets it and reports it, byte-identical content.
assert flags(fetches(r.ok("FETCH 2 FLAGS"))[2]) == {"\\Flagged", "$Important"}
f = fetches(r.ok("FETCH 2 BODY[]"))[2]
assert item(f, b"BODY[]") == MSG, "BODY[] differs from what was appended"
assert "\\Seen" in flags(f), f[-200:]
assert flags(fetches(r.ok("FETCH 2 FLAGS"))[2]) == {"\\Flagged", "$Important", "\\Seen"}

# imaplib: BODY[TEXT] (not PEEK) of the plain message sets \Seen too.
assert im.select("INBOX")[0] == "OK"
typ, data = im.fetch("3", "(BODY[TEXT])")
assert typ == "OK" and data[0][1] == b"Just text.\r\n", data
typ, data = im.fetch("3", "(FLAGS)")
assert b"\\Seen" in data[0], data
typ, data = im.fetch("3", "(BODY.PEEK[])")
assert data[0][1] == PLAIN, data

# A message delivered over SMTP appears after NOOP; UID FETCH 1:* sees all three ways in.
s = smtplib.SMTP("127.0.0.1", SMTP)
s.sendmail("sender@remote.test", [ALICE], b"From: sender@remote.test\r\nTo: alice@example.com\r\nSubject: over smtp\r\n\r\nrelayed\r\n")
s.quit()
assert b"* 4 EXISTS\r\n" in r.ok("NOOP")
f = fetches(r.ok("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])"))
assert sorted(f) == [1, 2, 3, 4], f
assert [uid_of(f[n]) for n in [1, 2, 3, 4]] == [1, 2, 3, 4], f
subjects = [item(f[n], b"BODY[HEADER.FIELDS (SUBJECT)]") for n in [1, 2, 3, 4]]
assert subjects == [b"Subject: message 1\r\n\r\n", b"Subject: Quarterly report\r\n\r\n",
                    b"Subject: plain\r\n\r\n", b"Subject: over smtp\r\n\r\n"], subjects
assert item(f[4], b"BODY[TEXT]") == b"relayed\r\n", f[4]
assert item(f[1], b"BODY[TEXT]") == b"body 1\r\n", f[1]
assert im.noop()[0] == "OK"
typ, data = im.uid("FETCH", "1:*", "(UID RFC822.SIZE)")
assert typ == "OK" and len([d for d in data if b"RFC822.SIZE" in d]) == 4, data
im.logout()
print("ok")
"#
        ),
    );
    assert_eq!(out.trim(), "ok");
}

/// Cases Dovecot's imaptest checks and wmail once got wrong.
#[tokio::test]
async fn conformance_cases_found_by_imaptest_scripts() {
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("CREATE conf")
for message in [
    b"Date: Sun, 25 Mar 2007 00:30:00 +0200\r\nSubject: a\r\nFrom: <@route.example:user@domain.example>\r\nTo: aa: a@b.c;, bb: d@e.f;\r\n\r\nx\r\n",
    b"Date: Mon, 26 Mar 2007 10:00:00 +0000\r\nSubject: _\r\n\r\nx\r\n",
    b"Date: Mon, 26 Mar 2007 10:00:00 +0000\r\nSubject: [xyz]\r\n\r\nx\r\n",
    b"Date: Mon, 26 Mar 2007 10:00:00 +0000\r\nSubject: b\r\n\r\nx\r\n",
]:
    assert r.append("conf", message)[1].startswith("OK")
r.ok("SELECT conf")
# RFC 9051 §6.4.4: SENT* keys take the Date field's own date, disregarding its zone
# (00:30 +0200 on the 25th is the 24th in UTC).
assert numbers(r.ok("SEARCH SENTON 25-Mar-2007")) == [1]
assert numbers(r.ok("SEARCH SENTON 24-Mar-2007")) == []
assert numbers(r.ok("SEARCH SENTBEFORE 26-Mar-2007 SENTSINCE 25-Mar-2007")) == [1]
# RFC 5256 i;ascii-casemap folds to upper case: "[" and "_" sort after the letters.
assert numbers(r.ok("SORT (SUBJECT) US-ASCII ALL"), "SORT") == [1, 4, 3, 2]
# RFC 9051 §7.5.2: a source route is the address's adl, not part of its mailbox.
envelope = r.ok("FETCH 1 ENVELOPE")[0]
assert b'((NIL "@route.example" "user" "domain.example"))' in envelope, envelope
# RFC 9051 §6.4.4: every group name of To: is searched, not only the first.
assert numbers(r.ok("SEARCH TO bb")) == [1]
assert numbers(r.ok("SEARCH TO aa")) == [1]
# RFC 7162 §3.1: FETCH MODSEQ turns CONDSTORE on (with HIGHESTMODSEQ, as SELECT did not
# give it to a client that did not ask); from then on flag changes carry UID and MODSEQ.
untagged = r.ok("FETCH 2 (MODSEQ)")
assert any(u.startswith(b"* OK [HIGHESTMODSEQ ") for u in untagged), untagged
stored = r.ok("STORE 2 +FLAGS (\\Seen)")
assert b" UID 2 " in stored[0] and b"MODSEQ (" in stored[0], stored
# ... and so does a FETCH that sets \Seen, but not one that asked for neither and
# changed nothing (imaptest's own_msgs run would see MODSEQs move).
plain = r.ok("FETCH 2 (FLAGS)")[0]
assert b"MODSEQ" not in plain and b"UID" not in plain, plain
# An item asked for twice is answered once.
twice = r.ok("FETCH 2 (UID UID FLAGS UID)")[0]
assert twice.count(b"UID ") == 1 and twice.count(b"FLAGS ") == 1, twice
twice = b"".join(r.ok("FETCH 2 (BODY.PEEK[HEADER] BODY[HEADER])"))
assert twice.count(b"BODY[HEADER]") == 1, twice
seen = r.ok("FETCH 3 (BODY[])")[0]
assert b"UID 3" in seen and b"MODSEQ (" in seen and b"\\Seen" in seen, seen
# RFC 5957 SORT=DISPLAY: by the display name, else the address.
r.ok("CREATE disp")
for sender in [b"Zed <a@x.test>", b"=?utf-8?q?=C3=89mile?= <b@x.test>", b"<carol@x.test>", b"alice <z@x.test>"]:
    assert r.append("disp", b"From: " + sender + b"\r\nSubject: d\r\n\r\nx\r\n")[1].startswith("OK")
r.ok("SELECT disp")
assert b"SORT=DISPLAY" in b" ".join(r.ok("CAPABILITY"))
# i;ascii-casemap folds ASCII only: the UTF-8 of the accented name sorts after the letters.
assert numbers(r.ok("SORT (DISPLAYFROM) UTF-8 ALL"), "SORT") == [4, 3, 1, 2]
r.ok("SELECT conf")
# RFC 5258: a parent listed for RECURSIVEMATCH carries its child attributes too.
r.ok("CREATE p/")
r.ok("CREATE p/c")
r.ok("SUBSCRIBE p/c")
untagged = r.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" p% RETURN (CHILDREN)')
parent = [u for u in untagged if b'"p"' in u or u.rstrip().endswith(b" p")]
assert len(parent) == 1 and b"\\HasChildren" in parent[0] and b"CHILDINFO" in parent[0], untagged
# BINARY with BODY section texts, as Dovecot answers them (imaptest fetch-binary-mime):
# TEXT of a base64 message is decoded, MIME/HEADER are the headers as they are.
r.ok("CREATE bin")
b64 = b"Subject: b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n"
assert r.append("bin", b64)[1].startswith("OK")
r.ok("SELECT bin")
fetched = r.ok("FETCH 1 (BINARY.PEEK[TEXT] BINARY.SIZE[TEXT] BINARY.SIZE[1.MIME] BINARY.PEEK[HEADER.FIELDS (SUBJECT)])")[0]
assert b"BINARY[TEXT] {11}\r\nhello world" in fetched, fetched
assert b"BINARY.SIZE[TEXT] 11" in fetched and b"BINARY.SIZE[1.MIME] 75" in fetched, fetched
assert b"BINARY[HEADER.FIELDS (SUBJECT)] {14}\r\nSubject: b\r\n\r\n" in fetched, fetched
# imaptest own_flags: a keyword a STORE names is announced in FLAGS by that STORE, even
# when it removes it or is .SILENT.
untagged = r.ok("STORE 1 -FLAGS ($NeverSet)")
assert untagged[0].startswith(b"* FLAGS (") and b" $NeverSet" in untagged[0], untagged
untagged = r.ok("STORE 1 +FLAGS.SILENT ($Quiet)")
assert len(untagged) == 2 and b" $Quiet" in untagged[0] and b"PERMANENTFLAGS" in untagged[1], untagged
# imaptest search-header: SUBJECT, FROM, TO search the envelope's field, so even "" only
# matches messages that have it (as HEADER does).
r.ok("CREATE bare")
assert r.append("bare", b"Subject: s\r\nFrom: a@x.test\r\n\r\nx\r\n")[1].startswith("OK")
assert r.append("bare", b"Date: Mon, 26 Mar 2007 10:00:00 +0000\r\n\r\nno subject\r\n")[1].startswith("OK")
r.ok("SELECT bare")
assert numbers(r.ok('SEARCH SUBJECT ""')) == [1]
assert numbers(r.ok('SEARCH NOT SUBJECT ""')) == [2]
assert numbers(r.ok('SEARCH FROM ""')) == [1]
assert numbers(r.ok('SEARCH TO ""')) == []
# imaptest esearch-condstore (RFC 4731 §3.2): MODSEQ is the highest of the messages
# returned, so with only MIN or MAX it is that message's own.
m2 = modseq_of(r.ok("STORE 2 +FLAGS (\\Flagged)")[0])
m1 = modseq_of(r.ok("STORE 1 +FLAGS (\\Flagged)")[0])
assert m1 > m2
assert r.ok("SEARCH RETURN (MIN) MODSEQ 1 FLAGGED") == [b'* ESEARCH (TAG "%s") MIN 1 MODSEQ %d\r\n' % (r.tag.encode(), m1)]
assert r.ok("SEARCH RETURN (MAX) MODSEQ 1 FLAGGED") == [b'* ESEARCH (TAG "%s") MAX 2 MODSEQ %d\r\n' % (r.tag.encode(), m2)]
assert r.ok("SEARCH RETURN (MAX COUNT) MODSEQ 1 FLAGGED") == [b'* ESEARCH (TAG "%s") MAX 2 COUNT 2 MODSEQ %d\r\n' % (r.tag.encode(), m1)]
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn internal_dates_follow_the_node_time_zone_across_daylight_saving() {
    // Eastern European time: +0200, +0300 from the last Sunday of March 03:00 until the
    // last Sunday of October 04:00 (a POSIX TZ rule, so no zoneinfo file is needed).
    let mut node = WmailNode::new("");
    node.env.push(("TZ".into(), "EET-2EEST,M3.5.0/3,M10.5.0/4".into()));
    node.start().await;
    add_example_com_and_alice(&node, None).await;
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("CREATE dates")
for date in ["24-Mar-2007 23:00:00 +0200", "24-Mar-2007 23:30:00 +0000", "25-Mar-2007 01:30:00 +0000",
             "28-Oct-2007 00:30:00 +0000", "28-Oct-2007 22:30:00 +0000"]:
    assert r.append("dates", b"Subject: d\r\n\r\nx\r\n", date=date)[1].startswith("OK")
r.ok("SELECT dates")
shown = [re.search(rb'INTERNALDATE "([^"]+)"', u).group(1).decode() for u in r.ok("FETCH 1:* INTERNALDATE")]
assert shown == ["24-Mar-2007 23:00:00 +0200", "25-Mar-2007 01:30:00 +0200", "25-Mar-2007 04:30:00 +0300",
                 "28-Oct-2007 03:30:00 +0300", "29-Oct-2007 00:30:00 +0200"], shown
# RFC 9051 §6.4.4: the internal date's own date, in the zone it is shown in.
assert numbers(r.ok("SEARCH ON 24-Mar-2007")) == [1]
assert numbers(r.ok("SEARCH ON 25-Mar-2007")) == [2, 3]
assert numbers(r.ok("SEARCH BEFORE 25-Mar-2007")) == [1]
assert numbers(r.ok("SEARCH SINCE 28-Oct-2007 BEFORE 29-Oct-2007")) == [4]
assert numbers(r.ok("SEARCH SINCE 29-Oct-2007")) == [5]
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn store_flags_keywords_and_condstore() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 3).await;
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("SELECT INBOX")
f = fetches(r.ok("STORE 1 +FLAGS (\\Flagged)"))
assert list(f) == [1] and flags(f[1]) == {"\\Flagged"}, f
f = fetches(r.ok("STORE 1 +FLAGS ($Work \\Answered)"))
assert flags(f[1]) == {"\\Flagged", "$Work", "\\Answered"}, f
f = fetches(r.ok("STORE 1 -FLAGS (\\Flagged $Work)"))
assert flags(f[1]) == {"\\Answered"}, f
untagged = r.ok("STORE 2:3 FLAGS.SILENT (\\Seen $Label1)")
assert not fetches(untagged), untagged
f = fetches(r.ok("FETCH 1:3 FLAGS"))
assert flags(f[1]) == {"\\Answered"}, f
assert flags(f[2]) == flags(f[3]) == {"\\Seen", "$Label1"}, f
f = fetches(r.ok("STORE 3 FLAGS ($Other)"))
assert flags(f[3]) == {"$Other"}, f
assert not fetches(r.ok("STORE 3 -FLAGS.SILENT ($Other)"))
assert flags(fetches(r.ok("FETCH 3 FLAGS"))[3]) == set()
r.ok("STORE 3 +FLAGS.SILENT ($Other)")
status = r.cmd("STORE 1 +FLAGS (\\Recent)")[1]
assert status.startswith("BAD"), status
status = r.cmd("STORE 9 +FLAGS (\\Seen)")[1]
assert status.startswith("BAD"), "message 9 does not exist: " + status

# Keywords in use are offered by the next SELECT, and new ones may be made (\*).
untagged = r.ok("SELECT INBOX")
line = [u for u in untagged if u.startswith(b"* FLAGS (")]
assert len(line) == 1, untagged
offered = set(line[0].decode()[len("* FLAGS ("):].rstrip(")\r\n").split())
assert {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Label1", "$Other"} <= offered, offered
permanent = [u for u in untagged if u.startswith(b"* OK [PERMANENTFLAGS (")]
assert len(permanent) == 1 and b"\\*)" in permanent[0], untagged

# CONDSTORE.
assert r.ok("ENABLE CONDSTORE") == [b"* ENABLED CONDSTORE\r\n"]
f = fetches(r.ok("FETCH 1:3 (MODSEQ)"))
modseq = {n: modseq_of(f[n]) for n in f}
assert sorted(modseq) == [1, 2, 3], f
# RFC 7162 §3.1: MODSEQ comes with flag changes, not with a FETCH that asked for FLAGS only.
assert b"MODSEQ" not in fetches(r.ok("FETCH 1 (FLAGS)"))[1]
untagged = r.ok("STATUS INBOX (HIGHESTMODSEQ)")
assert untagged == [b'* STATUS "INBOX" (HIGHESTMODSEQ %d)\r\n' % max(modseq.values())], (untagged, modseq)

f = fetches(r.ok("STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % modseq[1]))
assert flags(f[1]) == {"\\Answered", "\\Flagged"}, f
changed = modseq_of(f[1])
assert changed > max(modseq.values()), (changed, modseq)
untagged, status = r.cmd("STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Draft)" % modseq[1])
assert status.startswith("OK [MODIFIED 1]"), (status, untagged)
assert flags(fetches(r.ok("FETCH 1 FLAGS"))[1]) == {"\\Answered", "\\Flagged"}

# Another session's change makes the condition fail for that message only.
b = Raw()
b.ok("SELECT INBOX")
b.ok("STORE 2 +FLAGS (\\Flagged)")
b.close()
untagged, status = r.cmd("STORE 2,3 (UNCHANGEDSINCE %d) +FLAGS ($Done)" % max(modseq[2], modseq[3]))
assert status.startswith("OK [MODIFIED 2]"), (status, untagged)
f = fetches(r.ok("FETCH 2:3 FLAGS"))
assert flags(f[2]) == {"\\Seen", "$Label1", "\\Flagged"}, f
assert flags(f[3]) == {"$Other", "$Done"}, f
status = r.cmd("UID STORE 1 (UNCHANGEDSINCE 1) +FLAGS ($Late)")[1]
assert status.startswith("OK [MODIFIED 1]"), "UID STORE reports UIDs: " + status

# SEARCH MODSEQ.
f = fetches(r.ok("FETCH 1:3 (MODSEQ)"))
modseq = {n: modseq_of(f[n]) for n in f}
assert len(set(modseq.values())) == 3, modseq
threshold = sorted(modseq.values())[1]
expected = sorted(n for n, m in modseq.items() if m >= threshold)
untagged = r.ok("SEARCH MODSEQ %d" % threshold)
want = "* SEARCH %s (MODSEQ %d)\r\n" % (" ".join(map(str, expected)), max(modseq[n] for n in expected))
assert untagged == [want.encode()], (untagged, want)
assert numbers(r.ok("SEARCH MODSEQ %d" % (max(modseq.values()) + 1))) == []
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn search_esearch_searchres_sort_and_thread() {
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
r = Raw()
# A first message, expunged, so that UIDs are message numbers plus one.
assert r.append("INBOX", b"Subject: gone\r\n\r\nx\r\n")[1].startswith("OK")
specs = [
    ("alice@example.com", "Lunch plans", "01-Jan-2026", "Thu, 01 Jan 2026 12:00:00 +0000", "Pizza at noon?\r\n", "", "\\Seen"),
    ("Bob <bob@example.org>", "Re: Lunch plans", "02-Jan-2026", "Fri, 02 Jan 2026 12:00:00 +0000",
     "Sure, pizza works.\r\n", "In-Reply-To: <m1@example.com>\r\nReferences: <m1@example.com>\r\n", ""),
    ("carol@example.net", "Invoice 42", "10-Feb-2026", "Tue, 10 Feb 2026 12:00:00 +0000",
     ("x" * 70 + "\r\n") * 80 + "Total budget: 42\r\n", "X-Priority: 1\r\n", ""),
    ("alice@example.com", "Re: Re: Lunch plans", "03-Jan-2026", "Sat, 03 Jan 2026 12:00:00 +0000", "See you there.\r\n",
     "In-Reply-To: <m2@example.com>\r\nReferences: <m1@example.com> <m2@example.com>\r\n", ""),
    ("dave@example.com", "Zebra facts", "15-Mar-2026", "Sun, 15 Mar 2026 12:00:00 +0000", "Stripes.\r\n", "", "\\Flagged"),
    ("erin@example.com", "Re: Lunch plans", "04-Jan-2026", "Sun, 04 Jan 2026 12:00:00 +0000", "Count me in.\r\n",
     "In-Reply-To: <m1@example.com>\r\nReferences: <m1@example.com>\r\n", ""),
]
for n, (sender, subject, day, date, body, extra, flag) in enumerate(specs, 1):
    message = ("From: %s\r\nTo: alice@example.com\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <m%d@example.com>\r\n%s\r\n%s"
               % (sender, subject, date, n, extra, body)).encode()
    status = r.append("INBOX", message, flags=flag, date="%s 12:00:00 +0000" % day)[1]
    assert appenduid(status)[1] == n + 1, status
r.ok("SELECT INBOX")
r.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
r.ok("EXPUNGE")

def search(criteria, uid=False):
    return numbers(r.ok(("UID SEARCH " if uid else "SEARCH ") + criteria))

checks = [
    ("ALL", [1, 2, 3, 4, 5, 6]),
    ("SEEN", [1]),
    ("UNSEEN", [2, 3, 4, 5, 6]),
    ("FLAGGED", [5]),
    ("FROM alice", [1, 4]),
    ('FROM "bob@example.org"', [2]),
    ("SUBJECT invoice", [3]),
    ('SUBJECT "lunch PLANS"', [1, 2, 4, 6]),
    ("BODY pizza", [1, 2]),
    ("BODY budget", [3]),
    ("TEXT budget", [3]),
    ("TEXT carol", [3]),
    ("TEXT pizza", [1, 2]),
    ("HEADER X-Priority 1", [3]),
    ('HEADER X-Priority ""', [3]),
    ('HEADER In-Reply-To "<m1@example.com>"', [2, 6]),
    ("LARGER 4000", [3]),
    ("SMALLER 4000", [1, 2, 4, 5, 6]),
    ("SINCE 1-Feb-2026", [3, 5]),
    ("BEFORE 3-Jan-2026", [1, 2]),
    ("SINCE 2-Jan-2026 BEFORE 4-Jan-2026", [2, 4]),
    ("ON 10-Feb-2026", [3]),
    ("SENTBEFORE 2-Jan-2026", [1]),
    ("SENTSINCE 1-Mar-2026", [5]),
    ("UID 3:5", [2, 3, 4]),
    ("UID 6:*", [5, 6]),
    ("2:3", [2, 3]),
    ("5:*", [5, 6]),
    ("OR FROM bob FROM carol", [2, 3]),
    ("NOT FROM alice", [2, 3, 5, 6]),
    ("OR (FROM alice UNSEEN) FLAGGED", [4, 5]),
    ("(OR (SUBJECT zebra) (OR SUBJECT invoice BODY pizza)) NOT SEEN", [2, 3, 5]),
    ("NOT (OR SEEN (OR FLAGGED LARGER 4000))", [2, 4, 6]),
    ("FLAGGED SUBJECT lunch", []),
    ("CHARSET UTF-8 SUBJECT zebra", [5]),
]
for criteria, expected in checks:
    got = search(criteria)
    assert got == expected, (criteria, got, expected)
assert search("ALL", uid=True) == [2, 3, 4, 5, 6, 7]
assert search("UID 3:5", uid=True) == [3, 4, 5]
assert search("1:2", uid=True) == [2, 3]
assert search("FROM alice", uid=True) == [2, 5]
status = r.cmd("SEARCH CHARSET KOI8-R ALL")[1]
assert status.startswith("NO [BADCHARSET"), status

# ESEARCH.
untagged = r.ok("SEARCH RETURN (MIN MAX COUNT) SUBJECT lunch")
assert untagged == [b'* ESEARCH (TAG "%s") MIN 1 MAX 6 COUNT 4\r\n' % r.tag.encode()], untagged
untagged = r.ok("UID SEARCH RETURN (MIN MAX COUNT) SUBJECT lunch")
assert untagged == [b'* ESEARCH (TAG "%s") UID MIN 2 MAX 7 COUNT 4\r\n' % r.tag.encode()], untagged
untagged = r.ok("SEARCH RETURN () FROM alice")
assert untagged == [b'* ESEARCH (TAG "%s") ALL 1,4\r\n' % r.tag.encode()], untagged
untagged = r.ok("SEARCH RETURN (COUNT) FLAGGED SUBJECT lunch")
assert untagged == [b'* ESEARCH (TAG "%s") COUNT 0\r\n' % r.tag.encode()], untagged

# SEARCHRES: SAVE, then $ in FETCH, STORE and SEARCH.
assert r.ok("SEARCH RETURN (SAVE) FROM alice") == []
f = fetches(r.ok("FETCH $ (UID)"))
assert f == {1: b"* 1 FETCH (UID 2)\r\n", 4: b"* 4 FETCH (UID 5)\r\n"}, f
r.ok("STORE $ +FLAGS.SILENT (\\Answered)")
assert search("ANSWERED") == [1, 4]
assert search("$ UNSEEN") == [4]
assert search("OR $ FLAGGED") == [1, 4, 5]

# SORT.
assert numbers(r.ok("SORT (SUBJECT) US-ASCII ALL"), "SORT") == [3, 1, 2, 4, 6, 5]
assert numbers(r.ok("SORT (REVERSE DATE) UTF-8 ALL"), "SORT") == [5, 3, 6, 4, 2, 1]
assert numbers(r.ok("SORT (ARRIVAL) UTF-8 ALL"), "SORT") == [1, 2, 4, 6, 3, 5]
assert numbers(r.ok("UID SORT (FROM) UTF-8 SUBJECT lunch"), "SORT") == [2, 5, 3, 7]
assert numbers(r.ok("SORT (SIZE) UTF-8 NOT SUBJECT lunch"), "SORT") == [5, 3]
# ESORT (RFC 5267 §3): ALL keeps the sort order; MIN and MAX are its first and last.
assert b" ESORT " in r.ok("CAPABILITY")[0]
untagged = r.ok("SORT RETURN (MIN MAX COUNT ALL) (REVERSE DATE) UTF-8 ALL")
assert untagged == [b'* ESEARCH (TAG "%s") MIN 5 MAX 1 COUNT 6 ALL 5,3,6,4,2,1\r\n' % r.tag.encode()], untagged
untagged = r.ok("SORT RETURN (MAX ALL) (ARRIVAL) UTF-8 ALL")
assert untagged == [b'* ESEARCH (TAG "%s") MAX 5 ALL 1:2,4,6,3,5\r\n' % r.tag.encode()], untagged
# SAVE keeps the message MIN named, the first in sort order.
untagged = r.ok("SORT RETURN (MIN SAVE) (REVERSE DATE) UTF-8 ALL")
assert untagged == [b'* ESEARCH (TAG "%s") MIN 5\r\n' % r.tag.encode()], untagged
assert sorted(fetches(r.ok("FETCH $ (FLAGS)"))) == [5]
# RFC 7162 §3.1.5: a MODSEQ key adds the highest MODSEQ to the SORT response too.
untagged = r.ok("SORT (ARRIVAL) UTF-8 MODSEQ 1")
sort_lines = [u for u in untagged if u.startswith(b"* SORT ")]
assert len(sort_lines) == 1 and re.search(rb" \(MODSEQ \d+\)\r\n$", sort_lines[0]), untagged

# THREAD.
assert r.ok("THREAD REFERENCES US-ASCII ALL") == [b"* THREAD (1 (2 4)(6))(3)(5)\r\n"]
assert r.ok("UID THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (2 (3 5)(7))(4)(6)\r\n"]
assert r.ok("THREAD ORDEREDSUBJECT UTF-8 ALL") == [b"* THREAD (1 (2)(4)(6))(3)(5)\r\n"]
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn search_decodes_mime_encoded_headers_and_bodies() {
    // RFC 3501 §6.4.4 (kept by RFC 9051): MIME-HDRS strings in headers and content transfer
    // encodings MUST be decoded before comparing text in a charset other than US-ASCII.
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
r = Raw()
body = base64.b64encode("Schöne Grüße aus Köln\r\n".encode()).decode()
message = (
    "From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <jm@example.com>\r\n"
    "To: =?UTF-8?B?w4lsb8Ovc2U=?= <e@example.com>\r\n"
    "Cc: =?UTF-8?Q?Zo=C3=AB?= <z@example.com>\r\n"
    "Subject: =?UTF-8?B?S8O2bG4=?= trip\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n" + body + "\r\n"
).encode()
assert r.append("INBOX", message)[1].startswith("OK")
assert r.append("INBOX", b"From: plain@example.com\r\nSubject: other\r\n\r\nnothing\r\n")[1].startswith("OK")
r.ok("SELECT INBOX")

def search(key, text):
    data = text.encode()
    tag = r.start("SEARCH CHARSET UTF-8 %s {%d}" % (key, len(data)))
    assert r.response().startswith(b"+")
    r.send(data + b"\r\n")
    untagged, status = r.finish(tag)
    assert status.startswith("OK"), (key, text, status)
    return numbers(untagged)

results = {(key, text): search(key, text) for key, text in [
    ("SUBJECT", "Köln"), ("BODY", "Grüße"), ("TEXT", "Grüße"),
    ("FROM", "Jürgen"), ("FROM", "Müller"), ("TO", "Éloïse"), ("CC", "Zoë"),
    ("HEADER FROM", "Jürgen"), ("TEXT", "Jürgen"),
]}
wrong = {k: v for k, v in results.items() if v != [1]}
assert not wrong, "searches that missed the message (expected [1]): %r" % wrong
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn copy_move_expunge_close_and_unselect() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 4).await;
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("SELECT INBOX")
def validity(name):
    untagged = r.ok("STATUS %s (UIDVALIDITY)" % q(name))
    return int(re.search(rb"UIDVALIDITY (\d+)", untagged[0]).group(1))
def count(name):
    untagged = r.ok("STATUS %s (MESSAGES)" % q(name))
    return int(re.search(rb"MESSAGES (\d+)", untagged[0]).group(1))
archive, trash = validity("Archive"), validity("Trash")

# COPY: COPYUID, the copies with their flags in the target, nothing leaves the source.
r.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
untagged, status = r.cmd("COPY 1:2 Archive")
assert status.startswith("OK [COPYUID %d 1:2 1:2]" % archive), status
assert not any(b"EXPUNGE" in u for u in untagged), untagged
assert count("Archive") == 2 and count("INBOX") == 4
b = Raw()
b.ok('EXAMINE "Archive"')
f = fetches(b.ok("UID FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
assert item(f[1], b"BODY[HEADER.FIELDS (SUBJECT)]") == b"Subject: message 1\r\n\r\n", f
assert item(f[2], b"BODY[HEADER.FIELDS (SUBJECT)]") == b"Subject: message 2\r\n\r\n", f
assert flags(f[1]) == {"\\Flagged"} and flags(f[2]) == set(), f
b.close()

# MOVE: COPYUID in an untagged OK, then the EXPUNGE.
untagged, status = r.cmd("MOVE 3 Trash")
assert status.startswith("OK"), status
assert len(untagged) == 2 and untagged[0].startswith(b"* OK [COPYUID %d 3 1]" % trash), untagged
assert untagged[1] == b"* 3 EXPUNGE\r\n", untagged
untagged, status = r.cmd("UID MOVE 4 Trash")
assert status.startswith("OK"), status
assert untagged[0].startswith(b"* OK [COPYUID %d 4 2]" % trash) and untagged[1:] == [b"* 3 EXPUNGE\r\n"], untagged
assert count("Trash") == 2 and count("INBOX") == 2
assert [uid_of(v) for k, v in sorted(fetches(r.ok("FETCH 1:* (UID)")).items())] == [1, 2]

# A missing target: TRYCREATE, and nothing changes.
for command in ["COPY 1 Nowhere", "MOVE 1 Nowhere", "UID COPY 1 Nowhere"]:
    untagged, status = r.cmd(command)
    assert status.startswith("NO [TRYCREATE]"), (command, status)
    assert not any(b"EXPUNGE" in u for u in untagged), untagged
assert count("INBOX") == 2

# EXPUNGE removes the \Deleted messages only.
for n in range(5, 8):
    assert appenduid(r.append("INBOX", b"Subject: later %d\r\n\r\nx\r\n" % n)[1])[1] == n
view = [1, 2, 5, 6, 7]
assert [uid_of(v) for k, v in sorted(fetches(r.ok("FETCH 1:* (UID)")).items())] == view
r.ok("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
untagged = r.ok("EXPUNGE")
view = apply_expunges(view, untagged)
assert view == [2, 6, 7] and len(untagged) == 2, untagged
assert [uid_of(v) for k, v in sorted(fetches(r.ok("FETCH 1:* (UID)")).items())] == view

# UID EXPUNGE removes the \Deleted messages of its set only.
r.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
untagged = r.ok("UID EXPUNGE 6:7")
view = apply_expunges(view, untagged)
assert view == [2, 7], untagged
assert numbers(r.ok("UID SEARCH DELETED")) == [2]

# CLOSE expunges without a word; UNSELECT does not expunge.
assert r.ok("CLOSE") == []
assert count("INBOX") == 1
status = r.cmd("FETCH 1 FLAGS")[1]
assert status.startswith("BAD"), "FETCH after CLOSE: " + status
r.ok("SELECT INBOX")
r.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
assert r.ok("UNSELECT") == []
assert count("INBOX") == 1
r.ok("EXAMINE INBOX")
assert r.ok("CLOSE") == []
assert count("INBOX") == 1, "CLOSE of an EXAMINEd mailbox expunged"
r.ok("SELECT INBOX")
assert numbers(r.ok("UID SEARCH DELETED")) == [7]
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn two_sessions_see_each_other_and_idle_reports_new_mail() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 2).await;
    let mut script = SteppedScript::start(
        &node,
        &format!(
            "{HELPERS}{}",
            r#"
a = Raw()
b = Raw()
a.ok("SELECT INBOX")
b.ok("SELECT INBOX")

# B learns of A's APPEND on NOOP.
assert appenduid(a.append("INBOX", b"Subject: third\r\n\r\nx\r\n")[1])[1] == 3
untagged = b.ok("NOOP")
assert b"* 3 EXISTS\r\n" in untagged and not fetches(untagged), untagged

# ... and of A's STORE.
a.ok("STORE 1 +FLAGS (\\Flagged)")
f = fetches(b.ok("NOOP"))
assert list(f) == [1] and flags(f[1]) == {"\\Flagged"} and uid_of(f[1]) == 1, f

# A keyword new to the mailbox: each session is sent FLAGS (and PERMANENTFLAGS) listing it
# before the FETCH that shows it (RFC 3501 §7.2.6), once (imaptest's stress run).
untagged = a.ok("STORE 1 +FLAGS ($Label9)")
assert untagged[0].startswith(b"* FLAGS (") and b"$Label9" in untagged[0], untagged
assert b"PERMANENTFLAGS" in untagged[1] and b"$Label9" in untagged[1], untagged
untagged = b.ok("NOOP")
assert untagged[0].startswith(b"* FLAGS (") and b"$Label9" in untagged[0], untagged
assert flags(fetches(untagged)[1]) == {"\\Flagged", "$Label9"}, untagged
a.ok("STORE 1 -FLAGS ($Label9)")
a.ok("STORE 1 +FLAGS ($Label9)")
untagged = b.ok("NOOP")
assert not any(u.startswith(b"* FLAGS") for u in untagged) and fetches(untagged), untagged

# A's EXPUNGE reaches B only where message numbers may change: not during FETCH,
# STORE or SEARCH, but on NOOP.
a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
assert a.ok("EXPUNGE") == [b"* 2 EXPUNGE\r\n"]
untagged, status = b.cmd("FETCH 1:3 (UID)")
assert status.startswith("OK") or status.startswith("NO"), status
assert not any(re.match(rb"\* \d+ EXPUNGE", u) for u in untagged), untagged
f = fetches(untagged)
assert f[1] == b"* 1 FETCH (UID 1)\r\n" and f[3] == b"* 3 FETCH (UID 3)\r\n", untagged
# ... and the expunged message is still answered as it was (RFC 2180 §4.1.1).
assert f[2] == b"* 2 FETCH (UID 2)\r\n" and status.startswith("OK"), (status, untagged)
untagged = b.ok("FETCH 2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert b"\\Deleted" in untagged[0] and b"Subject: message 2" in b"".join(untagged), untagged
untagged = b.ok("SEARCH ALL")
assert not any(re.match(rb"\* \d+ EXPUNGE", u) for u in untagged), untagged
untagged = b.ok("STORE 3 +FLAGS (\\Answered)")
assert not any(re.match(rb"\* \d+ EXPUNGE", u) for u in untagged), untagged
assert flags(fetches(untagged)[3]) == {"\\Answered"}, untagged
assert b.ok("NOOP") == [b"* 2 EXPUNGE\r\n"]
assert fetches(b.ok("FETCH 2 (UID)")) == {2: b"* 2 FETCH (UID 3)\r\n"}

# IDLE: a message delivered over SMTP shows up (the bench measures how fast).
tag = b.start("IDLE")
assert b.response().startswith(b"+"), "no continuation for IDLE"
s = smtplib.SMTP("127.0.0.1", SMTP)
s.sendmail("sender@remote.test", [ALICE], b"Subject: idle smtp\r\n\r\nx\r\n")
s.quit()
b.wait_for(b"* 3 EXISTS\r\n", 10.0)

# ... and one delivered over the API (by the test, in between).
print("idling", flush=True)
sys.stdin.readline()
b.wait_for(b"* 4 EXISTS\r\n", 10.0)

# ... and an EXPUNGE by A (allowed during IDLE).
a.ok("NOOP")
a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
a.ok("EXPUNGE")
b.wait_for(b"* 1 EXPUNGE\r\n", 10.0)

b.send("DONE\r\n")
untagged, status = b.finish(tag)
assert status.startswith("OK"), (status, untagged)
b.ok("NOOP")

# A message whose flags changed before B heard of it: EXISTS comes before its FETCH, never
# a FETCH of a message number B does not know (imaptest's stress run).
a.ok("CREATE fresh")
a.ok("SELECT fresh")
b.ok("SELECT fresh")
uid = appenduid(a.append("fresh", b"Subject: f\r\n\r\nx\r\n")[1])[1]
a.ok("UID STORE %d +FLAGS (\\Seen)" % uid)
untagged = b.ok("NOOP")
assert untagged[0] == b"* 1 EXISTS\r\n" and any(u.startswith(b"* 1 FETCH") for u in untagged), untagged
print("done", flush=True)
"#
        ),
    );
    assert_eq!(script.checkpoint(), "idling", "the script failed before IDLE (its error is above)");
    let (status, body) = node.deliver(ALICE, b"Subject: idle api\r\n\r\nx\r\n".to_vec()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    script.resume();
    assert_eq!(script.checkpoint(), "done", "the script failed after IDLE (its error is above)");
    assert!(script.finish());
}

/// IMAP4rev1 `\Recent` (RFC 3501 §2.3.2): new mail is recent in the first session that
/// selects the mailbox, and once that claim is applied other sessions see it as old; an
/// IMAP4rev2 session has no \Recent at all.
#[tokio::test]
async fn recent_messages_are_claimed_by_the_first_selecting_session() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 2).await;
    let out = imap(
        &node,
        r#"
a = Raw()
untagged = a.ok("SELECT INBOX")
assert b"* 2 RECENT\r\n" in untagged, untagged
assert b"\\Recent" in fetches(a.ok("FETCH 2 (FLAGS)"))[2]
# EXAMINE does not claim; it shows what is still unclaimed, so it reaches 0 once A's
# claim is applied.
b = Raw()
deadline = time.time() + 20
while b"* 0 RECENT\r\n" not in b.ok("EXAMINE INBOX"):
    assert time.time() < deadline, "A's claim of the recent messages was never applied"
    time.sleep(0.05)
assert b"\\Recent" not in fetches(b.ok("FETCH 2 (FLAGS)"))[2]
# A newer message is recent for the next session that selects, and A keeps its view.
assert appenduid(b.append("INBOX", b"Subject: third\r\n\r\nx\r\n")[1])[1] == 3
c = Raw()
assert b"* 1 RECENT\r\n" in c.ok("SELECT INBOX")
assert b"\\Recent" in fetches(a.ok("FETCH 1 (FLAGS)"))[1]
d = Raw()
d.ok("ENABLE IMAP4rev2")
assert not any(b"RECENT" in u for u in d.ok("SELECT INBOX"))
# A message that arrives while a session waits in IDLE is recent there (it was told
# first), and claimed: a session selecting afterwards does not see it as recent.
deadline = time.time() + 20
while b"* 0 RECENT\r\n" not in b.ok("EXAMINE INBOX"):
    assert time.time() < deadline, "C's claim was never applied"
    time.sleep(0.05)
e = Raw()
assert b"* 0 RECENT\r\n" in e.ok("SELECT INBOX")
tag = e.start("IDLE")
assert e.response().startswith(b"+")
assert appenduid(b.append("INBOX", b"Subject: fourth\r\n\r\nx\r\n")[1])[1] == 4
e.wait_for(b"* 1 RECENT\r\n", 10.0)
e.send("DONE\r\n")
e.finish(tag)
assert b"\\Recent" in fetches(e.ok("FETCH 4 (FLAGS)"))[4]
deadline = time.time() + 20
while b"* 0 RECENT\r\n" not in b.ok("EXAMINE INBOX"):
    assert time.time() < deadline, "E's claim of the message it was told of first was never applied"
    time.sleep(0.05)
# Two sessions told of the same new message: exactly one of them sees it as recent
# (imaptest's "append" checks this).
f, g = Raw(), Raw()
f.ok("SELECT INBOX")
g.ok("SELECT INBOX")
assert appenduid(g.append("INBOX", b"Subject: fifth\r\n\r\nx\r\n")[1])[1] == 5
f.ok("NOOP")
g.ok("NOOP")
recent_in = [b"\\Recent" in fetches(s.ok("FETCH 5 (FLAGS)"))[5] for s in (f, g)]
assert recent_in.count(True) == 1, recent_in
# EXAMINE shows what is unclaimed as recent, and claims nothing (RFC 3501 §6.3.2).
assert appenduid(b.append("INBOX", b"Subject: sixth\r\n\r\nx\r\n")[1])[1] == 6
for _ in range(2):
    assert b"* 1 RECENT\r\n" in Raw().ok("EXAMINE INBOX")
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn qresync_reports_vanished_and_changed_messages() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 5).await;
    let out = imap(
        &node,
        r#"
a = Raw()
untagged = a.ok("ENABLE QRESYNC")
assert len(untagged) == 1 and untagged[0].startswith(b"* ENABLED ") and b"QRESYNC" in untagged[0], untagged
untagged = a.ok("SELECT INBOX")
validity, modseq = code(untagged, "UIDVALIDITY"), code(untagged, "HIGHESTMODSEQ")
a.ok("LOGOUT")

# While A is away, B flags two messages and expunges two.
b = Raw()
b.ok("SELECT INBOX")
b.ok("STORE 2 +FLAGS (\\Flagged)")
b.ok("STORE 3,5 +FLAGS.SILENT (\\Deleted)")
b.ok("EXPUNGE")
b.ok("STORE 1 +FLAGS (\\Seen)")

a = Raw()
a.ok("ENABLE QRESYNC")
untagged = a.ok("SELECT INBOX (QRESYNC (%d %d))" % (validity, modseq))
assert b"* 3 EXISTS\r\n" in untagged, untagged
assert b"* VANISHED (EARLIER) 3,5\r\n" in untagged, untagged
f = fetches(untagged)
assert sorted(f) == [1, 2], untagged
assert uid_of(f[1]) == 1 and flags(f[1]) == {"\\Seen"} and modseq_of(f[1]) > modseq, f
assert uid_of(f[2]) == 2 and flags(f[2]) == {"\\Flagged"} and modseq_of(f[2]) > modseq, f
newest = code(untagged, "HIGHESTMODSEQ")
assert newest > modseq, untagged

# Known UIDs limit VANISHED; a SELECT while selected says [CLOSED] first.
untagged = a.ok("SELECT INBOX (QRESYNC (%d %d 1:4))" % (validity, modseq))
assert untagged[0].startswith(b"* OK [CLOSED]"), untagged
assert b"* VANISHED (EARLIER) 3\r\n" in untagged, untagged
# A stale UIDVALIDITY: no resynchronisation data at all.
untagged = a.ok("SELECT INBOX (QRESYNC (%d %d))" % (validity + 1, modseq))
assert not any(b"VANISHED" in u for u in untagged) and not fetches(untagged), untagged

# UID FETCH with CHANGEDSINCE and VANISHED.
untagged = a.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq)
assert untagged[0] == b"* VANISHED (EARLIER) 3,5\r\n", untagged
f = fetches(untagged)
assert sorted(f) == [1, 2] and flags(f[1]) == {"\\Seen"} and flags(f[2]) == {"\\Flagged"}, untagged
assert uid_of(f[1]) == 1 and uid_of(f[2]) == 2, untagged
untagged = a.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % modseq)
assert not any(b"VANISHED" in u for u in untagged) and sorted(fetches(untagged)) == [1, 2], untagged
assert a.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % newest) == []
status = a.cmd("FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq)[1]
assert status.startswith("BAD"), "VANISHED needs UID FETCH: " + status

# Live: an expunge by B reaches the QRESYNC session as VANISHED, not EXPUNGE.
b.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
b.ok("EXPUNGE")
assert a.ok("NOOP") == [b"* VANISHED 4\r\n"]

# While an expunge waits (no EXPUNGE/VANISHED during FETCH), MODSEQs A is sent are
# followed by a HIGHESTMODSEQ below it, and B's later flag change waits too, so a client
# caching what it saw and reconnecting is still told of the expunge (RFC 7162 §3.2).
before = code(a.ok("SELECT INBOX"), "HIGHESTMODSEQ")
b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
b.ok("EXPUNGE")
b.ok("STORE 1 +FLAGS ($Later)")
untagged = a.ok("FETCH 1 (MODSEQ)")
assert not any(b"VANISHED" in u for u in untagged), untagged
shown = code(untagged, "HIGHESTMODSEQ")
assert before <= shown < modseq_of(fetches(untagged)[1]), (before, untagged)
assert not any(b"$Later" in u for u in untagged), "the flag change waits with the expunge"
untagged = a.ok("NOOP")
assert untagged[0] == b"* VANISHED 2\r\n" and any(b"$Later" in u for u in untagged), untagged
a.ok("LOGOUT")
c = Raw()
c.ok("ENABLE QRESYNC")
untagged = c.ok("SELECT INBOX (QRESYNC (%d %d))" % (validity, shown))
assert b"* VANISHED (EARLIER) 2\r\n" in untagged, untagged

# STATUS of the selected mailbox reports a pending expunge first, so its HIGHESTMODSEQ is
# never above an expunge the session was not told of.
uid = appenduid(b.append("INBOX", b"Subject: sixth\r\n\r\nx\r\n")[1])[1]
assert b"* 2 EXISTS\r\n" in c.ok("NOOP")
b.ok("NOOP")
b.ok("UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
b.ok("EXPUNGE")
untagged = c.ok("STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
assert untagged[0] == b"* VANISHED %d\r\n" % uid, untagged
assert untagged[-1].startswith(b'* STATUS "INBOX" (MESSAGES 1 HIGHESTMODSEQ '), untagged
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn quota_is_reported_and_enforced() {
    let node = node_with_account("", Some(20 * 1024)).await;
    let out = imap(
        &node,
        r#"
r = Raw()
caps = r.ok("CAPABILITY")[0]
assert b" QUOTA " in caps and b" QUOTA=RES-STORAGE" in caps, caps
assert r.ok("GETQUOTAROOT INBOX") == [b'* QUOTAROOT "INBOX" ""\r\n', b'* QUOTA "" (STORAGE 0 20)\r\n']
assert r.append("INBOX", sized(3000))[1].startswith("OK")
assert r.ok("GETQUOTAROOT INBOX") == [b'* QUOTAROOT "INBOX" ""\r\n', b'* QUOTA "" (STORAGE 3 20)\r\n']
assert r.append("INBOX", sized(5000))[1].startswith("OK")
assert r.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 8 20)\r\n']

# Past the quota: refused, and nothing was added.
status = r.append("INBOX", sized(15000, "too much"))[1]
assert status.startswith("NO [OVERQUOTA]"), status
assert r.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 8 20)\r\n']
assert r.ok("STATUS INBOX (MESSAGES)") == [b'* STATUS "INBOX" (MESSAGES 2)\r\n']
# Up to the quota exactly is fine; one octet more is not.
assert r.append("INBOX", sized(20480 - 8000))[1].startswith("OK")
assert r.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 20 20)\r\n']
status = r.append("INBOX", sized(100, "one more"))[1]
assert status.startswith("NO [OVERQUOTA]"), status
r.ok("SELECT INBOX")
status = r.cmd("COPY 1 Archive")[1]
assert status.startswith("NO [OVERQUOTA]"), "COPY past the quota: " + status
# Expunging frees space.
r.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
r.ok("EXPUNGE")
assert r.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 8 20)\r\n']
assert r.append("INBOX", sized(100, "fits again"))[1].startswith("OK")
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn hostile_input_is_refused_without_harm() {
    let node = node_with_account("[imap]\nmax_append_size = 100000\n", None).await;
    deliver_numbered(&node, 1).await;
    let out = imap(
        &node,
        r#"
r = Raw()
caps = r.ok("CAPABILITY")[0]
assert b" APPENDLIMIT=100000" in caps, caps

# A literal over APPENDLIMIT is refused instead of the continuation request.
tag = r.start("APPEND INBOX {100001}")
first = r.response()
assert first.startswith(tag.encode() + b" NO [TOOBIG]"), first
r.ok("NOOP")
assert appenduid(r.append("INBOX", sized(100000, "at the limit"))[1])[1] == 2

# A synchronising literal never sent blocks nobody else.
stuck = Raw()
stuck.ok("SELECT INBOX")
stuck_tag = stuck.start("APPEND INBOX {500}")
assert stuck.response().startswith(b"+")
unauthenticated = Raw(user=None)
login_tag = unauthenticated.start("LOGIN {17}")
assert unauthenticated.response().startswith(b"+")
started = time.time()
other = Raw()
other.ok("SELECT INBOX")
assert appenduid(other.append("INBOX", b"Subject: meanwhile\r\n\r\nx\r\n")[1])[1] == 3
other.ok("FETCH 1:* (FLAGS)")
other.ok("LOGOUT")
assert time.time() - started < 5, "another client waited for a stuck literal"
# The stuck session was only waiting.
stuck.send(sized(500, "late") + b"\r\n")
assert appenduid(stuck.finish(stuck_tag)[1])[1] == 4
unauthenticated.close()

# 10,000 nested parentheses, NOTs: BAD, and the session goes on.
r.ok("SELECT INBOX")
status = r.cmd("SEARCH " + "(" * 10000 + "ALL" + ")" * 10000)[1]
assert status.startswith("BAD"), status
status = r.cmd("SEARCH " + "NOT " * 10000 + "ALL")[1]
assert status.startswith("BAD"), status
assert numbers(r.ok("SEARCH ALL")) == [1, 2, 3, 4]

# Commands in the wrong state, unknown commands, broken syntax: BAD.
u = Raw(user=None)
for command in ["SELECT INBOX", "FETCH 1 FLAGS", 'LIST "" "*"', "EXPUNGE", "IDLE", "FROBNICATE", "NOOP extra"]:
    status = u.cmd(command)[1]
    assert status.startswith("BAD"), (command, status)
tag = u.start("APPEND INBOX {10}")
first = u.response()
assert first.startswith(tag.encode() + b" BAD") or first.startswith(tag.encode() + b" NO"), first
u.ok("NOOP")
u.ok("LOGIN %s %s" % (q(ALICE), q(PASSWORD)))
for command in ["FETCH 1 FLAGS", "STORE 1 +FLAGS (\\Seen)", "SEARCH ALL", "EXPUNGE", "CLOSE", "UID FETCH 1 FLAGS",
                "COPY 1 Trash", "FROBNICATE", "SELECT", "FETCH", "UID FROB 1"]:
    status = u.cmd(command)[1]
    assert status.startswith("BAD"), (command, status)
u.ok("SELECT INBOX")
for command in ["FETCH 0 FLAGS", "FETCH 99 FLAGS", "FETCH 1 (FLAGS", "FETCH 1 NOSUCHITEM", "STORE 1 FLAGS \\Seen)"]:
    status = u.cmd(command)[1]
    assert status.startswith("BAD"), (command, status)
u.ok("NOOP")

# A client gone in the middle of an APPEND literal leaves nothing behind.
before = r.ok("STATUS INBOX (MESSAGES UIDNEXT)")
cut = Raw()
tag = cut.start("APPEND INBOX {5000}")
assert cut.response().startswith(b"+")
cut.send(b"Subject: cut\r\n\r\n" + b"x" * 2000)
cut.close()
cut = Raw()
cut.send(b"T1 APPEND INBOX {5000+}\r\nSubject: cut too\r\n\r\n" + b"x" * 1000)
cut.close()
time.sleep(1)
assert r.ok("STATUS INBOX (MESSAGES UIDNEXT)") == before, before
check = Raw()
untagged = check.ok("SELECT INBOX")
assert b"* 4 EXISTS\r\n" in untagged, untagged

# A 1 MB line without CRLF: the server ends the session instead of reading on.
big = Raw(port=IMAP, tls=False, user=None)
def blast():
    try:
        big.sock.sendall(b"T1 NOOP " + b"x" * 1000000)
    except OSError:
        pass
sender = threading.Thread(target=blast, daemon=True)
sender.start()
received, ended = b"", False
big.sock.settimeout(5)
try:
    while True:
        data = big.sock.recv(65536)
        if not data:
            ended = True
            break
        received += data
except ConnectionResetError:
    ended = True
except (socket.timeout, TimeoutError):
    pass
# ... and it still serves everyone else, meanwhile and afterwards.
fresh = Raw()
fresh.ok("SELECT INBOX")
assert numbers(fresh.ok("SEARCH ALL")) == [1, 2, 3, 4]
plain = Raw(port=IMAP, tls=False, user=None)
plain.ok("NOOP")
if not ended:
    # What the server does once the line finally ends, for the failure message.
    sender.join(5)
    big.sock.settimeout(5)
    try:
        big.sock.sendall(b"\r\n")
        received += big.sock.recv(65536)
    except (OSError, socket.timeout, TimeoutError) as e:
        received += repr(e).encode()
assert ended, "the connection was still open 5 s after a 1 MB line without CRLF; after a CRLF: %r" % received[:200]
assert received == b"" or received.startswith(b"* BYE"), received[:200]
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert!(!node.log().contains("panicked"), "{}", node.log());
}

/// A sequence set of `1:*` on a mailbox of 131,072 messages (made by doubling COPYs) is
/// answered in full, in bounded memory: FETCH reads and writes the records in chunks (the
/// node's peak RSS grows by less than 24 MiB over a warmed-up run), and STORE commits
/// 4,096 messages per command (one command for all grew the peak RSS by 120 MiB, and a
/// log entry and apply batch that grow with the mailbox), which their MODSEQs show.
#[tokio::test]
async fn fetch_and_store_1_star_on_a_131072_message_mailbox_in_bounded_memory() {
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        &format!(
            r#"
PID = {pid}
def rss_kib(field):
    for line in open("/proc/%d/status" % PID):
        if line.startswith(field + ":"):
            return int(line.split()[1])
r = Raw()
r.ok("CREATE big")
assert r.append("big", b"Subject: one of many\r\n\r\nx\r\n")[1].startswith("OK")
r.ok("SELECT big")
for _ in range(17):
    r.ok("COPY 1:* big")
untagged = r.ok("SELECT big")
assert b"* 131072 EXISTS\r\n" in untagged, untagged
assert len(fetches(r.ok("FETCH 1:* (FLAGS)"))) == 131072
# Measured from here: the peak RSS is reset (clear_refs 5), then read again.
open("/proc/%d/clear_refs" % PID, "w").write("5")
before = rss_kib("VmRSS")
f = fetches(r.ok("FETCH 1:* (UID FLAGS)"))
assert len(f) == 131072 and uid_of(f[131072]) == 131072, len(f)
# Measured: about 5 MiB alone, 19 MiB with the whole suite running; holding every record
# and the response at once would take about 32 MiB more.
grown = rss_kib("VmHWM") - before
assert grown < 24 * 1024, "FETCH 1:* grew the node's peak RSS by %d KiB" % grown
untagged = r.ok("STORE 1:* +FLAGS.SILENT (\\Seen)")
assert not fetches(untagged), untagged[:3]
assert numbers(r.ok("SEARCH UNSEEN")) == []
f = fetches(r.ok("FETCH 1,4096,4097,131072 (MODSEQ)"))
modseqs = [modseq_of(f[n]) for n in (1, 4096, 4097, 131072)]
assert modseqs[0] == modseqs[1] < modseqs[2] < modseqs[3], modseqs
# EXPUNGE of them all, 4,096 per command too: 32 commands, 32 MODSEQs.
r.ok("STORE 1:* +FLAGS.SILENT (\\Deleted)")
highest = lambda: int(re.search(rb"HIGHESTMODSEQ (\d+)", r.ok("STATUS big (HIGHESTMODSEQ)")[0]).group(1))
before = highest()
untagged = r.ok("EXPUNGE")
assert highest() == before + 32, (before, highest())
assert len(untagged) == 131072 and untagged[-1] == b"* 1 EXPUNGE\r\n", (len(untagged), untagged[-3:])
assert b"* 0 EXISTS\r\n" in r.ok("SELECT big")
print("ok")
"#,
            pid = node.pid()
        ),
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn an_appended_message_survives_kill_9() {
    let mut node = node_with_account("", None).await;
    let message = r#"MSG = b"From: alice@example.com\r\nSubject: durable\r\n\r\nmust survive kill -9\r\n"
"#;
    let out = imap(
        &node,
        &format!(
            "{message}{}",
            r#"
r = Raw()
validity, uid = appenduid(r.append("INBOX", MSG, flags="\\Flagged", date="05-Mar-2026 08:00:00 +0000")[1])
r.ok("SELECT INBOX")
r.ok("UID STORE %d +FLAGS (\\Answered)" % uid)
print(validity, uid)
"#
        ),
    );
    let (validity, uid) = out.trim().split_once(' ').expect("validity and uid");
    node.kill9();
    node.start().await;
    let out = imap(
        &node,
        &format!(
            "{message}VALIDITY = {validity}\nUID = {uid}\n{}",
            r#"
r = Raw()
untagged = r.ok("SELECT INBOX")
assert b"* 1 EXISTS\r\n" in untagged and code(untagged, "UIDVALIDITY") == VALIDITY, untagged
f = fetches(r.ok("UID FETCH %d (FLAGS INTERNALDATE BODY.PEEK[])" % UID))
assert list(f) == [1] and uid_of(f[1]) == UID, f
assert item(f[1], b"BODY[]") == MSG, f
assert flags(f[1]) == {"\\Flagged", "\\Answered"}, f
assert b'INTERNALDATE "05-Mar-2026 08:00:00 +0000"' in f[1], f
# The UID is not given out again.
assert appenduid(r.append("INBOX", b"Subject: after\r\n\r\nx\r\n")[1]) == (VALIDITY, UID + 1)
print("ok")
"#
        ),
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn pop3_and_imap_share_the_inbox() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 3).await;
    let out = imap(
        &node,
        r#"
r = Raw()
r.ok("SELECT INBOX")

# DELE over POP3 (with QUIT) is an expunge for the IMAP session.
p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
p.user(ALICE)
p.pass_(PASSWORD)
assert p.stat()[0] == 3
p.dele(1)
p.quit()
assert r.ok("NOOP") == [b"* 1 EXPUNGE\r\n"]
f = fetches(r.ok("FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
assert [uid_of(f[n]) for n in sorted(f)] == [2, 3], f

# An expunge over IMAP is gone for the next POP3 session.
r.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
assert r.ok("EXPUNGE") == [b"* 1 EXPUNGE\r\n"]
p = poplib.POP3_SSL("127.0.0.1", POP3S, context=ctx)
p.user(ALICE)
p.pass_(PASSWORD)
assert p.stat()[0] == 1, p.stat()
assert b"Subject: message 3" in p.retr(1)[1]
p.quit()
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn curl_fetches_a_message_over_imaps_and_starttls() {
    let node = node_with_account("", None).await;
    let message = b"From: sender@remote.test\r\nTo: alice@example.com\r\nSubject: for curl\r\n\r\nfetched by curl\r\n";
    let (status, body) = node.deliver(ALICE, message.to_vec()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stored = node.read_message(ALICE, 1).await;
    assert!(stored.ends_with(b"\r\n\r\nfetched by curl\r\n"), "{}", String::from_utf8_lossy(&stored));
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--insecure", "--max-time", "20"])
            .args(["--user", "alice@example.com:password"])
            .args(args)
            .output()
            .expect("curl (installed by tools/dev/deps.sh test)");
        assert!(output.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    let imaps = format!("imaps://127.0.0.1:{}", node.imaps.port());
    assert_eq!(curl(&[&format!("{imaps}/INBOX;UID=1")]), stored, "curl over IMAPS");
    let starttls = format!("imap://127.0.0.1:{}/INBOX;UID=1", node.imap.port());
    assert_eq!(curl(&["--ssl-reqd", &starttls]), stored, "curl over STARTTLS");
    let listing = String::from_utf8(curl(&[&format!("{imaps}/")])).expect("utf-8");
    assert!(listing.contains("\"INBOX\"") && listing.contains("\\Sent"), "{listing}");
    let search = String::from_utf8(curl(&[&format!("{imaps}/INBOX?SUBJECT%20curl")])).expect("utf-8");
    assert_eq!(search.trim(), "* SEARCH 1", "{search}");
}

/// Runs mbsync (isync) with `config`; panics with its output when it fails.
fn mbsync(config: &std::path::Path) -> String {
    let output = Command::new("mbsync")
        .arg("-c")
        .arg(config)
        .arg("-a")
        .output()
        .expect("mbsync (package isync, installed by tools/dev/deps.sh test)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "mbsync failed:\n{text}");
    text
}

/// The message files of one maildir folder (cur and new).
fn maildir_files(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(entries) = std::fs::read_dir(folder.join(sub)) {
            files.extend(entries.map(|entry| entry.expect("dir entry").path()));
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn mbsync_synchronises_both_ways() {
    let node = node_with_account("", None).await;
    deliver_numbered(&node, 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mail = dir.path().join("mail");
    std::fs::create_dir_all(&mail).expect("maildir root");
    let config = dir.path().join("mbsyncrc");
    std::fs::write(
        &config,
        format!(
            "IMAPAccount wmail\nHost 127.0.0.1\nPort {port}\nUser {ALICE}\nPass {PASSWORD}\nSSLType IMAPS\n\
             CertificateFile {cert}\n\nIMAPStore remote\nAccount wmail\n\nMaildirStore local\nPath {mail}/\n\
             Inbox {mail}/INBOX\nSubFolders Verbatim\n\nChannel sync\nFar :remote:\nNear :local:\nPatterns *\n\
             Create Both\nExpunge Both\nSyncState *\n",
            port = node.imaps.port(),
            cert = node.data_dir.join("tls/cert.pem").display(),
            mail = mail.display(),
        ),
    )
    .expect("write mbsyncrc");

    // First run: the server's mailboxes and messages arrive.
    mbsync(&config);
    let inbox = maildir_files(&mail.join("INBOX"));
    assert_eq!(inbox.len(), 3, "{inbox:?}");
    for name in ["Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(mail.join(name).join("cur").is_dir(), "{name} was not created locally");
    }
    let first = std::fs::read(&inbox[0]).expect("read message");
    assert!(String::from_utf8_lossy(&first).contains("Subject: message"), "{}", String::from_utf8_lossy(&first));

    // Local changes: one message read, one deleted, a new folder with a new message.
    let (seen, deleted) = (&inbox[0], &inbox[1]);
    let flagged = |path: &std::path::Path, flag: char| {
        let name = path.file_name().expect("file name").to_string_lossy().into_owned();
        let base = name.split(":2,").next().expect("base").to_owned();
        let flags = name.split(":2,").nth(1).unwrap_or("");
        let mut flags: Vec<char> = flags.chars().chain([flag]).collect();
        flags.sort();
        flags.dedup();
        mail.join("INBOX/cur").join(format!("{base}:2,{}", flags.into_iter().collect::<String>()))
    };
    std::fs::rename(seen, flagged(seen, 'S')).expect("mark seen");
    std::fs::rename(deleted, flagged(deleted, 'T')).expect("mark deleted");
    let projects = mail.join("Projects");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(projects.join(sub)).expect("maildir");
    }
    let new_message = "From: alice@example.com\r\nTo: bob@remote.test\r\nSubject: written offline\r\n\r\nplan\r\n";
    std::fs::write(projects.join("new/1700000000.1.local"), new_message).expect("write message");
    mbsync(&config);

    // The server now has the changes.
    let out = imap(
        &node,
        r#"
m = imaps()
m.select("INBOX")
typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
flags = [line[0] for line in data if isinstance(line, tuple)]
assert len(flags) == 2, data
assert sum(b"\\Seen" in f for f in flags) == 1, flags
typ, data = m.select("Projects")
assert typ == "OK" and data == [b"1"], data
typ, data = m.fetch("1", "(BODY.PEEK[])")
# mbsync adds its own X-TUID header while uploading; the rest arrives as written.
body = data[0][1]
assert b"Subject: written offline\r\n" in body and body.endswith(b"\r\n\r\nplan\r\n"), data
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(maildir_files(&mail.join("INBOX")).len(), 2, "the deleted message was expunged locally too");

    // Nothing changed since: a third run finds nothing to do.
    let quiet = mbsync(&config);
    assert!(!quiet.contains("Error"), "{quiet}");
    assert_eq!(maildir_files(&mail.join("INBOX")).len(), 2);
    assert_eq!(maildir_files(&projects).len(), 1);
}

#[tokio::test]
async fn parallel_correct_logins_never_lock_the_account() {
    // Regression: each attempt used to count as a failure until it finished, so 20 correct
    // logins in flight at once locked the account for two days.
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
import threading
results = []
def login():
    m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
    try:
        results.append(m.login(ALICE, PASSWORD)[0])
        m.logout()
    except imaplib.IMAP4.error as e:
        results.append(str(e))
threads = [threading.Thread(target=login) for _ in range(30)]
for t in threads: t.start()
for t in threads: t.join()
assert not any("failed logins" in r or "AUTHENTICATIONFAILED" in r for r in results), results
assert all(r == "OK" or "UNAVAILABLE" in r for r in results), results
assert results.count("OK") >= 20, results
m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
assert m.login(ALICE, PASSWORD)[0] == "OK"
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn a_correct_password_is_remembered_and_a_changed_one_is_checked_again() {
    let node = node_with_account("", None).await;
    let checks = || async {
        let hashed = node.metric("wmail_login_password_hashes_total").await;
        let remembered = node.metric("wmail_login_passwords_remembered_total").await;
        (hashed, remembered)
    };
    let logins = |attempts: &str| {
        let script = format!(
            r#"
for password, expected in {attempts}:
    m = imaplib.IMAP4_SSL("127.0.0.1", IMAPS, ssl_context=ctx)
    try:
        result = m.login(ALICE, password)[0]
    except imaplib.IMAP4.error as e:
        result = str(e)
    assert (result == "OK") == expected, (password, result)
print("ok")
"#
        );
        assert_eq!(imap(&node, &script).trim(), "ok");
    };
    let before = checks().await;
    // The first correct login runs argon2; the next ones are answered from memory. A wrong
    // password is checked in full every time.
    logins(
        r#"[(PASSWORD, True), (PASSWORD, True), ("wrong password", False), (PASSWORD, True), ("wrong password", False)]"#,
    );
    let after = checks().await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (3.0, 2.0), "{before:?} -> {after:?}");
    // A new password is a new hash: the old one no longer logs in, the new one is checked once.
    let body = json!({ "password": "a brand new password" });
    assert_eq!(node.api(Method::PATCH, "/accounts/alice@example.com", Some(body)).await.0, StatusCode::OK);
    logins(r#"[(PASSWORD, False), ("a brand new password", True), ("a brand new password", True)]"#);
    let last = checks().await;
    assert_eq!((last.0 - after.0, last.1 - after.1), (2.0, 1.0), "{after:?} -> {last:?}");
}

#[tokio::test]
async fn threadid_and_emailid_follow_rfc_8474() {
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
m = imaps()
root = b"Message-ID: <root@x>\r\nSubject: plan\r\n\r\nroot\r\n"
reply = b"Message-ID: <reply@x>\r\nIn-Reply-To: <root@x>\r\nReferences: <root@x>\r\nSubject: Re: plan\r\n\r\nreply\r\n"
other = b"Message-ID: <other@x>\r\nSubject: lunch\r\n\r\nother\r\n"
for message in (root, reply, other):
    assert m.append("INBOX", None, None, message)[0] == "OK"
assert m.append("Archive", None, None, root)[0] == "OK"
m.select("INBOX")
typ, data = m.fetch("1:3", "(THREADID EMAILID)")
ids = [re.search(rb"THREADID \((T[0-9a-f]+)\) EMAILID \((E[0-9a-f]+)\)", line).groups() for line in data]
assert ids[0][0] == ids[1][0] and ids[0][0] != ids[2][0], ids
assert len({e for _, e in ids}) == 3, ids
typ, data = m.search(None, "THREADID", ids[0][0].decode())
assert data == [b"1 2"], data
m.select("Archive")
typ, data = m.fetch("1", "(THREADID EMAILID)")
archived = re.search(rb"THREADID \((T[0-9a-f]+)\) EMAILID \((E[0-9a-f]+)\)", data[0]).groups()
assert archived == ids[0], "the same message and its thread keep their ids in every mailbox: %r %r" % (archived, ids[0])
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
}

#[tokio::test]
async fn a_session_resyncs_after_the_change_log_is_trimmed_past_it() {
    // Change logs keep 10,000-20,000 entries per account; a session that slept through more
    // rebuilds its view from the mailbox and still reports exactly what changed.
    let node = node_with_account("", None).await;
    let out = imap(
        &node,
        r#"
a = imaps()
b = imaps()
for n in range(50):
    assert b.append("INBOX", None, None, ("Subject: m%d\r\n\r\nbody\r\n" % n).encode())[0] == "OK"
a.select("INBOX")
b.select("INBOX")
for n in range(420):
    assert b.store("1:50", "+FLAGS.SILENT" if n % 2 == 0 else "-FLAGS.SILENT", "(\\Flagged)")[0] == "OK"
b.store("3", "+FLAGS.SILENT", "(\\Answered)")
b.store("5", "+FLAGS.SILENT", "(\\Deleted)")
b.expunge()
b.append("INBOX", None, None, b"Subject: new\r\n\r\nbody\r\n")
a.untagged_responses.clear()
assert a.noop()[0] == "OK"
assert a.untagged_responses.get("EXPUNGE") == [b"5"], a.untagged_responses
assert a.untagged_responses.get("EXISTS") == [b"50"], a.untagged_responses
fetches = a.untagged_responses.get("FETCH", [])
assert any(b"\\Answered" in f for f in fetches), fetches
a.untagged_responses.clear()
typ, data = a.fetch("3", "(FLAGS)")
assert b"\\Answered" in data[0], data
a.untagged_responses.clear()
typ, data = a.fetch("50", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert b"Subject: new" in data[0][1], data
print("ok")
"#,
    );
    assert_eq!(out.trim(), "ok");
    assert!(node.log().contains("change log trimmed past this session"), "the resync path was not taken");
}
