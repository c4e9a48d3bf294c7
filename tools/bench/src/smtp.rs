//! A minimal pipelining SMTP sender for load generation.

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SMTP session that sends messages one after another.
pub struct Sender {
    stream: BufReader<TcpStream>,
}

impl Sender {
    /// Connects, reads the greeting and says EHLO.
    pub async fn connect(address: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address).await.with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let mut sender = Self { stream: BufReader::new(stream) };
        sender.expect(220).await?;
        sender.stream.get_mut().write_all(b"EHLO bench.test\r\n").await?;
        sender.expect(250).await?;
        Ok(sender)
    }

    /// Sends one message (dot-stuffed) with MAIL, RCPT and DATA pipelined (RFC 2920).
    pub async fn send(&mut self, recipient: &str, message: &[u8]) -> anyhow::Result<()> {
        let mut out = format!("MAIL FROM:<bench@bench.test>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n").into_bytes();
        self.stream.get_mut().write_all(&out).await?;
        self.expect(250).await?;
        self.expect(250).await?;
        self.expect(354).await?;
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
        self.stream.get_mut().write_all(&out).await?;
        self.expect(250).await
    }

    /// Says QUIT (best effort).
    pub async fn quit(mut self) {
        let _ = self.stream.get_mut().write_all(b"QUIT\r\n").await;
        let _ = self.expect(221).await;
    }

    async fn expect(&mut self, code: u16) -> anyhow::Result<()> {
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection");
            }
            let got: u16 = line.get(..3).and_then(|c| c.parse().ok()).context("malformed reply")?;
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            if got != code {
                bail!("expected {code}, got {}", line.trim_end());
            }
            return Ok(());
        }
    }
}
