//! What the node tells operators: Istio's L4 metrics with the standard labels, the access log
//! in ztunnel's schema, the log line layouts, and the rate limits on peer-caused lines.
//!
//! Owns: [`metrics`] (counters and their exposition), [`labels`] (Istio's label set),
//! [`access`] (the `access` events), [`format`] (text and JSON log lines), [`ratelimit`].
//! The connection record (`crate::conn`) is the only writer of connection metrics and access
//! lines; nothing else on the data path counts a connection.

pub mod access;
pub mod format;
pub mod labels;
pub mod metrics;
pub mod ratelimit;

pub use labels::{Reporter, ResponseFlags, Security};
pub use metrics::{Carrier, Extras, Metrics, Refusal, SeriesCache, Shard};
