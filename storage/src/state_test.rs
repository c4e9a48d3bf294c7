use super::*;

fn store() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path().join("state")).unwrap();
    (dir, store)
}

/// Applies commands as one batch, each with the entry index as its raft meta.
/// Log indexes increase across every apply of the test process, as in a real log.
static NEXT_LOG_INDEX: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn apply(store: &StateStore, commands: Vec<Command>) -> Vec<CommandResult> {
    let entries = commands
        .into_iter()
        .enumerate()
        .map(|(index, command)| ApplyEntry {
            log_index: NEXT_LOG_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            commands: vec![CommandEnvelope::new(command, 1_000 + index as u64).encode()],
            raft_meta: vec![index as u8],
        })
        .collect();
    store.apply_batch(entries).unwrap().into_iter().flatten().collect()
}

/// Applies commands as the batch of one Raft entry.
fn apply_as_one_entry(store: &StateStore, commands: Vec<Command>) -> Vec<CommandResult> {
    let entry = ApplyEntry {
        log_index: NEXT_LOG_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        commands: commands.into_iter().map(|command| CommandEnvelope::new(command, 7).encode()).collect(),
        raft_meta: vec![42],
    };
    store.apply_batch(vec![entry]).unwrap().pop().unwrap()
}

fn apply_one(store: &StateStore, command: Command) -> CommandResult {
    apply(store, vec![command]).pop().unwrap()
}

fn account(address: &str) -> Command {
    Command::CreateAccount {
        address: address.into(),
        display_name: "Test".into(),
        password_hash: "$argon2id$test".into(),
        quota_bytes: None,
        state: AccountState::Active,
    }
}

fn deliver(blob: BlobId, size: u64, account_ids: &[u64]) -> Command {
    Command::Deliver {
        blob,
        stored_after_index: 0,
        size,
        internal_date_ms: 5,
        flags: vec![],
        summary: None,
        threading: None,
        targets: account_ids.iter().map(|&account_id| DeliveryTarget { account_id, mailbox_id: None }).collect(),
        outbound: None,
    }
}

/// Applies one command issued at `now_ms`.
fn apply_at(store: &StateStore, command: Command, now_ms: u64) -> CommandResult {
    let entry = ApplyEntry {
        log_index: NEXT_LOG_INDEX.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        commands: vec![CommandEnvelope::new(command, now_ms).encode()],
        raft_meta: vec![1],
    };
    store.apply_batch(vec![entry]).unwrap().pop().unwrap().pop().unwrap()
}

fn outbound_to(addresses: &[&str]) -> OutboundEnvelope {
    OutboundEnvelope {
        eight_bit: false,
        authenticated: true,
        return_path: "a@example.com".into(),
        envid: Some("env-1".into()),
        ret: Some(crate::Ret::Headers),
        recipients: addresses
            .iter()
            .map(|address| crate::OutboundRecipient {
                address: (*address).into(),
                orcpt: None,
                notify: crate::Notify::default(),
                relay: None,
            })
            .collect(),
    }
}

fn setup_two_accounts(store: &StateStore) -> (u64, u64) {
    let results = apply(
        store,
        vec![Command::CreateDomain { name: "example.com".into() }, account("a@example.com"), account("b@example.com")],
    );
    let ids: Vec<u64> = results
        .into_iter()
        .filter_map(|result| match result.unwrap() {
            Outcome::AccountCreated { account_id, .. } => Some(account_id),
            _ => None,
        })
        .collect();
    (ids[0], ids[1])
}

#[test]
fn commands_in_one_batch_see_each_other() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    assert_ne!(a, b);
    assert_eq!(store.account_by_address("a@example.com").unwrap().unwrap().id, a);
    assert_eq!(store.mailboxes(a).unwrap()[0].name, INBOX);
    assert_eq!(store.raft_meta().unwrap(), Some(vec![2]));
}

#[test]
fn commands_batched_in_one_entry_see_each_other_and_refuse_alone() {
    let (_dir, store) = store();
    let results = apply_as_one_entry(
        &store,
        vec![
            Command::CreateDomain { name: "example.com".into() },
            account("a@example.com"),
            account("a@example.com"),
            account("b@example.com"),
            Command::RemoveDomain { name: "example.com".into() },
        ],
    );
    assert!(matches!(results[1], Ok(Outcome::AccountCreated { .. })), "{results:?}");
    assert_eq!(results[2], Err(CommandError::exists("address", "a@example.com")), "a duplicate in the same batch");
    assert!(matches!(results[3], Ok(Outcome::AccountCreated { .. })));
    assert!(matches!(results[4], Err(CommandError::Conflict(_))), "the domain has accounts by now");
    assert_eq!(store.addresses(Some("example.com")).unwrap().len(), 2);
    assert_eq!(store.raft_meta().unwrap(), Some(vec![42]));
    // Account removal in a batch sees the messages delivered earlier in the same batch.
    let a = store.account_by_address("a@example.com").unwrap().unwrap().id;
    let blob = BlobId::of(b"in batch");
    let results = apply_as_one_entry(
        &store,
        vec![deliver(blob, 8, &[a]), Command::RemoveAccount { address: "a@example.com".into() }],
    );
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 0);
    assert!(store.messages(a, 1).unwrap().is_empty());
    assert!(store.mailbox_by_name(a, INBOX).unwrap().is_none());
}

#[test]
fn refusals_change_nothing_but_advance_the_applied_record() {
    let (_dir, store) = store();
    let results = apply(
        &store,
        vec![
            account("x@nowhere.test"),
            Command::CreateDomain { name: "d.test".into() },
            Command::CreateDomain { name: "d.test".into() },
        ],
    );
    assert_eq!(results[0], Err(CommandError::not_found("domain", "nowhere.test")));
    assert_eq!(results[1], Ok(Outcome::Done));
    assert_eq!(results[2], Err(CommandError::exists("domain", "d.test")));
    assert_eq!(store.domains().unwrap().len(), 1);
    assert_eq!(store.addresses(None).unwrap().len(), 0);
    assert_eq!(store.raft_meta().unwrap(), Some(vec![2]));
}

#[test]
fn deliver_assigns_uids_modseqs_and_counts_blob_references() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    let blob = BlobId::of(b"message one");
    let results = apply(&store, vec![deliver(blob, 11, &[a, b]), deliver(blob, 11, &[a])]);
    let Ok(Outcome::Delivered { results: first, .. }) = &results[0] else { panic!("{results:?}") };
    assert!(matches!(first[0], DeliveryResult::Stored { uid: 1, modseq: 2, .. }), "{first:?}");
    assert!(matches!(first[1], DeliveryResult::Stored { uid: 1, .. }));
    let Ok(Outcome::Delivered { results: second, .. }) = &results[1] else { panic!() };
    assert!(matches!(second[0], DeliveryResult::Stored { uid: 2, modseq: 3, .. }));
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 3);
    let account_a = store.account(a).unwrap().unwrap();
    assert_eq!((account_a.used_bytes, account_a.message_count), (22, 2));
    let inbox = store.mailbox_by_name(a, INBOX).unwrap().unwrap();
    assert_eq!((inbox.uid_next, inbox.highest_modseq, inbox.message_count), (3, 3, 2));
}

#[test]
fn quota_and_state_are_checked_per_target() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    apply(
        &store,
        vec![
            Command::UpdateAccount {
                address: "a@example.com".into(),
                display_name: None,
                password_hash: None,
                quota_bytes: Some(Some(10)),
                state: None,
            },
            Command::UpdateAccount {
                address: "b@example.com".into(),
                display_name: None,
                password_hash: None,
                quota_bytes: None,
                state: Some(AccountState::Disabled),
            },
        ],
    );
    let result = apply_one(&store, deliver(BlobId::of(b"big"), 11, &[a, b, 999]));
    assert_eq!(
        result,
        Ok(Outcome::Delivered {
            results: vec![DeliveryResult::OverQuota, DeliveryResult::NotReceiving, DeliveryResult::NoSuchMailbox],
            queue_id: None
        })
    );
    assert_eq!(store.blob_ref(&BlobId::of(b"big")).unwrap().unwrap_or(BlobRef::UNREFERENCED).count, 0);
}

#[test]
fn flags_and_unchanged_since_follow_condstore() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    let inbox = store.mailbox_by_name(a, INBOX).unwrap().unwrap().id;
    apply(&store, vec![deliver(BlobId::of(b"1"), 1, &[a]), deliver(BlobId::of(b"2"), 1, &[a])]);
    let set = |uids: Vec<u32>, action, flags: &[&str], unchanged_since| Command::SetFlags {
        account_id: a,
        mailbox_id: inbox,
        uids,
        action,
        flags: flags.iter().map(|flag| flag.to_string()).collect(),
        unchanged_since,
    };
    let result = apply_one(&store, set(vec![1, 2], FlagAction::Add, &["\\seen", "$Label"], None));
    assert_eq!(result, Ok(Outcome::FlagsSet { modseq: 4, modified: vec![] }));
    let messages = store.messages(a, inbox).unwrap();
    assert_eq!(messages[0].flags, vec!["$Label".to_string(), "\\Seen".to_string()]);
    assert_eq!(messages[0].modseq, 4);
    // UID 1 changed at modseq 4 > 3, so it fails the test; UID 2 too. Nothing changes.
    let result = apply_one(&store, set(vec![1, 2], FlagAction::Remove, &["\\Seen"], Some(3)));
    assert_eq!(result, Ok(Outcome::FlagsSet { modseq: 4, modified: vec![1, 2] }));
    let result = apply_one(&store, set(vec![2], FlagAction::Replace, &[], Some(4)));
    assert_eq!(result, Ok(Outcome::FlagsSet { modseq: 5, modified: vec![] }));
    assert!(store.messages(a, inbox).unwrap()[1].flags.is_empty());
}

#[test]
fn expunge_and_account_removal_release_blobs() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    let blob = BlobId::of(b"shared");
    apply_one(&store, deliver(blob, 6, &[a, b])).unwrap();
    let inbox_a = store.mailbox_by_name(a, INBOX).unwrap().unwrap().id;
    let result = apply_one(&store, Command::Expunge { account_id: a, mailbox_id: inbox_a, uids: vec![1, 1, 7] });
    assert_eq!(result, Ok(Outcome::Expunged { uids: vec![1] }));
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 1);
    assert_eq!(store.account(a).unwrap().unwrap().used_bytes, 0);
    apply_one(&store, Command::RemoveAccount { address: "b@example.com".into() }).unwrap();
    let record = store.blob_ref(&blob).unwrap().unwrap();
    assert_eq!((record.count, record.zero_since_ms.is_some()), (0, true));
    assert!(store.account(b).unwrap().is_none());
    assert!(store.resolve_address("b@example.com").unwrap().is_none());
    assert!(store.mailboxes(b).unwrap().is_empty());
    // The domain still has account a.
    assert!(matches!(
        apply_one(&store, Command::RemoveDomain { name: "example.com".into() }),
        Err(CommandError::Conflict(_))
    ));
}

#[test]
fn garbage_collection_claims_only_expired_unreferenced_blobs() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    let blob = BlobId::of(b"gc");
    apply_one(&store, deliver(blob, 2, &[a])).unwrap();
    let claim = Command::ClaimBlobForDeletion { blob, grace_ms: 0 };
    assert!(matches!(apply_one(&store, claim.clone()), Err(CommandError::Conflict(_))), "referenced");
    let inbox = store.mailbox_by_name(a, INBOX).unwrap().unwrap().id;
    apply_one(&store, Command::Expunge { account_id: a, mailbox_id: inbox, uids: vec![1] }).unwrap();
    assert_eq!(store.unreferenced_blobs(u64::MAX, 10).unwrap(), vec![blob]);
    assert!(
        matches!(
            apply_one(&store, Command::ClaimBlobForDeletion { blob, grace_ms: 1_000_000 }),
            Err(CommandError::Conflict(_))
        ),
        "within the grace period"
    );
    assert_eq!(apply_one(&store, claim.clone()), Ok(Outcome::Done));
    assert!(matches!(apply_one(&store, claim.clone()), Err(CommandError::Conflict(_))), "claimed twice");
    // A claimed blob stays listed until its deletion finishes.
    assert_eq!(store.unreferenced_blobs(0, 10).unwrap(), vec![blob]);
    // A delivery racing the deletion is refused rather than pointing at a vanishing body.
    let refused = apply_one(&store, deliver(blob, 2, &[a]));
    assert!(matches!(&refused, Err(CommandError::BlobCollected { .. })), "{refused:?}");
    assert_eq!(apply_one(&store, Command::ForgetBlob { blob }), Ok(Outcome::Done));
    let tombstone = store.blob_ref(&blob).unwrap().unwrap();
    let deleted_at = tombstone.deleted_at_index.expect("tombstone");
    assert!(store.unreferenced_blobs(u64::MAX, 10).unwrap().is_empty());

    // A copy stored before the deletion finished may be gone: refused.
    let stale = Command::Deliver {
        blob,
        stored_after_index: deleted_at - 1,
        size: 2,
        internal_date_ms: 1,
        flags: vec![],
        summary: None,
        threading: None,
        targets: vec![DeliveryTarget { account_id: a, mailbox_id: None }],
        outbound: None,
    };
    assert!(matches!(apply_one(&store, stale), Err(CommandError::BlobCollected { .. })));
    // A copy stored after it is safe, and clears the tombstone.
    let fresh = Command::Deliver {
        blob,
        stored_after_index: deleted_at,
        size: 2,
        internal_date_ms: 1,
        flags: vec![],
        summary: None,
        threading: None,
        targets: vec![DeliveryTarget { account_id: a, mailbox_id: None }],
        outbound: None,
    };
    assert!(matches!(apply_one(&store, fresh), Ok(Outcome::Delivered { .. })));
    let record = store.blob_ref(&blob).unwrap().unwrap();
    assert_eq!((record.count, record.deleted_at_index), (1, None));
}

#[test]
fn orphans_can_be_claimed_and_refused_deliveries_leave_collectable_bodies() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    // A body stored but never delivered has no record; the collector may claim it.
    let orphan = BlobId::of(b"orphan");
    assert_eq!(apply_one(&store, Command::ClaimBlobForDeletion { blob: orphan, grace_ms: 0 }), Ok(Outcome::Done));
    // A delivery whose every target refused still records the body as unreferenced.
    apply_one(
        &store,
        Command::UpdateAccount {
            address: "a@example.com".into(),
            display_name: None,
            password_hash: None,
            quota_bytes: Some(Some(1)),
            state: None,
        },
    )
    .unwrap();
    let refused = BlobId::of(b"too big");
    let result = apply_one(&store, deliver(refused, 100, &[a]));
    assert_eq!(result, Ok(Outcome::Delivered { results: vec![DeliveryResult::OverQuota], queue_id: None }));
    let record = store.blob_ref(&refused).unwrap().unwrap();
    assert_eq!(record.count, 0);
    assert!(record.zero_since_ms.is_some());
    assert!(store.unreferenced_blobs(u64::MAX, 10).unwrap().contains(&refused));
}

#[test]
fn domain_aliases_and_catch_alls_are_validated() {
    let (_dir, store) = store();
    setup_two_accounts(&store);
    let alias = |alias: &str, target: &str| Command::CreateDomainAlias { alias: alias.into(), target: target.into() };
    assert_eq!(apply_one(&store, alias("example.net", "example.com")), Ok(Outcome::Done));
    assert!(matches!(apply_one(&store, alias("example.org", "nowhere.test")), Err(CommandError::NotFound { .. })));
    assert!(matches!(apply_one(&store, alias("example.org", "example.net")), Err(CommandError::Invalid(_))));
    assert!(matches!(apply_one(&store, alias("example.net", "example.com")), Err(CommandError::AlreadyExists { .. })));
    assert!(
        matches!(apply_one(&store, account("x@example.net")), Err(CommandError::Invalid(_))),
        "no addresses in aliases"
    );
    let catch_all = |domain: &str, address: Option<&str>| Command::SetCatchAll {
        domain: domain.into(),
        address: address.map(str::to_owned),
    };
    assert_eq!(apply_one(&store, catch_all("example.com", Some("a@example.com"))), Ok(Outcome::Done));
    assert_eq!(store.domain("example.com").unwrap().unwrap().catch_all.as_deref(), Some("a@example.com"));
    assert!(matches!(
        apply_one(&store, catch_all("example.net", Some("a@example.com"))),
        Err(CommandError::Invalid(_))
    ));
    assert_eq!(apply_one(&store, catch_all("example.com", None)), Ok(Outcome::Done));
    assert_eq!(store.domain("example.com").unwrap().unwrap().catch_all, None);
    // The target cannot go while an alias points at it; the alias itself can.
    apply_one(&store, Command::RemoveAccount { address: "a@example.com".into() }).unwrap();
    apply_one(&store, Command::RemoveAccount { address: "b@example.com".into() }).unwrap();
    assert!(matches!(
        apply_one(&store, Command::RemoveDomain { name: "example.com".into() }),
        Err(CommandError::Conflict(_))
    ));
    assert_eq!(apply_one(&store, Command::RemoveDomain { name: "example.net".into() }), Ok(Outcome::Done));
    assert_eq!(apply_one(&store, Command::RemoveDomain { name: "example.com".into() }), Ok(Outcome::Done));
}

#[test]
fn leases_are_exclusive_until_released_or_expired() {
    let (_dir, store) = store();
    let acquire =
        |holder: &str, until_ms| Command::AcquireLease { resource: "pop3:1".into(), holder: holder.into(), until_ms };
    // `apply` issues commands at 1_000 ms.
    assert_eq!(apply_one(&store, acquire("node1/a", 5_000)), Ok(Outcome::Done));
    assert!(matches!(apply_one(&store, acquire("node2/b", 9_000)), Err(CommandError::Conflict(_))));
    assert_eq!(apply_one(&store, acquire("node1/a", 9_000)), Ok(Outcome::Done), "the holder renews");
    let release = |holder: &str| Command::ReleaseLease { resource: "pop3:1".into(), holder: holder.into() };
    assert!(matches!(apply_one(&store, release("node2/b")), Err(CommandError::Conflict(_))));
    assert_eq!(apply_one(&store, release("node1/a")), Ok(Outcome::Done));
    assert_eq!(apply_one(&store, acquire("node2/b", 2_000)), Ok(Outcome::Done));
    // An expired lease (until 500 < now 1000) can be taken over.
    assert_eq!(apply_one(&store, acquire("node2/b", 500)), Ok(Outcome::Done));
    assert_eq!(apply_one(&store, acquire("node3/c", 5_000)), Ok(Outcome::Done), "expired lease taken over");
}

#[test]
fn outbound_queue_claims_records_and_removes_entries() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    let blob = BlobId::of(b"outbound");
    let mut command = deliver(blob, 8, &[a]);
    if let Command::Deliver { outbound, .. } = &mut command {
        *outbound = Some(outbound_to(&["x@remote.test", "y@remote.test"]));
    }
    let Ok(Outcome::Delivered { results, queue_id: Some(id) }) = apply_at(&store, command, 10_000) else {
        panic!("not queued")
    };
    assert!(matches!(results[0], DeliveryResult::Stored { .. }));
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 2, "the local copy and the queue entry");
    assert_eq!(store.queue_length().unwrap(), 1);
    assert_eq!(store.due_outbound(9_999, 10).unwrap(), Vec::<u64>::new(), "not due before it was queued");
    assert_eq!(store.due_outbound(10_000, 10).unwrap(), vec![id]);

    let claim = |holder: &str, until_ms| Command::ClaimOutbound { ids: vec![id], holder: holder.into(), until_ms };
    assert_eq!(apply_at(&store, claim("n1", 70_000), 11_000), Ok(Outcome::OutboundClaimed { ids: vec![id] }));
    assert_eq!(apply_at(&store, claim("n2", 80_000), 12_000), Ok(Outcome::OutboundClaimed { ids: vec![] }));
    assert_eq!(
        apply_at(&store, claim("n1", 70_000), 12_000),
        Ok(Outcome::OutboundClaimed { ids: vec![id] }),
        "renewal"
    );
    assert!(store.due_outbound(69_999, 10).unwrap().is_empty(), "leased entries are not due");

    // One recipient delivered, one deferred to 100 s.
    let record = |holder: &str, results, next_attempt_ms| Command::RecordAttempt {
        id,
        holder: holder.into(),
        results,
        next_attempt_ms,
        delay_notified: false,
    };
    let first = vec![
        AttemptResult { index: 0, status: RecipientStatus::Delivered { reply: "250 ok".into() } },
        AttemptResult { index: 1, status: RecipientStatus::Pending { last_reply: Some("451 later".into()) } },
    ];
    assert!(matches!(apply_at(&store, record("n2", first.clone(), 100_000), 13_000), Err(CommandError::Conflict(_))));
    assert_eq!(apply_at(&store, record("n1", first, 100_000), 13_000), Ok(Outcome::Done));
    let entry = store.queue_entry(id).unwrap().unwrap();
    assert_eq!((entry.attempts, entry.lease.is_none(), entry.pending().count()), (1, true, 1));
    assert!(store.due_outbound(99_999, 10).unwrap().is_empty());
    assert_eq!(store.due_outbound(100_000, 10).unwrap(), vec![id]);

    // A worker that dies holding the lease: after it lapses another takes over.
    assert_eq!(apply_at(&store, claim("n1", 160_000), 100_000), Ok(Outcome::OutboundClaimed { ids: vec![id] }));
    assert_eq!(apply_at(&store, claim("n2", 300_000), 150_000), Ok(Outcome::OutboundClaimed { ids: vec![] }));
    assert_eq!(apply_at(&store, claim("n2", 300_000), 160_000), Ok(Outcome::OutboundClaimed { ids: vec![id] }));
    let last = vec![
        // A late result for a final recipient does not change it.
        AttemptResult { index: 0, status: RecipientStatus::Failed { reply: "550 no".into() } },
        AttemptResult { index: 1, status: RecipientStatus::Failed { reply: "550 no such user".into() } },
    ];
    assert_eq!(apply_at(&store, record("n2", last, 400_000), 170_000), Ok(Outcome::Done));
    assert_eq!(store.queue_entry(id).unwrap(), None, "every recipient final: removed");
    assert!(store.due_outbound(u64::MAX, 10).unwrap().is_empty(), "due index cleaned up");
    assert_eq!(store.queue_length().unwrap(), 0);
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 1, "the queue's reference is released");
}

#[test]
fn unknown_forwards_are_validated_and_go_with_their_domain() {
    let (_dir, store) = store();
    let set =
        |target: Option<&str>| Command::SetUnknownForward { domain: "d.test".into(), target: target.map(Into::into) };
    assert!(matches!(apply_one(&store, set(Some("old:25"))), Err(CommandError::NotFound { .. })));
    apply_one(&store, Command::CreateDomain { name: "d.test".into() }).unwrap();
    for bad in ["old", "old:0", ":25", "old:99999"] {
        assert!(matches!(apply_one(&store, set(Some(bad))), Err(CommandError::Invalid(_))), "{bad}");
    }
    assert_eq!(apply_one(&store, set(Some("old.d.test:2525"))), Ok(Outcome::Done));
    assert_eq!(store.unknown_forward("d.test").unwrap().as_deref(), Some("old.d.test:2525"));
    assert_eq!(apply_one(&store, set(None)), Ok(Outcome::Done));
    assert_eq!(store.unknown_forward("d.test").unwrap(), None);
    apply_one(&store, set(Some("old.d.test:2525"))).unwrap();
    apply_one(&store, Command::RemoveDomain { name: "d.test".into() }).unwrap();
    assert_eq!(store.unknown_forward("d.test").unwrap(), None, "gone with the domain");
}

#[test]
fn dkim_keys_rotate_with_one_active_key_per_domain() {
    let (_dir, store) = store();
    let key = |selector: &str, active| crate::DkimKey {
        selector: selector.into(),
        algorithm: crate::DkimAlgorithm::Ed25519,
        private_key: vec![1],
        public_key: vec![2],
        created_ms: 1,
        active,
    };
    let add = |selector: &str, active| Command::AddDkimKey { domain: "d.test".into(), key: key(selector, active) };
    assert!(matches!(apply_one(&store, add("s1", false)), Err(CommandError::NotFound { .. })));
    apply_one(&store, Command::CreateDomain { name: "d.test".into() }).unwrap();
    assert_eq!(apply_one(&store, add("s1", false)), Ok(Outcome::Done));
    assert!(store.dkim_keys("d.test").unwrap()[0].active, "the first key signs at once");
    assert!(matches!(apply_one(&store, add("s1", false)), Err(CommandError::AlreadyExists { .. })));
    assert!(matches!(apply_one(&store, add("bad selector", false)), Err(CommandError::Invalid(_))));
    assert_eq!(apply_one(&store, add("s2", false)), Ok(Outcome::Done));
    let active = |store: &StateStore| -> Vec<String> {
        store.dkim_keys("d.test").unwrap().into_iter().filter(|k| k.active).map(|k| k.selector).collect()
    };
    assert_eq!(active(&store), vec!["s1"], "a later key waits for its DNS record");
    let activate = Command::ActivateDkimKey { domain: "d.test".into(), selector: "s2".into() };
    assert_eq!(apply_one(&store, activate), Ok(Outcome::Done));
    assert_eq!(active(&store), vec!["s2"]);
    assert_eq!(apply_one(&store, add("s3", true)), Ok(Outcome::Done));
    assert_eq!(active(&store), vec!["s3"]);
    let remove = Command::RemoveDkimKey { domain: "d.test".into(), selector: "s1".into() };
    assert_eq!(apply_one(&store, remove), Ok(Outcome::Done));
    assert_eq!(store.dkim_keys("d.test").unwrap().len(), 2);
    apply_one(&store, Command::RemoveDomain { name: "d.test".into() }).unwrap();
    assert!(store.dkim_keys("d.test").unwrap().is_empty(), "keys go with their domain");
}

#[test]
fn the_due_index_is_compacted_after_many_deletes_and_stays_correct() {
    let (_dir, store) = store();
    let mut ids = Vec::new();
    for chunk in 0..6 {
        let commands: Vec<Command> = (0..1_000)
            .map(|n| {
                let mut command = deliver(BlobId::of(format!("{chunk}-{n}").as_bytes()), 1, &[]);
                if let Command::Deliver { outbound, .. } = &mut command {
                    *outbound = Some(outbound_to(&["x@remote.test"]));
                }
                command
            })
            .collect();
        for result in apply_as_one_entry(&store, commands) {
            let Ok(Outcome::Delivered { queue_id: Some(id), .. }) = result else { panic!("{result:?}") };
            ids.push(id);
        }
    }
    assert!(!store.queue_index_wants_compaction());
    // Two index deletes per entry: the claim moves its key, the removal drops it.
    let (gone, kept) = ids.split_at(5_001);
    let claim = Command::ClaimOutbound { ids: gone.to_vec(), holder: "n1".into(), until_ms: 5_000 };
    assert!(matches!(apply_at(&store, claim, 2_000), Ok(Outcome::OutboundClaimed { ids }) if ids.len() == 5_001));
    apply_as_one_entry(&store, gone.iter().map(|&id| Command::RemoveOutbound { id }).collect());
    assert!(store.queue_index_wants_compaction());
    assert!(store.compact_queue_index().unwrap());
    assert!(!store.queue_index_wants_compaction());
    assert!(!store.compact_queue_index().unwrap(), "nothing to do until deletes pile up again");
    assert_eq!(store.due_outbound(10_000, 10_000).unwrap(), kept.to_vec());
    assert_eq!(store.queue_length().unwrap(), kept.len() as u64);
}

#[test]
fn outbound_queue_retry_and_remove() {
    let (_dir, store) = store();
    let blob = BlobId::of(b"only remote");
    let mut command = deliver(blob, 11, &[]);
    if let Command::Deliver { outbound, .. } = &mut command {
        *outbound = Some(outbound_to(&["x@remote.test"]));
    }
    let Ok(Outcome::Delivered { queue_id: Some(id), .. }) = apply_at(&store, command, 1_000) else { panic!() };
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 1);
    let claimed =
        apply_at(&store, Command::ClaimOutbound { ids: vec![id], holder: "n1".into(), until_ms: 5_000 }, 2_000);
    assert_eq!(claimed, Ok(Outcome::OutboundClaimed { ids: vec![id] }));
    let deferred = Command::RecordAttempt {
        id,
        holder: "n1".into(),
        results: vec![],
        next_attempt_ms: 1_000_000,
        delay_notified: true,
    };
    assert_eq!(apply_at(&store, deferred, 3_000), Ok(Outcome::Done));
    assert!(store.queue_entry(id).unwrap().unwrap().delay_notified);
    assert!(store.due_outbound(10_000, 10).unwrap().is_empty());
    assert_eq!(apply_at(&store, Command::RetryOutbound { ids: vec![id] }, 10_000), Ok(Outcome::Done));
    assert_eq!(store.due_outbound(10_000, 10).unwrap(), vec![id]);
    assert_eq!(store.outbound_queue(0, 10).unwrap().len(), 1);
    assert_eq!(apply_at(&store, Command::RemoveOutbound { id }, 11_000), Ok(Outcome::Done));
    assert!(store.outbound_queue(0, 10).unwrap().is_empty());
    assert!(store.due_outbound(u64::MAX, 10).unwrap().is_empty());
    let record = store.blob_ref(&blob).unwrap().unwrap();
    assert_eq!((record.count, record.zero_since_ms), (0, Some(11_000)), "the body becomes garbage");
    assert!(matches!(apply_at(&store, Command::RemoveOutbound { id }, 12_000), Err(CommandError::NotFound { .. })));
}

#[test]
fn checkpoint_restores_into_a_new_generation() {
    let (dir, store) = store();
    setup_two_accounts(&store);
    let checkpoint = dir.path().join("state").join("snapshot-staging");
    assert_eq!(store.checkpoint(&checkpoint).unwrap(), Some(vec![2]));
    apply_one(&store, Command::CreateDomain { name: "later.test".into() }).unwrap();
    assert_eq!(store.domains().unwrap().len(), 2);
    store.restore(&checkpoint).unwrap();
    assert_eq!(store.domains().unwrap().len(), 1);
    assert_eq!(store.raft_meta().unwrap(), Some(vec![2]));
    drop(store);
    let reopened = StateStore::open(dir.path().join("state")).unwrap();
    assert_eq!(reopened.domains().unwrap().len(), 1);
    assert!(reopened.account_by_address("a@example.com").unwrap().is_some());
}

#[test]
fn a_command_from_a_newer_release_stops_apply() {
    let (_dir, store) = store();
    let mut bytes = CommandEnvelope::new(Command::CreateDomain { name: "x.test".into() }, 1).encode();
    bytes[0..2].copy_from_slice(&u16::MAX.to_be_bytes());
    let good = CommandEnvelope::new(Command::CreateDomain { name: "y.test".into() }, 1).encode();
    let entry = ApplyEntry { log_index: 1, commands: vec![good, bytes], raft_meta: vec![1] };
    let error = store.apply_batch(vec![entry]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt);
    assert_eq!(store.raft_meta().unwrap(), None, "nothing of the entry applied");
    assert!(store.domains().unwrap().is_empty(), "the entry is all or nothing");
}

fn mailbox_id(store: &StateStore, account_id: u64, name: &str) -> u64 {
    store.mailbox_by_name(account_id, name).unwrap().unwrap_or_else(|| panic!("mailbox {name} missing")).id
}

fn names(store: &StateStore, account_id: u64) -> Vec<String> {
    let mut names: Vec<String> = store.mailboxes(account_id).unwrap().into_iter().map(|m| m.name).collect();
    names.sort();
    names
}

#[test]
fn create_makes_superiors_and_rename_moves_inferiors() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    let create = |name: &str| Command::CreateMailbox { account_id: a, name: name.into(), special_use: None };
    apply_one(&store, create("work/2026/q4")).unwrap();
    assert_eq!(names(&store, a), ["INBOX", "work", "work/2026", "work/2026/q4"]);
    assert!(matches!(apply_one(&store, create("work")), Err(CommandError::AlreadyExists { .. })));
    assert!(matches!(apply_one(&store, create("a//b")), Err(CommandError::Invalid(_))));
    let q4 = mailbox_id(&store, a, "work/2026/q4");

    let rename = |from: &str, to: &str| Command::RenameMailbox { account_id: a, from: from.into(), to: to.into() };
    apply_one(&store, rename("work", "archive/old")).unwrap();
    assert_eq!(names(&store, a), ["INBOX", "archive", "archive/old", "archive/old/2026", "archive/old/2026/q4"]);
    assert_eq!(mailbox_id(&store, a, "archive/old/2026/q4"), q4, "a rename keeps the mailbox (and its UIDs)");
    assert!(matches!(apply_one(&store, rename("archive", "archive/x")), Err(CommandError::Invalid(_))));
    assert!(matches!(apply_one(&store, rename("nope", "x")), Err(CommandError::NotFound { .. })));
    assert!(matches!(apply_one(&store, rename("archive", "INBOX")), Err(CommandError::AlreadyExists { .. })));
}

#[test]
fn renaming_inbox_moves_its_messages_and_leaves_an_empty_inbox() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    apply_one(&store, deliver(BlobId::of(b"m1"), 10, &[a])).unwrap();
    let inbox = mailbox_id(&store, a, INBOX);
    apply_one(&store, Command::RenameMailbox { account_id: a, from: INBOX.into(), to: "old-inbox".into() }).unwrap();
    assert_eq!(mailbox_id(&store, a, "old-inbox"), inbox);
    assert_eq!(store.messages(a, inbox).unwrap().len(), 1);
    let new_inbox = store.mailbox_by_name(a, INBOX).unwrap().unwrap();
    assert_ne!(new_inbox.id, inbox);
    assert_ne!(new_inbox.uid_validity, store.mailbox(a, inbox).unwrap().unwrap().uid_validity);
    assert!(store.messages(a, new_inbox.id).unwrap().is_empty());
}

#[test]
fn delete_removes_messages_but_not_inferiors_and_never_inbox() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    apply_one(&store, Command::CreateMailbox { account_id: a, name: "x/y".into(), special_use: None }).unwrap();
    let x = mailbox_id(&store, a, "x");
    let blob = BlobId::of(b"m1");
    let copy = Command::Deliver {
        blob,
        stored_after_index: 0,
        size: 10,
        internal_date_ms: 5,
        flags: vec![],
        summary: None,
        threading: None,
        targets: vec![DeliveryTarget { account_id: a, mailbox_id: Some(x) }],
        outbound: None,
    };
    apply_one(&store, copy).unwrap();
    assert_eq!(store.account(a).unwrap().unwrap().used_bytes, 10);
    apply_one(&store, Command::DeleteMailbox { account_id: a, name: "x".into() }).unwrap();
    assert_eq!(names(&store, a), ["INBOX", "x/y"]);
    let account = store.account(a).unwrap().unwrap();
    assert_eq!((account.used_bytes, account.message_count), (0, 0));
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 0);
    let refused = apply_one(&store, Command::DeleteMailbox { account_id: a, name: INBOX.into() });
    assert!(matches!(refused, Err(CommandError::Invalid(_))));
}

#[test]
fn copy_and_move_share_blobs_assign_uids_and_respect_quota() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    for body in [b"one".as_slice(), b"two", b"three"] {
        apply_one(&store, deliver(BlobId::of(body), 100, &[a])).unwrap();
    }
    apply_one(&store, Command::CreateMailbox { account_id: a, name: "Archive".into(), special_use: None }).unwrap();
    let (inbox, archive) = (mailbox_id(&store, a, INBOX), mailbox_id(&store, a, "Archive"));
    let copy = |uids: Vec<u32>, remove_source| Command::CopyMessages {
        account_id: a,
        from_mailbox: inbox,
        uids,
        to_mailbox: archive,
        remove_source,
    };
    let Outcome::Copied { source_uids, new_uids, uid_validity } =
        apply_one(&store, copy(vec![3, 1, 9], false)).unwrap()
    else {
        panic!("copy outcome")
    };
    assert_eq!((source_uids, new_uids), (vec![1, 3], vec![1, 2]));
    assert_eq!(uid_validity, store.mailbox(a, archive).unwrap().unwrap().uid_validity);
    assert_eq!(store.blob_ref(&BlobId::of(b"one")).unwrap().unwrap().count, 2);
    assert_eq!(store.account(a).unwrap().unwrap().used_bytes, 500);

    let Outcome::Copied { new_uids, .. } = apply_one(&store, copy(vec![2], true)).unwrap() else { panic!() };
    assert_eq!(new_uids, vec![3]);
    let inbox_uids: Vec<u32> = store.messages(a, inbox).unwrap().iter().map(|m| m.uid).collect();
    assert_eq!(inbox_uids, vec![1, 3]);
    assert_eq!(store.account(a).unwrap().unwrap().used_bytes, 500, "a move does not change usage");
    assert_eq!(store.blob_ref(&BlobId::of(b"two")).unwrap().unwrap().count, 1);

    let quota = Some(Some(550));
    apply_one(
        &store,
        Command::UpdateAccount {
            address: "a@example.com".into(),
            display_name: None,
            password_hash: None,
            quota_bytes: quota,
            state: None,
        },
    )
    .unwrap();
    assert!(matches!(apply_one(&store, copy(vec![1], false)), Err(CommandError::OverQuota { .. })));
    apply_one(&store, copy(vec![1], true)).unwrap();
}

#[test]
fn subscriptions_recent_claims_and_change_listener() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    store.set_change_listener(Arc::new(move |accounts: &[u64]| recorder.lock().unwrap().push(accounts.to_vec())));
    let subscribe = |name: &str, subscribed| Command::SetSubscription { account_id: a, name: name.into(), subscribed };
    apply(&store, vec![subscribe("Sent", true), subscribe("gone", true), subscribe("gone", false)]);
    assert_eq!(store.subscriptions(a).unwrap(), ["Sent"]);
    assert!(store.subscriptions(b).unwrap().is_empty());
    assert!(seen.lock().unwrap().is_empty(), "subscriptions change no mailbox");

    let before = store.last_change_id(a).unwrap();
    apply_one(&store, deliver(BlobId::of(b"m"), 1, &[a, b])).unwrap();
    assert_eq!(seen.lock().unwrap().last().unwrap(), &vec![a.min(b), a.max(b)]);
    let after = store.last_change_id(a).unwrap();
    assert!(after > before);
    assert_eq!(store.changes_since(a, before).unwrap().last().unwrap().0, after);
    assert_eq!(store.last_change_id(999).unwrap(), 0);
    let inbox = mailbox_id(&store, a, INBOX);
    let claim = Command::ClaimRecent { account_id: a, mailbox_id: inbox };
    assert_eq!(apply_one(&store, claim.clone()).unwrap(), Outcome::RecentClaimed { first_recent_uid: 1 });
    assert_eq!(apply_one(&store, claim).unwrap(), Outcome::RecentClaimed { first_recent_uid: 2 });
}

#[test]
fn summaries_are_kept_once_per_blob_and_forgotten_with_it() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    let blob = BlobId::of(b"body");
    let with_summary = |summary: &[u8], account_id| Command::Deliver {
        blob,
        stored_after_index: 0,
        size: 4,
        internal_date_ms: 5,
        flags: vec![],
        summary: Some(summary.to_vec()),
        threading: None,
        targets: vec![DeliveryTarget { account_id, mailbox_id: None }],
        outbound: None,
    };
    apply_one(&store, with_summary(b"first", a)).unwrap();
    apply_one(&store, with_summary(b"second", b)).unwrap();
    assert_eq!(store.summary(&blob).unwrap().as_deref(), Some(b"first".as_slice()));
    // A refused delivery stores no summary.
    let other = BlobId::of(b"other");
    let mut refused = with_summary(b"x", 999);
    if let Command::Deliver { blob, .. } = &mut refused {
        *blob = other;
    }
    apply_one(&store, refused).unwrap();
    assert_eq!(store.summary(&other).unwrap(), None);
    for account in [a, b] {
        let inbox = mailbox_id(&store, account, INBOX);
        apply_one(&store, Command::Expunge { account_id: account, mailbox_id: inbox, uids: vec![1] }).unwrap();
    }
    apply_one(&store, Command::ClaimBlobForDeletion { blob, grace_ms: 0 }).unwrap();
    apply_one(&store, Command::ForgetBlob { blob }).unwrap();
    assert_eq!(store.summary(&blob).unwrap(), None);
}

#[test]
fn expunges_are_indexed_by_modseq_per_mailbox() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    for body in [b"1".as_slice(), b"2", b"3", b"4"] {
        apply_one(&store, deliver(BlobId::of(body), 1, &[a])).unwrap();
    }
    let inbox = mailbox_id(&store, a, INBOX);
    let before = store.mailbox(a, inbox).unwrap().unwrap().highest_modseq;
    apply_one(&store, Command::Expunge { account_id: a, mailbox_id: inbox, uids: vec![2] }).unwrap();
    let middle = store.mailbox(a, inbox).unwrap().unwrap().highest_modseq;
    apply_one(&store, Command::Expunge { account_id: a, mailbox_id: inbox, uids: vec![4, 1] }).unwrap();
    let mut since_before = store.expunged_since(a, inbox, before).unwrap();
    since_before.sort_unstable();
    assert_eq!(since_before, [1, 2, 4]);
    let mut since_middle = store.expunged_since(a, inbox, middle).unwrap();
    since_middle.sort_unstable();
    assert_eq!(since_middle, [1, 4]);
    apply_one(&store, Command::CreateMailbox { account_id: a, name: "x".into(), special_use: None }).unwrap();
    assert!(store.expunged_since(a, mailbox_id(&store, a, "x"), 0).unwrap().is_empty());
}

#[test]
fn replies_join_their_thread_per_account_whatever_the_arrival_order() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    let deliver_threaded = |body: &[u8], id: &str, references: &[&str], accounts: &[u64]| {
        let Command::Deliver { blob, stored_after_index, size, internal_date_ms, flags, summary, targets, .. } =
            deliver(BlobId::of(body), 1, accounts)
        else {
            unreachable!()
        };
        let threading = Some(Threading {
            message_id: Some(id.into()),
            references: references.iter().map(|r| r.to_string()).collect(),
        });
        let command = Command::Deliver {
            blob,
            stored_after_index,
            size,
            internal_date_ms,
            flags,
            summary,
            threading,
            targets,
            outbound: None,
        };
        apply_one(&store, command).unwrap();
    };
    let thread_of = |account: u64, uid: u32| {
        store.message(account, mailbox_id(&store, account, INBOX), uid).unwrap().unwrap().thread_id
    };
    deliver_threaded(b"root", "<root@x>", &[], &[a]);
    deliver_threaded(b"other", "<other@x>", &[], &[a]);
    deliver_threaded(b"reply", "<reply@x>", &["<root@x>"], &[a, b]);
    deliver_threaded(b"deep", "<deep@x>", &["<root@x>", "<reply@x>"], &[a]);
    assert_ne!(thread_of(a, 1), 0);
    assert_ne!(thread_of(a, 1), thread_of(a, 2), "unrelated messages are separate threads");
    assert_eq!(thread_of(a, 3), thread_of(a, 1));
    assert_eq!(thread_of(a, 4), thread_of(a, 1));
    // b got the reply first: when the root arrives later it joins the reply's thread.
    deliver_threaded(b"root", "<root@x>", &[], &[b]);
    assert_eq!(thread_of(b, 2), thread_of(b, 1));
    assert_ne!(thread_of(b, 1), thread_of(a, 1), "thread ids are per account");
}

#[test]
fn change_logs_are_bounded_and_say_how_far_they_were_trimmed() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    assert_eq!(store.change_floor(a).unwrap(), 0);
    let first = store.last_change_id(a).unwrap();
    for n in 0..20u32 {
        apply_one(&store, deliver(BlobId::of(&n.to_be_bytes()), 1, &[a])).unwrap();
    }
    let kept = store.changes_since(a, 0).unwrap();
    assert!(kept.len() as u64 <= 2 * CHANGE_LOG_RETAIN && kept.len() as u64 >= CHANGE_LOG_RETAIN, "{}", kept.len());
    let floor = store.change_floor(a).unwrap();
    assert!(floor > first, "the floor moved past the oldest changes");
    assert!(kept.iter().all(|(id, _)| *id > floor));
    assert_eq!(kept.last().unwrap().0, store.last_change_id(a).unwrap(), "the newest change is kept");
    // Another account's log is untouched.
    assert_eq!(store.change_floor(b).unwrap(), 0);
    assert!(!store.changes_since(b, 0).unwrap().is_empty());
}

#[test]
fn unseen_and_deleted_counters_match_the_messages() {
    let (_dir, store) = store();
    let (a, _) = setup_two_accounts(&store);
    for n in 0..6u32 {
        let mut command = deliver(BlobId::of(&n.to_be_bytes()), 1, &[a]);
        if let Command::Deliver { flags, .. } = &mut command
            && n % 2 == 0
        {
            *flags = vec!["\\seen".into()];
        }
        apply_one(&store, command).unwrap();
    }
    apply_one(&store, Command::CreateMailbox { account_id: a, name: "Other".into(), special_use: None }).unwrap();
    let (inbox, other) = (mailbox_id(&store, a, INBOX), mailbox_id(&store, a, "Other"));
    let set = |uids: Vec<u32>, action, flags: &[&str]| Command::SetFlags {
        account_id: a,
        mailbox_id: inbox,
        uids,
        action,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        unchanged_since: None,
    };
    apply_one(&store, set(vec![1, 2, 3], FlagAction::Add, &["\\Deleted", "\\Seen"])).unwrap();
    apply_one(&store, set(vec![3, 4], FlagAction::Remove, &["\\Seen"])).unwrap();
    apply_one(&store, set(vec![6], FlagAction::Replace, &["$label"])).unwrap();
    let copy = Command::CopyMessages {
        account_id: a,
        from_mailbox: inbox,
        uids: vec![1, 4],
        to_mailbox: other,
        remove_source: false,
    };
    apply_one(&store, copy).unwrap();
    apply_one(&store, Command::Expunge { account_id: a, mailbox_id: inbox, uids: vec![2, 5] }).unwrap();
    for mailbox in [inbox, other] {
        let record = store.mailbox(a, mailbox).unwrap().unwrap();
        let messages = store.messages(a, mailbox).unwrap();
        let unseen = messages.iter().filter(|m| !m.flags.iter().any(|f| f == "\\Seen")).count() as u64;
        let deleted = messages.iter().filter(|m| m.flags.iter().any(|f| f == "\\Deleted")).count() as u64;
        assert_eq!((record.unseen_count, record.deleted_count), (unseen, deleted), "mailbox {mailbox}");
        assert!(unseen > 0 && deleted > 0, "the test exercises both counters");
    }
}

#[test]
fn messages_between_reads_one_uid_range() {
    let (_dir, store) = store();
    let (a, b) = setup_two_accounts(&store);
    for n in 0..6u32 {
        apply_one(&store, deliver(BlobId::of(&n.to_be_bytes()), 1, &[a, b])).unwrap();
    }
    let inbox = mailbox_id(&store, a, INBOX);
    apply_one(&store, Command::Expunge { account_id: a, mailbox_id: inbox, uids: vec![3] }).unwrap();
    let uids = |first, last| -> Vec<u32> {
        store.messages_between(a, inbox, first, last).unwrap().iter().map(|m| m.uid).collect()
    };
    assert_eq!(uids(2, 5), [2, 4, 5]);
    assert_eq!(uids(6, u32::MAX), [6], "stops at the mailbox's end, not in the next one");
    assert!(uids(7, 9).is_empty());
}

#[test]
fn join_tokens_admit_one_node_each_with_fresh_ids() {
    let (_dir, store) = store();
    let hash = [7u8; 32];
    let token = JoinToken { learner: true, expires_ms: 10_000 };
    apply_at(&store, Command::AddJoinToken { hash, token }, 1_000).unwrap();
    let enrol =
        |now, taken: Vec<u64>| apply_at(&store, Command::EnrolNode { hash, addr: "10.0.0.2:7443".into(), taken }, now);
    // Ids in the membership are skipped; node 1 is the founder and never handed out.
    assert_eq!(enrol(2_000, vec![1, 2]).unwrap(), Outcome::NodeEnrolled { node_id: 3, learner: true });
    assert!(store.enrolled_node(3).unwrap().is_some_and(|node| node.learner && node.addr == "10.0.0.2:7443"));
    // Spent.
    assert!(matches!(enrol(2_000, vec![1]), Err(CommandError::Invalid(_))));
    // Expired tokens are refused, and pruned when the next token is added.
    let short = JoinToken { learner: false, expires_ms: 5_000 };
    apply_at(&store, Command::AddJoinToken { hash: [8; 32], token: short }, 3_000).unwrap();
    let late = apply_at(&store, Command::EnrolNode { hash: [8; 32], addr: "x:1".into(), taken: vec![] }, 6_000);
    assert!(matches!(late, Err(CommandError::Invalid(_))));
    let fresh = JoinToken { learner: false, expires_ms: 100_000 };
    apply_at(&store, Command::AddJoinToken { hash: [9; 32], token: fresh }, 7_000).unwrap();
    let next = apply_at(&store, Command::EnrolNode { hash: [9; 32], addr: "x:1".into(), taken: vec![] }, 7_000);
    assert_eq!(next.unwrap(), Outcome::NodeEnrolled { node_id: 4, learner: false });
}

#[test]
fn a_joining_node_that_asks_again_with_its_key_gets_the_same_id() {
    let (_dir, store) = store();
    let hash = [7u8; 32];
    apply_at(&store, Command::AddJoinToken { hash, token: JoinToken { learner: false, expires_ms: 10_000 } }, 1_000)
        .unwrap();
    let enrol = |key: [u8; 32], now| {
        let command = Command::EnrolNodeKey { hash, addr: "10.0.0.2:7443".into(), taken: vec![1], key };
        apply_at(&store, command, now)
    };
    let enrolled = Outcome::NodeEnrolled { node_id: 2, learner: false };
    assert_eq!(enrol([1; 32], 2_000).unwrap(), enrolled);
    // Its answer was lost: the same key gets the same id, and no new one is handed out.
    assert_eq!(enrol([1; 32], 3_000).unwrap(), enrolled);
    // Another key (someone who copied the token) does not, nor the old command.
    assert!(matches!(enrol([2; 32], 3_000), Err(CommandError::Invalid(_))));
    let old = apply_at(&store, Command::EnrolNode { hash, addr: "x:1".into(), taken: vec![] }, 3_000);
    assert!(matches!(old, Err(CommandError::Invalid(_))));
    // Not once the token would have expired, nor for a revoked node.
    assert!(matches!(enrol([1; 32], 10_000), Err(CommandError::Invalid(_))));
    apply_at(&store, Command::RevokeNode { node_id: 2 }, 4_000).unwrap();
    assert!(matches!(enrol([1; 32], 5_000), Err(CommandError::Invalid(_))));
    // Spent tokens are pruned once expired, when the next token is added.
    let next = JoinToken { learner: false, expires_ms: 100_000 };
    apply_at(&store, Command::AddJoinToken { hash: [9; 32], token: next }, 20_000).unwrap();
    let spent: Option<SpentJoinToken> = get(&store.db(), ks::CLUSTER, &ks::spent_join_token_key(&hash)).unwrap();
    assert_eq!(spent, None);
}

#[test]
fn the_first_cluster_ca_stays() {
    let (_dir, store) = store();
    let ca = |name: &str| ClusterCa { name: name.into(), cert_pem: "c".into(), key_pem: "k".into() };
    apply_at(&store, Command::SetClusterCa { ca: ca("first") }, 1).unwrap();
    apply_at(&store, Command::SetClusterCa { ca: ca("second") }, 2).unwrap();
    assert_eq!(store.cluster_ca().unwrap().unwrap().name, "first");
}

#[test]
fn greylisting_triplets_move_in_the_expiry_index_and_idle_ones_are_pruned() {
    let (_dir, store) = store();
    let (a, b) = ([1u8; 16], [2u8; 16]);
    let seen = |first: u64, last: u64| GreylistEntry { first_seen_ms: first, passed_ms: None, last_seen_ms: last };
    let record = |triplet, entry, previous| Command::RecordGreylist { triplet, entry, previous };
    apply_one(&store, record(a, seen(1_000, 1_000), None)).unwrap();
    apply_one(&store, record(b, seen(2_000, 2_000), None)).unwrap();
    // `a` passes later: its index entry moves, so pruning before 5,000 keeps it.
    let passed = GreylistEntry { first_seen_ms: 1_000, passed_ms: Some(9_000), last_seen_ms: 9_000 };
    apply_one(&store, record(a, passed, Some(seen(1_000, 1_000)))).unwrap();
    // A node that read stale state (nothing yet) cannot undo the pass.
    apply_one(&store, record(a, seen(9_500, 9_500), None)).unwrap();
    assert_eq!(store.greylist(&a).unwrap(), Some(passed));
    let pruned = apply_one(&store, Command::PruneSecurity { greylist_before_ms: 5_000, limit: 100 }).unwrap();
    assert_eq!(pruned, Outcome::Pruned { removed: 1, more: false });
    assert_eq!(store.greylist(&a).unwrap(), Some(passed));
    assert_eq!(store.greylist(&b).unwrap(), None);
    // The limit bounds one command's work and says there is more.
    for n in 0..5u8 {
        apply_one(&store, record([10 + n; 16], seen(3_000, 3_000), None)).unwrap();
    }
    let pruned = apply_one(&store, Command::PruneSecurity { greylist_before_ms: 5_000, limit: 3 }).unwrap();
    assert_eq!(pruned, Outcome::Pruned { removed: 3, more: true });
    let pruned = apply_one(&store, Command::PruneSecurity { greylist_before_ms: 5_000, limit: 3 }).unwrap();
    assert_eq!(pruned, Outcome::Pruned { removed: 2, more: false });
}

#[test]
fn login_blocks_are_set_listed_lifted_and_lapse() {
    let (_dir, store) = store();
    let block = |until_ms| Some(BlockRecord { created_ms: 1, until_ms, reason: "55 failed logins".into() });
    let set = |kind: &str, key: &str, until_ms| Command::SetBlock {
        kind: kind.into(),
        key: key.into(),
        block: block(until_ms),
    };
    apply_one(&store, set("address", "192.0.2.7", 10_000)).unwrap();
    apply_one(&store, set("account", "alice@example.com", 50_000)).unwrap();
    assert_eq!(store.blocks().unwrap().len(), 2);
    assert_eq!(store.block("address", "192.0.2.7").unwrap().unwrap().until_ms, 10_000);
    let lift = |key: &str| Command::SetBlock { kind: "account".into(), key: key.into(), block: None };
    apply_one(&store, lift("alice@example.com")).unwrap();
    assert!(matches!(apply_one(&store, lift("alice@example.com")), Err(CommandError::NotFound { .. })));
    // Lapsed blocks go with the next prune (by the proposer's clock).
    let pruned = apply_at(&store, Command::PruneSecurity { greylist_before_ms: 0, limit: 10 }, 20_000).unwrap();
    assert_eq!(pruned, Outcome::Pruned { removed: 1, more: false });
    assert!(store.blocks().unwrap().is_empty());
}

#[test]
fn quarantined_messages_hold_their_blob_until_released_dropped_or_purged() {
    let (_dir, store) = store();
    apply_one(&store, Command::CreateDomain { name: "example.com".into() }).unwrap();
    let Outcome::AccountCreated { account_id, .. } = apply_one(&store, account("a@example.com")).unwrap() else {
        panic!("account")
    };
    let blob = BlobId::from_slice(&[7; 32]).unwrap();
    let info = QuarantineInfo {
        sender: "s@remote.test".into(),
        from: None,
        subject: Some("offer".into()),
        reason: "spam score 11.0".into(),
    };
    let quarantine = |info: &QuarantineInfo| Command::Quarantine {
        blob,
        stored_after_index: 0,
        size: 100,
        summary: None,
        threading: None,
        account_ids: vec![account_id, 999],
        info: info.clone(),
    };
    let Outcome::Quarantined { ids } = apply_at(&store, quarantine(&info), 1_000).unwrap() else { panic!("outcome") };
    assert_eq!(ids.len(), 1, "the unknown account is skipped");
    let Outcome::Quarantined { ids: second } = apply_at(&store, quarantine(&info), 5_000).unwrap() else {
        panic!("outcome")
    };
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 2);
    assert_eq!(store.quarantined(account_id).unwrap().len(), 2);

    // Released: in the INBOX, out of the quarantine, one reference moved.
    let released = apply_one(&store, Command::ReleaseQuarantined { account_id, id: ids[0].1 }).unwrap();
    assert!(
        matches!(released, Outcome::Delivered { ref results, .. } if matches!(results[0], DeliveryResult::Stored { .. }))
    );
    let inbox = store.mailbox_by_name(account_id, "INBOX").unwrap().unwrap();
    assert_eq!(store.messages(account_id, inbox.id).unwrap().len(), 1);
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 2);
    assert!(matches!(
        apply_one(&store, Command::ReleaseQuarantined { account_id, id: ids[0].1 }),
        Err(CommandError::NotFound { .. })
    ));
    // Purged by age: the newer one survives a purge before 3,000, not one before 6,000.
    assert_eq!(
        apply_one(&store, Command::PurgeQuarantine { before_ms: 3_000, limit: 10 }).unwrap(),
        Outcome::Pruned { removed: 0, more: false }
    );
    assert_eq!(
        apply_one(&store, Command::PurgeQuarantine { before_ms: 6_000, limit: 10 }).unwrap(),
        Outcome::Pruned { removed: 1, more: false }
    );
    assert!(store.quarantined(account_id).unwrap().is_empty());
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 1, "only the INBOX copy refers to it");
    let _ = second;

    // Allowed senders, case-insensitive, gone with the account.
    apply_one(&store, Command::SetAllowedSender { account_id, sender: "News@Partner.test".into(), allowed: true })
        .unwrap();
    assert!(store.is_allowed_sender(account_id, "news@partner.test").unwrap());
    assert_eq!(store.allowed_senders(account_id).unwrap(), vec!["news@partner.test".to_owned()]);
    apply_at(&store, quarantine(&info), 7_000).unwrap();
    apply_one(&store, Command::RemoveAccount { address: "a@example.com".into() }).unwrap();
    assert!(!store.is_allowed_sender(account_id, "news@partner.test").unwrap());
    assert!(store.quarantined(account_id).unwrap().is_empty());
    assert_eq!(store.blob_ref(&blob).unwrap().unwrap().count, 0);
}

#[test]
fn a_message_is_learnt_once_and_moving_it_back_undoes_the_lesson() {
    let (_dir, store) = store();
    let blob = BlobId::from_slice(&[3; 32]).unwrap();
    let train =
        |spam| Command::TrainBayes { domain: "example.com".into(), spam, tokens: vec![7, 9], account_id: 1, blob };
    apply_one(&store, train(true)).unwrap();
    apply_one(&store, train(true)).unwrap(); // moved into Junk again: no second lesson
    assert_eq!(store.bayes_counts("example.com", &[7]).unwrap(), ((1, 0), vec![(1, 0)]));
    apply_one(&store, train(false)).unwrap(); // moved back out: now ham only
    assert_eq!(store.bayes_counts("example.com", &[7, 9]).unwrap(), ((0, 1), vec![(0, 1), (0, 1)]));
}

#[test]
fn an_account_s_bayes_lessons_are_counted_per_day() {
    let (_dir, store) = store();
    let day = 86_400_000;
    let train = |seed: u8| {
        let blob = BlobId::from_slice(&[seed; 32]).unwrap();
        Command::TrainBayes { domain: "example.com".into(), spam: true, tokens: vec![7], account_id: 4, blob }
    };
    for (seed, at) in [(1, 10 * day + 5), (2, 10 * day + 6), (2, 10 * day + 7)] {
        apply_at(&store, train(seed), at).unwrap();
    }
    // Two lessons on day 10 (the repeated message taught nothing).
    assert_eq!(store.bayes_lessons_today(4, 10 * day + 8).unwrap(), 2);
    apply_at(&store, train(3), 11 * day).unwrap();
    assert_eq!(store.bayes_lessons_today(4, 10 * day + 9).unwrap(), 0, "day 11 replaced day 10");
    assert_eq!(store.bayes_lessons_today(4, 11 * day + 1).unwrap(), 1);
    assert_eq!(store.bayes_lessons_today(4, 12 * day).unwrap(), 0, "a new day starts at 0");
    assert_eq!(store.bayes_lessons_today(5, 11 * day).unwrap(), 0, "other accounts are not counted");
    apply_at(&store, train(4), 11 * day + 2).unwrap();
    assert_eq!(store.bayes_lessons_today(4, 11 * day + 3).unwrap(), 2);
    // Moving a message back out of Junk corrects its lesson: not a new one.
    let blob = BlobId::from_slice(&[4; 32]).unwrap();
    let correction =
        Command::TrainBayes { domain: "example.com".into(), spam: false, tokens: vec![7], account_id: 4, blob };
    apply_at(&store, correction, 11 * day + 4).unwrap();
    assert_eq!(store.bayes_label(4, &blob).unwrap(), Some(false));
    assert_eq!(store.bayes_lessons_today(4, 11 * day + 5).unwrap(), 2);
}

#[test]
fn prefix_end_is_the_first_key_after_the_prefix() {
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
    assert_eq!(prefix_end(&[0xff, 0xff]), None);
    assert_eq!(prefix_end(b""), None);
}

#[test]
fn memtables_stay_within_their_budget_across_column_families() {
    let (_dir, store) = store();
    let db = store.db();
    let memtables = |property: &str| -> u64 {
        ks::COLUMN_FAMILIES
            .iter()
            .map(|table| db.property_int_value_cf(cf(&db, table), property).unwrap().unwrap_or(0))
            .sum()
    };
    // 150 MiB over three tables, each below its own 64 MiB flush threshold.
    let value = vec![7u8; 1 << 20];
    for table in [ks::SUMMARIES, ks::MESSAGES, ks::CHANGES] {
        for n in 0..50u32 {
            db.put_cf(cf(&db, table), format!("memtable-test/{n}"), &value).unwrap();
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while memtables("rocksdb.mem-table-flush-pending") > 0
        || db.property_int_value("rocksdb.num-running-flushes").unwrap().unwrap_or(0) > 0
    {
        assert!(std::time::Instant::now() < deadline, "flushes never finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let held = memtables("rocksdb.cur-size-all-mem-tables");
    assert!(held <= MEMTABLE_BUDGET as u64, "memtables hold {held} bytes, over the {MEMTABLE_BUDGET} budget");
}
