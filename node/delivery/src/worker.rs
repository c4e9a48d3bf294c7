//! The delivery worker: claims due queue entries, delivers them, records the results and
//! reports to senders.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use wmail_core::{AttemptResult, Core, Notify, OutboundRecipient, QueueEntry, RecipientStatus, Ret};

use crate::client::{ClientError, Reply, SmtpClient, Timeouts, tls_connector};
use crate::route::{Hop, RouteError, Router};
use wmail_core::dsn::{self, Action, ReportContext, ReportedRecipient, Returned};

/// How a destination's sessions use TLS (per domain in `[delivery.tls]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// STARTTLS when offered, any certificate; cleartext otherwise (RFC 3207 default).
    #[default]
    Opportunistic,
    /// STARTTLS required, any certificate; no delivery in cleartext.
    Require,
    /// STARTTLS required with a certificate valid for the host name.
    RequireVerified,
    /// Never STARTTLS (for peers with broken TLS).
    Disabled,
}

/// The worker's settings (from `[delivery]`).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// This server's name: EHLO, DSNs.
    pub hostname: String,
    /// The lease holder name of this node (stable across restarts).
    pub holder: String,
    /// Waits between attempts; the last one repeats.
    pub retry_schedule: Vec<Duration>,
    /// How long a message is retried before it bounces (RFC 5321 §4.5.4.1: 4-5 days).
    pub queue_lifetime: Duration,
    /// When the sender is told that delivery is delayed; `None`: never.
    pub delay_notice: Option<Duration>,
    /// Messages delivered at once by this node.
    pub concurrency: usize,
    /// Connections at once to one destination domain.
    pub per_destination: usize,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How often the queue is checked when nothing nudges the worker.
    pub poll_interval: Duration,
    /// Client time limits.
    pub timeouts: Timeouts,
    /// TLS policy per destination domain; others are opportunistic.
    pub tls_policies: HashMap<String, TlsPolicy>,
    /// Extra trusted roots for verified TLS (a private CA).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// RET=FULL returns the whole message only up to this size; above it, the headers.
    pub bounce_size_limit: u64,
    /// Most recipients per transaction (RFC 5321 §4.5.3.1.8: at least 100 must work).
    pub max_recipients_per_transaction: usize,
}

impl DeliveryConfig {
    /// Defaults from the seeds' manuals and RFC 5321 for a server called `hostname`.
    pub fn new(hostname: impl Into<String>, holder: impl Into<String>) -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        DeliveryConfig {
            hostname: hostname.into(),
            holder: holder.into(),
            retry_schedule: vec![minutes(5), minutes(10), minutes(30), minutes(60), minutes(120)],
            queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_notice: Some(Duration::from_secs(4 * 3600)),
            concurrency: 100,
            per_destination: 20,
            lease: minutes(10),
            poll_interval: Duration::from_secs(1),
            timeouts: Timeouts::default(),
            tls_policies: HashMap::new(),
            extra_roots: Vec::new(),
            bounce_size_limit: 1024 * 1024,
            max_recipients_per_transaction: 100,
        }
    }
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
struct RecipientAttempt {
    /// Index of the recipient in the queue entry.
    index: usize,
    kind: Kind,
    /// The reply line (the remote's, or made up locally).
    reply: String,
    /// The host that answered, if one did.
    remote: Option<String>,
}

impl RecipientAttempt {
    /// The same outcome for every recipient in `indexes`.
    fn all(indexes: &[usize], kind: Kind, reply: &Reply, remote: Option<&str>) -> Vec<Self> {
        let (reply, remote) = (reply.line(), remote.map(str::to_owned));
        indexes.iter().map(|&index| Self { index, kind, reply: reply.clone(), remote: remote.clone() }).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Accepted; `true` when the remote took over DSN duty (it offered DSN).
    Delivered(bool),
    Failed,
    Deferred,
}

impl Kind {
    fn of(reply: &Reply) -> Kind {
        if reply.is_positive() {
            Kind::Delivered(false)
        } else if reply.is_permanent() {
            Kind::Failed
        } else {
            Kind::Deferred
        }
    }
}

/// A transaction that could not start on this connection: try the next host.
struct NextHost(Reply);

/// An idle connection kept for the next message to the same host.
struct Idle {
    client: SmtpClient,
    since: Instant,
}

/// Messages are held in memory while they are DKIM-signed; this bounds the total, in KiB.
const SIGNING_BUDGET_KIB: u32 = 64 * 1024;
const IDLE_LIMIT: Duration = Duration::from_secs(10);
const IDLE_PER_HOST: usize = 8;

/// Removes an entry from the worker's in-flight set when its attempt ends, however it ends.
struct InFlight {
    worker: Arc<Worker>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.worker.in_flight.lock().expect("in-flight lock").remove(&self.id);
        self.worker.finished.notify_one();
    }
}

/// Aborts a background task when dropped (the lease renewal of an attempt).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The longest one attempt of one entry may run: a server that drips its replies cannot
/// hold a delivery slot (and the lease) forever.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The outbound delivery worker of one node.
pub struct Worker {
    core: Arc<Core>,
    config: DeliveryConfig,
    router: Router,
    opportunistic_tls: tokio_rustls::TlsConnector,
    verified_tls: tokio_rustls::TlsConnector,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    in_flight: Mutex<HashSet<u64>>,
    finished: tokio::sync::Notify,
    signing_budget: Semaphore,
    metrics: crate::DeliveryMetrics,
    /// Verifies DKIM and ARC when sealing forwarded mail.
    authenticator: mail_auth::MessageAuthenticator,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("holder", &self.config.holder).finish()
    }
}

fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map(|(_, domain)| domain.to_ascii_lowercase()).unwrap_or_default()
}

/// The address as an RFC 5321 §4.1.2 path: the local part as a dot-atom when it is one,
/// else as a quoted string. `None` for what no path can carry (controls, angle brackets,
/// a missing domain).
fn smtp_path(address: &str) -> Option<String> {
    if address.is_empty() {
        return Some(String::new()); // the null reverse-path
    }
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || address.chars().any(|c| c.is_control() || c == '<' || c == '>') {
        return None;
    }
    if domain.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\') {
        return None;
    }
    let atext = |c: char| c.is_alphanumeric() || !c.is_ascii() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom = local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(atext));
    if dot_atom {
        return Some(address.to_owned());
    }
    let quoted: String =
        local.chars().flat_map(|c| if c == '"' || c == '\\' { vec!['\\', c] } else { vec![c] }).collect();
    Some(format!("\"{quoted}\"@{domain}"))
}

/// RFC 3461 §4 xtext: `+HH` for `+`, `=`, and bytes outside 33..=126.
fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (33..=126).contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

fn notify_param(notify: &Notify) -> String {
    let mut kinds = Vec::new();
    if notify.success {
        kinds.push("SUCCESS");
    }
    if notify.failure {
        kinds.push("FAILURE");
    }
    if notify.delay {
        kinds.push("DELAY");
    }
    if kinds.is_empty() { "NEVER".to_owned() } else { kinds.join(",") }
}

/// Drops the Return-Path header the receiving side stored at the top of the message: a
/// message in transit must not carry one (RFC 5321 §4.4).
async fn without_return_path(
    mut body: BoxStream<'static, wmail_core::Result<Bytes>>,
) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
    let mut head = BytesMut::new();
    // Enough to hold the header field; it is the first line, folded at most a little.
    while head.len() < 4096 {
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.map_err(std::io::Error::other)?),
            None => break,
        }
    }
    let skip = if head.len() >= 12 && head[..12].eq_ignore_ascii_case(b"return-path:") {
        let mut end = 0;
        let mut found = None;
        while let Some(offset) = head[end..].windows(2).position(|w| w == b"\r\n") {
            end += offset + 2;
            if !matches!(head.get(end), Some(b' ' | b'\t')) {
                found = Some(end);
                break;
            }
        }
        found.unwrap_or(0)
    } else {
        0
    };
    let first = head.freeze().slice(skip..);
    let rest = body.map_err(std::io::Error::other);
    Ok(futures::stream::once(async move { Ok(first) }).chain(rest).boxed())
}

impl Worker {
    /// A worker for `core`'s queue.
    pub fn new(core: Arc<Core>, config: DeliveryConfig, router: Router, metrics: crate::DeliveryMetrics) -> Arc<Self> {
        Arc::new(Worker {
            authenticator: mail_auth::MessageAuthenticator(router.resolver().clone()),
            opportunistic_tls: tls_connector(false, &[]),
            verified_tls: tls_connector(true, &config.extra_roots),
            core,
            config,
            router,
            destinations: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            finished: tokio::sync::Notify::new(),
            signing_budget: Semaphore::new(SIGNING_BUDGET_KIB as usize),
            metrics,
        })
    }

    /// Runs until `shutdown` turns true, then waits a little for deliveries in progress.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        self.take_back_own_entries(&permits, &mut tasks).await;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Slots first, so no more entries are claimed (and leased) than can start now.
            let mut slots: Vec<OwnedSemaphorePermit> =
                std::iter::from_fn(|| permits.clone().try_acquire_owned().ok()).collect();
            let claimed = if slots.is_empty() { Vec::new() } else { self.claim(slots.len()).await };
            let busy = !claimed.is_empty() && claimed.len() == slots.len();
            for entry in claimed {
                let slot = slots.pop().expect("one slot per claimed entry");
                self.spawn(entry, slot, &mut tasks);
            }
            drop(slots);
            while tasks.try_join_next().is_some() {}
            self.close_expired_idle();
            if busy {
                continue;
            }
            tokio::select! {
                _ = self.core.queue_activity(self.config.poll_interval) => {}
                _ = self.finished.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        // Unfinished deliveries keep their leases; the next start takes them back.
        let _ =
            tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
        tasks.abort_all();
    }

    /// After a restart, entries this node held when it stopped are still leased to it:
    /// take them back at once instead of waiting for the leases to lapse.
    async fn take_back_own_entries(self: &Arc<Self>, permits: &Arc<Semaphore>, tasks: &mut tokio::task::JoinSet<()>) {
        let mut after = 0;
        let mut own = Vec::new();
        loop {
            let page = match self.core.outbound_queue(after, 1_000) {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "could not read the outbound queue");
                    return;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.id;
            own.extend(
                page.iter()
                    .filter(|entry| entry.lease.as_ref().is_some_and(|lease| lease.holder == self.config.holder))
                    .map(|entry| entry.id),
            );
        }
        if own.is_empty() {
            return;
        }
        tracing::info!(count = own.len(), "taking back outbound deliveries this node held before it restarted");
        for chunk in own.chunks(self.config.concurrency.max(1)) {
            let until = wmail_core::now_ms() + self.config.lease.as_millis() as u64;
            match self.core.claim_outbound(chunk.to_vec(), &self.config.holder, until).await {
                Ok(entries) => {
                    for entry in entries {
                        let Ok(slot) = permits.clone().acquire_owned().await else { return };
                        self.spawn(entry, slot, tasks);
                    }
                }
                Err(error) => tracing::warn!(%error, "could not take back outbound deliveries"),
            }
        }
    }

    async fn claim(&self, free: usize) -> Vec<QueueEntry> {
        let ids = match self.core.due_outbound(free) {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, "could not read the outbound queue");
                return Vec::new();
            }
        };
        let ids: Vec<u64> = {
            let in_flight = self.in_flight.lock().expect("in-flight lock");
            ids.into_iter().filter(|id| !in_flight.contains(id)).collect()
        };
        if ids.is_empty() {
            return Vec::new();
        }
        let until = wmail_core::now_ms() + self.config.lease.as_millis() as u64;
        match self.core.claim_outbound(ids, &self.config.holder, until).await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::debug!(%error, "could not claim outbound queue entries");
                Vec::new()
            }
        }
    }

    /// Delivers a claimed entry in its own task, holding `slot` until it is done.
    fn spawn(self: &Arc<Self>, entry: QueueEntry, slot: OwnedSemaphorePermit, tasks: &mut tokio::task::JoinSet<()>) {
        if !self.in_flight.lock().expect("in-flight lock").insert(entry.id) {
            return;
        }
        let worker = self.clone();
        tasks.spawn(async move {
            let _slot = slot;
            // Whatever ends the attempt (done, panic, abort at shutdown), the entry leaves
            // `in_flight`, so a later claim can pick it up again.
            let _in_flight = InFlight { worker: worker.clone(), id: entry.id };
            worker.deliver_entry(entry).await;
        });
    }

    /// One attempt for every pending recipient of an entry, then its record.
    async fn deliver_entry(self: &Arc<Self>, entry: QueueEntry) {
        let renewal = AbortOnDrop(self.keep_lease(entry.id));
        // One transaction per destination: a domain, or a forward server it names.
        let mut by_domain: BTreeMap<(String, Option<String>), Vec<usize>> = BTreeMap::new();
        for (index, recipient) in entry.pending() {
            let key = (domain_of(&recipient.recipient.address), recipient.recipient.relay.clone());
            by_domain.entry(key).or_default().push(index);
        }
        // Signed (or sealed) once per attempt, before any connection is open (RFC 6376).
        let signature = match entry.authenticated {
            true => self.dkim_signature(&entry).await,
            false => self.arc_seal(&entry).await,
        };
        let signature = signature.as_deref();
        let mut attempts = Vec::with_capacity(by_domain.len());
        for ((domain, relay), indexes) in by_domain {
            attempts.push(self.deliver_domain_in_time(&entry, domain, relay, indexes, signature));
        }
        // At most eight destinations of one message at once.
        let mut results: Vec<RecipientAttempt> = futures::stream::iter(attempts).buffer_unordered(8).concat().await;
        drop(renewal);

        let now = wmail_core::now_ms();
        let expires_ms = entry.created_ms + self.config.queue_lifetime.as_millis() as u64;
        let schedule = &self.config.retry_schedule;
        let wait =
            schedule.get(entry.attempts as usize).or(schedule.last()).copied().unwrap_or(Duration::from_secs(300));
        let next_attempt_ms = (now + wait.as_millis() as u64).min(expires_ms.max(now));
        if now >= expires_ms {
            // RFC 5321 §4.5.4.1: give up after the queue lifetime.
            let days = self.config.queue_lifetime.as_secs_f64() / 86_400.0;
            for result in results.iter_mut().filter(|r| r.kind == Kind::Deferred) {
                result.kind = Kind::Failed;
                result.reply = format!("{} (gave up after {days:.1} days of retries)", result.reply);
            }
        }
        let (reported, delay_notified) = self.report(&entry, &results, expires_ms).await;
        if !reported {
            // RFC 5321 §6.1: a failure the sender is not told about must not be final;
            // those recipients stay pending and are reported at the next attempt.
            for result in results.iter_mut().filter(|r| r.kind == Kind::Failed) {
                result.kind = Kind::Deferred;
            }
        }
        let records: Vec<AttemptResult> = results
            .iter()
            .map(|result| AttemptResult {
                index: result.index as u32,
                status: match result.kind {
                    Kind::Delivered(_) => RecipientStatus::Delivered { reply: result.reply.clone() },
                    Kind::Failed => RecipientStatus::Failed { reply: result.reply.clone() },
                    Kind::Deferred => RecipientStatus::Pending { last_reply: Some(result.reply.clone()) },
                },
            })
            .collect();
        for result in &results {
            let address = &entry.recipients[result.index].recipient.address;
            let label = match result.kind {
                Kind::Delivered(_) => "delivered",
                Kind::Failed => "failed",
                Kind::Deferred => "deferred",
            };
            self.metrics.recipients.with_label_values(&[label]).inc();
            match result.kind {
                Kind::Delivered(_) => {
                    tracing::info!(queue_id = entry.id, to = %address, remote = ?result.remote, reply = %result.reply, "delivered")
                }
                Kind::Failed => {
                    tracing::warn!(queue_id = entry.id, to = %address, remote = ?result.remote, reply = %result.reply, "delivery failed; bouncing")
                }
                Kind::Deferred => {
                    tracing::info!(queue_id = entry.id, to = %address, remote = ?result.remote, reply = %result.reply, attempt = entry.attempts + 1, "delivery deferred")
                }
            }
        }
        // Unrecorded, the attempt is repeated once the lease lapses (delivering again), so
        // a passing failure (a leader change) is worth a few retries.
        for wait_ms in [0, 200, 1_000, 5_000] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            let outcome = self
                .core
                .record_attempt(entry.id, &self.config.holder, records.clone(), next_attempt_ms, delay_notified)
                .await;
            match outcome {
                Ok(()) => return,
                Err(error) if error.code == wmail_core::ErrorCode::Unavailable => {
                    tracing::warn!(queue_id = entry.id, %error, "could not record a delivery attempt yet");
                }
                Err(error) => {
                    tracing::warn!(queue_id = entry.id, %error, "could not record a delivery attempt; it will be repeated");
                    return;
                }
            }
        }
    }

    /// Renews the entry's lease every third of its length while the attempt runs.
    fn keep_lease(self: &Arc<Self>, id: u64) -> tokio::task::JoinHandle<()> {
        let worker = self.clone();
        tokio::spawn(async move {
            let period = worker.config.lease / 3;
            loop {
                tokio::time::sleep(period).await;
                let until = wmail_core::now_ms() + worker.config.lease.as_millis() as u64;
                if let Err(error) = worker.core.claim_outbound(vec![id], &worker.config.holder, until).await {
                    tracing::warn!(queue_id = id, %error, "could not renew a delivery lease");
                }
            }
        })
    }

    /// Sends the reports this attempt calls for; returns whether they went out (or none was
    /// needed) and whether a delay notice went out.
    async fn report(&self, entry: &QueueEntry, results: &[RecipientAttempt], expires_ms: u64) -> (bool, bool) {
        if entry.return_path.is_empty() {
            return (true, false); // never bounce a bounce (RFC 3461 §6.2, RFC 5321 §4.5.5)
        }
        let now = wmail_core::now_ms();
        let delay_due = !entry.delay_notified
            && self.config.delay_notice.is_some_and(|after| now >= entry.created_ms + after.as_millis() as u64);
        let mut reported = Vec::new();
        let mut delay_sent = false;
        for result in results {
            let recipient = &entry.recipients[result.index].recipient;
            let action = match result.kind {
                Kind::Failed if recipient.notify.failure => Action::Failed,
                // RFC 3461 §5.2.2: a server that offers DSN takes over; else we say "relayed".
                Kind::Delivered(false) if recipient.notify.success => Action::Relayed,
                Kind::Deferred if delay_due && recipient.notify.delay => Action::Delayed,
                _ => continue,
            };
            delay_sent |= action == Action::Delayed;
            reported.push(ReportedRecipient {
                address: recipient.address.clone(),
                orcpt: recipient.orcpt.clone(),
                action,
                reply: result.reply.clone(),
                remote_mta: result.remote.clone(),
            });
        }
        if reported.is_empty() {
            return (true, false);
        }
        let returned = match self.returned_message(entry).await {
            Ok(returned) => returned,
            Err(error) => {
                tracing::warn!(queue_id = entry.id, %error, "could not read the message for its report");
                Returned::Headers(Vec::new())
            }
        };
        let context = ReportContext::for_entry(&self.config.hostname, entry, expires_ms);
        let report = dsn::build_report(&context, &reported, &returned);
        match self.core.send_report(&entry.return_path, report).await {
            Ok(()) => {
                for recipient in &reported {
                    let kind = match recipient.action {
                        Action::Failed => "failure",
                        Action::Delayed => "delay",
                        Action::Relayed | Action::Delivered => "relayed",
                    };
                    self.metrics.reports.with_label_values(&[kind]).inc();
                }
                (true, delay_sent)
            }
            Err(error) => {
                tracing::error!(queue_id = entry.id, to = %entry.return_path, %error, "could not send a delivery report; will retry");
                (false, false)
            }
        }
    }

    /// Reads what the report returns: the whole message or its header section, bounded.
    async fn returned_message(&self, entry: &QueueEntry) -> wmail_core::Result<Returned> {
        let full = dsn::wants_full_message(entry, self.config.bounce_size_limit);
        let mut stream = self.core.blob_stream(&entry.blob).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
            if !full {
                if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                    out.truncate(end + 2);
                    break;
                }
                if out.len() > 256 * 1024 {
                    out.truncate(256 * 1024);
                    break;
                }
            }
        }
        Ok(if full { Returned::Full(out) } else { Returned::Headers(out) })
    }

    fn destination(&self, domain: &str) -> Arc<Semaphore> {
        let mut destinations = self.destinations.lock().expect("destinations lock");
        destinations
            .entry(domain.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_destination.max(1))))
            .clone()
    }

    /// [`Worker::deliver_domain`] within [`ATTEMPT_LIMIT`]; past it, the recipients are
    /// deferred.
    async fn deliver_domain_in_time(
        &self,
        entry: &QueueEntry,
        domain: String,
        relay: Option<String>,
        indexes: Vec<usize>,
        signature: Option<&str>,
    ) -> Vec<RecipientAttempt> {
        let attempt = self.deliver_domain(entry, domain.clone(), relay, indexes.clone(), signature);
        match tokio::time::timeout(ATTEMPT_LIMIT, attempt).await {
            Ok(results) => results,
            Err(_) => {
                let reply = Reply::local(451, [4, 4, 7], format!("delivery to {domain} took too long; will retry"));
                RecipientAttempt::all(&indexes, Kind::Deferred, &reply, None)
            }
        }
    }

    /// One attempt for the recipients of one domain (or of the forward server `relay`):
    /// the hosts in order until one takes the transaction.
    async fn deliver_domain(
        &self,
        entry: &QueueEntry,
        domain: String,
        relay: Option<String>,
        indexes: Vec<usize>,
        signature: Option<&str>,
    ) -> Vec<RecipientAttempt> {
        let all = |kind, reply: &Reply, remote: Option<&str>| RecipientAttempt::all(&indexes, kind, reply, remote);
        let destination = self.destination(relay.as_deref().unwrap_or(&domain));
        let Ok(_permit) = destination.acquire().await else { return Vec::new() };
        let routed = match &relay {
            Some(relay) => self.router.relay(relay).await,
            None => self.router.route(&domain).await,
        };
        let hops = match routed {
            Ok(hops) => hops,
            Err(RouteError::Permanent(reply)) => return all(Kind::Failed, &reply, None),
            Err(RouteError::Temporary(reply)) => return all(Kind::Deferred, &reply, None),
        };
        let policy = self.config.tls_policies.get(&domain).copied().unwrap_or_default();
        let mut last = Reply::local(451, [4, 4, 1], format!("no mail server for {domain} could be reached"));
        let mut last_remote = None;
        for hop in &hops {
            for &addr in &hop.addrs {
                let remote = format!("{}[{}]", hop.name, addr.ip());
                // A connection verified for another name must not serve this domain.
                let mut use_idle = policy != TlsPolicy::RequireVerified;
                'connection: loop {
                    let (mut client, reused) = match self.session(hop, addr, policy, use_idle).await {
                        Ok(session) => session,
                        Err(NextHost(reply)) => {
                            tracing::debug!(%remote, reply = %reply.line(), "host not usable, trying the next");
                            last = reply;
                            last_remote = Some(remote);
                            break 'connection;
                        }
                    };
                    let mut results = Vec::with_capacity(indexes.len());
                    let mut broken = None;
                    for batch in indexes.chunks(self.config.max_recipients_per_transaction.max(1)) {
                        match self.transaction(&mut client, entry, batch, &hop.name, signature).await {
                            Ok(batch_results) => results.extend(batch_results),
                            Err(reply) => {
                                broken = Some(reply);
                                break;
                            }
                        }
                    }
                    match broken {
                        None => {
                            self.keep_idle(client);
                            return results;
                        }
                        // A kept connection the server has closed meanwhile: open a new one.
                        Some(_) if results.is_empty() && reused => {
                            use_idle = false;
                            continue 'connection;
                        }
                        // The connection broke before any of this batch was sent: the others
                        // are tried on the next host.
                        Some(reply) => {
                            let done: HashSet<usize> = results.iter().map(|r| r.index).collect();
                            let rest: Vec<usize> = indexes.iter().copied().filter(|i| !done.contains(i)).collect();
                            if results.is_empty() {
                                last = reply;
                                last_remote = Some(remote);
                                break 'connection;
                            }
                            results.extend(RecipientAttempt::all(&rest, Kind::Deferred, &reply, Some(&hop.name)));
                            return results;
                        }
                    }
                }
            }
        }
        all(Kind::Deferred, &last, last_remote.as_deref())
    }

    /// The message as stored, without the Return-Path the receiving side added.
    async fn stored_message(&self, entry: &QueueEntry) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let stream = self.core.blob_stream(&entry.blob).await.map_err(std::io::Error::other)?;
        without_return_path(stream).await
    }

    /// The `DKIM-Signature` header field for a message an authenticated user submitted,
    /// when its From: domain has an active key; `None` otherwise (and when signing fails,
    /// which is logged: the message then goes unsigned rather than not at all). Signing
    /// needs the whole message in memory, so messages are read within a node-wide budget
    /// (one larger than the budget waits for all of it).
    async fn dkim_signature(&self, entry: &QueueEntry) -> Option<String> {
        if !entry.authenticated || entry.return_path.is_empty() || !self.core.has_dkim_keys().unwrap_or(true) {
            return None;
        }
        let signed = async {
            let mut body = self.stored_message(entry).await?;
            let mut whole = Vec::new();
            while whole.windows(4).all(|w| w != b"\r\n\r\n") && whole.len() < 256 * 1024 {
                match body.next().await {
                    Some(chunk) => whole.extend_from_slice(&chunk?),
                    None => break,
                }
            }
            let Some(domain) = crate::sign::from_domain(&whole) else { return Ok(None) };
            // A From: domain that is not one of ours (or not even valid) has no key.
            let Ok(Some(key)) = self.core.dkim_signing_key(&domain) else { return Ok(None) };
            let kib = u32::try_from(entry.size.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, SIGNING_BUDGET_KIB);
            let _budget = self.signing_budget.acquire_many(kib).await.map_err(std::io::Error::other)?;
            while let Some(chunk) = body.next().await {
                whole.extend_from_slice(&chunk?);
            }
            let signature = tokio::task::spawn_blocking(move || crate::sign::sign(&whole, &domain, &key))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            std::io::Result::Ok(Some(signature))
        };
        match signed.await {
            Ok(signature) => signature,
            Err(error) => {
                tracing::error!(queue_id = entry.id, %error, "DKIM signing failed; sending unsigned");
                None
            }
        }
    }

    /// The ARC set (RFC 8617) for mail this node forwards (an alias with targets in other
    /// domains): sealed with the key of the local domain the message was addressed to
    /// (its ORCPT), when that domain has one. Sealing failures are logged and the message
    /// goes unsealed.
    async fn arc_seal(&self, entry: &QueueEntry) -> Option<String> {
        if !self.core.has_dkim_keys().unwrap_or(true) {
            return None;
        }
        let (domain, key) = entry.recipients.iter().find_map(|queued| {
            let original = queued.recipient.orcpt.as_deref()?.strip_prefix("rfc822;")?;
            let domain = original.rsplit_once('@')?.1.to_ascii_lowercase();
            let key = self.core.dkim_signing_key(&domain).ok()??;
            // RFC 8617 §4.1.3: ARC signs with rsa-sha256 only; an Ed25519-only domain
            // forwards unsealed.
            (key.algorithm == wmail_core::DkimAlgorithm::Rsa).then_some((domain, key))
        })?;
        let sealed = async {
            let kib = u32::try_from(entry.size.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, SIGNING_BUDGET_KIB);
            let _budget = self.signing_budget.acquire_many(kib).await.map_err(|e| e.to_string())?;
            let mut body = self.stored_message(entry).await.map_err(|e| e.to_string())?;
            let mut whole = Vec::new();
            while let Some(chunk) = body.next().await {
                whole.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
            }
            let client = received_from_ip(&whole).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
            crate::sign::arc_seal(&self.authenticator, &whole, &domain, &key, &self.config.hostname, client).await
        };
        match sealed.await {
            Ok(Some(set)) => Some(set),
            Ok(None) => {
                tracing::info!(queue_id = entry.id, "the incoming ARC chain failed; forwarding unsealed");
                None
            }
            Err(error) => {
                tracing::error!(queue_id = entry.id, %error, "ARC sealing failed; forwarding unsealed");
                None
            }
        }
    }

    /// A connection ready for MAIL: an idle one to the same address, or a new one with
    /// EHLO and STARTTLS as the policy says.
    /// The flag says whether the connection was kept from an earlier message.
    async fn session(
        &self,
        hop: &Hop,
        addr: SocketAddr,
        policy: TlsPolicy,
        use_idle: bool,
    ) -> Result<(SmtpClient, bool), NextHost> {
        // Credentials (a smarthost login) only ever go to a verified server.
        let policy = if hop.credentials.is_some() { TlsPolicy::RequireVerified } else { policy };
        let tls_required = matches!(policy, TlsPolicy::Require | TlsPolicy::RequireVerified);
        if use_idle && let Some(client) = self.take_idle(addr, tls_required) {
            return Ok((client, true));
        }
        let hostname = &self.config.hostname;
        let fail = |error: ClientError| NextHost(error_reply(&error, &hop.name));
        let mut client = SmtpClient::connect(addr, self.config.timeouts).await.map_err(fail)?;
        client.hello(hostname).await.map_err(fail)?;
        if client.extensions.starttls && policy != TlsPolicy::Disabled {
            let connector =
                if policy == TlsPolicy::RequireVerified { &self.verified_tls } else { &self.opportunistic_tls };
            match client.start_tls(connector, &hop.name, hostname).await {
                Ok(()) => {}
                Err(error) if policy == TlsPolicy::Opportunistic => {
                    // Opportunistic: deliver in cleartext rather than not at all.
                    tracing::info!(host = %hop.name, %error, "STARTTLS failed; retrying without TLS");
                    client = SmtpClient::connect(addr, self.config.timeouts).await.map_err(fail)?;
                    client.hello(hostname).await.map_err(fail)?;
                }
                Err(error) => return Err(fail(error)),
            }
        } else if tls_required {
            return Err(NextHost(Reply::local(
                451,
                [4, 7, 10],
                format!("{} does not offer STARTTLS, and the TLS policy for this domain requires it", hop.name),
            )));
        }
        if let Some(credentials) = &hop.credentials {
            client.authenticate(&credentials.user, &credentials.password).await.map_err(fail)?;
        }
        Ok((client, false))
    }

    fn take_idle(&self, addr: SocketAddr, tls_required: bool) -> Option<SmtpClient> {
        let mut idle = self.idle.lock().expect("idle lock");
        let list = idle.get_mut(&addr)?;
        while let Some(connection) = list.pop() {
            if connection.since.elapsed() < IDLE_LIMIT && (connection.client.tls || !tls_required) {
                return Some(connection.client);
            }
        }
        None
    }

    /// Says QUIT on kept connections nobody used in time (in the background).
    fn close_expired_idle(&self) {
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.lock().expect("idle lock");
            idle.retain(|_, list| {
                let (old, fresh): (Vec<Idle>, Vec<Idle>) =
                    std::mem::take(list).into_iter().partition(|connection| connection.since.elapsed() >= IDLE_LIMIT);
                expired.extend(old);
                *list = fresh;
                !list.is_empty()
            });
        }
        for connection in expired {
            tokio::spawn(connection.client.quit());
        }
    }

    fn keep_idle(&self, client: SmtpClient) {
        if !client.is_reusable() {
            return;
        }
        let mut idle = self.idle.lock().expect("idle lock");
        let list = idle.entry(client.peer).or_default();
        if list.len() < IDLE_PER_HOST {
            list.push(Idle { client, since: Instant::now() });
        } else {
            tokio::spawn(client.quit());
        }
    }

    /// One SMTP transaction for `indexes` on an open connection. `Err` means the
    /// connection failed before the message was handed over (try elsewhere).
    async fn transaction(
        &self,
        client: &mut SmtpClient,
        entry: &QueueEntry,
        indexes: &[usize],
        host: &str,
        signature: Option<&str>,
    ) -> Result<Vec<RecipientAttempt>, Reply> {
        let remote = Some(host.to_owned());
        let all = |kind, reply: &Reply| RecipientAttempt::all(indexes, kind, reply, Some(host));
        let extensions = client.extensions.clone();
        if let Some(limit) = extensions.size.filter(|&limit| limit > 0 && entry.size > limit) {
            // RFC 1870 §6: it would be refused; say so now.
            let reply = Reply::local(
                552,
                [5, 3, 4],
                format!("message size {} exceeds {host}'s limit of {limit} bytes", entry.size),
            );
            return Ok(all(Kind::Failed, &reply));
        }
        let recipients: Vec<&OutboundRecipient> = indexes.iter().map(|&i| &entry.recipients[i].recipient).collect();
        let needs_utf8 = !entry.return_path.is_ascii() || recipients.iter().any(|r| !r.address.is_ascii());
        if needs_utf8 && !extensions.smtputf8 {
            // RFC 6531 §3.2: no downgrade of internationalised addresses.
            let reply = Reply::local(
                553,
                [5, 6, 7],
                format!("{host} does not accept internationalised addresses (no SMTPUTF8)"),
            );
            return Ok(all(Kind::Failed, &reply));
        }
        let Some(reverse_path) = smtp_path(&entry.return_path) else {
            let reply =
                Reply::local(553, [5, 1, 7], format!("the sender address <{}> cannot be sent on", entry.return_path));
            return Ok(all(Kind::Failed, &reply));
        };
        let mut mail = format!("MAIL FROM:<{reverse_path}>");
        if extensions.size.is_some() {
            mail.push_str(&format!(" SIZE={}", entry.size));
        }
        if entry.eight_bit {
            if !extensions.eight_bit_mime {
                // RFC 6152 §3: 8-bit data only to servers that take it; we do not convert.
                let reply = Reply::local(
                    554,
                    [5, 6, 3],
                    format!("{host} does not accept 8-bit data (no 8BITMIME); send the message as 7-bit MIME"),
                );
                return Ok(all(Kind::Failed, &reply));
            }
            mail.push_str(" BODY=8BITMIME");
        }
        if needs_utf8 {
            mail.push_str(" SMTPUTF8");
        }
        if extensions.dsn {
            // RFC 3461 §4.3, §4.4: pass the sender's requests on.
            match entry.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Headers) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &entry.envid {
                mail.push_str(&format!(" ENVID={}", xtext(envid)));
            }
        }
        mail.push_str("\r\n");
        let unusable: Vec<usize> =
            indexes.iter().copied().filter(|&i| smtp_path(&entry.recipients[i].recipient.address).is_none()).collect();
        if !unusable.is_empty() {
            // Only possible for forwarded mail from elsewhere; refuse those, send the rest.
            let reply = Reply::local(553, [5, 1, 3], "the recipient address cannot be sent on (bad syntax)");
            let mut results = RecipientAttempt::all(&unusable, Kind::Failed, &reply, None);
            let usable: Vec<usize> = indexes.iter().copied().filter(|i| !unusable.contains(i)).collect();
            if !usable.is_empty() {
                results.extend(Box::pin(self.transaction(client, entry, &usable, host, signature)).await?);
            }
            return Ok(results);
        }
        let rcpts: Vec<String> = recipients
            .iter()
            .map(|recipient| {
                let path = smtp_path(&recipient.address).expect("checked above");
                let mut line = format!("RCPT TO:<{path}>");
                if extensions.dsn {
                    line.push_str(&format!(" NOTIFY={}", notify_param(&recipient.notify)));
                    if let Some(orcpt) = &recipient.orcpt {
                        let (kind, address) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
                        line.push_str(&format!(" ORCPT={kind};{}", xtext(address)));
                    }
                }
                line.push_str("\r\n");
                line
            })
            .collect();
        let replies = match client.envelope(&mail, &rcpts).await {
            Ok(replies) => replies,
            Err(ClientError::Refused { reply, .. }) => {
                let _ = client.reset().await;
                return Ok(all(Kind::of(&reply), &reply));
            }
            Err(error) => return Err(error_reply(&error, host)),
        };
        let mut results = Vec::with_capacity(indexes.len());
        let mut accepted = Vec::new();
        for (&index, reply) in indexes.iter().zip(&replies) {
            if reply.is_positive() {
                accepted.push(index);
            } else {
                // RFC 5321 §4.5.3.1.10: a 552 to RCPT means "too many recipients"; retry.
                let kind = if reply.code == 552 { Kind::Deferred } else { Kind::of(reply) };
                results.push(RecipientAttempt { index, kind, reply: reply.line(), remote: remote.clone() });
            }
        }
        if accepted.is_empty() {
            if client.reset().await.is_err() {
                return Err(Reply::local(451, [4, 4, 2], format!("{host} closed the connection")));
            }
            return Ok(results);
        }
        let body = match self.stored_message(entry).await {
            Ok(body) => match signature {
                Some(signature) => {
                    let header = Bytes::copy_from_slice(signature.as_bytes());
                    futures::stream::once(async move { Ok(header) }).chain(body).boxed()
                }
                None => body,
            },
            Err(error) => {
                let reply = Reply::local(451, [4, 3, 0], format!("local error reading the message: {error}"));
                let _ = client.reset().await;
                return Ok(all(Kind::Deferred, &reply));
            }
        };
        let outcome = client.data(body).await;
        let (kind, reply) = match outcome {
            Ok(reply) => (Kind::of(&reply), reply),
            Err(ClientError::Refused { reply, .. }) => {
                // The transaction is over on the server's side; RSET makes sure (and marks
                // the connection broken if even that fails).
                let _ = client.reset().await;
                (Kind::of(&reply), reply)
            }
            // The message may or may not have arrived: retry (at least once, never zero).
            Err(error) => (Kind::Deferred, error_reply(&error, host)),
        };
        let kind = match kind {
            Kind::Delivered(_) => Kind::Delivered(extensions.dsn),
            other => other,
        };
        results.extend(RecipientAttempt::all(&accepted, kind, &reply, Some(host)));
        results.sort_by_key(|result| result.index);
        Ok(results)
    }
}

/// The reply recorded for a failure that is not a server's reply.
fn error_reply(error: &ClientError, host: &str) -> Reply {
    match error {
        ClientError::Refused { reply, .. } => reply.clone(),
        ClientError::Io(error) => Reply::local(451, [4, 4, 1], format!("connection to {host} failed: {error}")),
        ClientError::Protocol(what) => Reply::local(451, [4, 5, 0], format!("{host}: {what}")),
        ClientError::Tls(what) => Reply::local(451, [4, 7, 5], format!("TLS with {host} failed: {what}")),
    }
}

/// The client address of the first `Received: from name ([ip])` field (this server's own,
/// for a message it received).
fn received_from_ip(message: &[u8]) -> Option<std::net::IpAddr> {
    let head = &message[..message.len().min(4096)];
    let text = std::str::from_utf8(head).ok()?;
    let received = &text[text.find("Received: from ")?..];
    let start = received.find("([")? + 2;
    let end = start + received[start..].find("])")?;
    received[start..end].trim_start_matches("IPv6:").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_escapes_plus_equals_and_controls() {
        assert_eq!(xtext("rfc822;a+b=c@x"), "rfc822;a+2Bb+3Dc@x");
        assert_eq!(xtext("a b"), "a+20b");
    }

    #[test]
    fn paths_quote_what_is_not_a_dot_atom_and_refuse_injection() {
        assert_eq!(smtp_path("alice.b+tag@example.com").as_deref(), Some("alice.b+tag@example.com"));
        assert_eq!(smtp_path("").as_deref(), Some(""));
        assert_eq!(smtp_path("john smith@x.test").as_deref(), Some("\"john smith\"@x.test"));
        assert_eq!(smtp_path("a\"b@x.test").as_deref(), Some("\"a\\\"b\"@x.test"));
        assert_eq!(smtp_path("a..b@x.test").as_deref(), Some("\"a..b\"@x.test"));
        assert_eq!(smtp_path("用户@例子.test").as_deref(), Some("用户@例子.test"));
        assert_eq!(smtp_path("a> RET=FULL X=y@evil.test"), None, "no parameter injection");
        assert_eq!(smtp_path("a\r\nRSET@x.test"), None);
        assert_eq!(smtp_path("no-domain"), None);
    }

    #[test]
    fn notify_lists_the_requested_kinds() {
        assert_eq!(notify_param(&Notify::default()), "FAILURE,DELAY");
        assert_eq!(notify_param(&Notify { success: false, failure: false, delay: false }), "NEVER");
        assert_eq!(notify_param(&Notify { success: true, failure: true, delay: false }), "SUCCESS,FAILURE");
    }

    #[tokio::test]
    async fn the_stored_return_path_is_not_sent() {
        let chunks: Vec<wmail_core::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"Return-Path: <a@x>\r\nReceived: from x\r\n\tby y\r\n")),
            Ok(Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n")),
        ];
        let stream = without_return_path(futures::stream::iter(chunks).boxed()).await.unwrap();
        let out: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(out.concat(), b"Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n");
        let plain: Vec<wmail_core::Result<Bytes>> = vec![Ok(Bytes::from_static(b"Subject: x\r\n\r\n"))];
        let stream = without_return_path(futures::stream::iter(plain).boxed()).await.unwrap();
        let out: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(out.concat(), b"Subject: x\r\n\r\n");
    }

    #[test]
    fn the_first_received_field_names_the_client() {
        let message = b"Received: from mx.test ([192.0.2.7])\r\n\tby us\r\nReceived: from x ([198.51.100.1])\r\n\r\n";
        assert_eq!(received_from_ip(message), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            received_from_ip(b"Received: from v6 ([IPv6:2001:db8::1])\r\n"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(received_from_ip(b"Subject: none\r\n\r\n"), None);
    }
}
