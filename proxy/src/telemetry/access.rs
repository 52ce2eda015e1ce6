//! The access log, in ztunnel's schema, so log parsers and dashboards made for ztunnel read
//! ringmesh unchanged.
//!
//! Owns: the events of target `access`: one `connection complete` per opened connection
//! (INFO when it ended well, ERROR with `error` when not) and one `connection failed` (WARN)
//! per connection refused before it was opened.
//!
//! Invariants (ztunnel's `src/proxy/metrics.rs`, docs/design-notes.md "Istio telemetry"):
//! - fields, in order: `src.addr`, `src.workload`, `src.namespace`, `src.identity`,
//!   `src.cluster`, `dst.addr`, `dst.hbone_addr`, `dst.service`, `dst.workload`,
//!   `dst.namespace`, `dst.identity`, `dst.cluster`, `direction`, then `bytes_sent`,
//!   `bytes_recv`, `duration` (`"13ms"`) and `error`; a value that is unknown is left out;
//! - identities appear only for mutual TLS hops;
//! - bytes are counted from the node's network side, as ztunnel logs them: on the source
//!   (outbound) node `bytes_sent` is what the client sent, on the destination node what the
//!   server sent (the metrics count both reporters the other way; see `conn`);
//! - ringmesh adds three fields after ztunnel's: `reset` names the side whose TCP reset
//!   ended a connection, `outcome` (complete lines) and `reason` (failed lines) its own word
//!   for how the connection ended.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::field::display;

use super::labels::Reporter;
use crate::config::{Service, Workload};
use crate::identity::Identity;

/// One `connection complete` line.
#[derive(Debug, Clone, Copy)]
pub struct Complete<'a> {
    pub reporter: Reporter,
    pub src: SocketAddr,
    pub source: Option<&'a Workload>,
    pub src_identity: Option<&'a Identity>,
    pub dst: SocketAddr,
    pub hbone_addr: Option<SocketAddr>,
    pub service: Option<&'a Service>,
    pub destination: Option<&'a Workload>,
    pub dst_identity: Option<&'a Identity>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub duration: Duration,
    pub error: Option<&'a str>,
    /// `"downstream"`/`"upstream"`: a TCP reset from that side ended it.
    pub reset: Option<&'static str>,
    /// ringmesh's word for how it ended (`crate::conn::Outcome::label`).
    pub outcome: &'static str,
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Writes one line for a connection that was opened and has ended.
pub fn complete(c: &Complete<'_>) {
    let duration = format!("{}ms", c.duration.as_millis());
    let src_workload = c.source.map(|w| &*w.name);
    let src_namespace = c.source.map(|w| &*w.namespace);
    let src_identity = c.src_identity.map(Identity::as_str);
    let src_cluster = c.source.and_then(|w| nonempty(&w.meta.cluster_id));
    let dst_service = c.service.map(|s| &*s.hostname);
    let dst_workload = c.destination.map(|w| &*w.name);
    let dst_namespace = c.destination.map(|w| &*w.namespace);
    let dst_identity = c.dst_identity.map(Identity::as_str);
    let dst_cluster = c.destination.and_then(|w| nonempty(&w.meta.cluster_id));
    let hbone_addr = c.hbone_addr.map(display);
    let direction = c.reporter.direction();
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: "access",
                $level,
                src.addr = %c.src,
                src.workload = src_workload,
                src.namespace = src_namespace,
                src.identity = src_identity,
                src.cluster = src_cluster,
                dst.addr = %c.dst,
                dst.hbone_addr = hbone_addr,
                dst.service = dst_service,
                dst.workload = dst_workload,
                dst.namespace = dst_namespace,
                dst.identity = dst_identity,
                dst.cluster = dst_cluster,
                direction,
                bytes_sent = c.bytes_sent,
                bytes_recv = c.bytes_recv,
                duration,
                error = c.error,
                reset = c.reset,
                outcome = c.outcome,
                "connection complete"
            )
        };
    }
    if c.error.is_some() {
        line!(tracing::Level::ERROR);
    } else {
        line!(tracing::Level::INFO);
    }
}

/// Writes one line for a connection refused before it was opened, `reason` being
/// ringmesh's word for why (`telemetry::metrics::Refusal::label`). The caller rate-limits:
/// `suppressed` lines like it were held back since the last one written.
pub fn failed(
    reporter: Reporter,
    src: SocketAddr,
    dst: SocketAddr,
    error: &str,
    reason: &'static str,
    suppressed: u64,
) {
    tracing::event!(
        target: "access",
        tracing::Level::WARN,
        src.addr = %src,
        dst.addr = %dst,
        direction = reporter.direction(),
        error,
        reason,
        suppressed = (suppressed > 0).then_some(suppressed),
        "connection failed"
    );
}
