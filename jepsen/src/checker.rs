//! The checker: what must hold of a history once the faults healed and the cluster
//! quiesced. It only reads the history (so a recorded run can be checked again with
//! `--check DIR`) and reports every anomaly it finds, not just the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::history::{History, MailboxRead, Op, OpKind, Outcome};

/// The checker's findings.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// No anomaly.
    pub valid: bool,
    /// Every anomaly, as a sentence naming the operations involved.
    pub anomalies: Vec<String>,
    /// Counts by kind and outcome, availability and recovery times.
    pub stats: Stats,
}

/// Numbers for the summary.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// `kind -> [ok, fail, info]`.
    pub outcomes: BTreeMap<String, [usize; 3]>,
    /// Share of operations invoked while a majority of nodes was up and connected that
    /// succeeded.
    pub availability_with_majority: f64,
    /// Operations invoked while a majority was up and connected.
    pub ops_with_majority: usize,
    /// For each healed fault: seconds from the heal to the first successful write invoked
    /// after it (`None`: no write succeeded afterwards).
    pub recovery_seconds: Vec<(String, Option<f64>)>,
    /// Messages and accounts in the final state.
    pub final_messages: usize,
}

/// Checks `history`.
pub fn check(history: &History) -> Verdict {
    let mut anomalies = Vec::new();
    let Some(truth) = converged_state(history, &mut anomalies) else {
        anomalies.push("no node returned a final state: nothing can be checked".into());
        return Verdict { valid: false, anomalies, stats: Stats::default() };
    };
    if !history.final_state.quiesced {
        anomalies.push("liveness: the nodes did not converge on one applied index within 120 s of the heal".into());
    }
    let indexes: Indexes = truth.iter().map(|(account, read)| (account.as_str(), index(read))).collect();
    check_writes(history, &truth, &indexes, &mut anomalies);
    check_uid_order(history, &indexes, &mut anomalies);
    check_reads(history, &truth, &indexes, &mut anomalies);
    check_flags(history, &truth, &mut anomalies);
    check_accounts(history, &mut anomalies);
    let stats = stats(history, &truth);
    Verdict { valid: anomalies.is_empty(), anomalies, stats }
}

/// The final mailboxes every node agrees on; a disagreement is an anomaly (and the first
/// node's view is used for the other checks).
fn converged_state(history: &History, anomalies: &mut Vec<String>) -> Option<BTreeMap<String, MailboxRead>> {
    let mut views = history.final_state.mailboxes.iter();
    let (&first_node, first) = views.next()?;
    for (&node, view) in views {
        for account in &history.accounts {
            let (a, b) = (first.get(account), view.get(account));
            if a != b {
                anomalies.push(format!(
                    "divergence: n{first_node} and n{node} hold different INBOXes of {account} after healing ({})",
                    difference(a, b)
                ));
            }
        }
    }
    for account in &history.accounts {
        if !first.contains_key(account) {
            anomalies.push(format!("n{first_node} returned no final read of {account}"));
        }
    }
    Some(first.clone())
}

/// A short description of how two final reads differ.
fn difference(a: Option<&MailboxRead>, b: Option<&MailboxRead>) -> String {
    let (Some(a), Some(b)) = (a, b) else { return "one node has no read".into() };
    if a.uid_validity != b.uid_validity {
        return format!("UIDVALIDITY {} vs {}", a.uid_validity, b.uid_validity);
    }
    let only = |x: &MailboxRead, y: &MailboxRead| {
        x.messages.iter().filter(|m| !y.messages.contains(m)).map(|m| m.uid.to_string()).collect::<Vec<_>>().join(",")
    };
    format!("UIDs only on the first: [{}], only on the second: [{}]", only(a, b), only(b, a))
}

/// Per account, the [`index`] of its final INBOX (built once per check).
type Indexes<'a> = BTreeMap<&'a str, HashMap<&'a str, (u32, usize)>>;

/// UID of each Message-ID in an account's final INBOX, and how often it occurs.
fn index(read: &MailboxRead) -> HashMap<&str, (u32, usize)> {
    let mut index: HashMap<&str, (u32, usize)> = HashMap::new();
    for message in &read.messages {
        index.entry(message.message_id.as_str()).or_insert((message.uid, 0)).1 += 1;
    }
    index
}

/// Acknowledged deliveries and APPENDs present exactly once, indeterminate ones at most
/// once, failed ones and unknown ones never.
fn check_writes(
    history: &History,
    truth: &BTreeMap<String, MailboxRead>,
    indexes: &Indexes,
    anomalies: &mut Vec<String>,
) {
    let mut written: HashMap<&str, &Op> = HashMap::new();
    for op in history.ops.iter().filter(|op| matches!(op.kind, OpKind::Deliver | OpKind::Append)) {
        let Some(message_id) = op.message_id.as_deref() else { continue };
        written.insert(message_id, op);
        let found = indexes.get(op.account.as_str()).and_then(|index| index.get(message_id)).copied();
        let count = found.map_or(0, |(_, n)| n);
        let what = format!("{} {} (op {}, n{}, {:?})", op.kind.name(), message_id, op.id, op.node, op.outcome);
        match (op.outcome, count) {
            (Outcome::Ok, 0) => anomalies.push(format!("lost: acknowledged {what} is missing")),
            (Outcome::Fail, n) if n > 0 => anomalies.push(format!("failed {what} is present {n} time(s)")),
            (_, n) if n > 1 => anomalies.push(format!("duplicated: {what} is present {n} times")),
            _ => {}
        }
        if let (Outcome::Ok, Some(uid), Some((final_uid, _))) = (op.outcome, op.uid, found)
            && uid != final_uid
        {
            anomalies.push(format!("{what} was given UID {uid} (APPENDUID) but holds UID {final_uid}"));
        }
    }
    for (account, read) in truth {
        for message in &read.messages {
            if !written.contains_key(message.message_id.as_str()) {
                anomalies.push(format!(
                    "unexpected: {account} UID {} has Message-ID {:?}, which no operation wrote",
                    message.uid, message.message_id
                ));
            }
        }
        let mut uids = BTreeSet::new();
        for message in &read.messages {
            if !uids.insert(message.uid) {
                anomalies.push(format!("{account}: UID {} is used twice", message.uid));
            }
        }
    }
}

/// UIDs follow real time: a write acknowledged before another was invoked has the smaller
/// UID (RFC 9051 §2.3.1.1: UIDs are strictly ascending in the order messages were added).
fn check_uid_order(history: &History, indexes: &Indexes, anomalies: &mut Vec<String>) {
    for (&account, index) in indexes {
        let mut writes: Vec<(&Op, u32)> = history
            .ops
            .iter()
            .filter(|op| op.outcome == Outcome::Ok && op.account == account)
            .filter_map(|op| Some((op, index.get(op.message_id.as_deref()?)?.0)))
            .collect();
        writes.sort_by(|a, b| a.0.completed_ms.total_cmp(&b.0.completed_ms));
        // For each write, the largest UID among writes completed before it was invoked.
        let mut completed: Vec<(f64, u32, u64)> = Vec::new();
        for (op, uid) in &writes {
            let best_before =
                completed.iter().filter(|(at, _, _)| *at < op.invoked_ms).map(|&(_, uid, id)| (uid, id)).max();
            if let Some((earlier_uid, earlier_op)) = best_before
                && earlier_uid >= *uid
            {
                anomalies.push(format!(
                    "UID order: {account} op {} got UID {uid} although op {earlier_op} (UID {earlier_uid}) was acknowledged before it began",
                    op.id
                ));
            }
            completed.push((op.completed_ms, *uid, op.id));
        }
    }
}

/// Reads are linearizable: a read sees every write acknowledged before it began, every
/// message an earlier completed read saw (with the same UID, flags only added, MODSEQ
/// never lower), and nothing that is not in the final state.
fn check_reads(
    history: &History,
    truth: &BTreeMap<String, MailboxRead>,
    indexes: &Indexes,
    anomalies: &mut Vec<String>,
) {
    let mut reads: Vec<&Op> =
        history.ops.iter().filter(|op| op.kind == OpKind::Read && op.outcome == Outcome::Ok).collect();
    reads.sort_by(|a, b| a.invoked_ms.total_cmp(&b.invoked_ms));
    for read_op in &reads {
        let Some(read) = &read_op.read else { continue };
        let Some(final_read) = truth.get(&read_op.account) else { continue };
        let seen: HashMap<&str, &crate::history::SeenMessage> =
            read.messages.iter().map(|m| (m.message_id.as_str(), m)).collect();
        let at = format!("read op {} of {} on n{}", read_op.id, read_op.account, read_op.node);
        if read.uid_validity != final_read.uid_validity {
            anomalies.push(format!("{at}: UIDVALIDITY {} but finally {}", read.uid_validity, final_read.uid_validity));
        }
        let Some(final_index) = indexes.get(read_op.account.as_str()) else { continue };
        // UIDs follow commit order, so a read that saw UID u must see every message below it.
        if let Some(highest) = read.messages.iter().map(|m| m.uid).max() {
            for missing in
                final_read.messages.iter().filter(|m| m.uid < highest && !seen.contains_key(m.message_id.as_str()))
            {
                anomalies.push(format!(
                    "stale read: {at} saw UID {highest} but not UID {} ({}), which precedes it",
                    missing.uid, missing.message_id
                ));
            }
        }
        for message in &read.messages {
            match final_index.get(message.message_id.as_str()) {
                None => anomalies
                    .push(format!("{at}: saw {} (UID {}), which is gone at the end", message.message_id, message.uid)),
                Some(&(uid, _)) if uid != message.uid => anomalies
                    .push(format!("{at}: saw {} as UID {} but it ends as UID {uid}", message.message_id, message.uid)),
                _ => {}
            }
        }
        for write in history.ops.iter().filter(|op| {
            op.outcome == Outcome::Ok
                && op.account == read_op.account
                && matches!(op.kind, OpKind::Deliver | OpKind::Append)
                && op.completed_ms < read_op.invoked_ms
        }) {
            let message_id = write.message_id.as_deref().unwrap_or_default();
            if !seen.contains_key(message_id) {
                anomalies.push(format!(
                    "stale read: {at} misses {message_id}, acknowledged by op {} {:.0} ms before the read began",
                    write.id,
                    read_op.invoked_ms - write.completed_ms
                ));
            }
        }
        for earlier in reads.iter().filter(|op| op.account == read_op.account && op.completed_ms < read_op.invoked_ms) {
            let Some(earlier_read) = &earlier.read else { continue };
            if read.highest_modseq < earlier_read.highest_modseq {
                anomalies.push(format!(
                    "{at}: HIGHESTMODSEQ {} went back from {} (read op {})",
                    read.highest_modseq, earlier_read.highest_modseq, earlier.id
                ));
            }
            for old in &earlier_read.messages {
                match seen.get(old.message_id.as_str()) {
                    None => anomalies.push(format!(
                        "{at}: misses {} (UID {}), which read op {} saw before it began",
                        old.message_id, old.uid, earlier.id
                    )),
                    Some(new) => {
                        if new.modseq < old.modseq {
                            anomalies.push(format!(
                                "{at}: MODSEQ of UID {} went back from {} to {}",
                                new.uid, old.modseq, new.modseq
                            ));
                        }
                        for flag in old.flags.iter().filter(|flag| !new.flags.contains(flag)) {
                            anomalies.push(format!(
                                "{at}: UID {} lost flag {flag}, which read op {} saw",
                                new.uid, earlier.id
                            ));
                        }
                    }
                }
            }
        }
        for store in history.ops.iter().filter(|op| {
            op.kind == OpKind::Flag
                && op.outcome == Outcome::Ok
                && op.account == read_op.account
                && op.completed_ms < read_op.invoked_ms
        }) {
            let (uid, flag) = (store.uid.unwrap_or_default(), store.flag.as_deref().unwrap_or_default());
            if let Some(message) = read.messages.iter().find(|m| m.uid == uid)
                && !message.flags.iter().any(|f| f == flag)
            {
                anomalies.push(format!(
                    "stale read: {at} shows UID {uid} without {flag}, acknowledged by op {} before the read began",
                    store.id
                ));
            }
        }
    }
}

/// Acknowledged flag changes hold in the final state (flags are only ever added), and no
/// message carries a flag that no flag operation (acknowledged or indeterminate) added.
fn check_flags(history: &History, truth: &BTreeMap<String, MailboxRead>, anomalies: &mut Vec<String>) {
    let mut added: std::collections::HashSet<(&str, u32, &str)> = std::collections::HashSet::new();
    for op in history.ops.iter().filter(|op| op.kind == OpKind::Flag && op.outcome != Outcome::Fail) {
        added.insert((op.account.as_str(), op.uid.unwrap_or_default(), op.flag.as_deref().unwrap_or_default()));
    }
    let reads =
        history.ops.iter().filter_map(|op| Some((format!("read op {}", op.id), &op.account, op.read.as_ref()?)));
    let finals = truth.iter().map(|(account, read)| ("the final state".to_owned(), account, read));
    for (source, account, read) in reads.chain(finals) {
        for message in &read.messages {
            for flag in message.flags.iter().filter(|f| !added.contains(&(account.as_str(), message.uid, f.as_str()))) {
                anomalies.push(format!("{source}: {account} UID {} has {flag}, which no operation added", message.uid));
            }
        }
    }
    for op in history.ops.iter().filter(|op| op.kind == OpKind::Flag && op.outcome == Outcome::Ok) {
        let (uid, flag) = (op.uid.unwrap_or_default(), op.flag.as_deref().unwrap_or_default());
        let message = truth.get(&op.account).and_then(|read| read.messages.iter().find(|m| m.uid == uid));
        match message {
            None => anomalies.push(format!("flag op {}: {} UID {uid} does not exist at the end", op.id, op.account)),
            Some(message) if !message.flags.iter().any(|f| f == flag) => anomalies.push(format!(
                "lost flag: op {} added {flag} to {} UID {uid}, finally its flags are {:?}",
                op.id, op.account, message.flags
            )),
            _ => {}
        }
    }
}

/// Acknowledged account creations are listed by every node, failed ones by none, and
/// every node lists the same accounts.
fn check_accounts(history: &History, anomalies: &mut Vec<String>) {
    let mut lists = history.final_state.accounts.iter();
    if let Some((first_node, first)) = lists.next() {
        let first: BTreeSet<&String> = first.iter().collect();
        for (node, list) in lists {
            let list: BTreeSet<&String> = list.iter().collect();
            if list != first {
                let only = |a: &BTreeSet<&String>, b: &BTreeSet<&String>| {
                    a.difference(b).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                };
                anomalies.push(format!(
                    "divergence: n{first_node} and n{node} list different accounts (only on n{first_node}: [{}]; only on n{node}: [{}])",
                    only(&first, &list),
                    only(&list, &first)
                ));
            }
        }
    }
    for (node, accounts) in &history.final_state.accounts {
        let listed: BTreeSet<&str> = accounts.iter().map(String::as_str).collect();
        for op in history.ops.iter().filter(|op| op.kind == OpKind::CreateAccount) {
            let present = listed.contains(op.account.as_str());
            match op.outcome {
                Outcome::Ok if !present => anomalies.push(format!(
                    "lost admin write: account {} (op {}, acknowledged) is not listed by n{node}",
                    op.account, op.id
                )),
                Outcome::Fail if present => anomalies
                    .push(format!("failed admin write: account {} (op {}) is listed by n{node}", op.account, op.id)),
                _ => {}
            }
        }
    }
}

/// Whether a majority of nodes was up and connected at `at_ms`.
fn majority_at(history: &History, at_ms: f64) -> bool {
    let mut impaired: &[usize] = &[];
    for event in history.nemesis.iter().take_while(|event| event.at_ms <= at_ms) {
        match event.action.as_str() {
            "start" => impaired = &event.impaired,
            "stop" => impaired = &[],
            _ => {}
        }
    }
    history.nodes.saturating_sub(impaired.len()) > history.nodes / 2
}

fn stats(history: &History, truth: &BTreeMap<String, MailboxRead>) -> Stats {
    let mut outcomes: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let (mut with_majority, mut ok_with_majority) = (0, 0);
    for op in &history.ops {
        let slot = match op.outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Info => 2,
        };
        outcomes.entry(op.kind.name().to_owned()).or_default()[slot] += 1;
        if majority_at(history, op.invoked_ms) {
            with_majority += 1;
            ok_with_majority += usize::from(op.outcome == Outcome::Ok);
        }
    }
    let mut recovery_seconds = Vec::new();
    for event in history.nemesis.iter().filter(|event| event.action == "stop" && event.nemesis != "all") {
        let first = history
            .ops
            .iter()
            .filter(|op| op.kind.is_write() && op.outcome == Outcome::Ok && op.invoked_ms >= event.at_ms)
            .map(|op| op.completed_ms)
            .min_by(f64::total_cmp);
        recovery_seconds.push((
            format!("{} healed at {:.1} s", event.nemesis, event.at_ms / 1000.0),
            first.map(|at| (at - event.at_ms) / 1000.0),
        ));
    }
    Stats {
        outcomes,
        availability_with_majority: if with_majority == 0 {
            0.0
        } else {
            ok_with_majority as f64 / with_majority as f64
        },
        ops_with_majority: with_majority,
        recovery_seconds,
        final_messages: truth.values().map(|read| read.messages.len()).sum(),
    }
}

/// The verdict as text.
pub fn summary(history: &History, verdict: &Verdict) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "wmail-jepsen: {} nodes, seed {}", history.nodes, history.seed);
    let _ = writeln!(out, "\noperations (ok / fail / info):");
    for (kind, [ok, fail, info]) in &verdict.stats.outcomes {
        let _ = writeln!(out, "  {kind:<15} {ok:>6} {fail:>6} {info:>6}");
    }
    let _ = writeln!(
        out,
        "\navailability: {:.1} % of {} operations invoked while a majority was up and connected succeeded",
        verdict.stats.availability_with_majority * 100.0,
        verdict.stats.ops_with_majority
    );
    let _ =
        writeln!(out, "final state: {} messages in {} accounts", verdict.stats.final_messages, history.accounts.len());
    let _ = writeln!(out, "\nnemesis:");
    for event in &history.nemesis {
        let _ = writeln!(
            out,
            "  {:7.1} s  {:<10} {:<5} {} ({})",
            event.at_ms / 1000.0,
            event.nemesis,
            event.action,
            event.detail,
            event.outcome
        );
    }
    let _ = writeln!(out, "\nrecovery (heal to first acknowledged write):");
    for (what, seconds) in &verdict.stats.recovery_seconds {
        match seconds {
            Some(seconds) => {
                let _ = writeln!(out, "  {what}: {seconds:.2} s");
            }
            None => {
                let _ = writeln!(out, "  {what}: no write succeeded afterwards");
            }
        }
    }
    if verdict.valid {
        let _ = writeln!(out, "\nVALID: no anomaly found");
    } else {
        let _ = writeln!(out, "\nINVALID: {} anomalies", verdict.anomalies.len());
        for anomaly in &verdict.anomalies {
            let _ = writeln!(out, "  - {anomaly}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FinalState, SeenMessage};

    fn op(id: u64, kind: OpKind, outcome: Outcome, invoked: f64, completed: f64) -> Op {
        Op {
            id,
            process: 0,
            node: 1,
            kind,
            account: "a@jepsen.test".into(),
            invoked_ms: invoked,
            completed_ms: completed,
            outcome,
            message_id: matches!(kind, OpKind::Deliver | OpKind::Append).then(|| format!("m{id}")),
            uid: None,
            flag: None,
            read: None,
            error: None,
        }
    }

    fn message(uid: u32, id: u64, flags: &[&str], modseq: u64) -> SeenMessage {
        SeenMessage { uid, message_id: format!("m{id}"), flags: flags.iter().map(|f| f.to_string()).collect(), modseq }
    }

    fn mailbox(messages: Vec<SeenMessage>) -> MailboxRead {
        MailboxRead { uid_validity: 7, highest_modseq: messages.iter().map(|m| m.modseq).max().unwrap_or(1), messages }
    }

    fn history(ops: Vec<Op>, nodes: &[MailboxRead]) -> History {
        let mut final_state = FinalState { quiesced: true, ..FinalState::default() };
        for (index, read) in nodes.iter().enumerate() {
            final_state.mailboxes.insert(index + 1, [("a@jepsen.test".to_owned(), read.clone())].into());
            final_state.accounts.insert(index + 1, vec!["a@jepsen.test".into()]);
        }
        History {
            seed: 1,
            nodes: nodes.len(),
            accounts: vec!["a@jepsen.test".into()],
            ops,
            final_state,
            ..History::default()
        }
    }

    fn anomalies(history: &History) -> Vec<String> {
        let verdict = check(history);
        assert_eq!(verdict.valid, verdict.anomalies.is_empty());
        verdict.anomalies
    }

    #[test]
    fn a_clean_history_is_valid() {
        let mut read = op(3, OpKind::Read, Outcome::Ok, 30.0, 40.0);
        read.read = Some(mailbox(vec![message(1, 1, &[], 2)]));
        let ops = vec![
            op(1, OpKind::Deliver, Outcome::Ok, 0.0, 10.0),
            op(2, OpKind::Append, Outcome::Info, 5.0, 50.0),
            read,
            op(4, OpKind::Deliver, Outcome::Fail, 60.0, 61.0),
        ];
        let state = mailbox(vec![message(1, 1, &[], 2), message(2, 2, &[], 3)]);
        assert_eq!(anomalies(&history(ops, &[state.clone(), state])), Vec::<String>::new());
    }

    #[test]
    fn an_acknowledged_write_that_is_missing_is_lost() {
        let ops = vec![op(1, OpKind::Deliver, Outcome::Ok, 0.0, 10.0), op(2, OpKind::Deliver, Outcome::Ok, 0.0, 10.0)];
        let found = anomalies(&history(ops, &[mailbox(vec![message(1, 1, &[], 2)])]));
        assert!(found.len() == 1 && found[0].starts_with("lost: acknowledged deliver m2"), "{found:?}");
    }

    #[test]
    fn duplicates_failed_writes_and_unknown_messages_are_found() {
        let ops =
            vec![op(1, OpKind::Append, Outcome::Info, 0.0, 10.0), op(2, OpKind::Deliver, Outcome::Fail, 0.0, 10.0)];
        let state =
            mailbox(vec![message(1, 1, &[], 2), message(2, 1, &[], 3), message(3, 2, &[], 4), message(4, 9, &[], 5)]);
        let found = anomalies(&history(ops, &[state]));
        assert!(found.iter().any(|a| a.starts_with("duplicated: append m1")), "{found:?}");
        assert!(found.iter().any(|a| a.starts_with("failed deliver m2")), "{found:?}");
        assert!(found.iter().any(|a| a.starts_with("unexpected:") && a.contains("m9")), "{found:?}");
    }

    #[test]
    fn nodes_that_disagree_diverge() {
        let ops = vec![op(1, OpKind::Deliver, Outcome::Ok, 0.0, 10.0)];
        let found =
            anomalies(&history(ops, &[mailbox(vec![message(1, 1, &[], 2)]), mailbox(vec![message(2, 1, &[], 2)])]));
        assert!(found.iter().any(|a| a.starts_with("divergence: n1 and n2")), "{found:?}");
    }

    #[test]
    fn uids_must_follow_real_time() {
        let ops = vec![op(1, OpKind::Deliver, Outcome::Ok, 0.0, 10.0), op(2, OpKind::Deliver, Outcome::Ok, 20.0, 30.0)];
        let found = anomalies(&history(ops, &[mailbox(vec![message(1, 2, &[], 2), message(2, 1, &[], 3)])]));
        assert!(found.iter().any(|a| a.starts_with("UID order:") && a.contains("op 2 got UID 1")), "{found:?}");
        // Concurrent writes may take either order.
        let ops = vec![op(1, OpKind::Deliver, Outcome::Ok, 0.0, 30.0), op(2, OpKind::Deliver, Outcome::Ok, 20.0, 40.0)];
        let found = anomalies(&history(ops, &[mailbox(vec![message(1, 2, &[], 2), message(2, 1, &[], 3)])]));
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn a_read_that_misses_an_acknowledged_write_or_an_earlier_read_is_stale() {
        let mut first = op(2, OpKind::Read, Outcome::Ok, 20.0, 30.0);
        first.read = Some(mailbox(vec![message(1, 1, &["\\Seen"], 4)]));
        let mut second = op(3, OpKind::Read, Outcome::Ok, 40.0, 50.0);
        second.read = Some(mailbox(vec![message(1, 1, &[], 3)]));
        let mut third = op(4, OpKind::Read, Outcome::Ok, 40.0, 50.0);
        third.read = Some(mailbox(vec![]));
        let ops = vec![op(1, OpKind::Deliver, Outcome::Ok, 0.0, 10.0), first, second, third];
        let found = anomalies(&history(ops, &[mailbox(vec![message(1, 1, &["\\Seen"], 4)])]));
        assert!(found.iter().any(|a| a.contains("read op 3") && a.contains("lost flag \\Seen")), "{found:?}");
        assert!(found.iter().any(|a| a.contains("read op 3") && a.contains("MODSEQ of UID 1 went back")), "{found:?}");
        assert!(found.iter().any(|a| a.starts_with("stale read: read op 4") && a.contains("misses m1")), "{found:?}");
        assert!(found.iter().any(|a| a.contains("read op 4") && a.contains("which read op 2 saw")), "{found:?}");
    }

    #[test]
    fn acknowledged_flags_and_accounts_must_survive() {
        let mut store = op(2, OpKind::Flag, Outcome::Ok, 20.0, 30.0);
        (store.uid, store.flag) = (Some(1), Some("$Jepsen1".into()));
        let mut account = op(3, OpKind::CreateAccount, Outcome::Ok, 20.0, 30.0);
        account.account = "c@jepsen.test".into();
        let mut refused = op(4, OpKind::CreateAccount, Outcome::Fail, 20.0, 30.0);
        refused.account = "a@jepsen.test".into();
        let ops = vec![op(1, OpKind::Deliver, Outcome::Ok, 0.0, 10.0), store, account, refused];
        let found = anomalies(&history(ops, &[mailbox(vec![message(1, 1, &[], 2)])]));
        assert!(found.iter().any(|a| a.starts_with("lost flag: op 2 added $Jepsen1")), "{found:?}");
        assert!(found.iter().any(|a| a.starts_with("lost admin write: account c@jepsen.test")), "{found:?}");
        assert!(found.iter().any(|a| a.starts_with("failed admin write: account a@jepsen.test")), "{found:?}");
    }

    #[test]
    fn gaps_below_a_seen_uid_unknown_flags_and_account_lists_that_differ_are_found() {
        let mut read = op(3, OpKind::Read, Outcome::Ok, 30.0, 40.0);
        read.read = Some(mailbox(vec![message(2, 2, &[], 3)]));
        let ops = vec![
            op(1, OpKind::Deliver, Outcome::Info, 0.0, 10.0),
            op(2, OpKind::Deliver, Outcome::Info, 0.0, 10.0),
            read,
        ];
        let state = mailbox(vec![message(1, 1, &["$Ghost"], 2), message(2, 2, &[], 3)]);
        let mut history = history(ops, &[state.clone(), state]);
        history.final_state.accounts.insert(2, vec!["a@jepsen.test".into(), "b@jepsen.test".into()]);
        let found = anomalies(&history);
        assert!(found.iter().any(|a| a.contains("saw UID 2 but not UID 1")), "{found:?}");
        assert!(found.iter().any(|a| a.contains("UID 1 has $Ghost, which no operation added")), "{found:?}");
        assert!(found.iter().any(|a| a.starts_with("divergence: n1 and n2 list different accounts")), "{found:?}");
    }
}
