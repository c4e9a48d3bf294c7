//! Connects the mail state ([`StateStore`]) to consensus ([`ReplicatedState`]): consensus
//! hands over opaque entries, this applies them as [`wmail_storage::Command`]s.

use std::path::Path;
use std::sync::Arc;

use wmail_consensus::{ReplicatedState, StateEntry};
use wmail_storage::{ApplyEntry, CommandResult, StateStore};

/// The mail state as consensus sees it.
pub struct ReplicatedMailState(pub Arc<StateStore>);

fn io_error(error: wmail_storage::Error) -> std::io::Error {
    std::io::Error::other(error)
}

/// Encodes a command result as the opaque Raft response.
pub(crate) fn encode_result(result: &CommandResult) -> Vec<u8> {
    postcard::to_stdvec(result).expect("postcard encodes command results")
}

/// Decodes an opaque Raft response.
pub(crate) fn decode_result(bytes: &[u8]) -> Option<CommandResult> {
    postcard::from_bytes(bytes).ok()
}

impl ReplicatedState for ReplicatedMailState {
    fn apply(&self, entries: Vec<StateEntry>) -> std::io::Result<Vec<Vec<Vec<u8>>>> {
        let entries = entries
            .into_iter()
            .map(|entry| ApplyEntry {
                log_index: entry.log_index,
                commands: entry.commands,
                raft_meta: entry.applied_record,
            })
            .collect();
        let results = self.0.apply_batch(entries).map_err(|error| {
            tracing::error!(%error, "cannot apply committed commands; this node stops applying");
            io_error(error)
        })?;
        Ok(results.iter().map(|entry| entry.iter().map(encode_result).collect()).collect())
    }

    fn applied_record(&self) -> std::io::Result<Option<Vec<u8>>> {
        self.0.raft_meta().map_err(io_error)
    }

    fn checkpoint(&self, dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
        self.0.checkpoint(dir).map_err(io_error)
    }

    fn restore(&self, dir: &Path) -> std::io::Result<()> {
        self.0.restore(dir).map_err(io_error)
    }
}
