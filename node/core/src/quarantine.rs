//! The quarantine: messages the inbound checks hold instead of delivering, per account and
//! replicated (every node lists and releases them), kept for a retention period; and the
//! senders an account always accepts.

use bytes::Bytes;
use futures::Stream;
use wmail_storage::{Command, Outcome, QuarantineEntry, QuarantineInfo};

use crate::{Core, CoreError, DeliveryResult, ErrorCode, Result, normalize_address, now_ms};

impl Core {
    /// Whether any of `recipients` forwards elsewhere (then a message cannot be held in
    /// quarantine without losing the forwarded copy; file it as junk instead).
    pub fn recipients_forward(&self, recipients: &[String]) -> Result<bool> {
        for recipient in recipients {
            if !self.resolve_with_forwards(recipient)?.forwards.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stores a message once and holds it in the quarantine of every local account the
    /// recipients lead to (see [`Core::recipients_forward`] first). Returns the (account,
    /// id) pairs.
    pub async fn quarantine<S>(&self, recipients: &[String], body: S, info: QuarantineInfo) -> Result<Vec<(u64, u64)>>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        self.disk.check()?;
        let mut account_ids = Vec::new();
        for recipient in recipients {
            for account_id in self.resolve_with_forwards(recipient)?.accounts {
                if !account_ids.contains(&account_id) {
                    account_ids.push(account_id);
                }
            }
        }
        if account_ids.is_empty() {
            return Err(CoreError::new(ErrorCode::NotFound, "no local mailbox for the recipients"));
        }
        let stored_after_index = self.consensus.metrics().last_applied.map_or(0, |id| id.index);
        let (stored, copy, _) = self.store_body(body).await?;
        let (summary, threading) = self.encoded_summary(&stored, copy).await.unzip();
        let command = Command::Quarantine {
            blob: stored.id,
            stored_after_index,
            size: stored.size,
            summary,
            threading,
            account_ids,
            info,
        };
        match self.execute(command).await? {
            // Every account went away meanwhile: nothing holds the message.
            Outcome::Quarantined { ids } if ids.is_empty() => {
                Err(CoreError::new(ErrorCode::Unavailable, "the recipients' accounts changed; try again"))
            }
            Outcome::Quarantined { ids } => Ok(ids),
            other => Err(CoreError::internal("quarantining", format!("unexpected outcome {other:?}"))),
        }
    }

    fn account_id_of(&self, address: &str) -> Result<u64> {
        self.account(address)?
            .map(|account| account.id)
            .ok_or_else(|| CoreError::new(ErrorCode::NotFound, format!("no account {address}")))
    }

    /// An account's quarantined messages, oldest first.
    pub fn quarantined(&self, address: &str) -> Result<Vec<QuarantineEntry>> {
        Ok(self.state.quarantined(self.account_id_of(address)?)?)
    }

    /// Quarantined messages of every account (at most `limit`).
    pub fn all_quarantined(&self, limit: usize) -> Result<Vec<QuarantineEntry>> {
        Ok(self.state.all_quarantined(limit)?)
    }

    /// Delivers a quarantined message to its account's INBOX.
    pub async fn release_quarantined(&self, address: &str, id: u64) -> Result<()> {
        let account_id = self.account_id_of(address)?;
        match self.execute(Command::ReleaseQuarantined { account_id, id }).await? {
            Outcome::Delivered { results, .. } => match results.first() {
                Some(DeliveryResult::Stored { .. }) => Ok(()),
                Some(DeliveryResult::OverQuota) => Err(CoreError::new(
                    ErrorCode::OverQuota,
                    format!("{address} is over its quota; free some space first"),
                )),
                other => {
                    Err(CoreError::new(ErrorCode::Conflict, format!("the message could not be delivered: {other:?}")))
                }
            },
            other => Err(CoreError::internal("releasing", format!("unexpected outcome {other:?}"))),
        }
    }

    /// Drops quarantined messages without delivering them.
    pub async fn drop_quarantined(&self, address: &str, ids: Vec<u64>) -> Result<()> {
        let account_id = self.account_id_of(address)?;
        self.execute(Command::DropQuarantined { account_id, ids }).await.map(drop)
    }

    /// Marks quarantined messages as listed in their account's digest.
    pub async fn mark_quarantine_notified(&self, account_id: u64, ids: Vec<u64>) -> Result<()> {
        self.execute(Command::MarkQuarantineNotified { account_id, ids }).await.map(drop)
    }

    /// Drops quarantined messages older than `retention`, in bounded commands; returns how
    /// many went.
    pub async fn purge_quarantine(&self, retention: std::time::Duration) -> Result<u64> {
        let before_ms = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut total = 0;
        loop {
            match self.execute(Command::PurgeQuarantine { before_ms, limit: 1_000 }).await? {
                Outcome::Pruned { removed, more } => {
                    total += removed;
                    if !more {
                        return Ok(total);
                    }
                }
                other => {
                    return Err(CoreError::internal("purging the quarantine", format!("unexpected outcome {other:?}")));
                }
            }
        }
    }

    /// Adds or removes a sender the account always accepts (its mail skips spam scoring).
    pub async fn set_allowed_sender(&self, address: &str, sender: &str, allowed: bool) -> Result<()> {
        let account_id = self.account_id_of(address)?;
        let sender = normalize_address(sender)?;
        self.execute(Command::SetAllowedSender { account_id, sender, allowed }).await.map(drop)
    }

    /// The senders an account always accepts.
    pub fn allowed_senders(&self, address: &str) -> Result<Vec<String>> {
        Ok(self.state.allowed_senders(self.account_id_of(address)?)?)
    }

    /// Whether every local account `recipients` lead to always accepts `sender` (then its
    /// mail skips the spam scoring).
    pub fn sender_allowed_by_all(&self, recipients: &[String], sender: &str) -> Result<bool> {
        let Ok(sender) = normalize_address(sender) else { return Ok(false) };
        let mut any = false;
        for recipient in recipients {
            for account_id in self.resolve_with_forwards(recipient)?.accounts {
                if !self.state.is_allowed_sender(account_id, &sender)? {
                    return Ok(false);
                }
                any = true;
            }
        }
        Ok(any)
    }
}

impl Core {
    /// Tells each account about messages quarantined since its last digest: one message in
    /// its INBOX listing them (sender, subject, reason, id) and how to get them released.
    /// Returns how many digests were delivered.
    pub async fn send_quarantine_digests(&self, retention_days: u64) -> Result<usize> {
        let mut by_account: std::collections::BTreeMap<u64, Vec<QuarantineEntry>> = Default::default();
        for entry in self.state.all_quarantined(100_000)?.into_iter().filter(|entry| !entry.notified) {
            by_account.entry(entry.account_id).or_default().push(entry);
        }
        let mut sent = 0;
        for (account_id, entries) in by_account {
            let Some(account) = self.account_by_id(account_id)? else { continue };
            let message = digest_message(&account.address, &entries, retention_days);
            let body = futures::stream::once(async move { Ok(Bytes::from(message)) });
            let results = self.deliver(std::slice::from_ref(&account.address), body).await?;
            if results.iter().all(|result| matches!(result.result, Ok(DeliveryResult::Stored { .. }))) {
                self.mark_quarantine_notified(account_id, entries.iter().map(|entry| entry.id).collect()).await?;
                sent += 1;
            } else {
                tracing::warn!(account = %account.address, ?results, "cannot deliver a quarantine digest; retrying next time");
            }
        }
        Ok(sent)
    }
}

/// The digest of `entries` for `address` (RFC 5322, UTF-8 text).
fn digest_message(address: &str, entries: &[QuarantineEntry], retention_days: u64) -> Vec<u8> {
    let date = chrono::Utc::now();
    let mut text = format!(
        "From: Mail system <postmaster@{domain}>\r\nTo: <{address}>\r\nSubject: {count} message(s) held in quarantine for you\r\n\
Date: {date}\r\nMessage-ID: <quarantine-digest-{stamp}@{domain}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
These messages were held instead of delivered because they looked like spam or carried a\r\n\
virus. They are deleted after {retention_days} days. To have one delivered, or to always accept\r\n\
its sender, use your webmail's quarantine page (the user API: POST /user/v1/quarantine/NUMBER/release\r\n\
and POST /user/v1/allowed-senders, logged in with your address and password), or ask your\r\n\
administrator with the message number:\r\n\
  wmail quarantine release {address} NUMBER\r\n  wmail quarantine allow {address} SENDER\r\n\r\n",
        domain = address.rsplit_once('@').map_or("localhost", |(_, domain)| domain),
        count = entries.len(),
        date = date.to_rfc2822(),
        stamp = date.timestamp_millis(),
    );
    for entry in entries {
        let received = chrono::DateTime::from_timestamp_millis(entry.received_ms as i64).unwrap_or_default();
        let clean = |value: &str| value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
        text.push_str(&format!(
            "#{id}  {received}\r\n  from:    {from}\r\n  subject: {subject}\r\n  reason:  {reason}\r\n\r\n",
            id = entry.id,
            received = received.format("%Y-%m-%d %H:%M UTC"),
            from = clean(entry.from.as_deref().unwrap_or(&entry.sender)),
            subject = clean(entry.subject.as_deref().unwrap_or("(none)")),
            reason = clean(&entry.reason),
        ));
    }
    text.into_bytes()
}
