//! The waypoint's `/metrics` and `/healthz/ready`: the cores' counters gathered by message
//! and rendered as Istio's request series (`reporter="waypoint"`), each metric with the
//! labels its Service's Telemetry leaves, removes or sets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use runtime::Broadcaster;
use waypoint::stats::Snapshot as StatsSnapshot;
use waypoint::telemetry::{Metric, TelemetryTable};

use super::Msg;
use super::telemetry::TelemetrySource;
use crate::config::Snapshot;

/// Time a core has to answer a stats request before /metrics answers without it.
const STATS_WAIT: Duration = Duration::from_secs(2);

/// `/metrics` (the cores' counters, summed) and `/healthz/ready` on a small thread of its
/// own: a scrape never runs on a core.
pub(super) fn serve_metrics(
    addr: SocketAddr,
    b: Broadcaster<Msg>,
    workers: usize,
    snapshot: Arc<Mutex<Arc<Snapshot>>>,
    telemetry: Arc<TelemetrySource>,
) -> Result<()> {
    let listener =
        StdListener::bind(addr).with_context(|| format!("--metrics {addr}: cannot listen"))?;
    std::thread::Builder::new()
        .name("waypoint-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                // The whole request head (up to 8 KiB): closing with unread bytes would
                // reset the connection under the answer.
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while buf.len() < 8192 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match path {
                    "/metrics" => {
                        let stats = gather(&b, workers);
                        let snap = snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let table = telemetry.current();
                        let mut text = render_istio(&stats, &snap, &table);
                        text.push_str(&stats.render());
                        text.push_str(&config_gauges());
                        ("200 OK", text)
                    }
                    "/healthz/ready" => ("200 OK", "ready\n".to_string()),
                    _ => ("404 Not Found", "try /metrics or /healthz/ready\n".to_string()),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.shutdown(std::net::Shutdown::Write);
            }
        })?;
    Ok(())
}

fn gather(b: &Broadcaster<Msg>, workers: usize) -> StatsSnapshot {
    let (tx, rx) = std::sync::mpsc::channel();
    b.send(Msg::Stats(tx));
    let mut total = StatsSnapshot::default();
    let deadline = std::time::Instant::now() + STATS_WAIT;
    for _ in 0..workers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) => total.add(&s),
            Err(_) => break,
        }
    }
    total
}

/// Istio's request series as a waypoint reports them (`reporter="waypoint"`): the standard
/// labels of the source workload, the Service and the endpoint that answered, with
/// `response_code`, `grpc_response_status` (empty for plain HTTP), `response_flags` and
/// `request_protocol` (`http` or `grpc`); and gRPC's message counters, labelled by the
/// peers and the Service only (as Envoy labels them). Each metric takes the labels its
/// Service's plan gives it (removed, or set by an `UPSERT`), and a metric the plan turns
/// off is not written for that Service.
pub fn render_istio(stats: &StatsSnapshot, snap: &Snapshot, table: &TelemetryTable) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use crate::telemetry::labels::LabelSet;
    use crate::telemetry::{Reporter, Security};
    use waypoint::stats::{BYTES_BUCKETS, DURATION_BUCKETS_MS, Tally};

    // Per metric: label string -> summed tally.
    let mut series: [BTreeMap<String, Tally>; 4] = Default::default();
    let labels_of = |service: &waypoint::route::ServiceRef,
                     source: Option<&str>,
                     endpoint: Option<&str>,
                     grpc: bool| {
        let source = source.and_then(|u| snap.workload_by_uid(u));
        let destination = endpoint.and_then(|u| snap.workload_by_uid(u));
        let service = snap.service_for(service);
        LabelSet {
            reporter: Reporter::Destination,
            source: source.map(|w| &**w),
            source_principal: source.map(|w| &w.identity),
            destination: destination.map(|w| &**w),
            service: service.map(|s| &**s),
            security: Security::MutualTls,
        }
        .render_as("waypoint", if grpc { "grpc" } else { "http" })
    };
    // A series kept by hostname (one of a ServiceEntry's hosts) takes the plan of the
    // Service's name, as the request did.
    let plan_of = |service: &waypoint::route::ServiceRef| match service.host() {
        None => table.plan(service),
        Some(_) => match snap.service_for(service) {
            Some(s) => table.plan(&waypoint::route::ServiceRef::new(&s.namespace, &s.name)),
            None => table.plan(service),
        },
    };
    for (k, t) in &stats.requests {
        let plan = plan_of(&k.service);
        if !plan.metrics.reports_any() {
            continue;
        }
        let labels = labels_of(
            &k.service,
            k.source.as_deref(),
            k.endpoint.as_deref(),
            k.grpc,
        );
        let grpc_status = k.grpc_status.map(|s| s.to_string()).unwrap_or_default();
        let standard = format!(
            "{},response_code=\"{}\",grpc_response_status=\"{grpc_status}\",response_flags=\"{}\",{}",
            labels.head,
            k.code,
            k.outcome.flag(),
            labels.tail
        );
        for m in Metric::PER_REQUEST {
            let Some(changes) = plan.metrics.get(m) else {
                continue;
            };
            let key = if changes.removed.is_empty() && changes.upserted.is_empty() {
                standard.clone()
            } else {
                relabel(&standard, &changes.removed, &changes.upserted, &k.tags)
            };
            let e = series[m as usize].entry(key).or_default();
            e.requests += t.requests;
            e.duration_ms.add(&t.duration_ms);
            e.request_bytes.add(&t.request_bytes);
            e.response_bytes.add(&t.response_bytes);
        }
    }
    let [count, duration, req_size, resp_size] = &series;
    let mut out = String::new();
    out.push_str("# HELP istio_requests_total Requests the waypoint answered.\n# TYPE istio_requests_total counter\n");
    for (labels, t) in count {
        let _ = writeln!(out, "istio_requests_total{{{labels}}} {}", t.requests);
    }
    write_hist(
        &mut out,
        "istio_request_duration_milliseconds",
        "Request duration, to the end of the response.",
        &DURATION_BUCKETS_MS,
        duration,
        |t| &t.duration_ms,
    );
    write_hist(
        &mut out,
        "istio_request_bytes",
        "Request body sizes.",
        &BYTES_BUCKETS,
        req_size,
        |t| &t.request_bytes,
    );
    write_hist(
        &mut out,
        "istio_response_bytes",
        "Response body sizes.",
        &BYTES_BUCKETS,
        resp_size,
        |t| &t.response_bytes,
    );
    // gRPC messages: per metric, label string -> count.
    let mut messages: [BTreeMap<String, u64>; 2] = Default::default();
    for (k, m) in &stats.messages {
        let plan = plan_of(&k.service);
        let labels = labels_of(&k.service, k.source.as_deref(), k.endpoint.as_deref(), true);
        // Envoy's message counters carry the peers' labels, not the request's outcome.
        let standard = relabel(
            &format!("{},{}", labels.head, labels.tail),
            &[
                "request_protocol".into(),
                "connection_security_policy".into(),
            ],
            &[],
            &[],
        );
        for (i, metric, n) in [
            (0, Metric::GrpcRequestMessages, m.request),
            (1, Metric::GrpcResponseMessages, m.response),
        ] {
            let Some(changes) = plan.metrics.get(metric) else {
                continue;
            };
            let key = if changes.removed.is_empty() && changes.upserted.is_empty() {
                standard.clone()
            } else {
                relabel(&standard, &changes.removed, &changes.upserted, &k.tags)
            };
            *messages[i].entry(key).or_default() += n;
        }
    }
    for ((name, help), series) in [
        (
            "istio_request_messages_total",
            "gRPC messages the clients sent.",
        ),
        (
            "istio_response_messages_total",
            "gRPC messages the servers sent.",
        ),
    ]
    .into_iter()
    .zip(&messages)
    {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, n) in series {
            let _ = writeln!(out, "{name}{{{labels}}} {n}");
        }
    }
    out
}

/// `labels` (Prometheus `name="value"` pairs, comma-separated, values escaped) without the
/// `removed` names, and with each `upserted` name set to the request's value (`unknown`
/// when it has none): replaced where the label exists, added at the end where not.
fn relabel(
    labels: &str,
    removed: &[String],
    upserted: &[String],
    values: &[(Arc<str>, String)],
) -> String {
    let mut pairs = split_labels(labels);
    pairs.retain(|(n, _)| !removed.iter().any(|r| r == n));
    for name in upserted {
        let v = values
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or("unknown", |(_, v)| v.as_str());
        let escaped = escape(v);
        match pairs.iter_mut().find(|(n, _)| n == name) {
            Some(p) => p.1 = escaped,
            None => pairs.push((name.clone(), escaped)),
        }
    }
    let mut out = String::with_capacity(labels.len() + 32);
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n);
        out.push_str("=\"");
        out.push_str(v);
        out.push('"');
    }
    out
}

/// `a="x",b="y\"z"` into `[("a", "x"), ("b", "y\"z")]` (values stay escaped).
fn split_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_string();
        let body = &rest[eq + 2..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.push((name, body[..end].to_string()));
        rest = &body[end + 1..];
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One Prometheus histogram over every series.
fn write_hist<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64; N],
    series: &std::collections::BTreeMap<String, waypoint::stats::Tally>,
    pick: fn(&waypoint::stats::Tally) -> &waypoint::stats::Hist<N>,
) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, t) in series {
        let h = pick(t);
        for (b, c) in bounds.iter().zip(h.cumulative()) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// What the cluster's config lost in the last build (`--kube`; zero otherwise).
fn config_gauges() -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "# HELP ringmesh_waypoint_config_left_out Objects from Kubernetes the waypoint cannot apply and left out (the log names them).\n\
         # TYPE ringmesh_waypoint_config_left_out gauge\n\
         ringmesh_waypoint_config_left_out {}\n\
         # HELP ringmesh_waypoint_config_policies_fail_closed AuthorizationPolicies that cannot be applied as written, applied in their safe form (ALLOW allows nothing, DENY and CUSTOM deny all).\n\
         # TYPE ringmesh_waypoint_config_policies_fail_closed gauge\n\
         ringmesh_waypoint_config_policies_fail_closed {}\n",
        super::kube::LEFT_OUT.load(Relaxed),
        super::kube::FAIL_CLOSED.load(Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabel_removes_replaces_and_adds() {
        let l = r#"reporter="waypoint",source_workload="a\"b",response_code="200""#;
        let got = relabel(
            l,
            &["source_workload".into()],
            &["response_code".into(), "host".into()],
            &[(Arc::from("host"), "x\"y".into())],
        );
        assert_eq!(
            got,
            r#"reporter="waypoint",response_code="unknown",host="x\"y""#
        );
        assert_eq!(relabel(l, &[], &[], &[]), l);
        assert_eq!(split_labels(l).len(), 3);
    }
}
