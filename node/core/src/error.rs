//! The closed set of errors core reports; each protocol maps [`ErrorCode`] to its wire form
//! (SMTP reply, IMAP response code, POP3 `-ERR`, HTTP status).

/// What kind of failure, in a form every protocol can map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The named thing does not exist.
    NotFound,
    /// The named thing already exists.
    AlreadyExists,
    /// The request conflicts with the current state.
    Conflict,
    /// The request is malformed or violates a rule.
    InvalidInput,
    /// The credentials are wrong, or the account may not log in.
    Unauthorized,
    /// The account's storage quota does not allow the change.
    OverQuota,
    /// Temporarily unavailable (no leader, shutting down); retry later.
    Unavailable,
    /// This node's data disk is nearly full: new mail is refused until space is freed.
    InsufficientStorage,
    /// A bug or a storage failure; the log has details.
    Internal,
}

/// An error from core, with a message meant for the client (lowercase, says what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CoreError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Result alias of core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// An invalid-input error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// An internal error; the details go to the log, not to the client.
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, context, "internal error");
        Self::new(ErrorCode::Internal, format!("internal error while {context}; see the server log"))
    }
}

impl From<wmail_storage::CommandError> for CoreError {
    fn from(error: wmail_storage::CommandError) -> Self {
        use wmail_storage::CommandError as E;
        let code = match &error {
            E::NotFound { .. } => ErrorCode::NotFound,
            E::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            E::Conflict(_) => ErrorCode::Conflict,
            E::Invalid(_) => ErrorCode::InvalidInput,
            E::BlobCollected { .. } => ErrorCode::Unavailable,
            E::OverQuota { .. } => ErrorCode::OverQuota,
        };
        Self::new(code, error.to_string())
    }
}

impl From<wmail_storage::Error> for CoreError {
    fn from(error: wmail_storage::Error) -> Self {
        CoreError::internal("accessing storage", error)
    }
}
