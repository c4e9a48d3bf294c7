#!/usr/bin/env python3
"""Small IMAP/submission helper of the mail client tests (roundcube.sh and mutt.sh, run by
the Rust test `clients::roundcube_and_mutt_work_against_a_node` and by hand): it seeds the
test messages and checks over a separate connection what the server really did.

Environment: HOST (127.0.0.1), IMAP_PORT, SUB_PORT, ADDRESS, PASSWORD,
IMAP_SECURITY (starttls | ssl | plain). Every network operation times out after 20 s.

  imapq.py seed RUN                 submit the test messages to ADDRESS (submission, STARTTLS+AUTH)
  imapq.py deliver TEXT             submit one message with Subject TEXT to ADDRESS
  imapq.py append MBOX TEXT         APPEND a message with Subject TEXT from a foreign author
                                    (sender@remote.test), as if it had come from outside
  imapq.py wait MBOX TEXT N [SECS]  wait (default 30 s) until MBOX has >= N messages whose
                                    Subject contains TEXT; prints the count, exit 1 on timeout
  imapq.py count MBOX TEXT          number of messages in MBOX whose Subject contains TEXT
  imapq.py uid MBOX TEXT            UID of the first such message ("" if none)
  imapq.py flags MBOX TEXT          flags of the first such message ("NONE" if none)
  imapq.py folders                  raw LIST "" "*" mailbox names, one per line
  imapq.py store MBOX TEXT SPEC     UID STORE SPEC (say "+FLAGS (\\Flagged)") on the first such message
  imapq.py expunge MBOX TEXT        \\Deleted + EXPUNGE the first such message
  imapq.py cleanup RUN              delete the messages whose Subject contains RUN (all folders)
                                    and the folders whose name contains RUN

TEXT is matched with SEARCH SUBJECT (keep it ASCII).
"""
import base64
import imaplib
import os
import re
import smtplib
import ssl
import sys
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

TIMEOUT = 20
E = os.environ
HOST, ADDR, PW = E.get('HOST', '127.0.0.1'), E['ADDRESS'], E['PASSWORD']
# The test node has a self-signed certificate.
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def imap():
    port, sec = int(E['IMAP_PORT']), E.get('IMAP_SECURITY', 'starttls')
    if sec == 'ssl':
        m = imaplib.IMAP4_SSL(HOST, port, ssl_context=CTX, timeout=TIMEOUT)
    else:
        m = imaplib.IMAP4(HOST, port, timeout=TIMEOUT)
        if sec == 'starttls':
            m.starttls(ssl_context=CTX)
    m._encoding = 'utf-8'
    m.authenticate('PLAIN', lambda _: b'\0' + ADDR.encode() + b'\0' + PW.encode())
    return m


def quoted(name):
    return '"' + name.replace('\\', '\\\\').replace('"', '\\"') + '"'


def uids(m, box, text):
    """UIDs of the messages in box whose Subject contains text; None if box is missing."""
    typ, _ = m.select(quoted(box), readonly=True)
    if typ != 'OK':
        return None
    typ, d = m.uid('SEARCH', 'SUBJECT', quoted(text))
    return d[0].split() if typ == 'OK' and d and d[0] else []


def submit(msgs):
    with smtplib.SMTP(HOST, int(E['SUB_PORT']), timeout=TIMEOUT) as s:
        s.starttls(context=CTX)
        s.ehlo()
        # AUTH PLAIN by hand: smtplib's login() cannot send a non-ASCII password.
        token = base64.b64encode(b'\0' + ADDR.encode() + b'\0' + PW.encode()).decode()
        code, resp = s.docmd('AUTH', 'PLAIN ' + token)
        if code != 235:
            raise SystemExit(f'AUTH failed: {code} {resp!r}')
        for m in msgs:
            s.send_message(m)


def msg(subject, body, sender=None, **hdr):
    m = EmailMessage()
    m['From'] = sender or ADDR
    m['To'] = ADDR
    m['Subject'] = subject
    m['Date'] = formatdate(localtime=True)
    m['Message-ID'] = hdr.pop('mid', make_msgid(domain='test.invalid'))
    for k, v in hdr.items():
        m[k.replace('_', '-')] = v
    m.set_content(body, charset='utf-8')
    return m


def seed(run):
    out = [msg(f'{run} plain', f'plain text body kw{run}\n')]
    m = msg(f'{run} attach', 'Please find the report attached.\n')
    m.add_alternative('<html><body><p>Please find the <b>report</b> attached.</p></body></html>', subtype='html')
    m.add_attachment(b'%PDF-1.4 fake pdf content\n' * 50, maintype='application', subtype='pdf', filename='report.pdf')
    m.add_attachment('col1,col2\n1,2\n', subtype='csv', filename='données.csv')
    out.append(m)
    out.append(msg(f'{run} cjk 你好 中文', '这是一封中文测试邮件。关键词：熊猫。\n'))
    inner = msg('Inner 内部 subject', 'inner text part\n')
    inner.add_attachment(b'\x00\x01binary', maintype='application', subtype='octet-stream', filename='inner.bin')
    m = msg(f'{run} fwd', 'see the forwarded message\n')
    m.add_attachment(inner)  # message/rfc822
    out.append(m)
    mid = make_msgid(domain='test.invalid')
    out.append(msg(f'{run} thread', 'thread root\n', mid=mid))
    out.append(msg(f'Re: {run} thread', 'thread reply\n', In_Reply_To=mid, References=mid))
    for name in ['copyme', 'flagme', 'readme', 'deleteme', 'moveme']:
        out.append(msg(f'{run} {name}', f'body of {name} 中文\n'))
    m = msg(f'{run} viewme', 'view me\n')
    m.add_attachment(b'PK\x03\x04 fake zip', maintype='application', subtype='zip', filename='a.zip')
    out.append(m)
    submit(out)
    print(len(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == 'seed':
        return seed(args[0])
    if cmd == 'deliver':
        return submit([msg(args[0], 'delivered by imapq\n')])
    m = imap()
    try:
        if cmd == 'wait':
            box, text, n = args[0], args[1], int(args[2])
            deadline = time.time() + (float(args[3]) if len(args) > 3 else 30)
            while True:
                got = len(uids(m, box, text) or [])
                if got >= n or time.time() > deadline:
                    print(got)
                    return 0 if got >= n else 1
                time.sleep(0.3)
        elif cmd == 'append':
            body = msg(args[1], 'a message from outside, to be redirected\n',
                       sender='Remote Sender <sender@remote.test>')
            typ, d = m.append(quoted(args[0]), None, None, body.as_bytes(policy=body.policy.clone(linesep='\r\n')))
            print(typ)
            return 0 if typ == 'OK' else 1
        elif cmd == 'count':
            u = uids(m, args[0], args[1])
            print('NOFOLDER' if u is None else len(u))
        elif cmd == 'uid':
            u = uids(m, args[0], args[1]) or []
            print(u[0].decode() if u else '')
        elif cmd == 'flags':
            u = uids(m, args[0], args[1]) or []
            if not u:
                print('NONE')
            else:
                typ, d = m.uid('FETCH', u[0].decode(), '(FLAGS)')
                print(re.search(rb'FLAGS \(([^)]*)\)', d[0]).group(1).decode())
        elif cmd in ('store', 'expunge'):
            u = uids(m, args[0], args[1]) or []
            if not u:
                print('NONE')
                return 1
            m.select(quoted(args[0]))
            spec = args[2].split(' ', 1) if cmd == 'store' else ['+FLAGS.SILENT', '(\\Deleted)']
            typ, _ = m.uid('STORE', u[0].decode(), *spec)
            if cmd == 'expunge':
                m.expunge()
            print(typ)
        elif cmd == 'folders':
            typ, d = m.list()
            for line in d:
                print(re.search(rb'"/" (.*)$', line).group(1).decode().strip('"'))
        elif cmd == 'cleanup':
            run = args[0]
            typ, d = m.list()
            names = [re.search(rb'"/" (.*)$', line).group(1).decode().strip('"') for line in d]
            for box in names:
                if run in box:
                    continue
                u = uids(m, box, run)
                if u:
                    m.select(quoted(box))
                    m.uid('STORE', b','.join(u).decode(), '+FLAGS.SILENT', '(\\Deleted)')
                    m.expunge()
            if m.state == 'SELECTED':
                m.close()
            for box in sorted((b for b in names if run in b), key=len, reverse=True):
                m.delete(quoted(box))
        else:
            raise SystemExit(f'unknown command {cmd!r}; see {sys.argv[0]} source')
        return 0
    finally:
        try:
            m.logout()
        except Exception:
            pass


if __name__ == '__main__':
    try:
        sys.exit(main() or 0)
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.error) as e:
        # one line for the calling script's FAIL message instead of a traceback
        sys.exit(f'imapq.py {" ".join(sys.argv[1:2])}: {type(e).__name__}: {e}')
