//! Measures how fast the state machine applies `Deliver` commands, in batches of several
//! sizes (openraft hands committed entries over in batches).
//!
//! `cargo run --release -p wmail-storage --example apply_throughput [-- COMMANDS]`

use std::time::Instant;

use wmail_storage::{AccountState, ApplyEntry, BlobId, Command, CommandEnvelope, DeliveryTarget, StateStore};

fn entry(command: Command, index: u64) -> ApplyEntry {
    ApplyEntry {
        log_index: index,
        commands: vec![CommandEnvelope::new(command, index).encode()],
        raft_meta: index.to_be_bytes().to_vec(),
    }
}

fn main() {
    let total: u64 = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(50_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path().join("state")).expect("open state");
    let mut index = 0;
    let mut setup = vec![entry(Command::CreateDomain { name: "bench.test".into() }, 0)];
    for account in 0..100 {
        index += 1;
        setup.push(entry(
            Command::CreateAccount {
                address: format!("user{account}@bench.test"),
                display_name: String::new(),
                password_hash: "$argon2id$bench".into(),
                quota_bytes: None,
                state: AccountState::Active,
            },
            index,
        ));
    }
    store.apply_batch(setup).expect("setup");
    println!("{:>10} {:>12} {:>14}", "batch", "commands", "commands/s");
    for batch_size in [1u64, 16, 256] {
        let started = Instant::now();
        let mut applied = 0;
        while applied < total {
            let batch: Vec<ApplyEntry> = (0..batch_size)
                .map(|offset| {
                    index += 1;
                    let n = applied + offset;
                    entry(
                        Command::Deliver {
                            blob: BlobId::of(&n.to_be_bytes()),
                            stored_after_index: 0,
                            size: 10_240,
                            internal_date_ms: n,
                            flags: vec![],
                            summary: None,
                            threading: None,
                            targets: vec![DeliveryTarget { account_id: 1 + n % 100, mailbox_id: None }],
                            outbound: None,
                        },
                        index,
                    )
                })
                .collect();
            store.apply_batch(batch).expect("apply");
            applied += batch_size;
        }
        let rate = applied as f64 / started.elapsed().as_secs_f64();
        println!("{batch_size:>10} {applied:>12} {rate:>14.0}");
    }
}
