//! A bounded, least-recently-used cache of blobs on the node's disk, in front of a remote
//! (S3) blob store: a branch-office learner reads its users' mail from here instead of over
//! its WAN link. Blobs are immutable and named by their SHA-256, so a cached copy never goes
//! stale, and a copy is only kept when its bytes hash to its name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::blob::BlobId;
use crate::error::{Error, Result};

/// Read size when streaming a cached blob.
const CHUNK: usize = 256 * 1024;

#[derive(Default)]
struct Entries {
    /// Blob -> (size, last use).
    by_blob: HashMap<BlobId, (u64, u64)>,
    /// Last use -> blob, oldest first.
    by_use: BTreeMap<u64, BlobId>,
    total: u64,
    clock: u64,
}

impl Entries {
    fn touch(&mut self, id: &BlobId) -> bool {
        let Some((_, used)) = self.by_blob.get_mut(id) else { return false };
        self.by_use.remove(used);
        self.clock += 1;
        *used = self.clock;
        self.by_use.insert(self.clock, *id);
        true
    }

    fn add(&mut self, id: BlobId, size: u64) {
        if self.touch(&id) {
            return;
        }
        self.clock += 1;
        self.by_blob.insert(id, (size, self.clock));
        self.by_use.insert(self.clock, id);
        self.total += size;
    }

    /// Removes the least recently used blob.
    fn pop_oldest(&mut self) -> Option<BlobId> {
        let (_, id) = self.by_use.pop_first()?;
        if let Some((size, _)) = self.by_blob.remove(&id) {
            self.total -= size;
        }
        Some(id)
    }
}

/// The on-disk cache: `<dir>/<sha256 hex>`, at most `max_bytes` in total.
pub struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache").field("dir", &self.dir).field("max_bytes", &self.max_bytes).finish()
    }
}

impl BlobCache {
    /// Opens (or creates) the cache in `dir`; what is already there counts, oldest
    /// modification first, and leftovers of interrupted fills are removed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let mut found = Vec::new();
        let listing = std::fs::read_dir(dir).map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match (BlobId::from_hex(&name), entry.metadata()) {
                (Some(id), Ok(meta)) => found.push((meta.modified().ok(), id, meta.len())),
                _ => drop(std::fs::remove_file(entry.path())),
            }
        }
        found.sort_by_key(|(modified, _, _)| *modified);
        let mut entries = Entries::default();
        for (_, id, size) in found {
            entries.add(id, size);
        }
        let cache = Self { dir: dir.to_owned(), max_bytes, entries: Mutex::new(entries) };
        cache.evict();
        Ok(cache)
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// A fresh name to fill a copy under before renaming it into place (concurrent fills
    /// of one blob never share a file).
    fn temp_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(format!("{}.{:016x}.part", id.to_hex(), rand::random::<u64>()))
    }

    /// The bytes cached in total.
    pub fn cached_bytes(&self) -> u64 {
        self.entries.lock().expect("cache lock").total
    }

    /// The cached copy's path, if there is one (counting as a use).
    fn hit(&self, id: &BlobId) -> Option<PathBuf> {
        self.entries.lock().expect("cache lock").touch(id).then(|| self.path(id))
    }

    /// Reads a cached blob whole.
    pub async fn read_all(&self, id: &BlobId) -> Option<Bytes> {
        let path = self.hit(id)?;
        tokio::fs::read(path).await.ok().map(Bytes::from)
    }

    /// Reads `range` of a cached blob.
    pub async fn read_range(&self, id: &BlobId, range: std::ops::Range<u64>) -> Option<Bytes> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.hit(id)?;
        let mut file = tokio::fs::File::open(&path).await.ok()?;
        file.seek(std::io::SeekFrom::Start(range.start)).await.ok()?;
        let mut buffer = vec![0u8; usize::try_from(range.end.saturating_sub(range.start)).ok()?];
        file.read_exact(&mut buffer).await.ok()?;
        Some(Bytes::from(buffer))
    }

    /// Streams a cached blob.
    pub async fn stream(&self, id: &BlobId) -> Option<BoxStream<'static, Result<Bytes>>> {
        let path = self.hit(id)?;
        let file = tokio::fs::File::open(&path).await.ok()?;
        let chunks = futures::stream::try_unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut buffer = vec![0u8; CHUNK];
            let read = file.read(&mut buffer).await.map_err(|e| Error::io("cannot read a cached blob", e))?;
            buffer.truncate(read);
            Ok((read > 0).then(|| (Bytes::from(buffer), file)))
        });
        Some(chunks.boxed())
    }

    /// Keeps `bytes` as blob `id` if they hash to it, then evicts down to the bound.
    pub async fn insert(&self, id: BlobId, bytes: &Bytes) {
        if BlobId::of(bytes) != id || bytes.len() as u64 > self.max_bytes {
            return;
        }
        let temp = self.temp_path(&id);
        let written = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(bytes).await?;
            file.sync_all().await?;
            tokio::fs::rename(&temp, self.path(&id)).await
        };
        if written.await.is_ok() {
            self.entries.lock().expect("cache lock").add(id, bytes.len() as u64);
            self.evict();
        } else {
            let _ = tokio::fs::remove_file(&temp).await;
        }
    }

    /// Passes `remote` through, keeping a copy once it has all arrived and hashed to `id`.
    pub fn fill(
        self: &std::sync::Arc<Self>,
        id: BlobId,
        remote: BoxStream<'static, Result<Bytes>>,
    ) -> BoxStream<'static, Result<Bytes>> {
        struct Fill {
            remote: BoxStream<'static, Result<Bytes>>,
            file: Option<tokio::fs::File>,
            temp: PathBuf,
            hasher: Sha256,
            size: u64,
        }
        let cache = self.clone();
        let temp = self.temp_path(&id);
        let start = Fill { remote, file: None, temp, hasher: Sha256::new(), size: 0 };
        futures::stream::try_unfold((start, true), move |(mut fill, first)| {
            let cache = cache.clone();
            async move {
                if first {
                    fill.file = tokio::fs::File::create(&fill.temp).await.ok();
                }
                let next = match fill.remote.try_next().await {
                    Ok(next) => next,
                    Err(error) => {
                        // The remote failed midway: nothing to keep.
                        drop(fill.file.take());
                        let _ = tokio::fs::remove_file(&fill.temp).await;
                        return Err(error);
                    }
                };
                match next {
                    Some(chunk) => {
                        fill.hasher.update(&chunk);
                        fill.size += chunk.len() as u64;
                        if fill.size > cache.max_bytes {
                            fill.file = None;
                        }
                        if let Some(file) = fill.file.as_mut()
                            && file.write_all(&chunk).await.is_err()
                        {
                            fill.file = None;
                        }
                        Ok(Some((chunk, (fill, false))))
                    }
                    None => {
                        let complete = <[u8; 32]>::from(fill.hasher.clone().finalize()) == *id.as_bytes();
                        match fill.file.take() {
                            Some(file) if complete && file.sync_all().await.is_ok() => {
                                if tokio::fs::rename(&fill.temp, cache.path(&id)).await.is_ok() {
                                    cache.entries.lock().expect("cache lock").add(id, fill.size);
                                    cache.evict();
                                }
                            }
                            _ => drop(tokio::fs::remove_file(&fill.temp).await),
                        }
                        Ok(None)
                    }
                }
            }
        })
        .boxed()
    }

    /// Drops the cached copy of a deleted blob.
    pub fn remove(&self, id: &BlobId) {
        let mut entries = self.entries.lock().expect("cache lock");
        if let Some((size, used)) = entries.by_blob.remove(id) {
            entries.by_use.remove(&used);
            entries.total -= size;
            drop(entries);
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    /// Removes least recently used blobs until the cache fits its bound.
    fn evict(&self) {
        loop {
            let victim = {
                let mut entries = self.entries.lock().expect("cache lock");
                if entries.total <= self.max_bytes {
                    return;
                }
                entries.pop_oldest()
            };
            match victim {
                Some(id) => drop(std::fs::remove_file(self.path(&id))),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(fill: u8, size: usize) -> (BlobId, Bytes) {
        let bytes = Bytes::from(vec![fill; size]);
        (BlobId::of(&bytes), bytes)
    }

    #[tokio::test]
    async fn the_least_recently_used_blobs_go_first_and_the_cache_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 3_000).unwrap();
        let (a, b, c) = (blob(b'a', 1_000), blob(b'b', 1_000), blob(b'c', 1_000));
        for (id, bytes) in [&a, &b, &c] {
            cache.insert(*id, bytes).await;
        }
        assert_eq!(cache.read_all(&a.0).await.unwrap(), a.1, "a is now the most recent");
        let d = blob(b'd', 1_000);
        cache.insert(d.0, &d.1).await;
        assert!(cache.read_all(&b.0).await.is_none(), "b was the least recently used");
        assert!(cache.read_all(&a.0).await.is_some() && cache.read_all(&c.0).await.is_some());
        assert_eq!(cache.cached_bytes(), 3_000);
        // Bytes that do not hash to the name are never kept.
        cache.insert(blob(b'e', 10).0, &Bytes::from_static(b"forged")).await;
        assert_eq!(cache.cached_bytes(), 3_000);
        cache.remove(&c.0);
        assert!(cache.read_all(&c.0).await.is_none() && cache.cached_bytes() == 2_000);
        cache.insert(c.0, &c.1).await;
        drop(cache);
        std::fs::write(dir.path().join("leftover.part"), b"x").unwrap();
        let reopened = BlobCache::open(dir.path(), 2_000).unwrap();
        assert_eq!(reopened.cached_bytes(), 2_000, "a smaller bound evicts at open");
        assert!(!dir.path().join("leftover.part").exists());
    }

    #[tokio::test]
    async fn a_streamed_blob_is_kept_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(BlobCache::open(dir.path(), 1 << 20).unwrap());
        let (id, bytes) = blob(b'x', 300_000);
        let chunks: Vec<Result<Bytes>> = bytes.chunks(100_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let passed: Vec<Bytes> = cache.fill(id, futures::stream::iter(chunks).boxed()).try_collect().await.unwrap();
        assert_eq!(passed.concat(), bytes.to_vec());
        let streamed: Vec<Bytes> = cache.stream(&id).await.expect("cached").try_collect().await.unwrap();
        assert_eq!(streamed.concat(), bytes.to_vec());
        // A stream cut short leaves nothing behind.
        let (other, other_bytes) = blob(b'y', 200_000);
        let cut = futures::stream::iter(vec![Ok(other_bytes.slice(..100_000))]).boxed();
        let _: Vec<Bytes> = cache.fill(other, cut).try_collect().await.unwrap();
        assert!(cache.read_all(&other).await.is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
