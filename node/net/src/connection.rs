//! [`Connection`]: the buffered, line-oriented side of a session that text protocols
//! (SMTP, POP3, IMAP) share: bounded command lines, queued replies flushed before each
//! read (so pipelined commands get their replies in one write), timeouts on reads and
//! writes, and the STARTTLS/STLS upgrade.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use crate::stream::SessionStream;

/// Why [`Connection::read_line`] returned.
#[derive(Debug)]
pub enum LineRead {
    /// A complete line, with its line ending.
    Line(BytesMut),
    /// A line longer than the limit; it was discarded up to and including its end.
    TooLong,
    /// The client closed the connection.
    Closed,
    /// Nothing arrived within the timeout.
    TimedOut,
}

/// A client connection with its input and output buffers.
pub struct Connection {
    stream: Option<SessionStream>,
    input: BytesMut,
    output: Vec<u8>,
    max_line: usize,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("tls", &self.is_tls()).finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps `stream`; lines longer than `max_line` octets are refused.
    pub fn new(stream: SessionStream, max_line: usize) -> Self {
        Self { stream: Some(stream), input: BytesMut::with_capacity(4096), output: Vec::with_capacity(1024), max_line }
    }

    fn stream(&mut self) -> &mut SessionStream {
        self.stream.as_mut().expect("stream present outside a TLS upgrade")
    }

    /// Returns whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(SessionStream::is_tls)
    }

    /// Describes the TLS session, if any.
    pub fn tls_description(&self) -> Option<String> {
        self.stream.as_ref().and_then(SessionStream::tls_description)
    }

    /// Queues bytes to send; they go out at the next flush (before the next read).
    pub fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Returns the number of queued bytes.
    pub fn queued(&self) -> usize {
        self.output.len()
    }

    /// The input received but not consumed yet.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Writes the queued bytes; a client that stops reading fails after `timeout`.
    pub async fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let output = std::mem::take(&mut self.output);
        let write = async {
            self.stream().write_all(&output).await?;
            self.stream().flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client does not read its replies"))?
    }

    /// Flushes, then reads more input, waiting at most `timeout`. Returns `Some(0)` at the
    /// end of the stream and `None` on timeout. Cancel safe: a cancelled read loses nothing.
    pub async fn fill(&mut self, timeout: Duration) -> io::Result<Option<usize>> {
        self.flush(timeout).await?;
        let mut buffer = [0u8; 16 * 1024];
        match tokio::time::timeout(timeout, self.stream().read(&mut buffer)).await {
            Ok(Ok(read)) => {
                self.input.extend_from_slice(&buffer[..read]);
                Ok(Some(read))
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Ok(None),
        }
    }

    /// Returns the next line. Memory stays bounded: an over-long line is dropped as it
    /// arrives and reported once its end is seen.
    pub async fn read_line(&mut self, timeout: Duration) -> io::Result<LineRead> {
        let mut discarding = false;
        loop {
            if let Some(end) = self.input.iter().position(|&byte| byte == b'\n') {
                let line = self.input.split_to(end + 1);
                return Ok(if discarding || line.len() > self.max_line {
                    LineRead::TooLong
                } else {
                    LineRead::Line(line)
                });
            }
            if self.input.len() > self.max_line {
                discarding = true;
                self.input.clear();
            }
            match self.fill(timeout).await? {
                Some(0) => return Ok(LineRead::Closed),
                Some(_) => {}
                None => return Ok(LineRead::TimedOut),
            }
        }
    }

    /// Flushes the queued reply (the "go ahead"), then runs the TLS handshake. Input the
    /// client pipelined in cleartext is discarded, never executed inside TLS (the
    /// CVE-2011-0411 command injection).
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor, timeout: Duration) -> io::Result<()> {
        self.flush(timeout).await?;
        self.input.clear();
        let plain = self.stream.take().expect("stream present");
        let upgraded = tokio::time::timeout(timeout, plain.start_tls(acceptor))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        self.stream = Some(upgraded);
        Ok(())
    }

    /// Flushes what is queued (best effort) and closes the connection.
    pub async fn close(&mut self, timeout: Duration) {
        let _ = self.flush(timeout).await;
        if let Some(stream) = self.stream.as_mut() {
            let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
        }
    }
}
