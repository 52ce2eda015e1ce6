//! L4 telemetry: Istio's connection and byte counters with the standard label set, and
//! ringmesh's own runtime and pool figures, kept per core and summed only when the control
//! thread renders them.
//!
//! Owns: the series of one label set ([`Series`]), each core's lock-free counters
//! ([`Shard`]) and its series cache ([`SeriesCache`]), and the rendering (Prometheus text
//! format 0.0.4) of every family.
//!
//! Invariants:
//! - The data path takes no lock and writes only counters its own core owns: a series is
//!   created and written by one core (`Relaxed` atomics in their own allocation); a new series
//!   reaches the control thread through a channel, so rendering never blocks a core.
//! - Bytes are counted as they move (the relays feed [`Series`] counters through the
//!   connection's meter), so a long-lived connection shows in `/metrics` before it ends;
//!   `received` is what came from the originator (the request), `sent` what went toward it
//!   (the response), on both reporters, as ztunnel counts them (docs/design-notes.md).
//! - `opened`, `received` and `sent` carry `response_flags="-"`; `closed` and `failed` carry
//!   the connection's final flags; `failed` counts the closes whose flags are not `-`.
//! - Label cardinality is bounded: a core keeps at most [`MAX_SERIES_PER_CORE`] label sets;
//!   past that, new label sets are counted in one overflow series (every workload label
//!   `unknown`) and the node warns once. Series with equal labels on several cores (or
//!   created again after a config change) are summed when rendered.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use runtime::meter::LiveCounters;

use super::labels::{LabelSet, Rendered, Reporter, ResponseFlags, Security, simple};
use crate::config::{Service, Workload};
use crate::identity::Identity;

/// Label sets one core keeps before it counts new ones in its overflow series. A node with
/// 10,000 workload pairs talking is far beyond what one node's pods do; each series costs
/// about 1 KiB (its rendered labels and counters).
pub const MAX_SERIES_PER_CORE: usize = 10_000;

/// How a connection was carried (ringmesh's own families).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// mTLS HTTP/2 CONNECT tunnel (port 15008).
    Hbone,
    /// Plain TCP to a workload that does not speak HBONE, or inbound plaintext (15006).
    Tcp,
    /// A destination outside the mesh, relayed as is.
    Passthrough,
}

impl Carrier {
    pub const ALL: [Carrier; 3] = [Carrier::Hbone, Carrier::Tcp, Carrier::Passthrough];

    pub fn label(self) -> &'static str {
        match self {
            Carrier::Hbone => "hbone",
            Carrier::Tcp => "tcp",
            Carrier::Passthrough => "passthrough",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection was refused before it was opened (no Istio metric counts these, as in
/// ztunnel: they are the access log's `connection failed` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The destination is one of the node's own listeners.
    Loop,
    /// A malformed request (bad CONNECT, SOCKS5, authority mismatch).
    BadRequest,
    /// A service with no endpoint for the port.
    NoEndpoint,
    /// Outbound traffic from an IP that is no local workload, with `--unknown-source reject`.
    UnknownSource,
    /// A TLS handshake that failed (bad certificate, wrong trust domain, garbage).
    Tls,
    /// A handshake (TLS, HTTP/2, SOCKS5) that did not finish in time.
    HandshakeTimeout,
    /// A control-frame flood.
    Flood,
    /// A limit: too many connections on the node or from one peer, or memory above the limit.
    Overload,
    /// The destination is no local workload, or has no certificate yet.
    NotServed,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Loop,
        Refusal::BadRequest,
        Refusal::NoEndpoint,
        Refusal::UnknownSource,
        Refusal::Tls,
        Refusal::HandshakeTimeout,
        Refusal::Flood,
        Refusal::Overload,
        Refusal::NotServed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Loop => "loop",
            Refusal::BadRequest => "bad_request",
            Refusal::NoEndpoint => "no_endpoint",
            Refusal::UnknownSource => "unknown_source",
            Refusal::Tls => "tls",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::Flood => "flood",
            Refusal::Overload => "overload",
            Refusal::NotServed => "not_served",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters of one label set on one core.
#[derive(Debug)]
pub struct Series {
    labels: Rendered,
    opened: AtomicU64,
    /// From the originator (the request direction).
    received: Arc<AtomicU64>,
    /// Toward the originator (the response direction).
    sent: Arc<AtomicU64>,
    closed: [AtomicU64; ResponseFlags::COUNT],
}

impl Series {
    fn new(labels: Rendered) -> Series {
        Series {
            labels,
            opened: AtomicU64::new(0),
            received: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
            closed: Default::default(),
        }
    }

    pub fn opened(&self) {
        self.opened.fetch_add(1, Relaxed);
    }

    pub fn closed(&self, flags: ResponseFlags) {
        self.closed[flags.index()].fetch_add(1, Relaxed);
    }

    /// The counters a connection's meter feeds as bytes move.
    pub fn live_counters(&self) -> LiveCounters {
        LiveCounters {
            from_originator: self.received.clone(),
            toward_originator: self.sent.clone(),
        }
    }
}

/// `Arc` compared and hashed by address: a snapshot's workloads and services, which live as
/// long as the cache entry that holds them.
#[derive(Debug)]
struct ByPtr<T>(Arc<T>);

impl<T> Clone for ByPtr<T> {
    fn clone(&self) -> Self {
        ByPtr(self.0.clone())
    }
}

impl<T> PartialEq for ByPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl<T> Eq for ByPtr<T> {}
impl<T> Hash for ByPtr<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state)
    }
}

/// What a connection's labels depend on, cheap to compare: pointers into the snapshot and a
/// shared identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    reporter: Reporter,
    security: Security,
    source: Option<ByPtr<Workload>>,
    principal: Option<Identity>,
    destination: Option<ByPtr<Workload>>,
    service: Option<ByPtr<Service>>,
}

/// What a connection record asks for its series with.
#[derive(Debug, Clone, Default)]
pub struct SeriesRequest {
    pub source: Option<Arc<Workload>>,
    pub principal: Option<Identity>,
    pub destination: Option<Arc<Workload>>,
    pub service: Option<Arc<Service>>,
}

/// One core's series: found by what a connection knows, created on first use. Lives in the
/// core's thread (`&mut`, no locks); new series are announced to the renderer by channel.
pub struct SeriesCache {
    by_key: HashMap<SeriesKey, Arc<Series>>,
    by_labels: HashMap<Rendered, Arc<Series>>,
    new_series: Sender<Arc<Series>>,
    overflowed: bool,
}

impl std::fmt::Debug for SeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesCache")
            .field("series", &self.by_labels.len())
            .finish()
    }
}

impl SeriesCache {
    /// The series for a connection on this core.
    pub fn series(
        &mut self,
        reporter: Reporter,
        security: Security,
        req: &SeriesRequest,
    ) -> Arc<Series> {
        let key = SeriesKey {
            reporter,
            security,
            source: req.source.clone().map(ByPtr),
            // Off mutual TLS the principal is not a label.
            principal: req
                .principal
                .clone()
                .filter(|_| security == Security::MutualTls),
            destination: req.destination.clone().map(ByPtr),
            service: req.service.clone().map(ByPtr),
        };
        if let Some(s) = self.by_key.get(&key) {
            return s.clone();
        }
        let mut labels = LabelSet {
            reporter,
            source: req.source.as_deref(),
            source_principal: req.principal.as_ref(),
            destination: req.destination.as_deref(),
            service: req.service.as_deref(),
            security,
        };
        if self.by_labels.len() >= MAX_SERIES_PER_CORE {
            if !self.overflowed {
                self.overflowed = true;
                tracing::warn!(
                    max = MAX_SERIES_PER_CORE,
                    "metrics: too many label sets on one core; counting new ones with unknown workload labels"
                );
            }
            labels = LabelSet {
                reporter,
                source: None,
                source_principal: None,
                destination: None,
                service: None,
                security,
            };
        }
        let rendered = labels.render();
        let series = match self.by_labels.get(&rendered) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(Series::new(rendered.clone()));
                // The renderer may be gone at shutdown; counting goes on regardless.
                let _ = self.new_series.send(s.clone());
                self.by_labels.insert(rendered, s.clone());
                s
            }
        };
        // Keys pin the snapshot's workloads: the cache of keys is cleared with every new
        // snapshot (`forget_snapshot`), the series stay.
        self.by_key.insert(key, series.clone());
        series
    }

    /// Drops the keys that point into a snapshot being replaced (series and counts stay).
    pub fn forget_snapshot(&mut self) {
        self.by_key.clear();
    }
}

type ByCarrier = [AtomicU64; 3];

/// One core's fixed counters. Written only by that core; read by the control thread.
///
/// Aligned to 128 bytes (two 64-byte lines, for the adjacent-line prefetcher on x86) so two
/// shards never share a cache line.
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct Shard {
    /// Accepted sockets open now, per reporter (Istio's `istio_tcp_sockets_open`).
    sockets_open: [AtomicU64; 2],
    /// Opened and closed connections per reporter and carrier.
    opened: [ByCarrier; 2],
    closed: [ByCarrier; 2],
    refused: [AtomicU64; Refusal::ALL.len()],
    pool_dials: AtomicU64,
    pool_reuses: AtomicU64,
    pool_open: AtomicU64,
}

impl Shard {
    pub fn socket_opened(&self, reporter: Reporter) {
        self.sockets_open[reporter.index()].fetch_add(1, Relaxed);
    }

    pub fn socket_closed(&self, reporter: Reporter) {
        self.sockets_open[reporter.index()].fetch_sub(1, Relaxed);
    }

    pub fn conn_opened(&self, reporter: Reporter, carrier: Carrier) {
        self.opened[reporter.index()][carrier.index()].fetch_add(1, Relaxed);
    }

    pub fn conn_closed(&self, reporter: Reporter, carrier: Carrier) {
        self.closed[reporter.index()][carrier.index()].fetch_add(1, Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        self.refused[why.index()].fetch_add(1, Relaxed);
    }

    /// Publish this core's HBONE pool statistics: cumulative `dials` and `reuses`, and the
    /// pooled connections `open` now. Stored, not added.
    pub fn hbone_pool(&self, dials: u64, reuses: u64, open: u64) {
        self.pool_dials.store(dials, Relaxed);
        self.pool_reuses.store(reuses, Relaxed);
        self.pool_open.store(open, Relaxed);
    }

    fn opened_total(&self) -> u64 {
        self.opened.iter().flatten().map(|c| c.load(Relaxed)).sum()
    }

    fn closed_total(&self) -> u64 {
        self.closed.iter().flatten().map(|c| c.load(Relaxed)).sum()
    }
}

/// Sums for the demo's summary and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    /// From originators (requests).
    pub received: u64,
    /// Toward originators (responses).
    pub sent: u64,
}

/// All cores' counters. `Send + Sync`: the control thread owns one `Arc<Metrics>`; each core
/// gets its shard and series cache once, at start.
pub struct Metrics {
    shards: Vec<Arc<Shard>>,
    senders: Mutex<Vec<Option<Sender<Arc<Series>>>>>,
    series: Mutex<Registry>,
}

struct Registry {
    incoming: Receiver<Arc<Series>>,
    all: Vec<Arc<Series>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("cores", &self.shards.len())
            .finish()
    }
}

/// What the node adds to every render: figures the control thread owns.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The I/O driver the workers run on.
    pub driver: String,
    /// Istio version for `istio_build{tag}` (`ISTIO_META_ISTIO_VERSION`), else `unknown`.
    pub istio_version: Option<String>,
    /// Gauges: (name, help, value).
    pub gauges: Vec<(&'static str, &'static str, f64)>,
    /// Counters: (name ending in `_total`, help, value).
    pub counters: Vec<(&'static str, &'static str, f64)>,
    /// Whole families rendered elsewhere (the control plane's), appended as they are.
    pub families: String,
}

impl Metrics {
    /// One shard per core (at least one).
    pub fn new(cores: usize) -> Arc<Metrics> {
        let (tx, rx) = channel();
        let n = cores.max(1);
        Arc::new(Metrics {
            shards: (0..n).map(|_| Arc::new(Shard::default())).collect(),
            senders: Mutex::new((0..n).map(|_| Some(tx.clone())).collect()),
            series: Mutex::new(Registry {
                incoming: rx,
                all: Vec::new(),
            }),
        })
    }

    /// Worker `core`'s shard (an index `0..cores`, not a CPU number; past the end wraps).
    pub fn shard(&self, core: usize) -> Arc<Shard> {
        Arc::clone(&self.shards[core % self.shards.len()])
    }

    /// Worker `core`'s series cache. Each core takes its own once; taking it again gives a
    /// cache of its own too (series with equal labels are summed when rendered).
    pub fn series_cache(&self, core: usize) -> SeriesCache {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let n = senders.len();
        let tx = match senders[core % n].take() {
            Some(tx) => tx,
            None => senders
                .iter()
                .flatten()
                .next()
                .cloned()
                .unwrap_or_else(|| channel().0),
        };
        SeriesCache {
            by_key: HashMap::new(),
            by_labels: HashMap::new(),
            new_series: tx,
            overflowed: false,
        }
    }

    pub fn cores(&self) -> usize {
        self.shards.len()
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |acc, s| acc.wrapping_add(f(s)))
    }

    /// Every series announced so far.
    fn all_series(&self) -> Vec<Arc<Series>> {
        let mut reg = self.series.lock().unwrap_or_else(|p| p.into_inner());
        while let Ok(s) = reg.incoming.try_recv() {
            reg.all.push(s);
        }
        reg.all.clone()
    }

    /// Sums over every series, for one reporter.
    pub fn totals(&self, reporter: Reporter) -> Totals {
        let mut t = Totals::default();
        let prefix = format!("reporter=\"{}\"", reporter.label());
        for s in self.all_series() {
            if !s.labels.head.starts_with(&prefix) {
                continue;
            }
            t.opened += s.opened.load(Relaxed);
            t.received += s.received.load(Relaxed);
            t.sent += s.sent.load(Relaxed);
            for f in ResponseFlags::ALL {
                let c = s.closed[f.index()].load(Relaxed);
                t.closed += c;
                if f != ResponseFlags::None {
                    t.failed += c;
                }
            }
        }
        t
    }

    /// Renders every family in the Prometheus text format 0.0.4: each family has `# HELP` and
    /// `# TYPE` lines; counters end in `_total`; Istio families with no series yet are left
    /// out (as ztunnel's); zero `closed`/`failed` cells of a flag are left out.
    pub fn render_prometheus(&self, extras: &Extras) -> String {
        let mut out = String::with_capacity(8192);
        header(
            &mut out,
            "istio_build",
            "gauge",
            "Istio component build info.",
        );
        // `component="ztunnel"`: Istio's dashboards select the node proxy by it, and this
        // process does its job (the ringmesh version is in `ringmesh_build_info`).
        let tag = extras.istio_version.as_deref().unwrap_or("unknown");
        let _ = writeln!(
            out,
            "istio_build{} 1",
            simple(&[("component", "ztunnel"), ("tag", tag)])
        );
        header(
            &mut out,
            "ringmesh_build_info",
            "gauge",
            "Always 1; the label names the ringmesh version.",
        );
        let _ = writeln!(
            out,
            "ringmesh_build_info{} 1",
            simple(&[("version", env!("CARGO_PKG_VERSION"))])
        );

        self.render_series(&mut out);

        header(
            &mut out,
            "istio_tcp_sockets_open",
            "gauge",
            "The current number of open TCP sockets (unstable).",
        );
        for r in Reporter::ALL {
            let v = self.sum(|s| s.sockets_open[r.index()].load(Relaxed));
            let _ = writeln!(
                out,
                "istio_tcp_sockets_open{} {v}",
                simple(&[("reporter", r.label())])
            );
        }

        header(
            &mut out,
            "ringmesh_connections_closed_total",
            "counter",
            "Connections closed, by reporter and how they were carried.",
        );
        for r in Reporter::ALL {
            for c in Carrier::ALL {
                let v = self.sum(|s| s.closed[r.index()][c.index()].load(Relaxed));
                let _ = writeln!(
                    out,
                    "ringmesh_connections_closed_total{} {v}",
                    simple(&[("reporter", r.label()), ("protocol", c.label())])
                );
            }
        }
        header(
            &mut out,
            "ringmesh_connections_active",
            "gauge",
            "Connections open now (opened minus closed), by reporter and how they are carried.",
        );
        for r in Reporter::ALL {
            for c in Carrier::ALL {
                let (ri, ci) = (r.index(), c.index());
                // Closed first: a close is counted after its open, so this order keeps the
                // difference from going negative in the common case.
                let closed = self.sum(|s| s.closed[ri][ci].load(Relaxed));
                let opened = self.sum(|s| s.opened[ri][ci].load(Relaxed));
                let _ = writeln!(
                    out,
                    "ringmesh_connections_active{} {}",
                    simple(&[("reporter", r.label()), ("protocol", c.label())]),
                    opened.saturating_sub(closed)
                );
            }
        }
        header(
            &mut out,
            "ringmesh_connections_refused_total",
            "counter",
            "Connections refused before they were opened (no Istio metric counts these; the access log has a `connection failed` line for each, rate-limited).",
        );
        for why in Refusal::ALL {
            let v = self.sum(|s| s.refused[why.index()].load(Relaxed));
            let _ = writeln!(
                out,
                "ringmesh_connections_refused_total{} {v}",
                simple(&[("reason", why.label())])
            );
        }

        header(
            &mut out,
            "ringmesh_runtime_info",
            "gauge",
            "Always 1; the label names the I/O driver the workers run on.",
        );
        let _ = writeln!(
            out,
            "ringmesh_runtime_info{} 1",
            simple(&[("driver", &extras.driver)])
        );
        header(
            &mut out,
            "ringmesh_workers",
            "gauge",
            "Number of worker threads (one per core, one metrics shard each).",
        );
        let _ = writeln!(out, "ringmesh_workers {}", self.shards.len());
        // Per worker: how evenly the kernel hands connections to the cores' listeners.
        type PerWorker = (&'static str, &'static str, &'static str, fn(&Shard) -> u64);
        let worker_families: [PerWorker; 2] = [
            (
                "ringmesh_worker_connections_opened_total",
                "counter",
                "Connections opened by each worker.",
                Shard::opened_total,
            ),
            (
                "ringmesh_worker_connections_active",
                "gauge",
                "Connections open now on each worker.",
                |s| s.opened_total().saturating_sub(s.closed_total()),
            ),
        ];
        for (name, kind, help, value) in worker_families {
            header(&mut out, name, kind, help);
            for (worker, shard) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{worker}\"}} {}", value(shard));
            }
        }
        let pool: [PerWorker; 3] = [
            (
                "ringmesh_hbone_pool_dials_total",
                "counter",
                "HBONE connections dialled by the outbound pools.",
                |s| s.pool_dials.load(Relaxed),
            ),
            (
                "ringmesh_hbone_pool_reuses_total",
                "counter",
                "HBONE streams opened on an already pooled connection.",
                |s| s.pool_reuses.load(Relaxed),
            ),
            (
                "ringmesh_hbone_pool_connections_open",
                "gauge",
                "HBONE connections currently held by the outbound pools.",
                |s| s.pool_open.load(Relaxed),
            ),
        ];
        for (name, kind, help, value) in pool {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {}", self.sum(value));
        }
        for &(name, help, value) in &extras.gauges {
            family(&mut out, name, "gauge", help, value);
        }
        for &(name, help, value) in &extras.counters {
            family(&mut out, name, "counter", help, value);
        }
        out.push_str(&extras.families);
        out
    }

    fn render_series(&self, out: &mut String) {
        #[derive(Default)]
        struct Sum {
            opened: u64,
            received: u64,
            sent: u64,
            closed: [u64; ResponseFlags::COUNT],
        }
        let all = self.all_series();
        // Equal label sets from several cores (or created again after a config change) are
        // one series of the exposition; first-seen order keeps the output stable.
        let mut order: Vec<&Rendered> = Vec::new();
        let mut sums: HashMap<&Rendered, Sum> = HashMap::new();
        for s in &all {
            let sum = sums.entry(&s.labels).or_insert_with(|| {
                order.push(&s.labels);
                Sum::default()
            });
            sum.opened += s.opened.load(Relaxed);
            sum.received += s.received.load(Relaxed);
            sum.sent += s.sent.load(Relaxed);
            for f in ResponseFlags::ALL {
                sum.closed[f.index()] += s.closed[f.index()].load(Relaxed);
            }
        }
        if order.is_empty() {
            return;
        }
        type Value = fn(&Sum) -> u64;
        let plain: [(&str, &str, Value); 3] = [
            (
                "istio_tcp_connections_opened_total",
                "The total number of TCP connections opened.",
                |s| s.opened,
            ),
            (
                "istio_tcp_received_bytes_total",
                "The size of total bytes received during request in case of a TCP connection.",
                |s| s.received,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "The size of total bytes sent during response in case of a TCP connection.",
                |s| s.sent,
            ),
        ];
        for (i, (name, help, value)) in plain.iter().enumerate() {
            header(out, name, "counter", help);
            for labels in &order {
                let sum = &sums[labels];
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels.with_flags(ResponseFlags::None),
                    value(sum)
                );
            }
            if i == 0 {
                // Closed and failed follow opened, as in ztunnel's registration order.
                for (fname, fhelp, failed_only) in [
                    (
                        "istio_tcp_connections_closed_total",
                        "The total number of TCP connections closed.",
                        false,
                    ),
                    (
                        "istio_tcp_connections_failed_total",
                        "The total number of TCP connections that failed to establish (unstable).",
                        true,
                    ),
                ] {
                    header(out, fname, "counter", fhelp);
                    for labels in &order {
                        let sum = &sums[labels];
                        for f in ResponseFlags::ALL {
                            if failed_only && f == ResponseFlags::None {
                                continue;
                            }
                            let v = sum.closed[f.index()];
                            if v == 0 {
                                continue;
                            }
                            let _ = writeln!(out, "{fname}{} {v}", labels.with_flags(f));
                        }
                    }
                }
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    if !valid_metric_name(name) {
        tracing::warn!(name, "skipping a metric with an invalid name");
        return;
    }
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {}", format_float(value));
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the exposition format's metric-name grammar.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
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
mod tests;
