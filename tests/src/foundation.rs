//! The foundation issue's behaviour: durability across `kill -9`, restarts, bad input,
//! the data-directory lock, the CLI, config errors, health and metrics.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{WmailNode, run_cli, succeeded};

async fn create(node: &WmailNode, path: &str, body: Value) -> Value {
    let (status, reply) = node.api(Method::POST, path, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    reply
}

async fn account(node: &WmailNode, address: &str) -> Value {
    create(node, "/accounts", json!({ "address": address, "password": "correct horse battery" })).await
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: test {n}\r\n\r\nbody {n}\r\n{}\r\n",
        "x".repeat(n % 5000)
    )
    .into_bytes()
}

#[tokio::test]
async fn acknowledged_changes_survive_kill_9() {
    let mut node = WmailNode::new("");
    node.start().await;
    create(&node, "/domains", json!({ "name": "example.com" })).await;
    account(&node, "alice@example.com").await;
    // Kill right after each acknowledged change, several rounds.
    for round in 0..4 {
        let address = format!("user{round}@example.com");
        account(&node, &address).await;
        let (status, delivered) = node.deliver("alice@example.com", message(round)).await;
        assert_eq!(status, StatusCode::CREATED, "{delivered}");
        assert_eq!(delivered["uid"], json!(round + 1));
        node.kill9();
        node.start().await;
        let (status, _) = node.api(Method::GET, &format!("/accounts/{address}"), None).await;
        assert_eq!(status, StatusCode::OK, "account {address} lost after kill -9");
        for uid in 1..=round + 1 {
            assert_eq!(node.read_message("alice@example.com", uid as u64).await, message(uid - 1));
        }
    }
    tracing_check(&node);
}

/// Concurrent acknowledged writes all survive a kill that follows the last reply.
#[tokio::test]
async fn concurrent_acknowledged_writes_survive_kill_9() {
    let mut node = WmailNode::new("");
    node.start().await;
    create(&node, "/domains", json!({ "name": "example.com" })).await;
    account(&node, "alice@example.com").await;
    let node_ref = &node;
    let replies = futures::future::join_all(
        (0..32).map(|n| async move { node_ref.deliver("alice@example.com", message(n)).await }),
    )
    .await;
    let mut acknowledged: Vec<u64> = replies
        .iter()
        .map(|(status, reply)| {
            assert_eq!(*status, StatusCode::CREATED, "{reply}");
            reply["uid"].as_u64().expect("uid")
        })
        .collect();
    acknowledged.sort();
    assert_eq!(acknowledged, (1..=32).collect::<Vec<_>>(), "UIDs are unique and dense");
    node.kill9();
    node.start().await;
    let (_, messages) = node.api(Method::GET, "/accounts/alice@example.com/messages", None).await;
    assert_eq!(messages.as_array().expect("list").len(), 32);
    let (_, account) = node.api(Method::GET, "/accounts/alice@example.com", None).await;
    assert_eq!(account["message_count"], json!(32));
}

fn tracing_check(node: &WmailNode) {
    assert!(!node.log().contains("panicked"), "node panicked:\n{}", node.log());
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut node = WmailNode::new("");
    node.start().await;
    create(&node, "/domains", json!({ "name": "example.com" })).await;
    let node_ref = &node;
    let writes = futures::future::join_all((0..10).map(|n| async move {
        let body = json!({ "address": format!("u{n}@example.com"), "password": "password 123" });
        node_ref.api(Method::POST, "/accounts", Some(body)).await
    }));
    let stop = async {
        // Once every request is being handled (argon2 keeps them busy), stop the node. A
        // request still in the kernel's accept queue would be refused, which is not what
        // this test is about.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let in_flight = loop {
            let in_flight = node_ref.metric(r#"wmail_http_requests_in_flight{route="/api/v1/accounts"}"#).await;
            let done = node_ref.metric(r#"wmail_http_requests_total{route="/api/v1/accounts",status="201"}"#).await;
            if in_flight + done >= 10.0 {
                break in_flight;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the 10 requests never all reached the node:\n{}",
                node_ref.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        node_ref.signal("TERM");
        in_flight
    };
    let (replies, in_flight) = tokio::join!(writes, stop);
    assert!(in_flight >= 1.0, "some requests were still being handled when SIGTERM came");
    let status = node.wait_exit().await;
    assert!(status.success(), "exit status {status} after SIGTERM:\n{}", node.log());
    // Every request being handled was finished and answered before the node exited.
    assert!(replies.iter().all(|(status, _)| *status == StatusCode::CREATED), "{replies:?}");
    let acknowledged: Vec<String> =
        replies.iter().map(|(_, reply)| reply["address"].as_str().unwrap().to_owned()).collect();
    node.start().await;
    for address in &acknowledged {
        let (status, _) = node.api(Method::GET, &format!("/accounts/{address}"), None).await;
        assert_eq!(status, StatusCode::OK, "{address} acknowledged before SIGTERM but lost");
    }
    // A clean stop needs no manual step either, even right after start-up.
    let status = node.terminate().await;
    assert!(status.success(), "exit status {status} after SIGTERM:\n{}", node.log());
    node.start().await;
    tracing_check(&node);
    // So does a stop that comes while the node is still starting.
    node.terminate().await;
    let log_before = node.log().len();
    node.spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !node.log()[log_before..].contains("starting data_dir=") {
        assert!(std::time::Instant::now() < deadline, "the node never started:\n{}", node.log());
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let status = node.terminate().await;
    assert!(status.success(), "exit status {status} after SIGTERM during start-up:\n{}", node.log());
    // It stopped through its own handler ("stopped during start-up", or "stopped" if
    // start-up finished first), not by the signal's default action.
    let stop = &node.log()[log_before..];
    assert!(stop.contains("stopped"), "{stop}");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut node = WmailNode::new("");
    node.start().await;
    create(&node, "/domains", json!({ "name": "example.com" })).await;
    account(&node, "alice@example.com").await;
    let token = node.token();

    let (status, reply) = node.api_with_token(Method::POST, "/accounts", Some("{not json".into()), Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_json");

    let body = json!({ "address": "x@example.com", "password": "long enough", "colour": "red" }).to_string();
    let (status, reply) = node.api_with_token(Method::POST, "/accounts", Some(body), Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("colour"), "{reply}");

    let (status, reply) = node
        .api(Method::POST, "/accounts", Some(json!({ "address": "Alice@Example.com", "password": "other pass" })))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");

    let (status, reply) = node
        .api(Method::POST, "/accounts", Some(json!({ "address": "bob@unknown.test", "password": "long enough" })))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("unknown.test"), "{reply}");

    let (status, reply) = node
        .api(Method::POST, "/accounts", Some(json!({ "address": "a b@example.com", "password": "long enough" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let (status, _) =
        node.api(Method::POST, "/accounts", Some(json!({ "address": "c@example.com", "password": "short" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = node.api(Method::POST, "/domains", Some(json!({ "name": "bad_domain!" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = node.api(Method::DELETE, "/domains/example.com", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a domain with accounts cannot be removed");

    // A body over the delivery limit is refused while streaming, and nothing is stored.
    let (status, reply) = node.deliver("alice@example.com", vec![b'x'; 64 * 1024 * 1024 + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
    let (status, reply) = node.deliver("nobody@example.com", b"Subject: x\r\n\r\n".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    let (_, messages) = node.api(Method::GET, "/accounts/alice@example.com/messages", None).await;
    assert_eq!(messages, json!([]));
    let tmp_files = std::fs::read_dir(node.data_dir.join("tmp")).unwrap().count();
    assert_eq!(tmp_files, 0, "a refused body left a temporary file");

    for token in [None, Some("wrong-token")] {
        let (status, reply) = node.api_with_token(Method::GET, "/accounts", None, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
        let body = json!({ "name": "evil.test" }).to_string();
        let (status, _) = node.api_with_token(Method::POST, "/domains", Some(body), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    let (_, accounts) = node.api(Method::GET, "/accounts", None).await;
    let addresses: Vec<&str> = accounts.as_array().unwrap().iter().map(|a| a["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, ["alice@example.com"], "refused requests changed state");
    let (_, domains) = node.api(Method::GET, "/domains", None).await;
    assert_eq!(domains.as_array().unwrap().len(), 1);
    tracing_check(&node);
}

#[tokio::test]
async fn a_second_node_on_the_same_data_dir_is_refused() {
    let mut first = WmailNode::new("");
    first.start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut second = WmailNode::in_dir(dir.path(), "");
    // Point the second node's config at the first node's data directory.
    let config = std::fs::read_to_string(&second.config_path).unwrap();
    let config = config.replace(&second.data_dir.display().to_string(), &first.data_dir.display().to_string());
    std::fs::write(&second.config_path, config).unwrap();
    second.spawn();
    let status = second.wait_exit().await;
    assert_eq!(status.code(), Some(1));
    assert!(second.log().contains("already using the data directory"), "{}", second.log());
    // The first node is unaffected.
    let (status, _) = first.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unwritable_data_dir_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let data_dir = file.join("data");
    let output = run_cli(&["serve", "--data-dir", &data_dir.display().to_string()], None);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&data_dir.display().to_string()), "{stderr}");
    assert!(stderr.contains("--data-dir"), "the error says what to do: {stderr}");
}

#[tokio::test]
async fn the_cli_manages_domains_accounts_and_aliases() {
    let mut node = WmailNode::new("");
    node.start().await;
    assert!(succeeded(node.cli(&["domain", "add", "Example.COM"], None)).contains("added domain example.com"));
    succeeded(node.cli(
        &["account", "add", "alice@example.com", "--password-stdin", "--quota", "1G", "--name", "Alice"],
        Some("a long secret\n"),
    ));
    let generated = succeeded(node.cli(&["account", "add", "bob@example.com"], None));
    assert!(generated.contains("generated password"), "{generated}");
    succeeded(node.cli(&["alias", "add", "sales@example.com", "alice@example.com", "bob@example.com"], None));

    let listed: Value =
        serde_json::from_str(&succeeded(node.cli(&["--json", "account", "list", "example.com"], None))).unwrap();
    let listed: Vec<&str> = listed.as_array().unwrap().iter().map(|a| a["address"].as_str().unwrap()).collect();
    assert_eq!(listed, ["alice@example.com", "bob@example.com"]);
    let shown: Value =
        serde_json::from_str(&succeeded(node.cli(&["account", "show", "alice@example.com", "--json"], None))).unwrap();
    assert_eq!(shown["quota_bytes"], json!(1u64 << 30));
    assert_eq!(shown["name"], "Alice");
    assert!(
        succeeded(node.cli(&["alias", "list"], None))
            .contains("sales@example.com -> alice@example.com, bob@example.com")
    );

    // Addresses with URL-special characters survive the trip through the CLI.
    succeeded(node.cli(&["account", "add", "a/b?c#d%e@example.com", "--password-stdin"], Some("a long secret\n")));
    let odd: Value =
        serde_json::from_str(&succeeded(node.cli(&["--json", "account", "show", "a/b?c#d%e@example.com"], None)))
            .unwrap();
    assert_eq!(odd["address"], "a/b?c#d%e@example.com");
    succeeded(node.cli(&["account", "remove", "a/b?c#d%e@example.com"], None));

    // A password changed through the CLI is the one that counts (checked via the state).
    succeeded(node.cli(&["account", "passwd", "alice@example.com", "--password-stdin"], Some("another secret\n")));

    // Failures exit 1 with the reason; bad usage exits 2.
    let failed = node.cli(&["account", "add", "carol@nowhere.test", "--password-stdin"], Some("a long secret\n"));
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("domain nowhere.test does not exist"));
    let failed = node.cli(&["domain", "add", "example.com"], None);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("already exists"));
    assert_eq!(node.cli(&["account", "frobnicate"], None).status.code(), Some(2));
    assert_eq!(node.cli(&["account", "add", "x@example.com", "--quota", "lots"], None).status.code(), Some(2));
    let no_token = run_cli(&["--server", &format!("http://{}", node.http), "--token", "nope", "domain", "list"], None);
    assert_eq!(no_token.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("token"));
    let unreachable = run_cli(&["--server", "http://127.0.0.1:9", "--token", "x", "domain", "list"], None);
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is `wmail serve` running"));

    succeeded(node.cli(&["alias", "remove", "sales@example.com"], None));
    succeeded(node.cli(&["account", "remove", "bob@example.com"], None));
    succeeded(node.cli(&["account", "remove", "alice@example.com"], None));
    succeeded(node.cli(&["domain", "remove", "example.com"], None));
    assert_eq!(succeeded(node.cli(&["domain", "list"], None)).trim(), "");
}

#[tokio::test]
async fn config_check_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let example = run_cli(&["config", "example"], None);
    assert!(example.status.success());
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &example.stdout).unwrap();
    let checked = run_cli(&["config", "check", &good.display().to_string()], None);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 1\n\n[listen]\nhttp = [\"127.0.0.1:8080\"]\nimapp = []\n").unwrap();
    let checked = run_cli(&["config", "check", &bad.display().to_string()], None);
    assert_eq!(checked.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(stderr.contains("imapp") && stderr.contains("line 5"), "{stderr}");

    // `serve` refuses the same file before touching anything.
    let served = run_cli(&["serve", "--config", &bad.display().to_string()], None);
    assert_eq!(served.status.code(), Some(1));
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut node = WmailNode::new("");
    node.start().await;
    assert_eq!(node.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(node.get("/readyz").await.0, StatusCode::OK);
    create(&node, "/domains", json!({ "name": "example.com" })).await;
    // Open sessions per mail listener: an IMAP client that got its greeting counts.
    let mut client = tokio::io::BufReader::new(tokio::net::TcpStream::connect(node.imap).await.unwrap());
    let mut greeting = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut client, &mut greeting).await.unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    assert_eq!(node.metric(r#"wmail_sessions_open{listener="imap"}"#).await, 1.0);
    assert_eq!(node.metric(r#"wmail_sessions_open{listener="smtp"}"#).await, 0.0);
    drop(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while node.metric(r#"wmail_sessions_open{listener="imap"}"#).await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "the closed session is still counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, metrics) = node.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "wmail_build_info{version=",
        "wmail_raft_term 1",
        "wmail_raft_is_leader 1",
        "wmail_raft_leader_id 1",
        "wmail_raft_applied_index",
        "wmail_raft_log_wal_syncs_total",
        "wmail_raft_committed_index",
        "wmail_raft_log_entries_total",
        "wmail_http_requests_total{route=\"/api/v1/domains\",status=\"201\"} 1",
        "wmail_http_request_duration_seconds_bucket{route=\"/api/v1/domains\"",
        // The scrape itself is being handled while it renders.
        "wmail_http_requests_in_flight{route=\"/metrics\"} 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in:\n{metrics}");
    }
    // Prometheus' own linter accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by tests/run.sh");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, _) = node.get("/no/such/path").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
