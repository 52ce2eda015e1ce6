//! The bounds a node enforces on what a peer can make it hold or wait for: a deadline for
//! every phase of a connection, and caps on connections per peer and per node, and on the
//! node's memory.
//!
//! Owns: [`Limits`] (settings, validated once) and [`NodeLoad`], the one value the control
//! thread and the cores share to shed load.
//!
//! Invariants:
//! - every phase a peer controls has a deadline: TCP connect, TLS handshake, HTTP/2 preface
//!   and SETTINGS, the first CONNECT of a connection and the time between streams, the SOCKS5
//!   greeting; optionally a relayed connection's silence ([`Limits::idle_timeout`]);
//! - a core never holds more than its share of [`Limits::max_connections`], nor more than
//!   [`Limits::max_peer_connections`] inbound HBONE connections from one peer IP: past
//!   either, a new connection is refused at once (RST), counted and logged (rate-limited);
//! - while the node's resident memory is above [`Limits::memory_limit`], every new connection
//!   and every new tunnel is refused (RST, or 503 on an open HBONE connection) and the node
//!   says so, until memory falls below [`MEMORY_RESUME_PERCENT`] of the limit: load is shed,
//!   memory does not grow, and a node hovering at its limit does not flap between the two.
//!   Connections already open carry on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::options::OptionError;

/// TLS handshake deadline: hbone's default (10 s). A client that has not finished in 10 s is
/// broken or hostile (slowloris); its task and socket are freed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = hbone::server::DEFAULT_TLS_HANDSHAKE_TIMEOUT;

/// Deadline for the HTTP/2 connection preface and the peer's first SETTINGS after TLS
/// (RFC 9113 §3.4): a peer that completes mTLS and then says nothing held its connection
/// forever before this existed. 10 s, like the TLS handshake's.
pub const H2_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an inbound HBONE connection may stay open with no stream (before its first
/// CONNECT, or between streams) before the node closes it with GOAWAY. Longer than the
/// 5 min a client pool (ztunnel's and ours) keeps an unused connection, so well-behaved
/// peers close their idle connections first and never see this.
pub const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Deadline for a SOCKS5 client's greeting and request.
pub const SOCKS5_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for dialling an upstream (a local pod, or a plain-TCP destination). The HBONE
/// pool has its own (connect + TLS + HTTP/2, 10 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per node: the file-descriptor budget of a node proxy (each relayed
/// connection costs two descriptors, plus pipes when spliced). 100,000 is well above what
/// one node's pods open, and well below a raised `nofile` limit.
pub const MAX_CONNECTIONS: usize = 100_000;

/// Inbound HBONE connections one peer IP may hold on one worker. A peer node's pool opens
/// one connection per (source identity, destination identity, destination address) and a
/// few more past 100 streams each, so a legitimate peer stays far below this; a hostile one
/// is stopped long before descriptors run out.
pub const MAX_PEER_CONNECTIONS: usize = 1024;

/// Everything the limits are set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub tls_handshake_timeout: Duration,
    pub h2_handshake_timeout: Duration,
    pub h2_idle_timeout: Duration,
    pub socks5_handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// Close a relayed connection after this long without a byte either way (`None`: never,
    /// as ztunnel: long-lived quiet connections are normal, TCP keepalive finds dead peers).
    pub idle_timeout: Option<Duration>,
    pub max_connections: usize,
    pub max_peer_connections: usize,
    /// Refuse new connections while the node's resident memory is above this many bytes
    /// (`None`: no limit).
    pub memory_limit: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            h2_handshake_timeout: H2_HANDSHAKE_TIMEOUT,
            h2_idle_timeout: H2_IDLE_TIMEOUT,
            socks5_handshake_timeout: SOCKS5_HANDSHAKE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            idle_timeout: None,
            max_connections: MAX_CONNECTIONS,
            max_peer_connections: MAX_PEER_CONNECTIONS,
            memory_limit: None,
        }
    }
}

impl Limits {
    /// Refuses deadlines of zero (a phase that could never complete) and caps of zero.
    pub fn validate(&self) -> Result<(), OptionError> {
        let deadlines = [
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
            ("--h2-handshake-timeout", self.h2_handshake_timeout),
            ("--h2-idle-timeout", self.h2_idle_timeout),
            ("--socks5-handshake-timeout", self.socks5_handshake_timeout),
            ("--connect-timeout", self.connect_timeout),
        ];
        for (flag, d) in deadlines {
            if d < Duration::from_millis(10) {
                return Err(OptionError {
                    flag: flag.into(),
                    reason: format!("{d:?} is too short for any peer to complete this phase"),
                });
            }
        }
        if self
            .idle_timeout
            .is_some_and(|d| d < Duration::from_millis(10))
        {
            return Err(OptionError {
                flag: "--idle-timeout".into(),
                reason: "use 0 to never close quiet connections, or at least 10ms".into(),
            });
        }
        for (flag, n) in [
            ("--max-connections", self.max_connections),
            ("--max-peer-connections", self.max_peer_connections),
        ] {
            if n == 0 {
                return Err(OptionError {
                    flag: flag.into(),
                    reason: "0 would refuse every connection".into(),
                });
            }
        }
        if let Some(m) = self.memory_limit
            && m < MIN_MEMORY_LIMIT
        {
            return Err(OptionError {
                flag: "--memory-limit".into(),
                reason: format!(
                    "{} MiB is below what an idle node needs ({} MiB)",
                    m >> 20,
                    MIN_MEMORY_LIMIT >> 20
                ),
            });
        }
        Ok(())
    }

    /// One core's share of the node's connection cap (at least one).
    pub fn per_core_connections(&self, cores: usize) -> usize {
        self.max_connections.div_ceil(cores.max(1)).max(1)
    }
}

/// The smallest `--memory-limit`: an idle node's resident set is about 10 MiB (binary pages
/// included), so anything below 32 MiB would shed load at rest.
pub const MIN_MEMORY_LIMIT: u64 = 32 << 20;

/// Parses a size: `512MiB`, `1GiB`, `64M`, `100000000` (bytes), or `none`.
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") || t == "0" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MiB, 2GiB or none"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .map(Some)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Load-shedding state shared by the control thread (which measures) and the cores (which
/// read it at every accept). One atomic flag, read with `Relaxed`: a core that sees the
/// change one connection late sheds or admits one connection more, nothing worse.
#[derive(Debug, Default)]
pub struct NodeLoad {
    over_memory: AtomicBool,
    /// The last resident set measured, in bytes (for logs and `/metrics`).
    rss: AtomicU64,
    /// Connections refused by any limit, node-wide (for `/metrics`).
    shed: AtomicU64,
}

impl NodeLoad {
    pub fn new() -> Arc<NodeLoad> {
        Arc::new(NodeLoad::default())
    }

    /// Whether new connections must be refused for memory now.
    pub fn over_memory(&self) -> bool {
        self.over_memory.load(Ordering::Relaxed)
    }

    /// Records a measurement against `limit`; returns `Some(now_over)` when the state
    /// changed. The node goes over above `limit` and comes back only below
    /// [`MEMORY_RESUME_PERCENT`] of it.
    pub fn observe(&self, rss: u64, limit: Option<u64>) -> Option<bool> {
        self.rss.store(rss, Ordering::Relaxed);
        let was = self.over_memory.load(Ordering::Relaxed);
        let over = limit.is_some_and(|l| if was { rss >= resume_below(l) } else { rss > l });
        self.over_memory.store(over, Ordering::Relaxed);
        (was != over).then_some(over)
    }

    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    pub fn count_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

/// This process's resident set in bytes (`VmRSS` of `/proc/self/status`, which the kernel
/// gives in KiB, so no page size is assumed), or `None` where unreadable.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// A node over its memory limit accepts again only once its resident set is below this
/// share of the limit. Without the gap, a node at its limit flips every sample: the workers
/// hand freed memory back to the OS every few seconds, which drops RSS by a MiB or two,
/// admits a burst of connections, and goes over again; operators see a flapping log and
/// clients see refusals come and go. 90 % leaves 10 % (51 MiB of 512) to be freed first,
/// which closing a few busy connections does.
pub const MEMORY_RESUME_PERCENT: u64 = 90;

/// The resident set below which a node over `limit` accepts again.
pub fn resume_below(limit: u64) -> u64 {
    limit / 100 * MEMORY_RESUME_PERCENT
}

/// How often the control thread measures the resident set. A flood at line rate grows a
/// node by at most a few MiB in 100 ms, and reading `/proc/self/status` costs microseconds.
pub const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_size("512MiB"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("2G"), Ok(Some(2 << 30)));
        assert_eq!(parse_size("4096"), Ok(Some(4096)));
        assert_eq!(parse_size("none"), Ok(None));
        assert_eq!(parse_size("0"), Ok(None));
        assert!(parse_size("lots").unwrap_err().contains("\"lots\""));
        assert!(parse_size("5TiB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn load_reports_crossings_once() {
        let load = NodeLoad::default();
        assert_eq!(load.observe(10, Some(100)), None);
        assert_eq!(load.observe(200, Some(100)), Some(true));
        assert!(load.over_memory());
        assert_eq!(load.observe(300, Some(100)), None);
        assert_eq!(load.observe(50, Some(100)), Some(false));
        assert!(!load.over_memory());
        assert_eq!(load.observe(u64::MAX, None), None, "no limit, never over");
        assert!(resident_bytes().unwrap() > 1 << 20);
    }

    #[test]
    fn zero_deadlines_and_caps_are_refused_by_flag() {
        let mut l = Limits {
            h2_handshake_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().flag, "--h2-handshake-timeout");
        l = Limits {
            max_peer_connections: 0,
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().flag, "--max-peer-connections");
        l = Limits {
            memory_limit: Some(1 << 20),
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().flag, "--memory-limit");
        assert!(Limits::default().validate().is_ok());
        assert_eq!(Limits::default().per_core_connections(3), 33_334);
    }

    #[test]
    fn memory_shedding_starts_above_the_limit_and_ends_below_ninety_percent() {
        let load = NodeLoad::default();
        let limit = Some(100 << 20);
        assert_eq!(
            load.observe(100 << 20, limit),
            None,
            "at the limit is not over"
        );
        assert_eq!(load.observe((100 << 20) + 1, limit), Some(true));
        assert!(load.over_memory());
        // Falling a little does not reopen the door.
        assert_eq!(load.observe(95 << 20, limit), None);
        assert!(load.over_memory());
        assert_eq!(load.observe(91 << 20, limit), None);
        assert_eq!(load.observe(89 << 20, limit), Some(false));
        assert!(!load.over_memory());
        // Back under, growing to the limit again does not shed yet.
        assert_eq!(load.observe(99 << 20, limit), None);
        assert_eq!(load.observe(1 << 40, None), None, "no limit: never over");
    }
}
