//! The RocksDB keyspace of the replicated state: one column family per table and the
//! typed key encodings. Integers are big-endian so RocksDB's byte order is numeric order.

/// Local domains: `domain` -> [`crate::Domain`].
pub const DOMAINS: &str = "domains";
/// Every deliverable address: `domain \0 local` -> [`crate::AddressTarget`].
pub const ADDRESSES: &str = "addresses";
/// Accounts: `account_id` -> [`crate::Account`].
pub const PRINCIPALS: &str = "principals";
/// Account secrets: `account_id` -> [`crate::Credentials`].
pub const CREDENTIALS: &str = "credentials";
/// Mailboxes: `account_id, mailbox_id` -> [`crate::Mailbox`].
pub const MAILBOXES: &str = "mailboxes";
/// Mailbox names: `account_id, name` -> `mailbox_id`.
pub const MAILBOX_NAMES: &str = "mailbox_names";
/// Message index: `account_id, mailbox_id, uid` -> [`crate::MessageRecord`].
pub const MESSAGES: &str = "messages";
/// Blob reference counts: `sha256` -> [`crate::BlobRef`].
pub const BLOB_REFS: &str = "blob_refs";
/// Per-account change log: `account_id, change_id` -> [`crate::Change`].
pub const CHANGES: &str = "changes";
/// Counters and the consensus layer's applied-state record.
pub const META: &str = "meta";
/// Exclusive leases: `resource` -> [`crate::Lease`].
pub const LEASES: &str = "leases";
/// IMAP subscriptions (RFC 9051 §6.3.7): `account_id, name` -> empty. A name may be
/// subscribed whether or not the mailbox exists.
pub const SUBSCRIPTIONS: &str = "subscriptions";
/// Parsed message summaries: `sha256` -> opaque bytes written by core, one per blob,
/// removed when the blob is forgotten.
pub const SUMMARIES: &str = "summaries";
/// Expunged messages by mailbox and MODSEQ (RFC 7162 QRESYNC `VANISHED (EARLIER)`):
/// `account_id, mailbox_id, modseq, uid` -> empty.
pub const EXPUNGED: &str = "expunged";
/// Thread of each Message-ID an account received: `account_id, sha256(message id)[..16]`
/// -> thread id (u64).
pub const THREADS: &str = "threads";

/// The outbound queue: `queue_id` -> [`crate::QueueEntry`].
pub const QUEUE: &str = "queue";
/// The outbound queue's due index: `due_ms, queue_id` -> empty (see
/// [`crate::QueueEntry::due_ms`]), so due entries are found without scanning the queue.
pub const QUEUE_DUE: &str = "queue_due";

/// DKIM keys: `domain \0 selector` -> [`crate::DkimKey`].
pub const DKIM_KEYS: &str = "dkim_keys";

/// Where a domain's unknown recipients are forwarded: `domain` -> `host:port` (a server
/// that still holds some of the domain's mailboxes, say during a migration).
pub const UNKNOWN_FORWARDS: &str = "unknown_forwards";

/// Cluster identity: [`CLUSTER_CA`] -> [`crate::ClusterCa`], `token/<sha256>` ->
/// [`crate::JoinToken`], `node/<id>` -> [`crate::EnrolledNode`], `admin/<sha256>` -> the
/// node id whose admin token it is (accepted by every node's admin API), `revoked/<id>` ->
/// when that node was revoked (ms since the epoch).
pub const CLUSTER: &str = "cluster";
/// Key of the cluster CA in [`CLUSTER`].
pub const CLUSTER_CA: &[u8] = b"ca";

/// Key of a join token in [`CLUSTER`], by the SHA-256 of its secret.
pub fn join_token_key(hash: &[u8; 32]) -> Vec<u8> {
    [b"token/".as_slice(), hash].concat()
}

/// Key of a spent join token in [`CLUSTER`] (what it was spent on, until it expires), by
/// the SHA-256 of its secret.
pub fn spent_join_token_key(hash: &[u8; 32]) -> Vec<u8> {
    [SPENT_JOIN_TOKENS.as_slice(), hash].concat()
}

/// Prefix of spent join tokens in [`CLUSTER`].
pub const SPENT_JOIN_TOKENS: &[u8; 6] = b"spent/";

/// Key of a cluster-wide admin API token in [`CLUSTER`], by its SHA-256.
pub fn admin_token_key(hash: &[u8; 32]) -> Vec<u8> {
    [b"admin/".as_slice(), hash].concat()
}

/// Key of a revoked node in [`CLUSTER`].
pub fn revoked_node_key(node_id: u64) -> Vec<u8> {
    [REVOKED_NODES.as_slice(), &node_id.to_be_bytes()].concat()
}

/// Prefix of revoked nodes in [`CLUSTER`].
pub const REVOKED_NODES: &[u8; 8] = b"revoked/";

/// Key of an enrolled node in [`CLUSTER`].
pub fn enrolled_node_key(node_id: u64) -> Vec<u8> {
    [b"node/".as_slice(), &node_id.to_be_bytes()].concat()
}

/// Inbound protection state shared by every node: login blocks (`block/<kind>/<key>` ->
/// [`crate::BlockRecord`]), greylisting triplets (`grey/<16-byte hash>` ->
/// [`crate::GreylistEntry`]) and their expiry index (`greytime/<last activity ms><hash>`
/// -> empty).
pub const SECURITY: &str = "security";

/// Key of a login block in [`SECURITY`] (`kind` is `address` or `account`).
pub fn block_key(kind: &str, key: &str) -> Vec<u8> {
    format!("block/{kind}/{key}").into_bytes()
}

/// Prefix of login blocks in [`SECURITY`].
pub const BLOCKS: &[u8] = b"block/";

/// Key of a greylisting triplet in [`SECURITY`].
pub fn greylist_key(triplet: &[u8; 16]) -> Vec<u8> {
    [GREYLIST.as_slice(), triplet].concat()
}

/// Prefix of greylisting triplets in [`SECURITY`].
pub const GREYLIST: &[u8; 5] = b"grey/";

/// Key of a triplet's entry in the expiry index of [`SECURITY`].
pub fn greylist_time_key(last_activity_ms: u64, triplet: &[u8; 16]) -> Vec<u8> {
    [GREYLIST_TIME.as_slice(), &last_activity_ms.to_be_bytes(), triplet].concat()
}

/// Prefix of the greylisting expiry index in [`SECURITY`].
pub const GREYLIST_TIME: &[u8; 9] = b"greytime/";

/// Key of a quarantined message in [`SECURITY`].
pub fn quarantine_key(account_id: u64, id: u64) -> Vec<u8> {
    [QUARANTINE.as_slice(), &account_id.to_be_bytes(), &id.to_be_bytes()].concat()
}

/// Prefix of quarantined messages in [`SECURITY`] (`quarantine/<account><id>` ->
/// [`crate::QuarantineEntry`]).
pub const QUARANTINE: &[u8; 11] = b"quarantine/";

/// Key of a quarantined message in the retention index of [`SECURITY`].
pub fn quarantine_time_key(received_ms: u64, account_id: u64, id: u64) -> Vec<u8> {
    [QUARANTINE_TIME.as_slice(), &received_ms.to_be_bytes(), &account_id.to_be_bytes(), &id.to_be_bytes()].concat()
}

/// Prefix of the quarantine's retention index in [`SECURITY`].
pub const QUARANTINE_TIME: &[u8; 11] = b"quarantime/";

/// Key of a sender an account always accepts, in [`SECURITY`].
pub fn allowed_sender_key(account_id: u64, sender: &str) -> Vec<u8> {
    [ALLOWED_SENDERS.as_slice(), &account_id.to_be_bytes(), sender.as_bytes()].concat()
}

/// Prefix of accounts' allowed senders in [`SECURITY`] (`allow/<account><sender>` -> empty).
pub const ALLOWED_SENDERS: &[u8; 6] = b"allow/";

/// Key of a token's (spam, ham) counts in a domain's classifier, in [`SECURITY`]
/// (`bayes/<domain>\0<token>` -> two big-endian u64). The domain's message totals are
/// under [`bayes_totals_key`].
pub fn bayes_token_key(domain: &str, token: u64) -> Vec<u8> {
    [b"bayes/".as_slice(), domain.as_bytes(), &[0], &token.to_be_bytes()].concat()
}

/// Key of a domain's trained (spam, ham) message totals in [`SECURITY`].
pub fn bayes_totals_key(domain: &str) -> Vec<u8> {
    [b"bayestotal/".as_slice(), domain.as_bytes()].concat()
}

/// Key of the label a message was learnt with, in [`SECURITY`]
/// (`bayestrained/<account><sha256>` -> 1 spam, 0 ham).
pub fn bayes_trained_key(account_id: u64, blob: &[u8]) -> Vec<u8> {
    [BAYES_TRAINED.as_slice(), &account_id.to_be_bytes(), blob].concat()
}

/// Prefix of [`bayes_trained_key`].
pub const BAYES_TRAINED: &[u8; 13] = b"bayestrained/";

/// Key of an account's Bayes lessons today in [`SECURITY`]: (day since the epoch, lessons
/// that day), two big-endian u64.
pub fn bayes_lessons_key(account_id: u64) -> Vec<u8> {
    [BAYES_LESSONS.as_slice(), &account_id.to_be_bytes()].concat()
}

/// Prefix of [`bayes_lessons_key`].
pub const BAYES_LESSONS: &[u8; 13] = b"bayeslessons/";

/// Next quarantine entry id in [`META`].
pub const META_NEXT_QUARANTINE_ID: &[u8] = b"next_quarantine_id";

/// Every column family of the state database, checked at open time.
pub const COLUMN_FAMILIES: [&str; 21] = [
    DOMAINS,
    ADDRESSES,
    PRINCIPALS,
    CREDENTIALS,
    MAILBOXES,
    MAILBOX_NAMES,
    MESSAGES,
    BLOB_REFS,
    CHANGES,
    META,
    LEASES,
    SUBSCRIPTIONS,
    SUMMARIES,
    EXPUNGED,
    THREADS,
    QUEUE,
    QUEUE_DUE,
    DKIM_KEYS,
    UNKNOWN_FORWARDS,
    CLUSTER,
    SECURITY,
];

/// Key of a domain's DKIM key in [`DKIM_KEYS`].
pub fn dkim_key(domain: &str, selector: &str) -> Vec<u8> {
    let mut key = domain_prefix(domain);
    key.extend_from_slice(selector.as_bytes());
    key
}

/// Key of an entry in [`QUEUE_DUE`].
pub fn queue_due_key(due_ms: u64, queue_id: u64) -> [u8; 16] {
    mailbox_key(due_ms, queue_id)
}

/// Key of a Message-ID in an account's [`THREADS`].
pub fn thread_key(account_id: u64, message_id: &str) -> [u8; 24] {
    use sha2::{Digest, Sha256};
    let mut key = [0; 24];
    key[..8].copy_from_slice(&account_id.to_be_bytes());
    key[8..].copy_from_slice(&Sha256::digest(message_id.as_bytes())[..16]);
    key
}

/// Key of an expunged message in [`EXPUNGED`].
pub fn expunged_key(account_id: u64, mailbox_id: u64, modseq: u64, uid: u32) -> [u8; 28] {
    let mut key = [0; 28];
    key[..16].copy_from_slice(&mailbox_key(account_id, mailbox_id));
    key[16..24].copy_from_slice(&modseq.to_be_bytes());
    key[24..].copy_from_slice(&uid.to_be_bytes());
    key
}

/// Meta key of the consensus layer's opaque applied-state record.
pub const META_RAFT: &[u8] = b"raft";
/// Meta key of the next account id.
pub const META_NEXT_ACCOUNT_ID: &[u8] = b"next_account_id";
/// Meta key of the next mailbox id.
pub const META_NEXT_MAILBOX_ID: &[u8] = b"next_mailbox_id";
/// Meta key of the next change id.
pub const META_NEXT_CHANGE_ID: &[u8] = b"next_change_id";
/// Meta key of the next outbound queue id.
pub const META_NEXT_QUEUE_ID: &[u8] = b"next_queue_id";
/// Meta key of the number of outbound queue entries.
pub const META_QUEUE_LENGTH: &[u8] = b"queue_length";
/// Meta key of the next node id handed to a joining node.
pub const META_NEXT_NODE_ID: &[u8] = b"next_node_id";
/// Meta key of the next thread id.
pub const META_NEXT_THREAD_ID: &[u8] = b"next_thread_id";

/// Key of an account, principal or credential record.
pub fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Key of a mailbox, and the prefix of its messages.
pub fn mailbox_key(account_id: u64, mailbox_id: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&account_id.to_be_bytes());
    key[8..].copy_from_slice(&mailbox_id.to_be_bytes());
    key
}

/// Key of one message in the index.
pub fn message_key(account_id: u64, mailbox_id: u64, uid: u32) -> [u8; 20] {
    let mut key = [0; 20];
    key[..16].copy_from_slice(&mailbox_key(account_id, mailbox_id));
    key[16..].copy_from_slice(&uid.to_be_bytes());
    key
}

/// Decodes the UID from a [`message_key`].
pub fn uid_of_message_key(key: &[u8]) -> Option<u32> {
    key.get(16..20).map(|bytes| u32::from_be_bytes(bytes.try_into().expect("4 bytes")))
}

/// Key of a mailbox name within an account.
pub fn mailbox_name_key(account_id: u64, name: &str) -> Vec<u8> {
    let mut key = account_id.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Key of a change-log entry.
pub fn change_key(account_id: u64, change_id: u64) -> [u8; 16] {
    mailbox_key(account_id, change_id)
}

/// Key of an address: the domain first, so one domain's addresses are one prefix.
/// Expects a lowercase `local@domain`; returns `None` when there is no `@`.
pub fn address_key(address: &str) -> Option<Vec<u8>> {
    let (local, domain) = address.rsplit_once('@')?;
    let mut key = domain_prefix(domain);
    key.extend_from_slice(local.as_bytes());
    Some(key)
}

/// The prefix of every address key of `domain`.
pub fn domain_prefix(domain: &str) -> Vec<u8> {
    let mut key = domain.as_bytes().to_vec();
    key.push(0);
    key
}

/// Turns an [`address_key`] back into `local@domain`.
pub fn address_of_key(key: &[u8]) -> Option<String> {
    let split = key.iter().position(|&byte| byte == 0)?;
    let domain = std::str::from_utf8(&key[..split]).ok()?;
    let local = std::str::from_utf8(&key[split + 1..]).ok()?;
    Some(format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_account_mailbox_uid() {
        let mut keys = vec![message_key(2, 1, 1), message_key(1, 2, 1), message_key(1, 1, 300), message_key(1, 1, 2)];
        keys.sort();
        assert_eq!(
            keys,
            vec![message_key(1, 1, 2), message_key(1, 1, 300), message_key(1, 2, 1), message_key(2, 1, 1)]
        );
        assert_eq!(uid_of_message_key(&message_key(1, 1, 300)), Some(300));
    }

    #[test]
    fn address_keys_group_by_domain_and_round_trip() {
        let key = address_key("alice@example.com").unwrap();
        assert!(key.starts_with(&domain_prefix("example.com")));
        assert!(!key.starts_with(&domain_prefix("example.co")));
        assert_eq!(address_of_key(&key).as_deref(), Some("alice@example.com"));
        assert_eq!(address_key("no-at-sign"), None);
    }
}
