"""A scriptable receiving MTA for wmail's outbound tests, built on aiosmtpd.

Usage: mail_sink.py PORT DIR CERT KEY

Behaviour comes from DIR/behaviour.json, re-read for every command so a test can change
it while the sink runs:
  {"rcpt": {"carol@sink.test": "550 5.1.1 no such user"},      # fixed RCPT replies
   "rcpt_fail_first": {"retry@sink.test": [2, "451 4.2.0 later"]},  # first N RCPTs fail
    "data": "250 2.0.0 OK",                                      # reply to the data
   "data_delay": 30,                                            # seconds before replying
   "no_8bitmime": true}                                         # do not offer 8BITMIME
Every session is logged to DIR/events.log ("connect ID", "starttls ID", "mail ID FROM
OPTIONS", "rcpt ID ADDRESS OPTIONS REPLY", "data ID N"), and each accepted message is
stored as DIR/msg-N.eml with its envelope in DIR/msg-N.json.
"""
import asyncio, itertools, json, os, ssl, sys, threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

port, directory, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sessions = itertools.count(1)
# A restarted sink continues the numbering of the messages already in DIR.
messages = itertools.count(1 + sum(1 for name in os.listdir(directory) if name.endswith(".eml")))
rcpt_counts = {}


def behaviour():
    try:
        with open(os.path.join(directory, "behaviour.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def log(line):
    with open(os.path.join(directory, "events.log"), "a") as f:
        f.write(line + "\n")


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        if not hasattr(session, "sink_id"):
            session.sink_id = next(sessions)
            log(f"connect {session.sink_id}")
        elif session.ssl is not None:
            log(f"starttls {session.sink_id}")
        session.host_name = hostname
        if behaviour().get("no_8bitmime"):
            responses = [r for r in responses if "8BITMIME" not in r]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        log(f"mail {session.sink_id} <{address}> {' '.join(mail_options)}")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rules = behaviour()
        reply = rules.get("rcpt", {}).get(address)
        first = rules.get("rcpt_fail_first", {}).get(address)
        if reply is None and first is not None:
            rcpt_counts[address] = rcpt_counts.get(address, 0) + 1
            if rcpt_counts[address] <= first[0]:
                reply = first[1]
        reply = reply or "250 2.1.5 OK"
        log(f"rcpt {session.sink_id} <{address}> {' '.join(rcpt_options)} {reply}")
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        log(f"data-started {session.sink_id}")
        rules = behaviour()
        if rules.get("data_delay"):
            await asyncio.sleep(rules["data_delay"])
        reply = rules.get("data", "250 2.0.0 OK")
        if reply.startswith("2"):
            n = next(messages)
            with open(os.path.join(directory, f"msg-{n}.eml"), "wb") as f:
                f.write(envelope.original_content or envelope.content)
            meta = {"from": envelope.mail_from, "to": envelope.rcpt_tos, "mail_options": envelope.mail_options,
                    "rcpt_options": envelope.rcpt_options, "session": session.sink_id, "tls": session.ssl is not None}
            # The envelope file marks the message as complete: write it aside, then rename,
            # so a reader never sees it half written.
            with open(os.path.join(directory, f"msg-{n}.json.tmp"), "w") as f:
                json.dump(meta, f)
            os.replace(os.path.join(directory, f"msg-{n}.json.tmp"), os.path.join(directory, f"msg-{n}.json"))
            log(f"data {session.sink_id} {n}")
        else:
            log(f"data {session.sink_id} refused {reply}")
        return reply


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=False,
                        enable_SMTPUTF8=True, decode_data=False, data_size_limit=64 * 1024 * 1024,
                        server_hostname="mx.sink.test")
controller.start()
log("ready")
threading.Event().wait()
