//! wmail-tests: end-to-end tests that drive real `wmail` binaries with real clients and
//! real peers (SeaweedFS for S3, Prometheus' promtool), compiled into one test binary.
//! Run them with `bash tests/run.sh`, which installs the peers first.

pub mod harness;
pub mod peers;
pub mod smtp_client;

/// This crate's directory, read when the tests run (cargo sets `CARGO_MANIFEST_DIR` for
/// them): a test binary built warm from another checkout of the repository must use the
/// files of this one.
pub fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

#[cfg(test)]
mod bench_smoke;
#[cfg(test)]
mod blob_s3;
#[cfg(test)]
mod clients;
#[cfg(test)]
mod cluster;
#[cfg(test)]
mod foundation;
#[cfg(test)]
mod imap;
#[cfg(test)]
mod jepsen;
#[cfg(test)]
mod licences;
#[cfg(test)]
mod outbound;
#[cfg(test)]
mod pop3;
#[cfg(test)]
mod protection;
#[cfg(test)]
mod search;
#[cfg(test)]
mod smtp;
