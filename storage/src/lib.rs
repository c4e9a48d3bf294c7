//! wmail-storage owns the node's durable state below consensus:
//!
//! - [`StateStore`]: the replicated state machine in RocksDB (one column family per table,
//!   see [`keyspace`]). [`Command`]s, applied in Raft log order by
//!   [`StateStore::apply_batch`], are the only way it changes.
//! - [`BlobStore`]: immutable, content-addressed message bodies on a local directory or an
//!   S3-compatible server.
//!
//! It must not know about protocols or consensus; the node's core drives it.

pub mod blob;
pub mod blob_cache;
#[cfg(any(test, feature = "testsuite"))]
pub mod blob_testsuite;
pub mod command;
mod error;
pub mod keyspace;
pub mod queue;
mod records;
mod state;

pub use blob::{BlobBackend, BlobId, BlobStore, S3Config, StoredBlob};
pub use blob_cache::BlobCache;
pub use command::{
    COMMAND_VERSION, Command, CommandEnvelope, CommandError, CommandResult, DeliveryResult, DeliveryTarget, FlagAction,
    Outcome, Threading, UNREPORTED_COMMAND_VERSION,
};
pub use error::{Error, ErrorKind, Result};
pub use queue::{
    AttemptResult, Notify, OutboundEnvelope, OutboundRecipient, QueueEntry, QueuedRecipient, RecipientStatus, Ret,
};
pub use records::{
    Account, AccountState, AddressTarget, BlobRef, BlockRecord, Change, ClusterCa, Credentials, DkimAlgorithm, DkimKey,
    Domain, EnrolledNode, GreylistEntry, JoinToken, Lease, Mailbox, MessageRecord, QuarantineEntry, QuarantineInfo,
    Service, SpentJoinToken,
};

pub use state::{ApplyEntry, ChangeListener, INBOX, MAILBOX_SEPARATOR, StateStore};
