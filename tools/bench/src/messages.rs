//! Realistic generated messages for filling mailboxes: varied senders, subjects and dates,
//! threads (In-Reply-To/References), multipart/alternative with HTML, base64 attachments of
//! 10-200 KB and Chinese UTF-8 subjects and bodies. 80% are 4-20 KB, 12% smaller, and 8%
//! carry an attachment.
//!
//! Bodies are slices of text pools built once per generator, so generating costs little
//! next to sending; every message is distinct (its Message-ID, date and slices differ).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const FIRST_NAMES: &[&str] = &[
    "Alice", "Bob", "Carol", "David", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Olivia", "Peggy",
    "Rupert", "Sybil", "Trent", "Victor", "Walter", "Wei", "Mei", "Hiroshi", "Fatima", "Lars", "Ana",
];
const LAST_NAMES: &[&str] = &[
    "Smith", "Jones", "Schmidt", "Garcia", "Wang", "Li", "Zhang", "Tanaka", "Dubois", "Rossi", "Novak", "Silva", "Kim",
];
const DOMAINS: &[&str] = &["example.com", "example.org", "mail.example.net", "corp.example", "lists.example.org"];
const TOPICS: &[&str] = &[
    "Quarterly report",
    "Lunch on Friday?",
    "Build failure on main",
    "Invoice 2024-117",
    "Holiday schedule",
    "Release notes draft",
    "Meeting notes: platform sync",
    "Server migration plan",
    "Your order has shipped",
    "Conference travel",
    "[dev] RFC: new storage layout",
    "Welcome aboard",
];
const CHINESE_TOPICS: &[&str] =
    &["关于下周的会议安排", "季度总结报告", "服务器迁移计划", "项目进度更新", "请查收发票", "周五聚餐通知"];
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "this",
    "are", "at", "from", "have", "which", "one", "you", "were", "all", "we", "when", "there", "can", "an", "their",
    "mail", "server", "meeting", "report", "please", "thanks", "tomorrow", "project", "deadline", "attached", "budget",
    "review", "release", "customer", "schedule", "update", "question", "storage", "network", "latency", "draft",
];
const CHINESE_PHRASES: &[&str] = &[
    "你好，",
    "关于下周的会议安排，",
    "请查收附件中的报告。",
    "我们需要在周五之前完成这个项目。",
    "谢谢你的帮助！",
    "如果有任何问题，请随时联系我。",
    "服务器迁移计划已经更新，",
    "今天的天气很好。",
    "邮件系统运行正常，",
    "预算需要重新审核。",
];
const ATTACHMENTS: &[(&str, &str)] = &[
    ("report.pdf", "application/pdf"),
    ("photo.jpg", "image/jpeg"),
    ("figures.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("archive.zip", "application/zip"),
];

/// One generated message with the APPEND arguments that go with it.
pub struct Message {
    /// The RFC 5322 message (CRLF line ends).
    pub raw: Vec<u8>,
    /// Its date as an IMAP `date-time` (`"14-Mar-2025 09:26:53 +0000"`), for APPEND.
    pub internal_date: String,
    /// Flags for APPEND: most old mail is read, some is flagged.
    pub flags: &'static str,
}

/// A thread the generator may reply to: its subject, language and the Message-IDs so far.
struct Thread {
    subject: String,
    chinese: bool,
    references: Vec<String>,
}

/// Generates messages for one recipient; each worker has its own.
pub struct Generator {
    rng: StdRng,
    recipient: String,
    english: String,
    chinese: String,
    binary: Vec<u8>,
    threads: Vec<Thread>,
    /// Only short text messages (0.3-1.5 KB of text, no attachments), for million-message
    /// corpora on small disks.
    small: bool,
}

impl Generator {
    /// A generator for `recipient`, seeded so runs are repeatable.
    pub fn new(seed: u64, recipient: &str) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let english = text_pool(&mut rng, 256 * 1024, |rng| format!("{} ", WORDS.choose(rng).unwrap()));
        let chinese = text_pool(&mut rng, 128 * 1024, |rng| CHINESE_PHRASES.choose(rng).unwrap().to_string());
        let mut binary = vec![0; 200 * 1024];
        rng.fill(&mut binary[..]);
        Self { rng, recipient: recipient.to_owned(), english, chinese, binary, threads: Vec::new(), small: false }
    }

    /// Makes only short text messages from now on.
    pub fn small(mut self) -> Self {
        self.small = true;
        self
    }

    /// The `n`th message (`n` makes its Message-ID unique across generators).
    pub fn message(&mut self, n: usize) -> Message {
        let rng = &mut self.rng;
        let seconds = chrono::Utc::now().timestamp() - rng.gen_range(0..730 * 86_400);
        let date = chrono::DateTime::from_timestamp(seconds, 0).unwrap_or_default();
        let (first, last, domain) =
            (FIRST_NAMES.choose(rng).unwrap(), LAST_NAMES.choose(rng).unwrap(), DOMAINS.choose(rng).unwrap());
        let message_id = format!("<{n}.{:08x}@{domain}>", rng.r#gen::<u32>());
        let mut chinese = rng.gen_bool(0.15);
        // 40% continue an earlier thread.
        let reply = (!self.threads.is_empty() && rng.gen_bool(0.4)).then(|| rng.gen_range(0..self.threads.len()));
        let sender = format!("{}.{}@{domain}", first.to_ascii_lowercase(), last.to_ascii_lowercase());
        let mut head = format!(
            "Message-ID: {message_id}\r\nDate: {}\r\nFrom: \"{first} {last}\" <{sender}>\r\n\
             To: <{}>\r\nMIME-Version: 1.0\r\n",
            date.to_rfc2822(),
            self.recipient
        );
        let subject = match reply {
            Some(index) => {
                let thread = &mut self.threads[index];
                chinese = thread.chinese;
                let parent = thread.references.last().cloned().unwrap_or_default();
                head.push_str(&format!("In-Reply-To: {parent}\r\nReferences: {}\r\n", thread.references.join("\r\n ")));
                if thread.references.len() >= 10 {
                    thread.references.remove(1);
                }
                thread.references.push(message_id.clone());
                format!("Re: {}", thread.subject)
            }
            None => {
                let subject = if chinese {
                    CHINESE_TOPICS.choose(rng).unwrap().to_string()
                } else {
                    TOPICS.choose(rng).unwrap().to_string()
                };
                if self.threads.len() >= 200 {
                    self.threads.swap_remove(0);
                }
                self.threads.push(Thread { subject: subject.clone(), chinese, references: vec![message_id.clone()] });
                subject
            }
        };
        if subject.is_ascii() {
            head.push_str(&format!("Subject: {subject}\r\n"));
        } else {
            head.push_str(&format!("Subject: =?UTF-8?B?{}?=\r\n", STANDARD.encode(&subject)));
        }
        let kind = if self.small { 99 } else { self.rng.gen_range(0..100) };
        let text_size = match kind {
            _ if self.small => self.rng.gen_range(300..1_500),
            0..8 => self.rng.gen_range(500..3_000),
            8..20 => self.rng.gen_range(600..3_500),
            _ => self.rng.gen_range(3_500..19_500),
        };
        let text = self.text(chinese, text_size);
        let boundary = format!("=_bench_{n}_{:x}", self.rng.r#gen::<u32>());
        let charset = "Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n";
        let mut raw = head.into_bytes();
        if kind < 8 {
            let (name, content_type) = ATTACHMENTS.choose(&mut self.rng).unwrap();
            let size = self.rng.gen_range(10 * 1024..=200 * 1024);
            let start = self.rng.gen_range(0..=self.binary.len() - size);
            let encoded = STANDARD.encode(&self.binary[start..start + size]);
            let mut wrapped = String::with_capacity(encoded.len() * 78 / 76 + 2);
            for line in encoded.as_bytes().chunks(76) {
                wrapped.push_str(std::str::from_utf8(line).unwrap_or_default());
                wrapped.push_str("\r\n");
            }
            raw.extend_from_slice(
                format!(
                    "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
                     This is a multi-part message in MIME format.\r\n\
                     --{boundary}\r\n{charset}\r\n{text}\
                     --{boundary}\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
                     Content-Disposition: attachment; filename=\"{name}\"\r\n\
                     Content-Transfer-Encoding: base64\r\n\r\n{wrapped}\
                     --{boundary}--\r\n"
                )
                .as_bytes(),
            );
        } else if self.rng.gen_bool(0.3) {
            // multipart/alternative: the same text in both parts, so each is half the size.
            let half = &text.as_bytes()[..text.len() / 2];
            let text = &text[..half.iter().rposition(|&byte| byte == b'\n').map_or(0, |end| end + 1)];
            let html: String = text.lines().map(|line| format!("<p>{line}</p>\r\n")).collect();
            raw.extend_from_slice(
                format!(
                    "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
                     --{boundary}\r\n{charset}\r\n{text}\
                     --{boundary}\r\nContent-Type: text/html; charset=UTF-8\r\n\
                     Content-Transfer-Encoding: 8bit\r\n\r\n<html><body>\r\n{html}</body></html>\r\n\
                     --{boundary}--\r\n"
                )
                .as_bytes(),
            );
        } else {
            raw.extend_from_slice(format!("{charset}\r\n{text}").as_bytes());
        }
        let flags = match self.rng.gen_range(0..100) {
            0..70 => "\\Seen",
            70..75 => "\\Seen \\Flagged",
            _ => "",
        };
        Message { raw, internal_date: date.format("%d-%b-%Y %H:%M:%S +0000").to_string(), flags }
    }

    /// About `size` bytes of whole lines from a pool.
    fn text(&mut self, chinese: bool, size: usize) -> String {
        let pool = if chinese { &self.chinese } else { &self.english };
        let size = size.min(pool.len() / 2);
        let start = self.rng.gen_range(0..pool.len() - size - 1024);
        // Cut after line ends (ASCII), so the slice falls on character boundaries.
        let next_line =
            |from: usize| pool.as_bytes()[from..].iter().position(|&byte| byte == b'\n').map(|at| from + at + 1);
        let start = next_line(start).unwrap_or(0);
        let end = next_line(start + size).unwrap_or(pool.len());
        pool[start..end].to_owned()
    }
}

/// Lines of about 72 bytes made of `piece`s, `size` bytes in all.
fn text_pool(rng: &mut StdRng, size: usize, piece: impl Fn(&mut StdRng) -> String) -> String {
    let mut pool = String::with_capacity(size + 128);
    let mut line = String::new();
    while pool.len() < size {
        line.push_str(&piece(rng));
        if line.len() >= 72 {
            pool.push_str(line.trim_end());
            pool.push_str("\r\n");
            line.clear();
        }
    }
    pool
}
