//! Errors of the storage layer: a small `Copy` kind callers branch on, plus the source.

use std::fmt;

/// What went wrong, in a form callers can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object or record does not exist.
    NotFound,
    /// Stored bytes could not be decoded, or the on-disk layout is not what we wrote.
    Corrupt,
    /// The backend (disk, RocksDB, S3) failed; retrying may help.
    Io,
    /// The data directory or a needed file is held by someone else.
    Locked,
    /// The request itself is invalid (a bad name, a range past the end, ...).
    Invalid,
}

/// An error from the storage layer.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result alias of the storage crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an error of `kind` with a short, lowercase context message.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Self { kind, context: context.into(), source: None }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Returns the kind callers branch on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn io(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::new(ErrorKind::Io, context).with_source(source)
    }

    pub(crate) fn corrupt(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, context)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl From<rocksdb::Error> for Error {
    fn from(error: rocksdb::Error) -> Self {
        Error::io("rocksdb", error)
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        let kind = match error.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        Error::new(kind, "i/o").with_source(error)
    }
}
