//! The commands a client can send, as the parser hands them to the session. Names are
//! decoded (UTF-8), macros (ALL, FAST, FULL) expanded, and literals resolved; an APPEND
//! message body is not here but in the blob store, named by [`MessageRef`].

use chrono::NaiveDate;

/// A command with its tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged {
    /// The client's tag, echoed in the completion response.
    pub tag: String,
    /// The command.
    pub command: Command,
}

/// An APPEND message body the session streamed to the blob store while reading the
/// command: `index` counts the command's message literals from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef {
    /// Position among the command's message literals.
    pub index: usize,
}

/// One message of an APPEND (several with MULTIAPPEND, RFC 3502).
#[derive(Debug, Clone, PartialEq)]
pub struct AppendMessage {
    /// Flags to set on the new message.
    pub flags: Vec<String>,
    /// INTERNALDATE to give it (ms since the epoch); `None` means now.
    pub internal_date_ms: Option<i64>,
    /// The body, already stored.
    pub body: MessageRef,
}

/// One end of a sequence range: a number or `*` (the largest in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqBound {
    /// A message sequence number or UID.
    Number(u32),
    /// `*`.
    Largest,
}

/// A sequence set (RFC 9051 §9 `sequence-set`), or `$`, the saved search result
/// (RFC 5182 SEARCHRES).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceSet {
    /// Ranges as written; a single number is a range with equal ends.
    Ranges(Vec<(SeqBound, SeqBound)>),
    /// `$`.
    Saved,
}

/// A system flag change action for STORE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAction {
    /// `FLAGS`
    Replace,
    /// `+FLAGS`
    Add,
    /// `-FLAGS`
    Remove,
}

/// What part of a message a BODY[...] section names (RFC 9051 §6.4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Part numbers, outermost first; empty for the whole message.
    pub part: Vec<u32>,
    /// The text qualifier after the part numbers, if any.
    pub text: Option<SectionText>,
}

/// The qualifier of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    /// `HEADER`
    Header,
    /// `HEADER.FIELDS (names)`
    HeaderFields(Vec<String>),
    /// `HEADER.FIELDS.NOT (names)`
    HeaderFieldsNot(Vec<String>),
    /// `TEXT`
    Text,
    /// `MIME` (only after a part number)
    Mime,
}

/// One FETCH data item (RFC 9051 §6.4.5, RFC 7162 MODSEQ, RFC 3516 BINARY, RFC 8474).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    /// `UID`
    Uid,
    /// `FLAGS`
    Flags,
    /// `INTERNALDATE`
    InternalDate,
    /// `RFC822.SIZE`
    Rfc822Size,
    /// `ENVELOPE`
    Envelope,
    /// `BODYSTRUCTURE`
    BodyStructure,
    /// `BODY` without a section: the non-extensible body structure.
    Body,
    /// `MODSEQ` (RFC 7162)
    ModSeq,
    /// `EMAILID` (RFC 8474)
    EmailId,
    /// `THREADID` (RFC 8474)
    ThreadId,
    /// `RFC822` (same as BODY[], sets \Seen)
    Rfc822,
    /// `RFC822.HEADER` (same as BODY.PEEK[HEADER])
    Rfc822Header,
    /// `RFC822.TEXT` (same as BODY[TEXT], sets \Seen)
    Rfc822Text,
    /// `BODY[section]<partial>` or `BODY.PEEK[...]`; partial is (offset, length).
    BodySection { peek: bool, section: Section, partial: Option<(u32, u32)> },
    /// `BINARY[section]<partial>` or `BINARY.PEEK[...]` (RFC 3516). RFC 3516 names part
    /// numbers only; like Dovecot, HEADER, TEXT and MIME are accepted after them too.
    Binary { peek: bool, section: Section, partial: Option<(u32, u32)> },
    /// `BINARY.SIZE[section]` (RFC 3516).
    BinarySize { section: Section },
}

/// A SEARCH key (RFC 9051 §6.4.4, RFC 7162 MODSEQ, RFC 5032 OLDER/YOUNGER, RFC 8474).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// `ALL`
    All,
    /// `ANSWERED`
    Answered,
    /// `DELETED`
    Deleted,
    /// `DRAFT`
    Draft,
    /// `FLAGGED`
    Flagged,
    /// `NEW` (rev1: recent and unseen)
    New,
    /// `OLD` (rev1: not recent)
    Old,
    /// `RECENT`
    Recent,
    /// `SEEN`
    Seen,
    /// `UNANSWERED`
    Unanswered,
    /// `UNDELETED`
    Undeleted,
    /// `UNDRAFT`
    Undraft,
    /// `UNFLAGGED`
    Unflagged,
    /// `UNSEEN`
    Unseen,
    /// `KEYWORD flag`
    Keyword(String),
    /// `UNKEYWORD flag`
    Unkeyword(String),
    /// `BCC string`
    Bcc(String),
    /// `BODY string`
    Body(String),
    /// `CC string`
    Cc(String),
    /// `FROM string`
    From(String),
    /// `SUBJECT string`
    Subject(String),
    /// `TEXT string`
    Text(String),
    /// `TO string`
    To(String),
    /// `HEADER field-name string`
    Header(String, String),
    /// `BEFORE date` (internal date)
    Before(NaiveDate),
    /// `ON date`
    On(NaiveDate),
    /// `SINCE date`
    Since(NaiveDate),
    /// `SENTBEFORE date` (Date: header)
    SentBefore(NaiveDate),
    /// `SENTON date`
    SentOn(NaiveDate),
    /// `SENTSINCE date`
    SentSince(NaiveDate),
    /// `LARGER n`
    Larger(u64),
    /// `SMALLER n`
    Smaller(u64),
    /// `UID set`
    Uid(SequenceSet),
    /// A bare sequence set (message numbers), or `$`.
    Sequence(SequenceSet),
    /// `NOT key`
    Not(Box<SearchKey>),
    /// `OR key key`
    Or(Box<SearchKey>, Box<SearchKey>),
    /// A parenthesised list, or the top-level list of keys: all must match.
    And(Vec<SearchKey>),
    /// `MODSEQ [entry type] n` (RFC 7162 §3.1.5); the entry name is ignored.
    ModSeq(u64),
    /// `OLDER seconds` (RFC 5032)
    Older(u32),
    /// `YOUNGER seconds` (RFC 5032)
    Younger(u32),
    /// `EMAILID id` (RFC 8474)
    EmailId(String),
    /// `THREADID id` (RFC 8474)
    ThreadId(String),
}

/// ESEARCH result options (RFC 4731 `SEARCH RETURN (...)`, RFC 5182 SAVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchReturn {
    /// `MIN`
    Min,
    /// `MAX`
    Max,
    /// `ALL`
    All,
    /// `COUNT`
    Count,
    /// `SAVE` (SEARCHRES)
    Save,
}

/// A SORT criterion (RFC 5256 §3); `reverse` applies to the key after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortCriterion {
    /// Descending order.
    pub reverse: bool,
    /// The key.
    pub key: SortKey,
}

/// SORT keys (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// `ARRIVAL` (internal date)
    Arrival,
    /// `CC`
    Cc,
    /// `DATE` (Date: header)
    Date,
    /// `FROM`
    From,
    /// `SIZE`
    Size,
    /// `SUBJECT` (base subject)
    Subject,
    /// `TO`
    To,
    /// `DISPLAYFROM`
    DisplayFrom,
    /// `DISPLAYTO`
    DisplayTo,
}

/// THREAD algorithms (RFC 5256 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadAlgorithm {
    /// `ORDEREDSUBJECT`
    OrderedSubject,
    /// `REFERENCES`
    References,
}

/// STATUS data items (RFC 9051 §6.3.11, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// `MESSAGES`
    Messages,
    /// `UIDNEXT`
    UidNext,
    /// `UIDVALIDITY`
    UidValidity,
    /// `UNSEEN`
    Unseen,
    /// `DELETED`
    Deleted,
    /// `SIZE`
    Size,
    /// `RECENT` (rev1)
    Recent,
    /// `HIGHESTMODSEQ`
    HighestModSeq,
    /// `MAILBOXID` (RFC 8474)
    MailboxId,
}

/// LIST selection and return options (RFC 5258, RFC 5819 LIST-STATUS, RFC 6154).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Selection `SUBSCRIBED`.
    pub select_subscribed: bool,
    /// Selection `RECURSIVEMATCH`.
    pub recursive_match: bool,
    /// Selection `SPECIAL-USE`.
    pub select_special_use: bool,
    /// Return `SUBSCRIBED`.
    pub return_subscribed: bool,
    /// Return `CHILDREN`.
    pub return_children: bool,
    /// Return `SPECIAL-USE`.
    pub return_special_use: bool,
    /// Return `STATUS (...)`.
    pub return_status: Option<Vec<StatusItem>>,
}

/// QRESYNC parameters of SELECT/EXAMINE (RFC 7162 §3.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QresyncParams {
    /// The UIDVALIDITY the client knows.
    pub uid_validity: u32,
    /// The last MODSEQ the client knows.
    pub modseq: u64,
    /// UIDs the client knows, if given.
    pub known_uids: Option<SequenceSet>,
    /// Sequence match data: message numbers and their UIDs.
    pub seq_match: Option<(SequenceSet, SequenceSet)>,
}

/// A client command (RFC 9051 §6 and the extensions in CAPABILITY).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `CAPABILITY`
    Capability,
    /// `NOOP`
    Noop,
    /// `LOGOUT`
    Logout,
    /// `STARTTLS`
    StartTls,
    /// `AUTHENTICATE mechanism [initial-response]` (RFC 4959 SASL-IR); `initial` is the
    /// base64 text as sent (`=` for an empty response).
    Authenticate { mechanism: String, initial: Option<String> },
    /// `LOGIN user password`
    Login { user: String, password: String },
    /// `ENABLE capabilities` (RFC 5161)
    Enable { capabilities: Vec<String> },
    /// `ID (params)` or `ID NIL` (RFC 2971)
    Id { params: Option<Vec<(String, Option<String>)>> },
    /// `NAMESPACE` (RFC 2342)
    Namespace,
    /// `SELECT` (`read_only` false) or `EXAMINE` (true), with CONDSTORE/QRESYNC parameters.
    Select { mailbox: String, read_only: bool, condstore: bool, qresync: Option<QresyncParams> },
    /// `CREATE name [(USE (attrs))]` (RFC 6154 CREATE-SPECIAL-USE)
    Create { mailbox: String, special_use: Vec<String> },
    /// `DELETE name`
    Delete { mailbox: String },
    /// `RENAME from to`
    Rename { from: String, to: String },
    /// `SUBSCRIBE name`
    Subscribe { mailbox: String },
    /// `UNSUBSCRIBE name`
    Unsubscribe { mailbox: String },
    /// `LIST` (with RFC 5258 options) or `LSUB` (`lsub` true)
    List { reference: String, patterns: Vec<String>, options: ListOptions, lsub: bool },
    /// `STATUS name (items)`
    Status { mailbox: String, items: Vec<StatusItem> },
    /// `APPEND name [flags] [date] literal` ... (MULTIAPPEND: several)
    Append { mailbox: String, messages: Vec<AppendMessage> },
    /// `IDLE` (RFC 2177)
    Idle,
    /// `CHECK`
    Check,
    /// `CLOSE`
    Close,
    /// `UNSELECT` (RFC 3691)
    Unselect,
    /// `EXPUNGE`, or `UID EXPUNGE set` (RFC 4315) when `uids` is given.
    Expunge { uids: Option<SequenceSet> },
    /// `[UID] SEARCH [RETURN (...)] [CHARSET c] keys`
    Search { uid: bool, returns: Option<Vec<SearchReturn>>, charset: Option<String>, key: SearchKey },
    /// `[UID] SORT [RETURN (...)] (criteria) charset keys` (RFC 5256, RFC 5267 ESORT)
    Sort {
        uid: bool,
        returns: Option<Vec<SearchReturn>>,
        criteria: Vec<SortCriterion>,
        charset: String,
        key: SearchKey,
    },
    /// `[UID] THREAD algorithm charset keys` (RFC 5256)
    Thread { uid: bool, algorithm: ThreadAlgorithm, charset: String, key: SearchKey },
    /// `[UID] FETCH set items [(CHANGEDSINCE n [VANISHED])]`
    Fetch { uid: bool, set: SequenceSet, items: Vec<FetchItem>, changed_since: Option<u64>, vanished: bool },
    /// `[UID] STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] (flags)`
    Store {
        uid: bool,
        set: SequenceSet,
        action: StoreAction,
        silent: bool,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    },
    /// `[UID] COPY set mailbox`
    Copy { uid: bool, set: SequenceSet, mailbox: String },
    /// `[UID] MOVE set mailbox` (RFC 6851)
    Move { uid: bool, set: SequenceSet, mailbox: String },
    /// `GETQUOTA root` (RFC 9208)
    GetQuota { root: String },
    /// `GETQUOTAROOT mailbox` (RFC 9208)
    GetQuotaRoot { mailbox: String },
    /// `SETQUOTA root (limits)` (RFC 9208); only administrators set quotas, so it is refused.
    SetQuota { root: String },
}
