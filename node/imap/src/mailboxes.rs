//! Commands on mailboxes as a whole: SELECT/EXAMINE (with CONDSTORE and QRESYNC), CREATE,
//! DELETE, RENAME, SUBSCRIBE, LIST/LSUB (RFC 5258, RFC 5819, RFC 6154), STATUS, APPEND,
//! and the QUOTA commands (RFC 9208); plus the dispatch of selected-state commands.

use std::collections::{BTreeMap, BTreeSet};

use wmail_core::{INBOX, MAILBOX_SEPARATOR, Mailbox, StoredBody, now_ms};

use crate::proto::command::{AppendMessage, Command, ListOptions, QresyncParams, StatusItem};
use crate::proto::response::push_string;
use crate::selected::{Selected, compress_set, display_flags};
use crate::session::Session;
use crate::utf7;

/// Longest mailbox name in octets.
const MAX_NAME: usize = 512;
/// Deepest hierarchy.
const MAX_LEVELS: usize = 32;

impl Session {
    /// Runs a command of the authenticated or selected state (the state was checked).
    pub(crate) async fn mailbox_command(&mut self, tag: &str, command: Command) {
        match command {
            Command::Select { mailbox, read_only, condstore, qresync } => {
                self.select(tag, &mailbox, read_only, condstore, qresync).await
            }
            Command::Create { mailbox, special_use } => self.create(tag, &mailbox, special_use).await,
            Command::Delete { mailbox } => self.delete(tag, &mailbox).await,
            Command::Rename { from, to } => self.rename(tag, &from, &to).await,
            Command::Subscribe { mailbox } => self.subscribe(tag, &mailbox, true).await,
            Command::Unsubscribe { mailbox } => self.subscribe(tag, &mailbox, false).await,
            Command::List { reference, patterns, options, lsub } => {
                self.list(tag, &reference, &patterns, &options, lsub).await
            }
            Command::Status { mailbox, items } => self.status(tag, &mailbox, &items).await,
            Command::GetQuotaRoot { mailbox } => self.quota_root(tag, &mailbox),
            Command::GetQuota { root } => self.quota(tag, &root),
            Command::SetQuota { .. } => self.no(tag, "[NOPERM] quotas are set by the administrator"),
            Command::Close => {
                self.expunge(None, None).await;
                self.selected = None;
                self.ok(tag, "CLOSE completed");
            }
            Command::Unselect => {
                self.selected = None;
                self.ok(tag, "UNSELECT completed");
            }
            Command::Expunge { uids } => self.expunge(Some(tag), uids.as_ref()).await,
            Command::Store { uid, set, action, silent, flags, unchanged_since } => {
                self.store(tag, uid, &set, action, silent, flags, unchanged_since).await
            }
            Command::Copy { uid, set, mailbox } => self.copy(tag, uid, &set, &mailbox, false).await,
            Command::Move { uid, set, mailbox } => self.copy(tag, uid, &set, &mailbox, true).await,
            Command::Fetch { uid, set, items, changed_since, vanished } => {
                self.fetch(tag, uid, &set, &items, changed_since, vanished).await
            }
            Command::Search { uid, returns, charset, key } => {
                self.search(tag, uid, returns.as_deref(), charset.as_deref(), &key).await
            }
            Command::Sort { uid, returns, criteria, charset, key } => {
                self.sort(tag, uid, returns.as_deref(), &criteria, &charset, &key).await
            }
            Command::Thread { uid, algorithm, charset, key } => self.thread(tag, uid, algorithm, &charset, &key).await,
            other => self.bad(tag, &format!("{other:?} is not valid here")),
        }
    }

    /// Turns a mailbox name from the wire into its stored form: modified UTF-7 decoded for
    /// clients that did not enable UTF-8, INBOX case-insensitive (RFC 9051 §5.1), a trailing
    /// separator dropped, and unusable names refused.
    pub(crate) fn decode_mailbox_name(&self, raw: &str) -> Result<String, String> {
        let name = if self.enabled.utf8() {
            raw.to_owned()
        } else {
            utf7::decode(raw).ok_or_else(|| format!("{raw:?} is not valid modified UTF-7 (RFC 3501 §5.1.3)"))?
        };
        let name = name.strip_suffix(MAILBOX_SEPARATOR).unwrap_or(&name);
        let name = match name.split_once(MAILBOX_SEPARATOR) {
            Some((first, rest)) if first.eq_ignore_ascii_case(INBOX) => format!("{INBOX}{MAILBOX_SEPARATOR}{rest}"),
            _ if name.eq_ignore_ascii_case(INBOX) => INBOX.to_owned(),
            _ => name.to_owned(),
        };
        if name.is_empty() {
            return Err("the mailbox name is empty".into());
        }
        if name.len() > MAX_NAME || name.split(MAILBOX_SEPARATOR).count() > MAX_LEVELS {
            return Err("the mailbox name is too long".into());
        }
        if name.chars().any(|c| c.is_control()) || name.split(MAILBOX_SEPARATOR).any(str::is_empty) {
            return Err("the mailbox name contains control characters or an empty level".into());
        }
        Ok(name)
    }

    /// Writes a stored name the way this client reads names.
    pub(crate) fn push_mailbox_name(&self, out: &mut Vec<u8>, name: &str) {
        if self.enabled.utf8() {
            push_string(out, name.as_bytes(), true);
        } else {
            push_string(out, utf7::encode(name).as_bytes(), false);
        }
    }

    async fn select(&mut self, tag: &str, raw: &str, read_only: bool, condstore: bool, qresync: Option<QresyncParams>) {
        // RFC 9051 §6.3.2: a SELECT deselects first, even when it fails.
        if self.selected.take().is_some() && self.enabled.qresync {
            // RFC 7162 §3.2.11: tell a QRESYNC client the previous mailbox is closed.
            self.untagged("OK [CLOSED] previous mailbox closed");
        }
        if qresync.is_some() && !self.enabled.qresync {
            return self.bad(tag, "QRESYNC parameters need ENABLE QRESYNC first");
        }
        if condstore {
            self.enabled.condstore = true;
        }
        let Some(mailbox) = self.fresh_mailbox(tag, raw).await else { return };
        let account_id = self.account().id;
        let last_change_id = match self.core.last_change_id(account_id) {
            Ok(id) => id,
            Err(error) => return self.no_for(tag, &error),
        };
        let qresync = qresync.filter(|params| params.uid_validity == mailbox.uid_validity);
        let scan = match self.core.scan_mailbox(account_id, mailbox.id, qresync.as_ref().map(|p| p.modseq)).await {
            Ok(scan) => scan,
            Err(error) => return self.no_for(tag, &error),
        };
        let count = scan.uids.len();
        let uids = crate::uid_list::UidList::from_sorted(scan.uids.iter().copied());
        let mut selected = Selected::new(&mailbox, uids, read_only, last_change_id);
        if !self.enabled.rev2 {
            // The unclaimed messages are \Recent for the first session to select the mailbox.
            let recent = self
                .take_recent(account_id, mailbox.id, read_only, 0..mailbox.uid_next, mailbox.first_recent_uid)
                .await;
            selected.recent.add(recent);
        }
        let rev2 = self.enabled.rev2;
        let mut out = Vec::new();
        out.extend_from_slice(format!("* {count} EXISTS\r\n").as_bytes());
        if !rev2 {
            out.extend_from_slice(format!("* {} RECENT\r\n", selected.recent.count_in(&selected.uids)).as_bytes());
            // RFC 3501 §6.3.1: the first unseen message.
            if let Some(index) = scan.first_unseen {
                out.extend_from_slice(format!("* OK [UNSEEN {}] first unseen\r\n", index + 1).as_bytes());
            }
        }
        selected.write_flags(&mut out, scan.keywords.iter().cloned());
        out.extend_from_slice(format!("* OK [UIDVALIDITY {}] UIDs valid\r\n", mailbox.uid_validity).as_bytes());
        out.extend_from_slice(format!("* OK [UIDNEXT {}] predicted next UID\r\n", mailbox.uid_next).as_bytes());
        // RFC 7162 §3.1.2.1: HIGHESTMODSEQ in every SELECT response.
        out.extend_from_slice(format!("* OK [HIGHESTMODSEQ {}] highest\r\n", mailbox.highest_modseq).as_bytes());
        out.extend_from_slice(format!("* OK [MAILBOXID ({})] ok\r\n", mailbox_object_id(&mailbox)).as_bytes());
        if rev2 {
            // RFC 9051 §6.3.2: a LIST response with the mailbox name.
            out.extend_from_slice(b"* LIST () \"/\" ");
            self.push_mailbox_name(&mut out, &mailbox.name);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(params) = qresync {
            self.qresync_report(&mut out, account_id, &mailbox, &params, &scan.changed, &selected);
        }
        self.queue(&out);
        self.selected = Some(selected);
        let access = if read_only { "[READ-ONLY]" } else { "[READ-WRITE]" };
        self.ok(tag, &format!("{access} {} completed", if read_only { "EXAMINE" } else { "SELECT" }));
    }

    /// Looks a mailbox up by its wire name after a read barrier (the freshest view: every
    /// write acknowledged before this command is seen); answers the command and returns
    /// `None` when the name is bad or the mailbox does not exist.
    async fn fresh_mailbox(&mut self, tag: &str, raw: &str) -> Option<Mailbox> {
        let name = match self.decode_mailbox_name(raw) {
            Ok(name) => name,
            Err(text) => {
                self.bad(tag, &text);
                return None;
            }
        };
        if let Err(error) = self.core.read_barrier().await {
            self.no_for(tag, &error);
            return None;
        }
        match self.core.mailbox_by_name(self.account().id, &name) {
            Ok(Some(mailbox)) => Some(mailbox),
            Ok(None) => {
                self.no(tag, "[NONEXISTENT] no such mailbox");
                None
            }
            Err(error) => {
                self.no_for(tag, &error);
                None
            }
        }
    }

    /// RFC 7162 §3.2.5.2: what changed since the client's MODSEQ: VANISHED (EARLIER) for
    /// expunged UIDs it may know, then FETCH for messages changed since.
    fn qresync_report(
        &self,
        out: &mut Vec<u8>,
        account_id: u64,
        mailbox: &Mailbox,
        params: &QresyncParams,
        changed: &[(usize, wmail_core::MessageRecord)],
        selected: &Selected,
    ) {
        let known = params.known_uids.as_ref().and_then(|set| {
            // Known UIDs are resolved against the full UID space, not the view.
            let everything =
                Selected::new(mailbox, crate::uid_list::UidList::from_sorted(1..mailbox.uid_next), true, 0);
            everything
                .resolve(set, true)
                .ok()
                .map(|pairs| pairs.into_iter().map(|(_, uid)| uid).collect::<BTreeSet<u32>>())
        });
        let mut vanished = BTreeSet::new();
        if let Ok(uids) = self.core.expunged_since(account_id, mailbox.id, params.modseq) {
            vanished.extend(uids.into_iter().filter(|uid| known.as_ref().is_none_or(|known| known.contains(uid))));
        }
        let vanished: Vec<u32> = vanished.into_iter().filter(|uid| selected.seq_of(*uid).is_none()).collect();
        if !vanished.is_empty() {
            out.extend_from_slice(format!("* VANISHED (EARLIER) {}\r\n", compress_set(&vanished)).as_bytes());
        }
        for (index, message) in changed {
            out.extend_from_slice(format!("* {} FETCH (UID {} FLAGS ", index + 1, message.uid).as_bytes());
            crate::proto::response::push_flags(out, display_flags(message, &selected.recent, self.enabled.rev2));
            out.extend_from_slice(format!(" MODSEQ ({}))\r\n", message.modseq).as_bytes());
        }
    }

    async fn create(&mut self, tag: &str, raw: &str, special_use: Vec<String>) {
        let name = match self.decode_mailbox_name(raw) {
            Ok(name) => name,
            Err(text) => return self.bad(tag, &text),
        };
        if name == INBOX {
            return self.no(tag, "[ALREADYEXISTS] INBOX always exists");
        }
        const USES: [&str; 7] = ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"];
        let mut uses = Vec::new();
        for requested in &special_use {
            match USES.iter().find(|known| known.eq_ignore_ascii_case(requested)) {
                Some(known) => uses.push(*known),
                // RFC 6154 §3: an unsupported attribute fails the CREATE.
                None => return self.no(tag, &format!("[USEATTR] {requested} is not a special use this server knows")),
            }
        }
        if uses.len() > 1 {
            return self.no(tag, "[USEATTR] one special use per mailbox");
        }
        let account_id = self.account().id;
        match self.core.create_mailbox(account_id, &name, uses.first().map(|use_| use_.to_string())).await {
            Ok(_) => self.ok(tag, "CREATE completed"),
            Err(error) => self.no_for(tag, &error),
        }
    }

    async fn delete(&mut self, tag: &str, raw: &str) {
        let name = match self.decode_mailbox_name(raw) {
            Ok(name) => name,
            Err(text) => return self.bad(tag, &text),
        };
        if name == INBOX {
            return self.no(tag, "[CANNOT] INBOX cannot be deleted");
        }
        let account_id = self.account().id;
        if self.selected.as_ref().is_some_and(|selected| selected.name == name) {
            self.selected = None;
        }
        match self.core.delete_mailbox(account_id, &name).await {
            Ok(()) => self.ok(tag, "DELETE completed"),
            Err(error) => self.no_for(tag, &error),
        }
    }

    async fn rename(&mut self, tag: &str, from: &str, to: &str) {
        let (from, to) = match (self.decode_mailbox_name(from), self.decode_mailbox_name(to)) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(text), _) | (_, Err(text)) => return self.bad(tag, &text),
        };
        let account_id = self.account().id;
        match self.core.rename_mailbox(account_id, &from, &to).await {
            Ok(()) => {
                if let Some(selected) = self.selected.as_mut().filter(|selected| selected.name == from) {
                    selected.name = to;
                }
                self.ok(tag, "RENAME completed")
            }
            Err(error) => self.no_for(tag, &error),
        }
    }

    async fn subscribe(&mut self, tag: &str, raw: &str, subscribed: bool) {
        let name = match self.decode_mailbox_name(raw) {
            Ok(name) => name,
            Err(text) => return self.bad(tag, &text),
        };
        let account_id = self.account().id;
        match self.core.set_subscription(account_id, &name, subscribed).await {
            Ok(()) => self.ok(tag, if subscribed { "SUBSCRIBE completed" } else { "UNSUBSCRIBE completed" }),
            Err(error) => self.no_for(tag, &error),
        }
    }

    async fn list(&mut self, tag: &str, reference: &str, patterns: &[String], options: &ListOptions, lsub: bool) {
        let account_id = self.account().id;
        let command = if lsub { "LSUB" } else { "LIST" };
        // RFC 9051 §6.3.9: an empty pattern asks for the separator and root.
        if !lsub && patterns.len() == 1 && patterns[0].is_empty() {
            self.untagged("LIST (\\Noselect) \"/\" \"\"");
            return self.ok(tag, "LIST completed");
        }
        let (mailboxes, subscriptions) = match (self.core.mailboxes(account_id), self.core.subscriptions(account_id)) {
            (Ok(mailboxes), Ok(subscriptions)) => (mailboxes, subscriptions),
            (Err(error), _) | (_, Err(error)) => return self.no_for(tag, &error),
        };
        let subscribed: BTreeSet<&str> = subscriptions.iter().map(String::as_str).collect();
        let existing: BTreeMap<&str, &Mailbox> =
            mailboxes.iter().map(|mailbox| (mailbox.name.as_str(), mailbox)).collect();
        // Every name to consider: mailboxes, the levels above them, and subscriptions.
        let mut names: BTreeSet<String> = BTreeSet::new();
        for name in existing.keys().copied().chain(subscribed.iter().copied()) {
            names.insert(name.to_owned());
            for (index, _) in name.match_indices(MAILBOX_SEPARATOR) {
                names.insert(name[..index].to_owned());
            }
        }
        let mut matchers = Vec::new();
        for pattern in patterns {
            let pattern = if self.enabled.utf8() {
                pattern.clone()
            } else {
                match utf7::decode(pattern) {
                    Some(pattern) => pattern,
                    None => return self.bad(tag, "the pattern is not valid modified UTF-7"),
                }
            };
            let mut full = format!("{reference}{pattern}");
            // INBOX matches case-insensitively (RFC 9051 §6.3.9).
            if full.len() >= INBOX.len() && full[..INBOX.len()].eq_ignore_ascii_case(INBOX) {
                let rest = full[INBOX.len()..].to_owned();
                full = format!("{INBOX}{rest}");
            }
            matchers.push(full);
        }
        let select_subscribed = lsub || options.select_subscribed;
        let mut out = Vec::new();
        for name in &names {
            let matched_directly = matchers.iter().any(|pattern| wildcard_match(pattern, name));
            let mailbox = existing.get(name.as_str());
            let is_subscribed = subscribed.contains(name.as_str());
            if !matched_directly {
                continue;
            }
            let children = format!("{name}{MAILBOX_SEPARATOR}");
            let has_children = has_name_under(&names, &children);
            if select_subscribed && !is_subscribed {
                // RFC 5258 §3.5 RECURSIVEMATCH and LSUB's "%" rule: a parent of subscribed
                // mailboxes is reported with \Noselect (LSUB) or CHILDINFO.
                let child_subscribed = has_name_under(&subscribed, &children);
                let pattern_percent = matchers.iter().any(|pattern| pattern.ends_with('%'));
                if lsub && child_subscribed && pattern_percent {
                    out.extend_from_slice(b"* LSUB (\\Noselect) \"/\" ");
                    self.push_mailbox_name(&mut out, name);
                    out.extend_from_slice(b"\r\n");
                } else if options.recursive_match && child_subscribed {
                    // With the same child attributes as every other LIST line (RFC 5258 §4
                    // CHILDREN; wmail always returns them).
                    let mut attributes = Vec::new();
                    if mailbox.is_none() {
                        attributes.push("\\NonExistent");
                    }
                    attributes.push(if has_children { "\\HasChildren" } else { "\\HasNoChildren" });
                    out.extend_from_slice(format!("* LIST ({}) \"/\" ", attributes.join(" ")).as_bytes());
                    self.push_mailbox_name(&mut out, name);
                    out.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
                }
                continue;
            }
            if options.select_special_use && mailbox.is_none_or(|mailbox| mailbox.special_use.is_none()) {
                continue;
            }
            if !select_subscribed && mailbox.is_none() && !has_children {
                continue;
            }
            let mut attributes: Vec<&str> = Vec::new();
            match mailbox {
                None if lsub => attributes.push("\\Noselect"),
                None if select_subscribed => attributes.push("\\NonExistent"),
                None => attributes.extend(["\\NonExistent", "\\Noselect"]),
                Some(_) => {}
            }
            if !lsub {
                attributes.push(if has_children { "\\HasChildren" } else { "\\HasNoChildren" });
                if is_subscribed && (options.return_subscribed || select_subscribed) {
                    attributes.push("\\Subscribed");
                }
                if let Some(special_use) = mailbox.and_then(|mailbox| mailbox.special_use.as_deref()) {
                    attributes.push(special_use);
                }
            }
            out.extend_from_slice(format!("* {command} ({}) \"/\" ", attributes.join(" ")).as_bytes());
            self.push_mailbox_name(&mut out, name);
            out.extend_from_slice(b"\r\n");
            if let (Some(items), Some(mailbox)) = (&options.return_status, mailbox) {
                // RFC 5819 §2: STATUS right after its LIST line.
                out.extend_from_slice(&self.status_line(mailbox, items));
            }
        }
        self.queue(&out);
        self.ok(tag, &format!("{command} completed"));
    }

    async fn status(&mut self, tag: &str, raw: &str, items: &[StatusItem]) {
        let Some(mut mailbox) = self.fresh_mailbox(tag, raw).await else { return };
        if items.contains(&StatusItem::HighestModSeq) {
            self.enable_condstore();
        }
        // RFC 9051 §6.3.11 discourages STATUS of the selected mailbox, yet clients send it.
        // The session is brought up to date first (EXPUNGE may be sent during STATUS), so
        // what STATUS says never runs ahead of what the session was told: a QRESYNC client
        // caching that HIGHESTMODSEQ would otherwise never hear of an expunge (RFC 7162 §3.2).
        if self.selected.as_ref().is_some_and(|selected| selected.mailbox_id == mailbox.id) {
            self.sync(true).await;
            // MESSAGES agrees with the EXISTS the session was just sent (a message may have
            // arrived since the record was read; HIGHESTMODSEQ stays the one read first).
            if let Some(selected) = &self.selected {
                mailbox.message_count = selected.uids.len() as u64;
            }
        }
        let line = self.status_line(&mailbox, items);
        self.queue(&line);
        self.ok(tag, "STATUS completed");
    }

    /// `* STATUS name (items)` for one mailbox.
    fn status_line(&self, mailbox: &Mailbox, items: &[StatusItem]) -> Vec<u8> {
        let mut values = Vec::new();
        for item in items {
            values.push(match item {
                StatusItem::Messages => format!("MESSAGES {}", mailbox.message_count),
                StatusItem::UidNext => format!("UIDNEXT {}", mailbox.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mailbox.uid_validity),
                StatusItem::Unseen => format!("UNSEEN {}", mailbox.unseen_count),
                StatusItem::Deleted => format!("DELETED {}", mailbox.deleted_count),
                StatusItem::Size => format!("SIZE {}", mailbox.size_bytes),
                StatusItem::Recent => {
                    format!(
                        "RECENT {}",
                        mailbox.uid_next.saturating_sub(mailbox.first_recent_uid).min(mailbox.message_count as u32)
                    )
                }
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", mailbox.highest_modseq),
                StatusItem::MailboxId => format!("MAILBOXID ({})", mailbox_object_id(mailbox)),
            });
        }
        let mut out = b"* STATUS ".to_vec();
        self.push_mailbox_name(&mut out, &mailbox.name);
        out.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
        out
    }

    /// APPEND and MULTIAPPEND (RFC 9051 §6.3.12, RFC 3502, RFC 4315 APPENDUID). The bodies
    /// were stored while the command was read.
    pub(crate) async fn append(&mut self, tag: &str, raw: &str, messages: Vec<AppendMessage>, bodies: &[StoredBody]) {
        let name = match self.decode_mailbox_name(raw) {
            Ok(name) => name,
            Err(text) => return self.bad(tag, &text),
        };
        let account_id = self.account().id;
        let mailbox = match self.core.mailbox_by_name(account_id, &name) {
            Ok(Some(mailbox)) => mailbox,
            // RFC 9051 §6.3.12: TRYCREATE when the mailbox could be created.
            Ok(None) => return self.no(tag, "[TRYCREATE] the mailbox does not exist"),
            Err(error) => return self.no_for(tag, &error),
        };
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            let Some(body) = bodies.get(message.body.index) else {
                return self.bad(tag, "message literal missing");
            };
            if message.flags.iter().any(|flag| flag.eq_ignore_ascii_case("\\Recent")) {
                return self.bad(tag, "\\Recent cannot be set by APPEND");
            }
            let date = message.internal_date_ms.map_or(now_ms(), |ms| ms.max(0) as u64);
            batch.push((body.clone(), message.flags, date));
        }
        match self.core.append(account_id, mailbox.id, batch).await {
            Ok((uid_validity, uids)) => {
                self.sync(false).await;
                self.ok(tag, &format!("[APPENDUID {uid_validity} {}] APPEND completed", compress_set(&uids)));
            }
            Err(error) => self.no_for(tag, &error),
        }
    }

    /// GETQUOTAROOT (RFC 9208 §4.3.2): every mailbox shares the account's root "".
    fn quota_root(&mut self, tag: &str, raw: &str) {
        let name = match self.decode_mailbox_name(raw) {
            Ok(name) => name,
            Err(text) => return self.bad(tag, &text),
        };
        let account = self.account().clone();
        let mut out = Vec::new();
        out.extend_from_slice(b"* QUOTAROOT ");
        self.push_mailbox_name(&mut out, &name);
        if account.quota_bytes.is_some() {
            out.extend_from_slice(b" \"\"");
        }
        out.extend_from_slice(b"\r\n");
        self.queue(&out);
        self.quota_lines(&account);
        self.ok(tag, "GETQUOTAROOT completed");
    }

    fn quota(&mut self, tag: &str, root: &str) {
        let account = self.account().clone();
        if !root.is_empty() || account.quota_bytes.is_none() {
            return self.no(tag, "[NONEXISTENT] no such quota root");
        }
        self.quota_lines(&account);
        self.ok(tag, "GETQUOTA completed");
    }

    fn quota_lines(&mut self, account: &wmail_core::Account) {
        // Fresh usage: the account record in the session may be old.
        let account = self.core.account_by_id(account.id).ok().flatten().unwrap_or_else(|| account.clone());
        if let Some(limit) = account.quota_bytes {
            // RFC 9208 §5.1: STORAGE is in units of 1024 octets.
            self.untagged(&format!("QUOTA \"\" (STORAGE {} {})", account.used_bytes.div_ceil(1024), limit / 1024));
        }
    }
}

/// The OBJECTID of a mailbox (RFC 8474 §4): stable for its life, unique, never reused.
pub(crate) fn mailbox_object_id(mailbox: &Mailbox) -> String {
    format!("M{:x}", mailbox.id)
}

/// RFC 9051 §6.3.9 wildcards: `*` matches anything, `%` anything but the separator.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative matching with backtracking over the last star/percent (bounded: the
    // inputs are at most a few hundred characters).
    fn matches(pattern: &[char], name: &[char]) -> bool {
        match pattern.first() {
            None => name.is_empty(),
            Some('*') => (0..=name.len()).any(|skip| matches(&pattern[1..], &name[skip..])),
            Some('%') => (0..=name.len())
                .take_while(|&skip| skip == 0 || name[skip - 1] != MAILBOX_SEPARATOR)
                .any(|skip| matches(&pattern[1..], &name[skip..])),
            Some(&c) => name.first() == Some(&c) && matches(&pattern[1..], &name[1..]),
        }
    }
    // Collapse runs of wildcards so hostile patterns stay cheap.
    let mut collapsed: Vec<char> = Vec::with_capacity(pattern.len());
    for c in pattern {
        if c == '*' && collapsed.last().is_some_and(|&last| last == '*' || last == '%') {
            collapsed.pop();
        }
        if c == '%' && collapsed.last() == Some(&'*') {
            continue;
        }
        collapsed.push(c);
    }
    if collapsed.iter().filter(|&&c| c == '*' || c == '%').count() > 8 {
        return false;
    }
    matches(&collapsed, &name)
}

/// Whether a sorted set holds a name that starts with `prefix` (a name and the separator):
/// those names sort together from `prefix` on, so the first name at or after it decides,
/// without a pass over every name (LIST stays linear in the number of mailboxes).
fn has_name_under<T: Ord + AsRef<str> + std::borrow::Borrow<str>>(names: &BTreeSet<T>, prefix: &str) -> bool {
    use std::ops::Bound::{Included, Unbounded};
    names.range::<str, _>((Included(prefix), Unbounded)).next().is_some_and(|name| name.as_ref().starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_wildcards() {
        assert!(wildcard_match("*", "a/b/c"));
        assert!(wildcard_match("%", "a"));
        assert!(!wildcard_match("%", "a/b"));
        assert!(wildcard_match("a/%", "a/b"));
        assert!(!wildcard_match("a/%", "a/b/c"));
        assert!(wildcard_match("a*c", "a/b/c"));
        assert!(wildcard_match("INBOX", "INBOX"));
        assert!(!wildcard_match("INBOX", "INBOX/x"));
        assert!(!wildcard_match(&"*x".repeat(40), &"y".repeat(300)));
    }

    #[test]
    fn names_under_a_prefix_are_found_among_their_neighbours() {
        let names: BTreeSet<String> = ["A", "A b", "A/b", "A0", "B", "Ab/c"].iter().map(|n| n.to_string()).collect();
        assert!(has_name_under(&names, "A/"));
        assert!(has_name_under(&names, "Ab/"));
        assert!(!has_name_under(&names, "A b/"));
        assert!(!has_name_under(&names, "B/"));
        assert!(!has_name_under(&names, "Z/"));
        let subscribed: BTreeSet<&str> = ["Work/2024", "Workshop"].into_iter().collect();
        assert!(has_name_under(&subscribed, "Work/"));
        assert!(!has_name_under(&subscribed, "Workshop/"));
    }
}
