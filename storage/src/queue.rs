//! Records of the replicated outbound queue: mail for other domains waiting to be sent.
//!
//! An entry is created by [`crate::Command::Deliver`] (with `outbound`), claimed by a node's
//! delivery worker with an expiring lease ([`crate::Command::ClaimOutbound`]), and updated
//! with each attempt's per-recipient results ([`crate::Command::RecordAttempt`]) until every
//! recipient is final, when it is removed. A worker that dies loses its lease when it
//! expires and another node continues: delivery is at-least-once, never zero times.

use serde::{Deserialize, Serialize};

use crate::blob::BlobId;
use crate::records::Lease;

/// Which delivery status notifications a recipient's sender asked for (RFC 3461 §4.1
/// NOTIFY). All `false` is `NOTIFY=NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// Report successful delivery.
    pub success: bool,
    /// Report failure (a bounce).
    pub failure: bool,
    /// Report that delivery is delayed.
    pub delay: bool,
}

impl Default for Notify {
    /// Without a NOTIFY parameter an MTA reports failures and may report delays
    /// (RFC 3461 §4.1).
    fn default() -> Self {
        Notify { success: false, failure: true, delay: true }
    }
}

/// How much of the message a failure report returns (RFC 3461 §4.3 RET).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only its header section.
    Headers,
}

/// The envelope of a message leaving for other domains, as the submitter gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundEnvelope {
    /// MAIL FROM; empty for the null reverse-path (a bounce, which is never bounced).
    pub return_path: String,
    /// RFC 3461 §4.4 ENVID.
    pub envid: Option<String>,
    /// RFC 3461 §4.3 RET.
    pub ret: Option<Ret>,
    /// The remote recipients.
    pub recipients: Vec<OutboundRecipient>,
    /// Whether the message has 8-bit data (set by core when it stores the body): it may
    /// only go to servers that offer 8BITMIME (RFC 6152 §3).
    pub eight_bit: bool,
    /// Whether an authenticated user of this server submitted it, with its From: checked.
    /// Only such mail is DKIM-signed: forwarded mail from elsewhere never is, or anyone
    /// could have our domain's signature put on a forged From:.
    pub authenticated: bool,
}

/// One remote recipient and its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRecipient {
    /// The forward-path.
    pub address: String,
    /// RFC 3461 §4.2 ORCPT (`type;address`), passed on to the next hop.
    pub orcpt: Option<String>,
    /// RFC 3461 §4.1 NOTIFY.
    pub notify: Notify,
    /// `host:port` the recipient must go to instead of its domain's MX hosts (a local
    /// domain's forward server for unknown recipients).
    pub relay: Option<String>,
}

/// Where one recipient of a queue entry stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Not delivered yet; the last temporary failure, if any.
    Pending { last_reply: Option<String> },
    /// Accepted by the remote side.
    Delivered { reply: String },
    /// Refused for good or given up on.
    Failed { reply: String },
}

impl RecipientStatus {
    /// Whether no further attempt is made for the recipient.
    pub fn is_final(&self) -> bool {
        !matches!(self, RecipientStatus::Pending { .. })
    }
}

/// A recipient of a queue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecipient {
    /// The recipient and its DSN parameters.
    pub recipient: OutboundRecipient,
    /// Its delivery status.
    pub status: RecipientStatus,
}

/// One message in the outbound queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue id, increasing with time.
    pub id: u64,
    /// The message body (the entry holds one reference to it).
    pub blob: BlobId,
    /// Body size in bytes.
    pub size: u64,
    /// MAIL FROM (empty: null reverse-path).
    pub return_path: String,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// RFC 3461 RET.
    pub ret: Option<Ret>,
    /// Whether the message has 8-bit data.
    pub eight_bit: bool,
    /// Whether an authenticated local user submitted it (see [`OutboundEnvelope`]).
    pub authenticated: bool,
    /// The recipients, in the order given.
    pub recipients: Vec<QueuedRecipient>,
    /// When the message was queued (ms since the epoch).
    pub created_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since the epoch).
    pub next_attempt_ms: u64,
    /// The worker delivering it now, until its lease lapses.
    pub lease: Option<Lease>,
    /// Whether the sender was already told that delivery is delayed.
    pub delay_notified: bool,
}

impl QueueEntry {
    /// When a worker may next pick the entry up: its next attempt, or the end of the
    /// current lease if that is later. This is the entry's key in the due index.
    pub fn due_ms(&self) -> u64 {
        match &self.lease {
            Some(lease) => lease.until_ms.max(self.next_attempt_ms),
            None => self.next_attempt_ms,
        }
    }

    /// The recipients still to be delivered.
    pub fn pending(&self) -> impl Iterator<Item = (usize, &QueuedRecipient)> {
        self.recipients.iter().enumerate().filter(|(_, r)| !r.status.is_final())
    }
}

/// An attempt's outcome for one recipient of a queue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// Index of the recipient in [`QueueEntry::recipients`].
    pub index: u32,
    /// Its new status.
    pub status: RecipientStatus,
}
