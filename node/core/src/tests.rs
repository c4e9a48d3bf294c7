//! Core against real storage and consensus on disk: delivery, aliases, authentication and
//! blob garbage collection.

use std::time::Duration;

use super::*;

async fn start(dir: &std::path::Path) -> Arc<Core> {
    start_with_snapshots_every(dir, DEFAULT_SNAPSHOT_EVERY).await
}

async fn start_with_snapshots_every(dir: &std::path::Path, snapshot_every: u64) -> Arc<Core> {
    Core::start(CoreConfig {
        data_dir: dir.to_owned(),
        node_id: 1,
        advertise_addr: "127.0.0.1:1".into(),
        cluster_listen: "127.0.0.1:0".parse().unwrap(),
        join: None,
        admin_token_hash: [0; 32],
        blob_backend: BlobBackend::Local { root: dir.to_owned() },
        blob_gc_grace: Duration::ZERO,
        blob_cache_bytes: 0,
        snapshot_every,
        lockout: LockoutPolicy { max_failures_per_account: 3, ..LockoutPolicy::default() },
        remember_logins: Duration::from_secs(600),
        search_enabled: true,
        min_free_disk_bytes: 0,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_snapshot_and_log_purge_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let core = start_with_snapshots_every(dir.path(), 20).await;
    setup(&core).await;
    for n in 0..60 {
        let delivered = core.deliver(&["alice@example.com".into()], body(&format!("message {n}"))).await.unwrap();
        assert!(delivered[0].result.is_ok());
    }
    let metrics = core.raft_metrics();
    assert!(metrics.snapshot.is_some(), "no snapshot after 60+ entries with snapshot_every = 20");
    assert!(metrics.purged.is_some(), "the log was not purged behind the snapshot");
    core.shutdown().await;
    drop(core);

    // A snapshot build still running at shutdown may hold the old state a moment longer
    // (in production the process exits); wait for it like an operator restarting would.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let core = loop {
        let config = CoreConfig {
            data_dir: dir.path().to_owned(),
            node_id: 1,
            advertise_addr: "127.0.0.1:1".into(),
            cluster_listen: "127.0.0.1:0".parse().unwrap(),
            join: None,
            admin_token_hash: [0; 32],
            blob_backend: BlobBackend::Local { root: dir.path().to_owned() },
            blob_gc_grace: Duration::ZERO,
            blob_cache_bytes: 0,
            snapshot_every: 20,
            lockout: LockoutPolicy::default(),
            remember_logins: Duration::from_secs(600),
            search_enabled: true,
            min_free_disk_bytes: 0,
        };
        match Core::start(config).await {
            Ok(core) => break core,
            Err(error) if std::time::Instant::now() < deadline => {
                tracing::info!(%error, "state still held; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot restart: {error}"),
        }
    };
    let messages = core.messages("alice@example.com", None).unwrap();
    assert_eq!(messages.len(), 60);
    assert_eq!(core.read_blob(&messages[59].blob).await.unwrap(), "message 59");
    assert_eq!(core.aliases(None).unwrap().len(), 1);
    let more = core.deliver(&["alice@example.com".into()], body("after restart")).await.unwrap();
    assert!(matches!(more[0].result, Ok(DeliveryResult::Stored { uid: 61, .. })), "{more:?}");
}

fn body(text: &str) -> impl Stream<Item = std::io::Result<Bytes>> + Send + use<> {
    futures::stream::iter([Ok(Bytes::from(text.to_owned()))])
}

async fn setup(core: &Core) {
    core.create_domain("Example.com").await.unwrap();
    for address in ["alice@example.com", "bob@example.com"] {
        core.create_account(NewAccount {
            address: address.into(),
            password: "correct horse".into(),
            display_name: String::new(),
            quota_bytes: None,
            state: AccountState::Active,
        })
        .await
        .unwrap();
    }
    core.create_alias("team@example.com", &["alice@example.com".into(), "bob@example.com".into()]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_follows_aliases_and_stores_one_body() {
    let dir = tempfile::tempdir().unwrap();
    let core = start(dir.path()).await;
    setup(&core).await;
    let recipients = ["team@example.com".to_string(), "Alice@Example.com".into(), "nobody@example.com".into()];
    let results = core.deliver(&recipients, body("Subject: hi\r\n\r\nhello\r\n")).await.unwrap();
    assert!(matches!(results[0].result, Ok(DeliveryResult::Stored { uid: 1, .. })), "{results:?}");
    // alice is reached through the alias and directly, and still gets exactly one copy.
    assert_eq!(results[1].result, results[0].result);
    assert_eq!(core.messages("alice@example.com", None).unwrap().len(), 1);
    assert_eq!(results[2].result.as_ref().unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(core.messages("bob@example.com", None).unwrap().len(), 1);
    let blob = core.messages("bob@example.com", None).unwrap()[0].blob;
    assert_eq!(core.state.blob_ref(&blob).unwrap().unwrap().count, 2, "one body, two references");
    assert_eq!(core.read_blob(&blob).await.unwrap(), "Subject: hi\r\n\r\nhello\r\n");

    // Plus-addressing reaches the base address; aliases and own addresses may be sent as.
    let alice = core.account("alice@example.com").unwrap().unwrap();
    assert_eq!(core.resolve_recipient("alice+news@example.com").unwrap(), vec![alice.id]);
    assert!(core.resolve_recipient("nobody+x@example.com").unwrap().is_empty());
    assert!(core.may_send_as(&alice, "Alice@example.com").unwrap());
    assert!(core.may_send_as(&alice, "team@example.com").unwrap());
    assert!(!core.may_send_as(&alice, "bob@example.com").unwrap());
    assert!(!core.may_send_as(&alice, "someone@elsewhere.test").unwrap());
    assert!(core.is_local_domain("EXAMPLE.com").unwrap());

    // Domain aliases and catch-alls.
    core.create_domain_alias("example.net", "example.com").await.unwrap();
    assert_eq!(core.resolve_recipient("alice+x@example.net").unwrap(), vec![alice.id]);
    assert_eq!(core.resolve_recipient("team@example.net").unwrap().len(), 2);
    assert!(core.resolve_recipient("unknown@example.com").unwrap().is_empty());
    core.set_catch_all("example.com", Some("alice@example.com")).await.unwrap();
    assert_eq!(core.resolve_recipient("unknown@example.com").unwrap(), vec![alice.id]);
    assert_eq!(core.resolve_recipient("unknown@example.net").unwrap(), vec![alice.id], "via the alias");
    assert!(!core.may_send_as(&alice, "unknown@example.com").unwrap(), "a catch-all grants no send-as");
    assert!(core.may_send_as(&alice, "alice@example.net").unwrap(), "a domain alias does");
    core.set_catch_all("example.com", None).await.unwrap();
    assert!(core.resolve_recipient("unknown@example.com").unwrap().is_empty());
    assert!(!core.is_local_domain("elsewhere.test").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_checks_password_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let core = start(dir.path()).await;
    setup(&core).await;
    assert_eq!(
        core.authenticate("ALICE@example.com", "correct horse", None).await.unwrap().address,
        "alice@example.com"
    );
    for (address, password) in
        [("alice@example.com", "wrong horse"), ("nobody@example.com", "correct horse"), ("x", "y")]
    {
        assert_eq!(core.authenticate(address, password, None).await.unwrap_err().code, ErrorCode::Unauthorized);
    }
    // Three failures for bob (the test policy's limit) lock him out, even with his password.
    for _ in 0..3 {
        assert!(core.authenticate("bob@example.com", "wrong horse", None).await.is_err());
    }
    let locked = core.authenticate("bob@example.com", "correct horse", None).await.unwrap_err();
    assert!(locked.message.contains("too many failed logins"), "{locked}");
    let changes = AccountChanges { state: Some(AccountState::Dormant), ..Default::default() };
    core.update_account("alice@example.com", changes).await.unwrap();
    let refused = core.authenticate("alice@example.com", "correct horse", None).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unauthorized, "a dormant account receives mail but cannot log in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_deletes_unreferenced_and_orphaned_bodies_only() {
    let dir = tempfile::tempdir().unwrap();
    let core = start(dir.path()).await;
    setup(&core).await;
    let kept = core.deliver(&["alice@example.com".into()], body("kept")).await.unwrap();
    assert!(kept[0].result.is_ok());
    let dropped = core.deliver(&["bob@example.com".into()], body("dropped")).await.unwrap();
    assert!(dropped[0].result.is_ok());
    let bob = core.account("bob@example.com").unwrap().unwrap();
    let inbox = core.state.mailbox_by_name(bob.id, wmail_storage::INBOX).unwrap().unwrap();
    core.execute(Command::Expunge { account_id: bob.id, mailbox_id: inbox.id, uids: vec![1] }).await.unwrap();
    let orphan = core.blobs.put_bytes(Bytes::from_static(b"stored, never delivered")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    assert_eq!(core.collect_blob_garbage().await.unwrap(), 2);
    assert!(core.blobs.exists(&BlobId::of(b"kept")).await.unwrap());
    assert!(!core.blobs.exists(&BlobId::of(b"dropped")).await.unwrap());
    assert!(!core.blobs.exists(&orphan.id).await.unwrap());
    assert_eq!(core.collect_blob_garbage().await.unwrap(), 0, "nothing left to collect");

    // The same content delivered again is stored again and readable.
    let again = core.deliver(&["bob@example.com".into()], body("dropped")).await.unwrap();
    assert!(again[0].result.is_ok(), "{again:?}");
    assert_eq!(core.read_blob(&BlobId::of(b"dropped")).await.unwrap(), "dropped");

    // A copy stored before a collection finished is refused, so it is never left dangling.
    let stale = core
        .execute(Command::Deliver {
            blob: orphan.id,
            stored_after_index: 0,
            size: 1,
            internal_date_ms: 0,
            flags: vec![],
            summary: None,
            threading: None,
            targets: vec![DeliveryTarget { account_id: bob.id, mailbox_id: None }],
            outbound: None,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code, ErrorCode::Unavailable, "{stale}");

    // That refused delivery had stored its copy again: the object exists under a
    // tombstone, references nothing, and the next round collects it.
    core.blobs.put_bytes(Bytes::from_static(b"stored, never delivered")).await.unwrap();
    assert!(core.blobs.exists(&orphan.id).await.unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(core.collect_blob_garbage().await.unwrap(), 1);
    assert!(!core.blobs.exists(&orphan.id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_body_is_the_clients_fault_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let core = start(dir.path()).await;
    setup(&core).await;
    let broken = futures::stream::iter([Ok(Bytes::from_static(b"partial")), Err(std::io::Error::other("client left"))]);
    let error = core.deliver(&["alice@example.com".into()], broken).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidInput);
    assert!(error.message.contains("client left"), "{error}");
    assert!(core.messages("alice@example.com", None).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_appends_store_their_summary_and_large_bodies_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let core = start(dir.path()).await;
    setup(&core).await;
    let small = "Subject: small one\r\nFrom: Bob <bob@example.org>\r\n\r\nhello\r\n";
    core.deliver(&["alice@example.com".into()], body(small)).await.unwrap();
    // Larger than the in-memory copy: summarised by reading the stored body back.
    let large = format!("Subject: large one\r\n\r\n{}", "x".repeat(mailbox::SUMMARY_COPY_LIMIT + 10));
    core.deliver(&["alice@example.com".into()], body(&large)).await.unwrap();
    let alice = core.account("alice@example.com").unwrap().unwrap();
    let inbox = core.mailbox_by_name(alice.id, INBOX).unwrap().unwrap();
    let messages = core.mailbox_messages(alice.id, inbox.id).await.unwrap();
    for (message, subject) in messages.iter().zip(["small one", "large one"]) {
        assert!(core.state.summary(&message.blob).unwrap().is_some(), "no summary stored for {subject}");
        assert_eq!(core.message_summary(&message.blob).await.unwrap().subject_decoded, subject);
    }
    let stored = core.store_message(body("Subject: appended\r\n\r\nbody\r\n")).await.unwrap();
    assert!(stored.summary.is_some());
    let (_, uids) = core.append(alice.id, inbox.id, vec![(stored.clone(), vec!["\\Seen".into()], 7)]).await.unwrap();
    assert_eq!(uids, vec![3]);
    assert_eq!(core.message_summary(&stored.blob).await.unwrap().subject_decoded, "appended");
}
