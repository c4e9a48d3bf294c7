//! A short run of `wmail-bench` against a real node, so the benchmark tool keeps working.

use std::process::Command;

use crate::harness::{WmailNode, wmail_bin};

#[tokio::test]
async fn bench_delivers_and_reports_each_level() {
    let mut node = WmailNode::new("");
    node.start().await;
    let bench = wmail_bin().with_file_name("wmail-bench");
    assert!(bench.exists(), "{} missing: `cargo build --workspace` builds it", bench.display());
    // Runs one mode with two levels and returns one JSON report per level.
    let run = |mode: &[&str]| -> Vec<serde_json::Value> {
        let output = Command::new(&bench)
            .args(["--server", &format!("http://{}", node.http), "--token", &node.token()])
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
    let smtp_reports = run(&["smtp", "--smtp", &node.smtp.to_string()]);
    for report in &smtp_reports {
        assert_eq!(report["failed"], 0, "{report}");
    }
    let reports: Vec<serde_json::Value> = reports.into_iter().chain(smtp_reports).collect();

    // Every acknowledged delivery is in a mailbox.
    let delivered: u64 = reports.iter().map(|r| r["delivered"].as_u64().unwrap()).sum();
    let (_, accounts) = node.api(reqwest::Method::GET, "/accounts?domain=bench.test", None).await;
    let stored: u64 = accounts.as_array().unwrap().iter().map(|a| a["message_count"].as_u64().unwrap()).sum();
    assert_eq!(stored, delivered);
}
