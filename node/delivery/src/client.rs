//! The SMTP client side of outbound delivery (RFC 5321): one connection to one remote
//! host, over which the worker sends one or more transactions. Replies are framed by
//! smtp-proto's `ResponseReceiver`; bodies stream from the blob store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Anything the client can talk over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code (RFC 3463), when the server sent one.
    pub status: Option<[u8; 3]>,
    /// The text; the lines of a multi-line reply are joined with `\n`.
    pub text: String,
}

impl Reply {
    /// Whether this is a 2xx completion.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Whether this is a 5xx: failing again would fail the same way.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as one line, `550 5.1.1 no such user`, for logs, the queue and DSNs.
    pub fn line(&self) -> String {
        let text = self.text.replace('\n', " ");
        match self.status {
            Some([a, b, c]) => format!("{} {a}.{b}.{c} {text}", self.code),
            None => format!("{} {text}", self.code),
        }
    }

    /// A reply made up locally for a failure that had none (a timeout, a refused connection).
    pub fn local(code: u16, status: [u8; 3], text: impl Into<String>) -> Self {
        Reply { code, status: Some(status), text: text.into() }
    }
}

/// What went wrong on a connection. Every error ends the connection.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting, reading or writing failed, or timed out.
    Io(std::io::Error),
    /// The server answered something that is not SMTP.
    Protocol(String),
    /// The server refused a step that is not per recipient (greeting, EHLO, MAIL, DATA).
    Refused { step: &'static str, reply: Reply },
    /// TLS could not be established.
    Tls(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(error) => write!(f, "{error}"),
            ClientError::Protocol(what) => write!(f, "protocol error: {what}"),
            ClientError::Refused { step, reply } => write!(f, "{step} refused: {}", reply.line()),
            ClientError::Tls(what) => write!(f, "TLS failed: {what}"),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        ClientError::Io(error)
    }
}

/// What the server offered in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: the announced limit (0: none announced).
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3030.
    pub chunking: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 4954: the SASL mechanisms offered, uppercase.
    pub auth: Vec<String>,
}

impl Extensions {
    fn parse(text: &str) -> Self {
        let mut extensions = Extensions::default();
        for line in text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => extensions.pipelining = true,
                "SIZE" => extensions.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => extensions.eight_bit_mime = true,
                "SMTPUTF8" => extensions.smtputf8 = true,
                "CHUNKING" => extensions.chunking = true,
                "STARTTLS" => extensions.starttls = true,
                "DSN" => extensions.dsn = true,
                "AUTH" => extensions.auth = words.map(|word| word.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        extensions
    }
}

/// Time limits of a client session (RFC 5321 §4.5.3.2 gives the minimums).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Greeting, EHLO, MAIL, RCPT and the other short commands.
    pub command: Duration,
    /// Each write of body data, and the reply after the data (§4.5.3.2.6: 10 minutes).
    pub data: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(30), command: Duration::from_secs(300), data: Duration::from_secs(600) }
    }
}

/// One SMTP client connection.
pub struct SmtpClient {
    io: Box<dyn Io>,
    input: BytesMut,
    timeouts: Timeouts,
    /// The extensions of the last EHLO reply.
    pub extensions: Extensions,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// The address connected to.
    pub peer: SocketAddr,
    /// Set when the connection's state is unknown (an I/O error, a timeout, an unexpected
    /// reply): it must not carry another transaction.
    broken: bool,
}

impl std::fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpClient").field("peer", &self.peer).field("tls", &self.tls).finish()
    }
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = std::io::Result<T>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("timed out after {} s waiting for {what}", limit.as_secs()),
        ))),
    }
}

impl SmtpClient {
    /// Connects and reads the greeting (RFC 5321 §3.1), which must be 220.
    pub async fn connect(peer: SocketAddr, timeouts: Timeouts) -> Result<Self, ClientError> {
        let stream = timed(timeouts.connect, "the TCP connection", TcpStream::connect(peer)).await?;
        let _ = stream.set_nodelay(true);
        let mut client = SmtpClient {
            io: Box::new(stream),
            input: BytesMut::with_capacity(4096),
            timeouts,
            extensions: Extensions::default(),
            tls: false,
            peer,
            broken: false,
        };
        let greeting = client.read_reply(timeouts.command).await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused { step: "greeting", reply: greeting });
        }
        Ok(client)
    }

    /// Sends EHLO, falling back to HELO when EHLO is not understood (RFC 5321 §3.2).
    pub async fn hello(&mut self, hostname: &str) -> Result<(), ClientError> {
        let reply = self.command(format!("EHLO {hostname}\r\n").as_bytes()).await?;
        if reply.is_positive() {
            self.extensions = Extensions::parse(&reply.text);
            return Ok(());
        }
        if !(500..=502).contains(&reply.code) && reply.code != 504 {
            return Err(ClientError::Refused { step: "EHLO", reply });
        }
        let reply = self.command(format!("HELO {hostname}\r\n").as_bytes()).await?;
        if !reply.is_positive() {
            return Err(ClientError::Refused { step: "HELO", reply });
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    /// Upgrades the connection with STARTTLS (RFC 3207 §4) and says EHLO again, as the
    /// server forgets everything it learnt before.
    pub async fn start_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        server_name: &str,
        hostname: &str,
    ) -> Result<(), ClientError> {
        let reply = self.command(b"STARTTLS\r\n").await?;
        if reply.code != 220 {
            return Err(ClientError::Refused { step: "STARTTLS", reply });
        }
        if !self.input.is_empty() {
            // RFC 3207 §5: nothing may follow the 220 in cleartext.
            return Err(ClientError::Protocol("the server sent data after its STARTTLS reply".into()));
        }
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|error| ClientError::Tls(format!("{server_name} is not a valid TLS server name: {error}")))?;
        let placeholder = tokio::io::join(tokio::io::empty(), tokio::io::sink());
        let plain = std::mem::replace(&mut self.io, Box::new(placeholder));
        self.broken = true; // until the handshake succeeds, there is no usable stream
        let tls = timed(self.timeouts.command, "the TLS handshake", connector.connect(name, plain))
            .await
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        self.io = Box::new(tls);
        self.tls = true;
        self.broken = false;
        self.hello(hostname).await
    }

    /// Authenticates (RFC 4954) with PLAIN, or LOGIN when PLAIN is not offered. Refuses to
    /// send credentials over a connection that is not encrypted.
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        use base64::Engine;
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        if !self.tls {
            return Err(ClientError::Protocol(
                "the relay did not offer STARTTLS; wmail never sends relay credentials in cleartext".into(),
            ));
        }
        let offers = |mechanism: &str| self.extensions.auth.iter().any(|m| m == mechanism);
        let reply = if offers("PLAIN") || !offers("LOGIN") {
            let token = encode(&format!("\0{user}\0{password}"));
            self.command(format!("AUTH PLAIN {token}\r\n").as_bytes()).await?
        } else {
            let reply = self.command(b"AUTH LOGIN\r\n").await?;
            if reply.code != 334 {
                return Err(ClientError::Refused { step: "AUTH", reply });
            }
            let reply = self.command(format!("{}\r\n", encode(user)).as_bytes()).await?;
            if reply.code != 334 {
                return Err(ClientError::Refused { step: "AUTH", reply });
            }
            self.command(format!("{}\r\n", encode(password)).as_bytes()).await?
        };
        if reply.code != 235 {
            return Err(ClientError::Refused { step: "AUTH", reply });
        }
        Ok(())
    }

    /// Sends MAIL FROM and the RCPTs, pipelined when the server allows it (RFC 2920), and
    /// returns the MAIL reply and one reply per recipient. A refused MAIL is an error.
    pub async fn envelope(&mut self, mail: &str, rcpts: &[String]) -> Result<Vec<Reply>, ClientError> {
        if self.extensions.pipelining {
            let mut batch = Vec::with_capacity(mail.len() + rcpts.iter().map(|r| r.len()).sum::<usize>());
            batch.extend_from_slice(mail.as_bytes());
            for rcpt in rcpts {
                batch.extend_from_slice(rcpt.as_bytes());
            }
            self.write(&batch, self.timeouts.command).await?;
            let mail_reply = self.read_reply(self.timeouts.command).await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            for _ in rcpts {
                replies.push(self.read_reply(self.timeouts.command).await?);
            }
            if !mail_reply.is_positive() {
                return Err(ClientError::Refused { step: "MAIL", reply: mail_reply });
            }
            return Ok(replies);
        }
        let mail_reply = self.command(mail.as_bytes()).await?;
        if !mail_reply.is_positive() {
            return Err(ClientError::Refused { step: "MAIL", reply: mail_reply });
        }
        let mut replies = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            replies.push(self.command(rcpt.as_bytes()).await?);
        }
        Ok(replies)
    }

    /// Sends the message: BDAT chunks when the server offers CHUNKING (RFC 3030), else DATA
    /// with dot-stuffing (RFC 5321 §4.5.2). The body is read from `body` as it is sent; its
    /// bytes are taken as the stored message (CRLF lines). Returns the final reply.
    pub async fn data<S>(&mut self, mut body: S) -> Result<Reply, ClientError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin,
    {
        if self.extensions.chunking {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if chunk.is_empty() {
                    continue;
                }
                self.write(format!("BDAT {}\r\n", chunk.len()).as_bytes(), self.timeouts.data).await?;
                self.write(&chunk, self.timeouts.data).await?;
                let reply = self.read_reply(self.timeouts.data).await?;
                if !reply.is_positive() {
                    return Err(ClientError::Refused { step: "BDAT", reply });
                }
            }
            self.write(b"BDAT 0 LAST\r\n", self.timeouts.data).await?;
            return self.read_reply(self.timeouts.data).await;
        }
        let reply = self.command(b"DATA\r\n").await?;
        if reply.code != 354 {
            if reply.code < 400 {
                // RFC 5321 §4.3.2: DATA answers 354 or a failure; anything else means the
                // replies are out of step with the commands.
                self.broken = true;
                return Err(ClientError::Protocol(format!("unexpected reply to DATA: {}", reply.line())));
            }
            return Err(ClientError::Refused { step: "DATA", reply });
        }
        let mut stuffer = wmail_net::DotStuffer::new(None);
        let mut out = Vec::with_capacity(64 * 1024);
        while let Some(chunk) = body.next().await {
            out.clear();
            stuffer.push(&chunk?, &mut out);
            self.write(&out, self.timeouts.data).await?;
        }
        out.clear();
        stuffer.finish(&mut out);
        self.write(&out, self.timeouts.data).await?;
        self.read_reply(self.timeouts.data).await
    }

    /// Ends a transaction that will not be sent (RFC 5321 §4.1.1.5), keeping the connection;
    /// a connection whose RSET fails is marked broken.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        let reply = self.command(b"RSET\r\n").await?;
        if !reply.is_positive() {
            self.broken = true;
            return Err(ClientError::Refused { step: "RSET", reply });
        }
        Ok(())
    }

    /// Whether the connection may carry another transaction.
    pub fn is_reusable(&self) -> bool {
        !self.broken
    }

    /// Says goodbye politely; errors are ignored (the mail is already delivered).
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n", Duration::from_secs(5)).await.is_ok() {
            let _ = self.read_reply(Duration::from_secs(5)).await;
        }
        let _ = self.io.shutdown().await;
    }

    async fn command(&mut self, line: &[u8]) -> Result<Reply, ClientError> {
        self.write(line, self.timeouts.command).await?;
        self.read_reply(self.timeouts.command).await
    }

    async fn write(&mut self, bytes: &[u8], limit: Duration) -> Result<(), ClientError> {
        let io = &mut self.io;
        let written = timed(limit, "the server to take data", async move {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await;
        self.broken |= written.is_err();
        written
    }

    /// Reads one whole reply within `limit` (a server dripping bytes cannot stretch it).
    async fn read_reply(&mut self, limit: Duration) -> Result<Reply, ClientError> {
        let reply = match tokio::time::timeout(limit, self.read_reply_unbounded(limit)).await {
            Ok(reply) => reply,
            Err(_) => Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {} s waiting for a reply", limit.as_secs()),
            ))),
        };
        self.broken |= reply.is_err();
        reply
    }

    async fn read_reply_unbounded(&mut self, limit: Duration) -> Result<Reply, ClientError> {
        let mut receiver = smtp_proto::response::parser::ResponseReceiver::default();
        loop {
            if !self.input.is_empty() {
                let mut bytes = self.input.iter();
                let parsed = receiver.parse(&mut bytes);
                let consumed = self.input.len() - bytes.len();
                self.input.advance(consumed);
                match parsed {
                    Ok(response) => {
                        let status = (response.esc[0] != 0).then_some(response.esc);
                        return Ok(Reply { code: response.code, status, text: response.message });
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(error) => return Err(ClientError::Protocol(format!("unreadable reply: {error:?}"))),
                }
            }
            let io = &mut self.io;
            let input = &mut self.input;
            let read = timed(limit, "a reply", async move { io.read_buf(input).await }).await?;
            if read == 0 {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }
}

/// A TLS connector for outbound sessions. `verify` checks the server's certificate against
/// the web PKI roots (RFC 7672-style "require valid certificate" policy); without it any
/// certificate is accepted, as opportunistic STARTTLS does (RFC 3207 §4.1 leaves
/// authentication to policy; an unverified session still protects against passive reading).
pub fn tls_connector(
    verify: bool,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> tokio_rustls::TlsConnector {
    if !verify {
        return wmail_net::opportunistic_tls_connector();
    }
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for cert in extra_roots {
        let _ = roots.add(cert.clone());
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
