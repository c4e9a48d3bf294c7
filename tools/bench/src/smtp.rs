//! A minimal pipelining SMTP sender for load generation, with optional STARTTLS (any
//! certificate: the benchmark measures, it does not authenticate servers) and AUTH PLAIN.

use anyhow::{Context, bail};
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How a session starts.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Say STARTTLS after EHLO.
    pub starttls: bool,
    /// AUTH PLAIN with this user and password.
    pub auth: Option<(String, String)>,
}

/// Why a message was not accepted.
#[derive(Debug)]
pub enum SendError {
    /// The server answered with this reply code (the last line's text too); the session
    /// was reset with RSET and can send the next message.
    Refused(u16, String),
    /// The connection broke or the server's answers made no sense: connect again.
    Broken(anyhow::Error),
}

impl SendError {
    /// A short class for counting errors: the reply code, or `connection`.
    pub fn class(&self) -> String {
        match self {
            SendError::Refused(code, _) => code.to_string(),
            SendError::Broken(_) => "connection".to_owned(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Refused(code, text) => write!(formatter, "refused with {code}: {text}"),
            SendError::Broken(error) => write!(formatter, "{error:#}"),
        }
    }
}

impl std::error::Error for SendError {}

impl From<anyhow::Error> for SendError {
    fn from(error: anyhow::Error) -> Self {
        SendError::Broken(error)
    }
}

impl From<std::io::Error> for SendError {
    fn from(error: std::io::Error) -> Self {
        SendError::Broken(error.into())
    }
}

/// One SMTP session that sends messages one after another.
pub struct Sender {
    stream: BufReader<Box<dyn Io>>,
    from: String,
}

impl Sender {
    /// Connects, says EHLO, and upgrades and authenticates as `options` say. Mail is sent
    /// from the authenticated user, else from bench@bench.test.
    pub async fn connect_with(address: &str, options: &SessionOptions) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await.with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let from = options.auth.as_ref().map_or("bench@bench.test".to_owned(), |(user, _)| user.clone());
        let mut sender = Self { stream: BufReader::new(Box::new(stream)), from };
        sender.expect(220).await?;
        sender.write(b"EHLO bench.test\r\n").await?;
        sender.expect(250).await?;
        if options.starttls {
            sender.write(b"STARTTLS\r\n").await?;
            sender.expect(220).await?;
            let plain = std::mem::replace(
                &mut sender.stream,
                BufReader::new(Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()))),
            );
            let tls = connector().connect("bench.invalid".try_into()?, plain.into_inner()).await?;
            sender.stream = BufReader::new(Box::new(tls));
            sender.write(b"EHLO bench.test\r\n").await?;
            sender.expect(250).await?;
        }
        if let Some((user, password)) = &options.auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            sender.write(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?;
            sender.expect(235).await.context("authentication failed")?;
        }
        Ok(sender)
    }

    /// Sends one message (dot-stuffed) with MAIL, RCPT and DATA pipelined (RFC 2920). A
    /// refusal at any step resets the session (RSET), so the next message can follow.
    pub async fn send(&mut self, recipient: &str, message: &[u8]) -> Result<(), SendError> {
        let mut out = format!("MAIL FROM:<{}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n", self.from).into_bytes();
        self.write(&out).await?;
        // RFC 2920 §3.1: every pipelined command gets its reply, in order, whatever the
        // earlier ones said; DATA gets 354 only when MAIL and a RCPT were accepted.
        let replies = [self.reply().await?, self.reply().await?, self.reply().await?];
        if let Some((_, text)) = replies.iter().find(|(code, _)| *code == 421) {
            // RFC 5321 §3.8: the server is closing the channel.
            return Err(SendError::Broken(anyhow::anyhow!("421 {text}")));
        }
        let refusal = replies.iter().zip([250, 250, 354]).find(|((code, _), expected)| code != expected);
        if let Some(((code, text), _)) = refusal {
            let refused = SendError::Refused(*code, text.clone());
            if replies[2].0 == 354 {
                // A server that said 354 despite a refused MAIL or RCPT: end the data at once.
                self.write(b".\r\n").await?;
                self.reply().await?;
            }
            self.write(b"RSET\r\n").await?;
            self.expect(250).await?;
            return Err(refused);
        }
        out.clear();
        for line in message.split_inclusive(|&byte| byte == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.write(&out).await?;
        match self.reply().await? {
            (250, _) => Ok(()),
            (421, text) => Err(SendError::Broken(anyhow::anyhow!("421 {text}"))),
            (code, text) => Err(SendError::Refused(code, text)),
        }
    }

    /// Says QUIT (best effort).
    pub async fn quit(mut self) {
        let _ = self.write(b"QUIT\r\n").await;
        let _ = self.expect(221).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok(())
    }

    async fn expect(&mut self, code: u16) -> anyhow::Result<()> {
        let (got, text) = self.reply().await?;
        if got != code {
            bail!("expected {code}, got {got} {text}");
        }
        Ok(())
    }

    /// Reads one (possibly multi-line) reply: its code and the last line's text.
    async fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection");
            }
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).context("malformed reply")?;
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            return Ok((code, line.get(4..).unwrap_or_default().trim_end().to_owned()));
        }
    }
}

/// A TLS client that accepts any certificate (the benchmark measures, it does not
/// authenticate servers).
pub fn connector() -> tokio_rustls::TlsConnector {
    wmail_net::opportunistic_tls_connector()
}
