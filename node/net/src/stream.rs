//! [`SessionStream`]: a client connection, plain or TLS, that can be upgraded in place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client connection, plain or TLS.
pub enum SessionStream {
    /// Cleartext TCP.
    Plain(TcpStream),
    /// TLS over TCP (implicit TLS or after STARTTLS).
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for SessionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_tls() { "SessionStream(tls)" } else { "SessionStream(plain)" })
    }
}

impl SessionStream {
    /// Returns whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, SessionStream::Tls(_))
    }

    /// Describes the TLS session, e.g. `TLSv1_3 with cipher TLS13_AES_256_GCM_SHA384`, for
    /// Received headers and logs.
    pub fn tls_description(&self) -> Option<String> {
        let SessionStream::Tls(stream) = self else { return None };
        let (_, connection) = stream.get_ref();
        let version = connection.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
        let cipher = connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        Some(format!("{version} with cipher {cipher}"))
    }

    /// Runs the TLS handshake over a plain connection (STARTTLS, or implicit TLS on
    /// accept). Upgrading a TLS connection is an error.
    pub async fn start_tls(self, acceptor: &TlsAcceptor) -> io::Result<SessionStream> {
        match self {
            SessionStream::Plain(tcp) => Ok(SessionStream::Tls(Box::new(acceptor.accept(tcp).await?))),
            SessionStream::Tls(_) => Err(io::Error::other("the connection already uses TLS")),
        }
    }
}

impl AsyncRead for SessionStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            SessionStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SessionStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            SessionStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            SessionStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            SessionStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
