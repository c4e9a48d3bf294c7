//! wmail-delivery sends queued mail to other domains. The queue is replicated state (see
//! `wmail_storage::queue`); every node runs a [`Worker`] that claims due entries with a
//! lease, routes each recipient domain (smarthost, static route or MX), delivers over SMTP
//! with opportunistic or required TLS, records per-recipient results, retries temporary
//! failures on a schedule, and reports to the sender with RFC 3464 DSNs (built by
//! `wmail_core::dsn`).
//!
//! ```text
//!  due index ─► ClaimOutbound (lease) ─► per domain: route ─► SmtpClient ─► remote MTA
//!                                               │
//!                 RecordAttempt (results, next attempt) ◄─┴─► DSN to the sender (local or queued)
//! ```

pub mod client;
mod metrics;
pub mod route;
pub mod sign;
mod worker;

pub use metrics::DeliveryMetrics;
pub use route::{Credentials, Router, StaticRoute};
pub use worker::{DeliveryConfig, TlsPolicy, Worker};
