//! The system under test: a SeaweedFS S3 server on the bridge and `wmail serve` processes,
//! one per namespace, that the nemeses kill, pause, skew, starve of disk and re-join.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::net::{Network, run};

/// Ports every node listens on (each node has its own address, so they never clash).
pub const SMTP_PORT: u16 = 25;
/// IMAP (plaintext LOGIN allowed: the harness is the only client).
pub const IMAP_PORT: u16 = 143;
/// HTTP (admin API, `/readyz`).
pub const HTTP_PORT: u16 = 8080;
/// QUIC cluster traffic.
pub const CLUSTER_PORT: u16 = 7443;
/// S3 gateway of SeaweedFS (in its own namespace, so its default ports are free).
const S3_PORT: u16 = 8333;
/// SeaweedFS's filer, used to check that it stores files.
const FILER_PORT: u16 = 8888;

/// libfaketime (Debian package `libfaketime`), preloaded into nodes when clock skew runs.
pub const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A `weed mini` process (master, volume, filer, S3 gateway) in its own namespace.
#[derive(Debug)]
pub struct SeaweedFs {
    child: Child,
    endpoint: String,
}

/// SeaweedFS's components also talk over Unix sockets named after their gRPC ports, in
/// /tmp, which every network namespace shares: two runs at once (the test suite runs two)
/// on the default ports would take each other's sockets, and the first to exit would
/// remove the other's, cutting its S3 server off from its master. Each run gets gRPC ports
/// of its own (the namespace keeps the TCP ports apart anyway) and sockets in its directory.
fn local_socket_args(dir: &Path) -> Vec<String> {
    let taken =
        |base: u32| (1..=4).any(|n| Path::new(&format!("/tmp/seaweedfs-master-grpc-{}.sock", base + n)).exists());
    let mut base = 20_000 + (std::process::id() % 2_000) * 10;
    while taken(base) {
        base = 20_000 + (base - 20_000 + 10) % 20_000;
    }
    vec![
        format!("-master.port.grpc={}", base + 1),
        format!("-volume.port.grpc={}", base + 2),
        format!("-filer.port.grpc={}", base + 3),
        format!("-s3.port.grpc={}", base + 4),
        // The admin server's gRPC port is its HTTP port + 10,000 (its workers assume so).
        format!("-admin.port={}", base + 5),
        format!("-filer.localSocket={}", dir.join("filer.sock").display()),
        format!("-s3.localSocket={}", dir.join("s3.sock").display()),
    ]
}
impl SeaweedFs {
    /// Starts SeaweedFS from `weed` with its data in `dir` and waits until it stores files.
    /// Under load its filer sometimes fails its start-up health check and never serves:
    /// such a start is abandoned and retried from scratch (three attempts).
    pub async fn start(weed: &Path, dir: &Path, network: &Network) -> anyhow::Result<Self> {
        for attempt in 1..=3 {
            let mut peer = Self::spawn(weed, dir, network)?;
            if peer.wait_ready(network.s3_ip(), Duration::from_secs(30)).await? {
                return Ok(peer);
            }
            eprintln!(
                "wmail-jepsen: SeaweedFS did not store a file in 30 s (attempt {attempt} of 3); starting it again"
            );
        }
        bail!("SeaweedFS did not store a file in three attempts; see {}", dir.join("weed.log").display())
    }

    /// Starts `weed mini` in the S3 namespace on an empty data directory.
    fn spawn(weed: &Path, dir: &Path, network: &Network) -> anyhow::Result<Self> {
        let ip = network.s3_ip();
        if dir.join("data").exists() {
            std::fs::remove_dir_all(dir.join("data"))?;
        }
        std::fs::create_dir_all(dir.join("data"))?;
        let identities = r#"{"identities":[{"name":"wmail","credentials":[{"accessKey":"jepsen","secretKey":"jepsen-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}"#;
        std::fs::write(dir.join("s3.json"), identities)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("weed.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", network.s3_namespace()])
            .arg(weed)
            .current_dir(dir)
            .args(["mini", "-dir=data", "-s3.config=s3.json", "-bucket=wmail", "-admin.ui=false", "-webdav=false"])
            .args(["-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-ip={ip}"))
            .arg(format!("-ip.bind={ip}"))
            .arg(format!("-s3.port={S3_PORT}"))
            .args(local_socket_args(dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("cannot start SeaweedFS ({}): install it with `bash tools/dev/deps.sh test`", weed.display())
            })?;
        Ok(Self { child, endpoint: format!("http://{ip}:{S3_PORT}") })
    }

    /// Waits until a file is stored and read back through the filer (the path the S3
    /// gateway takes; the gateway answers before volumes are writable) and the gateway
    /// answers; false after `timeout`.
    async fn wait_ready(&mut self, ip: std::net::Ipv4Addr, timeout: Duration) -> anyhow::Result<bool> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let probe = format!("http://{ip}:{FILER_PORT}/jepsen/ready");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("SeaweedFS exited with {status}");
            }
            let stored = client.put(&probe).body("ready").send().await.is_ok_and(|r| r.status().is_success());
            if stored
                && let Ok(response) = client.get(&probe).send().await
                && response.text().await.is_ok_and(|body| body == "ready")
                && client.get(format!("{}/wmail", self.endpoint)).send().await.is_ok()
            {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(false)
    }

    /// The `[blob]` section of a node's config.
    pub fn blob_config(&self) -> String {
        format!(
            "[blob]\nbackend = \"s3\"\nbucket = \"wmail\"\nendpoint = {:?}\nregion = \"us-east-1\"\naccess_key_id = \"jepsen\"\nsecret_access_key = \"jepsen-secret\"\n",
            self.endpoint
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One wmail node: its files, its process and what the nemeses did to it.
#[derive(Debug)]
pub struct Node {
    /// 1-based index (also the last octet of its address minus 10).
    pub index: usize,
    /// Its address on the test network.
    pub ip: std::net::Ipv4Addr,
    namespace: String,
    dir: PathBuf,
    wmail: PathBuf,
    blob_config: String,
    join: Option<(String, String)>,
    faketime: bool,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// SIGSTOPped now.
    pub paused: bool,
}

impl Node {
    /// A node in `dir` (data, config, log), not started.
    pub fn new(
        index: usize,
        network: &Network,
        dir: PathBuf,
        wmail: PathBuf,
        seaweed: &SeaweedFs,
        faketime: bool,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let node = Self {
            index,
            ip: network.node_ip(index),
            namespace: network.namespace(index).to_owned(),
            dir,
            wmail,
            blob_config: seaweed.blob_config(),
            join: None,
            faketime,
            env,
            child: None,
            paused: false,
        };
        node.write_config()?;
        node.set_skew(0)?;
        Ok(node)
    }

    /// The node's data directory (on its own small tmpfs when the disk nemesis runs).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("disk/data")
    }

    /// Mounts a tmpfs of `megabytes` as the node's data disk (before the first start).
    pub fn mount_disk(&self, megabytes: u64) -> anyhow::Result<()> {
        let disk = self.dir.join("disk");
        std::fs::create_dir_all(&disk)?;
        let disk = disk.to_string_lossy().into_owned();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={megabytes}m"), &crate::net::disk_source(), &disk])
            .context("mounting a tmpfs for the disk nemesis needs root")?;
        Ok(())
    }

    /// Fills the data disk until only `leave` bytes are free; returns how many were free.
    pub fn fill_disk(&self, leave: u64) -> anyhow::Result<u64> {
        let disk = self.dir.join("disk");
        let free: u64 = run("df", &["-B1", "--output=avail", &disk.to_string_lossy()])?
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .context("df printed no free space")?;
        let filler = disk.join("filler");
        let size = free.saturating_sub(leave).max(1);
        run("fallocate", &["-l", &size.to_string(), &filler.to_string_lossy()])?;
        Ok(free)
    }

    /// Removes what [`Node::fill_disk`] wrote.
    pub fn free_disk(&self) -> anyhow::Result<()> {
        let filler = self.dir.join("disk/filler");
        if filler.exists() {
            std::fs::remove_file(filler)?;
        }
        Ok(())
    }

    /// libfaketime's timestamp file for this node.
    pub fn skew_file(&self) -> PathBuf {
        self.dir.join("faketime")
    }

    /// Its log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("wmail.log")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let ip = self.ip;
        let config = format!(
            r#"version = 1
[server]
data_dir = {data:?}
hostname = "n{index}.jepsen.test"

[listen]
http = ["{ip}:{HTTP_PORT}"]
smtp = ["{ip}:{SMTP_PORT}"]
imap = ["{ip}:{IMAP_PORT}"]

[imap]
# The harness logs in without TLS.
allow_plaintext_auth = true

[security]
# Clients time out logins on nodes that cannot reach a majority; counted as failures, they
# would lock the workload's accounts out for days.
max_login_failures_per_address = 1000000
max_login_failures_per_account = 1000000

[cluster]
listen = "{ip}:{CLUSTER_PORT}"

{blob}"#,
            data = self.data_dir().display().to_string(),
            index = self.index,
            blob = self.blob_config,
        );
        std::fs::write(self.dir.join("wmail.toml"), config)?;
        Ok(())
    }

    /// Joins the cluster at `member` with `token` on its first start.
    pub fn set_join(&mut self, member: std::net::Ipv4Addr, token: String) {
        self.join = Some((format!("{member}:{CLUSTER_PORT}"), token));
    }

    /// Sets the node's wall clock to run `seconds` ahead (negative: behind) of the real one,
    /// through libfaketime's timestamp file, which the node re-reads on every clock call.
    pub fn set_skew(&self, seconds: i64) -> anyhow::Result<()> {
        write_skew(&self.skew_file(), seconds)
    }

    /// Starts `wmail serve` inside the node's namespace (no wait).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace]).arg(&self.wmail).arg("serve").arg("--config");
        command.arg(self.dir.join("wmail.toml"));
        if let Some((member, token)) = &self.join {
            command.args(["--join", member, "--join-token", token]);
        }
        command.env("WMAIL_LOG", "info").envs(self.env.iter().map(|(key, value)| (key, value)));
        if self.faketime {
            command.env("LD_PRELOAD", FAKETIME_LIBRARY);
            command.env("FAKETIME_TIMESTAMP_FILE", self.skew_file());
            command.env("FAKETIME_NO_CACHE", "1");
            // Timers and Raft's election timeouts use the monotonic clock: only the wall
            // clock (dates, certificate validity, leases written as timestamps) is skewed.
            command.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Starts the node and waits until `/readyz` says 200 (or the process exits).
    pub async fn start(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready(timeout).await
    }

    /// Waits until `/readyz` says 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("n{} exited with {status}; see {}", self.index, self.log_path().display());
            }
            if let Ok(response) = client.get(format!("http://{}:{HTTP_PORT}/readyz", self.ip)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("n{} not ready after {timeout:?}; see {}", self.index, self.log_path().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process runs (paused or not).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// If the process ended by itself (a crash), reaps it and returns how it ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&mut self, stop: bool) -> anyhow::Result<()> {
        let Some(child) = &self.child else { bail!("n{} is not running", self.index) };
        run("kill", &[if stop { "-STOP" } else { "-CONT" }, &child.id().to_string()])?;
        self.paused = stop;
        Ok(())
    }

    /// Kills the node and deletes its data (a new machine in its place).
    pub fn wipe(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        }
        Ok(())
    }

    /// The admin API base URL.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}:{HTTP_PORT}/api/v1{path}", self.ip)
    }

    /// The admin token this node wrote on its first start.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.data_dir().join("admin-token");
        Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.paused {
            let _ = self.pause(false);
        }
        self.kill9();
        let disk = self.dir.join("disk");
        if run("mountpoint", &["-q", &disk.to_string_lossy()]).is_ok() {
            let _ = run("umount", &[&disk.to_string_lossy()]);
        }
    }
}

/// Replaces a libfaketime timestamp file whole (a rename), so a node re-reading it on
/// every clock call never sees it half-written.
pub fn write_skew(file: &Path, seconds: i64) -> anyhow::Result<()> {
    let staged = file.with_extension("next");
    std::fs::write(&staged, format!("{seconds:+}\n"))?;
    std::fs::rename(&staged, file)?;
    Ok(())
}

/// Calls the admin API: the status and the JSON body (`Null` when empty).
pub async fn api(
    client: &reqwest::Client,
    node: &Node,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = client.request(method, node.api_url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Issues a join token on `node` (a voter token unless `learner`).
pub async fn join_token(client: &reqwest::Client, node: &Node, token: &str, learner: bool) -> anyhow::Result<String> {
    let (status, body) =
        api(client, node, token, reqwest::Method::POST, "/cluster/tokens", Some(json!({ "learner": learner }))).await?;
    if status != 201 {
        bail!("join token from n{}: {status} {body}", node.index);
    }
    Ok(body["token"].as_str().context("token")?.to_owned())
}
