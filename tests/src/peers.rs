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

/// Waits until `log_path` contains `marker`, or panics with the log when `child` exits or
/// 30 s pass.
async fn wait_for_log(child: &mut Child, log_path: &std::path::Path, marker: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if log.contains(marker) {
            return;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("{what} exited with {status}:\n{log}");
        }
        assert!(Instant::now() < deadline, "{what} not ready after 30 s:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// dnsmasq answering for test zones on 127.0.0.1 (an authoritative-only server: every
/// name under `.test` it was not told about is NXDOMAIN).
pub struct Dnsmasq {
    child: Child,
    /// Its UDP/TCP port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq with extra record options such as
    /// `--mx-host=remote.test,mx.remote.test,10` and `--host-record=mx.remote.test,127.0.0.1`.
    pub async fn start(records: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("dnsmasq.log");
        loop {
            let port = free_port();
            let log = std::fs::File::create(&log_path).expect("log");
            let mut child = Command::new("dnsmasq")
                .args(["--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces", "--pid-file="])
                .args(["--listen-address=127.0.0.1", "--log-facility=-", "--local=/test/", "--user=root"])
                .arg(format!("--port={port}"))
                .args(records)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("dnsmasq (Debian dnsmasq-base; tests/run.sh installs it)");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if child.try_wait().expect("try_wait").is_some()
                && std::fs::read_to_string(&log_path).unwrap_or_default().contains("Address already in use")
            {
                continue; // the port was taken meanwhile
            }
            wait_for_log(&mut child, &log_path, "started", "dnsmasq").await;
            return Self { child, port, _dir: dir };
        }
    }

    /// The `[dns]` section of a wmail config using this server.
    pub fn wmail_config(&self) -> String {
        format!("[dns]\nservers = [\"127.0.0.1:{}\"]\n", self.port)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real clamd (Debian clamav-daemon) on 127.0.0.1 with a signature database the test
/// writes itself: `Wmail.Test.EICAR` matches the EICAR test string anywhere in a file.
pub struct Clamd {
    child: Child,
    /// Its TCP port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Clamd {
    /// The text the test signature detects (the EICAR anti-virus test file).
    pub const EICAR: &'static str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

    /// Starts clamd and waits until it answers PING.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let signature: String = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE".bytes().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.path().join("wmail-test.ndb"), format!("Wmail.Test.EICAR:0:*:{signature}\n")).expect("db");
        let port = free_port();
        let config = format!(
            "Foreground yes\nDatabaseDirectory {dir}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nLogFile {dir}/clamd.log\n\
LogVerbose yes\nBytecode no\nStreamMaxLength 64M\n",
            dir = dir.path().display()
        );
        let config_path = dir.path().join("clamd.conf");
        std::fs::write(&config_path, config).expect("clamd.conf");
        let child = Command::new("clamd")
            .arg("--config-file")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clamd (Debian clamav-daemon; tests/run.sh installs it)");
        let clamd = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let mut answer = String::new();
                if stream.write_all(b"zPING\0").is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("PONG")
                {
                    return clamd;
                }
            }
            let log = std::fs::read_to_string(clamd.dir.path().join("clamd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "clamd not ready after 60 s:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `[antivirus]` section of a wmail config using this clamd.
    pub fn wmail_config(&self) -> String {
        format!("[antivirus]\nclamd = \"127.0.0.1:{}\"\n", self.port)
    }

    /// Stops clamd (to test what a scanner failure leads to).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A receiving MTA for outbound tests: `tests/scripts/mail_sink.py` (aiosmtpd) with STARTTLS,
/// scriptable replies, and every session and message recorded in its directory.
pub struct MailSink {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it records sessions and messages.
    pub dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl MailSink {
    /// Prepares a sink (not started) on a free port.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certified = rcgen::generate_simple_self_signed(vec!["mx.sink.test".to_owned()]).expect("certificate");
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).expect("cert");
        std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).expect("key");
        Self { child: None, port: free_port(), dir: dir.path().to_owned(), _dir: dir }
    }

    /// Sets the replies (see the script's documentation).
    pub fn set_behaviour(&self, behaviour: serde_json::Value) {
        std::fs::write(self.dir.join("behaviour.json"), behaviour.to_string()).expect("behaviour");
    }

    /// Starts the sink and waits until it listens.
    pub async fn start(&mut self) {
        let python = std::env::var("WMAIL_PEERS_DIR")
            .map(|dir| format!("{dir}/venv/bin/python"))
            .unwrap_or_else(|_| panic!("WMAIL_PEERS_DIR is not set: run the tests with `bash tests/run.sh`"));
        let script = crate::crate_dir().join("scripts/mail_sink.py");
        let log_path = self.dir.join("sink.log");
        let _ = std::fs::remove_file(self.dir.join("events.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let mut child = Command::new(python)
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.dir)
            .arg(self.dir.join("cert.pem"))
            .arg(self.dir.join("key.pem"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("python for the mail sink");
        let events = self.dir.join("events.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&events).unwrap_or_default().contains("ready") {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("mail sink exited with {status}:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "mail sink not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
    }

    /// Stops the sink (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The session log so far.
    pub fn events(&self) -> String {
        std::fs::read_to_string(self.dir.join("events.log")).unwrap_or_default()
    }

    /// Every accepted message: (envelope, raw message), in arrival order.
    pub fn messages(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut out = Vec::new();
        for n in 1.. {
            let Ok(meta) = std::fs::read_to_string(self.dir.join(format!("msg-{n}.json"))) else { break };
            let body = std::fs::read(self.dir.join(format!("msg-{n}.eml"))).expect("message file");
            out.push((serde_json::from_str(&meta).expect("envelope json"), body));
        }
        out
    }

    /// Waits until at least `count` messages arrived (at most 60 s) and returns them all.
    pub async fn wait_for_messages(&self, count: usize) -> Vec<(serde_json::Value, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} messages arrived; events:\n{}",
                messages.len(),
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Default for MailSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MailSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HAProxy (Debian `haproxy`) in front of three nodes, running the shipped
/// `deploy/haproxy/haproxy.cfg` with its ports rewritten to the test's.
pub struct Haproxy {
    child: Child,
    /// Frontend ports by service name (`smtp`, `submission`, `imap`, `imaps`, `pop3`,
    /// `pop3s`, `http`).
    pub ports: std::collections::HashMap<&'static str, u16>,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy for `nodes` (node N of the deploy file is `nodes[N-1]`) and waits
    /// until a request through it reaches a healthy node.
    pub async fn start(nodes: &[&crate::harness::WmailNode; 3]) -> Self {
        // A frontend port taken between choosing and binding it: try again with others.
        for _ in 0..5 {
            let mut haproxy = Self::spawn(nodes);
            let url = format!("http://127.0.0.1:{}/readyz", haproxy.ports["http"]);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if haproxy.child.try_wait().expect("try_wait").is_some() {
                    assert!(haproxy.log().contains("cannot bind"), "HAProxy exited:\n{}", haproxy.log());
                    break;
                }
                if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                    return haproxy;
                }
                assert!(Instant::now() < deadline, "HAProxy not serving:\n{}", haproxy.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("HAProxy could not bind its ports in five attempts");
    }

    fn spawn(nodes: &[&crate::harness::WmailNode; 3]) -> Self {
        let mut config = std::fs::read_to_string(crate::crate_dir().join("../deploy/haproxy/haproxy.cfg"))
            .expect("deploy/haproxy/haproxy.cfg");
        let mut ports = std::collections::HashMap::new();
        let services = [
            ("smtp", "19025", "25"),
            ("submission", "19587", "87"),
            ("imap", "19143", "43"),
            ("imaps", "19993", "93"),
            ("pop3", "19110", "10"),
            ("pop3s", "19995", "95"),
            ("http", "19080", "80"),
        ];
        for (service, frontend, suffix) in services {
            let port = free_port();
            config = config.replace(&format!("127.0.0.1:{frontend}"), &format!("127.0.0.1:{port}"));
            ports.insert(service, port);
            for (index, node) in nodes.iter().enumerate() {
                let address = match service {
                    "smtp" => node.smtp,
                    "submission" => node.submission,
                    "imap" => node.imap,
                    "imaps" => node.imaps,
                    "pop3" => node.pop3,
                    "pop3s" => node.pop3s,
                    _ => node.http,
                };
                config = config.replace(&format!("18{}{suffix}", index + 1), &address.port().to_string());
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, &config).expect("haproxy.cfg");
        let log_path = dir.path().join("haproxy.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("haproxy (Debian haproxy; tests/run.sh installs it)");
        Self { child, ports, log_path, _dir: dir }
    }

    /// Its output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
