//! Run reports: the merged result of one run as a readable table, as JSON, and the merged
//! latency histogram in HdrHistogram's interval-log format.
//!
//! Invariants:
//! - The JSON field names are a public interface (the `bench` harness and scripts read them);
//!   they are documented in `loadgen --help` and only ever added to, never renamed.
//! - Rates are computed over the measured window only (after warm-up), never over set-up.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use serde::Serialize;

use crate::Error;
use crate::histogram::LatencySummary;
use crate::schedule::LATE_THRESHOLD;
use crate::stats::{ErrorCounts, ErrorKind, WorkerStats};

/// Describes how a run was set up; filled by the caller, copied into the [`Report`].
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// Client mode: `tcp`, `http1`, `http2`, `connect-churn`, `hbone`.
    pub mode: String,
    /// Target address or URL.
    pub target: String,
    /// Open-loop target rate; `None` for closed loop.
    pub target_rps: Option<f64>,
    /// Open-loop arrival process (`uniform` or `poisson`).
    pub arrival: Option<String>,
    /// Connections across all workers.
    pub connections: usize,
    /// Concurrent streams per connection (HTTP/2, HBONE); 1 otherwise.
    pub streams: usize,
    /// Worker threads (one per core).
    pub cores: usize,
    /// I/O driver the workers ran on.
    pub driver: String,
    /// Warm-up excluded from the figures.
    pub warmup: Duration,
    /// Length of the measured window.
    pub measured: Duration,
    /// Wall-clock time when the measured window started.
    pub started_at: Option<SystemTime>,
}

/// The result of one run. Field names are the JSON interface.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: String,
    /// `closed` or `open`.
    pub load: &'static str,
    pub arrival: Option<String>,
    pub target: String,
    pub target_rps: Option<f64>,
    pub achieved_rps: f64,
    pub connections: usize,
    pub streams: usize,
    pub cores: usize,
    pub driver: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub requests: u64,
    pub responses: u64,
    pub errors: ErrorCounts,
    pub errors_total: u64,
    pub latency_us: LatencySummary,
    pub late_sends: u64,
    pub late_threshold_us: u64,
    pub bytes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_per_s: f64,
    pub connects: u64,
    pub latency_saturated: u64,
}

impl Report {
    /// Builds the report from the merged stats of every worker.
    pub fn new(info: &RunInfo, stats: &WorkerStats) -> Report {
        let secs = info.measured.as_secs_f64().max(1e-9);
        let bytes = stats.bytes_sent + stats.bytes_received;
        Report {
            mode: info.mode.clone(),
            load: if info.target_rps.is_some() {
                "open"
            } else {
                "closed"
            },
            arrival: info.arrival.clone(),
            target: info.target.clone(),
            target_rps: info.target_rps,
            achieved_rps: round2(stats.requests as f64 / secs),
            connections: info.connections,
            streams: info.streams,
            cores: info.cores,
            driver: info.driver.clone(),
            duration_s: round3(info.measured.as_secs_f64()),
            warmup_s: round3(info.warmup.as_secs_f64()),
            requests: stats.requests,
            responses: stats.responses,
            errors: stats.errors,
            errors_total: stats.errors.total(),
            latency_us: stats.latency.summary(),
            late_sends: stats.late_sends,
            late_threshold_us: LATE_THRESHOLD.as_micros() as u64,
            bytes,
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            bytes_per_s: round2(bytes as f64 / secs),
            connects: stats.connects,
            latency_saturated: stats.latency.saturated(),
        }
    }

    /// True when any request failed.
    pub fn has_errors(&self) -> bool {
        self.errors_total > 0
    }

    /// The human-readable table printed on stdout.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let load = match (self.target_rps, &self.arrival) {
            (Some(r), Some(a)) => format!("open loop at {r} req/s ({a} arrivals)"),
            (Some(r), None) => format!("open loop at {r} req/s"),
            _ => "closed loop".to_string(),
        };
        let streams = if self.streams > 1 {
            format!(" x {} streams", self.streams)
        } else {
            String::new()
        };
        s += &format!(
            "loadgen {} -> {}: {load}, {} connections{streams}, {} cores ({})\n",
            self.mode, self.target, self.connections, self.cores, self.driver
        );
        s += &format!(
            "  measured   {:.2} s (after {:.2} s warm-up)\n",
            self.duration_s, self.warmup_s
        );
        s += &format!(
            "  requests   {}   responses {}   errors {}\n",
            self.requests, self.responses, self.errors_total
        );
        s += &format!(
            "  throughput {:.1} req/s   {}/s (sent {}, received {})\n",
            self.achieved_rps,
            human_bytes(self.bytes_per_s),
            human_bytes(self.bytes_sent as f64),
            human_bytes(self.bytes_received as f64)
        );
        if self.target_rps.is_some() {
            s += &format!(
                "  late sends {} (sent > {} us after the intended time; latency counts from the intended time)\n",
                self.late_sends, self.late_threshold_us
            );
        }
        let l = &self.latency_us;
        s += "  latency us      p50      p90      p99    p99.9   p99.99      max      mean\n";
        s += &format!(
            "             {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9.1}\n",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.mean
        );
        if self.latency_saturated > 0 {
            s += &format!(
                "  note: {} samples exceeded 60 s and count as 60 s\n",
                self.latency_saturated
            );
        }
        if self.has_errors() {
            let parts: Vec<String> = ErrorKind::ALL
                .iter()
                .filter(|k| self.errors.get(**k) > 0)
                .map(|k| format!("{} {}", k.as_str(), self.errors.get(*k)))
                .collect();
            s += &format!("  errors     {}\n", parts.join(", "));
        }
        s
    }

    /// Writes the JSON report to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        write_json(path, self)
    }
}

/// Writes any serializable value as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Output {
        what: "JSON",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| Error::Output {
        what: "JSON",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `hist` as one interval covering the measured window, in HdrHistogram's interval
/// log format (V2, deflate-compressed, as Java's `HistogramLogProcessor` and
/// `hdrhistogram` readers expect). Values are microseconds.
pub fn write_hdr_log(
    path: &Path,
    hist: &crate::histogram::LatencyHistogram,
    started_at: SystemTime,
    measured: Duration,
    tag: &str,
) -> Result<(), Error> {
    let io_err = |source| Error::Output {
        what: "HdrHistogram log",
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    {
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("ringmesh loadgen latency histogram; values in microseconds")
            .with_start_time(started_at)
            .with_base_time(started_at)
            .begin_log_with(&mut out, &mut ser)
            .map_err(io_err)?;
        w.write_comment("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"")
            .map_err(io_err)?;
        w.write_histogram(hist.inner(), Duration::ZERO, measured, Tag::new(tag))
            .map_err(|e| io_err(std::io::Error::other(format!("{e:?}"))))?;
    }
    let mut f = std::fs::File::create(path).map_err(io_err)?;
    f.write_all(&out).map_err(io_err)
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2} {}", UNITS[i])
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn sample() -> (RunInfo, WorkerStats) {
        let mut st = WorkerStats::default();
        for us in 1..=1000 {
            st.ok(Duration::from_micros(us));
        }
        st.err(ErrorKind::Reset);
        st.bytes_sent = 1000;
        st.bytes_received = 3000;
        st.late_sends = 2;
        let info = RunInfo {
            mode: "http1".into(),
            target: "127.0.0.1:1".into(),
            target_rps: Some(1000.0),
            arrival: Some("uniform".into()),
            connections: 4,
            streams: 1,
            cores: 2,
            driver: "epoll".into(),
            warmup: Duration::from_millis(500),
            measured: Duration::from_secs(2),
            started_at: Some(SystemTime::now()),
        };
        (info, st)
    }

    #[test]
    fn json_has_documented_fields() {
        let (info, st) = sample();
        let r = Report::new(&info, &st);
        let v = serde_json::to_value(&r).unwrap();
        for f in [
            "achieved_rps",
            "requests",
            "responses",
            "errors",
            "errors_total",
            "latency_us",
            "late_sends",
            "bytes",
            "duration_s",
            "target_rps",
            "mode",
            "connections",
            "load",
        ] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        for f in ["p50", "p90", "p99", "p999", "p9999", "max", "mean"] {
            assert!(v["latency_us"].get(f).is_some(), "missing latency_us.{f}");
        }
        assert_eq!(v["requests"], 1001);
        assert_eq!(v["errors"]["reset"], 1);
        assert_eq!(v["achieved_rps"], 500.5);
        assert_eq!(v["bytes"], 4000);
        assert_eq!(v["load"], "open");
        assert!(r.table().contains("reset 1"));
        assert!(r.table().contains("late sends 2"));
    }

    #[test]
    fn hdr_log_roundtrips() {
        let (info, st) = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.hlog");
        write_hdr_log(
            &p,
            &st.latency,
            info.started_at.unwrap(),
            info.measured,
            "run",
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("#[StartTime:"));
        let mut hists = 0;
        for entry in IntervalLogIterator::new(&bytes) {
            if let LogEntry::Interval(h) = entry.unwrap() {
                let decoded = base64_decode(h.encoded_histogram());
                let back: hdrhistogram::Histogram<u64> = Deserializer::new()
                    .deserialize(&mut std::io::Cursor::new(decoded))
                    .unwrap();
                assert_eq!(&back, st.latency.inner());
                assert_eq!(h.tag().unwrap().as_str(), "run");
                hists += 1;
            }
        }
        assert_eq!(hists, 1);
    }

    /// Standard base64 (the log's encoding), decoded here to avoid a direct dependency.
    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64"),
        };
        let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
        let mut out = Vec::new();
        for chunk in clean.chunks(4) {
            let mut acc: u32 = 0;
            for (i, &c) in chunk.iter().enumerate() {
                acc |= u32::from(val(c)) << (18 - 6 * i);
            }
            let n = chunk.len() * 6 / 8;
            for i in 0..n {
                out.push((acc >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}
