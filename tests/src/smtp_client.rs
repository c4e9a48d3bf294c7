//! A line-level SMTP client for raw protocol checks (hostile input, smuggling, pipelining).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Generous per-reply deadline.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A raw SMTP connection.
pub struct RawSmtp {
    stream: BufReader<TcpStream>,
}

/// One complete (possibly multi-line) reply.
#[derive(Debug)]
pub struct SmtpReply {
    /// The three-digit code.
    pub code: u16,
    /// All lines, without CRLF.
    pub lines: Vec<String>,
}

impl SmtpReply {
    /// The text of all lines joined by newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl RawSmtp {
    /// Connects and reads the greeting, which must be 220.
    pub async fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).await.expect("connect to smtp");
        let mut client = Self { stream: BufReader::new(stream) };
        client.expect(220).await;
        client
    }

    /// Connects from the local address `source` (say `127.0.0.2`) and reads the greeting.
    pub async fn connect_from(source: std::net::IpAddr, address: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind the source address");
        let stream = socket.connect(address).await.expect("connect to smtp");
        let mut client = Self { stream: BufReader::new(stream) };
        client.expect(220).await;
        client
    }

    /// Connects and returns the greeting, whatever it is.
    pub async fn connect_raw(address: SocketAddr) -> (Self, Option<SmtpReply>) {
        let stream = TcpStream::connect(address).await.expect("connect to smtp");
        let mut client = Self { stream: BufReader::new(stream) };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
    }

    /// Sends one command line (CRLF added).
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Reads one reply; `None` when the server closed the connection.
    pub async fn reply(&mut self) -> Option<SmtpReply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_line(&mut line))
                .await
                .expect("reply within the deadline")
                .ok()?;
            if read == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let code = line.get(..3)?.parse().ok()?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(SmtpReply { code, lines });
            }
        }
    }

    /// Reads one reply and checks its code; returns it.
    pub async fn expect(&mut self, code: u16) -> SmtpReply {
        let reply = self.reply().await.unwrap_or_else(|| panic!("connection closed while expecting {code}"));
        assert_eq!(reply.code, code, "unexpected reply: {reply:?}");
        reply
    }

    /// Sends a command and checks the reply code.
    pub async fn command(&mut self, line: &str, code: u16) -> SmtpReply {
        self.send(line).await;
        self.expect(code).await
    }

    /// Starts a one-recipient message from `a@remote.test`: MAIL, RCPT and DATA, each
    /// expected to succeed; the caller sends the data and reads the final reply.
    pub async fn start_data(&mut self, recipient: &str) {
        self.command("MAIL FROM:<a@remote.test>", 250).await;
        self.command(&format!("RCPT TO:<{recipient}>"), 250).await;
        self.command("DATA", 354).await;
    }

    /// Returns whether the server has closed the connection (reading gives end of stream).
    pub async fn is_closed(&mut self) -> bool {
        let mut rest = String::new();
        matches!(tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_line(&mut rest)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}
