//! Prometheus metrics of a node: HTTP request counters and latencies, build info, and Raft
//! gauges refreshed at scrape time.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use wmail_core::{Core, ServerState};

/// The metrics registry of the HTTP service.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status code.
    pub http_requests: IntCounterVec,
    /// Request latency by route.
    pub http_latency: HistogramVec,
    /// Requests being handled now, by route (a stopping node finishes these).
    pub http_in_flight: IntGaugeVec,
    raft_term: IntGauge,
    raft_leader: IntGauge,
    raft_is_leader: IntGauge,
    raft_last_log_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_committed_index: IntGauge,
    raft_snapshot_index: IntGauge,
    cluster_detached: IntGauge,
    blob_cache_bytes: IntGauge,
    raft_log_entries: IntCounter,
    raft_log_appends: IntCounter,
    raft_log_wal_syncs: IntCounter,
    login_password_hashes: IntCounter,
    login_passwords_remembered: IntCounter,
    queue_messages: IntGauge,
    queue_oldest_age: IntGauge,
    search_documents: IntGauge,
    data_disk_available: IntGauge,
    search_index_bytes: IntGauge,
    search_messages_read: IntCounter,
}

impl Metrics {
    /// Creates the HTTP and Raft metrics in `registry`, which other services (SMTP, ...)
    /// share; `/metrics` renders all of it. Use [`Metrics::new_registry`] to make one.
    pub fn new(registry: Registry) -> Self {
        let build_info =
            IntGaugeVec::new(Opts::new("build_info", "Build information; the value is always 1"), &["version"])
                .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status code"),
            &["route", "status"],
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route"),
            &["route"],
        )
        .expect("valid metric");
        let http_in_flight = IntGaugeVec::new(
            Opts::new("http_requests_in_flight", "HTTP requests being handled now, by route"),
            &["route"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let metrics = Self {
            http_requests,
            http_latency,
            http_in_flight,
            raft_term: gauge("raft_term", "Current Raft term"),
            raft_leader: gauge("raft_leader_id", "Node id of the current leader, 0 if none"),
            raft_is_leader: gauge("raft_is_leader", "1 when this node is the leader"),
            raft_last_log_index: gauge("raft_last_log_index", "Index of the last entry in this node's log"),
            raft_applied_index: gauge("raft_applied_index", "Index of the last entry applied on this node"),
            raft_committed_index: gauge("raft_committed_index", "Index of the last entry this node knows committed"),
            raft_snapshot_index: gauge("raft_snapshot_index", "Index covered by this node's last snapshot"),
            blob_cache_bytes: gauge("blob_cache_bytes", "Bytes of message bodies in this node's local blob cache"),
            cluster_detached: gauge(
                "cluster_detached",
                "1 while this learner is cut off from the cluster (it serves reads, refuses writes)",
            ),
            raft_log_entries: counter("raft_log_entries_total", "Entries appended to this node's Raft log"),
            raft_log_appends: counter("raft_log_appends_total", "Append operations on this node's Raft log"),
            raft_log_wal_syncs: counter(
                "raft_log_wal_syncs_total",
                "WAL fsyncs acknowledging Raft log appends (entries per sync is the group-commit factor)",
            ),
            login_password_hashes: counter(
                "login_password_hashes_total",
                "Login passwords checked with argon2 on this node (every wrong password is)",
            ),
            login_passwords_remembered: counter(
                "login_passwords_remembered_total",
                "Logins whose password this node verified recently ([security] remember_logins_minutes)",
            ),
            queue_messages: gauge("queue_messages", "Messages in the outbound queue"),
            queue_oldest_age: gauge(
                "queue_oldest_age_seconds",
                "Age of the oldest message in the outbound queue (0 when it is empty)",
            ),
            search_documents: gauge("search_documents", "Message copies in this node's full-text index"),
            data_disk_available: gauge(
                "data_disk_available_bytes",
                "Free space on this node's data disk (below [server] min_free_disk_mb new mail is refused)",
            ),
            search_index_bytes: gauge("search_index_bytes", "Size of this node's full-text index on disk"),
            search_messages_read: counter(
                "search_messages_read_total",
                "Messages whose content IMAP SEARCH read to check them (the full-text index narrows this down)",
            ),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(build_info),
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_latency.clone()),
            Box::new(metrics.http_in_flight.clone()),
            Box::new(metrics.raft_term.clone()),
            Box::new(metrics.raft_leader.clone()),
            Box::new(metrics.raft_is_leader.clone()),
            Box::new(metrics.raft_last_log_index.clone()),
            Box::new(metrics.raft_applied_index.clone()),
            Box::new(metrics.raft_committed_index.clone()),
            Box::new(metrics.raft_snapshot_index.clone()),
            Box::new(metrics.cluster_detached.clone()),
            Box::new(metrics.blob_cache_bytes.clone()),
            Box::new(metrics.raft_log_entries.clone()),
            Box::new(metrics.raft_log_appends.clone()),
            Box::new(metrics.raft_log_wal_syncs.clone()),
            Box::new(metrics.login_password_hashes.clone()),
            Box::new(metrics.login_passwords_remembered.clone()),
            Box::new(metrics.queue_messages.clone()),
            Box::new(metrics.queue_oldest_age.clone()),
            Box::new(metrics.search_documents.clone()),
            Box::new(metrics.data_disk_available.clone()),
            Box::new(metrics.search_index_bytes.clone()),
            Box::new(metrics.search_messages_read.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("metric registered once");
        }
        metrics
    }

    /// Renders the Prometheus text exposition format, refreshing the Raft gauges first.
    pub fn render(&self, core: &Core) -> String {
        let raft = core.raft_metrics();
        self.raft_term.set(raft.current_term as i64);
        self.raft_leader.set(raft.current_leader.unwrap_or(0) as i64);
        self.raft_is_leader.set(i64::from(raft.state == ServerState::Leader));
        self.raft_last_log_index.set(raft.last_log_index.unwrap_or(0) as i64);
        self.raft_applied_index.set(raft.last_applied.map(|id| id.index).unwrap_or(0) as i64);
        self.raft_committed_index.set(core.raft_committed_index().unwrap_or(0) as i64);
        self.raft_snapshot_index.set(raft.snapshot.map(|id| id.index).unwrap_or(0) as i64);
        self.cluster_detached.set(i64::from(core.detached().is_some()));
        self.blob_cache_bytes.set(core.blob_cache_bytes().unwrap_or(0) as i64);
        let (entries, appends, syncs) = core.raft_log_io();
        let search = core.search_status();
        self.search_documents.set(search.documents as i64);
        self.data_disk_available.set(core.data_disk_available_bytes().min(i64::MAX as u64) as i64);
        self.search_index_bytes.set(search.index_bytes as i64);
        let (hashed, remembered) = core.password_checks();
        for (counter, value) in [
            (&self.login_password_hashes, hashed),
            (&self.login_passwords_remembered, remembered),
            (&self.raft_log_entries, entries),
            (&self.raft_log_appends, appends),
            (&self.raft_log_wal_syncs, syncs),
            (&self.search_messages_read, search.messages_read),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        // Queue ids grow with time, so the first entry is the oldest.
        self.queue_messages.set(core.queue_length().unwrap_or(0) as i64);
        let oldest = core.outbound_queue(0, 1).ok().and_then(|page| page.first().map(|entry| entry.created_ms));
        let age_ms = oldest.map_or(0, |created| wmail_core::now_ms().saturating_sub(created));
        self.queue_oldest_age.set((age_ms / 1000) as i64);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Metrics {
    /// A registry whose metric names all start with `wmail_`.
    pub fn new_registry() -> Registry {
        Registry::new_custom(Some("wmail".into()), None).expect("valid prefix")
    }
}
