//! Starts real `wmail` processes on 127.0.0.1 with free ports, drives them over HTTP and
//! the CLI, and kills or stops them like an operator (or a power cut) would.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Generous deadline for a node to become ready on a loaded 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns a TCP port that was free a moment ago on 127.0.0.1.
///
/// Ports come from 20000-29999, below Linux's ephemeral range (32768+), so the outgoing
/// connections of the tests themselves never take a port a node is about to bind; a
/// process-wide counter keeps concurrent tests from picking the same one.
pub fn free_port() -> u16 {
    static NEXT: std::sync::LazyLock<std::sync::atomic::AtomicU32> =
        std::sync::LazyLock::new(|| std::sync::atomic::AtomicU32::new(std::process::id() % 10_000));
    loop {
        let port = 20_000 + (NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Path of the `wmail` binary under test: `$WMAIL_BIN`, or the one next to this test binary.
pub fn wmail_bin() -> PathBuf {
    if let Ok(path) = std::env::var("WMAIL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let path = exe.parent().and_then(Path::parent).expect("target dir").join("wmail");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p wmail` (tests/run.sh does)",
        path.display()
    );
    path
}

/// One `wmail serve` process and its files.
pub struct WmailNode {
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// The config file it runs with.
    pub config_path: PathBuf,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its SMTP (MX) address.
    pub smtp: SocketAddr,
    /// Its submission (STARTTLS) address.
    pub submission: SocketAddr,
    /// Its submissions (implicit TLS) address.
    pub submissions: SocketAddr,
    /// Its LMTP address.
    pub lmtp: SocketAddr,
    /// Its POP3 (STLS) address.
    pub pop3: SocketAddr,
    /// Its POP3S (implicit TLS) address.
    pub pop3s: SocketAddr,
    /// Its IMAP (STARTTLS) address.
    pub imap: SocketAddr,
    /// Its IMAPS (implicit TLS) address.
    pub imaps: SocketAddr,
    /// Its cluster (QUIC) address.
    pub cluster: SocketAddr,
    /// Its stdout and stderr.
    pub log_path: PathBuf,
    /// Arguments added to `wmail serve --config FILE` (say `--join`).
    pub serve_args: Vec<String>,
    /// Environment variables for `wmail serve` (`WMAIL_<SECTION>_<KEY>` config overrides).
    pub env: Vec<(String, String)>,
    extra_config: String,
    child: Option<Child>,
    http_client: reqwest::Client,
    _temp: Option<tempfile::TempDir>,
}

impl WmailNode {
    /// Prepares a node in a fresh temporary directory with `extra_config` appended to the
    /// generated config (which sets data_dir and [listen] http).
    pub fn new(extra_config: &str) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut node = Self::in_dir(temp.path(), extra_config);
        node._temp = Some(temp);
        node
    }

    /// Prepares a node whose data lives in `dir/data`.
    pub fn in_dir(dir: &Path, extra_config: &str) -> Self {
        let unset: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut node = Self {
            data_dir: dir.join("data"),
            log_path: dir.join(format!("wmail-{}.log", free_port())),
            config_path: dir.join(format!("wmail-{}.toml", free_port())),
            extra_config: extra_config.to_owned(),
            serve_args: Vec::new(),
            env: Vec::new(),
            cluster: unset,
            http: unset,
            smtp: unset,
            submission: unset,
            submissions: unset,
            pop3: unset,
            pop3s: unset,
            imap: unset,
            imaps: unset,
            lmtp: unset,
            child: None,
            http_client: reqwest::Client::new(),
            _temp: None,
        };
        node.write_config();
        node
    }

    /// Replaces the extra config (TOML before `[server]`) for the next start; fresh ports.
    pub fn reconfigure(&mut self, extra_config: &str) {
        self.extra_config = extra_config.to_owned();
        self.write_config();
    }

    /// Picks fresh ports and writes the config file.
    fn write_config(&mut self) {
        let local = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().expect("addr") };
        (self.http, self.smtp, self.submission, self.submissions) = (local(), local(), local(), local());
        (self.pop3, self.pop3s, self.lmtp) = (local(), local(), local());
        (self.imap, self.imaps, self.cluster) = (local(), local(), local());
        let config = format!(
            "version = 1\n{extra}\n[server]\ndata_dir = {data:?}\nhostname = \"mx.test\"\n\n[listen]\nhttp = [\"{http}\"]\nsmtp = [\"{smtp}\"]\nsubmission = [\"{submission}\"]\nsubmissions = [\"{submissions}\"]\npop3 = [\"{pop3}\"]\npop3s = [\"{pop3s}\"]\nimap = [\"{imap}\"]\nimaps = [\"{imaps}\"]\nlmtp = [\"{lmtp}\"]\n\n[cluster]\nlisten = \"{cluster}\"\n",
            extra = self.extra_config,
            data = self.data_dir.display().to_string(),
            http = self.http,
            smtp = self.smtp,
            submission = self.submission,
            submissions = self.submissions,
            pop3 = self.pop3,
            pop3s = self.pop3s,
            imap = self.imap,
            imaps = self.imaps,
            lmtp = self.lmtp,
            cluster = self.cluster,
        );
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// Spawns `wmail serve` without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let child = Command::new(wmail_bin())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .args(&self.serve_args)
            // Dates a node shows in its local zone: the same everywhere unless a test asks.
            .env("TZ", "UTC")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .env("WMAIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn wmail");
        self.child = Some(child);
    }

    /// Spawns the node and waits until `/readyz` answers 200.
    ///
    /// A port taken by someone else between choosing and binding it (another test's
    /// client, say) is not a failure of the node: it retries with fresh ports.
    pub async fn start(&mut self) {
        for _ in 0..5 {
            let log_before = self.log().len();
            self.spawn();
            match self.ready_or_exit().await {
                Ok(()) => return,
                Err(status) if self.log()[log_before..].contains("Address already in use") => {
                    eprintln!("wmail exited with {status}: a port was taken; retrying with fresh ports");
                    self.write_config();
                }
                Err(status) => panic!("wmail exited with {status} before becoming ready:\n{}", self.log()),
            }
        }
        panic!("wmail could not bind its ports in five attempts:\n{}", self.log());
    }

    /// Waits for `/readyz`; returns the exit status if the process ends first.
    async fn ready_or_exit(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().expect("try_wait")) {
                self.child = None;
                return Err(status);
            }
            let url = format!("http://{}/readyz", self.http);
            if let Ok(response) = self.http_client.get(&url).send().await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "wmail not ready after {READY_TIMEOUT:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the node's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process with SIGKILL and reaps it: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    /// Sends a signal (`"TERM"`, `"STOP"`, ...) to the running process.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("node running");
        let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (up to 60 s) for the process to exit by itself and returns its status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "wmail did not exit:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit().await
    }

    /// Returns the admin token the node wrote on first start.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token")).expect("admin token file").trim().to_owned()
    }

    /// Calls the admin API with the node's token; returns the status and the JSON body
    /// (`Null` when empty, a string when not JSON).
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.api_with_token(method, path, body.map(|b| b.to_string()), Some(&self.token())).await
    }

    /// Calls the admin API with a raw body and an explicit token (or none).
    pub async fn api_with_token(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.http_client.request(method, format!("http://{}/api/v1{path}", self.http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.expect("admin API reachable");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    /// Delivers raw message bytes to `address` through the API; returns the status and JSON.
    pub async fn deliver(&self, address: &str, message: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .http_client
            .post(format!("http://{}/api/v1/accounts/{address}/messages", self.http))
            .bearer_auth(self.token())
            .body(message)
            .send()
            .await
            .expect("admin API reachable");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Fetches a raw message body.
    pub async fn read_message(&self, address: &str, uid: u64) -> Vec<u8> {
        let response = self
            .http_client
            .get(format!("http://{}/api/v1/accounts/{address}/messages/{uid}/raw", self.http))
            .bearer_auth(self.token())
            .send()
            .await
            .expect("admin API reachable");
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.expect("body").to_vec()
    }

    /// GETs a plain path (not under /api/v1) and returns status and text.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self.http_client.get(format!("http://{}{path}", self.http)).send().await.expect("reachable");
        (response.status(), response.text().await.expect("body"))
    }

    /// The value of one series in `/metrics` (`name{labels}` exactly as rendered), 0 when
    /// the node has not rendered it yet.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, metrics) = self.get("/metrics").await;
        metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    }

    /// Runs the `wmail` CLI against this node (`--server`, `--data-dir` for the token).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run_cli(
            &[
                &["--server", &format!("http://{}", self.http), "--data-dir", &self.data_dir.display().to_string()],
                args,
            ]
            .concat(),
            stdin,
        )
    }
}

/// Python code that imports the client libraries and defines the node's ports (`SMTP`,
/// `SUBMISSION`, `SUBMISSIONS`, `POP3`, `POP3S`, `IMAP`, `IMAPS`) and `ctx`, a TLS context
/// that accepts the node's self-signed certificate.
pub fn python_prelude(node: &WmailNode) -> String {
    format!(
        "import smtplib, poplib, imaplib, ssl, socket, sys\nSMTP = {}\nSUBMISSION = {}\nSUBMISSIONS = {}\nPOP3 = {}\nPOP3S = {}\nIMAP = {}\nIMAPS = {}\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\n",
        node.smtp.port(),
        node.submission.port(),
        node.submissions.port(),
        node.pop3.port(),
        node.pop3s.port(),
        node.imap.port(),
        node.imaps.port()
    )
}

/// Runs a Python script (after [`python_prelude`]) and returns its output; panics with
/// the output when it fails.
pub fn python(node: &WmailNode, script: &str) -> String {
    let output =
        Command::new("python3").arg("-c").arg(format!("{}{script}", python_prelude(node))).output().expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "python failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Asserts that a CLI run succeeded and returns its standard output.
pub fn succeeded(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Logs in over POP3S with `user` and `password` and returns the message count the
/// server reports (STAT), as poplib sees it.
pub fn pop3_message_count(node: &WmailNode, user: &str, password: &str) -> String {
    let script = format!(
        "p = poplib.POP3_SSL('127.0.0.1', POP3S, context=ctx)\np.user({user:?})\np.pass_({password:?})\nprint(p.stat()[0])\np.quit()\n"
    );
    python(node, &script).trim().to_owned()
}

/// Runs the `wmail` binary with `args`, feeding `stdin`.
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(wmail_bin())
        .args(args)
        .env_remove("WMAIL_TOKEN")
        .env_remove("WMAIL_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wmail cli");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("cli output")
}

impl Drop for WmailNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Python script driven step by step: it prints a line at each checkpoint and waits for
/// a line on stdin before going on, so the test can act in between.
pub struct SteppedScript {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl SteppedScript {
    /// Starts `body` after [`python_prelude`].
    pub fn start(node: &WmailNode, body: &str) -> Self {
        let script = format!("{}{body}", python_prelude(node));
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, stdout }
    }

    /// Reads the next checkpoint line ("" when the script ended, its error on stderr).
    pub fn checkpoint(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("script output");
        line.trim().to_owned()
    }

    /// Lets the script go on past its `sys.stdin.readline()`.
    pub fn resume(&mut self) {
        use std::io::Write;
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"\n");
            let _ = stdin.flush();
        }
    }

    /// Waits for the script to end; returns whether it succeeded.
    pub fn finish(mut self) -> bool {
        self.resume();
        self.child.wait().is_ok_and(|status| status.success())
    }
}
