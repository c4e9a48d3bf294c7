//! The node configuration: one TOML file (every key optional, unknown keys refused) plus
//! `WMAIL_<SECTION>_<KEY>` environment overrides, validated into [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The fully commented example printed by `wmail config example`.
pub const EXAMPLE: &str = include_str!("wmail.example.toml");

/// The validated node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of the file; 1.
    #[serde(default = "default_version")]
    pub version: u32,
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[listen]`.
    #[serde(default)]
    pub listen: ListenSection,
    /// `[tls]`.
    #[serde(default)]
    pub tls: TlsSection,
    /// `[blob]`.
    #[serde(default)]
    pub blob: BlobSection,
    /// `[delivery]`.
    #[serde(default)]
    pub delivery: DeliverySection,
    /// `[dns]`.
    #[serde(default)]
    pub dns: DnsSection,
    /// `[cluster]`.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// `[smtp]`.
    #[serde(default)]
    pub smtp: SmtpSection,
    /// `[pop3]`.
    #[serde(default)]
    pub pop3: Pop3Section,
    /// `[imap]`.
    #[serde(default)]
    pub imap: ImapSection,
    /// `[security]`.
    #[serde(default)]
    pub security: SecuritySection,
    /// `[search]`.
    #[serde(default)]
    pub search: SearchSection,
    /// `[antispam]`.
    #[serde(default)]
    pub antispam: AntispamSection,
    /// `[antivirus]`.
    #[serde(default)]
    pub antivirus: AntivirusSection,
}

/// `[antispam]`: the checks of mail arriving on the `smtp` listener (port 25).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntispamSection {
    /// Run the checks at all.
    pub enabled: bool,
    /// Clients in these networks skip the checks (like Postfix's mynetworks).
    pub trusted_networks: Vec<String>,
    /// SPF of the HELO and MAIL FROM identities.
    pub spf: bool,
    /// Refuse at MAIL FROM when SPF fails (otherwise scored).
    pub reject_spf_fail: bool,
    /// Verify DKIM signatures.
    pub dkim: bool,
    /// Verify ARC chains.
    pub arc: bool,
    /// `enforce`, `tag` or `off`.
    pub dmarc: String,
    /// DNSBL zones.
    pub dnsbl: Vec<DnsblEntry>,
    /// Refuse clients without forward-confirmed reverse DNS.
    pub require_reverse_dns: bool,
    /// Refuse HELO names that do not resolve to the client.
    pub helo_must_resolve: bool,
    /// Content rules.
    pub rules: Vec<RuleEntry>,
    /// Keywords scored in the subject and text.
    pub keywords: Vec<String>,
    /// Score per keyword found.
    pub keyword_score: f32,
    /// Attachment extensions refused.
    pub blocked_extensions: Vec<String>,
    /// Score from which a message is marked as spam.
    pub spam_score: f32,
    /// Subject prefix of spam ("" for none).
    pub subject_prefix: String,
    /// Score from which a message goes to Junk.
    pub junk_score: f32,
    /// Score from which a message is held in quarantine.
    pub quarantine_score: f32,
    /// Score from which a message is refused.
    pub reject_score: f32,
    /// Days quarantined messages are kept.
    pub quarantine_retention_days: u64,
    /// Hours between quarantine digests to users (0: none).
    pub quarantine_digest_hours: u64,
    /// Largest message scanned, in MiB.
    pub max_scan_size_mb: u64,
    /// Memory for messages held for scanning, in MiB, all together.
    pub scan_memory_mb: u64,
    /// Size of the verdict log before it rotates, in MiB.
    pub verdict_log_mb: u64,
    /// `[antispam.greylist]`.
    pub greylist: GreylistSection,
    /// Ask the Bayesian classifier.
    pub bayes: bool,
    /// Spam and ham messages a domain must have learnt before its classifier is asked.
    pub bayes_min_messages: u64,
    /// Spam-trap addresses.
    pub trap_addresses: Vec<String>,
    /// Minutes a spam-trap hit blocks the client.
    pub trap_block_minutes: u64,
}

/// `[antispam.greylist]`: greylisting (RFC 6647), state shared by every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistSection {
    /// Greylist at all.
    pub enabled: bool,
    /// Seconds a new (client network, sender, recipient) triplet is deferred.
    pub delay_seconds: u64,
    /// Hours after the first attempt a retry is still recognised.
    pub retry_window_hours: u64,
    /// Days a passed triplet stays accepted after its last message.
    pub lifetime_days: u64,
    /// Client networks (CIDR or address) and sender domains never greylisted.
    pub whitelist: Vec<String>,
}

impl Default for GreylistSection {
    fn default() -> Self {
        Self { enabled: false, delay_seconds: 300, retry_window_hours: 48, lifetime_days: 35, whitelist: Vec::new() }
    }
}

impl GreylistSection {
    /// How long idle triplets are kept before pruning.
    pub fn retention(&self) -> Duration {
        Duration::from_secs((self.retry_window_hours * 3_600).max(self.lifetime_days * 86_400))
    }
}

/// A DNSBL zone in `[antispam] dnsbl`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsblEntry {
    /// The zone.
    pub zone: String,
    /// `reject` or `score`.
    #[serde(default = "default_dnsbl_action")]
    pub action: String,
    /// The score added when `action = "score"`.
    #[serde(default = "default_dnsbl_score")]
    pub score: f32,
}

fn default_dnsbl_action() -> String {
    "reject".into()
}

fn default_dnsbl_score() -> f32 {
    3.0
}

/// A content rule in `[[antispam.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// Its name.
    pub name: String,
    /// The header field it matches; absent: the message text.
    #[serde(default)]
    pub header: Option<String>,
    /// The regular expression.
    pub pattern: String,
    /// The score it adds.
    pub score: f32,
}

impl Default for AntispamSection {
    fn default() -> Self {
        let defaults = wmail_protection::ProtectionConfig::new("");
        Self {
            enabled: true,
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            spf: true,
            reject_spf_fail: false,
            dkim: true,
            arc: true,
            dmarc: "enforce".into(),
            dnsbl: Vec::new(),
            require_reverse_dns: false,
            helo_must_resolve: false,
            rules: Vec::new(),
            keywords: Vec::new(),
            keyword_score: defaults.keyword_score,
            blocked_extensions: defaults.blocked_extensions,
            spam_score: defaults.spam_score,
            subject_prefix: defaults.subject_prefix,
            junk_score: defaults.junk_score,
            quarantine_score: defaults.quarantine_score,
            reject_score: defaults.reject_score,
            quarantine_retention_days: 30,
            quarantine_digest_hours: 24,
            max_scan_size_mb: 20,
            scan_memory_mb: 512,
            verdict_log_mb: 64,
            greylist: GreylistSection::default(),
            trap_addresses: Vec::new(),
            trap_block_minutes: 15,
            bayes: true,
            bayes_min_messages: 50,
        }
    }
}

/// `[antivirus]`: clamd scanning of inbound mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntivirusSection {
    /// `host:port` or `unix:/path`; empty: no antivirus.
    pub clamd: String,
    /// `tempfail` or `accept` when clamd fails.
    pub on_failure: String,
    /// `reject`, `quarantine` or `strip` an infected message.
    pub action: String,
}

impl Default for AntivirusSection {
    fn default() -> Self {
        Self { clamd: String::new(), on_failure: "tempfail".into(), action: "reject".into() }
    }
}

/// Parses CIDR networks or single addresses.
fn parse_networks(entries: &[String], what: &str) -> anyhow::Result<Vec<ipnet::IpNet>> {
    entries
        .iter()
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| anyhow::anyhow!("{what}: {entry:?} is not an address or CIDR network"))
        })
        .collect()
}

impl Config {
    /// The settings of the inbound checks, or `None` when they are off.
    pub fn protection(&self) -> anyhow::Result<Option<wmail_protection::ProtectionConfig>> {
        use wmail_protection::{ContentRule, DmarcEnforcement, DnsblAction, DnsblZone, RuleTarget, ScanFailure};
        let spam = &self.antispam;
        if !spam.enabled {
            return Ok(None);
        }
        let mut config = wmail_protection::ProtectionConfig::new(self.server.hostname.clone());
        config.trusted_networks = parse_networks(&spam.trusted_networks, "[antispam] trusted_networks")?;
        config.spf = spam.spf;
        config.reject_spf_fail = spam.reject_spf_fail;
        config.dkim = spam.dkim;
        config.arc = spam.arc;
        config.dmarc = match spam.dmarc.as_str() {
            "enforce" => Some(DmarcEnforcement::Enforce),
            "tag" => Some(DmarcEnforcement::Tag),
            "off" => None,
            other => bail!("[antispam] dmarc = {other:?}: use \"enforce\", \"tag\" or \"off\""),
        };
        config.dnsbl = spam
            .dnsbl
            .iter()
            .map(|entry| {
                let action = match entry.action.as_str() {
                    "reject" => DnsblAction::Reject,
                    "score" => DnsblAction::Score(entry.score),
                    other => bail!("[antispam] dnsbl {}: action = {other:?}; use \"reject\" or \"score\"", entry.zone),
                };
                Ok(DnsblZone { zone: entry.zone.clone(), action })
            })
            .collect::<anyhow::Result<_>>()?;
        config.require_reverse_dns = spam.require_reverse_dns;
        config.helo_must_resolve = spam.helo_must_resolve;
        config.rules = spam
            .rules
            .iter()
            .map(|rule| ContentRule {
                name: rule.name.clone(),
                target: rule.header.clone().map_or(RuleTarget::Body, RuleTarget::Header),
                pattern: rule.pattern.clone(),
                score: rule.score,
            })
            .collect();
        config.keywords = spam.keywords.clone();
        config.keyword_score = spam.keyword_score;
        config.blocked_extensions = spam.blocked_extensions.clone();
        config.spam_score = spam.spam_score;
        config.subject_prefix = spam.subject_prefix.clone();
        config.junk_score = spam.junk_score;
        config.quarantine_score = spam.quarantine_score;
        config.reject_score = spam.reject_score;
        if spam.max_scan_size_mb == 0 || spam.trap_block_minutes == 0 {
            bail!("[antispam] max_scan_size_mb and trap_block_minutes must be 1 or more");
        }
        config.quarantine_retention_days = spam.quarantine_retention_days;
        config.max_scan_size = (spam.max_scan_size_mb as usize) << 20;
        config.scan_memory = (spam.scan_memory_mb as usize) << 20;
        if config.max_scan_size > config.scan_memory / 4 {
            bail!(
                "[antispam] max_scan_size_mb must be at most a quarter of scan_memory_mb (one client may hold a quarter)"
            );
        }
        let antivirus = &self.antivirus;
        config.clamd = (!antivirus.clamd.is_empty()).then(|| antivirus.clamd.clone());
        config.clamd_failure = match antivirus.on_failure.as_str() {
            "tempfail" => ScanFailure::TempFail,
            "accept" => ScanFailure::Accept,
            other => bail!("[antivirus] on_failure = {other:?}: use \"tempfail\" or \"accept\""),
        };
        config.trap_addresses = spam.trap_addresses.iter().map(|address| address.trim().to_lowercase()).collect();
        config.trap_block = Duration::from_secs(spam.trap_block_minutes.saturating_mul(60));
        config.bayes = spam.bayes;
        config.bayes_min_messages = spam.bayes_min_messages;
        let greylist = &spam.greylist;
        if greylist.enabled {
            let mut settings = wmail_protection::GreylistSettings {
                delay: Duration::from_secs(greylist.delay_seconds),
                retry_window: Duration::from_secs(greylist.retry_window_hours * 3_600),
                lifetime: Duration::from_secs(greylist.lifetime_days * 86_400),
                whitelist_networks: Vec::new(),
                whitelist_domains: Vec::new(),
            };
            if settings.retry_window <= settings.delay {
                bail!("[antispam.greylist] retry_window_hours must be longer than delay_seconds");
            }
            for entry in &greylist.whitelist {
                match entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                {
                    Ok(network) => settings.whitelist_networks.push(network),
                    Err(_) if entry.contains('.') && !entry.contains('/') => {
                        settings.whitelist_domains.push(entry.trim_start_matches('@').to_lowercase())
                    }
                    Err(_) => bail!("[antispam.greylist] whitelist entry {entry:?} is neither a network nor a domain"),
                }
            }
            config.greylist = Some(settings);
        }
        config.virus_action = match antivirus.action.as_str() {
            "reject" => wmail_protection::VirusAction::Reject,
            "quarantine" => wmail_protection::VirusAction::Quarantine,
            "strip" => wmail_protection::VirusAction::Strip,
            other => bail!("[antivirus] action = {other:?}: use \"reject\", \"quarantine\" or \"strip\""),
        };
        if !(config.spam_score <= config.junk_score
            && config.junk_score <= config.quarantine_score
            && config.quarantine_score <= config.reject_score)
        {
            bail!("[antispam] needs spam_score <= junk_score <= quarantine_score <= reject_score");
        }
        if spam.quarantine_retention_days == 0 {
            bail!("[antispam] quarantine_retention_days must be 1 or more (the seeds' default is 30)");
        }
        Ok(Some(config))
    }
}

/// `[security]`: login lockout for every protocol (defaults from the seed manuals).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Minutes failed logins are counted over.
    pub login_failure_window_minutes: u64,
    /// Failed logins from one client address in the window that block it.
    pub max_login_failures_per_address: usize,
    /// Failed logins for one account in the window that block it.
    pub max_login_failures_per_account: usize,
    /// Minutes a block lasts.
    pub login_block_minutes: u64,
    /// New connections per client address per minute on each listener (0: no limit).
    pub max_connections_per_minute_per_ip: u32,
    /// Client networks the per-minute limit does not apply to.
    pub rate_limit_exempt: Vec<String>,
    /// Minutes a node remembers a correct password (as a keyed hash, in memory) so the
    /// same login again skips the argon2 check (0: check every login).
    pub remember_logins_minutes: u64,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            login_failure_window_minutes: 10,
            max_login_failures_per_address: 55,
            max_login_failures_per_account: 20,
            login_block_minutes: 2_880,
            max_connections_per_minute_per_ip: 0,
            rate_limit_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            remember_logins_minutes: 10,
        }
    }
}

impl SecuritySection {
    /// Connection limits of a listener kind: open sessions from its section, the rate
    /// from here.
    pub fn connection_limits(
        &self,
        max_total: usize,
        max_per_ip: usize,
    ) -> anyhow::Result<wmail_net::ConnectionLimits> {
        let exempt = parse_networks(&self.rate_limit_exempt, "[security] rate_limit_exempt")?;
        Ok(wmail_net::ConnectionLimits {
            max_total,
            max_per_ip,
            max_per_ip_per_minute: self.max_connections_per_minute_per_ip,
            rate_exempt: exempt.into(),
        })
    }

    /// The lockout policy these settings describe.
    pub fn lockout(&self) -> wmail_core::LockoutPolicy {
        wmail_core::LockoutPolicy {
            window: std::time::Duration::from_secs(self.login_failure_window_minutes.saturating_mul(60)),
            max_failures_per_address: self.max_login_failures_per_address,
            max_failures_per_account: self.max_login_failures_per_account,
            block: std::time::Duration::from_secs(self.login_block_minutes.saturating_mul(60)),
        }
    }

    /// How long a node remembers a correct password (`remember_logins_minutes`).
    pub fn remember_logins(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.remember_logins_minutes.saturating_mul(60))
    }
}

/// `[pop3]`: limits of the POP3 listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Section {
    /// Open POP3 sessions per listener.
    pub max_connections: usize,
    /// Open POP3 sessions per client address and listener.
    pub max_connections_per_ip: usize,
    /// RFC 2449 LOGIN-DELAY: least seconds between two logins of one account (0: none).
    pub login_delay_seconds: u64,
    /// Seconds the exclusive maildrop lock lasts unless renewed: after a node dies, its
    /// sessions' maildrops stay locked this long.
    pub maildrop_lease_seconds: u64,
}

impl Default for Pop3Section {
    fn default() -> Self {
        Self { max_connections: 1000, max_connections_per_ip: 20, login_delay_seconds: 0, maildrop_lease_seconds: 900 }
    }
}

/// `[imap]`: limits of the IMAP listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapSection {
    /// Open IMAP sessions per listener.
    pub max_connections: usize,
    /// Open IMAP sessions per client address and listener (offices behind one NAT
    /// address need many; each mail client opens several).
    pub max_connections_per_ip: usize,
    /// Largest message APPEND accepts, in bytes (advertised as APPENDLIMIT).
    pub max_append_size: u64,
    /// Whether LOGIN works on the plaintext port before STARTTLS (never in production).
    pub allow_plaintext_auth: bool,
}

impl Default for ImapSection {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_append_size: 50 * 1024 * 1024,
            allow_plaintext_auth: false,
        }
    }
}

/// `[smtp]`: limits of the SMTP listeners (defaults from the seed manuals).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Largest message accepted, in bytes.
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Open SMTP sessions per listener.
    pub max_connections: usize,
    /// Open SMTP sessions per client address and listener.
    pub max_connections_per_ip: usize,
    /// Whether VRFY reveals if a local address exists.
    pub vrfy: bool,
    /// Whether EXPN lists alias members.
    pub expn: bool,
    /// Recipients an authenticated user may send to per hour (0: no limit).
    pub max_recipients_per_hour: u32,
    /// Recipients an authenticated user may send to per day (0: no limit).
    pub max_recipients_per_day: u32,
    /// Messages with one subject an authenticated user may send per day (0: no limit).
    pub max_same_subject_per_day: u32,
}

impl Default for SmtpSection {
    fn default() -> Self {
        Self {
            max_message_size: 20 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 20,
            vrfy: false,
            expn: false,
            max_recipients_per_hour: 200,
            max_recipients_per_day: 0,
            max_same_subject_per_day: 8,
        }
    }
}

fn default_version() -> u32 {
    1
}

/// `[server]`: identity and data directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Name used in greetings and headers.
    pub hostname: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// MiB kept free on the data disk: below it new mail is refused (temporarily).
    pub min_free_disk_mb: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self { hostname: "localhost".into(), data_dir: PathBuf::from("./wmail-data"), min_free_disk_mb: 256 }
    }
}

/// `[listen]`: the addresses of every service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSection {
    pub smtp: Vec<String>,
    pub submission: Vec<String>,
    pub submissions: Vec<String>,
    pub lmtp: Vec<String>,
    pub imap: Vec<String>,
    pub imaps: Vec<String>,
    pub pop3: Vec<String>,
    pub pop3s: Vec<String>,
    pub managesieve: Vec<String>,
    pub http: Vec<String>,
    pub proxy_protocol_from: Vec<String>,
}

impl ListenSection {
    /// Every service with its addresses, in the order of the config file.
    pub fn services(&self) -> [(&'static str, &Vec<String>); 10] {
        [
            ("smtp", &self.smtp),
            ("submission", &self.submission),
            ("submissions", &self.submissions),
            ("lmtp", &self.lmtp),
            ("imap", &self.imap),
            ("imaps", &self.imaps),
            ("pop3", &self.pop3),
            ("pop3s", &self.pop3s),
            ("managesieve", &self.managesieve),
            ("http", &self.http),
        ]
    }
}

impl Default for ListenSection {
    fn default() -> Self {
        Self {
            smtp: vec![],
            submission: vec![],
            submissions: vec![],
            lmtp: vec![],
            imap: vec![],
            imaps: vec![],
            pop3: vec![],
            pop3s: vec![],
            managesieve: vec![],
            http: vec!["127.0.0.1:8080".into()],
            proxy_protocol_from: vec![],
        }
    }
}

/// `[tls]`: certificate and key files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[blob]`: where message bodies live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobSection {
    pub backend: String,
    pub bucket: String,
    pub endpoint: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub gc_grace_hours: u64,
    pub cache_size_mb: u64,
}

impl Default for BlobSection {
    fn default() -> Self {
        Self {
            backend: "local".into(),
            bucket: "wmail".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            gc_grace_hours: 24,
            cache_size_mb: 0,
        }
    }
}

/// `[search]`: the node's full-text index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSection {
    /// Keep and use the full-text index on this node.
    pub enabled: bool,
}

impl Default for SearchSection {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[delivery]`: outbound queue settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Port used for MX hosts.
    pub remote_port: u16,
    /// `host:port` to relay everything through; empty: MX routing.
    pub smarthost: String,
    /// Login at the smarthost (AUTH, only over TLS); empty: none.
    pub smarthost_user: String,
    /// Its password (or `WMAIL_DELIVERY_SMARTHOST_PASSWORD`).
    pub smarthost_password: String,
    /// Waits between attempts (`"30s"`, `"5m"`, `"1h"`, `"2d"`); the last one repeats.
    pub retry_schedule: Vec<String>,
    /// How long a message is retried before it bounces.
    pub queue_lifetime: String,
    /// When the sender hears that delivery is delayed; `""` or `"0"`: never.
    pub delay_notice: String,
    /// Messages delivered at once by this node.
    pub concurrency: usize,
    /// Connections at once to one destination domain.
    pub per_destination: usize,
    /// RET=FULL bounces return the message only up to this many bytes.
    pub bounce_size_limit: u64,
    /// A PEM file of extra CA certificates trusted by the `require-verified` policy.
    pub tls_ca_file: String,
    /// TCP connect timeout, seconds.
    pub connect_timeout_seconds: u64,
    /// Per-domain static routes (the seeds' "direct delivery").
    pub routes: std::collections::BTreeMap<String, RouteSection>,
    /// Per-domain TLS policy: `opportunistic`, `require`, `require-verified`, `disabled`.
    pub tls: std::collections::BTreeMap<String, String>,
}

/// One `[delivery.routes]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// `host:port` targets in order.
    pub targets: Vec<String>,
    /// Whether the domain's MX hosts are tried when the targets fail.
    #[serde(default)]
    pub mx_fallback: bool,
}

impl Default for DeliverySection {
    fn default() -> Self {
        Self {
            remote_port: 25,
            smarthost: String::new(),
            smarthost_user: String::new(),
            smarthost_password: String::new(),
            retry_schedule: ["5m", "10m", "30m", "1h", "2h"].map(String::from).to_vec(),
            queue_lifetime: "5d".into(),
            delay_notice: "4h".into(),
            concurrency: 100,
            per_destination: 20,
            bounce_size_limit: 1024 * 1024,
            tls_ca_file: String::new(),
            connect_timeout_seconds: 30,
            routes: Default::default(),
            tls: Default::default(),
        }
    }
}

/// Parses `"90s"`, `"5m"`, `"1h"`, `"2d"` (a bare number is seconds).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a duration like \"30s\", \"5m\", \"1h\" or \"2d\""))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{text:?} has an unknown unit; use s, m, h or d"),
    };
    Ok(Duration::from_secs(number * seconds))
}

/// `[dns]`: resolvers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    pub servers: Vec<String>,
}

/// `[cluster]`: identity and membership.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub node_id: u64,
    pub listen: String,
    pub advertise: String,
    pub join: String,
    pub join_token: String,
    pub snapshot_every: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:7443".into(),
            advertise: String::new(),
            join: String::new(),
            join_token: String::new(),
            snapshot_every: wmail_core::DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

impl ClusterSection {
    /// The address other nodes reach this one at.
    pub fn advertise_addr(&self) -> &str {
        if self.advertise.is_empty() { &self.listen } else { &self.advertise }
    }
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("an empty config is valid")
    }
}

impl Config {
    /// Reads `path` (or the defaults when `None`), applies environment overrides and
    /// validates. Errors name the file, the line and the key.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let text = match path {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?
            }
            None => String::new(),
        };
        let origin = path.map(|p| p.display().to_string()).unwrap_or_else(|| "config".into());
        // Parse the file as written first, so errors point at its lines and keys.
        toml::from_str::<Config>(&text).map_err(|error| anyhow::anyhow!("{origin}: {error}"))?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|error| anyhow::anyhow!("{origin}: {error}"))?;
        apply_env_overrides(&mut table, std::env::vars())?;
        let merged = toml::to_string(&table)?;
        let config: Config =
            toml::from_str(&merged).map_err(|error| anyhow::anyhow!("WMAIL_* environment override: {error}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.version != 1 {
            bail!("version = {} is not supported by this release; use version = 1", self.version);
        }
        if self.smtp.max_connections == 0 || self.smtp.max_connections_per_ip == 0 || self.smtp.max_recipients == 0 {
            bail!("[smtp] max_connections, max_connections_per_ip and max_recipients must be 1 or more");
        }
        let security = &self.security;
        if security.max_login_failures_per_address == 0 || security.max_login_failures_per_account == 0 {
            bail!("[security] max_login_failures_per_address and max_login_failures_per_account must be 1 or more");
        }
        if self.pop3.max_connections == 0 || self.pop3.max_connections_per_ip == 0 {
            bail!("[pop3] max_connections and max_connections_per_ip must be 1 or more");
        }
        if self.pop3.maildrop_lease_seconds < 2 {
            bail!("[pop3] maildrop_lease_seconds must be 2 or more (900, the default, suits production)");
        }
        if self.imap.max_connections == 0 || self.imap.max_connections_per_ip == 0 || self.imap.max_append_size == 0 {
            bail!("[imap] max_connections, max_connections_per_ip and max_append_size must be 1 or more");
        }
        if self.cluster.node_id == 0 {
            bail!("[cluster] node_id must be 1 or greater");
        }
        self.protection()?;
        parse_networks(&self.security.rate_limit_exempt, "[security] rate_limit_exempt")?;
        match self.blob.backend.as_str() {
            "local" | "s3" => {}
            other => bail!("[blob] backend = {other:?} is unknown; use \"local\" or \"s3\""),
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("[tls] needs both cert and key, or neither (then a self-signed certificate is generated)");
        }
        for (name, addresses) in self.listen.services() {
            for address in addresses {
                address
                    .parse::<std::net::SocketAddr>()
                    .map_err(|_| anyhow::anyhow!("[listen] {name} = {address:?} is not an \"ip:port\" address"))?;
            }
        }
        for server in &self.dns.servers {
            server
                .parse::<std::net::SocketAddr>()
                .map_err(|_| anyhow::anyhow!("[dns] servers entry {server:?} is not an \"ip:port\" address"))?;
        }
        if !self.delivery.smarthost.is_empty() && !self.delivery.smarthost.contains(':') {
            bail!("[delivery] smarthost = {:?} needs a port, e.g. \"relay.example.com:587\"", self.delivery.smarthost);
        }
        if self.delivery.remote_port == 0 {
            bail!("[delivery] remote_port must be 1 to 65535");
        }
        if !self.delivery.smarthost_user.is_empty() && self.delivery.smarthost.is_empty() {
            bail!("[delivery] smarthost_user is set but smarthost is empty; set smarthost = \"host:port\"");
        }
        if self.delivery.retry_schedule.is_empty() {
            bail!("[delivery] retry_schedule needs at least one wait, e.g. [\"5m\"]");
        }
        for wait in &self.delivery.retry_schedule {
            parse_duration(wait).map_err(|error| anyhow::anyhow!("[delivery] retry_schedule: {error}"))?;
        }
        parse_duration(&self.delivery.queue_lifetime).map_err(|e| anyhow::anyhow!("[delivery] queue_lifetime: {e}"))?;
        if !self.delivery.delay_notice.is_empty() {
            parse_duration(&self.delivery.delay_notice).map_err(|e| anyhow::anyhow!("[delivery] delay_notice: {e}"))?;
        }
        for (domain, policy) in &self.delivery.tls {
            if !["opportunistic", "require", "require-verified", "disabled"].contains(&policy.as_str()) {
                bail!("[delivery.tls] {domain} = {policy:?}: use opportunistic, require, require-verified or disabled");
            }
        }
        for (domain, route) in &self.delivery.routes {
            if route.targets.is_empty() || route.targets.iter().any(|target| !target.contains(':')) {
                bail!("[delivery.routes] {domain}: targets must be \"host:port\" entries, at least one");
            }
        }
        wmail_net::ProxyProtocol::new(&self.listen.proxy_protocol_from)
            .map_err(|error| anyhow::anyhow!("[listen] proxy_protocol_from: {error}"))?;
        if self.cluster.snapshot_every < 10 {
            bail!("[cluster] snapshot_every must be 10 or more (20000, the default, suits production)");
        }
        if self.cluster.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!("[cluster] listen = {:?} must be an ip:port", self.cluster.listen);
        }
        if self.cluster.join.is_empty() != self.cluster.join_token.is_empty() {
            bail!(
                "[cluster] join and join_token go together: set both (from `wmail cluster token` on a member) or neither"
            );
        }
        if !self.cluster.join.is_empty() && self.blob.backend != "s3" {
            bail!(
                "a cluster keeps message bodies in shared storage: set [blob] backend = \"s3\" (the same bucket as the other nodes) before joining"
            );
        }
        self.check_durations()
    }

    /// Refuses durations over ten years: surely a typo, and they would overflow the
    /// clock arithmetic of lockouts, greylisting and retries.
    fn check_durations(&self) -> anyhow::Result<()> {
        const TEN_YEARS_SECONDS: u64 = 10 * 366 * 24 * 3600;
        let (minute, hour, day) = (60u64, 3600u64, 86_400u64);
        let spam = &self.antispam;
        let durations = [
            ("[security] login_failure_window_minutes", self.security.login_failure_window_minutes, minute),
            ("[security] login_block_minutes", self.security.login_block_minutes, minute),
            ("[security] remember_logins_minutes", self.security.remember_logins_minutes, minute),
            ("[antispam] quarantine_retention_days", spam.quarantine_retention_days, day),
            ("[antispam] quarantine_digest_hours", spam.quarantine_digest_hours, hour),
            ("[antispam] trap_block_minutes", spam.trap_block_minutes, minute),
            ("[antispam.greylist] delay_seconds", spam.greylist.delay_seconds, 1),
            ("[antispam.greylist] retry_window_hours", spam.greylist.retry_window_hours, hour),
            ("[antispam.greylist] lifetime_days", spam.greylist.lifetime_days, day),
            ("[pop3] login_delay_seconds", self.pop3.login_delay_seconds, 1),
            ("[pop3] maildrop_lease_seconds", self.pop3.maildrop_lease_seconds, 1),
            ("[blob] gc_grace_hours", self.blob.gc_grace_hours, hour),
            ("[delivery] connect_timeout_seconds", self.delivery.connect_timeout_seconds, 1),
        ];
        for (key, value, unit) in durations {
            if value.saturating_mul(unit) > TEN_YEARS_SECONDS {
                bail!("{key} = {value} is more than ten years; use a smaller value (0 where the key allows it)");
            }
        }
        Ok(())
    }
}

/// Applies `WMAIL_<SECTION>_<KEY>=value` overrides to the parsed table. Values are parsed
/// as TOML when they can be (numbers, booleans, arrays) and taken as strings otherwise.
fn apply_env_overrides(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<()> {
    const SECTIONS: [&str; 11] =
        ["server", "listen", "tls", "blob", "delivery", "dns", "cluster", "smtp", "pop3", "imap", "security"];
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix("WMAIL_") else { continue };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|section| rest.starts_with(&format!("{section}_"))) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut parsed| parsed.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        let Some(section_table) = entry.as_table_mut() else { bail!("[{section}] is not a table") };
        section_table.insert(key.to_owned(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wmail.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path))
    }

    #[test]
    fn the_example_parses_and_equals_the_defaults() {
        let example = parse(EXAMPLE).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn deploy_configs_parse() {
        let deploy = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or(Path::new(env!("CARGO_MANIFEST_DIR")).into(), PathBuf::from)
            .join("../../deploy");
        for entry in std::fs::read_dir(deploy.join("config")).unwrap() {
            let path = entry.unwrap().path();
            Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_name() {
        let error = parse("[server]\nhostname = \"a\"\nhostnme = \"b\"\n").unwrap_err().to_string();
        assert!(error.contains("hostnme"), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn wrong_types_and_values_are_explained() {
        let error = parse("[cluster]\nnode_id = \"one\"\n").unwrap_err().to_string();
        assert!(error.contains("node_id") && error.contains("line 2"), "{error}");
        let error = parse("[blob]\nbackend = \"ftp\"\n").unwrap_err().to_string();
        assert!(error.contains("backend"), "{error}");
        let error = parse("[listen]\nhttp = [\"localhost\"]\n").unwrap_err().to_string();
        assert!(error.contains("ip:port"), "{error}");
        // A duration that would overflow the clock is refused, not a panic at the first login.
        let error = parse("[security]\nlogin_block_minutes = 9223372036854775807\n").unwrap_err().to_string();
        assert!(error.contains("[security] login_block_minutes") && error.contains("ten years"), "{error}");
        let error = parse("[antispam.greylist]\nlifetime_days = 4000\n").unwrap_err().to_string();
        assert!(error.contains("lifetime_days"), "{error}");
        parse("[antispam.greylist]\nlifetime_days = 3650\n").unwrap();
    }

    #[test]
    fn environment_overrides_keys() {
        let mut table = toml::Table::new();
        let vars = [
            ("WMAIL_CLUSTER_NODE_ID".to_string(), "7".to_string()),
            ("WMAIL_SERVER_HOSTNAME".to_string(), "mx.example.com".to_string()),
            ("WMAIL_LISTEN_HTTP".to_string(), "[\"127.0.0.1:9\"]".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        apply_env_overrides(&mut table, vars.into_iter()).unwrap();
        let config: Config = toml::from_str(&toml::to_string(&table).unwrap()).unwrap();
        assert_eq!(config.cluster.node_id, 7);
        assert_eq!(config.server.hostname, "mx.example.com");
        assert_eq!(config.listen.http, vec!["127.0.0.1:9".to_string()]);
    }
}
