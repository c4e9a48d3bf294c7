//! Prometheus metrics of outbound delivery (the queue's size is rendered by wmail-http
//! from the replicated state at scrape time).

use prometheus::{IntCounterVec, Opts, Registry};

/// Counters of the delivery worker.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    /// Recipients by attempt outcome: `delivered`, `deferred`, `failed`.
    pub recipients: IntCounterVec,
    /// Delivery status notifications sent, by kind: `failure`, `delay`, `relayed`.
    pub reports: IntCounterVec,
}

impl DeliveryMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = DeliveryMetrics {
            recipients: IntCounterVec::new(
                Opts::new("outbound_recipients_total", "Outbound recipients by attempt outcome"),
                &["result"],
            )?,
            reports: IntCounterVec::new(
                Opts::new("outbound_reports_total", "Delivery status notifications sent, by kind"),
                &["kind"],
            )?,
        };
        registry.register(Box::new(metrics.recipients.clone()))?;
        registry.register(Box::new(metrics.reports.clone()))?;
        Ok(metrics)
    }

    /// Counters that are not exported (for a worker without a registry).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("a fresh registry accepts the metrics")
    }
}
