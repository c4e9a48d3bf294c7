//! Real peer servers started for tests: SeaweedFS as the S3-compatible object store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wmail_storage::{BlobBackend, BlobStore, S3Config};

use crate::harness::free_port;

/// A `weed mini` process (master, volume, filer and S3 gateway) on 127.0.0.1.
pub struct SeaweedFs {
    child: Child,
    /// S3 settings that reach it.
    pub config: S3Config,
    /// Where its log goes.
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Access key of the test identity.
const ACCESS_KEY: &str = "wmail-test";
/// Secret key of the test identity.
const SECRET_KEY: &str = "wmail-test-secret";

/// A port `p` with `p + 10000` (SeaweedFS's gRPC port) free too.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl SeaweedFs {
    /// Starts SeaweedFS (the `weed` binary from `$WMAIL_WEED`, installed by tests/run.sh)
    /// and waits until its S3 gateway stores and reads an object.
    pub async fn start() -> Self {
        let weed = std::env::var("WMAIL_WEED").unwrap_or_else(|_| {
            panic!("WMAIL_WEED is not set: run the tests with `bash tests/run.sh`, which installs SeaweedFS")
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let identities = format!(
            r#"{{"identities":[{{"name":"wmail","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(dir.path().join("s3.json"), identities).expect("s3.json");
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        let s3_port = free_port_pair();
        let log_path = dir.path().join("weed.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(weed)
            .current_dir(dir.path())
            .args([
                "mini",
                "-dir=data",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                // Never report telemetry outside the machine.
                "-master.telemetry=false",
                "-master.telemetry.url=http://127.0.0.1:9/",
                "-s3.config=s3.json",
                "-bucket=wmail",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-s3.port={s3_port}"))
            .arg(format!("-master.port={}", free_port_pair()))
            .arg(format!("-volume.port={}", free_port_pair()))
            .arg(format!("-filer.port={}", free_port_pair()))
            .arg(format!("-admin.port={}", free_port_pair()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn weed");
        let config = S3Config {
            bucket: "wmail".into(),
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
        };
        let mut peer = Self { child, config, log_path, _dir: dir };
        peer.wait_ready().await;
        peer
    }

    async fn wait_ready(&mut self) {
        let store = self.blob_store();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("weed exited with {status}:\n{}", std::fs::read_to_string(&self.log_path).unwrap_or_default());
            }
            if let Ok(stored) = store.put_bytes(Bytes::from_static(b"ready?")).await
                && store.read_all(&stored.id).await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS S3 not ready:\n{}",
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A blob store on this server.
    pub fn blob_store(&self) -> BlobStore {
        BlobStore::open(&BlobBackend::S3(self.config.clone())).expect("open S3 blob store")
    }

    /// The `[blob]` section of a wmail config using this server.
    pub fn wmail_config(&self) -> String {
        format!(
            "[blob]\nbackend = \"s3\"\nbucket = {:?}\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
            self.config.bucket,
            self.config.endpoint,
            self.config.region,
            self.config.access_key_id,
            self.config.secret_access_key
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
