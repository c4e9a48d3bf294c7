//! FETCH (RFC 9051 §6.4.5) with CONDSTORE/QRESYNC modifiers (RFC 7162 §3.1.4, §3.2.6),
//! BINARY (RFC 3516) and OBJECTID (RFC 8474). A whole message (BODY[], RFC822, BINARY[]
//! of a message without other body items) is streamed from the blob store; everything
//! else reads the message once per FETCH of it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use wmail_core::message::MessageSummary;
use wmail_core::{Core, FlagAction, MessageRecord};

use crate::proto::body::{binary_section, section_bytes, write_body_structure, write_envelope};
use crate::proto::command::{FetchItem, Section, SectionText, SequenceSet};
use crate::proto::response::{push_flags, push_literal_header};
use crate::selected::{Recent, compress_set, display_flags, set_contains};
use crate::session::Session;

/// Messages whose index records are read together by FETCH and STORE.
const FETCH_CHUNK: usize = 1024;

/// Reads the index records of a resolved message set (`(seq, uid)` pairs in order) in
/// chunks, so memory stays bounded whatever the set: a dense chunk is one range read of
/// the index, a sparse one a lookup per message.
pub(crate) struct Records<'a> {
    core: Arc<Core>,
    account_id: u64,
    mailbox_id: u64,
    targets: &'a [(u32, u32)],
    chunk: HashMap<u32, MessageRecord>,
    chunk_end: usize,
}

impl<'a> Records<'a> {
    pub(crate) fn new(core: &Arc<Core>, account_id: u64, mailbox_id: u64, targets: &'a [(u32, u32)]) -> Self {
        Records { core: core.clone(), account_id, mailbox_id, targets, chunk: HashMap::new(), chunk_end: 0 }
    }

    /// The record of the target at `position`; positions must be asked for in increasing
    /// order. None: the message was expunged meanwhile.
    pub(crate) async fn get(&mut self, position: usize) -> wmail_core::Result<Option<MessageRecord>> {
        let uid = self.targets[position].1;
        if position >= self.chunk_end {
            self.chunk.clear();
            self.chunk_end = (position + FETCH_CHUNK).min(self.targets.len());
            let last = self.targets[self.chunk_end - 1].1;
            if self.chunk_end - position > 16 && (last - uid) as usize <= 4 * FETCH_CHUNK {
                let records = self.core.messages_between(self.account_id, self.mailbox_id, uid, last).await?;
                self.chunk.extend(records.into_iter().map(|record| (record.uid, record)));
            }
        }
        // Not in the chunk: a sparse chunk, or expunged meanwhile (the lookup says which).
        match self.chunk.remove(&uid) {
            Some(record) => Ok(Some(record)),
            None => self.core.message(self.account_id, self.mailbox_id, uid),
        }
    }
}

/// A message's content, loaded when an item needs it: the summary stored at delivery,
/// and the raw message only for items that need its bytes.
struct Content {
    raw: Option<bytes::Bytes>,
    summary: MessageSummary,
}

/// Formats an INTERNALDATE (RFC 9051 §9 `date-time`) in the node's local time zone (`TZ`,
/// else `/etc/localtime`), as Dovecot does: SEARCH BEFORE/ON/SINCE compare the date in the
/// same zone (see `search::day_of`), so what a client reads and what it searches agree.
pub(crate) fn internal_date(ms: u64) -> String {
    let time = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
    time.with_timezone(&chrono::Local).format("%d-%b-%Y %H:%M:%S %z").to_string()
}

fn needs_raw(item: &FetchItem) -> bool {
    needs_content(item) && !matches!(item, FetchItem::Envelope | FetchItem::BodyStructure | FetchItem::Body)
}

fn needs_content(item: &FetchItem) -> bool {
    !matches!(
        item,
        FetchItem::Uid
            | FetchItem::Flags
            | FetchItem::InternalDate
            | FetchItem::Rfc822Size
            | FetchItem::ModSeq
            | FetchItem::EmailId
            | FetchItem::ThreadId
    )
}

/// Whether an item is the whole message, which can be streamed without parsing.
fn is_whole_message(item: &FetchItem) -> bool {
    match item {
        FetchItem::Rfc822 => true,
        FetchItem::BodySection { section, partial: None, .. } => section.part.is_empty() && section.text.is_none(),
        FetchItem::Binary { section, partial: None, .. } => section.part.is_empty() && section.text.is_none(),
        _ => false,
    }
}

/// Whether two items are answered with the same label (they differ at most in PEEK).
fn same_answer(a: &FetchItem, b: &FetchItem) -> bool {
    match (a, b) {
        (
            FetchItem::BodySection { section, partial, .. },
            FetchItem::BodySection { section: other, partial: other_partial, .. },
        )
        | (
            FetchItem::Binary { section, partial, .. },
            FetchItem::Binary { section: other, partial: other_partial, .. },
        ) => section == other && partial == other_partial,
        _ => a == b,
    }
}

fn sets_seen(item: &FetchItem) -> bool {
    matches!(
        item,
        FetchItem::Rfc822
            | FetchItem::Rfc822Text
            | FetchItem::BodySection { peek: false, .. }
            | FetchItem::Binary { peek: false, .. }
    )
}

/// Writes a section specification as the client wrote it (`1.2.HEADER.FIELDS (A B)`).
fn section_spec(section: &Section) -> String {
    let mut parts: Vec<String> = section.part.iter().map(u32::to_string).collect();
    match &section.text {
        None => {}
        Some(SectionText::Header) => parts.push("HEADER".into()),
        Some(SectionText::Text) => parts.push("TEXT".into()),
        Some(SectionText::Mime) => parts.push("MIME".into()),
        Some(SectionText::HeaderFields(names)) => parts.push(format!("HEADER.FIELDS ({})", quote_names(names))),
        Some(SectionText::HeaderFieldsNot(names)) => parts.push(format!("HEADER.FIELDS.NOT ({})", quote_names(names))),
    }
    parts.join(".")
}

fn quote_names(names: &[String]) -> String {
    let mut out = Vec::new();
    for (index, name) in names.iter().enumerate() {
        if index > 0 {
            out.push(b' ');
        }
        crate::proto::response::push_astring(&mut out, name.as_bytes(), false);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Applies a `<offset.length>` partial (RFC 9051 §6.4.5): an offset past the end is empty.
fn partial_slice(bytes: &[u8], partial: Option<(u32, u32)>) -> &[u8] {
    match partial {
        None => bytes,
        Some((offset, length)) => {
            let start = (offset as usize).min(bytes.len());
            let end = start.saturating_add(length as usize).min(bytes.len());
            &bytes[start..end]
        }
    }
}

/// Appends a literal, as literal8 (`~{n}`) when it holds NUL octets (RFC 3516 §4.3).
fn push_literal(out: &mut Vec<u8>, bytes: &[u8], binary: bool) {
    if binary && bytes.contains(&0) {
        out.push(b'~');
    }
    push_literal_header(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl Session {
    /// FETCH and UID FETCH.
    pub(crate) async fn fetch(
        &mut self,
        tag: &str,
        uid: bool,
        set: &SequenceSet,
        items_asked: &[FetchItem],
        changed_since: Option<u64>,
        vanished: bool,
    ) {
        let account_id = self.account().id;
        let selected = self.selected.as_ref().expect("selected state checked");
        if vanished && (!uid || !self.enabled.qresync || changed_since.is_none()) {
            // RFC 7162 §3.2.6: VANISHED only in UID FETCH, with CHANGEDSINCE, after ENABLE QRESYNC.
            return self.bad(tag, "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC");
        }
        let targets = match selected.resolve(set, uid) {
            Ok(targets) => targets,
            Err(text) => return self.bad(tag, &text),
        };
        let mailbox_id = selected.mailbox_id;
        let read_only = selected.read_only;
        let recent = selected.recent.clone();
        // An item asked for twice is answered once (`UID UID FLAGS`: imaptest asks so), and
        // so are BODY[x] and BODY.PEEK[x], which answer with the same label: as BODY[x].
        let mut items: Vec<FetchItem> = Vec::with_capacity(items_asked.len());
        for item in items_asked {
            match items.iter().position(|kept| same_answer(kept, item)) {
                Some(index) if !sets_seen(&items[index]) => items[index] = item.clone(),
                Some(_) => {}
                None => items.push(item.clone()),
            }
        }
        if changed_since.is_some() || items.contains(&FetchItem::ModSeq) {
            self.enable_condstore();
        }
        // RFC 3501 §6.4.8: a UID command's FETCH responses carry the UID.
        if uid && !items.contains(&FetchItem::Uid) {
            items.insert(0, FetchItem::Uid);
        }
        // RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ.
        if changed_since.is_some() && !items.contains(&FetchItem::ModSeq) {
            items.push(FetchItem::ModSeq);
        }
        // RFC 7162 §3.1: once CONDSTORE is on, a FETCH response that reports a flag change
        // (here, \Seen set implicitly) carries UID and MODSEQ; one that only answers what
        // was asked does not (a client tracking MODSEQs would otherwise see them move).
        let mut items_when_seen = items.clone();
        if self.enabled.condstore {
            if !items_when_seen.contains(&FetchItem::Uid) {
                items_when_seen.insert(0, FetchItem::Uid);
            }
            if !items_when_seen.contains(&FetchItem::ModSeq) {
                items_when_seen.push(FetchItem::ModSeq);
            }
        }
        if vanished && let Some(since) = changed_since {
            let expunged = self.expunged_since(account_id, mailbox_id, since, set);
            if !expunged.is_empty() {
                self.untagged(&format!("VANISHED (EARLIER) {}", compress_set(&expunged)));
            }
        }
        // RFC 9051 §6.4.5: reading a body sets \Seen, and the new flags are reported.
        let mut newly_seen = BTreeSet::new();
        if !read_only && items.iter().any(sets_seen) {
            let mut unseen = Vec::new();
            let mut records = Records::new(&self.core, account_id, mailbox_id, &targets);
            for (position, &(_, uid)) in targets.iter().enumerate() {
                match records.get(position).await {
                    Ok(Some(record)) if !record.flags.iter().any(|flag| flag == "\\Seen") => unseen.push(uid),
                    Ok(_) => {}
                    Err(error) => return self.no_for(tag, &error),
                }
            }
            if !unseen.is_empty() {
                let seen = vec!["\\Seen".to_owned()];
                match self.core.set_flags(account_id, mailbox_id, unseen.clone(), FlagAction::Add, seen, None).await {
                    Ok(_) => newly_seen.extend(unseen),
                    Err(error) => return self.no_for(tag, &error),
                }
            }
        }
        let whole_only = items.iter().filter(|item| needs_content(item)).all(is_whole_message);
        let mut missing = false;
        let mut records = Records::new(&self.core, account_id, mailbox_id, &targets);
        for (position, &(seq, uid_value)) in targets.iter().enumerate() {
            let (record, expunged) = match records.get(position).await {
                Ok(Some(record)) => (record, false),
                // Expunged by another session, not reported yet (RFC 9051 §7.5.1): answered
                // as it was while this node remembers it and its body (RFC 2180 §4.1.1),
                // else left out. Not for UID FETCH, after which the expunge is reported.
                Ok(None) => match self.core.recently_expunged(account_id, mailbox_id, uid_value).filter(|_| !uid) {
                    Some(record) => (record, true),
                    None => {
                        missing = true;
                        continue;
                    }
                },
                Err(error) => return self.no_for(tag, &error),
            };
            if changed_since.is_some_and(|since| record.modseq <= since) {
                continue;
            }
            // An expunged message's body is read before anything is written: it may be gone,
            // and a streamed literal could not be taken back.
            let content = if (!whole_only || expunged) && items.iter().any(needs_content) {
                match self.load_content(&record, items.iter().any(needs_raw)).await {
                    Ok(content) => Some(content),
                    // Its body may be gone with it.
                    Err(_) if expunged => {
                        missing = true;
                        continue;
                    }
                    Err(error) => return self.no_for(tag, &error),
                }
            } else {
                None
            };
            let add_flags = newly_seen.contains(&uid_value) && !items.contains(&FetchItem::Flags);
            if let Some(selected) = self.selected.as_mut() {
                // Our own \Seen change comes back through the change log: the flags sent
                // here already say it. Someone else's pending change is reported here too.
                if newly_seen.contains(&uid_value) {
                    selected.reported_modseq.insert(uid_value, record.modseq);
                }
                if items.contains(&FetchItem::Flags) || add_flags {
                    selected.pending_flags.remove(&uid_value);
                }
            }
            let items = if newly_seen.contains(&uid_value) { &items_when_seen } else { &items };
            if !self.write_fetch(seq, &record, items, content.as_ref(), add_flags, &recent).await {
                return;
            }
            if !self.flush_if_large().await {
                return;
            }
        }
        self.sync(uid).await;
        if missing {
            // RFC 9051 §7.1: EXPUNGEISSUED when some messages were expunged meanwhile.
            self.ok(tag, "[EXPUNGEISSUED] some messages were expunged meanwhile; FETCH completed for the rest");
        } else {
            self.ok(tag, "FETCH completed");
        }
    }

    /// UIDs of `set` expunged with a MODSEQ above `since` (for VANISHED (EARLIER)).
    pub(crate) fn expunged_since(&self, account_id: u64, mailbox_id: u64, since: u64, set: &SequenceSet) -> Vec<u32> {
        // `*` is open-ended here: expunged UIDs may lie above every UID still present.
        let contains = |uid: u32| set_contains(set, uid, u32::MAX, None);
        let mut out: Vec<u32> = match self.core.expunged_since(account_id, mailbox_id, since) {
            Ok(uids) => uids.into_iter().filter(|&uid| contains(uid)).collect(),
            Err(error) => {
                tracing::warn!(session = %self.id, %error, "cannot read expunged messages");
                Vec::new()
            }
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    async fn load_content(&self, record: &MessageRecord, with_raw: bool) -> wmail_core::Result<Content> {
        let summary = self.core.message_summary(&record.blob).await?;
        let raw = if with_raw { Some(self.core.read_blob(&record.blob).await?) } else { None };
        Ok(Content { raw, summary })
    }

    /// Writes one `* n FETCH (...)` response. Returns false when the client is gone.
    async fn write_fetch(
        &mut self,
        seq: u32,
        record: &MessageRecord,
        items: &[FetchItem],
        content: Option<&Content>,
        add_flags: bool,
        recent: &Recent,
    ) -> bool {
        let utf8 = self.enabled.utf8();
        let rev2 = self.enabled.rev2;
        let mut out = format!("* {seq} FETCH (").into_bytes();
        let mut first = true;
        let mut separator = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b' ');
            }
        };
        let mut record = record.clone();
        if add_flags && !record.flags.iter().any(|flag| flag == "\\Seen") {
            record.flags.push("\\Seen".into());
        }
        if (add_flags || items.contains(&FetchItem::Flags))
            && let Some(selected) = self.selected.as_mut()
        {
            let mut told = Vec::new();
            selected.announce_keywords(&mut told, &record.flags);
            self.queue(&told);
        }
        for item in items {
            separator(&mut out);
            match item {
                FetchItem::Uid => out.extend_from_slice(format!("UID {}", record.uid).as_bytes()),
                FetchItem::Flags => {
                    out.extend_from_slice(b"FLAGS ");
                    push_flags(&mut out, display_flags(&record, recent, rev2));
                }
                FetchItem::InternalDate => out.extend_from_slice(
                    format!("INTERNALDATE \"{}\"", internal_date(record.internal_date_ms)).as_bytes(),
                ),
                FetchItem::Rfc822Size => out.extend_from_slice(format!("RFC822.SIZE {}", record.size).as_bytes()),
                FetchItem::ModSeq => out.extend_from_slice(format!("MODSEQ ({})", record.modseq).as_bytes()),
                FetchItem::EmailId => {
                    out.extend_from_slice(format!("EMAILID (E{})", &record.blob.to_hex()[..24]).as_bytes())
                }
                // RFC 8474 §5.2: NIL for a message delivered without threading data.
                FetchItem::ThreadId if record.thread_id == 0 => out.extend_from_slice(b"THREADID NIL"),
                FetchItem::ThreadId => out.extend_from_slice(format!("THREADID (T{:x})", record.thread_id).as_bytes()),
                FetchItem::Envelope => {
                    out.extend_from_slice(b"ENVELOPE ");
                    if let Some(content) = content {
                        write_envelope(&mut out, &content.summary.envelope, utf8);
                    }
                }
                FetchItem::BodyStructure | FetchItem::Body => {
                    let extensible = matches!(item, FetchItem::BodyStructure);
                    out.extend_from_slice(if extensible { b"BODYSTRUCTURE " } else { b"BODY " });
                    if let Some(content) = content {
                        write_body_structure(&mut out, &content.summary.root, extensible, utf8);
                    }
                }
                item if content.is_none() && is_whole_message(item) => {
                    // Stream the stored message: the literal length is the record's size.
                    let label = match item {
                        FetchItem::Rfc822 => "RFC822 ".to_owned(),
                        FetchItem::Binary { .. } => "BINARY[] ".to_owned(),
                        _ => "BODY[] ".to_owned(),
                    };
                    out.extend_from_slice(label.as_bytes());
                    push_literal_header(&mut out, record.size);
                    self.queue(&out);
                    out.clear();
                    if !self.stream_blob(&record).await {
                        return false;
                    }
                }
                FetchItem::Rfc822 | FetchItem::Rfc822Header | FetchItem::Rfc822Text | FetchItem::BodySection { .. } => {
                    let Some((raw, summary)) = content.and_then(|c| Some((c.raw.as_ref()?, &c.summary))) else {
                        continue;
                    };
                    let (label, section, partial) = match item {
                        FetchItem::Rfc822 => ("RFC822".to_owned(), Section { part: vec![], text: None }, None),
                        FetchItem::Rfc822Header => (
                            "RFC822.HEADER".to_owned(),
                            Section { part: vec![], text: Some(SectionText::Header) },
                            None,
                        ),
                        FetchItem::Rfc822Text => {
                            ("RFC822.TEXT".to_owned(), Section { part: vec![], text: Some(SectionText::Text) }, None)
                        }
                        FetchItem::BodySection { section, partial, .. } => {
                            let origin = partial.map(|(offset, _)| format!("<{offset}>")).unwrap_or_default();
                            (format!("BODY[{}]{origin}", section_spec(section)), section.clone(), *partial)
                        }
                        _ => unreachable!("matched above"),
                    };
                    out.extend_from_slice(label.as_bytes());
                    out.push(b' ');
                    match section_bytes(raw, summary, &section) {
                        Some(bytes) => push_literal(&mut out, partial_slice(&bytes, partial), false),
                        None => out.extend_from_slice(b"NIL"),
                    }
                }
                FetchItem::Binary { section, partial, .. } => {
                    let Some((raw, summary)) = content.and_then(|c| Some((c.raw.as_ref()?, &c.summary))) else {
                        continue;
                    };
                    match binary_section(raw, summary, section) {
                        Ok(bytes) => {
                            let origin = partial.map(|(offset, _)| format!("<{offset}>")).unwrap_or_default();
                            out.extend_from_slice(format!("BINARY[{}]{origin} ", section_spec(section)).as_bytes());
                            push_literal(&mut out, partial_slice(&bytes, *partial), true);
                        }
                        Err(_) => {
                            // RFC 3516 §4.2: an encoding the server cannot decode.
                            self.pending_no = Some("[UNKNOWN-CTE] cannot decode the part's transfer encoding".into());
                            out.extend_from_slice(format!("BINARY[{}] NIL", section_spec(section)).as_bytes());
                        }
                    }
                }
                FetchItem::BinarySize { section } => {
                    let Some((raw, summary)) = content.and_then(|c| Some((c.raw.as_ref()?, &c.summary))) else {
                        continue;
                    };
                    let size = binary_section(raw, summary, section).map(|bytes| bytes.len()).unwrap_or(0);
                    out.extend_from_slice(format!("BINARY.SIZE[{}] {size}", section_spec(section)).as_bytes());
                }
            }
        }
        if add_flags && !items.contains(&FetchItem::Flags) {
            separator(&mut out);
            out.extend_from_slice(b"FLAGS ");
            push_flags(&mut out, display_flags(&record, recent, rev2));
        }
        out.extend_from_slice(b")\r\n");
        self.queue(&out);
        true
    }

    /// Streams a stored message to the client in chunks (memory stays bounded).
    async fn stream_blob(&mut self, record: &MessageRecord) -> bool {
        let mut stream = match self.core.blob_stream(&record.blob).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::error!(session = %self.id, %error, "cannot read a message body");
                return false;
            }
        };
        let mut sent = 0u64;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return false };
            let room = record.size.saturating_sub(sent) as usize;
            let chunk = &chunk[..chunk.len().min(room)];
            sent += chunk.len() as u64;
            self.queue(chunk);
            if self.connection.flush(self.config.idle_timeout).await.is_err() {
                return false;
            }
        }
        // The literal's length was announced: a short body would break the protocol.
        sent == record.size
    }
}
