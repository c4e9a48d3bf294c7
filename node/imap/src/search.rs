//! SEARCH (RFC 9051 §6.4.4) with ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and the
//! CONDSTORE MODSEQ key (RFC 7162 §3.1.5); SORT and THREAD (RFC 5256).
//!
//! Keys on flags, sizes, dates and UIDs use the message index. Text keys are answered by
//! the node's full-text index for every message it holds whole; only messages it does not
//! hold yet, or holds truncated, are read and checked, so the answer is the same as a scan
//! of every message.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use wmail_core::message::{
    MessageSummary, address_text, body_text, decode_header_text, decoded_header_text, header_values,
};
use wmail_core::{MessageRecord, SearchField};

use crate::proto::command::{SearchKey, SearchReturn, SortCriterion, SortKey, ThreadAlgorithm};
use crate::selected::{compress_runs, compress_set, set_contains};
use crate::session::Session;

/// Messages whose index records SEARCH reads together.
const SEARCH_CHUNK: usize = 1024;

/// One candidate message, with what the keys need loaded.
struct Candidate {
    seq: u32,
    record: MessageRecord,
    summary: Option<MessageSummary>,
    raw: Option<bytes::Bytes>,
}

/// What evaluation needs besides the message.
struct Context<'a> {
    /// The full-text index's answers, when it could be asked.
    index: Option<&'a IndexCandidates<'a>>,
    count: u32,
    largest_uid: u32,
    saved: &'a [u32],
    recent: crate::selected::Recent,
    rev2: bool,
    now_ms: u64,
}

/// Whether a key needs the message summary (stored at delivery).
fn needs_summary(key: &SearchKey) -> bool {
    match key {
        SearchKey::Bcc(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Subject(_)
        | SearchKey::To(_)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_) => true,
        SearchKey::Not(inner) => needs_summary(inner),
        SearchKey::Or(left, right) => needs_summary(left) || needs_summary(right),
        SearchKey::And(keys) => keys.iter().any(needs_summary),
        _ => needs_raw(key),
    }
}

/// Whether a key needs the message itself.
fn needs_raw(key: &SearchKey) -> bool {
    match key {
        SearchKey::Body(_) | SearchKey::Text(_) | SearchKey::Header(..) => true,
        SearchKey::Not(inner) => needs_raw(inner),
        SearchKey::Or(left, right) => needs_raw(left) || needs_raw(right),
        SearchKey::And(keys) => keys.iter().any(needs_raw),
        _ => false,
    }
}

/// The index fields a text key's needle is looked up in (the texts `matches` reads, as
/// `wmail_core::message::search_texts` lists them).
fn indexed_fields(key: &SearchKey) -> Option<(&'static [SearchField], &str)> {
    Some(match key {
        SearchKey::Subject(needle) => (&[SearchField::Subject], needle),
        SearchKey::From(needle) => (&[SearchField::From], needle),
        SearchKey::To(needle) => (&[SearchField::To], needle),
        SearchKey::Cc(needle) => (&[SearchField::Cc], needle),
        SearchKey::Bcc(needle) => (&[SearchField::Bcc], needle),
        SearchKey::Body(needle) => (&[SearchField::Body], needle),
        SearchKey::Text(needle) => (&[SearchField::Header, SearchField::Body], needle),
        _ => return None,
    })
}

/// Every text key in `key`.
fn text_keys<'a>(key: &'a SearchKey, out: &mut Vec<&'a SearchKey>) {
    match key {
        SearchKey::And(keys) => keys.iter().for_each(|key| text_keys(key, out)),
        SearchKey::Or(left, right) => {
            text_keys(left, out);
            text_keys(right, out);
        }
        SearchKey::Not(inner) => text_keys(inner, out),
        key if indexed_fields(key).is_some() => out.push(key),
        _ => {}
    }
}

/// The indexed messages `key` may match, from the candidates of its text keys; `None`
/// when it cannot be narrowed (every message may match). The result holds every indexed
/// message that matches: AND intersects, OR unites, anything else narrows nothing.
fn narrow(key: &SearchKey, answers: &Answers) -> Option<HashSet<u32>> {
    match key {
        SearchKey::And(keys) => keys
            .iter()
            .filter_map(|key| narrow(key, answers))
            .reduce(|left, right| left.intersection(&right).copied().collect()),
        SearchKey::Or(left, right) => {
            let (mut left, right) = (narrow(left, answers)?, narrow(right, answers)?);
            left.extend(right);
            Some(left)
        }
        key => indexed_fields(key).and_then(|lookup| answers.get(&lookup).cloned().flatten()),
    }
}

/// Candidates of each text lookup (fields, needle).
type Answers<'a> = HashMap<(&'static [SearchField], &'a str), Option<HashSet<u32>>>;

fn uses_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(inner) => uses_modseq(inner),
        SearchKey::Or(left, right) => uses_modseq(left) || uses_modseq(right),
        SearchKey::And(keys) => keys.iter().any(uses_modseq),
        _ => false,
    }
}

/// Case-insensitive substring test (RFC 9051 §6.4.4: "case-insensitive substring").
fn contains(haystack: &str, needle: &str) -> bool {
    needle.is_empty() || haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// The date of an INTERNALDATE "disregarding time and timezone" (RFC 9051 §6.4.4): the
/// date it has in the zone FETCH INTERNALDATE shows it in, the node's local one.
fn day_of(ms: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().with_timezone(&chrono::Local).date_naive()
}

fn has_flag(record: &MessageRecord, flag: &str) -> bool {
    record.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

fn matches(key: &SearchKey, candidate: &Candidate, context: &Context) -> bool {
    let record = &candidate.record;
    if let Some(answer) = context.index.and_then(|index| index.answer(key, record.uid)) {
        return answer;
    }
    // RFC 9051 §6.4.4: these keys search the envelope's field, so a message without the
    // field never matches, not even an empty string (as with HEADER).
    let addresses = |needle: &str, pick: fn(&MessageSummary) -> (&[wmail_core::message::Address], &str)| {
        candidate.summary.as_ref().is_some_and(|summary| {
            let (list, display) = pick(summary);
            (!list.is_empty() || !display.is_empty()) && contains(&address_text(list, display), needle)
        })
    };
    match key {
        SearchKey::All => true,
        SearchKey::Answered => has_flag(record, "\\Answered"),
        SearchKey::Deleted => has_flag(record, "\\Deleted"),
        SearchKey::Draft => has_flag(record, "\\Draft"),
        SearchKey::Flagged => has_flag(record, "\\Flagged"),
        SearchKey::Seen => has_flag(record, "\\Seen"),
        SearchKey::Unanswered => !has_flag(record, "\\Answered"),
        SearchKey::Undeleted => !has_flag(record, "\\Deleted"),
        SearchKey::Undraft => !has_flag(record, "\\Draft"),
        SearchKey::Unflagged => !has_flag(record, "\\Flagged"),
        SearchKey::Unseen => !has_flag(record, "\\Seen"),
        SearchKey::Recent => !context.rev2 && context.recent.contains(record.uid),
        SearchKey::New => !context.rev2 && context.recent.contains(record.uid) && !has_flag(record, "\\Seen"),
        SearchKey::Old => context.rev2 || !context.recent.contains(record.uid),
        SearchKey::Keyword(flag) => has_flag(record, flag),
        SearchKey::Unkeyword(flag) => !has_flag(record, flag),
        SearchKey::Bcc(needle) => addresses(needle, |s| (&s.envelope.bcc, "")),
        SearchKey::Cc(needle) => addresses(needle, |s| (&s.envelope.cc, "")),
        SearchKey::From(needle) => addresses(needle, |s| (&s.envelope.from, &s.display_from)),
        SearchKey::To(needle) => addresses(needle, |s| (&s.envelope.to, &s.display_to)),
        SearchKey::Subject(needle) => candidate.summary.as_ref().is_some_and(|summary| {
            summary
                .envelope
                .subject
                .as_deref()
                .is_some_and(|raw| contains(&summary.subject_decoded, needle) || contains(raw, needle))
        }),
        SearchKey::Header(name, needle) => {
            candidate.raw.as_ref().zip(candidate.summary.as_ref()).is_some_and(|(raw, summary)| {
                let values = header_values(raw, summary.root.header_end, name);
                // RFC 9051 §6.4.4: an empty string matches every message that has the field.
                !values.is_empty()
                    && values
                        .iter()
                        .any(|value| contains(value, needle) || contains(&decode_header_text(value), needle))
            })
        }
        SearchKey::Body(needle) => candidate.raw.as_ref().is_some_and(|raw| contains(&body_text(raw), needle)),
        SearchKey::Text(needle) => {
            candidate.raw.as_ref().zip(candidate.summary.as_ref()).is_some_and(|(raw, summary)| {
                let header = String::from_utf8_lossy(&raw[..summary.root.header_end.min(raw.len())]).into_owned();
                contains(&header, needle)
                    || contains(&decoded_header_text(raw, summary.root.header_end), needle)
                    || contains(&summary.subject_decoded, needle)
                    || contains(&body_text(raw), needle)
            })
        }
        SearchKey::Before(date) => day_of(record.internal_date_ms as i64) < *date,
        SearchKey::On(date) => day_of(record.internal_date_ms as i64) == *date,
        SearchKey::Since(date) => day_of(record.internal_date_ms as i64) >= *date,
        SearchKey::SentBefore(date) | SearchKey::SentOn(date) | SearchKey::SentSince(date) => {
            // RFC 9051 §6.4.4: the Date field's own date, disregarding time and timezone.
            let Some(day) = candidate.summary.as_ref().and_then(MessageSummary::sent_date) else {
                return false;
            };
            match key {
                SearchKey::SentBefore(_) => day < *date,
                SearchKey::SentOn(_) => day == *date,
                _ => day >= *date,
            }
        }
        SearchKey::Larger(size) => record.size > *size,
        SearchKey::Smaller(size) => record.size < *size,
        SearchKey::Uid(set) => set_contains(set, record.uid, context.largest_uid, Some(context.saved)),
        SearchKey::Sequence(set) => match set {
            crate::proto::command::SequenceSet::Saved => context.saved.contains(&record.uid),
            _ => set_contains(set, candidate.seq, context.count, None),
        },
        SearchKey::Not(inner) => !matches(inner, candidate, context),
        SearchKey::Or(left, right) => matches(left, candidate, context) || matches(right, candidate, context),
        SearchKey::And(keys) => keys.iter().all(|key| matches(key, candidate, context)),
        SearchKey::ModSeq(modseq) => record.modseq >= *modseq,
        SearchKey::Older(seconds) => record.internal_date_ms + u64::from(*seconds) * 1000 <= context.now_ms,
        SearchKey::Younger(seconds) => record.internal_date_ms + u64::from(*seconds) * 1000 > context.now_ms,
        SearchKey::EmailId(id) => id
            .strip_prefix('E')
            .is_some_and(|hex| record.blob.to_hex().starts_with(&hex.to_lowercase()) && hex.len() >= 8),
        SearchKey::ThreadId(id) => id
            .strip_prefix('T')
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|thread| thread != 0 && thread == record.thread_id),
    }
}

/// What the full-text index says about a key's text keys in the selected mailbox.
struct IndexCandidates<'k> {
    /// Indexed messages the whole key may match (`None`: no narrowing).
    matched: Option<HashSet<u32>>,
    /// What the index holds of the mailbox.
    indexed: wmail_core::IndexedMailbox,
    /// Per text lookup, the messages whose text contains the needle.
    answers: Answers<'k>,
}

impl IndexCandidates<'_> {
    /// Whether the message must be looked at: the index says the key may match it, or the
    /// index does not hold it whole.
    fn may_match(&self, uid: u32) -> bool {
        !self.exact(uid) || self.matched.as_ref().is_none_or(|matched| matched.contains(&uid))
    }

    /// The index holds the message whole, so its answers for it are exact.
    fn exact(&self, uid: u32) -> bool {
        self.indexed.uids.contains(&uid) && !self.indexed.truncated.contains(&uid)
    }

    /// The index's exact answer for a text key on one message, when it has one.
    fn answer(&self, key: &SearchKey, uid: u32) -> Option<bool> {
        let found = self.answers.get(&indexed_fields(key)?)?.as_ref()?;
        self.exact(uid).then(|| found.contains(&uid))
    }

    /// What must be loaded to evaluate `key` on a message: (summary, body).
    fn content_needs(&self, key: &SearchKey, uid: u32) -> (bool, bool) {
        if self.answer(key, uid).is_some() {
            return (false, false);
        }
        let either = |(a, b): (bool, bool), (c, d): (bool, bool)| (a || c, b || d);
        match key {
            SearchKey::Not(inner) => self.content_needs(inner, uid),
            SearchKey::Or(left, right) => either(self.content_needs(left, uid), self.content_needs(right, uid)),
            SearchKey::And(keys) => keys.iter().map(|key| self.content_needs(key, uid)).fold((false, false), either),
            key => (needs_summary(key), needs_raw(key)),
        }
    }
}

impl Session {
    /// Evaluates `key` over the selected mailbox; returns the matching candidates in
    /// sequence order. `with_content` loads every message (SORT and THREAD need it).
    async fn evaluate(&mut self, key: &SearchKey, with_content: bool) -> wmail_core::Result<Vec<Candidate>> {
        let account_id = self.account().id;
        let selected = self.selected.as_ref().expect("selected state checked");
        let mailbox_id = selected.mailbox_id;
        let context = Context {
            count: selected.uids.len() as u32,
            largest_uid: selected.uids.last().unwrap_or(0),
            saved: &selected.saved_search,
            recent: selected.recent.clone(),
            rev2: self.enabled.rev2,
            now_ms: wmail_core::now_ms(),
            index: None,
        };
        let candidates = self.index_candidates(account_id, mailbox_id, key).await;
        let context = Context { index: candidates.as_ref(), ..context };
        let selected = self.selected.as_ref().expect("selected state checked");
        let mut out = Vec::new();
        let mut read = 0;
        // The index is read in chunks of consecutive sequence numbers: memory stays bounded
        // by what matches, not by the mailbox.
        // The messages that must be looked at (sequence index, UID), in order.
        let visit: Vec<(usize, u32)> = selected
            .uids
            .iter()
            .enumerate()
            .filter(|(_, uid)| candidates.as_ref().is_none_or(|candidates| candidates.may_match(*uid)))
            .collect();
        // Few of them (the index ruled most out): read their records one by one rather than
        // every record of the mailbox.
        let sparse = visit.len() * 8 < selected.uids.len();
        for batch in visit.chunks(SEARCH_CHUNK) {
            let (first, last) = (batch[0].1, batch[batch.len() - 1].1);
            let records = match sparse {
                true => {
                    let uids = batch.iter().map(|(_, uid)| *uid).collect();
                    self.core.messages_by_uid(account_id, mailbox_id, uids).await?
                }
                false => self.core.messages_between(account_id, mailbox_id, first, last).await?,
            };
            let mut by_uid: HashMap<u32, MessageRecord> =
                records.into_iter().map(|record| (record.uid, record)).collect();
            for &(index, uid) in batch {
                // Expunged by another session and not reported yet: it matches nothing.
                let Some(record) = by_uid.remove(&uid) else { continue };
                let (needs_summary, needs_raw) = match &candidates {
                    Some(candidates) => candidates.content_needs(key, uid),
                    None => (needs_summary(key), needs_raw(key)),
                };
                let mut candidate = Candidate { seq: index as u32 + 1, record, summary: None, raw: None };
                if with_content || needs_summary {
                    candidate.summary = Some(self.core.message_summary(&candidate.record.blob).await?);
                }
                if needs_raw {
                    candidate.raw = Some(self.core.read_blob(&candidate.record.blob).await?);
                }
                read += u64::from(needs_summary);
                if matches(key, &candidate, &context) {
                    // Keep what SORT and THREAD read, never the bodies.
                    candidate.raw = None;
                    if !with_content {
                        candidate.summary = None;
                    }
                    out.push(candidate);
                }
            }
        }
        self.core.count_search_reads(read);
        Ok(out)
    }

    /// What the full-text index says about `key`'s text keys in a mailbox; `None` when the
    /// key has none or the index failed (then every message is read, as without an index).
    async fn index_candidates<'k>(
        &self,
        account_id: u64,
        mailbox_id: u64,
        key: &'k SearchKey,
    ) -> Option<IndexCandidates<'k>> {
        let mut keys = Vec::new();
        text_keys(key, &mut keys);
        if keys.is_empty() {
            return None;
        }
        let mut lookups: Vec<(&'static [SearchField], &str)> = keys.into_iter().filter_map(indexed_fields).collect();
        lookups.sort_unstable();
        lookups.dedup();
        let asked = lookups.iter().map(|(fields, needle)| (*fields, needle.to_string())).collect();
        let found = match self.core.search_lookup(account_id, mailbox_id, asked).await {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(%error, "the search index could not be asked; reading every message");
                return None;
            }
        };
        let answers: Answers = lookups.into_iter().zip(found.answers).collect();
        Some(IndexCandidates { matched: narrow(key, &answers), indexed: found.indexed, answers })
    }

    /// SEARCH and UID SEARCH.
    pub(crate) async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        returns: Option<&[SearchReturn]>,
        charset: Option<&str>,
        key: &SearchKey,
    ) {
        if let Some(charset) = charset
            && !charset.eq_ignore_ascii_case("UTF-8")
            && !charset.eq_ignore_ascii_case("US-ASCII")
        {
            return self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset");
        }
        if uses_modseq(key) {
            self.enable_condstore();
        }
        let found = match self.evaluate(key, false).await {
            Ok(found) => found,
            Err(error) => return self.no_for(tag, &error),
        };
        self.report_search(tag, uid, returns, &found, uses_modseq(key), "SEARCH");
        self.sync(uid).await;
        self.ok(tag, "SEARCH completed");
    }

    /// Writes the result of SEARCH or SORT (`found` in result order: sequence order for
    /// SEARCH, sort order for SORT): ESEARCH when RETURN was given or the client is
    /// IMAP4rev2, the rev1 `* SEARCH`/`* SORT` response otherwise; SAVE keeps it for `$`.
    /// With `with_modseq` (a MODSEQ search key) the highest MODSEQ of the messages
    /// returned is added (RFC 7162 §3.1.5, RFC 4731 §3.2).
    fn report_search(
        &mut self,
        tag: &str,
        uid: bool,
        returns: Option<&[SearchReturn]>,
        found: &[Candidate],
        with_modseq: bool,
        command: &str,
    ) {
        let number = |c: &Candidate| if uid { c.record.uid } else { c.seq };
        let numbers: Vec<u32> = found.iter().map(number).collect();
        let highest_modseq = |messages: &mut dyn Iterator<Item = &Candidate>| {
            messages.map(|c| c.record.modseq).max().filter(|_| with_modseq)
        };
        let returns: Vec<SearchReturn> = match returns {
            Some([]) => vec![SearchReturn::All],
            Some(list) => list.to_vec(),
            None if self.enabled.rev2 && command == "SEARCH" => vec![SearchReturn::All],
            None => {
                let mut line = format!("* {command}");
                for number in &numbers {
                    line.push_str(&format!(" {number}"));
                }
                if let Some(modseq) = highest_modseq(&mut found.iter()) {
                    line.push_str(&format!(" (MODSEQ {modseq})"));
                }
                line.push_str("\r\n");
                self.queue(line.as_bytes());
                return;
            }
        };
        // MIN and MAX are the first and last messages of the result: the lowest and highest
        // numbers for SEARCH, the first and last in sort order for SORT (RFC 5267 §3).
        let (min, max) = (found.first(), found.last());
        let wants = |option: SearchReturn| returns.contains(&option);
        // With only MIN and/or MAX, those are the messages returned (RFC 4731 §3.2 for
        // MODSEQ, RFC 5182 §2.1 for SAVE).
        let only_min_max = !wants(SearchReturn::All)
            && !wants(SearchReturn::Count)
            && (wants(SearchReturn::Min) || wants(SearchReturn::Max));
        let returned: Vec<&Candidate> = if only_min_max {
            let mut returned: Vec<&Candidate> =
                [wants(SearchReturn::Min).then_some(min), wants(SearchReturn::Max).then_some(max)]
                    .into_iter()
                    .flatten()
                    .flatten()
                    .collect();
            returned.dedup_by_key(|c| c.record.uid);
            returned
        } else {
            found.iter().collect()
        };
        if wants(SearchReturn::Save)
            && let Some(selected) = self.selected.as_mut()
        {
            let mut saved: Vec<u32> = returned.iter().map(|c| c.record.uid).collect();
            saved.sort_unstable();
            saved.dedup();
            selected.saved_search = saved;
        }
        if returns.iter().all(|r| *r == SearchReturn::Save) {
            return;
        }
        let mut line = format!("* ESEARCH (TAG \"{tag}\")");
        if uid {
            line.push_str(" UID");
        }
        for option in &returns {
            match option {
                SearchReturn::Min => {
                    if let Some(min) = min {
                        line.push_str(&format!(" MIN {}", number(min)));
                    }
                }
                SearchReturn::Max => {
                    if let Some(max) = max {
                        line.push_str(&format!(" MAX {}", number(max)));
                    }
                }
                SearchReturn::Count => line.push_str(&format!(" COUNT {}", numbers.len())),
                SearchReturn::All => {
                    if !numbers.is_empty() {
                        // ESORT (RFC 5267 §3) keeps the sort order; SEARCH sends a set.
                        if command == "SORT" {
                            line.push_str(&format!(" ALL {}", compress_runs(&numbers)));
                        } else {
                            line.push_str(&format!(" ALL {}", compress_set(&numbers)));
                        }
                    }
                }
                SearchReturn::Save => {}
            }
        }
        if let Some(modseq) = highest_modseq(&mut returned.into_iter()) {
            line.push_str(&format!(" MODSEQ {modseq}"));
        }
        line.push_str("\r\n");
        self.queue(line.as_bytes());
    }

    /// SORT and UID SORT (RFC 5256 §3, RFC 5267 ESORT).
    pub(crate) async fn sort(
        &mut self,
        tag: &str,
        uid: bool,
        returns: Option<&[SearchReturn]>,
        criteria: &[SortCriterion],
        charset: &str,
        key: &SearchKey,
    ) {
        if !charset.eq_ignore_ascii_case("UTF-8") && !charset.eq_ignore_ascii_case("US-ASCII") {
            return self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset");
        }
        if uses_modseq(key) {
            self.enable_condstore();
        }
        let mut found = match self.evaluate(key, true).await {
            Ok(found) => found,
            Err(error) => return self.no_for(tag, &error),
        };
        found.sort_by(|a, b| {
            for criterion in criteria {
                let order = compare(criterion.key, a, b);
                let order = if criterion.reverse { order.reverse() } else { order };
                if order != Ordering::Equal {
                    return order;
                }
            }
            // RFC 5256 §3: ties are broken by sequence number.
            a.seq.cmp(&b.seq)
        });
        // RFC 7162 §3.1.5: a MODSEQ key adds the highest MODSEQ to SORT's answer too.
        self.report_search(tag, uid, returns, &found, uses_modseq(key), "SORT");
        self.sync(uid).await;
        self.ok(tag, "SORT completed");
    }

    /// THREAD and UID THREAD (RFC 5256 §3).
    pub(crate) async fn thread(
        &mut self,
        tag: &str,
        uid: bool,
        algorithm: ThreadAlgorithm,
        charset: &str,
        key: &SearchKey,
    ) {
        if !charset.eq_ignore_ascii_case("UTF-8") && !charset.eq_ignore_ascii_case("US-ASCII") {
            return self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset");
        }
        let found = match self.evaluate(key, true).await {
            Ok(found) => found,
            Err(error) => return self.no_for(tag, &error),
        };
        let messages: Vec<crate::thread::ThreadInput> = found
            .iter()
            .map(|c| {
                let summary = c.summary.as_ref().expect("loaded for THREAD");
                crate::thread::ThreadInput {
                    number: if uid { c.record.uid } else { c.seq },
                    seq: c.seq,
                    date_ms: summary.sent_date_ms.unwrap_or(c.record.internal_date_ms as i64),
                    base_subject: summary.base_subject.to_lowercase(),
                    is_reply: summary.subject_decoded.trim() != summary.base_subject.trim(),
                    message_id: summary.message_id.clone(),
                    references: summary.references.clone(),
                    in_reply_to: summary.in_reply_to.first().cloned(),
                }
            })
            .collect();
        let text = match algorithm {
            ThreadAlgorithm::OrderedSubject => crate::thread::ordered_subject(messages),
            ThreadAlgorithm::References => crate::thread::references(messages),
        };
        self.untagged(&format!("THREAD {text}"));
        self.sync(uid).await;
        self.ok(tag, "THREAD completed");
    }
}

fn compare(key: SortKey, a: &Candidate, b: &Candidate) -> Ordering {
    fn summary(c: &Candidate) -> &MessageSummary {
        c.summary.as_ref().expect("loaded for SORT")
    }
    let date = |c: &Candidate| summary(c).sent_date_ms.unwrap_or(c.record.internal_date_ms as i64);
    // RFC 5256 uses the i;ascii-casemap collation, which folds a-z to A-Z (RFC 4790 §9.2):
    // "[" and "_" sort after the letters, not before them. Compared byte by byte, without
    // building folded copies for every comparison.
    let text = |field: fn(&MessageSummary) -> &str| {
        let (left, right) = (field(summary(a)).bytes(), field(summary(b)).bytes());
        left.map(|byte| byte.to_ascii_uppercase()).cmp(right.map(|byte| byte.to_ascii_uppercase()))
    };
    match key {
        SortKey::Arrival => a.record.internal_date_ms.cmp(&b.record.internal_date_ms),
        SortKey::Date => date(a).cmp(&date(b)),
        SortKey::Size => a.record.size.cmp(&b.record.size),
        SortKey::Subject => text(|s| &s.base_subject),
        SortKey::From => text(|s| &s.from_sort_key),
        SortKey::To => text(|s| &s.to_sort_key),
        SortKey::Cc => text(|s| &s.cc_sort_key),
        SortKey::DisplayFrom => text(|s| &s.display_from),
        SortKey::DisplayTo => text(|s| &s.display_to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_answers_only_for_messages_it_holds_whole() {
        let body = SearchKey::Body("invoice".into());
        let short = SearchKey::Body("a".into());
        let mut answers = Answers::new();
        answers.insert((&[SearchField::Body], "invoice"), Some(HashSet::from([1, 2])));
        answers.insert((&[SearchField::Body], "a"), None);
        let indexed = wmail_core::IndexedMailbox { uids: HashSet::from([1, 2, 3]), truncated: HashSet::from([2]) };
        let index = IndexCandidates { matched: Some(HashSet::from([1, 2])), indexed, answers };
        // Held whole: answered, nothing to read.
        assert_eq!(index.answer(&body, 1), Some(true));
        assert_eq!(index.answer(&body, 3), Some(false));
        assert_eq!(index.content_needs(&body, 3), (false, false));
        assert!(!index.may_match(3), "held whole and not matched: skipped");
        // Truncated (2) or not indexed yet (4, a lagging index): read and checked.
        for uid in [2, 4] {
            assert_eq!(index.answer(&body, uid), None);
            assert_eq!(index.content_needs(&body, uid), (true, true));
            assert!(index.may_match(uid));
        }
        // A needle too short for the index is always checked.
        assert_eq!(index.answer(&short, 1), None);
        let either = SearchKey::Or(Box::new(body.clone()), Box::new(short));
        assert_eq!(index.content_needs(&either, 1), (true, true));
        let not = SearchKey::Not(Box::new(body));
        assert_eq!(index.content_needs(&not, 3), (false, false), "NOT of an answered key needs nothing");
    }
}
