//! The records stored in the replicated tables. Every value is encoded as one format byte
//! followed by postcard, so a later release can change a record and still read old ones.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::blob::BlobId;
use crate::error::{Error, Result};

/// Encoding format of every value written by this release.
const VALUE_FORMAT_V1: u8 = 1;

/// Encodes a record value: the format byte, then postcard.
pub(crate) fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_FORMAT_V1];
    // Serialising our own plain structs into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).expect("postcard encodes plain records"));
    out
}

/// Decodes a record value written by [`encode_value`].
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&VALUE_FORMAT_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|e| Error::corrupt("undecodable record").with_source(e))
        }
        Some((format, _)) => {
            Err(Error::corrupt(format!("record format {format} is newer than this binary understands; upgrade wmail")))
        }
        None => Err(Error::corrupt("empty record")),
    }
}

/// A local mail domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Lowercase ASCII (IDNA) domain name.
    pub name: String,
    /// When the domain was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Set for a domain alias: `local@this` means `local@alias_of`. An alias domain has
    /// no addresses of its own.
    pub alias_of: Option<String>,
    /// Where mail for unknown local parts goes (catch-all); `None` rejects it.
    pub catch_all: Option<String>,
    /// Services no account of this domain may use.
    pub disabled_services: Vec<Service>,
}

/// The cluster's certificate authority, created by the first `wmail cluster token`. Every
/// member can sign a joining node's certificate with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    /// The CA's common name (its certificates' issuer name).
    pub name: String,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A one-time join token (stored by the SHA-256 of its secret, never the secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Whether the node it admits stays a learner (non-voting replica).
    pub learner: bool,
    /// When it stops being accepted (ms since the epoch).
    pub expires_ms: u64,
}

/// A join token once spent: the node it admitted, and the key it admitted, so the same
/// joining node asking again (its answer was lost) gets the same node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpentJoinToken {
    /// The node id it gave.
    pub node_id: u64,
    /// SHA-256 of the joining node's public key.
    pub key: [u8; 32],
    /// Whether that node was admitted as a learner.
    pub learner: bool,
    /// When the token would have expired: asking again is possible until then.
    pub expires_ms: u64,
}

/// A node admitted into the cluster with a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledNode {
    /// The address other nodes reach it at (QUIC).
    pub addr: String,
    /// Whether it was admitted as a learner.
    pub learner: bool,
    /// When it enrolled (ms since the epoch).
    pub enrolled_ms: u64,
}

/// A DKIM signing key of a domain (RFC 6376; Ed25519 per RFC 8463).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimKey {
    /// The selector: the key's record is `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The signing algorithm.
    pub algorithm: DkimAlgorithm,
    /// The private key, PKCS#8 DER.
    pub private_key: Vec<u8>,
    /// The public key as published in `p=` (SubjectPublicKeyInfo DER for RSA, the raw
    /// 32 bytes for Ed25519).
    pub public_key: Vec<u8>,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// Whether outgoing mail is signed with it (one key per domain at a time).
    pub active: bool,
}

/// A DKIM key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    /// RSA-2048 with SHA-256 (`k=rsa`).
    Rsa,
    /// Ed25519 with SHA-256 (`k=ed25519`).
    Ed25519,
}

/// Lifecycle state of an account (the seeds' five states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Receives mail and may log in.
    Active,
    /// Neither receives mail nor logs in.
    Disabled,
    /// Created but waiting for an administrator's approval.
    Pending,
    /// Receives mail but cannot log in.
    Dormant,
    /// Temporarily locked out (for example after repeated login failures).
    Suspended,
}

impl AccountState {
    /// Returns whether mail addressed to an account in this state is accepted.
    pub fn receives_mail(self) -> bool {
        matches!(self, AccountState::Active | AccountState::Dormant | AccountState::Suspended)
    }

    /// Returns whether an account in this state may authenticate.
    pub fn may_log_in(self) -> bool {
        matches!(self, AccountState::Active)
    }
}

/// A user account: one mailbox owner with one primary address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Stable numeric id, assigned at creation, never reused.
    pub id: u64,
    /// Primary address, lowercase.
    pub address: String,
    /// Display name ("Full Name").
    pub display_name: String,
    /// Storage quota in bytes; `None` means unlimited.
    pub quota_bytes: Option<u64>,
    /// Lifecycle state.
    pub state: AccountState,
    /// Bytes of all messages in all mailboxes.
    pub used_bytes: u64,
    /// Number of messages in all mailboxes.
    pub message_count: u64,
    /// When the account was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Services this account may not use (the seeds' per-user service permissions).
    pub disabled_services: Vec<Service>,
    /// Extra sender addresses granted by an administrator: `someone@domain`, or
    /// `@domain` for every address of a domain.
    pub send_as: Vec<String>,
}

/// A service an account or domain can be denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Sending through SMTP submission (AUTH).
    Smtp,
    /// POP3.
    Pop3,
    /// IMAP.
    Imap,
    /// Webmail.
    Web,
}

/// The secret material of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Argon2id password hash in PHC string format.
    pub password_hash: String,
}

/// What an address resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressTarget {
    /// The primary address of an account.
    Account(u64),
    /// An alias forwarding to one or more addresses (local or remote).
    Alias(Vec<String>),
}

/// A mailbox (IMAP folder) of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Id unique within the cluster, never reused.
    pub id: u64,
    /// Owning account.
    pub account_id: u64,
    /// Full hierarchical name with `/` as separator (UTF-8).
    pub name: String,
    /// RFC 9051 §2.3.1.1: changes whenever UIDs may be reused.
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: u32,
    /// RFC 7162 §3.1.1: the highest mod-sequence of any message in the mailbox.
    pub highest_modseq: u64,
    /// RFC 6154 special use (`\Sent`, `\Trash`, ...), if any.
    pub special_use: Option<String>,
    /// Number of messages currently in the mailbox.
    pub message_count: u64,
    /// Bytes of the messages currently in the mailbox.
    pub size_bytes: u64,
    /// RFC 3501 §2.3.2 `\Recent`: messages with this UID or above have not been seen by a
    /// session yet; the next session that claims them ([`crate::Command::ClaimRecent`])
    /// reports them as recent and moves this up.
    pub first_recent_uid: u32,
    /// Messages without `\Seen` (STATUS UNSEEN without reading every message).
    pub unseen_count: u64,
    /// Messages with `\Deleted` (STATUS DELETED).
    pub deleted_count: u64,
}

/// The index entry of one message in one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The message's UID in its mailbox.
    pub uid: u32,
    /// The content address of the raw RFC 5322 bytes.
    pub blob: BlobId,
    /// Size of the raw message in octets (RFC822.SIZE).
    pub size: u64,
    /// INTERNALDATE, in milliseconds since the Unix epoch.
    pub internal_date_ms: u64,
    /// System flags (`\Seen`, ...) and keywords, sorted and deduplicated.
    pub flags: Vec<String>,
    /// RFC 7162 mod-sequence of the last change to this message.
    pub modseq: u64,
    /// The conversation it belongs to in its account (RFC 8474 THREADID); 0 when the
    /// delivery carried no threading data.
    pub thread_id: u64,
}

/// The reference count of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// How many message records point at the blob.
    pub count: u64,
    /// When the count last dropped to zero (ms since the epoch); garbage collection waits
    /// for a grace period after it.
    pub zero_since_ms: Option<u64>,
    /// Set once garbage collection has claimed the blob for deletion; new references are
    /// refused until the blob is forgotten.
    pub deleting: bool,
    /// Log index at which garbage collection finished deleting the blob's object; a
    /// delivery whose copy was stored before this index is refused.
    pub deleted_at_index: Option<u64>,
}

impl BlobRef {
    /// The record of a blob nothing has referenced yet.
    pub const UNREFERENCED: BlobRef =
        BlobRef { count: 0, zero_since_ms: None, deleting: false, deleted_at_index: None };
}

/// A block of logins from a client address or for an account, on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// When it started (ms since the epoch).
    pub created_ms: u64,
    /// When it lapses (ms since the epoch).
    pub until_ms: u64,
    /// Why (for the admin listing).
    pub reason: String,
}

/// What is known of a greylisting triplet (client network, sender, recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GreylistEntry {
    /// When it was first deferred (ms since the epoch).
    pub first_seen_ms: u64,
    /// When a retry after the delay was accepted, if one was.
    pub passed_ms: Option<u64>,
    /// The latest accepted message of the triplet (equals `first_seen_ms` until it passes).
    pub last_seen_ms: u64,
}

impl GreylistEntry {
    /// The last time the triplet was seen, for expiry.
    pub fn last_activity_ms(&self) -> u64 {
        self.first_seen_ms.max(self.last_seen_ms)
    }
}

/// A message held in an account's quarantine instead of being delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Its id (unique in the cluster).
    pub id: u64,
    /// The account it was meant for.
    pub account_id: u64,
    /// The stored message.
    pub blob: crate::BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// When it arrived (ms since the epoch).
    pub received_ms: u64,
    /// The envelope sender.
    pub sender: String,
    /// The `From:` address.
    pub from: Option<String>,
    /// The subject.
    pub subject: Option<String>,
    /// Why it was held.
    pub reason: String,
    /// Whether the account's quarantine digest has listed it.
    pub notified: bool,
    /// Its threading links, for the delivery on release.
    pub threading: Option<crate::Threading>,
}

/// What a quarantined message needs besides its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineInfo {
    /// The envelope sender.
    pub sender: String,
    /// The `From:` address.
    pub from: Option<String>,
    /// The subject.
    pub subject: Option<String>,
    /// Why it is held.
    pub reason: String,
}

/// An exclusive, expiring claim on a resource (a POP3 maildrop, for example).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it (node and session).
    pub holder: String,
    /// When it lapses unless renewed (ms since the epoch, proposer's clock).
    pub until_ms: u64,
}

/// One entry of an account's change log (for IMAP CONDSTORE/QRESYNC, IDLE and sync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A message was added to a mailbox.
    Added { mailbox_id: u64, uid: u32, modseq: u64 },
    /// A message's flags changed.
    FlagsChanged { mailbox_id: u64, uid: u32, modseq: u64 },
    /// A message was removed from a mailbox.
    Expunged { mailbox_id: u64, uid: u32, modseq: u64 },
    /// A mailbox was created.
    MailboxCreated { mailbox_id: u64 },
    /// A mailbox was renamed.
    MailboxRenamed { mailbox_id: u64 },
    /// A mailbox was deleted with its messages.
    MailboxDeleted { mailbox_id: u64 },
}
