//! Delivery status notifications (RFC 3464 `multipart/report`, RFC 3461 semantics): the
//! bounce, delay and success reports sent back to a message's sender.

use crate::{QueueEntry, Ret};

/// What a report says about one recipient (RFC 3464 §2.3.3 Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Delivery failed for good.
    Failed,
    /// Delivery is delayed; retries continue.
    Delayed,
    /// Relayed to a server that does not pass DSN requests on (RFC 3461 §5.2.2.1).
    Relayed,
    /// Delivered (by a server that takes over DSN duty, or locally).
    Delivered,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
            Action::Delivered => "delivered",
        }
    }
}

/// One recipient's line in a report.
#[derive(Debug, Clone)]
pub struct ReportedRecipient {
    /// The forward-path.
    pub address: String,
    /// The ORCPT the sender gave (`type;address`).
    pub orcpt: Option<String>,
    /// What happened.
    pub action: Action,
    /// The last reply (from the remote server, or made up locally), `550 5.1.1 text`.
    pub reply: String,
    /// The remote host that answered, if any.
    pub remote_mta: Option<String>,
}

/// The parts of a report that do not depend on the recipients.
#[derive(Debug, Clone)]
pub struct ReportContext<'a> {
    /// This server's name (Reporting-MTA, the From address's domain).
    pub hostname: &'a str,
    /// Who the report goes to: the message's return path.
    pub return_path: &'a str,
    /// The sender's RFC 3461 ENVID.
    pub envid: Option<&'a str>,
    /// When the message arrived (ms since the epoch).
    pub arrival_ms: u64,
    /// Until when delivery is retried (for delay reports).
    pub retry_until_ms: u64,
}

impl<'a> ReportContext<'a> {
    /// The context of a report on a queued message.
    pub fn for_entry(hostname: &'a str, entry: &'a QueueEntry, retry_until_ms: u64) -> Self {
        ReportContext {
            hostname,
            return_path: &entry.return_path,
            envid: entry.envid.as_deref(),
            arrival_ms: entry.created_ms,
            retry_until_ms,
        }
    }
}

/// How much of the original goes into the report.
#[derive(Debug, Clone)]
pub enum Returned {
    /// The whole message (RET=FULL and small enough).
    Full(Vec<u8>),
    /// Its header section.
    Headers(Vec<u8>),
}

/// Picks what to return: RET=FULL returns the whole message up to `limit` bytes, anything
/// else (and larger messages) only the header section (RFC 3461 §4.3 lets the MTA decide
/// without RET; the headers are enough to identify the message).
pub fn wants_full_message(entry: &QueueEntry, limit: u64) -> bool {
    entry.ret == Some(Ret::Full) && entry.size <= limit
}

/// The status code of a reply line (`550 5.1.1 ...` -> `5.1.1`), or one derived from its
/// class when the server sent none.
pub fn status_of(reply: &str) -> String {
    let mut words = reply.split_ascii_whitespace();
    let code = words.next().unwrap_or("451");
    if let Some(status) = words.next().filter(|word| is_status_code(word)) {
        return status.to_owned();
    }
    match code.as_bytes().first() {
        Some(b'5') => "5.0.0".into(),
        Some(b'2') => "2.0.0".into(),
        _ => "4.0.0".into(),
    }
}

fn is_status_code(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..].iter().all(|part| !part.is_empty() && part.len() <= 3 && part.bytes().all(|b| b.is_ascii_digit()))
}

fn rfc2822(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default().to_rfc2822()
}

/// Strips CR, LF and other controls from text placed in a header field or DSN field.
fn field(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Builds the report message (RFC 3464 §2), addressed to the context's return path.
pub fn build_report(context: &ReportContext<'_>, recipients: &[ReportedRecipient], original: &Returned) -> Vec<u8> {
    let hostname = field(context.hostname);
    let worst = if recipients.iter().any(|r| r.action == Action::Failed) {
        Action::Failed
    } else if recipients.iter().any(|r| r.action == Action::Delayed) {
        Action::Delayed
    } else {
        Action::Delivered
    };
    let subject = match worst {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        _ => "Successful Mail Delivery Report",
    };
    // RFC 2046 §5.1.1: at most 70 characters.
    let boundary = format!("=_{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    let now = crate::now_ms();
    let mut out = String::with_capacity(4096);
    out.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    out.push_str(&format!("To: <{}>\r\n", field(context.return_path)));
    out.push_str(&format!("Subject: {subject}\r\n"));
    out.push_str(&format!("Date: {}\r\n", rfc2822(now)));
    out.push_str(&format!("Message-ID: <dsn.{:016x}@{hostname}>\r\n", rand::random::<u64>()));
    // RFC 3834 §5: automatic replies must not trigger more of them.
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    // The human-readable part (RFC 3464 §2.1, part 1).
    out.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    out.push_str(&format!("This is the mail system at {hostname}.\r\n\r\n"));
    match worst {
        Action::Failed => out.push_str(
            "Your message could not be delivered to one or more recipients. It is attached below.\r\n\
             Check each address for typing mistakes; if it is right, the reply of the receiving\r\n\
             server below says why it refused the message. Contact your postmaster if you need help.\r\n",
        ),
        Action::Delayed => out.push_str(&format!(
            "Your message has not been delivered yet to the recipients below. This is only a\r\n\
             warning: you do not need to send it again. Delivery will be retried until {}.\r\n",
            rfc2822(context.retry_until_ms)
        )),
        _ => out.push_str("Your message was successfully delivered to the recipients below.\r\n"),
    }
    out.push_str("\r\n");
    for recipient in recipients {
        let address = field(&recipient.address);
        let reply = field(&recipient.reply);
        match &recipient.remote_mta {
            Some(host) => out.push_str(&format!("<{address}>: host {} said: {reply}\r\n", field(host))),
            None => out.push_str(&format!("<{address}>: {reply}\r\n")),
        }
    }
    out.push_str("\r\n");

    // The machine-readable part (RFC 3464 §2.2, §2.3).
    out.push_str(&format!("--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    out.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if let Some(envid) = context.envid {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", field(envid)));
    }
    out.push_str(&format!("Arrival-Date: {}\r\n", rfc2822(context.arrival_ms)));
    for recipient in recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &recipient.orcpt {
            out.push_str(&format!("Original-Recipient: {}\r\n", field(orcpt)));
        }
        out.push_str(&format!("Final-Recipient: rfc822; {}\r\n", field(&recipient.address)));
        out.push_str(&format!("Action: {}\r\n", recipient.action.name()));
        let status = match recipient.action {
            Action::Relayed | Action::Delivered => "2.0.0".to_owned(),
            // A delayed recipient is a transient failure whatever its last reply said.
            Action::Delayed => match status_of(&recipient.reply) {
                status if status.starts_with('4') => status,
                status => format!("4{}", &status[1..]),
            },
            Action::Failed => status_of(&recipient.reply),
        };
        out.push_str(&format!("Status: {status}\r\n"));
        if let Some(host) = &recipient.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", field(host)));
            out.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", field(&recipient.reply)));
        } else if recipient.action == Action::Failed || recipient.action == Action::Delayed {
            out.push_str(&format!("Diagnostic-Code: X-wmail; {}\r\n", field(&recipient.reply)));
        }
        out.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc2822(now)));
        if recipient.action == Action::Delayed {
            out.push_str(&format!("Will-Retry-Until: {}\r\n", rfc2822(context.retry_until_ms)));
        }
    }
    out.push_str("\r\n");

    // The returned message (RFC 3462 §2 third part).
    let mut bytes = out.into_bytes();
    match original {
        Returned::Full(message) => {
            bytes.extend_from_slice(format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes());
            bytes.extend_from_slice(message);
        }
        Returned::Headers(headers) => {
            bytes.extend_from_slice(format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes());
            bytes.extend_from_slice(headers);
        }
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobId, Notify, OutboundRecipient, QueuedRecipient, RecipientStatus};
    use mail_parser::MimeHeaders;

    fn entry() -> QueueEntry {
        QueueEntry {
            id: 7,
            blob: BlobId::of(b"x"),
            size: 10,
            return_path: "alice@example.com".into(),
            envid: Some("QQ314159".into()),
            ret: Some(Ret::Headers),
            eight_bit: false,
            authenticated: true,
            recipients: vec![QueuedRecipient {
                recipient: OutboundRecipient {
                    address: "bob@remote.test".into(),
                    orcpt: Some("rfc822;bob@remote.test".into()),
                    notify: Notify::default(),
                    relay: None,
                },
                status: RecipientStatus::Pending { last_reply: None },
            }],
            created_ms: 1_700_000_000_000,
            attempts: 1,
            next_attempt_ms: 0,
            lease: None,
            delay_notified: false,
        }
    }

    #[test]
    fn status_codes_come_from_the_reply_or_its_class() {
        assert_eq!(status_of("550 5.1.1 no such user"), "5.1.1");
        assert_eq!(status_of("550 no such user"), "5.0.0");
        assert_eq!(status_of("451 try later"), "4.0.0");
        assert_eq!(status_of("452 4.2.2 mailbox full"), "4.2.2");
        assert_eq!(status_of("550 5.1 oops"), "5.0.0");
    }

    #[test]
    fn failure_report_is_a_parseable_rfc3464_report() {
        let entry = entry();
        let context = ReportContext::for_entry("mail.example.com", &entry, 0);
        let recipients = [ReportedRecipient {
            address: "bob@remote.test".into(),
            orcpt: Some("rfc822;bob@remote.test".into()),
            action: Action::Failed,
            reply: "550 5.1.1 <bob@remote.test>: no such user\r\nInjected: header".into(),
            remote_mta: Some("mx.remote.test".into()),
        }];
        let report = build_report(&context, &recipients, &Returned::Headers(b"Subject: hi\r\n\r\n".to_vec()));
        let message = mail_parser::MessageParser::default().parse(&report).expect("parses");
        assert_eq!(message.subject(), Some("Undelivered Mail Returned to Sender"));
        let content_type = message.content_type().unwrap();
        assert_eq!((content_type.ctype(), content_type.subtype()), ("multipart", Some("report")));
        assert_eq!(content_type.attribute("report-type"), Some("delivery-status"));
        let text = String::from_utf8_lossy(&report);
        for expected in [
            "Reporting-MTA: dns; mail.example.com\r\n",
            "Original-Envelope-Id: QQ314159\r\n",
            "Original-Recipient: rfc822;bob@remote.test\r\n",
            "Final-Recipient: rfc822; bob@remote.test\r\n",
            "Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n",
            "Auto-Submitted: auto-replied\r\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("\r\nInjected: header"), "reply text cannot inject fields");
    }

    #[test]
    fn delay_report_says_until_when() {
        let entry = entry();
        let context = ReportContext::for_entry("mail.example.com", &entry, 1_800_000_000_000);
        let recipients = [ReportedRecipient {
            address: "bob@remote.test".into(),
            orcpt: None,
            action: Action::Delayed,
            reply: "451 4.4.1 connection refused".into(),
            remote_mta: None,
        }];
        let text = String::from_utf8(build_report(&context, &recipients, &Returned::Headers(Vec::new()))).unwrap();
        assert!(text.contains("Action: delayed\r\nStatus: 4.4.1\r\n"), "{text}");
        assert!(text.contains("Will-Retry-Until: "), "{text}");
        assert!(text.contains("Subject: Delayed Mail"), "{text}");
    }
}
