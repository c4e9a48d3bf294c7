//! Prometheus metrics of the inbound checks.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and latencies of the checks.
pub struct ProtectionMetrics {
    /// Check outcomes worth counting (`spf` by result, `dnsbl` by zone listing a client).
    pub checks: IntCounterVec,
    /// Messages by action (`deliver`, `tag`, `junk`, `reject`, `tempfail`).
    pub actions: IntCounterVec,
    /// Time spent in each stage (`connection`, `spf`, `clamd`, `message`).
    pub seconds: HistogramVec,
}

impl ProtectionMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            checks: IntCounterVec::new(
                Opts::new("protection_checks_total", "Inbound check outcomes (spf by result, dnsbl by listing zone)"),
                &["check", "result"],
            )?,
            actions: IntCounterVec::new(
                Opts::new("protection_actions_total", "Inbound messages by the action their verdict chose"),
                &["action"],
            )?,
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "protection_check_duration_seconds",
                    "Time spent in each stage of the inbound checks",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                &["stage"],
            )?,
        };
        registry.register(Box::new(metrics.checks.clone()))?;
        registry.register(Box::new(metrics.actions.clone()))?;
        registry.register(Box::new(metrics.seconds.clone()))?;
        Ok(metrics)
    }

    /// Unregistered metrics (for tests).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }

    pub(crate) fn observe(&self, stage: &str, started: Instant) {
        self.seconds.with_label_values(&[stage]).observe(started.elapsed().as_secs_f64());
    }
}
