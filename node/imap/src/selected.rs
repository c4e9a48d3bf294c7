//! The selected state: the session's view of one mailbox (message sequence numbers to
//! UIDs), kept in step with the replicated change log, and the commands that change it
//! (STORE, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT).
//!
//! Message numbers only change when the session tells the client: expunges made by other
//! sessions wait until a command during which EXPUNGE may be sent (RFC 9051 §7.5.1).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use wmail_core::{Change, FlagAction, Mailbox, MessageRecord};

use crate::proto::command::{SeqBound, SequenceSet, StoreAction};
use crate::proto::response::push_flags;
use crate::session::Session;
use crate::uid_list::UidList;

/// The system flags (RFC 9051 §2.3.2) every mailbox offers.
const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

/// The session's view of the selected mailbox.
#[derive(Debug)]
pub struct Selected {
    /// Mailbox id.
    pub mailbox_id: u64,
    /// Name as selected (internal UTF-8 form).
    pub name: String,
    /// EXAMINE, or SELECT of a mailbox the user may not change.
    pub read_only: bool,
    /// UIDs by message sequence number (index + 1), ascending.
    pub uids: UidList,
    /// The UIDs that are `\Recent` for this session (IMAP4rev1 only).
    pub recent: Recent,
    /// The last change-log entry applied to this view.
    pub last_change_id: u64,
    /// The highest MODSEQ this view has accounted for (for a resync after the change log
    /// was trimmed past `last_change_id`).
    pub known_modseq: u64,
    /// Expunged by someone, not yet reported to the client: UID -> the expunge's MODSEQ
    /// (see [`Session::hold_back_highest_modseq`]).
    pub pending_expunges: BTreeMap<u32, u64>,
    /// Flags changed by someone, not yet reported.
    pub pending_flags: BTreeSet<u32>,
    /// The highest MODSEQ of flags already reported per UID (to skip echoing our own STORE).
    pub reported_modseq: HashMap<u32, u64>,
    /// The SEARCHRES saved result (RFC 5182), as UIDs.
    pub saved_search: Vec<u32>,
    /// The mailbox was deleted by another session.
    pub deleted: bool,
    /// The keywords the client was told of in FLAGS (see [`Selected::announce_keywords`]).
    pub keywords: BTreeSet<String>,
}

impl Selected {
    /// The view of `mailbox` with its current messages.
    pub fn new(mailbox: &Mailbox, uids: UidList, read_only: bool, last_change_id: u64) -> Self {
        Self {
            mailbox_id: mailbox.id,
            name: mailbox.name.clone(),
            read_only,
            uids,
            recent: Recent::default(),
            last_change_id,
            known_modseq: mailbox.highest_modseq,
            pending_expunges: BTreeMap::new(),
            pending_flags: BTreeSet::new(),
            reported_modseq: HashMap::new(),
            saved_search: Vec::new(),
            deleted: false,
            keywords: BTreeSet::new(),
        }
    }

    /// The MODSEQ just below the lowest expunge still to be reported, if one waits.
    fn below_pending_expunges(&self) -> Option<u64> {
        self.pending_expunges.values().min().map(|lowest| lowest.saturating_sub(1))
    }

    /// Writes the untagged FLAGS and PERMANENTFLAGS responses for `keywords` (at SELECT)
    /// and remembers them as told.
    pub fn write_flags(&mut self, out: &mut Vec<u8>, keywords: impl IntoIterator<Item = String>) {
        self.keywords.extend(keywords);
        let keywords: String = self.keywords.iter().map(|keyword| format!(" {keyword}")).collect();
        out.extend_from_slice(format!("* FLAGS ({SYSTEM_FLAGS}{keywords})\r\n").as_bytes());
        let permanent = if self.read_only { String::new() } else { format!("{SYSTEM_FLAGS}{keywords} \\*") };
        out.extend_from_slice(format!("* OK [PERMANENTFLAGS ({permanent})] limited\r\n").as_bytes());
    }

    /// RFC 3501 §7.2.6 (RFC 9051 §7.3.5): FLAGS lists every keyword the mailbox uses, so
    /// before a FETCH shows one the client was not told of (another session, or this one's
    /// STORE, added it) a new FLAGS response lists it. Call before writing `flags`.
    pub fn announce_keywords(&mut self, out: &mut Vec<u8>, flags: &[String]) {
        let new: Vec<String> = flags
            .iter()
            .filter(|flag| !flag.starts_with('\\') && !self.keywords.contains(flag.as_str()))
            .cloned()
            .collect();
        if !new.is_empty() {
            self.write_flags(out, new);
        }
    }

    /// The sequence number of `uid`, if it is in the view.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.position(uid).map(|index| index as u32 + 1)
    }

    /// Resolves a sequence set to `(seq, uid)` pairs in ascending order. With `uid` the
    /// set names UIDs and those not in the view are skipped (RFC 9051 §6.4.9); otherwise
    /// it names message numbers, and one beyond the mailbox is an error.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<(u32, u32)>, String> {
        let ranges = match set {
            SequenceSet::Saved => {
                let mut out: Vec<(u32, u32)> =
                    self.saved_search.iter().filter_map(|&uid| Some((self.seq_of(uid)?, uid))).collect();
                out.sort_unstable();
                return Ok(out);
            }
            SequenceSet::Ranges(ranges) => ranges,
        };
        let mut out = Vec::new();
        if uid {
            // "*" is the largest UID in use; with an empty mailbox nothing matches.
            let Some(largest) = self.uids.last() else { return Ok(out) };
            let value = |bound: SeqBound| match bound {
                SeqBound::Number(number) => number,
                SeqBound::Largest => largest,
            };
            for &(start, end) in ranges {
                let (low, high) = (value(start).min(value(end)), value(start).max(value(end)));
                let first = self.uids.count_below(low);
                let last = high.checked_add(1).map_or(self.uids.len(), |above| self.uids.count_below(above));
                out.extend((first..last).filter_map(|index| Some((index as u32 + 1, self.uids.get(index)?))));
            }
        } else {
            let count = self.uids.len() as u32;
            let value = |bound: SeqBound| match bound {
                SeqBound::Number(number) => number,
                SeqBound::Largest => count,
            };
            for &(start, end) in ranges {
                let (low, high) = (value(start).min(value(end)), value(start).max(value(end)));
                if high > count || low == 0 {
                    return Err(if count == 0 {
                        "the mailbox is empty: no message numbers are valid".into()
                    } else {
                        format!("message number out of range: the mailbox has {count} messages")
                    });
                }
                out.extend((low..=high).filter_map(|seq| Some((seq, self.uids.get(seq as usize - 1)?))));
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

impl Session {
    /// RFC 7162 §3.1: a CONDSTORE enabling command (FETCH or SEARCH with MODSEQ, FETCH
    /// CHANGEDSINCE, STORE UNCHANGEDSINCE, STATUS HIGHESTMODSEQ; SELECT/EXAMINE (CONDSTORE)
    /// and ENABLE set it themselves) turns CONDSTORE on for the rest of the connection: from
    /// then on every FETCH reporting a flag change carries UID and MODSEQ. Turned on with a mailbox
    /// selected, the client is told its HIGHESTMODSEQ (which it saw no SELECT give).
    pub(crate) fn enable_condstore(&mut self) {
        if std::mem::replace(&mut self.enabled.condstore, true) {
            return;
        }
        if let Some(selected) = &self.selected {
            // Below an expunge still to be reported (see `hold_back_highest_modseq`).
            let highest = selected
                .below_pending_expunges()
                .map_or(selected.known_modseq, |below| selected.known_modseq.min(below));
            self.untagged(&format!("OK [HIGHESTMODSEQ {highest}] CONDSTORE is on"));
        }
    }

    /// RFC 7162 §3.2 (RFC 5162 erratum 1810): MODSEQs sent while an expunge with a lower one
    /// waits to be reported (EXPUNGE is not allowed during FETCH, STORE or SEARCH) are
    /// followed by a HIGHESTMODSEQ below that expunge, so a QRESYNC client that caches what
    /// it saw and reconnects is still told of it.
    pub(crate) fn hold_back_highest_modseq(&mut self) {
        let Some(selected) = self.selected.as_ref() else { return };
        if let Some(below) = selected.below_pending_expunges()
            && self.enabled.qresync
        {
            self.untagged(&format!("OK [HIGHESTMODSEQ {below}] expunges are pending"));
        }
    }

    /// Brings the selected view up to date with the change log and queues the untagged
    /// responses: EXPUNGE or VANISHED (only when `expunges_allowed`), EXISTS and RECENT for
    /// new messages, then FETCH for changed flags.
    pub(crate) async fn sync(&mut self, expunges_allowed: bool) {
        let Some(account) = self.account.as_ref().map(|account| account.id) else { return };
        let Some(selected) = self.selected.as_mut() else { return };
        let mut added = false;
        let mut first_new_uid = None;
        if self.core.change_floor(account).is_ok_and(|floor| selected.last_change_id < floor) {
            added = resync_from_mailbox(&self.core, account, selected).await;
        }
        let changes = match self.core.changes_since(account, selected.last_change_id) {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "cannot read the change log");
                return;
            }
        };
        for (change_id, change) in changes {
            selected.last_change_id = change_id;
            if let Change::Added { modseq, .. }
            | Change::FlagsChanged { modseq, .. }
            | Change::Expunged { modseq, .. } = change
            {
                selected.known_modseq = selected.known_modseq.max(modseq);
            }
            match change {
                Change::Added { mailbox_id, uid, .. }
                    if mailbox_id == selected.mailbox_id && selected.uids.last().is_none_or(|last| uid > last) =>
                {
                    selected.uids.push(uid);
                    added = true;
                    first_new_uid = first_new_uid.or(Some(uid));
                }
                Change::FlagsChanged { mailbox_id, uid, .. } if mailbox_id == selected.mailbox_id => {
                    selected.pending_flags.insert(uid);
                }
                Change::Expunged { mailbox_id, uid, modseq }
                    if mailbox_id == selected.mailbox_id && selected.seq_of(uid).is_some() =>
                {
                    selected.pending_expunges.insert(uid, modseq);
                }
                Change::MailboxDeleted { mailbox_id } if mailbox_id == selected.mailbox_id => selected.deleted = true,
                _ => {}
            }
        }
        let mut out = Vec::new();
        if expunges_allowed && !selected.pending_expunges.is_empty() {
            let expunged: BTreeSet<u32> = std::mem::take(&mut selected.pending_expunges).into_keys().collect();
            write_expunges(&mut out, selected, &expunged, self.enabled.qresync);
        }
        if let (Some(first_new_uid), Some(last)) = (first_new_uid, selected.uids.last())
            && !self.enabled.rev2
        {
            // The new messages are \Recent for the first session told of them. Every session
            // told would otherwise propose a claim: what this node has already seen claimed
            // by another is skipped.
            let (mailbox_id, read_only) = (selected.mailbox_id, selected.read_only);
            let first_unclaimed =
                self.core.mailbox(account, mailbox_id).ok().flatten().map_or(0, |mailbox| mailbox.first_recent_uid);
            let recent =
                self.take_recent(account, mailbox_id, read_only, first_new_uid..last + 1, first_unclaimed).await;
            if let Some(selected) = self.selected.as_mut() {
                selected.recent.add(recent);
            }
        }
        let Some(selected) = self.selected.as_mut() else { return };
        if added {
            out.extend_from_slice(format!("* {} EXISTS\r\n", selected.uids.len()).as_bytes());
            if !self.enabled.rev2 {
                out.extend_from_slice(format!("* {} RECENT\r\n", selected.recent.count_in(&selected.uids)).as_bytes());
            }
        }
        // After EXISTS: a new message's flags may have changed too, and a FETCH must not name
        // a message number the client has not been told exists (imaptest's stress run).
        // With QRESYNC on, not while an expunge waits to be reported (RFC 7162 §3.2: such a
        // client keeps the highest MODSEQ it saw; one above an expunge it was not told of
        // makes its next SELECT (QRESYNC) skip that VANISHED). They wait with it.
        if self.enabled.qresync && !selected.pending_expunges.is_empty() {
            self.queue(&out);
            // This command's own MODSEQs (FETCH, STORE, SEARCH) are out already.
            self.hold_back_highest_modseq();
            return;
        }
        // Flags of messages still in view, with what they are now.
        let flag_uids: Vec<u32> = std::mem::take(&mut selected.pending_flags).into_iter().collect();
        for uid in flag_uids {
            let Some(seq) = selected.seq_of(uid) else { continue };
            if selected.pending_expunges.contains_key(&uid) {
                continue;
            }
            let Ok(Some(record)) = self.core.message(account, selected.mailbox_id, uid) else { continue };
            // Entries live only until this sync: the map never grows with the mailbox.
            if selected.reported_modseq.remove(&uid).is_some_and(|reported| reported >= record.modseq) {
                continue;
            }
            selected.announce_keywords(&mut out, &record.flags);
            write_flags_fetch(&mut out, seq, &record, self.enabled.condstore, &selected.recent, self.enabled.rev2);
        }
        // Every change this session made itself is now read from the log: forget them.
        selected.reported_modseq.clear();
        self.queue(&out);
    }

    /// The UIDs of `uids` that are `\Recent` for this session (RFC 3501 §2.3.2): those the
    /// mailbox has not handed out (from `first_unclaimed` up). A read-write session claims
    /// them, with a replicated claim it waits for, so exactly one session wins each
    /// message; an EXAMINE only shows them (§6.3.2). Nothing unclaimed, nothing proposed.
    /// Bounded: without a quorum within 2 s it shows none rather than hold the command up
    /// (if the claim still commits later, those messages are recent for no session, which
    /// §2.3.2 tolerates better than two).
    pub(crate) async fn take_recent(
        &self,
        account: u64,
        mailbox_id: u64,
        read_only: bool,
        uids: std::ops::Range<u32>,
        first_unclaimed: u32,
    ) -> std::ops::Range<u32> {
        let unclaimed = uids.start.max(first_unclaimed)..uids.end;
        if unclaimed.is_empty() || read_only {
            return unclaimed;
        }
        let claim = self.core.claim_recent(account, mailbox_id, uids.end);
        match tokio::time::timeout(std::time::Duration::from_secs(2), claim).await {
            Ok(Ok(won)) => won,
            Ok(Err(error)) => {
                tracing::warn!(session = %self.id, %error, "cannot claim \\Recent");
                0..0
            }
            Err(_) => {
                tracing::warn!(session = %self.id, "claiming \\Recent took over 2 s; none shown");
                0..0
            }
        }
    }

    /// Whether the selected mailbox disappeared under the session.
    pub(crate) fn selected_was_deleted(&self) -> bool {
        self.selected.as_ref().is_some_and(|selected| selected.deleted)
    }

    /// STORE (RFC 9051 §6.4.6, RFC 7162 §3.1.3 UNCHANGEDSINCE).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn store(
        &mut self,
        tag: &str,
        uid: bool,
        set: &SequenceSet,
        action: StoreAction,
        silent: bool,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    ) {
        let account_id = self.account().id;
        let selected = self.selected.as_ref().expect("selected state checked");
        if selected.read_only {
            self.no(tag, "[READ-ONLY] the mailbox is read-only (EXAMINE)");
            return;
        }
        if flags.iter().any(|flag| flag.eq_ignore_ascii_case("\\Recent")) {
            self.bad(tag, "\\Recent cannot be stored");
            return;
        }
        let targets = match selected.resolve(set, uid) {
            Ok(targets) => targets,
            Err(text) => return self.bad(tag, &text),
        };
        let mailbox_id = selected.mailbox_id;
        let action = match action {
            StoreAction::Replace => FlagAction::Replace,
            StoreAction::Add => FlagAction::Add,
            StoreAction::Remove => FlagAction::Remove,
        };
        let uids: Vec<u32> = targets.iter().map(|&(_, uid)| uid).collect();
        let named = flags.clone();
        let failed = match self.core.set_flags(account_id, mailbox_id, uids, action, flags, unchanged_since).await {
            Ok((_, failed)) => failed,
            Err(error) => return self.no_for(tag, &error),
        };
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        let condstore = self.enabled.condstore;
        let mut out = Vec::new();
        // A keyword a STORE names is announced now (RFC 3501 §6.4.6, §7.2.6), even with
        // -FLAGS or .SILENT, as Dovecot does (imaptest checks it), not at its first FETCH.
        self.selected.as_mut().expect("selected state checked").announce_keywords(&mut out, &named);
        let failed_set: std::collections::HashSet<u32> = failed.iter().copied().collect();
        let mut records = crate::fetch::Records::new(&self.core, account_id, mailbox_id, &targets);
        for (position, &(seq, uid_value)) in targets.iter().enumerate() {
            if failed_set.contains(&uid_value) {
                continue;
            }
            let Ok(Some(record)) = records.get(position).await else { continue };
            let selected = self.selected.as_mut().expect("selected state checked");
            selected.reported_modseq.insert(uid_value, record.modseq);
            // RFC 7162 §3.1.3: with UNCHANGEDSINCE, even .SILENT reports the new MODSEQ.
            if !silent || unchanged_since.is_some() {
                if !silent {
                    selected.announce_keywords(&mut out, &record.flags);
                }
                out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
                if !silent {
                    out.extend_from_slice(b"FLAGS ");
                    push_flags(&mut out, display_flags(&record, &selected.recent, self.enabled.rev2));
                    out.push(b' ');
                }
                // RFC 7162 §3.1: once CONDSTORE is on, every untagged FETCH carries UID.
                if uid || condstore {
                    out.extend_from_slice(format!("UID {uid_value} ").as_bytes());
                }
                if condstore {
                    out.extend_from_slice(format!("MODSEQ ({}) ", record.modseq).as_bytes());
                }
                out.pop();
                out.extend_from_slice(b")\r\n");
            }
        }
        self.queue(&out);
        self.sync(uid).await;
        if failed.is_empty() {
            self.ok(tag, "STORE completed");
        } else {
            let selected = self.selected.as_ref().expect("selected state checked");
            let numbers: Vec<u32> =
                if uid { failed.clone() } else { failed.iter().filter_map(|&uid| selected.seq_of(uid)).collect() };
            self.ok(tag, &format!("[MODIFIED {}] conditional STORE failed for some messages", compress_set(&numbers)));
        }
    }

    /// COPY and MOVE (RFC 9051 §6.4.7, RFC 6851, RFC 4315 COPYUID).
    pub(crate) async fn copy(&mut self, tag: &str, uid: bool, set: &SequenceSet, destination: &str, moving: bool) {
        let account_id = self.account().id;
        let name = match self.decode_mailbox_name(destination) {
            Ok(name) => name,
            Err(text) => return self.bad(tag, &text),
        };
        let selected = self.selected.as_ref().expect("selected state checked");
        if moving && selected.read_only {
            self.no(tag, "[READ-ONLY] the mailbox is read-only (EXAMINE)");
            return;
        }
        let targets = match selected.resolve(set, uid) {
            Ok(targets) => targets,
            Err(text) => return self.bad(tag, &text),
        };
        let from_mailbox = selected.mailbox_id;
        let destination = match self.core.mailbox_by_name(account_id, &name) {
            Ok(Some(mailbox)) => mailbox,
            Ok(None) => return self.no(tag, "[TRYCREATE] the destination mailbox does not exist"),
            Err(error) => return self.no_for(tag, &error),
        };
        if targets.is_empty() {
            // RFC 9051 §6.4.9: a UID range that matches nothing is not an error.
            self.sync(uid).await;
            self.ok(tag, &format!("{} completed (no messages)", if moving { "MOVE" } else { "COPY" }));
            return;
        }
        let uids: Vec<u32> = targets.iter().map(|&(_, uid)| uid).collect();
        let result = match self.core.copy_messages(account_id, from_mailbox, uids, destination.id, moving).await {
            Ok(result) => result,
            Err(error) => return self.no_for(tag, &error),
        };
        let code = if result.source_uids.is_empty() {
            String::new()
        } else {
            format!(
                "[COPYUID {} {} {}] ",
                result.uid_validity,
                compress_set(&result.source_uids),
                compress_set(&result.new_uids)
            )
        };
        if moving {
            // RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
            if !code.is_empty() {
                self.untagged(&format!("OK {code}moved"));
            }
            let selected = self.selected.as_mut().expect("selected state checked");
            let moved: BTreeSet<u32> = result.source_uids.iter().copied().collect();
            let mut out = Vec::new();
            write_expunges(&mut out, selected, &moved, self.enabled.qresync);
            self.queue(&out);
            self.sync(true).await;
            self.ok(tag, "MOVE completed");
        } else {
            self.sync(uid).await;
            self.ok(tag, &format!("{code}COPY completed"));
        }
    }

    /// EXPUNGE, UID EXPUNGE (RFC 4315 §2.1) and the silent expunge of CLOSE.
    pub(crate) async fn expunge(&mut self, tag: Option<&str>, uids: Option<&SequenceSet>) {
        let account_id = self.account().id;
        let selected = self.selected.as_ref().expect("selected state checked");
        if selected.read_only {
            if let Some(tag) = tag {
                self.no(tag, "[READ-ONLY] the mailbox is read-only (EXAMINE)");
            }
            return;
        }
        let mailbox_id = selected.mailbox_id;
        let allowed: Option<BTreeSet<u32>> = match uids.map(|set| selected.resolve(set, true)) {
            Some(Ok(targets)) => Some(targets.into_iter().map(|(_, uid)| uid).collect()),
            Some(Err(text)) => {
                if let Some(tag) = tag {
                    self.bad(tag, &text);
                }
                return;
            }
            None => None,
        };
        let messages = match self.core.mailbox_messages(account_id, mailbox_id).await {
            Ok(messages) => messages,
            Err(error) => {
                if let Some(tag) = tag {
                    self.no_for(tag, &error);
                }
                return;
            }
        };
        let doomed: Vec<u32> = messages
            .iter()
            .filter(|message| message.flags.iter().any(|flag| flag == "\\Deleted"))
            .filter(|message| allowed.as_ref().is_none_or(|allowed| allowed.contains(&message.uid)))
            .map(|message| message.uid)
            .collect();
        let removed = if doomed.is_empty() {
            Vec::new()
        } else {
            match self.core.expunge(account_id, mailbox_id, doomed).await {
                Ok(removed) => removed,
                Err(error) => {
                    if let Some(tag) = tag {
                        self.no_for(tag, &error);
                    }
                    return;
                }
            }
        };
        let Some(tag) = tag else { return };
        let selected = self.selected.as_mut().expect("selected state checked");
        let removed: BTreeSet<u32> = removed.into_iter().collect();
        let mut out = Vec::new();
        write_expunges(&mut out, selected, &removed, self.enabled.qresync);
        self.queue(&out);
        self.sync(true).await;
        self.ok(tag, "EXPUNGE completed");
    }
}

/// Rebuilds what changed from the mailbox itself, for a view whose place in the change log
/// was trimmed away: messages gone are pending expunges, new ones are appended, and those
/// with a MODSEQ above what the view knew get their flags reported. Returns whether
/// messages were added.
async fn resync_from_mailbox(core: &wmail_core::Core, account_id: u64, selected: &mut Selected) -> bool {
    // The change id first: changes made while the mailbox is read are applied again by the
    // next sync, which is harmless.
    let Ok(last_change_id) = core.last_change_id(account_id) else { return false };
    match core.mailbox(account_id, selected.mailbox_id) {
        Ok(Some(_)) => {}
        Ok(None) => {
            selected.deleted = true;
            return false;
        }
        Err(_) => return false,
    }
    let Ok(records) = core.mailbox_messages(account_id, selected.mailbox_id).await else { return false };
    tracing::info!(mailbox = selected.mailbox_id, "change log trimmed past this session; resynchronising");
    let present: HashMap<u32, u64> = records.iter().map(|record| (record.uid, record.modseq)).collect();
    let known_modseq = selected.known_modseq;
    for uid in selected.uids.iter() {
        if !present.contains_key(&uid) {
            // Expunged after what this view knew: its MODSEQ is above that.
            selected.pending_expunges.insert(uid, known_modseq + 1);
        }
    }
    let mut added = false;
    let last_uid = selected.uids.last().unwrap_or(0);
    for record in &records {
        if record.uid > last_uid {
            selected.uids.push(record.uid);
            added = true;
        } else if record.modseq > selected.known_modseq && present.contains_key(&record.uid) {
            selected.pending_flags.insert(record.uid);
        }
    }
    selected.known_modseq = records.iter().map(|record| record.modseq).max().unwrap_or(0).max(selected.known_modseq);
    selected.last_change_id = last_change_id;
    added
}

/// Whether `value` is in `set`, with `*` standing for `largest` and `$` for `saved` (no
/// saved result: `$` contains nothing).
pub(crate) fn set_contains(set: &SequenceSet, value: u32, largest: u32, saved: Option<&[u32]>) -> bool {
    match set {
        SequenceSet::Saved => saved.is_some_and(|saved| saved.contains(&value)),
        SequenceSet::Ranges(ranges) => ranges.iter().any(|&(start, end)| {
            let bound = |bound| match bound {
                SeqBound::Number(number) => number,
                SeqBound::Largest => largest,
            };
            let (low, high) = (bound(start).min(bound(end)), bound(start).max(bound(end)));
            (low..=high).contains(&value)
        }),
    }
}

/// The UIDs that are `\Recent` for one session (RFC 3501 §2.3.2): those it claimed first
/// (or, after EXAMINE, the unclaimed ones), as ascending ranges.
#[derive(Debug, Clone, Default)]
pub struct Recent(Vec<std::ops::Range<u32>>);

impl Recent {
    /// Adds `uids` (ignored when empty).
    pub fn add(&mut self, uids: std::ops::Range<u32>) {
        if uids.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(last) if last.end >= uids.start => last.end = last.end.max(uids.end),
            _ => self.0.push(uids),
        }
    }

    /// Whether `uid` is recent.
    pub fn contains(&self, uid: u32) -> bool {
        self.0.iter().any(|range| range.contains(&uid))
    }

    /// How many of `uids` are recent.
    pub fn count_in(&self, uids: &UidList) -> usize {
        self.0.iter().map(|range| uids.count_below(range.end) - uids.count_below(range.start)).sum()
    }
}

/// Flags as the client sees them: the stored ones plus `\Recent` for rev1 sessions.
pub(crate) fn display_flags(record: &MessageRecord, recent: &Recent, rev2: bool) -> Vec<String> {
    let mut flags = record.flags.clone();
    if !rev2 && recent.contains(record.uid) {
        flags.push("\\Recent".into());
    }
    flags
}

/// Queues `* seq FETCH (FLAGS (...) UID n [MODSEQ (m)])` for an unsolicited flag change
/// (RFC 7162 §3.2.4 requires the UID once QRESYNC is on; it never hurts).
fn write_flags_fetch(
    out: &mut Vec<u8>,
    seq: u32,
    record: &MessageRecord,
    condstore: bool,
    recent: &Recent,
    rev2: bool,
) {
    out.extend_from_slice(format!("* {seq} FETCH (FLAGS ").as_bytes());
    push_flags(out, display_flags(record, recent, rev2));
    out.extend_from_slice(format!(" UID {}", record.uid).as_bytes());
    if condstore {
        out.extend_from_slice(format!(" MODSEQ ({})", record.modseq).as_bytes());
    }
    out.extend_from_slice(b")\r\n");
}

/// Removes `expunged` UIDs from the view and writes the responses: `* VANISHED uids` with
/// QRESYNC (RFC 7162 §3.2.10), else one `* n EXPUNGE` per message, highest number first so
/// the numbers stay valid as they are applied.
pub(crate) fn write_expunges(out: &mut Vec<u8>, selected: &mut Selected, expunged: &BTreeSet<u32>, qresync: bool) {
    let present: Vec<u32> = expunged.iter().copied().filter(|&uid| selected.seq_of(uid).is_some()).collect();
    if present.is_empty() {
        return;
    }
    if qresync {
        out.extend_from_slice(format!("* VANISHED {}\r\n", compress_set(&present)).as_bytes());
    } else {
        for &uid in present.iter().rev() {
            let seq = selected.seq_of(uid).expect("present");
            out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
        }
    }
    selected.uids.remove_all(expunged);
    for uid in &present {
        selected.pending_expunges.remove(uid);
        selected.pending_flags.remove(uid);
        selected.reported_modseq.remove(uid);
    }
}

/// Writes numbers as a compact sequence set (`1:3,7,9:10`); the input need not be sorted.
pub(crate) fn compress_set(numbers: &[u32]) -> String {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    compress_runs(&sorted)
}

/// `numbers` in their order, each ascending run of consecutive numbers as `a:b` (ESORT's
/// ALL, RFC 5267 §3, is a sequence set in sort order).
pub(crate) fn compress_runs(numbers: &[u32]) -> String {
    let mut out = String::new();
    let mut index = 0;
    while index < numbers.len() {
        let start = numbers[index];
        let mut end = start;
        while index + 1 < numbers.len() && Some(numbers[index + 1]) == end.checked_add(1) {
            index += 1;
            end = numbers[index];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(uids: &[u32]) -> Selected {
        Selected {
            mailbox_id: 1,
            name: "INBOX".into(),
            read_only: false,
            uids: UidList::from_sorted(uids.iter().copied()),
            recent: Recent::default(),
            last_change_id: 0,
            known_modseq: 0,
            pending_expunges: BTreeMap::new(),
            pending_flags: BTreeSet::new(),
            reported_modseq: HashMap::new(),
            saved_search: Vec::new(),
            deleted: false,
            keywords: BTreeSet::new(),
        }
    }

    fn ranges(list: &[(SeqBound, SeqBound)]) -> SequenceSet {
        SequenceSet::Ranges(list.to_vec())
    }

    #[test]
    fn sequence_sets_resolve_per_rfc_9051() {
        use SeqBound::{Largest, Number};
        let selected = view(&[3, 5, 9, 10]);
        assert_eq!(selected.resolve(&ranges(&[(Number(2), Largest)]), false).unwrap(), [(2, 5), (3, 9), (4, 10)]);
        assert_eq!(selected.resolve(&ranges(&[(Number(4), Number(1))]), false).unwrap().len(), 4);
        assert!(selected.resolve(&ranges(&[(Number(5), Number(5))]), false).is_err());
        // UID sets skip what does not exist; "20:*" on a mailbox whose largest UID is 10 is 10.
        assert_eq!(selected.resolve(&ranges(&[(Number(4), Number(9))]), true).unwrap(), [(2, 5), (3, 9)]);
        assert_eq!(selected.resolve(&ranges(&[(Number(20), Largest)]), true).unwrap(), [(4, 10)]);
        assert!(view(&[]).resolve(&ranges(&[(Number(1), Largest)]), true).unwrap().is_empty());
        assert!(view(&[]).resolve(&ranges(&[(Number(1), Largest)]), false).is_err());
    }

    #[test]
    fn expunges_are_reported_from_the_top() {
        let mut selected = view(&[3, 5, 9, 10]);
        let mut out = Vec::new();
        write_expunges(&mut out, &mut selected, &[5, 10, 77].into_iter().collect(), false);
        assert_eq!(String::from_utf8(out).unwrap(), "* 4 EXPUNGE\r\n* 2 EXPUNGE\r\n");
        assert_eq!(selected.uids.iter().collect::<Vec<_>>(), [3, 9]);
        let mut out = Vec::new();
        write_expunges(&mut out, &mut selected, &[3, 9].into_iter().collect(), true);
        assert_eq!(String::from_utf8(out).unwrap(), "* VANISHED 3,9\r\n");
        assert_eq!(compress_set(&[9, 1, 2, 3, 7, 10]), "1:3,7,9:10");
        // In sort order, only ascending runs become ranges.
        assert_eq!(compress_runs(&[9, 1, 2, 3, 7, 6, 5, u32::MAX]), "9,1:3,7,6,5,4294967295");
    }
}
