//! Protection state every node shares through the replicated log: login blocks (so an
//! address or account blocked on one node is blocked on all) and greylisting triplets (so a
//! retry through another node behind the load balancer passes).

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use wmail_storage::{BlockRecord, Command, GreylistEntry, Outcome};

use crate::login_guard::StartedBlock;
use crate::{Core, CoreError, ErrorCode, LoginGuard, Result, now_ms};

/// Greylisting settings (RFC 6647 §4: a triplet's first message is deferred; a retry after
/// `delay` and within `retry_window` passes, and the triplet then passes at once for
/// `lifetime` after its last message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreylistPolicy {
    /// How long a new triplet is deferred.
    pub delay: Duration,
    /// How long after the first attempt a retry is still recognised.
    pub retry_window: Duration,
    /// How long a passed triplet stays accepted after its last message.
    pub lifetime: Duration,
}

impl Default for GreylistPolicy {
    /// postgrey's defaults: 5 minutes, 2 days, 35 days.
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(2 * 86_400),
            lifetime: Duration::from_secs(35 * 86_400),
        }
    }
}

/// What greylisting says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreylistDecision {
    /// Accept it.
    Pass,
    /// Defer it (`451 4.7.1`); a retry after this long passes.
    Defer {
        /// Time left until a retry passes.
        retry_in: Duration,
    },
}

/// A login block, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoginBlock {
    /// `address` or `account`.
    pub kind: String,
    /// The client address (IPv6 per /64) or the account.
    pub key: String,
    /// When it started (ms since the epoch).
    pub created_ms: u64,
    /// When it lapses (ms since the epoch).
    pub until_ms: u64,
    /// Why.
    pub reason: String,
}

/// Re-proposing a passed triplet's `last_seen` at most this often keeps the log quiet.
const GREYLIST_TOUCH_EVERY_MS: u64 = 86_400_000;

/// The client's network for greylisting: a /24 (IPv4) or /64 (IPv6), since big senders
/// retry from another address of the same pool.
fn client_network(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        v6 => format!("{}/64", LoginGuard::address_key(v6)),
    }
}

/// The triplet's key: a hash, so the state holds no addresses.
fn triplet(client: IpAddr, sender: &str, recipient: &str) -> [u8; 16] {
    let text = format!("{}\0{}\0{}", client_network(client), sender.to_lowercase(), recipient.to_lowercase());
    crate::sha256(text.as_bytes())[..16].try_into().expect("16 bytes")
}

impl Core {
    /// Greylists a message from `client` for `recipient` (RFC 6647): the first attempt of
    /// a triplet is deferred, a retry after the delay passes, and the triplet is then
    /// remembered. Shared by every node; when the state cannot be written the message
    /// passes (greylisting is a filter, not a lock).
    pub async fn greylist(
        &self,
        client: IpAddr,
        sender: &str,
        recipient: &str,
        policy: &GreylistPolicy,
    ) -> Result<GreylistDecision> {
        let triplet = triplet(client, sender, recipient);
        let now = now_ms();
        let ms = |duration: Duration| duration.as_millis() as u64;
        let entry = self.state.greylist(&triplet)?;
        let (decision, record) = match entry {
            Some(entry)
                if entry.passed_ms.is_some() && now.saturating_sub(entry.last_seen_ms) <= ms(policy.lifetime) =>
            {
                let touch = now.saturating_sub(entry.last_seen_ms) > GREYLIST_TOUCH_EVERY_MS;
                (GreylistDecision::Pass, touch.then_some(GreylistEntry { last_seen_ms: now, ..entry }))
            }
            Some(entry)
                if entry.passed_ms.is_none() && now.saturating_sub(entry.first_seen_ms) <= ms(policy.retry_window) =>
            {
                let waited = now.saturating_sub(entry.first_seen_ms);
                if waited >= ms(policy.delay) {
                    let passed =
                        GreylistEntry { first_seen_ms: entry.first_seen_ms, passed_ms: Some(now), last_seen_ms: now };
                    (GreylistDecision::Pass, Some(passed))
                } else {
                    let retry_in = Duration::from_millis(ms(policy.delay) - waited);
                    (GreylistDecision::Defer { retry_in }, None)
                }
            }
            // New, or forgotten (not retried in time, or idle past its lifetime).
            _ => {
                let first = GreylistEntry { first_seen_ms: now, passed_ms: None, last_seen_ms: now };
                (GreylistDecision::Defer { retry_in: policy.delay }, Some(first))
            }
        };
        if let Some(record) = record
            && let Err(error) = self.execute(Command::RecordGreylist { triplet, entry: record, previous: entry }).await
        {
            tracing::warn!(%error, "cannot record a greylisting triplet; the message is not held back for it");
            return Ok(GreylistDecision::Pass);
        }
        Ok(decision)
    }

    /// Whether a replicated login block of `kind` and `key` is in force.
    pub(crate) fn is_blocked(&self, kind: &str, key: &str) -> Result<bool> {
        Ok(self.state.block(kind, key)?.is_some_and(|block| block.until_ms > now_ms()))
    }

    /// Makes blocks this node's lockout started hold on every node. Once replicated, the
    /// local block is dropped, so lifting the replicated one frees the client everywhere;
    /// if the log cannot take it now, the local block stays in force.
    pub(crate) async fn replicate_blocks(&self, started: Vec<StartedBlock>) {
        let policy = self.login_guard.policy();
        for StartedBlock { kind, key } in started {
            let (limit, what) = match kind {
                "address" => (policy.max_failures_per_address, "from this address"),
                _ => (policy.max_failures_per_account, "for this account"),
            };
            let now = now_ms();
            let block = BlockRecord {
                created_ms: now,
                until_ms: now + policy.block.as_millis() as u64,
                reason: format!("{limit} failed logins {what} within {} minutes", policy.window.as_secs() / 60),
            };
            tracing::warn!(kind, %key, reason = %block.reason, "login block started");
            let command = Command::SetBlock { kind: kind.to_owned(), key: key.clone(), block: Some(block) };
            match self.execute(command).await {
                Ok(_) => self.login_guard.forget_block(kind, &key),
                Err(error) => {
                    tracing::warn!(kind, %key, %error, "cannot replicate a login block; it holds on this node only")
                }
            }
        }
    }

    /// When the block of an SMTP client (a spam-trap hit) lapses, if one is in force.
    pub fn client_block(&self, client: IpAddr) -> Result<Option<u64>> {
        let block = self.state.block("client", &LoginGuard::address_key(client))?;
        Ok(block.map(|block| block.until_ms).filter(|&until| until > now_ms()))
    }

    /// Blocks an SMTP client (IPv6 per /64) on every node for `duration`.
    pub async fn block_client(&self, client: IpAddr, duration: Duration, reason: &str) -> Result<()> {
        let now = now_ms();
        let block =
            BlockRecord { created_ms: now, until_ms: now + duration.as_millis() as u64, reason: reason.to_owned() };
        let command =
            Command::SetBlock { kind: "client".into(), key: LoginGuard::address_key(client), block: Some(block) };
        self.execute(command).await.map(drop)
    }

    /// The login blocks in force, on every node.
    pub fn login_blocks(&self) -> Result<Vec<LoginBlock>> {
        let now = now_ms();
        Ok(self
            .state
            .blocks()?
            .into_iter()
            .filter(|(_, _, block)| block.until_ms > now)
            .map(|(kind, key, block)| LoginBlock {
                kind,
                key,
                created_ms: block.created_ms,
                until_ms: block.until_ms,
                reason: block.reason,
            })
            .collect())
    }

    /// Lifts a block everywhere: `kind` is `address` or `account` (login blocks) or
    /// `client` (an SMTP client blocked for a spam-trap hit).
    pub async fn lift_login_block(&self, kind: &str, key: &str) -> Result<()> {
        let (kind, key) = match kind {
            "address" | "client" => {
                let address: IpAddr = key
                    .parse()
                    .map_err(|_| CoreError::new(ErrorCode::InvalidInput, format!("{key:?} is not an IP address")))?;
                (if kind == "address" { "address" } else { "client" }, LoginGuard::address_key(address))
            }
            "account" => ("account", crate::address::normalize_address(key).unwrap_or_else(|_| key.to_lowercase())),
            other => {
                return Err(CoreError::new(
                    ErrorCode::InvalidInput,
                    format!("block kind {other:?} is unknown; use \"address\", \"account\" or \"client\""),
                ));
            }
        };
        self.login_guard.forget_block(kind, &key);
        self.execute(Command::SetBlock { kind: kind.to_owned(), key, block: None }).await.map(drop)
    }

    /// Removes greylisting triplets idle for longer than `greylist_idle` and lapsed blocks,
    /// in bounded commands; returns how many entries went.
    pub async fn prune_security_state(&self, greylist_idle: Duration) -> Result<u64> {
        let before = now_ms().saturating_sub(greylist_idle.as_millis() as u64);
        let mut total = 0;
        loop {
            let outcome = self.execute(Command::PruneSecurity { greylist_before_ms: before, limit: 10_000 }).await?;
            let Outcome::Pruned { removed, more } = outcome else {
                return Err(CoreError::internal("pruning security state", format!("unexpected outcome {outcome:?}")));
            };
            total += removed;
            if !more {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triplets_group_client_networks_and_ignore_case() {
        let a = triplet("192.0.2.10".parse().unwrap(), "A@x.test", "b@Y.test");
        assert_eq!(a, triplet("192.0.2.200".parse().unwrap(), "a@x.test", "B@y.test"));
        assert_ne!(a, triplet("192.0.3.10".parse().unwrap(), "a@x.test", "b@y.test"));
        assert_ne!(a, triplet("192.0.2.10".parse().unwrap(), "a@x.test", "c@y.test"));
        let v6 = triplet("2001:db8:1:2::1".parse().unwrap(), "a@x.test", "b@y.test");
        assert_eq!(v6, triplet("2001:db8:1:2:ffff::9".parse().unwrap(), "a@x.test", "b@y.test"));
    }
}
