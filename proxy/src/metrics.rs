//! L4 telemetry: connection and byte counters kept in one shard per core, summed only when
//! the control thread renders them.
//!
//! Invariants:
//! - The data path never takes a lock and never shares a written cache line with another
//!   core: each worker writes only its own [`Shard`] (a separate, 128-byte aligned
//!   allocation) with `Relaxed` atomic adds. The control thread reads with `Relaxed` loads;
//!   a render is therefore a sum of per-shard values that may be a few increments apart,
//!   never a torn or decreasing counter.
//! - Counter cells are fixed arrays indexed by ([`Direction`], [`Proto`], [`Outcome`]); no
//!   map, no allocation and no label strings on the data path.
//! - Byte counters are added when a connection closes (`conn_closed`), so a long-lived
//!   connection's bytes appear in the totals only once it ends (as Istio's
//!   `istio_tcp_*_bytes_total` did before ztunnel's periodic flush).
//!
//! Metric names follow Istio's (`istio_tcp_connections_opened_total`, ...) where the meaning
//! is the same; ringmesh's own runtime and pool figures are `ringmesh_*`. The labels are
//! ringmesh's (`direction`, `protocol`, `outcome`) rather than Istio's workload labels: the
//! data path counts by cell, not by workload, to stay allocation-free.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Which side of the node a connection was accepted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Captured from a local workload (15001 / SOCKS5), leaving the node.
    Outbound,
    /// Arriving for a local workload (15008 HBONE / 15006 plaintext).
    Inbound,
}

impl Direction {
    /// Every direction, in index order.
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How the connection was carried between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// mTLS HTTP/2 CONNECT tunnel to port 15008.
    Hbone,
    /// Plain TCP to a workload that does not speak HBONE.
    Tcp,
    /// Unknown destination, relayed as is.
    Passthrough,
}

impl Proto {
    /// Every protocol, in index order.
    pub const ALL: [Proto; 3] = [Proto::Hbone, Proto::Tcp, Proto::Passthrough];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Hbone => "hbone",
            Proto::Tcp => "tcp",
            Proto::Passthrough => "passthrough",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The one classification of how a connection ended (metric label and access-log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both halves closed normally.
    Ok,
    /// Refused by policy.
    Denied,
    /// The peer sent something malformed (e.g. a bad CONNECT).
    BadRequest,
    /// The upstream could not be dialled.
    Unreachable,
    /// A service with no healthy endpoint.
    NoEndpoint,
    /// Reset by a peer mid-stream.
    Reset,
    /// A handshake, dial or idle timeout fired.
    Timeout,
    /// Anything else (local I/O error, TLS failure, ...).
    Error,
}

impl Outcome {
    /// Every outcome, in index order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::Denied,
        Outcome::BadRequest,
        Outcome::Unreachable,
        Outcome::NoEndpoint,
        Outcome::Reset,
        Outcome::Timeout,
        Outcome::Error,
    ];

    /// The Prometheus label value and access-log word.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::BadRequest => "bad_request",
            Outcome::Unreachable => "unreachable",
            Outcome::NoEndpoint => "no_endpoint",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const NDIR: usize = Direction::ALL.len();
const NPROTO: usize = Proto::ALL.len();
const NOUT: usize = Outcome::ALL.len();

type ByDirProto = [[AtomicU64; NPROTO]; NDIR];
type ByDirProtoOutcome = [[[AtomicU64; NOUT]; NPROTO]; NDIR];

/// One core's counters. Written only by that core; read by the control thread.
///
/// Aligned to 128 bytes (two 64-byte lines, for the adjacent-line prefetcher on x86) so two
/// shards never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct Shard {
    opened: ByDirProto,
    closed: ByDirProtoOutcome,
    sent: ByDirProtoOutcome,
    received: ByDirProtoOutcome,
    pool_dials: AtomicU64,
    pool_reuses: AtomicU64,
    pool_open: AtomicU64,
}

impl Shard {
    /// Connections this core opened, over every direction and protocol.
    fn opened_total(&self) -> u64 {
        self.opened.iter().flatten().map(|c| c.load(Relaxed)).sum()
    }

    /// Connections this core closed, over every direction, protocol and outcome.
    fn closed_total(&self) -> u64 {
        let cells = self.closed.iter().flatten().flatten();
        cells.map(|c| c.load(Relaxed)).sum()
    }

    /// A connection was accepted (or a SOCKS5 CONNECT parsed) and routed as `proto`.
    pub fn conn_opened(&self, dir: Direction, proto: Proto) {
        self.opened[dir.index()][proto.index()].fetch_add(1, Relaxed);
    }

    /// A connection opened with the same `dir`/`proto` ended. `bytes_sent` is what the proxy
    /// wrote towards the downstream (the connection's originator), `bytes_received` what it
    /// read from it, as in Istio's `tcp_sent_bytes` / `tcp_received_bytes`.
    ///
    /// Must pair with an earlier [`Shard::conn_opened`] for the same `dir`/`proto` (also for
    /// connections refused before routing): `ringmesh_connections_active` is opened minus
    /// closed, so an unpaired close hides a live connection.
    pub fn conn_closed(
        &self,
        dir: Direction,
        proto: Proto,
        outcome: Outcome,
        bytes_sent: u64,
        bytes_received: u64,
    ) {
        let (d, p, o) = (dir.index(), proto.index(), outcome.index());
        self.sent[d][p][o].fetch_add(bytes_sent, Relaxed);
        self.received[d][p][o].fetch_add(bytes_received, Relaxed);
        // Counted last so a reader that sees the close also tends to see its bytes.
        self.closed[d][p][o].fetch_add(1, Relaxed);
    }

    /// Publish this core's HBONE pool statistics: cumulative `dials` and `reuses` since the
    /// pool started, and the number of pooled connections `open` now. Values are stored, not
    /// added, so calling it again with the same numbers is harmless.
    pub fn hbone_pool(&self, dials: u64, reuses: u64, open: u64) {
        self.pool_dials.store(dials, Relaxed);
        self.pool_reuses.store(reuses, Relaxed);
        self.pool_open.store(open, Relaxed);
    }
}

/// Connection and byte totals for one direction, summed over protocols, outcomes and shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirTotals {
    pub opened: u64,
    pub closed: u64,
    /// Closed with an outcome other than [`Outcome::Ok`].
    pub failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl DirTotals {
    /// Connections open now (opened minus closed; never negative).
    pub fn active(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }
}

/// A plain snapshot of the counters, for the demo summary and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub outbound: DirTotals,
    pub inbound: DirTotals,
    pub pool_dials: u64,
    pub pool_reuses: u64,
    pub pool_open: u64,
}

impl Totals {
    /// The totals for one direction.
    pub fn dir(&self, dir: Direction) -> &DirTotals {
        match dir {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        }
    }
}

/// All cores' shards. `Send + Sync`; the control thread owns one `Arc<Metrics>` and each
/// worker one `Arc<Shard>`.
pub struct Metrics {
    shards: Vec<Arc<Shard>>,
}

impl Metrics {
    /// One shard per core (at least one).
    pub fn new(cores: usize) -> Arc<Metrics> {
        let shards = (0..cores.max(1))
            .map(|_| Arc::new(Shard::default()))
            .collect();
        Arc::new(Metrics { shards })
    }

    /// The shard for worker `core` (an index `0..cores`, not a CPU number). An index past the
    /// end wraps around rather than panicking: counts stay correct, only sharding suffers.
    pub fn shard(&self, core: usize) -> Arc<Shard> {
        debug_assert!(
            core < self.shards.len(),
            "metrics shard {core} out of range"
        );
        Arc::clone(&self.shards[core % self.shards.len()])
    }

    /// Number of shards.
    pub fn cores(&self) -> usize {
        self.shards.len()
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |acc, s| acc.wrapping_add(f(s)))
    }

    /// Sum every shard into a [`Totals`].
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for dir in Direction::ALL {
            let d = dir.index();
            let mut dt = DirTotals::default();
            for p in 0..NPROTO {
                dt.opened += self.sum(|s| s.opened[d][p].load(Relaxed));
                for o in 0..NOUT {
                    let closed = self.sum(|s| s.closed[d][p][o].load(Relaxed));
                    dt.closed += closed;
                    if o != Outcome::Ok.index() {
                        dt.failed += closed;
                    }
                    dt.bytes_sent += self.sum(|s| s.sent[d][p][o].load(Relaxed));
                    dt.bytes_received += self.sum(|s| s.received[d][p][o].load(Relaxed));
                }
            }
            match dir {
                Direction::Outbound => t.outbound = dt,
                Direction::Inbound => t.inbound = dt,
            }
        }
        t.pool_dials = self.sum(|s| s.pool_dials.load(Relaxed));
        t.pool_reuses = self.sum(|s| s.pool_reuses.load(Relaxed));
        t.pool_open = self.sum(|s| s.pool_open.load(Relaxed));
        t
    }

    /// Render the Prometheus text exposition format, version 0.0.4: every family has a
    /// `# HELP` and `# TYPE` line, counters end in `_total`, and label-set cells that are
    /// zero for closes/bytes are omitted (only outcomes that happened are listed).
    ///
    /// `driver` is the runtime's driver name (`ringmesh_runtime_info{driver=...} 1`);
    /// `extra` are gauges the caller owns (e.g. `ringmesh_certificates 3`). An `extra` name
    /// that is not a valid metric name is skipped with a warning rather than corrupting the
    /// exposition.
    pub fn render_prometheus(&self, driver: &str, extra: &[(&str, f64)]) -> String {
        let mut out = String::with_capacity(4096);
        let dp_cells = || {
            Direction::ALL
                .into_iter()
                .flat_map(|d| Proto::ALL.into_iter().map(move |p| (d, p)))
        };
        let dpo_cells =
            || dp_cells().flat_map(|(d, p)| Outcome::ALL.into_iter().map(move |o| (d, p, o)));

        header(
            &mut out,
            "istio_tcp_connections_opened_total",
            "counter",
            "The total number of TCP connections opened",
        );
        for (d, p) in dp_cells() {
            let v = self.sum(|s| s.opened[d.index()][p.index()].load(Relaxed));
            let _ = writeln!(
                out,
                "istio_tcp_connections_opened_total{{direction=\"{}\",protocol=\"{}\"}} {v}",
                d.label(),
                p.label()
            );
        }

        type Cell = fn(&Shard) -> &ByDirProtoOutcome;
        let families: [(&str, &str, Cell); 3] = [
            (
                "istio_tcp_connections_closed_total",
                "The total number of TCP connections closed, by outcome",
                |s| &s.closed,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent towards the downstream of closed TCP connections",
                |s| &s.sent,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from the downstream of closed TCP connections",
                |s| &s.received,
            ),
        ];
        for (name, help, cell) in families {
            header(&mut out, name, "counter", help);
            for (d, p, o) in dpo_cells() {
                let closed = self.sum(|s| s.closed[d.index()][p.index()][o.index()].load(Relaxed));
                // Only outcomes that happened: 2×3×8 mostly-zero series would bury the signal.
                if closed == 0 && o != Outcome::Ok {
                    continue;
                }
                let v = self.sum(|s| cell(s)[d.index()][p.index()][o.index()].load(Relaxed));
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",protocol=\"{}\",outcome=\"{}\"}} {v}",
                    d.label(),
                    p.label(),
                    o.label()
                );
            }
        }

        header(
            &mut out,
            "ringmesh_connections_active",
            "gauge",
            "Connections open now (opened minus closed)",
        );
        for (d, p) in dp_cells() {
            let (di, pi) = (d.index(), p.index());
            // Closed first: a close is counted after its open, so this order keeps the
            // difference from going negative in the common case; saturating covers the rest.
            let closed = self.sum(|s| s.closed[di][pi].iter().map(|c| c.load(Relaxed)).sum());
            let opened = self.sum(|s| s.opened[di][pi].load(Relaxed));
            let _ = writeln!(
                out,
                "ringmesh_connections_active{{direction=\"{}\",protocol=\"{}\"}} {}",
                d.label(),
                p.label(),
                opened.saturating_sub(closed)
            );
        }

        header(
            &mut out,
            "ringmesh_runtime_info",
            "gauge",
            "Always 1; the label names the I/O driver the workers run on",
        );
        let _ = writeln!(
            out,
            "ringmesh_runtime_info{{driver=\"{}\"}} 1",
            escape_label(driver)
        );
        header(
            &mut out,
            "ringmesh_workers",
            "gauge",
            "Number of worker threads (one per core, one metrics shard each)",
        );
        let _ = writeln!(out, "ringmesh_workers {}", self.shards.len());

        // Per worker: how evenly the kernel hands connections to the cores' listeners
        // (`--incoming-cpu` keeps each on the core it arrived on, so a single busy sender
        // shows here as one busy worker).
        type PerWorker = (&'static str, &'static str, &'static str, fn(&Shard) -> u64);
        let worker_families: [PerWorker; 2] = [
            (
                "ringmesh_worker_connections_opened_total",
                "counter",
                "Connections accepted by each worker",
                Shard::opened_total,
            ),
            (
                "ringmesh_worker_connections_active",
                "gauge",
                "Connections open now on each worker",
                |s| s.opened_total().saturating_sub(s.closed_total()),
            ),
        ];
        for (name, kind, help, value) in worker_families {
            header(&mut out, name, kind, help);
            for (worker, shard) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{worker}\"}} {}", value(shard));
            }
        }

        let t = self.totals();
        header(
            &mut out,
            "ringmesh_hbone_pool_dials_total",
            "counter",
            "HBONE connections dialled by the outbound pools",
        );
        let _ = writeln!(out, "ringmesh_hbone_pool_dials_total {}", t.pool_dials);
        header(
            &mut out,
            "ringmesh_hbone_pool_reuses_total",
            "counter",
            "HBONE streams opened on an already pooled connection",
        );
        let _ = writeln!(out, "ringmesh_hbone_pool_reuses_total {}", t.pool_reuses);
        header(
            &mut out,
            "ringmesh_hbone_pool_connections_open",
            "gauge",
            "HBONE connections currently held by the outbound pools",
        );
        let _ = writeln!(out, "ringmesh_hbone_pool_connections_open {}", t.pool_open);

        for &(name, value) in extra {
            if !valid_metric_name(name) {
                tracing::warn!(name, "skipping extra metric with an invalid name");
                continue;
            }
            header(
                &mut out,
                name,
                "gauge",
                "Supplied by the node control thread",
            );
            let _ = writeln!(out, "{name} {}", format_float(value));
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the exposition format's metric-name grammar.
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Label values escape `\`, `"` and newline (text format 0.0.4).
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Go's `ParseFloat` spellings for the non-finite values; Rust's `inf` would not parse.
fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_across_shards() {
        let m = Metrics::new(3);
        assert_eq!(m.cores(), 3);
        let (a, b, c) = (m.shard(0), m.shard(1), m.shard(2));
        a.conn_opened(Direction::Outbound, Proto::Hbone);
        b.conn_opened(Direction::Outbound, Proto::Hbone);
        c.conn_opened(Direction::Inbound, Proto::Tcp);
        a.conn_closed(Direction::Outbound, Proto::Hbone, Outcome::Ok, 100, 7);
        b.conn_closed(Direction::Outbound, Proto::Hbone, Outcome::Reset, 5, 1);
        a.hbone_pool(2, 10, 1);
        b.hbone_pool(1, 3, 1);
        // Stored, not added: a repeat does not double count.
        b.hbone_pool(1, 3, 1);

        let t = m.totals();
        assert_eq!(t.outbound.opened, 2);
        assert_eq!(t.outbound.closed, 2);
        assert_eq!(t.outbound.failed, 1);
        assert_eq!(t.outbound.bytes_sent, 105);
        assert_eq!(t.outbound.bytes_received, 8);
        assert_eq!(t.outbound.active(), 0);
        assert_eq!(t.inbound.opened, 1);
        assert_eq!(t.dir(Direction::Inbound).active(), 1);
        assert_eq!((t.pool_dials, t.pool_reuses, t.pool_open), (3, 13, 2));

        let text = m.render_prometheus("io_uring", &[]);
        assert!(text.contains(
            "istio_tcp_connections_opened_total{direction=\"outbound\",protocol=\"hbone\"} 2\n"
        ));
        assert!(text.contains(
            "istio_tcp_sent_bytes_total{direction=\"outbound\",protocol=\"hbone\",outcome=\"ok\"} 100\n"
        ));
        assert!(text.contains(
            "istio_tcp_connections_closed_total{direction=\"outbound\",protocol=\"hbone\",outcome=\"reset\"} 1\n"
        ));
        // Outcomes that never happened are not listed.
        assert!(!text.contains("outcome=\"timeout\""));
        assert!(
            text.contains(
                "ringmesh_connections_active{direction=\"inbound\",protocol=\"tcp\"} 1\n"
            )
        );
        assert!(text.contains("ringmesh_runtime_info{driver=\"io_uring\"} 1\n"));
        assert!(text.contains("ringmesh_workers 3\n"));
        assert!(text.contains("ringmesh_hbone_pool_dials_total 3\n"));
        assert!(text.contains("ringmesh_hbone_pool_reuses_total 13\n"));
        assert!(text.contains("ringmesh_hbone_pool_connections_open 2\n"));
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let m = Metrics::new(4);
        std::thread::scope(|s| {
            for core in 0..4 {
                let shard = m.shard(core);
                s.spawn(move || {
                    for _ in 0..10_000 {
                        shard.conn_opened(Direction::Inbound, Proto::Hbone);
                        shard.conn_closed(Direction::Inbound, Proto::Hbone, Outcome::Ok, 3, 2);
                    }
                });
            }
        });
        let t = m.totals();
        assert_eq!(t.inbound.opened, 40_000);
        assert_eq!(t.inbound.closed, 40_000);
        assert_eq!(t.inbound.bytes_sent, 120_000);
        assert_eq!(t.inbound.bytes_received, 80_000);
    }

    /// Every non-comment line is `name{labels} value` or `name value`, names are valid,
    /// values parse as floats, and every sample's family has HELP and TYPE lines before it.
    fn check_exposition(text: &str) -> usize {
        let mut helped = std::collections::HashSet::new();
        let mut typed = std::collections::HashMap::new();
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(valid_metric_name(name), "{line}");
                assert!(helped.insert(name.to_string()), "duplicate HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert!(typed.insert(name.to_string(), kind.to_string()).is_none());
            } else {
                assert!(
                    !line.starts_with('#') && !line.is_empty(),
                    "stray line {line:?}"
                );
                let (series, value) = line.rsplit_once(' ').expect("name value");
                let name = match series.split_once('{') {
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}').expect("closing brace");
                        for pair in labels.split(',') {
                            let (k, v) = pair.split_once('=').expect("label=value");
                            assert!(valid_metric_name(k), "{line}");
                            assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'));
                        }
                        name
                    }
                    None => series,
                };
                assert!(valid_metric_name(name), "{line}");
                assert!(helped.contains(name) && typed.contains_key(name), "{line}");
                if typed[name] == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                let v: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v
                        .parse()
                        .unwrap_or_else(|_| panic!("bad value in {line:?}")),
                };
                let _ = v;
                samples += 1;
            }
        }
        samples
    }

    #[test]
    fn exposition_parses_with_help_and_type() {
        let m = Metrics::new(2);
        let s = m.shard(1);
        for proto in Proto::ALL {
            for outcome in Outcome::ALL {
                s.conn_opened(Direction::Outbound, proto);
                s.conn_closed(Direction::Outbound, proto, outcome, 1, 1);
            }
        }
        let text = m.render_prometheus(
            "ep\"oll\\",
            &[
                ("ringmesh_certificates", 3.0),
                ("ringmesh_config_generation", 1.5),
                ("ringmesh_weird", f64::INFINITY),
                ("bad name", 1.0),
                ("9starts_with_digit", 1.0),
            ],
        );
        let samples = check_exposition(&text);
        // 6 opened + 3 families × (2 dirs × 3 protos "ok" rows + 7 extra outcomes × 3 protos
        // on outbound) + 6 active + info + workers + 2 per-worker families × 2 workers + 3
        // pool + 3 valid extras.
        assert_eq!(samples, 6 + 3 * (6 + 7 * 3) + 6 + 1 + 1 + 2 * 2 + 3 + 3);
        // Worker 1 took all 24 connections and closed them; worker 0 none.
        assert!(text.contains("ringmesh_worker_connections_opened_total{worker=\"0\"} 0\n"));
        assert!(text.contains("ringmesh_worker_connections_opened_total{worker=\"1\"} 24\n"));
        assert!(text.contains("ringmesh_worker_connections_active{worker=\"1\"} 0\n"));
        assert!(text.contains("ringmesh_runtime_info{driver=\"ep\\\"oll\\\\\"} 1\n"));
        assert!(text.contains("ringmesh_config_generation 1.5\n"));
        assert!(text.contains("ringmesh_weird +Inf\n"));
        assert!(!text.contains("bad name") && !text.contains("9starts"));
        for o in Outcome::ALL {
            assert!(text.contains(&format!("outcome=\"{}\"", o.label())));
        }
        s.conn_opened(Direction::Inbound, Proto::Hbone);
        let text = m.render_prometheus("epoll", &[]);
        assert!(text.contains("ringmesh_worker_connections_active{worker=\"1\"} 1\n"));
    }

    #[test]
    fn labels_are_stable() {
        let labels: Vec<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(
            labels,
            [
                "ok",
                "denied",
                "bad_request",
                "unreachable",
                "no_endpoint",
                "reset",
                "timeout",
                "error"
            ]
        );
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        for (i, p) in Proto::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
        for (i, d) in Direction::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
        assert_eq!(std::mem::align_of::<Shard>(), 128);
    }
}
