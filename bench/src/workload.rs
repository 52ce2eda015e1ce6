//! Workloads: which `loadgen` client runs against which `loadgen serve` backend, and the
//! JSON result each client run writes.
//!
//! The bench crate generates no load itself; this module only builds loadgen's command
//! lines (its CLI shape is fixed by the loadgen issue) and reads its `--json` output.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a workload's bytes look like to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// HTTP/1.1 requests (an L7 proxy can route them).
    Http,
    /// Raw TCP streams (only L4 proxies carry them).
    Tcp,
}

/// The traffic shapes compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// HTTP/1.1, open loop at 1,000 req/s, 1 KiB responses, 16 connections: Istio's
    /// published performance setup (fortio, 1 kB payload, 16 client connections, 1000 QPS).
    Http1k,
    /// HTTP/1.1, closed loop, 16 connections, as fast as the path allows.
    HttpMax,
    /// One TCP stream moving bytes as fast as possible (4 MiB echoed per turn).
    Bulk1,
    /// Eight parallel bulk TCP streams.
    Bulk8,
    /// A new TCP connection per 1 KiB request/response (handshake path).
    Churn,
    /// 1,000 TCP connections held open, each carrying one 64 B echo every
    /// [`HOLD_PERIOD_S`] s: the memory a proxy keeps per held, mostly idle connection.
    Hold1k,
    /// The same with 10,000 connections.
    Hold10k,
}

/// Seconds between two echoes on one held connection: every connection is open within the
/// first period (loadgen dials a slot at its first send, staggered over the period), so the
/// second half of a 10 s run, where the steady memory is read, sees them all.
pub const HOLD_PERIOD_S: u32 = 2;
/// Bytes of each echo on a held connection.
pub const HOLD_PAYLOAD_BYTES: u32 = 64;

/// HTTP request rate of `http-1k` (Istio's published setup).
pub const HTTP_RATE: u32 = 1000;
/// Connections of the HTTP workloads (Istio's published setup).
pub const HTTP_CONNECTIONS: u32 = 16;
/// Payload of the HTTP and churn workloads.
pub const PAYLOAD_BYTES: u32 = 1024;
/// Concurrent connections of `churn`: enough to keep both cores busy with handshakes.
pub const CHURN_CONNECTIONS: u32 = 8;

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 7] = [
        Workload::Http1k,
        Workload::HttpMax,
        Workload::Bulk1,
        Workload::Bulk8,
        Workload::Churn,
        Workload::Hold1k,
        Workload::Hold10k,
    ];

    /// The workloads of a run without `--workloads`: all but `hold-10k` (which needs
    /// 20,000+ descriptors in a two-hop proxy and adds little over `hold-1k` unless memory
    /// per connection is the question).
    pub const DEFAULT: [Workload; 6] = [
        Workload::Http1k,
        Workload::HttpMax,
        Workload::Bulk1,
        Workload::Bulk8,
        Workload::Churn,
        Workload::Hold1k,
    ];

    /// How many connections a held-connections workload holds; `None` for the others.
    pub fn held_connections(self) -> Option<u32> {
        match self {
            Workload::Hold1k => Some(1_000),
            Workload::Hold10k => Some(10_000),
            _ => None,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Http1k => "http-1k",
            Workload::HttpMax => "http-max",
            Workload::Bulk1 => "bulk-1",
            Workload::Bulk8 => "bulk-8",
            Workload::Churn => "churn",
            Workload::Hold1k => "hold-1k",
            Workload::Hold10k => "hold-10k",
        }
    }

    /// The protocol the proxies see.
    pub fn protocol(self) -> Protocol {
        match self {
            Workload::Http1k | Workload::HttpMax => Protocol::Http,
            Workload::Bulk1
            | Workload::Bulk8
            | Workload::Churn
            | Workload::Hold1k
            | Workload::Hold10k => Protocol::Tcp,
        }
    }

    /// Whether the headline figure is bytes (CPU per GB) rather than requests.
    pub fn is_bulk(self) -> bool {
        matches!(self, Workload::Bulk1 | Workload::Bulk8)
    }

    /// `loadgen serve` arguments for this workload's backend. It listens on an ephemeral
    /// port of loopback address `ip` and prints `listening on ADDR` (see [`parse_listening`]).
    pub fn backend_args(self, ip: std::net::IpAddr) -> Vec<String> {
        let mode = match self {
            Workload::Http1k | Workload::HttpMax => "http1",
            _ => "echo",
        };
        let listen = SocketAddr::new(ip, 0).to_string();
        let mut args: Vec<String> = ["serve", "--mode", mode, "--listen", &listen]
            .map(String::from)
            .to_vec();
        if self.protocol() == Protocol::Http {
            args.extend(["--body-size".into(), PAYLOAD_BYTES.to_string()]);
        }
        args
    }

    /// `loadgen` client arguments: run against `entry` for `duration`, JSON into `json`.
    ///
    /// Bulk workloads echo [`BULK_CHUNK`] bytes per request in a closed loop (loadgen's
    /// `tcp` client has no one-way stream mode): every byte crosses each proxy once in each
    /// direction and loadgen's `bytes` counts both, so CPU per GB is per byte carried.
    pub fn client_args(self, entry: SocketAddr, duration: Duration, json: &Path) -> Vec<String> {
        let url = format!("http://{entry}/");
        let s = |v: &str| v.to_string();
        let mut args: Vec<String> = match self {
            Workload::Http1k => vec![
                s("http1"),
                url,
                s("--rate"),
                HTTP_RATE.to_string(),
                s("--connections"),
                HTTP_CONNECTIONS.to_string(),
            ],
            Workload::HttpMax => vec![
                s("http1"),
                url,
                s("--closed"),
                s("--connections"),
                HTTP_CONNECTIONS.to_string(),
            ],
            Workload::Bulk1 | Workload::Bulk8 => vec![
                s("tcp"),
                entry.to_string(),
                s("--closed"),
                s("--size"),
                BULK_CHUNK.to_string(),
                s("--connections"),
                s(if self == Workload::Bulk1 { "1" } else { "8" }),
            ],
            Workload::Churn => vec![
                s("connect-churn"),
                entry.to_string(),
                s("--closed"),
                s("--size"),
                PAYLOAD_BYTES.to_string(),
                s("--connections"),
                CHURN_CONNECTIONS.to_string(),
            ],
            Workload::Hold1k | Workload::Hold10k => {
                let n = self.held_connections().unwrap_or(1);
                vec![
                    s("tcp"),
                    entry.to_string(),
                    s("--rate"),
                    (n / HOLD_PERIOD_S).max(1).to_string(),
                    s("--size"),
                    HOLD_PAYLOAD_BYTES.to_string(),
                    s("--connections"),
                    n.to_string(),
                    // Thousands of dials in the first period queue behind each other.
                    s("--connect-timeout"),
                    s("10s"),
                ]
            }
        };
        args.extend([
            s("--duration"),
            format!("{}ms", duration.as_millis().max(100)),
            s("--quiet"),
            s("--json"),
            json.display().to_string(),
        ]);
        args
    }
}

/// Bytes echoed per bulk request: 4 MiB keeps the pipe full for milliseconds per turn, so
/// the ping-pong turnaround costs a few percent of throughput at most.
pub const BULK_CHUNK: u32 = 4 << 20;

/// The address in `loadgen serve`'s `listening on ADDR (...)` line, if `output` has it.
pub fn parse_listening(output: &str) -> Option<SocketAddr> {
    output.lines().find_map(|l| {
        l.strip_prefix("listening on ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

impl FromStr for Workload {
    type Err = Error;
    fn from_str(s: &str) -> Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
                Error::invalid(
                    "workload",
                    format!("`{s}` is not one of {}", names.join(", ")),
                )
            })
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The figures the bench reads from one `loadgen --json` file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientResult {
    pub achieved_rps: f64,
    pub requests: u64,
    /// Errors of every kind, summed.
    pub errors: u64,
    pub latency_us: Latency,
    pub late_sends: u64,
    /// Payload bytes moved (both directions as loadgen counts them).
    pub bytes: u64,
    pub duration_s: f64,
}

/// Reads a loadgen JSON result. `errors` may be a number or an object of counts by kind
/// (`errors_total`, or a `total` field, wins when present); `bytes`, `late_sends` and `duration_s` may be
/// absent (zero).
pub fn parse_client_json(text: &str, what: &str) -> Result<ClientResult> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::parse(what, e))?;
    let num = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| Error::parse(what, format!("missing number `{key}`")))
    };
    let opt = |key: &str| v.get(key).and_then(|x| x.as_f64()).unwrap_or(0.0);
    let errors = match v.get("errors") {
        Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(0.0) as u64,
        Some(serde_json::Value::Object(m)) => {
            match (
                v.get("errors_total").and_then(|t| t.as_u64()),
                m.get("total").and_then(|t| t.as_u64()),
            ) {
                (Some(t), _) | (None, Some(t)) => t,
                _ => m.values().filter_map(|x| x.as_u64()).sum(),
            }
        }
        Some(serde_json::Value::Null) | None => 0,
        Some(other) => {
            return Err(Error::parse(
                what,
                format!("`errors` is neither a count nor an object: {other}"),
            ));
        }
    };
    let lat = v
        .get("latency_us")
        .ok_or_else(|| Error::parse(what, "missing `latency_us`"))?;
    let p = |key: &str| -> Result<f64> {
        lat.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| Error::parse(what, format!("missing number `latency_us.{key}`")))
    };
    Ok(ClientResult {
        achieved_rps: num("achieved_rps")?,
        requests: num("requests")? as u64,
        errors,
        latency_us: Latency {
            p50: p("p50")?,
            p90: p("p90")?,
            p99: p("p99")?,
            p999: p("p999")?,
            max: p("max")?,
        },
        late_sends: opt("late_sends") as u64,
        bytes: opt("bytes") as u64,
        duration_s: opt("duration_s"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_errors_by_kind_and_as_count() {
        let j = r#"{"achieved_rps": 999.5, "requests": 2999, "errors": {"refused": 1, "timeout": 2},
                   "latency_us": {"p50": 80, "p90": 100, "p99": 150.5, "p999": 300, "max": 900},
                   "late_sends": 3, "bytes": 3070976, "duration_s": 3.0}"#;
        let r = parse_client_json(j, "t").unwrap();
        assert_eq!(r.errors, 3);
        assert_eq!(r.requests, 2999);
        assert_eq!(r.latency_us.p99, 150.5);
        assert_eq!(r.bytes, 3070976);
        let j2 = r#"{"achieved_rps": 1, "requests": 1, "errors": 0,
                    "latency_us": {"p50": 1, "p90": 1, "p99": 1, "p999": 1, "max": 1}}"#;
        assert_eq!(parse_client_json(j2, "t").unwrap().errors, 0);
        let bad = r#"{"achieved_rps": 1, "requests": 1, "latency_us": {"p50": 1}}"#;
        let e = parse_client_json(bad, "run.json").unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("p90"), "{e}");
    }

    #[test]
    fn backend_address_is_read_from_its_output() {
        let out = "listening on 127.0.0.1:41234 (Http1, driver io_uring)\n";
        assert_eq!(
            parse_listening(out),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(parse_listening("starting\n"), None);
    }

    #[test]
    fn names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().unwrap(), w);
        }
        assert!("nope".parse::<Workload>().is_err());
    }
}
