//! One IMAP connection: reading commands (with literals, APPEND bodies streamed to the blob
//! store), the state machine of RFC 9051 §3 (not authenticated, authenticated, selected,
//! logout), and the commands that do not need a selected mailbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use wmail_core::{Account, Core, CoreError, ErrorCode, StoredBody};
use wmail_net::{Connection, LineRead, SessionStream, TlsAcceptor};

use crate::ImapConfig;
use crate::proto::Segment;
use crate::proto::command::{Command, Tagged};
use crate::proto::parser;
use crate::selected::Selected;

/// Longest command line (Dovecot's default `imap_max_line_length` is 64 KiB).
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Largest literal that is not an APPEND message (a search string, a password).
const MAX_ARGUMENT_LITERAL: u64 = 64 * 1024;
/// Most literals in one command.
const MAX_LITERALS: usize = 64;
/// Pause after a failed login, to slow password guessing.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);
/// Most protocol errors in a row before the session is closed.
const MAX_ERRORS: usize = 20;
/// Output queued beyond this is written out before more is produced.
pub(crate) const FLUSH_THRESHOLD: usize = 64 * 1024;

/// What a command handler tells the loop.
pub(crate) enum Flow {
    Continue,
    Close,
}

/// Extensions the client turned on with ENABLE (RFC 5161).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Enabled {
    /// IMAP4rev2 semantics (RFC 9051).
    pub rev2: bool,
    /// CONDSTORE (RFC 7162 §3.1): MODSEQ in FETCH responses.
    pub condstore: bool,
    /// QRESYNC (RFC 7162 §3.2): VANISHED instead of EXPUNGE.
    pub qresync: bool,
    /// UTF8=ACCEPT (RFC 6855): UTF-8 mailbox names and quoted strings.
    pub utf8: bool,
}

impl Enabled {
    /// Whether names and strings are UTF-8 rather than modified UTF-7 and 7-bit.
    pub fn utf8(self) -> bool {
        self.utf8 || self.rev2
    }
}

/// One client connection.
pub struct Session {
    pub(crate) core: Arc<Core>,
    pub(crate) config: Arc<ImapConfig>,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    pub(crate) connection: Connection,
    pub(crate) id: String,
    pub(crate) account: Option<Account>,
    pub(crate) selected: Option<Selected>,
    pub(crate) enabled: Enabled,
    /// Account change signal, while authenticated.
    pub(crate) changes: Option<watch::Receiver<()>>,
    /// A NO to give instead of OK when the current command completes (a FETCH item
    /// that could not be produced, for example).
    pub(crate) pending_no: Option<String>,
    errors: usize,
}

/// Why reading a command failed.
enum ReadError {
    /// The connection is gone, timed out or must be closed; the text (if any) goes out
    /// as `* BYE`.
    Close(Option<String>),
    /// The command was refused while it was being read; the response is queued.
    Refused,
}

impl Session {
    /// Prepares a session for an accepted connection.
    pub fn new(
        core: Arc<Core>,
        config: Arc<ImapConfig>,
        tls: Option<TlsAcceptor>,
        peer: SocketAddr,
        stream: SessionStream,
    ) -> Self {
        Self {
            core,
            config,
            tls,
            peer,
            connection: Connection::new(stream, MAX_LINE),
            id: format!("{:016x}", rand::random::<u64>()),
            account: None,
            selected: None,
            enabled: Enabled::default(),
            changes: None,
            pending_no: None,
            errors: 0,
        }
    }

    /// Queues an untagged response line (`* ` + text + CRLF).
    pub(crate) fn untagged(&mut self, text: &str) {
        self.connection.queue(format!("* {text}\r\n").as_bytes());
    }

    /// Queues raw response bytes.
    pub(crate) fn queue(&mut self, bytes: &[u8]) {
        self.connection.queue(bytes);
    }

    /// Queues a tagged OK (or the NO a handler left in `pending_no`).
    pub(crate) fn ok(&mut self, tag: &str, text: &str) {
        if let Some(no) = self.pending_no.take() {
            return self.no(tag, &no);
        }
        self.errors = 0;
        self.connection.queue(format!("{tag} OK {text}\r\n").as_bytes());
    }

    /// Queues a tagged NO.
    pub(crate) fn no(&mut self, tag: &str, text: &str) {
        self.connection.queue(format!("{tag} NO {text}\r\n").as_bytes());
    }

    /// Queues a tagged BAD and counts it towards the error limit.
    pub(crate) fn bad(&mut self, tag: &str, text: &str) {
        self.errors += 1;
        self.connection.queue(format!("{tag} BAD {text}\r\n").as_bytes());
    }

    /// Answers a core error with NO and the matching response code (RFC 5530).
    pub(crate) fn no_for(&mut self, tag: &str, error: &CoreError) {
        let code = match error.code {
            ErrorCode::NotFound => "[NONEXISTENT] ",
            ErrorCode::AlreadyExists => "[ALREADYEXISTS] ",
            ErrorCode::OverQuota => "[OVERQUOTA] ",
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::InsufficientStorage => "[UNAVAILABLE] ",
            ErrorCode::Unauthorized => "[AUTHORIZATIONFAILED] ",
            ErrorCode::InvalidInput | ErrorCode::Conflict => "[CANNOT] ",
        };
        let text = format!("{code}{}", error.message);
        self.no(tag, &text);
    }

    /// Writes queued output when a lot is waiting, so memory stays bounded.
    pub(crate) async fn flush_if_large(&mut self) -> bool {
        self.connection.queued() < FLUSH_THRESHOLD || self.connection.flush(self.config.idle_timeout).await.is_ok()
    }

    fn timeout(&self) -> Duration {
        if self.account.is_some() { self.config.idle_timeout } else { self.config.login_timeout }
    }

    /// Serves the session until LOGOUT, an error, the autologout timer or shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::debug!(session = %self.id, peer = %self.peer, "imap session started");
        let capabilities = self.capabilities();
        self.untagged(&format!("OK [CAPABILITY {capabilities}] {} IMAP server ready", self.config.hostname));
        loop {
            let read = tokio::select! {
                read = self.read_command() => read,
                () = wmail_net::stopped(&mut shutdown) => {
                    self.untagged("BYE [UNAVAILABLE] server shutting down");
                    break;
                }
            };
            let flow = match read {
                Ok(segments) => self.execute(&segments).await,
                Err(ReadError::Refused) => Flow::Continue,
                Err(ReadError::Close(text)) => {
                    if let Some(text) = text {
                        self.untagged(&format!("BYE {text}"));
                    }
                    Flow::Close
                }
            };
            if matches!(flow, Flow::Close) {
                break;
            }
            if self.errors > MAX_ERRORS {
                self.untagged("BYE too many errors, closing connection");
                break;
            }
        }
        self.connection.close(Duration::from_secs(5)).await;
        tracing::debug!(session = %self.id, "imap session ended");
    }

    /// Reads one command with its literals. APPEND bodies are streamed into the blob store
    /// as they arrive; the stored bodies are kept for [`Session::execute`].
    async fn read_command(&mut self) -> Result<(Vec<Segment>, Vec<StoredBody>), ReadError> {
        let mut segments = Vec::new();
        let mut bodies = Vec::new();
        loop {
            let line = match self.connection.read_line(self.timeout()).await {
                Ok(LineRead::Line(line)) => line,
                Ok(LineRead::TooLong) => {
                    // The rest of the command cannot be found reliably: refuse and close.
                    return Err(ReadError::Close(Some("command line too long".into())));
                }
                Ok(LineRead::TimedOut) => return Err(ReadError::Close(Some("autologout: idle for too long".into()))),
                Ok(LineRead::Closed) | Err(_) => return Err(ReadError::Close(None)),
            };
            let mut text = line.to_vec();
            while text.last().is_some_and(|&byte| byte == b'\n' || byte == b'\r') {
                text.pop();
            }
            let announcement = parser::literal_announcement(&text);
            segments.push(Segment::Text(text));
            let Some(announcement) = announcement else { return Ok((segments, bodies)) };
            let tag = tag_of(&segments);
            if segments.len() / 2 >= MAX_LITERALS {
                return Err(self.refuse_literal(
                    &tag,
                    announcement.non_synchronizing,
                    "too many literals in one command",
                ));
            }
            if parser::is_message_literal(&segments) {
                if announcement.length > self.config.append_limit {
                    let text = format!(
                        "[TOOBIG] the message is larger than the limit of {} octets (APPENDLIMIT)",
                        self.config.append_limit
                    );
                    return Err(self.refuse_literal_with(&tag, announcement.non_synchronizing, "NO", &text));
                }
                if self.account.is_none() {
                    return Err(self.refuse_literal(&tag, announcement.non_synchronizing, "log in first"));
                }
                // A nearly full data disk: refused before the client sends the message.
                if let Err(error) = self.core.check_disk_space() {
                    let text = format!("[UNAVAILABLE] {}", error.message);
                    return Err(self.refuse_literal_with(&tag, announcement.non_synchronizing, "NO", &text));
                }
                if !announcement.non_synchronizing {
                    self.queue(b"+ Ready for literal data\r\n");
                }
                match self.stream_literal_to_store(announcement.length).await {
                    Ok(stored) => bodies.push(stored),
                    Err(None) => return Err(ReadError::Close(None)),
                    Err(Some(error)) => {
                        // The literal was read completely but could not be stored; the
                        // rest of the command line must still be consumed.
                        let _ = self.connection.read_line(self.timeout()).await;
                        self.no_for(&tag, &error);
                        return Err(ReadError::Refused);
                    }
                }
                segments.push(Segment::Message);
            } else {
                if announcement.length > MAX_ARGUMENT_LITERAL {
                    return Err(self.refuse_literal(&tag, announcement.non_synchronizing, "literal too large"));
                }
                if !announcement.non_synchronizing {
                    self.queue(b"+ Ready for literal data\r\n");
                }
                match self.read_exact(announcement.length as usize).await {
                    Some(bytes) => segments.push(Segment::Literal(bytes)),
                    None => return Err(ReadError::Close(None)),
                }
            }
        }
    }

    fn refuse_literal(&mut self, tag: &str, non_synchronizing: bool, text: &str) -> ReadError {
        self.refuse_literal_with(tag, non_synchronizing, "BAD", text)
    }

    /// Refuses a literal before reading it. A synchronising literal is simply never sent by
    /// the client; a non-synchronising one is already on its way, so the connection must
    /// close (RFC 7888 §4).
    fn refuse_literal_with(&mut self, tag: &str, non_synchronizing: bool, status: &str, text: &str) -> ReadError {
        self.errors += 1;
        self.queue(format!("{tag} {status} {text}\r\n").as_bytes());
        if non_synchronizing {
            ReadError::Close(Some("cannot skip a non-synchronizing literal".into()))
        } else {
            ReadError::Refused
        }
    }

    async fn read_exact(&mut self, length: usize) -> Option<Vec<u8>> {
        while self.connection.input().len() < length {
            match self.connection.fill(self.timeout()).await {
                Ok(Some(read)) if read > 0 => {}
                _ => return None,
            }
        }
        Some(self.connection.input().split_to(length).to_vec())
    }

    /// Streams `length` octets from the client into the blob store. `Err(None)`: the
    /// client went away (nothing stored); `Err(Some(_))`: storing failed.
    async fn stream_literal_to_store(&mut self, length: u64) -> Result<StoredBody, Option<CoreError>> {
        let (sender, mut receiver) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let core = self.core.clone();
        let store = async move {
            let body = futures::stream::poll_fn(move |context| receiver.poll_recv(context));
            core.store_message(body).await
        };
        let timeout = self.timeout();
        let connection = &mut self.connection;
        let feed = async move {
            let mut remaining = length;
            while remaining > 0 {
                if connection.input().is_empty() {
                    match connection.fill(timeout).await {
                        Ok(Some(read)) if read > 0 => {}
                        _ => {
                            let _ = sender.send(Err(std::io::Error::other("the client went away"))).await;
                            return false;
                        }
                    }
                }
                let take = remaining.min(connection.input().len() as u64) as usize;
                let chunk = connection.input().split_to(take).freeze();
                remaining -= take as u64;
                if sender.send(Ok(chunk)).await.is_err() {
                    // The store gave up; keep reading so the command stays in sync.
                    let skip = remaining;
                    return skip_input(connection, skip, timeout).await;
                }
            }
            true
        };
        let (stored, complete) = tokio::join!(store, feed);
        match (stored, complete) {
            (_, false) => Err(None),
            (Ok(stored), true) if stored.size == 0 => {
                Err(Some(CoreError::invalid("an empty message cannot be appended")))
            }
            (Ok(stored), true) => Ok(stored),
            (Err(error), true) => Err(Some(error)),
        }
    }

    /// Parses and runs one command.
    async fn execute(&mut self, (segments, bodies): &(Vec<Segment>, Vec<StoredBody>)) -> Flow {
        let Tagged { tag, command } = match parser::parse_command(segments) {
            Ok(tagged) => tagged,
            Err(error) => {
                let tag = error.tag.unwrap_or_else(|| "*".into());
                self.bad(&tag, &error.text);
                return Flow::Continue;
            }
        };
        tracing::debug!(session = %self.id, ?command, "imap command");
        if let Err(text) = self.allowed(&command) {
            self.bad(&tag, text);
            return Flow::Continue;
        }
        let flow = match command {
            Command::Capability => {
                let capabilities = self.capabilities();
                self.untagged(&format!("CAPABILITY {capabilities}"));
                self.ok(&tag, "CAPABILITY completed");
                Flow::Continue
            }
            Command::Noop | Command::Check => {
                self.sync(true).await;
                self.ok(&tag, "NOOP completed");
                Flow::Continue
            }
            Command::Logout => {
                self.untagged("BYE logging out");
                self.ok(&tag, "LOGOUT completed");
                Flow::Close
            }
            Command::StartTls => self.starttls(&tag).await,
            Command::Login { user, password } => self.login_command(&tag, &user, &password).await,
            Command::Authenticate { mechanism, initial } => self.authenticate(&tag, &mechanism, initial).await,
            Command::Enable { capabilities } => {
                self.enable(&tag, &capabilities);
                Flow::Continue
            }
            Command::Id { .. } => {
                // RFC 2971 §3.1.
                self.untagged(&format!("ID (\"name\" \"wmail\" \"version\" \"{}\")", env!("CARGO_PKG_VERSION")));
                self.ok(&tag, "ID completed");
                Flow::Continue
            }
            Command::Namespace => {
                // RFC 2342 §5: one personal namespace, no other users' or shared ones yet.
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                self.ok(&tag, "NAMESPACE completed");
                Flow::Continue
            }
            Command::Idle => self.idle(&tag).await,
            Command::Append { mailbox, messages } => {
                self.append(&tag, &mailbox, messages, bodies).await;
                Flow::Continue
            }
            other => {
                self.mailbox_command(&tag, other).await;
                Flow::Continue
            }
        };
        if !self.flush_if_large().await {
            return Flow::Close;
        }
        if self.selected_was_deleted() {
            self.untagged("BYE the selected mailbox was deleted");
            return Flow::Close;
        }
        flow
    }

    /// RFC 9051 §3: which commands each state allows.
    fn allowed(&self, command: &Command) -> Result<(), &'static str> {
        let authenticated = self.account.is_some();
        let selected = self.selected.is_some();
        match command {
            Command::Capability | Command::Noop | Command::Logout | Command::Id { .. } => Ok(()),
            Command::StartTls | Command::Login { .. } | Command::Authenticate { .. } if authenticated => {
                Err("already authenticated")
            }
            Command::StartTls | Command::Login { .. } | Command::Authenticate { .. } => Ok(()),
            _ if !authenticated => Err("log in first (LOGIN or AUTHENTICATE)"),
            Command::Check
            | Command::Close
            | Command::Unselect
            | Command::Expunge { .. }
            | Command::Search { .. }
            | Command::Sort { .. }
            | Command::Thread { .. }
            | Command::Fetch { .. }
            | Command::Store { .. }
            | Command::Copy { .. }
            | Command::Move { .. }
                if !selected =>
            {
                Err("select a mailbox first")
            }
            _ => Ok(()),
        }
    }

    /// The CAPABILITY list for the current state (RFC 9051 §7.2.2).
    pub(crate) fn capabilities(&self) -> String {
        let mut list = vec!["IMAP4rev2", "IMAP4rev1"];
        let tls_possible = self.tls.is_some() && !self.connection.is_tls();
        if self.account.is_none() {
            if tls_possible {
                list.push("STARTTLS");
            }
            if self.auth_allowed() {
                list.extend(["AUTH=PLAIN", "SASL-IR"]);
            } else {
                list.push("LOGINDISABLED");
            }
        }
        list.extend([
            "LITERAL+",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "UIDPLUS",
            "MOVE",
            "CONDSTORE",
            "QRESYNC",
            "ESEARCH",
            "SEARCHRES",
            "SORT",
            "SORT=DISPLAY",
            "ESORT",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "STATUS=SIZE",
            "OBJECTID",
            "MULTIAPPEND",
            "BINARY",
            "UTF8=ACCEPT",
        ]);
        let mut text = list.join(" ");
        text.push_str(&format!(" APPENDLIMIT={}", self.config.append_limit));
        text
    }

    fn auth_allowed(&self) -> bool {
        self.connection.is_tls() || self.config.allow_plaintext_auth
    }

    fn enable(&mut self, tag: &str, capabilities: &[String]) {
        let mut enabled = Vec::new();
        for capability in capabilities {
            let name = capability.to_ascii_uppercase();
            let newly = match name.as_str() {
                "IMAP4REV2" => !std::mem::replace(&mut self.enabled.rev2, true),
                "CONDSTORE" => !std::mem::replace(&mut self.enabled.condstore, true),
                "QRESYNC" => {
                    // RFC 7162 §3.2.3: QRESYNC implies CONDSTORE.
                    self.enabled.condstore = true;
                    !std::mem::replace(&mut self.enabled.qresync, true)
                }
                "UTF8=ACCEPT" => !std::mem::replace(&mut self.enabled.utf8, true),
                _ => false,
            };
            if newly {
                enabled.push(name);
            }
        }
        // RFC 5161 §3.1: the ENABLED response lists what this command turned on.
        self.untagged(&format!("ENABLED{}", enabled.iter().map(|name| format!(" {name}")).collect::<String>()));
        self.ok(tag, "ENABLE completed");
    }

    async fn starttls(&mut self, tag: &str) -> Flow {
        let Some(acceptor) = self.tls.clone() else {
            self.bad(tag, "STARTTLS is not available on this port");
            return Flow::Continue;
        };
        if self.connection.is_tls() {
            self.bad(tag, "TLS is already active");
            return Flow::Continue;
        }
        self.ok(tag, "begin TLS negotiation now");
        match self.connection.start_tls(&acceptor, Duration::from_secs(30)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn login_command(&mut self, tag: &str, user: &str, password: &str) -> Flow {
        if !self.auth_allowed() {
            // RFC 9051 §6.2.3: LOGINDISABLED before TLS.
            self.no(tag, "[PRIVACYREQUIRED] use STARTTLS (or port 993) before logging in");
            return Flow::Continue;
        }
        self.login(tag, user, password).await;
        Flow::Continue
    }

    async fn authenticate(&mut self, tag: &str, mechanism: &str, initial: Option<String>) -> Flow {
        if !self.auth_allowed() {
            self.no(tag, "[PRIVACYREQUIRED] use STARTTLS (or port 993) before authenticating");
            return Flow::Continue;
        }
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            self.no(tag, "[CANNOT] unsupported mechanism; use PLAIN");
            return Flow::Continue;
        }
        // RFC 4959 §3: "=" is an empty initial response; none means ask with "+".
        let response = match initial.as_deref() {
            Some("=") => String::new(),
            Some(initial) => initial.to_owned(),
            None => {
                self.queue(b"+ \r\n");
                match self.connection.read_line(self.timeout()).await {
                    Ok(LineRead::Line(line)) => String::from_utf8_lossy(&line).trim_end().to_owned(),
                    Ok(LineRead::TooLong) => "!".into(),
                    _ => return Flow::Close,
                }
            }
        };
        if response == "*" {
            // RFC 9051 §6.2.2: the client cancelled.
            self.bad(tag, "authentication cancelled");
            return Flow::Continue;
        }
        match wmail_core::sasl::decode_plain(&response) {
            Some((user, password)) => self.login(tag, &user, &password).await,
            None => self.bad(tag, "cannot decode the PLAIN response"),
        }
        Flow::Continue
    }

    async fn login(&mut self, tag: &str, user: &str, password: &str) {
        let account = match self.core.authenticate(user, password, Some(self.peer.ip())).await {
            Ok(account) => account,
            Err(error) if error.code == ErrorCode::Unavailable => {
                self.no(tag, &format!("[UNAVAILABLE] {}", error.message));
                return;
            }
            Err(error) => {
                tracing::info!(session = %self.id, peer = %self.peer, %error, "imap authentication failed");
                tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                self.errors += 1;
                if error.message.starts_with("too many failed logins") {
                    self.no(tag, &format!("[UNAVAILABLE] {}", error.message));
                } else {
                    self.no(tag, "[AUTHENTICATIONFAILED] invalid user name or password");
                }
                return;
            }
        };
        if !self.core.may_use(&account, wmail_core::Service::Imap).unwrap_or(false) {
            self.no(tag, "[CONTACTADMIN] IMAP is disabled for this account; ask your administrator");
            return;
        }
        if let Err(error) = self.core.ensure_default_mailboxes(account.id).await {
            tracing::warn!(session = %self.id, %error, "cannot create the default mailboxes");
        }
        tracing::info!(session = %self.id, peer = %self.peer, account = %account.address, "imap login");
        self.changes = Some(self.core.watch_account(account.id));
        self.account = Some(account);
        let capabilities = self.capabilities();
        self.ok(tag, &format!("[CAPABILITY {capabilities}] logged in"));
    }

    /// RFC 2177 IDLE: report changes as they happen until the client sends DONE.
    async fn idle(&mut self, tag: &str) -> Flow {
        self.queue(b"+ idling\r\n");
        let Some(mut changes) = self.changes.clone() else { return Flow::Close };
        // Mark first, then sync: a change committed in between wakes the loop at once.
        changes.mark_unchanged();
        self.sync(true).await;
        loop {
            if self.connection.flush(self.config.idle_timeout).await.is_err() {
                return Flow::Close;
            }
            let line = tokio::select! {
                line = self.connection.read_line(self.config.idle_timeout) => line,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Flow::Close;
                    }
                    self.sync(true).await;
                    if self.selected_was_deleted() {
                        self.untagged("BYE the selected mailbox was deleted");
                        return Flow::Close;
                    }
                    continue;
                }
            };
            match line {
                Ok(LineRead::Line(line)) => {
                    if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                        self.ok(tag, "IDLE terminated");
                    } else {
                        self.bad(tag, "expected DONE to end IDLE");
                    }
                    return Flow::Continue;
                }
                Ok(LineRead::TooLong) => {
                    self.bad(tag, "expected DONE to end IDLE");
                    return Flow::Continue;
                }
                Ok(LineRead::TimedOut) => {
                    self.untagged("BYE autologout: idle for too long");
                    return Flow::Close;
                }
                Ok(LineRead::Closed) | Err(_) => return Flow::Close,
            }
        }
    }

    /// The logged-in account (commands past the state check have one).
    pub(crate) fn account(&self) -> &Account {
        self.account.as_ref().expect("authenticated state checked")
    }
}

/// Reads and drops `length` octets; false when the client went away.
async fn skip_input(connection: &mut Connection, mut length: u64, timeout: Duration) -> bool {
    while length > 0 {
        if connection.input().is_empty() {
            match connection.fill(timeout).await {
                Ok(Some(read)) if read > 0 => {}
                _ => return false,
            }
        }
        let take = length.min(connection.input().len() as u64) as usize;
        let _ = connection.input().split_to(take);
        length -= take as u64;
    }
    true
}

/// The tag of a command being read (for errors before it is parsed).
fn tag_of(segments: &[Segment]) -> String {
    match segments.first() {
        Some(Segment::Text(text)) => {
            let tag: String = text
                .split(|&byte| byte == b' ')
                .next()
                .map(|tag| String::from_utf8_lossy(tag).into_owned())
                .unwrap_or_default();
            if tag.is_empty() || tag.contains(['*', '+', '(', ')', '{', '"', '\\', '%']) { "*".into() } else { tag }
        }
        _ => "*".into(),
    }
}
