//! Measures how the outbound queue's due index behaves with many deferred entries: the
//! cost of finding due entries must not grow with the number of deferred ones.
//!
//! `cargo run --release -p wmail-storage --example queue_scan [-- DEFERRED]`

use std::time::Instant;

use wmail_storage::{
    ApplyEntry, AttemptResult, BlobId, Command, CommandEnvelope, Notify, OutboundEnvelope, OutboundRecipient, Outcome,
    RecipientStatus, StateStore,
};

fn apply(store: &StateStore, index: &mut u64, commands: Vec<Command>, now_ms: u64) -> Vec<Outcome> {
    *index += 1;
    let entry = ApplyEntry {
        log_index: *index,
        commands: commands.into_iter().map(|command| CommandEnvelope::new(command, now_ms).encode()).collect(),
        raft_meta: index.to_be_bytes().to_vec(),
    };
    store.apply_batch(vec![entry]).expect("apply").remove(0).into_iter().map(|r| r.expect("applied")).collect()
}

fn queued(n: u64) -> Command {
    Command::Deliver {
        blob: BlobId::of(&n.to_be_bytes()),
        stored_after_index: 0,
        size: 10_240,
        internal_date_ms: 0,
        flags: vec![],
        summary: None,
        threading: None,
        targets: vec![],
        outbound: Some(OutboundEnvelope {
            eight_bit: false,
            authenticated: true,
            return_path: "sender@bench.test".into(),
            envid: None,
            ret: None,
            recipients: vec![OutboundRecipient {
                address: format!("rcpt{n}@remote{}.test", n % 100),
                orcpt: None,
                notify: Notify::default(),
                relay: None,
            }],
        }),
    }
}

fn main() {
    let deferred: u64 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path().join("state")).expect("open state");
    let mut index = 0;
    let hour = 3_600_000;
    let started = Instant::now();
    // Queue `deferred` messages at t=0, claim them, and defer each by an hour.
    for chunk in (0..deferred).collect::<Vec<_>>().chunks(1_000) {
        let outcomes = apply(&store, &mut index, chunk.iter().map(|&n| queued(n)).collect(), 0);
        let ids: Vec<u64> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Delivered { queue_id: Some(id), .. } => *id,
                _ => panic!(),
            })
            .collect();
        apply(
            &store,
            &mut index,
            vec![Command::ClaimOutbound { ids: ids.clone(), holder: "n1".into(), until_ms: 60_000 }],
            1,
        );
        let records = ids
            .iter()
            .map(|&id| Command::RecordAttempt {
                id,
                holder: "n1".into(),
                results: vec![AttemptResult {
                    index: 0,
                    status: RecipientStatus::Pending { last_reply: Some("451 4.4.1 later".into()) },
                }],
                next_attempt_ms: hour,
                delay_notified: false,
            })
            .collect();
        apply(&store, &mut index, records, 2);
    }
    println!("queued and deferred {deferred} entries in {:.1} s", started.elapsed().as_secs_f64());
    // Ten fresh messages are due now.
    let fresh: Vec<Command> = (deferred..deferred + 10).map(queued).collect();
    apply(&store, &mut index, fresh, 1_000);
    let rounds = 1_000;
    let started = Instant::now();
    let mut found = 0;
    for _ in 0..rounds {
        found = store.due_outbound(2_000, 256).expect("due").len();
    }
    let per_scan = started.elapsed().as_secs_f64() / rounds as f64;
    println!("due scan with {deferred} deferred entries: {found} due found in {:.1} µs per scan", per_scan * 1e6);
    let started = Instant::now();
    let all = store.due_outbound(hour, usize::MAX).expect("due").len();
    println!(
        "for comparison, listing all {all} entries once they are due: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let started = Instant::now();
    assert!(store.compact_queue_index().expect("compact"), "deletes pile up: a compaction is due");
    println!("compacting the due index: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    let started = Instant::now();
    for _ in 0..rounds {
        found = store.due_outbound(2_000, 256).expect("due").len();
    }
    let per_scan = started.elapsed().as_secs_f64() / rounds as f64;
    println!("due scan after compaction: {found} due found in {:.1} µs per scan", per_scan * 1e6);
    assert_eq!(store.queue_length().expect("length"), deferred + 10);
}
