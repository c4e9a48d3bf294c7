//! wmail-protection decides what happens to mail arriving from the internet (the `smtp`
//! listener, port 25): sender authentication with mail-auth (SPF, DKIM, ARC, DMARC), DNSBL
//! and reverse-DNS checks, content rules and attachment types, clamd antivirus, and the
//! verdict that turns them into an action. It knows nothing of SMTP syntax or storage: the
//! SMTP session asks at each stage and carries out the answer.
//!
//! ```text
//!  connect ─► DNSBL zones, reverse DNS ──────────────► ConnectionReport (awaited at MAIL)
//!  MAIL    ─► SPF of the HELO and MAIL FROM identities ► SenderReport   (may refuse)
//!  data    ─► DKIM, ARC, DMARC, clamd, attachments, rules ─► Verdict ─► headers + action
//! ```

mod auth;
pub mod clamd;
mod content;
mod dnsbl;
mod metrics;
mod strip;
mod verdict;

pub use auth::SenderReport;
pub use clamd::ScanResult;
pub use content::{ContentRule, RuleTarget};
pub use dnsbl::{DnsblAction, DnsblZone};
pub use metrics::ProtectionMetrics;
pub use verdict::{Action, Check, Refusal, Verdict, VerdictLog, VerdictQuery, VerdictRecord};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use mail_auth::{IprevResult, MessageAuthenticator};

/// What DMARC failures lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcEnforcement {
    /// Reject or file as junk as the sender domain's policy asks (RFC 7489 §6.3).
    Enforce,
    /// Only record the result (a local override, RFC 7489 §6.7).
    Tag,
}

/// What an infected message leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirusAction {
    /// Refuse it (`550 5.7.1`).
    Reject,
    /// Hold it in the recipients' quarantine.
    Quarantine,
    /// Deliver it without its infected attachments (each replaced by a short notice);
    /// refused when the virus is not in an attachment.
    Strip,
}

/// Streamed clamd scans at once (clamd's default `MaxThreads` is 10: the held messages'
/// scans keep the rest).
const STREAMED_SCANS: usize = 4;

/// What to do when clamd cannot be reached or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanFailure {
    /// Refuse with a temporary error (`451`): the sender retries later.
    TempFail,
    /// Accept the message unscanned (noted in its headers and the verdict log).
    Accept,
}

/// Settings of the inbound checks.
#[derive(Debug, Clone)]
pub struct ProtectionConfig {
    /// This server's name: the authserv-id of `Authentication-Results` (RFC 8601 §2.5).
    pub hostname: String,
    /// Clients in these networks skip the checks (relays and applications of one's own).
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// Check SPF (RFC 7208) for the HELO and MAIL FROM identities.
    pub spf: bool,
    /// Refuse at MAIL FROM when SPF says `fail` (RFC 7208 §8.4; off: only scored).
    pub reject_spf_fail: bool,
    /// Verify DKIM signatures (RFC 6376).
    pub dkim: bool,
    /// Verify ARC chains (RFC 8617).
    pub arc: bool,
    /// Evaluate DMARC (RFC 7489) and what its failures lead to; `None` skips DMARC.
    pub dmarc: Option<DmarcEnforcement>,
    /// DNSBL zones checked for every client address.
    pub dnsbl: Vec<DnsblZone>,
    /// Refuse clients whose address has no forward-confirmed reverse DNS name.
    pub require_reverse_dns: bool,
    /// Refuse clients whose HELO name does not resolve to their address (IP literals are
    /// checked literally).
    pub helo_must_resolve: bool,
    /// Header and body rules with their scores.
    pub rules: Vec<ContentRule>,
    /// Words or phrases (case-insensitive) scored when found in the subject or text.
    pub keywords: Vec<String>,
    /// Score of each keyword found.
    pub keyword_score: f32,
    /// File extensions refused as attachments, also inside zip archives (lower case,
    /// without the dot).
    pub blocked_extensions: Vec<String>,
    /// From this score on the message is marked as spam (`X-Spam-Flag: YES`).
    pub spam_score: f32,
    /// Prefix added to the subject of spam ("" for none).
    pub subject_prefix: String,
    /// From this score on the message is filed in the recipient's Junk mailbox.
    pub junk_score: f32,
    /// From this score on the message is held in the recipients' quarantine.
    pub quarantine_score: f32,
    /// Days quarantined messages are kept (stated in digests).
    pub quarantine_retention_days: u64,
    /// From this score on the message is refused at the end of its data (`550 5.7.1`).
    pub reject_score: f32,
    /// The clamd to scan with (`host:port` or `unix:/path`); `None`: no antivirus.
    pub clamd: Option<String>,
    /// What a clamd failure leads to.
    pub clamd_failure: ScanFailure,
    /// What an infected message leads to.
    pub virus_action: VirusAction,
    /// Messages larger than this are not scanned for content (their headers still get
    /// the sender checks that need no body).
    pub max_scan_size: usize,
    /// Memory all messages held for scanning may take together; past it new messages are
    /// deferred (`451 4.3.1`) instead of the node running out of memory.
    pub scan_memory: usize,
    /// Greylisting (RFC 6647), when on.
    pub greylist: Option<GreylistSettings>,
    /// Ask the Bayesian classifier (trained from users' moves into and out of Junk).
    pub bayes: bool,
    /// Spam and ham messages a domain's classifier must have learnt before it is asked.
    pub bayes_min_messages: u64,
    /// Spam-trap addresses (lower case): a client that sends to one is blocked.
    pub trap_addresses: Vec<String>,
    /// How long a spam-trap hit blocks the client, on every node.
    pub trap_block: std::time::Duration,
}

/// Greylisting settings: how long a new triplet waits, and who never waits.
#[derive(Debug, Clone)]
pub struct GreylistSettings {
    /// How long the first message of a triplet is deferred.
    pub delay: std::time::Duration,
    /// How long after its first attempt a retry is still recognised.
    pub retry_window: std::time::Duration,
    /// How long a triplet that passed stays accepted after its last message.
    pub lifetime: std::time::Duration,
    /// Client networks never greylisted.
    pub whitelist_networks: Vec<ipnet::IpNet>,
    /// Sender domains (and their subdomains) never greylisted, lower case.
    pub whitelist_domains: Vec<String>,
}

impl ProtectionConfig {
    /// Defaults: every check on, DMARC enforced, no DNSBL zone and no antivirus until
    /// configured.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            trusted_networks: Vec::new(),
            spf: true,
            reject_spf_fail: false,
            dkim: true,
            arc: true,
            dmarc: Some(DmarcEnforcement::Enforce),
            dnsbl: Vec::new(),
            require_reverse_dns: false,
            helo_must_resolve: false,
            rules: Vec::new(),
            keywords: Vec::new(),
            keyword_score: 2.0,
            blocked_extensions: [
                "exe", "scr", "com", "pif", "bat", "cmd", "vbs", "vbe", "js", "jse", "wsf", "msi", "hta",
            ]
            .map(String::from)
            .to_vec(),
            spam_score: 5.0,
            subject_prefix: "[SPAM]".into(),
            junk_score: 6.0,
            quarantine_score: 10.0,
            quarantine_retention_days: 30,
            reject_score: 15.0,
            clamd: None,
            clamd_failure: ScanFailure::TempFail,
            virus_action: VirusAction::Reject,
            max_scan_size: 20 * 1024 * 1024,
            scan_memory: 512 * 1024 * 1024,
            greylist: None,
            trap_addresses: Vec::new(),
            trap_block: std::time::Duration::from_secs(15 * 60),
            bayes: true,
            bayes_min_messages: 50,
        }
    }
}

/// An error in the configuration of the checks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A content rule's pattern is not a valid regular expression.
    #[error("content rule {rule:?}: {error}")]
    Rule {
        /// The rule's name.
        rule: String,
        /// What is wrong with its pattern.
        error: regex::Error,
    },
    /// The DNS resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Resolver(std::io::Error),
    /// The clamd address is neither `host:port` nor `unix:/path`.
    #[error("clamd address {0:?}: use \"host:port\" or \"unix:/path/to/clamd.ctl\"")]
    Clamd(String),
}

/// What the checks made of a client at connection time.
#[derive(Debug, Clone, Default)]
pub struct ConnectionReport {
    /// The DNSBL zones that list the client.
    pub dnsbl_hits: Vec<dnsbl::DnsblHit>,
    /// Forward-confirmed reverse DNS (RFC 8601 §3 `iprev`): `pass` with the name, or why not.
    pub iprev: Option<(String, Option<String>)>,
    /// Why the connection is refused, if it is.
    pub refusal: Option<Refusal>,
}

/// Everything known about a transaction when its data is complete.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// Its HELO/EHLO name.
    pub helo: &'a str,
    /// The reverse path (empty for `<>`).
    pub mail_from: &'a str,
    /// The accepted recipients.
    pub recipients: &'a [String],
    /// The connection checks.
    pub connection: &'a ConnectionReport,
    /// The SPF results, when SPF ran.
    pub sender: Option<&'a SenderReport>,
    /// Every recipient always accepts this sender: the score thresholds do not apply.
    pub allowed_sender: bool,
    /// The Bayesian classifier's spam probability for the message, once it is trained.
    pub bayes: Option<f64>,
}

/// The inbound checks of one node, shared by every SMTP session.
pub struct Protection {
    config: ProtectionConfig,
    authenticator: MessageAuthenticator,
    content: content::ContentChecks,
    clamd: Option<clamd::Clamd>,
    /// Streamed scans (messages over the scan limit) allowed at once.
    stream_slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<ProtectionMetrics>,
    log: VerdictLog,
    /// The scan memory budget, in KiB.
    scan_budget: Arc<tokio::sync::Semaphore>,
    /// KiB of the budget each client network holds (a quarter at most each).
    scan_shares: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

/// Memory reserved from the node's scan budget for one held message; given back when
/// dropped.
pub struct ScanReservation {
    permit: tokio::sync::OwnedSemaphorePermit,
    client: IpAddr,
    shares: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

impl std::fmt::Debug for ScanReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanReservation").field("kib", &self.permit.num_permits()).finish()
    }
}

impl Drop for ScanReservation {
    fn drop(&mut self) {
        let mut shares = self.shares.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = shares.get_mut(&self.client) {
            *held = held.saturating_sub(self.permit.num_permits());
            if *held == 0 {
                shares.remove(&self.client);
            }
        }
    }
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection").field("config", &self.config).finish()
    }
}

impl Protection {
    /// Sets the checks up, resolving DNS through `dns_servers` (empty: resolv.conf).
    pub fn new(
        config: ProtectionConfig,
        dns_servers: &[SocketAddr],
        metrics: Arc<ProtectionMetrics>,
        log: VerdictLog,
    ) -> Result<Self, ConfigError> {
        let resolver = wmail_net::dns::resolver(dns_servers).map_err(ConfigError::Resolver)?;
        let content = content::ContentChecks::new(&config)?;
        let clamd = match &config.clamd {
            Some(address) => Some(clamd::Clamd::new(address).ok_or_else(|| ConfigError::Clamd(address.clone()))?),
            None => None,
        };
        let scan_budget = Arc::new(tokio::sync::Semaphore::new(config.scan_memory / 1024));
        Ok(Self {
            config,
            authenticator: MessageAuthenticator(resolver),
            content,
            clamd,
            stream_slots: Arc::new(tokio::sync::Semaphore::new(STREAMED_SCANS)),
            metrics,
            log,
            scan_budget,
            scan_shares: Arc::default(),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &ProtectionConfig {
        &self.config
    }

    /// Whether `client` skips the checks.
    pub fn trusts(&self, client: IpAddr) -> bool {
        self.config.trusted_networks.iter().any(|network| network.contains(&client))
    }

    /// The greylisting settings when a message from `client` with reverse path `sender`
    /// is to be greylisted; `None` when greylisting is off or whitelists them.
    pub fn greylisting(&self, client: IpAddr, sender: &str) -> Option<&GreylistSettings> {
        let settings = self.config.greylist.as_ref()?;
        if settings.whitelist_networks.iter().any(|network| network.contains(&client)) {
            return None;
        }
        let domain = sender.rsplit_once('@').map(|(_, domain)| domain.to_lowercase()).unwrap_or_default();
        let listed = settings.whitelist_domains.iter().any(|listed| {
            domain == *listed || domain.strip_suffix(listed.as_str()).is_some_and(|rest| rest.ends_with('.'))
        });
        (!listed).then_some(settings)
    }

    /// Whether `address` is a spam trap.
    pub fn is_trap(&self, address: &str) -> bool {
        self.config.trap_addresses.iter().any(|trap| trap.eq_ignore_ascii_case(address))
    }

    /// The node's verdict log.
    pub fn log(&self) -> &VerdictLog {
        &self.log
    }

    /// Grows `reserved` to cover `bytes` of a message held for `client` from the node's
    /// scan budget; false when the budget cannot cover it now, or when the client's network
    /// already holds a quarter of it (one sender cannot starve everyone else's mail).
    pub fn reserve_scan_memory(&self, client: IpAddr, reserved: &mut Option<ScanReservation>, bytes: usize) -> bool {
        let wanted = bytes.div_ceil(1024);
        let held = reserved.as_ref().map_or(0, |reservation| reservation.permit.num_permits());
        if wanted <= held {
            return true;
        }
        let more_kib = wanted - held;
        let client = wmail_net::client_network(client);
        let mut shares = self.scan_shares.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let share = shares.entry(client).or_insert(0);
        if *share + more_kib > (self.config.scan_memory / 1024 / 4).max(1) {
            if *share == 0 {
                shares.remove(&client);
            }
            return false;
        }
        let Ok(more) = self.scan_budget.clone().try_acquire_many_owned(more_kib as u32) else {
            if *share == 0 {
                shares.remove(&client);
            }
            return false;
        };
        *share += more_kib;
        drop(shares);
        match reserved {
            Some(reservation) => reservation.permit.merge(more),
            None => *reserved = Some(ScanReservation { permit: more, client, shares: self.scan_shares.clone() }),
        }
        true
    }

    /// Connection-time checks of a client address: DNSBL zones (all at once) and reverse DNS.
    pub async fn connection(&self, client: IpAddr) -> ConnectionReport {
        let started = Instant::now();
        let zones = dnsbl::lookup_all(&self.authenticator.0, &self.config.dnsbl, client);
        let iprev = self.authenticator.verify_iprev(client);
        let (dnsbl_hits, iprev) = tokio::join!(zones, iprev);
        let name = iprev.ptr.as_ref().and_then(|names| names.first()).map(|name| name.trim_end_matches('.').to_owned());
        let (iprev_result, iprev_pass) = match &iprev.result {
            IprevResult::Pass => ("pass".to_owned(), true),
            IprevResult::Fail(error) => (format!("fail ({error})"), false),
            IprevResult::TempError(error) => (format!("temperror ({error})"), false),
            IprevResult::PermError(error) => (format!("permerror ({error})"), false),
            IprevResult::None => ("none".to_owned(), false),
        };
        let refusal = if let Some(hit) = dnsbl_hits.iter().find(|hit| hit.action == DnsblAction::Reject) {
            Some(Refusal::permanent(
                "5.7.1",
                format!(
                    "your address {client} is listed by {} ({}); see that list to be removed",
                    hit.zone, hit.answer
                ),
            ))
        } else if self.config.require_reverse_dns && !iprev_pass && !matches!(iprev.result, IprevResult::TempError(_)) {
            Some(Refusal::permanent(
                "5.7.25",
                format!("your address {client} has no reverse DNS name that resolves back to it (RFC 7372 §3.3)"),
            ))
        } else {
            None
        };
        self.metrics.observe("connection", started);
        for hit in &dnsbl_hits {
            self.metrics.checks.with_label_values(&["dnsbl", &hit.zone]).inc();
        }
        ConnectionReport { dnsbl_hits, iprev: Some((iprev_result, name)), refusal }
    }

    /// Whether the HELO name resolves to the client's address (when required): the
    /// refusal if not. Temporary DNS failures never refuse.
    pub async fn helo(&self, client: IpAddr, helo: &str) -> Option<Refusal> {
        if !self.config.helo_must_resolve {
            return None;
        }
        let literal = helo.trim_start_matches('[').trim_end_matches(']');
        let literal = literal.strip_prefix("IPv6:").unwrap_or(literal);
        if let Ok(address) = literal.parse::<IpAddr>() {
            return (address != client).then(|| {
                Refusal::permanent("5.7.1", format!("HELO {helo} is not your address {client}; send your own name"))
            });
        }
        match self.authenticator.0.lookup_ip(format!("{}.", helo.trim_end_matches('.'))).await {
            Ok(addresses) if addresses.iter().any(|address| address == client) => None,
            Ok(_) => Some(Refusal::permanent(
                "5.7.1",
                format!("HELO name {helo} does not resolve to your address {client}; send a name that does"),
            )),
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => Some(Refusal::permanent(
                "5.7.1",
                format!("HELO name {helo} does not resolve; send a fully qualified name that resolves to {client}"),
            )),
            Err(error) => {
                tracing::debug!(%helo, %error, "HELO lookup failed; not refusing on a temporary error");
                None
            }
        }
    }

    /// SPF of the HELO and MAIL FROM identities (RFC 7208 §2.3, §2.4), and the refusal
    /// a `fail` leads to when so configured.
    pub async fn sender(&self, client: IpAddr, helo: &str, mail_from: &str) -> Option<SenderReport> {
        if !self.config.spf {
            return None;
        }
        let started = Instant::now();
        let report = auth::check_spf(&self.authenticator, &self.config.hostname, client, helo, mail_from).await;
        self.metrics.checks.with_label_values(&["spf", report.mail_from_result()]).inc();
        self.metrics.observe("spf", started);
        Some(report)
    }

    /// Whether an SPF result refuses the sender (RFC 7208 §8.4: `550 5.7.23`, RFC 7372).
    pub fn sender_refusal(&self, report: &SenderReport) -> Option<Refusal> {
        (self.config.reject_spf_fail && report.fails())
            .then(|| Refusal::permanent("5.7.23", format!("SPF check failed: {}", report.explanation())))
    }

    /// Checks a complete message (at most [`ProtectionConfig::max_scan_size`] bytes) and
    /// decides what becomes of it.
    pub async fn message(&self, envelope: &Envelope<'_>, message: &[u8]) -> Verdict {
        let started = Instant::now();
        let mut verdict = Verdict::default();
        for hit in &envelope.connection.dnsbl_hits {
            verdict.add(format!("DNSBL {}", hit.zone), hit.answer.clone(), hit.score());
        }
        if let Some((result, name)) = &envelope.connection.iprev {
            let score = if result == "pass" { 0.0 } else { 1.0 };
            verdict.add("IPREV", format!("{result} {}", name.as_deref().unwrap_or("")).trim_end().to_owned(), score);
        }
        let authentication = auth::check_message(&self.authenticator, &self.config, envelope, message).await;
        authentication.score(&mut verdict);
        if let Some(refusal) = authentication.refusal.clone() {
            verdict.refuse(refusal);
        } else if authentication.quarantine {
            verdict.file_as_junk("the sender domain's DMARC policy asks for quarantine");
        }
        if let Some(probability) = envelope.bayes {
            // SpamAssassin's BAYES_* bands, roughly.
            let score = match probability {
                p if p >= 0.99 => 3.5,
                p if p >= 0.95 => 3.0,
                p if p >= 0.80 => 2.0,
                p if p >= 0.60 => 1.0,
                p if p <= 0.01 => -2.0,
                p if p <= 0.05 => -1.0,
                _ => 0.0,
            };
            verdict.add("BAYES", format!("spam probability {probability:.3}"), score);
        }
        // Parsing and unpacking are CPU work: off the async workers when the runtime allows.
        if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| self.content.check(message, &mut verdict));
        } else {
            self.content.check(message, &mut verdict);
        }
        if let Some(clamd) = &self.clamd {
            let scan_started = Instant::now();
            match clamd.scan(message).await {
                Ok(clamd::ScanResult::Clean) => verdict.add("CLAMD", "clean", 0.0),
                Ok(clamd::ScanResult::Infected(name)) => {
                    verdict.add("CLAMD", format!("infected: {name}"), 0.0);
                    let refusal = || virus_refusal(&name);
                    match self.config.virus_action {
                        VirusAction::Reject => verdict.refuse(refusal()),
                        VirusAction::Quarantine => verdict.hold(&format!("virus {name}")),
                        VirusAction::Strip => match strip::infected_attachments(clamd, message).await {
                            Ok(Some((cleaned, removed))) => {
                                verdict.add("CLAMD_STRIPPED", removed.join(", "), 0.0);
                                verdict.replacement = Some(cleaned);
                            }
                            Ok(None) => verdict.refuse(refusal()),
                            Err(error) => {
                                tracing::warn!(%error, "clamd failed while stripping attachments");
                                verdict.refuse(refusal());
                            }
                        },
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "clamd scan failed");
                    verdict.add("CLAMD", format!("error: {error}"), 0.0);
                    if self.config.clamd_failure == ScanFailure::TempFail {
                        verdict.refuse(scanner_unavailable());
                    }
                }
            }
            self.metrics.observe("clamd", scan_started);
        }
        // An allowed sender counts only when authenticated: MAIL FROM is easy to forge.
        let allowed = envelope.allowed_sender && authentication.sender_verified;
        if envelope.allowed_sender {
            let result = if allowed { "every recipient accepts this sender" } else { "not authenticated: ignored" };
            verdict.add("ALLOWED_SENDER", result, 0.0);
        }
        verdict.decide(&self.config, allowed);
        verdict.authentication_results = authentication.header;
        self.metrics.actions.with_label_values(&[verdict.action.label()]).inc();
        self.metrics.observe("message", started);
        verdict
    }

    /// The verdict for a message too large to scan: only what the envelope showed.
    pub fn unscanned(&self, envelope: &Envelope<'_>) -> Verdict {
        let mut verdict = Verdict::default();
        for hit in &envelope.connection.dnsbl_hits {
            verdict.add(format!("DNSBL {}", hit.zone), hit.answer.clone(), hit.score());
        }
        verdict.add("SIZE", "over the scan limit: content not checked", 0.0);
        verdict.authentication_results = auth::envelope_only_header(&self.config.hostname, envelope);
        let verified = envelope.sender.is_some_and(|sender| sender.mail_from_result() == "pass");
        verdict.decide(&self.config, envelope.allowed_sender && verified);
        verdict
    }

    /// Starts the antivirus scan of a message too large to hold, fed with what is stored as
    /// it streams ([`clamd::Stream::push`]); `None` without an antivirus. A message over
    /// the scan limit gets no content rules, but it never skips the virus scan.
    pub async fn stream_scan(&self) -> Option<Result<clamd::Stream, clamd::ScanError>> {
        let clamd = self.clamd.as_ref()?;
        // Each streamed scan holds a clamd thread for as long as its sender takes: a few
        // slow senders must not take all of clamd's threads from the other scans.
        let Ok(slot) = self.stream_slots.clone().try_acquire_owned() else {
            return Some(Err(clamd::ScanError::Busy));
        };
        Some(clamd.stream().await.map(|stream| stream.holding(slot)))
    }

    /// Notes a streamed scan's result in the message's verdict and returns the refusal it
    /// leads to: a virus is refused whatever `virus_action` says (a message too large to
    /// hold can be neither held in quarantine nor stripped), and a failed scan as
    /// `clamd_failure` says.
    pub fn judge_stream_scan(
        &self,
        result: Result<clamd::ScanResult, clamd::ScanError>,
        verdict: &mut Verdict,
    ) -> Option<Refusal> {
        let refusal = match result {
            Ok(clamd::ScanResult::Clean) => {
                verdict.add("CLAMD", "clean (streamed)", 0.0);
                None
            }
            Ok(clamd::ScanResult::Infected(name)) => {
                verdict.add("CLAMD", format!("infected: {name}"), 0.0);
                Some(virus_refusal(&name))
            }
            Err(clamd::ScanError::TooLarge(answer)) => {
                // Never let a virus through by padding it past clamd's limit.
                verdict.add("CLAMD", format!("too large: {answer}"), 0.0);
                Some(Refusal {
                    code: 552,
                    status: "5.3.4".into(),
                    text: "message too large for the virus scanner; send it in smaller parts".into(),
                })
            }
            Err(error) => {
                tracing::warn!(%error, "clamd scan of a message over the scan limit failed");
                verdict.add("CLAMD", format!("error: {error}"), 0.0);
                (self.config.clamd_failure == ScanFailure::TempFail).then(scanner_unavailable)
            }
        };
        if let Some(refusal) = &refusal {
            verdict.action = Action::Refuse(refusal.clone());
        }
        refusal
    }

    /// The message as it is stored: the verdict's headers first, `Authentication-Results`
    /// headers forged with this server's authserv-id removed (RFC 8601 §5), the subject
    /// prefixed when it is spam.
    pub fn rewrite(&self, verdict: &Verdict, message: &[u8]) -> Vec<u8> {
        verdict::rewrite(&self.config, verdict, message)
    }
}

/// The refusal of a message clamd found `name` in.
fn virus_refusal(name: &str) -> Refusal {
    Refusal::permanent("5.7.1", format!("message contains a virus ({name})"))
}

/// The refusal of a message clamd could not scan, when that defers mail.
fn scanner_unavailable() -> Refusal {
    Refusal::temporary("4.3.0", "virus scanner unavailable; try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_client_network_holds_at_most_a_quarter_of_the_scan_budget() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ProtectionConfig::new("mx.test");
        config.scan_memory = 4 * 1024 * 1024;
        let protection = Protection::new(
            config,
            &["127.0.0.1:9".parse().unwrap()],
            Arc::new(ProtectionMetrics::unregistered()),
            VerdictLog::new(dir.path(), 1 << 20),
        )
        .unwrap();
        let greedy: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2::8".parse().unwrap();
        let (mut first, mut second, mut other) = (None, None, None);
        assert!(protection.reserve_scan_memory(greedy, &mut first, 600 * 1024));
        assert!(protection.reserve_scan_memory(greedy, &mut first, 1024 * 1024), "grows within the share");
        assert!(!protection.reserve_scan_memory(neighbour, &mut second, 1024), "same /64, share used up");
        assert!(protection.reserve_scan_memory("192.0.2.1".parse().unwrap(), &mut other, 1024 * 1024));
        drop(first);
        assert!(protection.reserve_scan_memory(neighbour, &mut second, 1024 * 1024), "given back on drop");
    }
}
