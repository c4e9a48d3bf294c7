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
    /// A line longer than the limit. Reported as soon as the limit is passed (the client
    /// may never send the line's end); the rest of the line is discarded by the next reads,
    /// which report `TooLong` again for every further limit's worth of it.
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
    /// Set while the rest of an over-long line is being skipped; counts what was skipped.
    discarding: Option<usize>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("tls", &self.is_tls()).finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps `stream`; lines longer than `max_line` octets are refused.
    pub fn new(stream: SessionStream, max_line: usize) -> Self {
        Self { stream: Some(stream), input: BytesMut::new(), output: Vec::new(), max_line, discarding: None }
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
    ///
    /// Reads go straight into the input buffer: an idle connection waiting here holds no
    /// read buffer of its own (thousands of IMAP IDLE sessions wait here), and the buffer
    /// grows only while a client sends a lot (a large APPEND or DATA).
    pub async fn fill(&mut self, timeout: Duration) -> io::Result<Option<usize>> {
        self.flush(timeout).await?;
        let room = if self.input.is_empty() { 2 * 1024 } else { 16 * 1024 };
        if self.input.capacity() - self.input.len() < room {
            self.input.reserve(room);
        }
        let stream = self.stream.as_mut().expect("stream present outside a TLS upgrade");
        match tokio::time::timeout(timeout, stream.read_buf(&mut self.input)).await {
            Ok(Ok(read)) => Ok(Some(read)),
            Ok(Err(error)) => Err(error),
            Err(_) => Ok(None),
        }
    }

    /// Returns the next line. Memory stays bounded: an over-long line is dropped as it
    /// arrives and reported as soon as it passes the limit, so a client that never ends its
    /// line cannot hold the session (protocols count the errors, IMAP closes at once).
    pub async fn read_line(&mut self, timeout: Duration) -> io::Result<LineRead> {
        loop {
            let newline = self.input.iter().position(|&byte| byte == b'\n');
            if let Some(skipped) = self.discarding {
                match newline {
                    Some(end) => {
                        let _ = self.input.split_to(end + 1);
                        self.discarding = None;
                        continue;
                    }
                    None => {
                        let skipped = skipped + self.input.len();
                        self.input.clear();
                        if skipped > self.max_line {
                            self.discarding = Some(0);
                            return Ok(LineRead::TooLong);
                        }
                        self.discarding = Some(skipped);
                    }
                }
            } else if let Some(end) = newline {
                let line = self.input.split_to(end + 1);
                if self.input.is_empty() && self.input.capacity() > 4096 {
                    // Give a large buffer back once it is drained (idle sessions stay small).
                    self.input = BytesMut::new();
                }
                return Ok(if line.len() > self.max_line { LineRead::TooLong } else { LineRead::Line(line) });
            } else if self.input.len() > self.max_line {
                self.input.clear();
                self.discarding = Some(0);
                return Ok(LineRead::TooLong);
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
        self.discarding = None;
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
