//! The content-addressed blob store: raw messages under `blobs/<2 hex>/<sha256 hex>`, on a
//! local directory or any S3-compatible server, through `object_store`.
//!
//! Writes stream: a body is hashed while it is written, never held whole in memory, and a
//! write returns only once the bytes are durable (local: temp file, fsync, rename, fsync of
//! the directory; S3: the PUT or the multipart completion was acknowledged). Blobs are
//! immutable, so a blob id names the same bytes on every node forever.

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::blob_cache::BlobCache;
use crate::error::{Error, ErrorKind, Result};

/// Size of one S3 multipart part, and the largest body a single S3 PUT carries.
pub const S3_PART_SIZE: usize = 8 * 1024 * 1024;

/// The SHA-256 of a blob's bytes: its address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId([u8; 32]);

impl BlobId {
    /// Returns the id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Builds an id from its 32 raw bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Parses the 64-character lowercase hex form.
    pub fn from_hex(hex_text: &str) -> Option<Self> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(hex_text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Returns the raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Returns the lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn object_path(&self) -> Path {
        let hex_text = self.to_hex();
        Path::from(format!("blobs/{}/{}", &hex_text[..2], hex_text))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", &self.to_hex()[..16])
    }
}

/// What a finished write stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob {
    /// The content address.
    pub id: BlobId,
    /// Length in bytes.
    pub size: u64,
}

/// Where blobs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobBackend {
    /// A directory on this node (the single-node default).
    Local {
        /// The directory holding `blobs/` and `tmp/`.
        root: PathBuf,
    },
    /// An S3-compatible bucket shared by every node.
    S3(S3Config),
}

/// Connection settings for an S3-compatible server.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL, for example `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// Region (many S3-compatible servers accept any).
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The blob store of a node.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Set for the local backend, whose durable write path is our own.
    local_root: Option<PathBuf>,
    /// A local copy of recently read remote blobs (learners of branch offices).
    cache: Option<Arc<BlobCache>>,
}

fn store_error(context: &str, error: object_store::Error) -> Error {
    let kind = match error {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        _ => ErrorKind::Io,
    };
    Error::new(kind, context.to_owned()).with_source(error)
}

impl BlobStore {
    /// Opens the store described by `backend`.
    pub fn open(backend: &BlobBackend) -> Result<Self> {
        match backend {
            BlobBackend::Local { root } => {
                for dir in [root.join("blobs"), root.join("tmp")] {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
                }
                let store = object_store::local::LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| store_error("cannot open the local blob directory", e))?;
                Ok(Self { store: Arc::new(store), local_root: Some(root.clone()), cache: None })
            }
            BlobBackend::S3(config) => {
                let store = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&config.bucket)
                    .with_endpoint(&config.endpoint)
                    .with_region(&config.region)
                    .with_access_key_id(&config.access_key_id)
                    .with_secret_access_key(&config.secret_access_key)
                    .with_allow_http(config.endpoint.starts_with("http://"))
                    .build()
                    .map_err(|e| store_error("invalid S3 blob configuration", e))?;
                Ok(Self { store: Arc::new(store), local_root: None, cache: None })
            }
        }
    }

    /// Reads remote blobs through `cache` (a local backend needs none).
    pub fn with_cache(mut self, cache: BlobCache) -> Self {
        if self.local_root.is_none() {
            self.cache = Some(Arc::new(cache));
        }
        self
    }

    /// The bytes held by the local cache, if there is one.
    pub fn cached_bytes(&self) -> Option<u64> {
        self.cache.as_ref().map(|cache| cache.cached_bytes())
    }

    /// Stores `bytes` and returns their address.
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<StoredBlob> {
        self.put_stream(futures::stream::once(async move { Ok(bytes) })).await
    }

    /// Stores a body read from `body`, hashing it on the way, and returns its address once
    /// the bytes are durable. Memory use is bounded by one S3 part, whatever the body size.
    ///
    /// Cancel safety: dropping the future leaves at most a temporary file or an aborted
    /// upload behind, never a partial blob under its final name.
    pub async fn put_stream<S>(&self, body: S) -> Result<StoredBlob>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        match &self.local_root {
            Some(root) => put_local(root, body).await,
            None => self.put_s3(body).await,
        }
    }

    async fn put_s3<S>(&self, body: S) -> Result<StoredBlob>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let mut body = std::pin::pin!(body);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = BytesMut::new();
        let mut upload: Option<(Path, Box<dyn object_store::MultipartUpload>)> = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            buffer.extend_from_slice(&chunk);
            while buffer.len() >= S3_PART_SIZE {
                let part = buffer.split_to(S3_PART_SIZE).freeze();
                if upload.is_none() {
                    let staging = Path::from(format!("incoming/{}", random_name()));
                    let started = self
                        .store
                        .put_multipart(&staging)
                        .await
                        .map_err(|e| store_error("cannot start a multipart upload", e))?;
                    upload = Some((staging, started));
                }
                let (_, started) = upload.as_mut().expect("set above");
                started.put_part(PutPayload::from(part)).await.map_err(|e| store_error("cannot upload a part", e))?;
            }
        }
        let id = BlobId(hasher.finalize().into());
        let target = id.object_path();
        match upload {
            None => {
                self.store
                    .put(&target, PutPayload::from(buffer.freeze()))
                    .await
                    .map_err(|e| store_error("cannot store blob", e))?;
            }
            Some((staging, mut started)) => {
                if !buffer.is_empty() {
                    started
                        .put_part(PutPayload::from(buffer.freeze()))
                        .await
                        .map_err(|e| store_error("cannot upload the last part", e))?;
                }
                started.complete().await.map_err(|e| store_error("cannot complete a multipart upload", e))?;
                // The hash is known only at the end, so large bodies are staged and then
                // copied to their address inside the server.
                self.store.copy(&staging, &target).await.map_err(|e| store_error("cannot copy staged blob", e))?;
                if let Err(error) = self.store.delete(&staging).await {
                    tracing::warn!(%staging, %error, "cannot delete staged upload; it is garbage now");
                }
            }
        }
        Ok(StoredBlob { id, size })
    }

    /// Streams a blob's bytes.
    pub async fn get(&self, id: &BlobId) -> Result<BoxStream<'static, Result<Bytes>>> {
        if let Some(cached) = self.cached_stream(id).await {
            return Ok(cached);
        }
        let result = self.store.get(&id.object_path()).await.map_err(|e| store_error("cannot read blob", e))?;
        let remote = result.into_stream().map_err(|e| store_error("cannot read blob", e)).boxed();
        Ok(match &self.cache {
            Some(cache) => cache.fill(*id, remote),
            None => remote,
        })
    }

    async fn cached_stream(&self, id: &BlobId) -> Option<BoxStream<'static, Result<Bytes>>> {
        self.cache.as_ref()?.stream(id).await
    }

    /// Reads a whole blob into memory (for small blobs and tests).
    pub async fn read_all(&self, id: &BlobId) -> Result<Bytes> {
        if let Some(cache) = &self.cache
            && let Some(bytes) = cache.read_all(id).await
        {
            return Ok(bytes);
        }
        let result = self.store.get(&id.object_path()).await.map_err(|e| store_error("cannot read blob", e))?;
        let bytes = result.bytes().await.map_err(|e| store_error("cannot read blob", e))?;
        if let Some(cache) = &self.cache {
            cache.insert(*id, &bytes).await;
        }
        Ok(bytes)
    }

    /// Reads the byte range `range` of a blob.
    pub async fn get_range(&self, id: &BlobId, range: Range<u64>) -> Result<Bytes> {
        if let Some(cache) = &self.cache
            && let Some(bytes) = cache.read_range(id, range.clone()).await
        {
            return Ok(bytes);
        }
        self.store.get_range(&id.object_path(), range).await.map_err(|e| store_error("cannot read blob range", e))
    }

    /// Returns the size of a blob, or a `NotFound` error.
    pub async fn size(&self, id: &BlobId) -> Result<u64> {
        let meta = self.store.head(&id.object_path()).await.map_err(|e| store_error("cannot stat blob", e))?;
        Ok(meta.size)
    }

    /// Returns whether the blob exists.
    pub async fn exists(&self, id: &BlobId) -> Result<bool> {
        match self.size(id).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Lists up to `limit` blobs whose object was last written before `before_ms` (ms since
    /// the epoch): candidates for orphan collection.
    pub async fn list_written_before(&self, before_ms: u64, limit: usize) -> Result<Vec<BlobId>> {
        let mut listing = self.store.list(Some(&Path::from("blobs")));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_error("cannot list blobs", e))?;
            let written_ms = u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0);
            let id = meta.location.filename().and_then(BlobId::from_hex);
            if let Some(id) = id
                && written_ms < before_ms
            {
                out.push(id);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Deletes a blob. Deleting a missing blob succeeds.
    pub async fn delete(&self, id: &BlobId) -> Result<()> {
        if let Some(cache) = &self.cache {
            cache.remove(id);
        }
        match self.store.delete(&id.object_path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(store_error("cannot delete blob", error)),
        }
    }
}

fn random_name() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn put_local<S>(root: &FsPath, body: S) -> Result<StoredBlob>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    let temp_path = root.join("tmp").join(random_name());
    let result = write_local(root, &temp_path, body).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp_path).await;
    }
    result
}

async fn write_local<S>(root: &FsPath, temp_path: &FsPath, body: S) -> Result<StoredBlob>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    let mut body = std::pin::pin!(body);
    let mut file = tokio::fs::File::create(temp_path).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    drop(file);
    let id = BlobId(hasher.finalize().into());
    let hex_text = id.to_hex();
    let shard = root.join("blobs").join(&hex_text[..2]);
    let final_path = shard.join(&hex_text);
    let shard_is_new = !tokio::fs::try_exists(&shard).await?;
    tokio::fs::create_dir_all(&shard).await?;
    tokio::fs::rename(temp_path, &final_path).await?;
    let mut dirs = vec![shard];
    if shard_is_new {
        dirs.push(root.join("blobs"));
    }
    tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|dir| std::fs::File::open(dir)?.sync_all()))
        .await
        .map_err(|e| Error::io("fsync task failed", e))??;
    Ok(StoredBlob { id, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_id_hex_round_trips_and_shards_by_prefix() {
        let id = BlobId::of(b"hello");
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.to_hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(id.object_path().as_ref(), format!("blobs/2c/{}", id.to_hex()));
        assert_eq!(BlobId::from_hex("zz"), None);
    }

    #[tokio::test]
    async fn local_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&BlobBackend::Local { root: dir.path().to_owned() }).unwrap();
        crate::blob_testsuite::run(&store).await;
        // Nothing is left in the staging directory.
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
