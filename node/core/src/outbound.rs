//! The outbound queue as the delivery worker and the admin API see it. The queue itself is
//! replicated state (`wmail_storage::queue`); this module proposes its commands.

use crate::{AttemptResult, Command, Core, CoreError, ErrorCode, Outcome, QueueEntry, Result};

impl Core {
    /// Waits until this node queued a message (or `timeout` passes): the delivery worker's
    /// nudge, so fresh mail leaves without waiting for the next poll.
    pub async fn queue_activity(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.queue_signal.notified()).await;
    }

    /// Ids of queue entries due now, longest waiting first, at most `limit`. Compacts the
    /// due index in the background once deliveries have left enough tombstones in it.
    pub fn due_outbound(&self, limit: usize) -> Result<Vec<u64>> {
        if self.state.queue_index_wants_compaction() {
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(error) = state.compact_queue_index() {
                    tracing::warn!(%error, "could not compact the outbound queue index");
                }
            });
        }
        Ok(self.state.due_outbound(crate::now_ms(), limit)?)
    }

    /// Leases due queue entries to `holder` until `until_ms`; returns the claimed entries
    /// (others were taken or changed meanwhile).
    pub async fn claim_outbound(&self, ids: Vec<u64>, holder: &str, until_ms: u64) -> Result<Vec<QueueEntry>> {
        let outcome = self.execute(Command::ClaimOutbound { ids, holder: holder.to_owned(), until_ms }).await?;
        let Outcome::OutboundClaimed { ids } = outcome else {
            return Err(CoreError::internal("claiming queue entries", format!("unexpected outcome {outcome:?}")));
        };
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(entry) = self.state.queue_entry(id)? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Records one attempt's results and releases the lease (see `Command::RecordAttempt`).
    pub async fn record_attempt(
        &self,
        id: u64,
        holder: &str,
        results: Vec<AttemptResult>,
        next_attempt_ms: u64,
        delay_notified: bool,
    ) -> Result<()> {
        let command =
            Command::RecordAttempt { id, holder: holder.to_owned(), results, next_attempt_ms, delay_notified };
        self.execute(command).await.map(drop)
    }

    /// One queue entry, if it is still queued.
    pub fn queue_entry(&self, id: u64) -> Result<Option<QueueEntry>> {
        Ok(self.state.queue_entry(id)?)
    }

    /// Queue entries with ids above `after`, oldest first, at most `limit`.
    pub fn outbound_queue(&self, after: u64, limit: usize) -> Result<Vec<QueueEntry>> {
        Ok(self.state.outbound_queue(after, limit)?)
    }

    /// How many messages are queued.
    pub fn queue_length(&self) -> Result<u64> {
        Ok(self.state.queue_length()?)
    }

    /// Makes a queue entry due now.
    pub async fn retry_outbound(&self, id: u64) -> Result<()> {
        self.execute(Command::RetryOutbound { ids: vec![id] }).await?;
        self.queue_signal.notify_one();
        Ok(())
    }

    /// Makes every queued message due now (Postfix's `postqueue -f`); returns how many
    /// entries the queue held.
    pub async fn flush_outbound(&self) -> Result<u64> {
        let mut after = 0;
        let mut count = 0;
        loop {
            let page = self.outbound_queue(after, 1_000)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            count += page.len() as u64;
            let ids = page.iter().map(|entry| entry.id).collect();
            match self.execute(Command::RetryOutbound { ids }).await {
                Ok(_) => {}
                // Every entry of the page was delivered meanwhile.
                Err(error) if error.code == ErrorCode::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        self.queue_signal.notify_one();
        Ok(count)
    }

    /// Removes a queue entry without delivering it further.
    pub async fn remove_outbound(&self, id: u64) -> Result<()> {
        self.execute(Command::RemoveOutbound { id }).await.map(drop)
    }

    /// Delivers a delivery status notification from the null sender (RFC 5321 §4.5.5): into
    /// `to`'s mailbox when local, else through the queue, where, having a null return
    /// path, it is never reported on itself.
    pub async fn send_report(&self, to: &str, report: Vec<u8>) -> Result<()> {
        let body = futures::stream::once(async move { Ok(bytes::Bytes::from(report)) });
        let domain = to.rsplit_once('@').map(|(_, domain)| domain).unwrap_or_default();
        if self.is_local_domain(domain)? {
            let results = self.deliver(&[to.to_owned()], body).await?;
            if let Some(Err(error)) = results.into_iter().map(|r| r.result).next() {
                return Err(error);
            }
            return Ok(());
        }
        let envelope = crate::OutboundEnvelope {
            return_path: String::new(),
            envid: None,
            ret: None,
            recipients: vec![crate::OutboundRecipient {
                address: to.to_owned(),
                orcpt: None,
                notify: crate::Notify { success: false, failure: false, delay: false },
                relay: None,
            }],
            eight_bit: false,
            authenticated: false,
        };
        self.submit(&[], "", Some(envelope), body).await.map(drop)
    }

    /// Fails with `NotFound` unless `id` is queued.
    pub fn require_queue_entry(&self, id: u64) -> Result<QueueEntry> {
        self.queue_entry(id)?
            .ok_or_else(|| CoreError::new(ErrorCode::NotFound, format!("queue entry {id} does not exist")))
    }
}
