//! wmail-search: the per-node full-text index of applied messages (Tantivy).
//!
//! The index is derived data: each node builds it from what it applied, it is never
//! replicated, and a missing or unreadable index is rebuilt from the state (the worker that
//! feeds it lives in wmail-core, which knows messages). This crate knows the schema, the
//! tokenizers, how documents are written and removed, and how queries are asked.
//!
//! IMAP SEARCH asks which messages contain a needle ([`SearchIndex::candidates`]); the
//! answer is exact for every message the index holds whole. Messages the index does not
//! hold yet ([`SearchIndex::indexed`]) and messages whose text was too long to index whole
//! are the caller's to check, so SEARCH stays exact while the index lags.

mod grams;
mod words;

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::columnar::Column;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentReader, TantivyDocument, Term,
};

pub use grams::{GRAMS_TOKENIZER, needle_grams};
pub use words::{Clause, QueryError, WORDS_TOKENIZER, WordScope, parse_query, word_analyzer};

/// Bytes of text indexed per field of a message. A message with more text in a field is
/// marked truncated and is a candidate of every query (SEARCH then reads it).
pub const MAX_INDEXED_TEXT: usize = 1 << 20;

/// Bumped when the schema, the tokenizers or core's search texts
/// (`wmail_core::message::search_texts`) change: an index of another version is rebuilt.
/// 4: group names in the address fields, source routes out of mailbox names.
const SCHEMA_VERSION: u32 = 4;

/// Bytes of body text stored per message for search snippets.
const PREVIEW_BYTES: usize = 4096;

/// Windows of the longest needle the index answers (about 96 characters).
const MAX_NEEDLE_WINDOWS: usize = 32;

/// Memory the index writer buffers before it flushes a segment.
const WRITER_MEMORY: usize = 32 << 20;

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Tantivy failed (I/O, a corrupt segment).
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The index directory could not be prepared.
    #[error("search index directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SearchError>;

/// A text field IMAP SEARCH can narrow down with the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TextField {
    /// SEARCH SUBJECT.
    Subject,
    /// SEARCH FROM.
    From,
    /// SEARCH TO.
    To,
    /// SEARCH CC.
    Cc,
    /// SEARCH BCC.
    Bcc,
    /// The header part of SEARCH TEXT.
    Header,
    /// SEARCH BODY, and the body part of SEARCH TEXT.
    Body,
}

impl TextField {
    const ALL: [TextField; 7] = [Self::Subject, Self::From, Self::To, Self::Cc, Self::Bcc, Self::Header, Self::Body];

    fn name(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::From => "from",
            Self::To => "to",
            Self::Cc => "cc",
            Self::Bcc => "bcc",
            Self::Header => "header",
            Self::Body => "body",
        }
    }
}

/// What is indexed of one message in one mailbox. Each field holds the texts the IMAP
/// SEARCH key of the same name is matched against (several values are matched each on its
/// own).
#[derive(Debug, Clone, Default)]
pub struct MessageDocument {
    /// The account.
    pub account: u64,
    /// The mailbox.
    pub mailbox: u64,
    /// The message's UID in the mailbox.
    pub uid: u32,
    /// Texts per field.
    pub texts: Vec<(TextField, String)>,
    /// File names of its attachments.
    pub attachments: Vec<String>,
    /// When it was received (ms since the epoch).
    pub date_ms: u64,
    /// The message's text could not all be indexed (too long, unreadable): it is a
    /// candidate of every query.
    pub truncated: bool,
}

/// How far the index got: per account, the id of the last change-log entry it holds
/// (change ids grow across the whole state). Saved atomically with each commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Schema version the index was built with.
    pub version: u32,
    /// Account id -> last indexed change id.
    pub accounts: BTreeMap<u64, u64>,
}

/// Why [`SearchIndex::open`] started from an empty index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// The index was there and readable.
    Opened,
    /// There was no index yet.
    Created,
    /// The index was unreadable or of another schema version, and was removed.
    Rebuilding(String),
}

/// The answer to [`SearchIndex::lookup`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// What the index holds of the mailbox.
    pub indexed: IndexedMailbox,
    /// Per lookup, in order: the candidates, or `None` when the needle is too short.
    pub answers: Vec<Option<HashSet<u32>>>,
}

/// What the index holds of one mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexedMailbox {
    /// UIDs the index holds a document for.
    pub uids: HashSet<u32>,
    /// Of those, the ones whose text was not all indexed.
    pub truncated: HashSet<u32>,
}

#[derive(Clone, Copy)]
struct Fields {
    message_key: Field,
    mailbox_key: Field,
    account: Field,
    mailbox: Field,
    uid: Field,
    truncated: Field,
    texts: [Field; 7],
    date: Field,
    has_attachment: Field,
    preview: Field,
    /// Word fields: subject, from, to (To, Cc, Bcc), body, attachment names.
    words: [Field; 5],
}

impl Fields {
    fn text(&self, field: TextField) -> Field {
        self.texts[TextField::ALL.iter().position(|f| *f == field).expect("every field listed")]
    }

    /// The word field a text field also feeds, if any.
    fn words_of(&self, field: TextField) -> Option<Field> {
        match field {
            TextField::Subject => Some(self.words[0]),
            TextField::From => Some(self.words[1]),
            TextField::To | TextField::Cc | TextField::Bcc => Some(self.words[2]),
            TextField::Body => Some(self.words[3]),
            TextField::Header => None,
        }
    }

    /// The word fields a query scope searches, with their boosts.
    fn words_in(&self, scope: WordScope) -> Vec<(Field, f32)> {
        let [subject, from, to, body, attachment] = self.words;
        match scope {
            WordScope::Anywhere => vec![(subject, 2.0), (from, 1.5), (to, 1.0), (body, 1.0), (attachment, 1.0)],
            WordScope::Subject => vec![(subject, 1.0)],
            WordScope::From => vec![(from, 1.0)],
            WordScope::To => vec![(to, 1.0)],
            WordScope::Body => vec![(body, 1.0)],
            WordScope::Attachment => vec![(attachment, 1.0)],
        }
    }
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let grams = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(GRAMS_TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer(WORDS_TOKENIZER).set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        message_key: builder.add_text_field("message", STRING),
        mailbox_key: builder.add_text_field("mailbox", STRING),
        account: builder.add_u64_field("account", INDEXED),
        mailbox: builder.add_u64_field("mailbox_id", STORED),
        uid: builder.add_u64_field("uid", FAST | STORED),
        truncated: builder.add_u64_field("truncated", INDEXED),
        texts: TextField::ALL.map(|field| builder.add_text_field(field.name(), grams.clone())),
        date: builder.add_u64_field("date", INDEXED | FAST),
        has_attachment: builder.add_u64_field("has_attachment", INDEXED),
        preview: builder.add_text_field("preview", STORED),
        words: ["w_subject", "w_from", "w_to", "w_body", "w_attachment"]
            .map(|name| builder.add_text_field(name, words.clone())),
    };
    (builder.build(), fields)
}

fn message_key(account: u64, mailbox: u64, uid: u32) -> String {
    format!("{account}:{mailbox}:{uid}")
}

fn mailbox_key(account: u64, mailbox: u64) -> String {
    format!("{account}:{mailbox}")
}

/// Cuts `text` in place to at most [`MAX_INDEXED_TEXT`] bytes on a character boundary; says
/// whether it cut. Callers that keep texts before indexing them cap them first, so memory
/// stays bounded whatever the message ([`SearchIndex::add`] caps again).
pub fn cap_text(text: &mut String) -> bool {
    let (kept, cut) = capped(text);
    let kept = kept.len();
    text.truncate(kept);
    cut
}

/// Cuts `text` to at most [`MAX_INDEXED_TEXT`] bytes on a character boundary; says whether
/// it cut.
fn capped(text: &str) -> (&str, bool) {
    if text.len() <= MAX_INDEXED_TEXT {
        return (text, false);
    }
    (&text[..text.floor_char_boundary(MAX_INDEXED_TEXT)], true)
}

/// The index of one node.
pub struct SearchIndex {
    dir: PathBuf,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    progress: Mutex<Progress>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it when missing. An index that cannot be read,
    /// or was built with another schema version, is removed and started afresh: the caller
    /// then rebuilds it from the state.
    pub fn open(dir: &Path) -> Result<(Self, OpenOutcome)> {
        let existed = dir.join("meta.json").exists();
        match Self::open_existing(dir) {
            Ok(index) if index.progress().version == SCHEMA_VERSION => {
                let outcome = if existed { OpenOutcome::Opened } else { OpenOutcome::Created };
                Ok((index, outcome))
            }
            Ok(index) => {
                let version = index.progress().version;
                drop(index);
                Self::remove(dir)?;
                let reason = format!("built with schema version {version}, this release uses {SCHEMA_VERSION}");
                Ok((Self::open_existing(dir)?, OpenOutcome::Rebuilding(reason)))
            }
            Err(error) => {
                Self::remove(dir)?;
                Ok((Self::open_existing(dir)?, OpenOutcome::Rebuilding(error.to_string())))
            }
        }
    }

    fn remove(dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(SearchError::Directory { path: dir.to_owned(), source })
            }
            _ => Ok(()),
        }
    }

    fn open_existing(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| SearchError::Directory { path: dir.to_owned(), source })?;
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(|e| SearchError::Index(e.into()))?;
        let index = Index::open_or_create(directory, schema)?;
        index.tokenizers().register(GRAMS_TOKENIZER, TextAnalyzer::from(grams::GramTokenizer));
        index.tokenizers().register(WORDS_TOKENIZER, word_analyzer());
        let progress = match index.load_metas()?.payload {
            Some(payload) => serde_json::from_str(&payload).map_err(|e| {
                SearchError::Index(tantivy::TantivyError::InternalError(format!("unreadable progress record: {e}")))
            })?,
            None => Progress { version: SCHEMA_VERSION, accounts: BTreeMap::new() },
        };
        // Touch every segment once: a damaged segment fails here, not in a query.
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        Ok(Self { dir: dir.to_owned(), reader, writer: Mutex::new(writer), fields, progress: Mutex::new(progress) })
    }

    /// How far the last commit got.
    pub fn progress(&self) -> Progress {
        self.progress.lock().expect("progress lock").clone()
    }

    /// Adds (or replaces) a message's document. Visible after the next [`Self::commit`].
    pub fn add(&self, message: &MessageDocument) -> Result<()> {
        let fields = self.fields;
        let key = message_key(message.account, message.mailbox, message.uid);
        let mut document = TantivyDocument::default();
        document.add_text(fields.message_key, &key);
        document.add_text(fields.mailbox_key, mailbox_key(message.account, message.mailbox));
        document.add_u64(fields.account, message.account);
        document.add_u64(fields.mailbox, message.mailbox);
        document.add_u64(fields.uid, u64::from(message.uid));
        document.add_u64(fields.date, message.date_ms);
        document.add_u64(fields.has_attachment, u64::from(!message.attachments.is_empty()));
        for name in &message.attachments {
            document.add_text(fields.words[4], name);
        }
        let mut truncated = message.truncated;
        let mut preview = String::new();
        for (field, text) in &message.texts {
            let (text, cut) = capped(text);
            truncated |= cut;
            document.add_text(fields.text(*field), text);
            if let Some(words) = fields.words_of(*field) {
                document.add_text(words, text);
            }
            if *field == TextField::Body && preview.len() < PREVIEW_BYTES {
                preview.push_str(&text[..text.floor_char_boundary(PREVIEW_BYTES - preview.len())]);
            }
        }
        document.add_text(fields.preview, &preview);
        document.add_u64(fields.truncated, u64::from(truncated));
        let writer = self.writer.lock().expect("writer lock");
        writer.delete_term(Term::from_field_text(fields.message_key, &key));
        writer.add_document(document)?;
        Ok(())
    }

    /// Removes a message's document.
    pub fn remove_message(&self, account: u64, mailbox: u64, uid: u32) {
        let term = Term::from_field_text(self.fields.message_key, &message_key(account, mailbox, uid));
        self.writer.lock().expect("writer lock").delete_term(term);
    }

    /// Removes every document of a mailbox.
    pub fn remove_mailbox(&self, account: u64, mailbox: u64) {
        let term = Term::from_field_text(self.fields.mailbox_key, &mailbox_key(account, mailbox));
        self.writer.lock().expect("writer lock").delete_term(term);
    }

    /// Removes every document of an account.
    pub fn remove_account(&self, account: u64) {
        let term = Term::from_field_u64(self.fields.account, account);
        self.writer.lock().expect("writer lock").delete_term(term);
    }

    /// Makes what was added and removed durable and visible, together with `progress`.
    pub fn commit(&self, progress: Progress) -> Result<()> {
        let payload = serde_json::to_string(&Progress { version: SCHEMA_VERSION, ..progress.clone() })
            .expect("progress serialises");
        {
            let mut writer = self.writer.lock().expect("writer lock");
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&payload);
            prepared.commit()?;
        }
        *self.progress.lock().expect("progress lock") = Progress { version: SCHEMA_VERSION, ..progress };
        self.reader.reload()?;
        Ok(())
    }

    /// Documents in the index (committed, not deleted).
    pub fn document_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Answers several lookups in a mailbox from one view of the index: what it holds of
    /// the mailbox, and for each `(fields, needle)` the [`Self::candidates`].
    pub fn lookup(&self, account: u64, mailbox: u64, lookups: &[(&[TextField], &str)]) -> Result<Lookup> {
        let searcher = self.reader.searcher();
        let indexed = self.indexed_in(&searcher, account, mailbox)?;
        let answers = lookups
            .iter()
            .map(|(fields, needle)| self.candidates_in(&searcher, account, mailbox, fields, needle))
            .collect::<Result<_>>()?;
        Ok(Lookup { indexed, answers })
    }

    /// The UIDs of a mailbox the index holds, and which of them are truncated.
    pub fn indexed(&self, account: u64, mailbox: u64) -> Result<IndexedMailbox> {
        self.indexed_in(&self.reader.searcher(), account, mailbox)
    }

    fn indexed_in(&self, searcher: &Searcher, account: u64, mailbox: u64) -> Result<IndexedMailbox> {
        let in_mailbox = self.mailbox_query(account, mailbox);
        let uids = searcher.search(&in_mailbox, &UidCollector)?.into_iter().collect();
        let truncated_query = BooleanQuery::new(vec![
            (Occur::Must, in_mailbox),
            (Occur::Must, term_query(Term::from_field_u64(self.fields.truncated, 1))),
        ]);
        let truncated = searcher.search(&truncated_query, &UidCollector)?.into_iter().collect();
        Ok(IndexedMailbox { uids, truncated })
    }

    /// The UIDs of a mailbox whose indexed `fields` (any of them) contain `needle`
    /// case-insensitively: exact for documents held whole, and for truncated ones a subset
    /// (their text past the cap is not searched). `None` when the needle is too short (or too long) for
    /// the index. Only documents the index holds are answered for: see [`Self::indexed`].
    pub fn candidates(
        &self,
        account: u64,
        mailbox: u64,
        fields: &[TextField],
        needle: &str,
    ) -> Result<Option<HashSet<u32>>> {
        self.candidates_in(&self.reader.searcher(), account, mailbox, fields, needle)
    }

    fn candidates_in(
        &self,
        searcher: &Searcher,
        account: u64,
        mailbox: u64,
        fields: &[TextField],
        needle: &str,
    ) -> Result<Option<HashSet<u32>>> {
        // A needle of more windows than this is left to the scan: each window opens postings.
        let Some(grams) = needle_grams(needle).filter(|grams| grams.len() <= MAX_NEEDLE_WINDOWS) else {
            return Ok(None);
        };
        let per_field: Vec<(Occur, Box<dyn Query>)> = fields
            .iter()
            .map(|field| {
                let mut terms: Vec<(usize, Term)> = grams
                    .iter()
                    .map(|(offset, gram)| (*offset, Term::from_field_text(self.fields.text(*field), gram)))
                    .collect();
                let query: Box<dyn Query> = match terms.len() {
                    1 => term_query(terms.remove(0).1),
                    _ => Box::new(PhraseQuery::new_with_offset(terms)),
                };
                (Occur::Should, query)
            })
            .collect();
        let query = BooleanQuery::new(vec![
            (Occur::Must, self.mailbox_query(account, mailbox)),
            (Occur::Must, Box::new(BooleanQuery::new(per_field))),
        ]);
        Ok(Some(searcher.search(&query, &UidCollector)?.into_iter().collect()))
    }

    /// Ranked search of an account for people (the webmail): the best `limit` messages for
    /// parsed `clauses`, with a snippet of each. `mailboxes` maps the names `in:` may use to
    /// mailbox ids. The index may lag the mailboxes a little, and may name messages already
    /// expunged: the caller checks.
    pub fn ranked(
        &self,
        account: u64,
        clauses: &[Clause],
        mailboxes: &std::collections::HashMap<String, u64>,
        limit: usize,
    ) -> std::result::Result<Vec<RankedHit>, RankedError> {
        let fields = self.fields;
        let mut parts: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, term_query(Term::from_field_u64(fields.account, account)))];
        let mut scored = false;
        for clause in clauses {
            match clause {
                Clause::Words { scope, text, negated } => {
                    let terms = words::terms(text);
                    if terms.is_empty() {
                        return Err(RankedError::Query(QueryError(format!("\"{text}\" has no words to search for"))));
                    }
                    let in_scope = fields.words_in(*scope);
                    let each_term: Vec<(Occur, Box<dyn Query>)> = terms
                        .iter()
                        .map(|term| {
                            let anywhere: Vec<(Occur, Box<dyn Query>)> = in_scope
                                .iter()
                                .map(|&(field, boost)| {
                                    let query = TermQuery::new(
                                        Term::from_field_text(field, term),
                                        IndexRecordOption::WithFreqs,
                                    );
                                    (Occur::Should, Box::new(BoostQuery::new(Box::new(query), boost)) as Box<dyn Query>)
                                })
                                .collect();
                            (Occur::Must, Box::new(BooleanQuery::new(anywhere)) as Box<dyn Query>)
                        })
                        .collect();
                    let occur = if *negated { Occur::MustNot } else { Occur::Must };
                    scored |= !negated;
                    parts.push((occur, Box::new(BooleanQuery::new(each_term))));
                }
                Clause::Mailbox(name) => {
                    let id = mailboxes.get(name).or_else(|| {
                        mailboxes.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)).map(|(_, id)| id)
                    });
                    let Some(id) = id else {
                        return Err(RankedError::Query(QueryError(format!(
                            "in:{name}: there is no mailbox of that name"
                        ))));
                    };
                    parts.push((Occur::Must, self.mailbox_query(account, *id)));
                }
                Clause::HasAttachment => {
                    parts.push((Occur::Must, term_query(Term::from_field_u64(fields.has_attachment, 1))));
                }
                Clause::Before(ms) => parts.push((
                    Occur::Must,
                    Box::new(RangeQuery::new(
                        Bound::Unbounded,
                        Bound::Excluded(Term::from_field_u64(fields.date, *ms)),
                    )),
                )),
                Clause::After(ms) => parts.push((
                    Occur::Must,
                    Box::new(RangeQuery::new(
                        Bound::Included(Term::from_field_u64(fields.date, *ms)),
                        Bound::Unbounded,
                    )),
                )),
            }
        }
        let query = BooleanQuery::new(parts);
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        let snippets = SnippetGenerator::create(&searcher, &query, fields.words[3])?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let document: TantivyDocument = searcher.doc(address)?;
            let number = |field| document.get_first(field).and_then(|value| value.as_u64()).unwrap_or(0);
            let preview = document.get_first(fields.preview).and_then(|value| value.as_str()).unwrap_or_default();
            let snippet = snippets.snippet(preview);
            let snippet = if snippet.fragment().is_empty() {
                html_escape(&preview[..preview.floor_char_boundary(160)])
            } else {
                snippet.to_html()
            };
            hits.push(RankedHit {
                mailbox: number(fields.mailbox),
                uid: number(fields.uid) as u32,
                score: if scored { score } else { 0.0 },
                snippet,
            });
        }
        Ok(hits)
    }

    fn mailbox_query(&self, account: u64, mailbox: u64) -> Box<dyn Query> {
        term_query(Term::from_field_text(self.fields.mailbox_key, &mailbox_key(account, mailbox)))
    }

    /// Waits for background segment merges (tests and shutdown).
    pub fn wait_merging(self) -> Result<()> {
        let writer = self.writer.into_inner().expect("writer lock");
        writer.wait_merging_threads()?;
        Ok(())
    }

    /// The index's directory size on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|entries| entries.filter_map(|entry| entry.ok()?.metadata().ok()).map(|meta| meta.len()).sum())
            .unwrap_or(0)
    }
}

/// One hit of [`SearchIndex::ranked`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedHit {
    /// The mailbox id.
    pub mailbox: u64,
    /// The UID in that mailbox.
    pub uid: u32,
    /// Relevance (BM25; higher is better; 0 when the query has no words).
    pub score: f32,
    /// Part of the body around the words found, as HTML with `<b>` around them.
    pub snippet: String,
}

/// Why a ranked search failed.
#[derive(Debug, thiserror::Error)]
pub enum RankedError {
    /// The query asks for something that cannot be searched; tell the user.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The index failed.
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn term_query(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

/// Collects the `uid` fast field of every matching document.
struct UidCollector;

struct UidSegmentCollector {
    column: Column<u64>,
    uids: Vec<u32>,
}

impl Collector for UidCollector {
    type Fruit = Vec<u32>;
    type Child = UidSegmentCollector;

    fn for_segment(&self, _segment: u32, reader: &SegmentReader) -> tantivy::Result<UidSegmentCollector> {
        Ok(UidSegmentCollector { column: reader.fast_fields().u64("uid")?, uids: Vec::new() })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u32>>) -> tantivy::Result<Vec<u32>> {
        Ok(fruits.concat())
    }
}

impl SegmentCollector for UidSegmentCollector {
    type Fruit = Vec<u32>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if let Some(uid) = self.column.first(doc) {
            self.uids.push(uid as u32);
        }
    }

    fn harvest(self) -> Vec<u32> {
        self.uids
    }
}

#[cfg(test)]
mod tests;
