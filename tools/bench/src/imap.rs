//! A tiny IMAP client for load generation: tagged commands, APPEND with a LITERAL+ (`{n+}`)
//! literal so each APPEND is one round trip, literals in responses, and IDLE. Plaintext
//! LOGIN only: the server must allow it without TLS (`[imap] allow_plaintext_auth`).

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// LOGINs in flight at once, process-wide. wmail counts a login attempt as a failure until
/// it succeeds (so parallel guesses cannot slip past its lockout), and 20 for one account
/// or 55 from one address lock them out; password hashing runs on one core each anyway.
static LOGINS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

/// Waits for a turn to LOGIN (see [`LOGINS`]); hold the permit until the answer.
pub async fn login_permit() -> tokio::sync::SemaphorePermit<'static> {
    LOGINS.acquire().await.expect("the semaphore is never closed")
}

/// How a command completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok,
    /// `NO`: the command failed.
    No,
    /// `BAD`: the server did not understand it.
    Bad,
}

/// One untagged response (`* ...`), its literals taken out of the text.
pub struct Untagged {
    /// The response after `* `, with each literal's data left out (its `{n}` stays).
    pub text: String,
    /// The literals' data, in order.
    pub literals: Vec<Vec<u8>>,
}

impl Untagged {
    /// `n` for `* n KEYWORD ...` (`EXISTS`, `EXPUNGE`, `FETCH`).
    pub fn number_before(&self, keyword: &str) -> Option<u32> {
        let (number, rest) = self.text.split_once(' ')?;
        let word = rest.split([' ', '(']).next()?;
        if word.eq_ignore_ascii_case(keyword) { number.parse().ok() } else { None }
    }

    /// The UID item of a FETCH response.
    pub fn fetch_uid(&self) -> Option<u32> {
        self.number_before("FETCH")?;
        let mut tokens = self.text.split([' ', '(', ')']);
        tokens.find(|token| token.eq_ignore_ascii_case("UID"))?;
        tokens.next()?.parse().ok()
    }

    /// The FLAGS item of a FETCH response (`\Seen \Flagged`).
    pub fn fetch_flags(&self) -> Option<&str> {
        self.number_before("FETCH")?;
        let start = self.text.find("FLAGS (")? + 7;
        let end = self.text[start..].find(')')? + start;
        Some(&self.text[start..end])
    }
}

/// A command's tagged completion and the untagged responses before it.
pub struct Response {
    /// OK, NO or BAD.
    pub status: Status,
    /// The text after the status (with any response code).
    pub text: String,
    /// Untagged responses received while the command ran.
    pub untagged: Vec<Untagged>,
}

impl Response {
    /// The arguments of a response code: `"5 17"` for `[APPENDUID 5 17]` and `"APPENDUID"`.
    pub fn code(&self, name: &str) -> Option<&str> {
        let inner = self.text.strip_prefix('[')?.split(']').next()?;
        let (code, arguments) = inner.split_once(' ').unwrap_or((inner, ""));
        code.eq_ignore_ascii_case(name).then_some(arguments)
    }

    /// The response if it is OK; an error with the server's text otherwise.
    pub fn ok(self) -> anyhow::Result<Self> {
        match self.status {
            Status::Ok => Ok(self),
            status => bail!("{status:?} {}", self.text),
        }
    }
}

/// One IMAP connection. Errors from its methods mean the connection is unusable
/// (closed, or a response that cannot be parsed); NO and BAD come back as [`Response`]s.
pub struct Client {
    stream: BufReader<TcpStream>,
    next_tag: u32,
    idle_tag: Option<String>,
}

impl Client {
    /// Connects and reads the greeting, which must be `* OK`.
    pub async fn connect(address: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await.with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let mut client = Self { stream: BufReader::new(stream), next_tag: 1, idle_tag: None };
        let (greeting, _) = client.read_line().await?;
        if !greeting.starts_with("* OK") {
            bail!("greeting from {address}: {greeting}");
        }
        Ok(client)
    }

    /// Connects and logs in, failing unless both succeed.
    pub async fn login(address: &str, user: &str, password: &str) -> anyhow::Result<Self> {
        let mut client = Self::connect(address).await?;
        let _permit = login_permit().await;
        client.run(&format!("LOGIN {} {}", quoted(user), quoted(password))).await?.ok().context("LOGIN")?;
        Ok(client)
    }

    /// Sends one command (without tag or CRLF) and reads its responses.
    pub async fn run(&mut self, command: &str) -> anyhow::Result<Response> {
        let tag = self.send(&[command.as_bytes()]).await?;
        self.read_response(&tag).await
    }

    /// APPENDs one message in one round trip: the literal is sent without waiting for a
    /// continuation (RFC 7888 LITERAL+). `flags` is the inside of the flag list.
    pub async fn append(
        &mut self,
        mailbox: &str,
        flags: &str,
        date: Option<&str>,
        message: &[u8],
    ) -> anyhow::Result<Response> {
        let date = date.map(|date| format!(" \"{date}\"")).unwrap_or_default();
        let head = format!("APPEND {} ({flags}){date} {{{}+}}\r\n", quoted(mailbox), message.len());
        let tag = self.send(&[head.as_bytes(), message]).await?;
        self.read_response(&tag).await
    }

    /// Starts IDLE (RFC 2177) and waits for the server's continuation; a completion
    /// instead (IDLE refused) is returned.
    pub async fn idle(&mut self) -> anyhow::Result<Option<Response>> {
        let tag = self.send(&[b"IDLE"]).await?;
        let refused = self.read_until(&tag, true).await?;
        if refused.is_none() {
            self.idle_tag = Some(tag);
        }
        Ok(refused)
    }

    /// Reads the next untagged response while idling.
    pub async fn next_untagged(&mut self) -> anyhow::Result<Untagged> {
        let (line, literals) = self.read_line().await?;
        match line.strip_prefix("* ") {
            Some(text) if !text.starts_with("BYE") => Ok(Untagged { text: text.to_owned(), literals }),
            _ => bail!("while idling: {line}"),
        }
    }

    /// Ends IDLE with DONE and reads the IDLE command's completion.
    pub async fn done(&mut self) -> anyhow::Result<Response> {
        let tag = self.idle_tag.take().context("not idling")?;
        self.stream.get_mut().write_all(b"DONE\r\n").await?;
        self.read_response(&tag).await
    }

    /// Says LOGOUT and closes (best effort).
    pub async fn logout(mut self) {
        let _ = self.run("LOGOUT").await;
    }

    /// Writes `tag` + parts + CRLF at once and returns the tag.
    async fn send(&mut self, parts: &[&[u8]]) -> anyhow::Result<String> {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        let mut out = Vec::with_capacity(tag.len() + 3 + parts.iter().map(|part| part.len()).sum::<usize>());
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
        self.stream.get_mut().write_all(&out).await.context("the server closed the connection")?;
        Ok(tag)
    }

    /// Reads untagged responses until the one tagged `tag`.
    async fn read_response(&mut self, tag: &str) -> anyhow::Result<Response> {
        self.read_until(tag, false).await?.context("unexpected continuation request")
    }

    /// Reads untagged responses until the one tagged `tag`, or until a continuation
    /// request (`+`) if `continuation` (then `None`).
    async fn read_until(&mut self, tag: &str, continuation: bool) -> anyhow::Result<Option<Response>> {
        let mut untagged = Vec::new();
        loop {
            let (line, literals) = self.read_line().await?;
            if let Some(text) = line.strip_prefix("* ") {
                if text.starts_with("BYE") {
                    bail!("{line}");
                }
                untagged.push(Untagged { text: text.to_owned(), literals });
            } else if let Some(rest) = line.strip_prefix(tag).and_then(|rest| rest.strip_prefix(' ')) {
                let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let status = match status.to_ascii_uppercase().as_str() {
                    "OK" => Status::Ok,
                    "NO" => Status::No,
                    "BAD" => Status::Bad,
                    _ => bail!("malformed completion: {line}"),
                };
                return Ok(Some(Response { status, text: text.to_owned(), untagged }));
            } else if line.starts_with('+') && continuation {
                return Ok(None);
            } else {
                bail!("unexpected response: {line}");
            }
        }
    }

    /// Reads one response line, reading the data of each literal (`{n}` at a line end)
    /// and the rest of the line after it.
    async fn read_line(&mut self) -> anyhow::Result<(String, Vec<Vec<u8>>)> {
        let mut text = Vec::new();
        let mut literals = Vec::new();
        loop {
            let start = text.len();
            if self.stream.read_until(b'\n', &mut text).await? == 0 {
                bail!("the server closed the connection");
            }
            while text.last().is_some_and(|&byte| byte == b'\n' || byte == b'\r') {
                text.pop();
            }
            let Some(length) = literal_length(&text[start..]) else { break };
            let mut literal = vec![0; length];
            self.stream.read_exact(&mut literal).await.context("the server closed the connection")?;
            literals.push(literal);
        }
        Ok((String::from_utf8_lossy(&text).into_owned(), literals))
    }
}

/// The length of a literal announced at the end of a line (`{123}`, `~{123}`).
fn literal_length(line: &[u8]) -> Option<usize> {
    let inside = line.strip_suffix(b"}")?;
    let open = inside.iter().rposition(|&byte| byte == b'{')?;
    std::str::from_utf8(&inside[open + 1..]).ok()?.parse().ok()
}

/// A quoted string (RFC 9051 §4.3).
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
