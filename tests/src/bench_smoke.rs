//! A short run of `wmail-bench` against a real node, so the benchmark tool keeps working.

use std::process::Command;

use crate::harness::{WmailNode, wmail_bin};

/// `wmail-bench` pointed at `node`'s admin API (which every subcommand's setup uses).
fn bench(node: &WmailNode) -> Command {
    let program = wmail_bin().with_file_name("wmail-bench");
    assert!(program.exists(), "{} missing: `cargo build --workspace` builds it", program.display());
    let mut command = Command::new(program);
    command.args(["--server", &format!("http://{}", node.http), "--token", &node.token()]);
    command
}

#[tokio::test]
async fn bench_delivers_and_reports_each_level() {
    // A benchmark measures the server, not the per-user sending limits.
    let mut node = WmailNode::new("[smtp]\nmax_recipients_per_hour = 0\n");
    node.start().await;
    // Runs one mode with two levels and returns one JSON report per level.
    let run = |mode: &[&str]| -> Vec<serde_json::Value> {
        let output = bench(&node)
            .args(mode)
            .args(["--concurrency", "1,4", "--seconds", "5", "--requests", "24", "--accounts", "3", "--json"])
            .output()
            .expect("run wmail-bench");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let reports: Vec<serde_json::Value> =
            String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(reports.len(), 2);
        reports
    };
    let reports = run(&["deliver"]);
    for report in &reports {
        assert_eq!(report["failed"], 0, "{report}");
        assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
        assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    }
    // The SMTP mode too, through real sessions.
    let mut smtp_reports = run(&["smtp", "--smtp", &node.smtp.to_string()]);
    // And as a submission client: STARTTLS, then AUTH.
    smtp_reports.extend(run(&["smtp", "--smtp", &node.submission.to_string(), "--starttls", "--auth"]));
    for report in &smtp_reports {
        assert_eq!(report["failed"], 0, "{report}");
    }
    // The realistic size mix, with bytes and percentiles in the report.
    let output = bench(&node)
        .args(["smtp", "--smtp", &node.smtp.to_string(), "--mix", "--accounts", "3"])
        .args(["--concurrency", "2", "--requests", "12", "--json"])
        .output()
        .expect("run wmail-bench");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mix: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!((mix["failed"].as_u64(), mix["delivered"].as_u64()), (Some(0), Some(12)), "{mix}");
    assert!(mix["bytes"].as_u64().unwrap() >= 12 * 4_096, "{mix}");
    assert!(mix["p90_ms"].as_f64().unwrap() <= mix["p99_ms"].as_f64().unwrap(), "{mix}");
    smtp_reports.push(mix);
    let reports: Vec<serde_json::Value> = reports.into_iter().chain(smtp_reports).collect();

    // Every acknowledged delivery is in a mailbox.
    let delivered: u64 = reports.iter().map(|r| r["delivered"].as_u64().unwrap()).sum();
    let (_, accounts) = node.api(reqwest::Method::GET, "/accounts?domain=bench.test", None).await;
    let stored: u64 = accounts.as_array().unwrap().iter().map(|a| a["message_count"].as_u64().unwrap()).sum();
    assert_eq!(stored, delivered);

    // Refusals are counted by reply code and the session goes on: user3 does not exist, so
    // every fourth RCPT gets 550 and the pipelined MAIL/RCPT/DATA is reset. A first address
    // where nothing listens sends its session on to the node (the cluster mode's rotation).
    let output = bench(&node)
        .args(["smtp", "--no-setup", "--smtp", &format!("127.0.0.1:1,{}", node.smtp)])
        .args(["--concurrency", "2", "--requests", "40", "--accounts", "4", "--json"])
        .output()
        .expect("run wmail-bench");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["delivered"], 30, "{report}");
    assert_eq!(report["errors"], serde_json::json!({ "550": 10 }), "{report}");
    let (_, accounts) = node.api(reqwest::Method::GET, "/accounts?domain=bench.test", None).await;
    let stored: u64 = accounts.as_array().unwrap().iter().map(|a| a["message_count"].as_u64().unwrap()).sum();
    assert_eq!(stored, delivered + 30);
}

/// `outbound`: messages for three remote domains leave through the queue to a sink.
#[tokio::test]
async fn bench_measures_outbound_delivery() {
    let mut sink = crate::peers::MailSink::new();
    sink.start().await;
    let mut node = WmailNode::new(&format!("[delivery]\nsmarthost = \"127.0.0.1:{}\"\n", sink.port));
    node.start().await;
    let output = bench(&node)
        .args(["outbound", "--submission", &node.submission.to_string()])
        .args(["--destinations", "3", "--count", "30", "--concurrency", "2", "--timeout", "60", "--json"])
        .output()
        .expect("run wmail-bench");
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stderr), node.log());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["messages"], 30, "{report}");
    assert!(report["delivered_per_second"].as_f64().unwrap() > 0.0, "{report}");
    let received = sink.wait_for_messages(30).await;
    let domains: std::collections::HashSet<String> = received
        .iter()
        .map(|(envelope, _)| envelope["to"][0].as_str().unwrap().rsplit_once('@').unwrap().1.to_owned())
        .collect();
    assert_eq!(domains.len(), 3, "{domains:?}");
}

/// `pop3`: download-and-delete cycles over POP3S empty every mailbox, filled through the
/// admin API or (as for another server) by IMAP APPEND.
#[tokio::test]
async fn bench_runs_pop3_cycles() {
    let mut node = WmailNode::new("[imap]\nallow_plaintext_auth = true\n");
    node.start().await;
    let output = bench(&node)
        .args(["pop3", "--pop3s", &node.pop3s.to_string()])
        .args(["--users", "4", "--messages", "5", "--concurrency", "2", "--json"])
        .output()
        .expect("run wmail-bench");
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stderr), node.log());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!((report["sessions"].as_u64(), report["messages"].as_u64()), (Some(4), Some(20)), "{report}");
    assert_eq!((report["errors"].as_u64(), report["left_in_mailboxes"].as_u64()), (Some(0), Some(0)), "{report}");
    let (_, accounts) = node.api(reqwest::Method::GET, "/accounts?domain=bench.test", None).await;
    let stored: u64 = accounts.as_array().unwrap().iter().map(|a| a["message_count"].as_u64().unwrap()).sum();
    assert_eq!(stored, 0, "QUIT applied every DELE");

    let output = bench(&node)
        .args(["pop3", "--pop3s", &node.pop3s.to_string(), "--fill-imap", &node.imap.to_string()])
        .args(["--users", "2", "--messages", "3", "--json"])
        .output()
        .expect("run wmail-bench");
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stderr), node.log());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!((report["messages"].as_u64(), report["left_in_mailboxes"].as_u64()), (Some(6), Some(0)), "{report}");
}

/// The IMAP modes against a node that allows LOGIN without TLS: `fill`, a short mixed
/// workload with its answers checked, and IDLE connections woken by a delivery.
#[tokio::test]
async fn bench_drives_imap() {
    let mut node = WmailNode::new("[imap]\nallow_plaintext_auth = true\n");
    node.start().await;
    let imap = node.imap.to_string();
    // Runs one mode (each well under 15 s) and returns its JSON report.
    let run = |mode: &[&str]| -> serde_json::Value {
        let started = std::time::Instant::now();
        let output = bench(&node).args(mode).args(["--imap", &imap, "--json"]).output().expect("run wmail-bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{mode:?}: {stderr}");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{mode:?} took {:?}", started.elapsed());
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{mode:?}: {stderr}"))
    };

    let fill = run(&["fill", "--user", "filled@bench.test", "--count", "50", "--concurrency", "4", "--fetch-all"]);
    assert_eq!((fill["appended"].as_u64(), fill["refused"].as_u64()), (Some(50), Some(0)), "{fill}");
    assert!(fill["messages_per_second"].as_f64().unwrap() > 0.0, "{fill}");
    assert_eq!(fill["fetch_all_messages"], 50, "{fill}");
    let (_, account) = node.api(reqwest::Method::GET, "/accounts/filled@bench.test", None).await;
    assert_eq!(account["message_count"], 50, "{account}");

    let search = run(&["search", "--user", "filled@bench.test", "--queries", "10"]);
    assert_eq!(search["messages"], 50, "{search}");
    assert!(search["index_bytes"].as_u64().unwrap() > 0, "{search}");
    assert!(search["imap_search_p50_ms"].as_f64().unwrap() > 0.0, "{search}");
    assert!(search["ranked_p50_ms"].as_f64().unwrap() > 0.0, "{search}");

    // `scale` at two small checkpoints, its results written with --out as JSON and Markdown.
    let out = tempfile::tempdir().expect("temporary directory");
    let output = bench(&node)
        .args(["--out", &out.path().join("scale").display().to_string()])
        .args(["scale", "--imap", &imap, "--checkpoints", "20,60", "--samples", "5", "--concurrency", "2"])
        .output()
        .expect("run wmail-bench");
    assert!(output.status.success(), "scale: {}", String::from_utf8_lossy(&output.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("scale.json")).expect("scale.json")).unwrap();
    let results = results.as_array().expect("an array of reports");
    let messages: Vec<u64> = results.iter().map(|report| report["messages"].as_u64().unwrap()).collect();
    assert_eq!(messages, [25, 65], "{results:?}");
    assert!(results.iter().all(|report| report["workload"] == "scale" && report["append_p50_ms"].as_f64() > Some(0.0)));
    let summary = std::fs::read_to_string(out.path().join("scale.md")).expect("scale.md");
    assert!(summary.contains("## scale") && summary.contains("| 65 |"), "{summary}");
    assert!(!summary.contains(&node.token()), "the token stays out of the summary");

    let mixed = run(&["imap", "--users", "2", "--clients", "2", "--seconds", "2", "--check"]);
    assert_eq!((mixed["errors"].as_u64(), mixed["inconsistent"].as_u64()), (Some(0), Some(0)), "{mixed}");
    for command in ["SELECT", "FETCH 1:* (UID FLAGS)", "UID FETCH BODY[]", "STORE +\\Seen", "APPEND", "EXPUNGE"] {
        assert!(mixed["commands"][command]["ops"].as_u64().unwrap() > 0, "{command}: {mixed}");
    }

    let pid = server_pid(&node).to_string();
    let idle = run(&["idle", "--connections", "20", "--pid", &pid]);
    assert_eq!((idle["idling"].as_u64(), idle["woken"].as_u64()), (Some(20), Some(20)), "{idle}");
    assert!(idle["memory_after_kb"].as_u64().unwrap() > 0, "{idle}");
}

/// `tools/compare --smoke`: wmail, Postfix + Dovecot and smtp-sink come up, every workload
/// runs against both sides, and the table has every row with numbers on both sides.
/// Postfix and Dovecot start as root: elsewhere the test says so and does nothing.
#[test]
fn compare_runs_every_workload_against_postfix_and_dovecot() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: tools/compare runs Postfix and Dovecot, which needs root");
        return;
    }
    let installed =
        |program: &str| ["/usr/sbin", "/usr/bin"].iter().any(|dir| std::path::Path::new(dir).join(program).exists());
    if !installed("postfix") || !installed("dovecot") {
        eprintln!("skipped: Postfix and Dovecot are not installed (deps.sh leaves them out beside another MTA)");
        return;
    }
    let out = tempfile::tempdir().expect("temporary directory");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/compare");
    let bin_dir = wmail_bin().parent().expect("the binaries' directory").to_owned();
    let output = Command::new("bash")
        .arg(&script)
        .args(["--smoke", "--out", &out.path().display().to_string(), "--bin-dir", &bin_dir.display().to_string()])
        .output()
        .expect("run tools/compare");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tools/compare --smoke failed:\n{stderr}");
    let table = std::fs::read_to_string(out.path().join("compare.md")).expect("compare.md");
    let rows: Vec<&str> = table
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| workload") && !line.starts_with("| ---"))
        .collect();
    let names: Vec<&str> = rows.iter().map(|row| row.split(" | ").next().unwrap().trim_start_matches("| ")).collect();
    assert_eq!(
        names,
        [
            "smtp",
            "smtp into the mailbox",
            "smtp-mix",
            "smtp-mix into the mailbox",
            "imap",
            "fill",
            "pop3",
            "idle",
            "idle wake-up"
        ],
        "{table}"
    );
    for row in &rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        // workload, measure, wmail, peer, ratio: both sides measured, a ratio like `2.4x`.
        assert!(cells[4].ends_with('x') || row.starts_with("| idle |"), "{row}\n{table}");
        assert!(cells[2] != "-" && cells[3] != "-", "{row}\n{table}");
    }
    let reports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("compare.json")).expect("compare.json")).unwrap();
    let servers: std::collections::BTreeSet<&str> =
        reports.as_array().unwrap().iter().map(|line| line["server"].as_str().unwrap()).collect();
    assert_eq!(servers, ["peer", "postfix-drain", "sink", "wmail"].into_iter().collect(), "{reports}");
}

/// The process id of the node's `wmail serve`, found by its config file in /proc.
fn server_pid(node: &WmailNode) -> u32 {
    let config = node.config_path.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).split('\0').any(|argument| argument == config)
        })
        .expect("the node's process")
}
