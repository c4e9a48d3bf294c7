//! The recorded history: every client operation as invoked and completed (ok, fail or
//! info, the outcome model of openraft's `jepsen/error-handling-semantics.md` and of
//! Jepsen), every nemesis action, and the state each node holds once the faults healed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What a client operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// An SMTP delivery to an account's INBOX, identified by its Message-ID.
    Deliver,
    /// An IMAP APPEND to an account's INBOX, identified by its Message-ID.
    Append,
    /// IMAP SELECT and `UID FETCH 1:*` of an account's INBOX.
    Read,
    /// IMAP `UID STORE +FLAGS` of one flag on one message.
    Flag,
    /// An admin API `POST /accounts`.
    CreateAccount,
}

impl OpKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [OpKind; 5] = [Self::Deliver, Self::Append, Self::Read, Self::Flag, Self::CreateAccount];

    /// Whether the operation changes state (and so may be indeterminate).
    pub fn is_write(self) -> bool {
        self != Self::Read
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deliver => "deliver",
            Self::Append => "append",
            Self::Read => "read",
            Self::Flag => "flag",
            Self::CreateAccount => "create-account",
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The server acknowledged it: it must have happened, exactly once.
    Ok,
    /// It certainly did not happen (refused before anything was sent, or a read).
    Fail,
    /// Indeterminate (a timeout, a lost connection or an error after the request was
    /// sent): it may have happened, at most once.
    Info,
}

/// One message as a read saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenMessage {
    /// Its UID.
    pub uid: u32,
    /// Its Message-ID (without angle brackets).
    pub message_id: String,
    /// Its flags, sorted (`\Recent` left out: it is per session).
    pub flags: Vec<String>,
    /// Its MODSEQ (RFC 7162).
    pub modseq: u64,
}

/// What a read of a mailbox returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRead {
    /// UIDVALIDITY of the mailbox.
    pub uid_validity: u32,
    /// HIGHESTMODSEQ from SELECT (CONDSTORE).
    pub highest_modseq: u64,
    /// Every message, in UID order.
    pub messages: Vec<SeenMessage>,
}

/// One client operation, from invocation to completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Sequence number, unique in the run.
    pub id: u64,
    /// The client (worker) that ran it; a client runs one operation at a time.
    pub process: usize,
    /// The node it was sent to (1-based).
    pub node: usize,
    /// What it did.
    pub kind: OpKind,
    /// The account it touched (the new account for [`OpKind::CreateAccount`]).
    pub account: String,
    /// Milliseconds since the run started, when it was invoked and when it completed.
    pub invoked_ms: f64,
    /// See `invoked_ms`.
    pub completed_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// The Message-ID written (deliver, append).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The UID targeted (flag) or assigned (append with APPENDUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The flag added (flag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// What a read returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<MailboxRead>,
    /// Why it failed or is indeterminate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A nemesis action: a fault started or healed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// Milliseconds since the run started.
    pub at_ms: f64,
    /// Which nemesis (`kill`, `pause`, `partition`, `skew`, `disk`, `membership`).
    pub nemesis: String,
    /// `start` or `stop`.
    pub action: String,
    /// What exactly was done (`kill -9 n2 (leader)`, `{n1 n2} | {n3}`).
    pub detail: String,
    /// The nodes that could not act as part of a majority while the fault lasted
    /// (killed, paused, cut off from the largest group), 1-based; empty on `stop`.
    #[serde(default)]
    pub impaired: Vec<usize>,
    /// `ok`, or why the action failed.
    pub outcome: String,
}

/// The state every node holds after the faults healed and the cluster quiesced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalState {
    /// Every node applied the same commit index within 120 s of the heal.
    #[serde(default)]
    pub quiesced: bool,
    /// Per node (1-based): each account's INBOX.
    pub mailboxes: BTreeMap<usize, BTreeMap<String, MailboxRead>>,
    /// Per node: the accounts the admin API lists.
    pub accounts: BTreeMap<usize, Vec<String>>,
}

/// The whole record of a run, as written to `history.json` and read back by `--check`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// The seed the run's choices came from.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// The accounts the workload wrote to.
    pub accounts: Vec<String>,
    /// Every client operation, in completion order.
    pub ops: Vec<Op>,
    /// Every nemesis action, in time order.
    pub nemesis: Vec<NemesisEvent>,
    /// What the nodes held at the end.
    pub final_state: FinalState,
    /// Milliseconds since the start when the last fault healed.
    pub healed_ms: f64,
}

/// Collects operations and nemesis events from concurrent tasks.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    events: Mutex<Vec<NemesisEvent>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// A fresh operation id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a completed operation.
    pub fn op(&self, op: Op) {
        self.ops.lock().expect("recorder lock").push(op);
    }

    /// Records a nemesis action, stamped now.
    pub fn nemesis(&self, nemesis: &str, action: &str, detail: String, impaired: Vec<usize>, outcome: String) {
        let event = NemesisEvent {
            at_ms: self.now_ms(),
            nemesis: nemesis.to_owned(),
            action: action.to_owned(),
            detail,
            impaired,
            outcome,
        };
        eprintln!(
            "[{:7.1}s] nemesis {} {}: {} ({})",
            event.at_ms / 1000.0,
            event.nemesis,
            event.action,
            event.detail,
            event.outcome
        );
        self.events.lock().expect("recorder lock").push(event);
    }

    /// The operations recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("recorder lock").clone()
    }

    /// The nemesis events recorded so far.
    pub fn events(&self) -> Vec<NemesisEvent> {
        self.events.lock().expect("recorder lock").clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}
