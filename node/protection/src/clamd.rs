//! A clamd client: the message is streamed with `INSTREAM` (clamd(8): chunks prefixed by
//! their length as a 32-bit big-endian integer, ended by a zero length) over TCP or a unix
//! socket, and the one-line answer says `OK` or `<name> FOUND`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes per INSTREAM chunk (below clamd's default `StreamMaxLength` chunking limits).
const CHUNK: usize = 64 * 1024;
/// Longest answer read.
const MAX_ANSWER: usize = 4096;

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    /// Nothing.
    Clean,
    /// A signature matched: its name.
    Infected(String),
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// clamd could not be reached or the connection failed.
    #[error("clamd at {address}: {error}")]
    Io {
        /// Where clamd was expected.
        address: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// clamd did not answer in time.
    #[error("clamd at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// clamd answered with an error.
    #[error("clamd: {0}")]
    Refused(String),
    /// The message is larger than clamd scans (its `StreamMaxLength`).
    #[error("clamd scans at most its StreamMaxLength: {0}")]
    TooLarge(String),
    /// As many streamed scans as allowed are running.
    #[error("clamd is busy with other large messages")]
    Busy,
}

/// Where clamd listens.
#[derive(Debug, Clone)]
enum Address {
    Tcp(String),
    Unix(std::path::PathBuf),
}

/// A clamd to scan with.
#[derive(Debug, Clone)]
pub struct Clamd {
    address: Address,
    timeout: Duration,
}

impl Clamd {
    /// A client for `address`: `host:port` or `unix:/path/to/clamd.ctl`; `None` when it is
    /// neither.
    pub fn new(address: &str) -> Option<Self> {
        let address = match address.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Address::Unix(path.into()),
            Some(_) => return None,
            None if address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) =>
            {
                Address::Tcp(address.to_owned())
            }
            None => return None,
        };
        Some(Self { address, timeout: Duration::from_secs(60) })
    }

    fn describe(&self) -> String {
        match &self.address {
            Address::Tcp(address) => address.clone(),
            Address::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// A new connection to clamd.
    async fn connect(&self) -> std::io::Result<Box<dyn Connection>> {
        Ok(match &self.address {
            Address::Tcp(address) => Box::new(tokio::net::TcpStream::connect(address).await?),
            Address::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }

    /// Runs `work` within the timeout, naming clamd in its errors.
    async fn bounded<T>(&self, work: impl Future<Output = std::io::Result<T>>) -> Result<T, ScanError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ScanError::Timeout(self.describe(), self.timeout))?
            .map_err(|error| ScanError::Io { address: self.describe(), error })
    }

    /// Scans `data`.
    pub async fn scan(&self, data: &[u8]) -> Result<ScanResult, ScanError> {
        let answer = self.bounded(async { instream(self.connect().await?, data).await }).await?;
        parse_answer(&answer)
    }

    /// Whether clamd answers `PING` with `PONG`.
    pub async fn ping(&self) -> Result<(), ScanError> {
        let answer = self.bounded(async { command(self.connect().await?, b"zPING\0").await }).await?;
        if answer == "PONG" { Ok(()) } else { Err(ScanError::Refused(answer)) }
    }
}

/// Both directions of a connection to clamd.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Connection for T {}

/// An `INSTREAM` scan fed as the message arrives, for messages too large to hold: memory
/// stays bounded by one chunk whatever the size. A write that fails (clamd gone, or
/// refusing more than its `StreamMaxLength`) stops the feeding; [`Stream::finish`] then
/// reports the failure (with clamd's answer when it gave one).
pub struct Stream {
    connection: Box<dyn Connection>,
    address: String,
    timeout: Duration,
    failed: Option<std::io::Error>,
    /// The slot this scan takes among the streamed scans allowed at once.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Clamd {
    /// Opens a streamed scan.
    pub async fn stream(&self) -> Result<Stream, ScanError> {
        let connection = self
            .bounded(async {
                let mut connection = self.connect().await?;
                connection.write_all(b"zINSTREAM\0").await?;
                Ok(connection)
            })
            .await?;
        Ok(Stream { connection, address: self.describe(), timeout: self.timeout, failed: None, slot: None })
    }
}

impl Stream {
    /// The same scan, holding `slot` until it ends.
    pub fn holding(mut self, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Sends more of the message (nothing once a write failed).
    pub async fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let connection = &mut self.connection;
        let write = async {
            for chunk in data.chunks(CHUNK) {
                connection.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
                connection.write_all(chunk).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.failed = Some(error),
            Err(_) => self.failed = Some(std::io::Error::new(std::io::ErrorKind::TimedOut, "clamd stopped reading")),
        }
    }

    /// Ends the message and reads clamd's answer.
    pub async fn finish(mut self) -> Result<ScanResult, ScanError> {
        let address = self.address.clone();
        let work = async {
            if self.failed.is_none() {
                self.connection.write_all(&0u32.to_be_bytes()).await?;
                self.connection.flush().await?;
            }
            // Even after a failed write clamd may have said why (its size limit).
            let answer = read_answer(&mut self.connection).await;
            match (answer, self.failed.take()) {
                (Ok(answer), _) if !answer.is_empty() => Ok(answer),
                (_, Some(error)) | (Err(error), None) => Err(error),
                (Ok(answer), None) => Ok(answer),
            }
        };
        let answer = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| ScanError::Timeout(address.clone(), self.timeout))?
            .map_err(|error| ScanError::Io { address, error })?;
        parse_answer(&answer)
    }
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, line: &[u8]) -> std::io::Result<String> {
    stream.write_all(line).await?;
    read_answer(stream).await
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, data: &[u8]) -> std::io::Result<String> {
    stream.write_all(b"zINSTREAM\0").await?;
    for chunk in data.chunks(CHUNK) {
        stream.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
        stream.write_all(chunk).await?;
    }
    stream.write_all(&0u32.to_be_bytes()).await?;
    stream.flush().await?;
    read_answer(stream).await
}

async fn read_answer<S: AsyncRead + Unpin>(stream: S) -> std::io::Result<String> {
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER as u64).read_to_end(&mut answer).await?;
    let end = answer.iter().position(|&byte| byte == 0).unwrap_or(answer.len());
    Ok(String::from_utf8_lossy(&answer[..end]).trim().to_owned())
}

/// `stream: OK`, `stream: Eicar-Signature FOUND`, or `... ERROR`.
fn parse_answer(answer: &str) -> Result<ScanResult, ScanError> {
    let verdict = answer.strip_prefix("stream:").unwrap_or(answer).trim();
    if verdict == "OK" {
        Ok(ScanResult::Clean)
    } else if let Some(name) = verdict.strip_suffix(" FOUND") {
        Ok(ScanResult::Infected(name.trim().to_owned()))
    } else if verdict.contains("size limit exceeded") {
        Err(ScanError::TooLarge(answer.to_owned()))
    } else {
        Err(ScanError::Refused(answer.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_addresses_are_understood() {
        assert_eq!(parse_answer("stream: OK").unwrap(), ScanResult::Clean);
        assert_eq!(
            parse_answer("stream: Eicar-Test-Signature FOUND").unwrap(),
            ScanResult::Infected("Eicar-Test-Signature".into())
        );
        assert!(matches!(parse_answer("INSTREAM size limit exceeded. ERROR"), Err(ScanError::TooLarge(_))));
        assert!(matches!(parse_answer("stream: Can't allocate memory ERROR"), Err(ScanError::Refused(_))));
        assert!(Clamd::new("127.0.0.1:3310").is_some());
        assert!(Clamd::new("unix:/run/clamav/clamd.ctl").is_some());
        assert!(Clamd::new("clamd").is_none());
        assert!(Clamd::new("unix:").is_none());
    }
}
