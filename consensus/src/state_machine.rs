//! The state-machine side of openraft: [`ReplicatedState`] is what an application
//! implements (mail-agnostic: opaque command bytes in, opaque responses out), and
//! [`StateMachineStore`] adapts it to openraft, including snapshots.
//!
//! A snapshot is the application's consistent on-disk checkpoint (for RocksDB, a
//! checkpoint directory) packed into one file:
//! ```text
//! "WMSNAP01" | u32 meta length | SnapshotMeta as JSON | { u16 name length | name | u64 size | bytes }* | u16 0
//! ```

use std::fmt::Debug;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::{NodeId, Response, TypeConfig};

/// Magic bytes opening every snapshot file (format version 1).
const SNAPSHOT_MAGIC: &[u8; 8] = b"WMSNAP01";
/// The file holding the current snapshot inside the snapshot directory.
const CURRENT_SNAPSHOT: &str = "current.snap";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// One committed entry handed to [`ReplicatedState::apply`].
#[derive(Debug, Clone)]
pub struct StateEntry {
    /// The entry's Raft log index (increasing; usable as a logical clock by the application).
    pub log_index: u64,
    /// The application commands of the entry (a batch; empty for Raft's own entries such as
    /// blank and membership entries). They must be applied atomically, in order.
    pub commands: Vec<Vec<u8>>,
    /// Opaque record of the applied state after this entry; the application must store it
    /// atomically with the entry's effects and return it from [`ReplicatedState::applied_record`].
    pub applied_record: Vec<u8>,
}

/// A state machine replicated by [`crate::Consensus`]. Implementations must be
/// deterministic: the same entries produce the same state and responses on every node.
///
/// All methods block (they do disk I/O); the adapter calls them from blocking threads.
pub trait ReplicatedState: Send + Sync + 'static {
    /// Applies entries in order and returns, per entry, one response per command. An error
    /// means the node cannot go on applying (a disk failure, a command from a newer
    /// release); it stops.
    fn apply(&self, entries: Vec<StateEntry>) -> std::io::Result<Vec<Vec<Vec<u8>>>>;

    /// Returns the `applied_record` of the last applied entry.
    fn applied_record(&self) -> std::io::Result<Option<Vec<u8>>>;

    /// Writes a consistent checkpoint of the whole state into `dir` (which does not exist
    /// yet) and returns the `applied_record` it contains.
    fn checkpoint(&self, dir: &Path) -> std::io::Result<Option<Vec<u8>>>;

    /// Replaces the whole state with a checkpoint directory written by [`Self::checkpoint`]
    /// (possibly on another node). The directory may be moved.
    fn restore(&self, dir: &Path) -> std::io::Result<()>;
}

/// What consensus keeps in the application's `applied_record`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedRecord {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl AppliedRecord {
    fn decode(bytes: Option<Vec<u8>>) -> StorageResult<Self> {
        match bytes {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_state_machine(&e).into()),
            None => Ok(Self::default()),
        }
    }
}

/// openraft's view of a [`ReplicatedState`]: applies entries on blocking threads and
/// builds, stores and installs snapshots under `snapshot_dir`.
pub struct StateMachineStore<S: ReplicatedState> {
    state: Arc<S>,
    snapshot_dir: PathBuf,
}

impl<S: ReplicatedState> Clone for StateMachineStore<S> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), snapshot_dir: self.snapshot_dir.clone() }
    }
}

impl<S: ReplicatedState> Debug for StateMachineStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").field("snapshot_dir", &self.snapshot_dir).finish()
    }
}

fn sm_read_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&error).into()
}

fn sm_write_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&error).into()
}

fn snapshot_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &error).into()
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    to_error: fn(std::io::Error) -> StorageError<NodeId>,
) -> StorageResult<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(to_error),
        Err(join_error) => Err(to_error(std::io::Error::other(join_error.to_string()))),
    }
}

fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{nanos:x}-{}", std::process::id())
}

impl<S: ReplicatedState> StateMachineStore<S> {
    /// Wraps `state`; snapshots live in `snapshot_dir`, which must be on the same filesystem
    /// as the state so checkpoints can be moved into place.
    pub fn new(state: Arc<S>, snapshot_dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        // Leftovers of an interrupted build or install.
        for entry in std::fs::read_dir(&snapshot_dir)? {
            let entry = entry?;
            if entry.file_name() != CURRENT_SNAPSHOT {
                let path = entry.path();
                if path.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
            }
        }
        Ok(Self { state, snapshot_dir })
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_SNAPSHOT)
    }
}

/// Packs the checkpoint in `dir` and `meta` into a snapshot file at `target` (via a temp file).
fn pack_snapshot(dir: &Path, meta: &SnapshotMeta<NodeId, BasicNode>, target: &Path) -> std::io::Result<()> {
    let temp = target.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&temp)?);
    out.write_all(SNAPSHOT_MAGIC)?;
    let meta_json = serde_json::to_vec(meta)?;
    out.write_all(&(meta_json.len() as u32).to_be_bytes())?;
    out.write_all(&meta_json)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().into_string().map_err(|_| std::io::Error::other("non-UTF-8 checkpoint file"))?;
        let size = entry.metadata()?.len();
        out.write_all(&(name.len() as u16).to_be_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&size.to_be_bytes())?;
        let copied = std::io::copy(&mut std::fs::File::open(entry.path())?.take(size), &mut out)?;
        if copied != size {
            return Err(std::io::Error::other(format!("checkpoint file {name} changed while packing")));
        }
    }
    out.write_all(&0u16.to_be_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&temp, target)?;
    std::fs::File::open(target.parent().expect("snapshot file has a directory"))?.sync_all()
}

/// Reads the header of a snapshot file, leaving `input` at the first packed file.
fn read_snapshot_meta(input: &mut impl Read) -> std::io::Result<SnapshotMeta<NodeId, BasicNode>> {
    let mut magic = [0; 8];
    input.read_exact(&mut magic)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(std::io::Error::other("not a wmail snapshot (bad magic), or one from a newer release"));
    }
    let mut length = [0; 4];
    input.read_exact(&mut length)?;
    let mut meta_json = vec![0; u32::from_be_bytes(length) as usize];
    input.read_exact(&mut meta_json)?;
    Ok(serde_json::from_slice(&meta_json)?)
}

/// Unpacks the files of a snapshot into `dir`.
fn unpack_snapshot(path: &Path, dir: &Path) -> std::io::Result<SnapshotMeta<NodeId, BasicNode>> {
    let mut input = std::io::BufReader::new(std::fs::File::open(path)?);
    let meta = read_snapshot_meta(&mut input)?;
    std::fs::create_dir_all(dir)?;
    loop {
        let mut name_length = [0; 2];
        input.read_exact(&mut name_length)?;
        let name_length = u16::from_be_bytes(name_length) as usize;
        if name_length == 0 {
            break;
        }
        let mut name = vec![0; name_length];
        input.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(std::io::Error::other)?;
        if name.contains('/') || name == ".." || name == "." {
            return Err(std::io::Error::other(format!("snapshot names a file outside its directory: {name}")));
        }
        let mut size = [0; 8];
        input.read_exact(&mut size)?;
        let size = u64::from_be_bytes(size);
        let mut file = std::fs::File::create(dir.join(&name))?;
        if std::io::copy(&mut (&mut input).take(size), &mut file)? != size {
            return Err(std::io::Error::other("snapshot file is truncated"));
        }
        file.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(meta)
}

impl<S: ReplicatedState> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<S> {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let state = self.state.clone();
        let staging = self.snapshot_dir.join(unique_name("build"));
        let target = self.current_path();
        let meta = blocking(
            move || {
                let record = state.checkpoint(&staging)?;
                let record = AppliedRecord::decode(record).map_err(std::io::Error::other)?;
                let snapshot_id = match &record.last_applied {
                    Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.index, unique_name("s")),
                    None => unique_name("empty"),
                };
                let meta =
                    SnapshotMeta { last_log_id: record.last_applied, last_membership: record.membership, snapshot_id };
                let packed = pack_snapshot(&staging, &meta, &target);
                std::fs::remove_dir_all(&staging)?;
                packed.map(|_| meta)
            },
            snapshot_error,
        )
        .await?;
        let file = tokio::fs::File::open(self.current_path()).await.map_err(snapshot_error)?;
        tracing::info!(snapshot_id = %meta.snapshot_id, "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl<S: ReplicatedState> RaftStateMachine<TypeConfig> for StateMachineStore<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let state = self.state.clone();
        let record = blocking(move || state.applied_record(), sm_read_error).await?;
        let record = AppliedRecord::decode(record)?;
        Ok((record.last_applied, record.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let state = self.state.clone();
        let mut record = AppliedRecord::decode(blocking(move || state.applied_record(), sm_read_error).await?)?;
        let mut batch = Vec::new();
        for entry in entries {
            record.last_applied = Some(entry.log_id);
            let commands = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(request) => request.0,
                EntryPayload::Membership(membership) => {
                    record.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            let applied_record = serde_json::to_vec(&record).map_err(sm_write_error)?;
            batch.push(StateEntry { log_index: entry.log_id.index, commands, applied_record });
        }
        let state = self.state.clone();
        let responses = blocking(move || state.apply(batch), sm_write_error).await?;
        Ok(responses.into_iter().map(Response).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.snapshot_dir.join(unique_name("receiving"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snapshot_error)?;
        // The open handle keeps the data; the name is not needed once unlinked.
        tokio::fs::remove_file(&path).await.map_err(snapshot_error)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        use tokio::io::AsyncSeekExt;
        // Keep the received bytes as the current snapshot, then unpack and restore from it.
        let received = self.snapshot_dir.join(unique_name("received"));
        snapshot.seek(std::io::SeekFrom::Start(0)).await.map_err(snapshot_error)?;
        let mut copy = tokio::fs::File::create(&received).await.map_err(snapshot_error)?;
        tokio::io::copy(&mut snapshot, &mut copy).await.map_err(snapshot_error)?;
        copy.sync_all().await.map_err(snapshot_error)?;
        let state = self.state.clone();
        let current = self.current_path();
        let unpack_dir = self.snapshot_dir.join(unique_name("restore"));
        let expected_id = meta.snapshot_id.clone();
        blocking(
            move || {
                let packed_meta = unpack_snapshot(&received, &unpack_dir)?;
                if packed_meta.snapshot_id != expected_id {
                    return Err(std::io::Error::other("snapshot data does not match its announced id"));
                }
                state.restore(&unpack_dir)?;
                let _ = std::fs::remove_dir_all(&unpack_dir);
                std::fs::rename(&received, &current)?;
                std::fs::File::open(current.parent().expect("snapshot directory"))?.sync_all()
            },
            snapshot_error,
        )
        .await?;
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let path = self.current_path();
        let read = blocking(
            move || match std::fs::File::open(&path) {
                // A fresh handle for the caller: reading the header moved this one.
                Ok(file) => {
                    Ok(Some((read_snapshot_meta(&mut std::io::BufReader::new(file))?, std::fs::File::open(&path)?)))
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error),
            },
            sm_read_error,
        )
        .await?;
        Ok(read.map(|(meta, file)| Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}
