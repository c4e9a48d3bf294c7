//! The free-space guard: a node refuses new mail while its data disk has less than a
//! reserve free, instead of running into a full disk, where RocksDB fails writes (Debian's
//! build aborts the process) and a half-written message helps nobody. Like Postfix's
//! "452 4.3.1 Insufficient system storage" (RFC 5321 §4.2.3 code 452, RFC 3463 X.3.1),
//! the refusal is temporary: senders retry, IMAP clients are told to try later. Raft
//! replication, admin changes and flag updates still go through: they are small, and a
//! follower that refused the log would stall the cluster.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{CoreError, ErrorCode, Result};

/// How often the free space is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The data disk's free space, sampled in the background, against the reserve.
#[derive(Debug)]
pub(crate) struct DiskGuard {
    path: PathBuf,
    reserve_bytes: u64,
    available_bytes: AtomicU64,
    low: AtomicBool,
}

impl DiskGuard {
    /// A guard of the filesystem holding `path`, sampled once now.
    pub(crate) fn new(path: PathBuf, reserve_bytes: u64) -> Self {
        let guard =
            Self { path, reserve_bytes, available_bytes: AtomicU64::new(u64::MAX), low: AtomicBool::new(false) };
        guard.sample();
        guard
    }

    /// Reads the free space and updates the verdict, logging when it changes.
    pub(crate) fn sample(&self) {
        let available = match fs4::available_space(&self.path) {
            Ok(available) => available,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot read the data disk's free space");
                return;
            }
        };
        self.available_bytes.store(available, Ordering::Relaxed);
        let low = available < self.reserve_bytes;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    path = %self.path.display(),
                    available_mib = available >> 20,
                    reserve_mib = self.reserve_bytes >> 20,
                    "the data disk is nearly full: new mail is refused (temporarily) until space is freed; free space or grow the disk ([server] min_free_disk_mb)"
                );
            } else {
                tracing::warn!(available_mib = available >> 20, "the data disk has room again: accepting new mail");
            }
        }
    }

    /// Samples every second while the guard lives.
    pub(crate) fn spawn_sampler(guard: &std::sync::Arc<Self>) {
        let guard = std::sync::Arc::downgrade(guard);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                let Some(guard) = guard.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || guard.sample()).await;
            }
        });
    }

    /// Bytes free on the data disk at the last sample.
    pub(crate) fn available_bytes(&self) -> u64 {
        self.available_bytes.load(Ordering::Relaxed)
    }

    /// Fails with [`ErrorCode::InsufficientStorage`] while free space is below the reserve.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.low.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(CoreError::new(
            ErrorCode::InsufficientStorage,
            format!(
                "this server's disk is nearly full ({} MiB free, {} MiB kept in reserve); try again later",
                self.available_bytes() >> 20,
                self.reserve_bytes >> 20
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_is_refused_below_the_reserve_and_accepted_above_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roomy = DiskGuard::new(dir.path().to_owned(), 0);
        assert!(roomy.check().is_ok());
        assert!(roomy.available_bytes() > 0 && roomy.available_bytes() < u64::MAX);
        let full = DiskGuard::new(dir.path().to_owned(), u64::MAX);
        let error = full.check().expect_err("below the reserve");
        assert_eq!(error.code, ErrorCode::InsufficientStorage);
        assert!(error.message.contains("try again later"), "{}", error.message);
    }
}
