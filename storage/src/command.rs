//! The replicated commands: the only way the state machine changes.
//!
//! A command is proposed through Raft as a [`CommandEnvelope`], applied by every node in log
//! order by [`crate::StateStore::apply_batch`], and answered with a [`CommandResult`]. Apply is
//! deterministic: everything that differs between nodes (the clock, ids) is either carried
//! in the envelope or derived from replicated state.

use serde::{Deserialize, Serialize};

use crate::blob::BlobId;
use crate::error::{Error, Result};
use crate::queue::{AttemptResult, OutboundEnvelope};
use crate::records::{
    AccountState, BlockRecord, ClusterCa, DkimKey, GreylistEntry, JoinToken, QuarantineInfo, Service,
};

/// The newest command version this binary knows: it decodes and applies every command kind
/// introduced up to it. A node that meets a command of a higher version stops applying and
/// asks the operator to upgrade (it never skips a command); the leader proposes a command
/// only once every voter reports a version at least the command's
/// ([`Command::required_version`]), so a rolling upgrade never reaches that point.
pub const COMMAND_VERSION: u16 = 4;

/// What a voter whose command version this node has not learnt (not reachable since this
/// node started) is taken to apply: the version every release of wmail applies.
pub const UNREPORTED_COMMAND_VERSION: u16 = 2;

/// A command plus what every node needs to apply it identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// Encoding version, [`COMMAND_VERSION`] when written by this binary.
    pub version: u16,
    /// The proposer's clock when the command was proposed (ms since the epoch); apply uses
    /// this instead of the local clock.
    pub issued_at_ms: u64,
    /// The change itself.
    pub command: Command,
}

impl CommandEnvelope {
    /// Wraps `command` with the current version and `issued_at_ms`.
    pub fn new(command: Command, issued_at_ms: u64) -> Self {
        Self { version: COMMAND_VERSION, issued_at_ms, command }
    }

    /// Encodes the envelope for the Raft log: the version a node needs to apply it (the
    /// command's [`Command::required_version`], not the writer's) as two big-endian bytes,
    /// then postcard, so the version is readable even when the rest is not. A command kind
    /// an older release knows keeps its encoding, so that release applies it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.command.required_version().to_be_bytes().to_vec();
        out.extend(postcard::to_stdvec(self).expect("postcard encodes commands"));
        out
    }

    /// The version a node needs to apply an encoded command (its header); 0 when the bytes
    /// are too short to be one (decoding refuses them).
    pub fn required_version(bytes: &[u8]) -> u16 {
        bytes.get(..2).map_or(0, |header| u16::from_be_bytes([header[0], header[1]]))
    }

    /// Decodes an envelope, refusing versions newer than this binary.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 2 {
            return Err(Error::corrupt("command shorter than its version header"));
        }
        let version = Self::required_version(bytes);
        if version > COMMAND_VERSION {
            return Err(Error::corrupt(format!(
                "replicated command version {version} is newer than this binary (knows up to \
                 {COMMAND_VERSION}); install a newer wmail on this node"
            )));
        }
        postcard::from_bytes(&bytes[2..]).map_err(|e| Error::corrupt("undecodable command").with_source(e))
    }
}

/// How [`Command::SetFlags`] combines the given flags with the current ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlagAction {
    /// Add the flags (IMAP `+FLAGS`).
    Add,
    /// Remove the flags (IMAP `-FLAGS`).
    Remove,
    /// Replace all flags (IMAP `FLAGS`).
    Replace,
}

/// What threading needs of a delivered message (RFC 8474 THREADID, RFC 5256 §2.2 links).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threading {
    /// Its Message-ID.
    pub message_id: Option<String>,
    /// The ids it refers to: References, then In-Reply-To.
    pub references: Vec<String>,
}

/// One mailbox that receives a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryTarget {
    /// The receiving account.
    pub account_id: u64,
    /// The mailbox inside it; `None` means the account's INBOX.
    pub mailbox_id: Option<u64>,
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a local domain.
    CreateDomain { name: String },
    /// Removes a local domain that has no accounts or aliases left and no domain aliases
    /// pointing at it.
    RemoveDomain { name: String },
    /// Adds a domain alias: mail for `local@alias` goes to `local@target`.
    CreateDomainAlias { alias: String, target: String },
    /// Sets (or with `None` removes) a domain's catch-all address for unknown local parts.
    SetCatchAll { domain: String, address: Option<String> },
    /// Sets (or with `None` removes) the `host:port` server that gets mail for a domain's
    /// unknown local parts (when it has no catch-all), keeping the recipient address.
    SetUnknownForward { domain: String, target: Option<String> },
    /// Creates an account with its INBOX.
    CreateAccount {
        address: String,
        display_name: String,
        password_hash: String,
        quota_bytes: Option<u64>,
        state: AccountState,
    },
    /// Changes the given fields of an account; `None` leaves a field as it is.
    UpdateAccount {
        address: String,
        display_name: Option<String>,
        password_hash: Option<String>,
        /// `Some(None)` removes the quota.
        quota_bytes: Option<Option<u64>>,
        state: Option<AccountState>,
    },
    /// Sets which services an account may not use and which extra sender addresses it is
    /// granted; `None` leaves a list as it is.
    SetAccountAccess { address: String, disabled_services: Option<Vec<Service>>, send_as: Option<Vec<String>> },
    /// Sets which services no account of a domain may use.
    SetDomainServices { domain: String, disabled_services: Vec<Service> },
    /// Removes an account, its mailboxes and messages (dropping their blob references).
    RemoveAccount { address: String },
    /// Creates an alias that forwards to `targets`.
    CreateAlias { alias: String, targets: Vec<String> },
    /// Removes an alias.
    RemoveAlias { alias: String },
    /// Creates a mailbox in an account, and any missing superiors of its name (RFC 9051
    /// §6.3.4: creating `a/b/c` creates `a` and `a/b`).
    CreateMailbox { account_id: u64, name: String, special_use: Option<String> },
    /// Renames a mailbox and every mailbox below it (RFC 9051 §6.3.6). Renaming INBOX moves
    /// its messages to the new name and leaves an empty INBOX.
    RenameMailbox { account_id: u64, from: String, to: String },
    /// Deletes a mailbox and its messages; mailboxes below it stay (RFC 9051 §6.3.5).
    /// INBOX cannot be deleted.
    DeleteMailbox { account_id: u64, name: String },
    /// Adds or removes a name from an account's subscriptions (RFC 9051 §6.3.7, §6.3.8).
    SetSubscription { account_id: u64, name: String, subscribed: bool },
    /// Copies messages to another mailbox of the same account, sharing their blobs; with
    /// `remove_source` the originals are expunged in the same command (RFC 6851 MOVE).
    CopyMessages { account_id: u64, from_mailbox: u64, uids: Vec<u32>, to_mailbox: u64, remove_source: bool },
    /// Claims the `\Recent` messages of a mailbox for one session (RFC 3501 §2.3.2): the
    /// outcome names the first UID still recent, and later sessions see none of them.
    ClaimRecent { account_id: u64, mailbox_id: u64 },
    /// Files one stored blob into every target mailbox, assigning UIDs and MODSEQs.
    Deliver {
        blob: BlobId,
        /// The proposer's last applied log index before it began storing the blob. A blob
        /// deleted by garbage collection at or after that index may have taken this copy
        /// with it, so the delivery is refused and must store the body again.
        stored_after_index: u64,
        size: u64,
        internal_date_ms: u64,
        flags: Vec<String>,
        /// The message's parsed summary (encoded by core; opaque here), kept once per blob
        /// so IMAP FETCH ENVELOPE/BODYSTRUCTURE and SORT never re-read the body.
        summary: Option<Vec<u8>>,
        /// Links to earlier messages: the message joins the thread of the first one the
        /// receiving account has, else starts a new thread.
        threading: Option<Threading>,
        targets: Vec<DeliveryTarget>,
        /// Recipients in other domains: the message also joins the outbound queue (one
        /// entry holding one blob reference), atomically with the local copies.
        outbound: Option<OutboundEnvelope>,
    },
    /// Changes flags of messages in one mailbox (RFC 9051 §6.4.6, RFC 7162 §3.1.3).
    SetFlags {
        account_id: u64,
        mailbox_id: u64,
        uids: Vec<u32>,
        action: FlagAction,
        flags: Vec<String>,
        /// CONDSTORE `UNCHANGEDSINCE`: messages with a higher modseq are left alone.
        unchanged_since: Option<u64>,
    },
    /// Removes messages from one mailbox.
    Expunge { account_id: u64, mailbox_id: u64, uids: Vec<u32> },
    /// Marks an unreferenced blob as being deleted by garbage collection. Refused when the
    /// blob has a reference or its grace period has not passed. A blob with no record at
    /// all (stored, never delivered) may be claimed; the collector checks its age.
    ClaimBlobForDeletion { blob: BlobId, grace_ms: u64 },
    /// Records that a claimed blob's object was deleted, leaving a tombstone with the log
    /// index so deliveries of copies stored before it are refused.
    ForgetBlob { blob: BlobId },
    /// Takes (or renews) the exclusive lease on a resource such as an account's POP3
    /// maildrop (RFC 1939 §8). Refused while another holder's lease is unexpired; a holder
    /// that dies loses it when `until_ms` passes.
    AcquireLease { resource: String, holder: String, until_ms: u64 },
    /// Gives a lease up (only its holder can).
    ReleaseLease { resource: String, holder: String },
    /// Claims outbound queue entries for one delivery worker until `until_ms`. Only entries
    /// that are due (next attempt reached, no unexpired lease) at the command's time are
    /// claimed; the outcome lists them, so two workers never hold the same entry. The
    /// current holder may claim again (renewing the lease, or taking back its entries
    /// after a restart).
    ClaimOutbound { ids: Vec<u64>, holder: String, until_ms: u64 },
    /// Records one delivery attempt of a claimed entry: per-recipient results, the next
    /// attempt time, and whether the sender has now been told of the delay. The lease is
    /// released; an entry whose recipients are all final is removed (dropping its blob
    /// reference). Refused when `holder` no longer holds the entry's lease.
    RecordAttempt { id: u64, holder: String, results: Vec<AttemptResult>, next_attempt_ms: u64, delay_notified: bool },
    /// Adds a DKIM key to a local domain. A domain's first key is active at once; later
    /// ones only when `key.active` says so (after their DNS record is published), and an
    /// active key deactivates the others.
    AddDkimKey { domain: String, key: DkimKey },
    /// Makes one of a domain's DKIM keys the one that signs (selector rotation).
    ActivateDkimKey { domain: String, selector: String },
    /// Removes a DKIM key.
    RemoveDkimKey { domain: String, selector: String },
    /// Makes queue entries due now (an operator's "retry" or "flush"). Ids no longer
    /// queued are skipped; refused only when none of them is.
    RetryOutbound { ids: Vec<u64> },
    /// Removes a queue entry without delivering it further (an operator's "remove").
    RemoveOutbound { id: u64 },
    /// Stores the cluster CA unless one exists (the first one stays; the proposer reads
    /// back which).
    SetClusterCa { ca: ClusterCa },
    /// Adds a one-time join token by the SHA-256 of its secret; expired tokens go.
    AddJoinToken { hash: [u8; 32], token: JoinToken },
    /// Spends a join token: gives the joining node at `addr` a node id that is neither in
    /// `taken` (the current membership) nor given before. Refused for an unknown, spent or
    /// expired token.
    EnrolNode { hash: [u8; 32], addr: String, taken: Vec<u64> },
    /// Makes an admin API token (by its SHA-256) valid on every node; `node_id` names the
    /// node whose token file holds it.
    AddAdminToken { hash: [u8; 32], node_id: u64 },
    /// Revokes a node's cluster certificate and its cluster-wide admin token: from now on
    /// every node refuses its requests (Raft RPCs, proposals, asking to be added back).
    /// Proposed once the node is out of the membership; the node must wipe its data and
    /// join with a new token. Its id is never given out again.
    RevokeNode { node_id: u64 },
    /// Sets (`Some`) or lifts (`None`) a login block; `kind` is `address` (a client address,
    /// IPv6 per /64) or `account`. Lifting an absent block is `NotFound`.
    SetBlock { kind: String, key: String, block: Option<BlockRecord> },
    /// Records what a greylisting check learnt about a triplet (a hash of client network,
    /// sender and recipient): first seen, or passed. Applied only if the triplet is still
    /// as the proposer read it (`previous`), so a node reading stale state, or two nodes
    /// deciding at once, cannot undo a pass.
    RecordGreylist { triplet: [u8; 16], entry: GreylistEntry, previous: Option<GreylistEntry> },
    /// Removes greylisting triplets idle since before `greylist_before_ms` (at most `limit`
    /// of them) and blocks that have lapsed.
    PruneSecurity { greylist_before_ms: u64, limit: u32 },
    /// Holds a stored message in the quarantine of each of `account_ids` instead of
    /// delivering it (a blob reference each; refused like [`Command::Deliver`] when the copy
    /// may have been garbage-collected). `summary` is kept for a later release.
    Quarantine {
        blob: BlobId,
        stored_after_index: u64,
        size: u64,
        summary: Option<Vec<u8>>,
        threading: Option<Threading>,
        account_ids: Vec<u64>,
        info: QuarantineInfo,
    },
    /// Delivers a quarantined message to its account's INBOX and drops it from the
    /// quarantine.
    ReleaseQuarantined { account_id: u64, id: u64 },
    /// Drops quarantined messages of an account without delivering them.
    DropQuarantined { account_id: u64, ids: Vec<u64> },
    /// Marks quarantined messages as listed in their account's digest.
    MarkQuarantineNotified { account_id: u64, ids: Vec<u64> },
    /// Drops quarantined messages that arrived before `before_ms` (retention), at most
    /// `limit`.
    PurgeQuarantine { before_ms: u64, limit: u32 },
    /// Adds (`allowed`) or removes a sender an account always accepts: when the sender is
    /// authenticated (SPF or DMARC pass), its mail skips the score thresholds (not the
    /// antivirus, blocked attachments or DMARC).
    SetAllowedSender { account_id: u64, sender: String, allowed: bool },
    /// Learns a message's tokens (64-bit hashes) as spam or ham for a domain's classifier.
    /// Each (account, blob) is learnt once: learnt again with the same label it changes
    /// nothing, with the other label the earlier lesson is undone first (a message moved
    /// back out of Junk), so moving a message to and fro cannot weigh on the classifier.
    TrainBayes { domain: String, spam: bool, tokens: Vec<u64>, account_id: u64, blob: BlobId },
    /// [`Command::EnrolNode`] for the joining node whose public key has SHA-256 `key`, and
    /// idempotent: that node asking again with the spent token (its answer was lost) gets
    /// the same node id until the token would have expired, unless that node was revoked.
    EnrolNodeKey { hash: [u8; 32], addr: String, taken: Vec<u64>, key: [u8; 32] },
    /// Claims the mailbox's unclaimed `\Recent` messages below UID `up_to` (those the
    /// claiming session knows of) for one session: the outcome's `first_recent_uid` is the
    /// first unclaimed UID before the claim, so the session won exactly the UIDs from there
    /// up to `up_to` (RFC 3501 §2.3.2: one session is told a message is recent). Messages
    /// that arrived meanwhile stay unclaimed for the session told of them first.
    ClaimRecentUpTo { account_id: u64, mailbox_id: u64, up_to: u32 },
}

impl Command {
    /// The command version that introduced this kind (as encoded and applied today): a node
    /// must know at least this version to apply it. A new kind, or a kind whose encoding or
    /// apply rules change, takes `COMMAND_VERSION + 1` here, and `COMMAND_VERSION` with it.
    pub fn required_version(&self) -> u16 {
        match self {
            // Version 2: the inbound protection state.
            Command::SetBlock { .. }
            | Command::RecordGreylist { .. }
            | Command::PruneSecurity { .. }
            | Command::Quarantine { .. }
            | Command::ReleaseQuarantined { .. }
            | Command::DropQuarantined { .. }
            | Command::MarkQuarantineNotified { .. }
            | Command::PurgeQuarantine { .. }
            | Command::SetAllowedSender { .. }
            | Command::TrainBayes { .. } => 2,
            // Version 3: idempotent enrolment.
            Command::EnrolNodeKey { .. } => 3,
            // Version 4: exact \Recent claims.
            Command::ClaimRecentUpTo { .. } => 4,
            _ => 1,
        }
    }
}

/// What a successfully applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command changed state and has nothing else to report.
    Done,
    /// An account was created.
    AccountCreated { account_id: u64, inbox_id: u64 },
    /// A mailbox was created.
    MailboxCreated { mailbox_id: u64 },
    /// A message was delivered; one entry per target, in order, and the id of its outbound
    /// queue entry when it had remote recipients.
    Delivered { results: Vec<DeliveryResult>, queue_id: Option<u64> },
    /// These outbound queue entries are now leased to the claimer.
    OutboundClaimed { ids: Vec<u64> },
    /// Flags changed; the UIDs whose UNCHANGEDSINCE test failed are listed.
    FlagsSet { modseq: u64, modified: Vec<u32> },
    /// Messages were expunged; the UIDs that existed and were removed.
    Expunged { uids: Vec<u32> },
    /// Messages were copied (RFC 4315 COPYUID): source UIDs and the new UIDs, pairwise.
    Copied { uid_validity: u32, source_uids: Vec<u32>, new_uids: Vec<u32> },
    /// `\Recent` was claimed: messages from this UID up are recent for the claimer.
    RecentClaimed { first_recent_uid: u32 },
    /// A joining node was admitted with this id.
    NodeEnrolled { node_id: u64, learner: bool },
    /// [`Command::PruneSecurity`] removed this many entries; `more` when it stopped at its
    /// limit.
    Pruned { removed: u64, more: bool },
    /// A message was quarantined with these ids (one per account that exists).
    Quarantined { ids: Vec<(u64, u64)> },
}

/// The result of delivering to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryResult {
    /// Stored with this UID and MODSEQ.
    Stored { mailbox_id: u64, uid: u32, modseq: u64 },
    /// The account or mailbox no longer exists.
    NoSuchMailbox,
    /// The account is over quota.
    OverQuota,
    /// The account does not accept mail in its current state.
    NotReceiving,
    /// Not stored here: the recipient is an alias of addresses in other domains, and its
    /// copy left through the outbound queue. Reported by core for such recipients; apply
    /// never produces it.
    Forwarded,
}

/// Why a command was refused. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// A named thing does not exist.
    #[error("{what} {name} does not exist")]
    NotFound { what: String, name: String },
    /// A named thing exists already.
    #[error("{what} {name} already exists")]
    AlreadyExists { what: String, name: String },
    /// The command conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The command is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The account's quota does not allow the change.
    #[error("account {account} is over its storage quota")]
    OverQuota { account: String },
    /// A delivery's blob copy may have been deleted by garbage collection while it was
    /// stored; the proposer must store the body again.
    #[error("blob {blob} was garbage-collected while this copy was stored; store it again")]
    BlobCollected { blob: String },
}

impl CommandError {
    pub(crate) fn not_found(what: &str, name: impl ToString) -> Self {
        CommandError::NotFound { what: what.to_owned(), name: name.to_string() }
    }
    pub(crate) fn exists(what: &str, name: impl ToString) -> Self {
        CommandError::AlreadyExists { what: what.to_owned(), name: name.to_string() }
    }
}

/// The answer to one applied command.
pub type CommandResult = std::result::Result<Outcome, CommandError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let envelope = CommandEnvelope::new(Command::CreateDomain { name: "example.com".into() }, 42);
        assert_eq!(CommandEnvelope::decode(&envelope.encode()).unwrap(), envelope);
    }

    #[test]
    fn the_header_names_the_version_a_command_needs_and_older_headers_still_decode() {
        let domain = CommandEnvelope::new(Command::CreateDomain { name: "example.com".into() }, 42);
        let block =
            CommandEnvelope::new(Command::SetBlock { kind: "ip".into(), key: "192.0.2.1".into(), block: None }, 42);
        assert_eq!(CommandEnvelope::required_version(&domain.encode()), 1);
        assert_eq!(CommandEnvelope::required_version(&block.encode()), 2);
        // Logs written before the header named the required version carry the writer's (2).
        let mut written_by_version_2 = domain.encode();
        written_by_version_2[0..2].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(CommandEnvelope::decode(&written_by_version_2).unwrap(), domain);
        assert!(COMMAND_VERSION >= block.command.required_version());
    }

    #[test]
    fn newer_command_version_is_refused_with_upgrade_hint() {
        let mut bytes = CommandEnvelope::new(Command::RemoveDomain { name: "x.test".into() }, 1).encode();
        bytes[0..2].copy_from_slice(&(COMMAND_VERSION + 1).to_be_bytes());
        let error = CommandEnvelope::decode(&bytes).unwrap_err();
        assert!(error.to_string().contains("install a newer wmail"), "{error}");
    }
}
