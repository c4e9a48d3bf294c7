//! A three-node cluster on loopback with a real S3 server (SeaweedFS): nodes join with
//! one-time tokens over QUIC with mutual TLS, mail accepted on any node is readable on
//! every other at once, the leader is killed with SIGKILL and writes resume without loss,
//! and the dead node catches up when it comes back.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{WmailNode, pop3_message_count, python, succeeded};
use crate::peers::{Haproxy, SeaweedFs};
use crate::smtp_client::RawSmtp;

/// Issues a join token on `node` through the CLI.
fn join_token(node: &WmailNode, learner: bool) -> String {
    let args: &[&str] =
        if learner { &["cluster", "token", "--learner", "--json"] } else { &["cluster", "token", "--json"] };
    let output: Value = serde_json::from_str(&succeeded(node.cli(args, None))).expect("token json");
    output["token"].as_str().expect("token").to_string()
}

/// A node that joins `member` with `token` on first start.
fn joining_node(seaweed: &SeaweedFs, member: &WmailNode, token: &str) -> WmailNode {
    let mut node = WmailNode::new(&seaweed.wmail_config());
    node.serve_args = vec!["--join".into(), member.cluster.to_string(), "--join-token".into(), token.into()];
    node
}

/// Snapshots (and log purges) every 20 applied entries.
fn snapshot_often(mut node: WmailNode) -> WmailNode {
    node.env.push(("WMAIL_CLUSTER_SNAPSHOT_EVERY".into(), "20".into()));
    node
}

async fn cluster_status(node: &WmailNode) -> Value {
    let (status, view) = node.api(Method::GET, "/cluster/status", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view
}

/// Sends one message over SMTP (MX); returns the final reply code.
async fn smtp_deliver(node: &WmailNode, recipient: &str, subject: &str) -> u16 {
    let (mut smtp, greeting) = RawSmtp::connect_raw(node.smtp).await;
    assert_eq!(greeting.map(|g| g.code), Some(220));
    smtp.command("EHLO client.test", 250).await;
    smtp.start_data(recipient).await;
    smtp.send_raw(format!("Subject: {subject}\r\nMessage-ID: <{subject}@remote.test>\r\n\r\nbody\r\n.\r\n").as_bytes())
        .await;
    let code = smtp.reply().await.map_or(0, |reply| reply.code);
    smtp.send("QUIT").await;
    code
}

/// The blobs of an account's INBOX as `node` has applied them, sorted.
async fn blobs(node: &WmailNode, address: &str) -> Vec<String> {
    let (status, messages) = node.api(Method::GET, &format!("/accounts/{address}/messages"), None).await;
    assert_eq!(status, StatusCode::OK, "{messages}");
    let mut blobs: Vec<String> =
        messages.as_array().into_iter().flatten().map(|m| m["blob"].as_str().unwrap_or_default().to_string()).collect();
    blobs.sort();
    blobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_serve_every_protocol_and_survive_a_leader_kill() {
    let seaweed = SeaweedFs::start().await;
    let mut first = WmailNode::new(&seaweed.wmail_config());
    first.start().await;
    let tokens = [join_token(&first, false), join_token(&first, false)];
    let mut second = joining_node(&seaweed, &first, &tokens[0]);
    second.start().await;
    // The third node loses the member's first answer (as if the connection broke after the
    // member spent the token): it asks again with the same key and gets the same node id.
    let mut third = joining_node(&seaweed, &first, &tokens[1]);
    third.env.push(("WMAIL_TEST_LOSE_JOIN_REPLY".into(), "1".into()));
    third.start().await;
    assert!(third.log().contains("asking again with the same key"), "{}", third.log());
    assert!(!third.data_dir.join("cluster/joining-key.json").exists(), "the joining key stays behind");

    let view = cluster_status(&third).await;
    let members = view["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{view}");
    let ids: Vec<_> = members.iter().map(|member| member["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3], "the repeated enrolment took a second id: {view}");
    for member in members {
        assert_eq!(member["role"], "voter", "{view}");
        assert!(member["status"]["applied_index"].is_u64(), "every member answers: {view}");
        assert!(member["status"]["command_version"].as_u64() >= Some(2), "and says what it applies: {view}");
    }
    let status_table = succeeded(second.cli(&["cluster", "status"], None));
    assert!(status_table.contains("voter") && status_table.contains("Leader"), "{status_table}");
    assert!(status_table.contains("(commands v"), "{status_table}");

    // One admin token works on every node (an API client behind a load balancer).
    let (status, body) = third.api_with_token(Method::GET, "/domains", None, Some(&first.token())).await;
    assert_eq!(status, StatusCode::OK, "node 1's token refused by node 3: {body}");
    let (status, _) = third.api_with_token(Method::GET, "/domains", None, Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Admin writes on a follower go through the leader.
    let follower = if view["leader"] == json!(2) { &third } else { &second };
    let (status, body) = follower.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let account = json!({ "address": "ann@example.com", "password": "a long password" });
    assert_eq!(follower.api(Method::POST, "/accounts", Some(account)).await.0, StatusCode::CREATED);

    // A message accepted on one node is visible on every other the moment the 250 came:
    // POP3 and IMAP wait for a read barrier.
    let nodes = [&first, &second, &third];
    for (index, sender) in nodes.iter().enumerate() {
        assert_eq!(smtp_deliver(sender, "ann@example.com", &format!("via-{index}")).await, 250);
        let reader = nodes[(index + 1) % 3];
        let count = pop3_message_count(reader, "ann@example.com", "a long password");
        assert_eq!(count, (index + 1).to_string(), "node {index} accepted it, the next node must show it");
    }

    // IMAP IDLE on one node is woken by mail accepted on another.
    let idle = format!(
        "{}\nALICE = 'ann@example.com'\nPASSWORD = 'a long password'\n{}",
        crate::imap::HELPERS,
        format_args!(
            r#"
b = Raw(user=ALICE, password=PASSWORD)
b.ok("SELECT INBOX")
tag = b.start("IDLE")
assert b.response().startswith(b"+"), "no continuation for IDLE"
s = smtplib.SMTP("127.0.0.1", {smtp})
s.sendmail("x@remote.test", [ALICE], b"Subject: idle across nodes\r\n\r\nx\r\n")
s.quit()
b.wait_for(b"* 4 EXISTS\r\n", 10.0)
b.send("DONE\r\n")
untagged, status = b.finish(tag)
assert status.startswith("OK"), (status, untagged)
print("woken")
"#,
            smtp = first.smtp.port()
        )
    );
    assert_eq!(python(&second, &idle).trim(), "woken");

    // A spent token is refused, and says what to do.
    let mut reuse = joining_node(&seaweed, &first, &tokens[0]);
    reuse.spawn();
    let exit = reuse.wait_exit().await;
    assert!(!exit.success());
    assert!(reuse.log().contains("already used"), "{}", reuse.log());

    // Kill the leader: the others elect a new one and keep accepting mail.
    let leader_id = cluster_status(&first).await["leader"].as_u64().expect("a leader");
    let mut nodes = [first, second, third];
    let leader_index = nodes.iter().position(|n| n.data_dir.join("cluster").exists() && is_node(n, leader_id)).unwrap();
    nodes[leader_index].kill9();
    let killed_at = Instant::now();
    let survivor = &nodes[(leader_index + 1) % 3];
    let other = &nodes[(leader_index + 2) % 3];
    let mut accepted = Vec::new();
    let mut first_success = None;
    for attempt in 0..40 {
        let subject = format!("after-kill-{attempt}");
        if smtp_deliver(survivor, "ann@example.com", &subject).await == 250 {
            first_success.get_or_insert_with(|| killed_at.elapsed());
            accepted.push(subject);
            if accepted.len() == 5 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(accepted.len(), 5, "writes did not resume after the leader died");
    eprintln!("failover: first accepted write {:?} after kill -9 of the leader", first_success.unwrap());
    // Every acknowledged message, exactly once, on the other survivor (POP3 login waits for
    // a read barrier).
    assert_eq!(pop3_message_count(other, "ann@example.com", "a long password"), "9");
    let on_other = blobs(other, "ann@example.com").await;

    // The dead node comes back and catches up with everything it missed.
    nodes[leader_index].start().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = blobs(&nodes[leader_index], "ann@example.com").await;
        if seen.len() == 9 {
            assert_eq!(seen, on_other);
            break;
        }
        assert!(Instant::now() < deadline, "the restarted node has {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A branch-office learner: holds everything, serves reads, forwards writes, never votes.
    let other = &nodes[(leader_index + 2) % 3];
    let mut learner = joining_node(&seaweed, other, &join_token(other, true));
    learner.env.push(("WMAIL_BLOB_CACHE_SIZE_MB".into(), "64".into()));
    learner.start().await;
    let view = cluster_status(&learner).await;
    let roles: Vec<_> = view["members"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["voter", "voter", "voter", "learner"], "{view}");
    assert_eq!(smtp_deliver(&learner, "ann@example.com", "via-learner").await, 250);
    assert_eq!(pop3_message_count(&learner, "ann@example.com", "a long password"), "10");
    assert_eq!(pop3_message_count(other, "ann@example.com", "a long password"), "10");

    // Its link to the voters goes down (here: they all stop): it keeps serving what it
    // has, says so, and refuses writes with a temporary error.
    for node in &mut nodes {
        node.kill9();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = learner.get("/readyz").await;
        if text.contains("read-only") {
            assert_eq!(status, StatusCode::OK);
            break;
        }
        assert!(Instant::now() < deadline, "the learner never said it is cut off: {status} {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(learner.metric("wmail_cluster_detached").await, 1.0);
    assert_eq!(pop3_message_count(&learner, "ann@example.com", "a long password"), "10");
    assert_eq!(learner.api(Method::GET, "/accounts/ann@example.com/messages", None).await.0, StatusCode::OK);
    assert_eq!(smtp_deliver(&learner, "ann@example.com", "while-cut-off").await, 451);

    // What it read before comes from its blob cache even with the S3 server gone too.
    let first_message = learner.read_message("ann@example.com", 1).await;
    assert!(learner.metric("wmail_blob_cache_bytes").await > 0.0);
    drop(seaweed);
    assert_eq!(learner.read_message("ann@example.com", 1).await, first_message);
}

/// `node`'s identity file.
fn identity(node: &WmailNode) -> Value {
    let identity = std::fs::read(node.data_dir.join("cluster/identity.json")).expect("identity");
    serde_json::from_slice(&identity).expect("identity json")
}

/// Whether `node` has cluster id `id` (from its identity file).
fn is_node(node: &WmailNode, id: u64) -> bool {
    identity(node)["node_id"] == json!(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_expire_and_are_renewed_before_they_do() {
    const VALID_SECONDS: u64 = 9;
    let seaweed = SeaweedFs::start().await;
    let short_lived = |mut node: WmailNode| {
        node.env.push(("WMAIL_TEST_NODE_CERT_SECONDS".into(), VALID_SECONDS.to_string()));
        node
    };
    let mut first = short_lived(WmailNode::new(&seaweed.wmail_config()));
    first.start().await;
    let mut second = short_lived(joining_node(&seaweed, &first, &join_token(&first, false)));
    second.start().await;
    let enrolled = identity(&second);
    let expires = enrolled["cert_expires_ms"].as_u64().expect("the expiry is kept");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(expires > now && expires <= now + VALID_SECONDS * 1000, "{enrolled}");
    // The certificate itself says so (openssl: -checkend N exits 1 when it expires within N s).
    let checkend = |pem: &str, seconds: u64| {
        let mut child = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &seconds.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("openssl (installed by tools/dev/deps.sh test)");
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(pem.as_bytes()).expect("write the certificate");
        child.wait().expect("openssl").success()
    };
    let pem = enrolled["cert_pem"].as_str().expect("cert_pem");
    assert!(checkend(pem, 0) && !checkend(pem, 60), "not a {VALID_SECONDS} s certificate: {pem}");

    // Both renew theirs with a third of the validity left, while they keep working.
    let deadline = Instant::now() + Duration::from_secs(3 * VALID_SECONDS);
    while identity(&second)["cert_pem"] == enrolled["cert_pem"]
        || !first.log().contains("renewed this node's cluster certificate")
    {
        assert!(Instant::now() < deadline, "no renewal:\n{}\n{}", first.log(), second.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let renewed = identity(&second);
    assert!(renewed["cert_expires_ms"].as_u64() > Some(expires), "{renewed}");
    assert_eq!(renewed["key_pem"], enrolled["key_pem"], "renewal keeps the key");

    // Once the enrolment certificate has expired, new connections need the renewed ones:
    // node 2 restarts, talks to node 1 again and writes through it.
    while std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        <= expires + 1_000
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.terminate().await;
    second.start().await;
    // Restarting one of two voters can move leadership, and a write caught by that is
    // answered 503 "outcome unknown; retry shortly": retried as a client would, it lands
    // (409 if the unknown outcome was a commit after all).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut retried = false;
    loop {
        let (status, body) = second.api(Method::POST, "/domains", Some(json!({ "name": "renewed.example" }))).await;
        if status == StatusCode::CREATED || (retried && status == StatusCode::CONFLICT) {
            break;
        }
        assert!(status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline, "{status} {body}");
        retried = true;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(second.api(Method::GET, "/domains/renewed.example", None).await.0, StatusCode::OK);
    let view = cluster_status(&first).await;
    let members = view["members"].as_array().expect("members");
    assert!(members.len() == 2 && members.iter().all(|m| m["status"].is_object()), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_gone_and_a_wiped_node_rejoins_by_snapshot() {
    let seaweed = SeaweedFs::start().await;
    let mut first = snapshot_often(WmailNode::new(&seaweed.wmail_config()));
    first.start().await;
    let mut second = snapshot_often(joining_node(&seaweed, &first, &join_token(&first, false)));
    second.start().await;
    let mut third = snapshot_often(joining_node(&seaweed, &first, &join_token(&first, false)));
    third.start().await;
    assert_eq!(
        first.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0,
        StatusCode::CREATED
    );
    let account = json!({ "address": "bob@example.com", "password": "a long password" });
    assert_eq!(first.api(Method::POST, "/accounts", Some(account)).await.0, StatusCode::CREATED);

    // The third node leaves, and is stopped.
    let third_id = cluster_status(&third).await["node_id"].as_u64().unwrap();
    succeeded(second.cli(&["cluster", "leave", &third_id.to_string()], None));
    third.kill9();
    let view = cluster_status(&first).await;
    let ids: Vec<_> = view["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(!ids.contains(&third_id) && ids.len() == 2, "{view}");

    // Its certificate is revoked: restarted with its data it cannot take part (its votes
    // and appends are refused), and with its state wiped but its key kept it cannot add
    // itself back.
    third.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !third.log().contains("certificate revoked") {
        assert!(std::time::Instant::now() < deadline, "no refusal seen by the removed node:\n{}", third.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = first.api(Method::POST, "/domains", Some(json!({ "name": "still.example" }))).await;
    assert_eq!(status, StatusCode::CREATED, "the cluster goes on without it: {body}");
    third.kill9();
    for state in ["raft", "state"] {
        let _ = std::fs::remove_dir_all(third.data_dir.join(state));
    }
    third.spawn();
    let status = third.wait_exit().await;
    assert!(!status.success() && third.log().contains("certificate revoked"), "{}", third.log());
    let view = cluster_status(&first).await;
    assert_eq!(view["members"].as_array().map(Vec::len), Some(2), "{view}");

    // Enough writes that every node snapshots and purges its log behind the snapshot.
    for n in 0..60 {
        let (status, body) = second.deliver("bob@example.com", format!("Subject: {n}\r\n\r\nx\r\n").into_bytes()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let purged = cluster_status(&first).await["purged_index"].as_u64().expect("the log was purged");
    assert!(purged > 20, "purged up to {purged}");

    // A node with a wiped data directory joins again: the log it would need is gone, so it
    // catches up by installing the leader's snapshot (streamed over QUIC).
    let mut wiped = snapshot_often(joining_node(&seaweed, &second, &join_token(&second, false)));
    wiped.start().await;
    let view = cluster_status(&wiped).await;
    assert!(view["snapshot_index"].as_u64().is_some_and(|index| index >= purged), "{view}");
    assert_eq!(pop3_message_count(&wiped, "bob@example.com", "a long password"), "60");
    assert_ne!(view["node_id"].as_u64(), Some(third_id), "node ids are never reused");
    let roles: Vec<_> = view["members"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["voter", "voter", "voter"], "{view}");
}

/// Lets the nodes take PROXY v2 headers from 127.0.0.3, where HAProxy connects from.
fn behind_haproxy(mut node: WmailNode) -> WmailNode {
    node.env.push(("WMAIL_LISTEN_PROXY_PROTOCOL_FROM".into(), "[\"127.0.0.3\"]".into()));
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_proxy_protocol_fronts_the_cluster_through_a_node_kill() {
    let seaweed = SeaweedFs::start().await;
    let mut first = behind_haproxy(WmailNode::new(&seaweed.wmail_config()));
    first.start().await;
    let mut second = behind_haproxy(joining_node(&seaweed, &first, &join_token(&first, false)));
    second.start().await;
    let mut third = behind_haproxy(joining_node(&seaweed, &first, &join_token(&first, false)));
    third.start().await;
    assert_eq!(
        first.api(Method::POST, "/domains", Some(json!({ "name": "example.com" }))).await.0,
        StatusCode::CREATED
    );
    let account = json!({ "address": "cy@example.com", "password": "a long password" });
    assert_eq!(first.api(Method::POST, "/accounts", Some(account)).await.0, StatusCode::CREATED);
    let haproxy = Haproxy::start(&[&first, &second, &third]).await;

    // A client at 127.0.0.2 sends through HAProxy: the node records the client, not HAProxy.
    let send = |count: usize, tag: &str| {
        format!(
            r#"
import smtplib, time
sent = 0
for n in range({count}):
    for attempt in range(20):
        try:
            s = smtplib.SMTP("127.0.0.1", {port}, source_address=("127.0.0.2", 0), timeout=30)
            s.sendmail("x@remote.test", ["cy@example.com"], b"Subject: {tag} %d\r\n\r\nx\r\n" % n)
            s.quit()
            sent += 1
            break
        except (smtplib.SMTPException, OSError):
            time.sleep(0.2)
print(sent)
"#,
            port = haproxy.ports["smtp"]
        )
    };
    assert_eq!(python(&first, &send(1, "first")).trim(), "1");
    let stored = String::from_utf8(first.read_message("cy@example.com", 1).await).unwrap();
    assert!(stored.contains("[127.0.0.2]"), "the Received header names HAProxy, not the client:\n{stored}");
    assert!(!stored.contains("[127.0.0.3]"), "{stored}");

    // Draining the leader before an upgrade: it hands leadership to another voter (and
    // stays one), closes its mail listeners and answers 503 on /readyz, so HAProxy sends
    // clients to the others.
    let nodes = [&first, &second, &third];
    let leader = cluster_status(&first).await["leader"].as_u64().unwrap();
    let drained = nodes.iter().position(|n| is_node(n, leader)).unwrap();
    let report = succeeded(nodes[drained].cli(&["node", "drain", "--grace", "10", "--json"], None));
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!((report["was_leader"].clone(), report["drained"].clone()), (json!(true), json!(true)), "{report}");
    let serving: Vec<&WmailNode> = nodes.iter().enumerate().filter(|(i, _)| *i != drained).map(|(_, n)| *n).collect();
    let view = cluster_status(serving[0]).await;
    assert!(view["leader"].as_u64().is_some_and(|id| id != leader), "{view}");
    let roles: Vec<_> = view["members"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["voter", "voter", "voter"], "the drained node votes again: {view}");
    assert_eq!(nodes[drained].get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(std::net::TcpStream::connect(nodes[drained].smtp).is_err(), "the drained node still takes SMTP");
    assert_eq!(python(&second, &send(5, "drained")).trim(), "5");

    // Then a serving node dies: HAProxy's health checks (GET /readyz through PROXY v2) take
    // it out, and clients that retry carry on through the last one without losing anything.
    let (victim, survivor) = (serving[0].data_dir.clone(), serving[1].data_dir.clone());
    let mut nodes = [first, second, third];
    nodes.iter_mut().find(|n| n.data_dir == victim).unwrap().kill9();
    let survivor = nodes.iter().find(|n| n.data_dir == survivor).unwrap();
    assert_eq!(python(survivor, &send(10, "after")).trim(), "10");
    let pop3 = format!(
        "p = poplib.POP3_SSL('127.0.0.1', {}, context=ctx)\np.user('cy@example.com')\np.pass_('a long password')\nprint(p.stat()[0])\np.quit()\n",
        haproxy.ports["pop3s"]
    );
    assert_eq!(python(survivor, &pop3).trim(), "16");
    assert_eq!(survivor.get("/readyz").await.0, StatusCode::OK);
}
