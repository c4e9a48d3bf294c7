//! Prometheus metrics of the SMTP service, labelled by listener (`smtp`, `submission`, ...).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and latencies of every SMTP listener.
pub struct SmtpMetrics {
    /// Sessions accepted, by listener.
    pub connections: IntCounterVec,
    /// Messages by listener and outcome (`accepted`, `too_big`, `loop`, `failed`, ...).
    pub messages: IntCounterVec,
    /// Recipients refused at RCPT, by listener and reason.
    pub recipients_refused: IntCounterVec,
    /// Message bytes received, by listener.
    pub bytes_received: IntCounterVec,
    /// Time from the end of the data to the reply (storing and committing), by listener.
    pub commit_seconds: HistogramVec,
}

impl SmtpMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            connections: IntCounterVec::new(
                Opts::new("smtp_connections_total", "SMTP sessions accepted"),
                &["listener"],
            )?,
            messages: IntCounterVec::new(
                Opts::new("smtp_messages_total", "SMTP messages by outcome"),
                &["listener", "outcome"],
            )?,
            recipients_refused: IntCounterVec::new(
                Opts::new("smtp_recipients_refused_total", "SMTP recipients refused at RCPT, by reason"),
                &["listener", "reason"],
            )?,
            bytes_received: IntCounterVec::new(
                Opts::new("smtp_received_bytes_total", "Message bytes received over SMTP"),
                &["listener"],
            )?,
            commit_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "smtp_commit_duration_seconds",
                    "Time from the end of a message's data to the reply (blob stored, Raft committed)",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                &["listener"],
            )?,
        };
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.messages.clone()))?;
        registry.register(Box::new(metrics.recipients_refused.clone()))?;
        registry.register(Box::new(metrics.bytes_received.clone()))?;
        registry.register(Box::new(metrics.commit_seconds.clone()))?;
        Ok(metrics)
    }
}
