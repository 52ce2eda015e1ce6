//! The L4 label set of connections between two named workloads (with workload name,
//! canonical service and revision, cluster and locality configured) against Istio's
//! (research: operator-dialect.md §1.3; ztunnel's `CommonTrafficLabels`, filled by
//! `with_source`, `with_destination` and `with_destination_service`): over HBONE on both
//! nodes, with the access line's fields in ztunnel's order, and over plain TCP (outbound to a
//! TCP workload, inbound plaintext), where only the source principal is unknown: ztunnel's
//! `with_destination` names the destination workload's identity whatever the transport.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use e2e::{Dnat, MeshDir, Node, connect_from, ip4, is_root, metric_samples, socks_connect};

use super::{close, line, request, spawn_responder};

const X: u8 = 238;

/// sleep (node-1) and httpbin (node-2, behind the httpbin service) in 127.`x`/16;
/// `httpbin_protocol` is HBONE or TCP.
fn config_in(x: u8, httpbin_protocol: &str) -> String {
    format!(
        r#"workloads:
  - name: sleep-7d8f9c-xyz12
    namespace: shop
    serviceAccount: sleep-sa
    workloadIps: ["{sleep}"]
    node: node-1
    protocol: HBONE
    workloadName: sleep
    canonicalName: sleeper
    canonicalRevision: v2
    clusterId: east
    locality: {{region: us-east1, zone: us-east1-b}}
  - name: httpbin-5c5b6d9f-abcde
    namespace: store
    serviceAccount: httpbin-sa
    workloadIps: ["{httpbin}"]
    node: node-2
    protocol: {httpbin_protocol}
    services: ["store/httpbin.store.svc.cluster.local"]
    workloadName: httpbin
    canonicalName: httpbin-app
    canonicalRevision: v1
    clusterId: west
    locality: {{region: eu-west1, zone: eu-west1-c, subzone: rack-3}}
services:
  - name: httpbin
    namespace: store
    hostname: httpbin.store.svc.cluster.local
    vips: ["{vip}"]
    ports: {{8000: 8080}}
"#,
        sleep = ip4(x, 1, 1),
        httpbin = ip4(x, 2, 1),
        vip = ip4(x, 100, 1),
    )
}

fn config() -> String {
    config_in(X, "HBONE")
}

/// Istio's 27 labels, in order, for a connection from sleep to httpbin's service as
/// `reporter` sees it over HBONE (`expected_plain` for plain TCP).
fn expected(reporter: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("reporter", reporter),
        ("source_workload", "sleep"),
        ("source_canonical_service", "sleeper"),
        ("source_canonical_revision", "v2"),
        ("source_workload_namespace", "shop"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/sleep-sa",
        ),
        // ztunnel fills app/version from the canonical name and revision.
        ("source_app", "sleeper"),
        ("source_version", "v2"),
        ("source_cluster", "east"),
        ("destination_service", "httpbin.store.svc.cluster.local"),
        ("destination_service_namespace", "store"),
        ("destination_service_name", "httpbin"),
        ("destination_workload", "httpbin"),
        ("destination_canonical_service", "httpbin-app"),
        ("destination_canonical_revision", "v1"),
        ("destination_workload_namespace", "store"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/store/sa/httpbin-sa",
        ),
        ("destination_app", "httpbin-app"),
        ("destination_version", "v1"),
        ("destination_cluster", "west"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
        ("source_region", "us-east1"),
        ("source_zone", "us-east1-b"),
        ("destination_region", "eu-west1"),
        ("destination_zone", "eu-west1-c"),
    ]
}

/// The same off mutual TLS: no source principal (no peer certificate), the security
/// policy `unknown`; the destination principal is still the destination workload's identity.
fn expected_plain(reporter: &str) -> Vec<(&'static str, &str)> {
    expected(reporter)
        .into_iter()
        .map(|(k, v)| match k {
            "source_principal" => (k, "unknown"),
            "connection_security_policy" => (k, "unknown"),
            _ => (k, v),
        })
        .collect()
}

/// Checks that `node` has one series in each Istio family, with exactly `want` (in order)
/// and the given counts.
fn ensure_series(node: &Node, want: &[(&str, &str)], sizes: (usize, usize)) -> Result<()> {
    let m = node.metrics()?;
    for (family, value) in [
        ("istio_tcp_connections_opened_total", 1.0),
        ("istio_tcp_connections_closed_total", 1.0),
        ("istio_tcp_received_bytes_total", sizes.0 as f64),
        ("istio_tcp_sent_bytes_total", sizes.1 as f64),
    ] {
        let samples = metric_samples(&m, family)?;
        ensure!(
            samples.len() == 1,
            "{}: {} samples of {family}:\n{m}",
            node.name,
            samples.len()
        );
        let got: Vec<(&str, &str)> = samples[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let diff: Vec<String> = got
            .iter()
            .zip(want)
            .filter(|(g, w)| g != w)
            .map(|(g, w)| format!("{}=\"{}\" (expected {}=\"{}\")", g.0, g.1, w.0, w.1))
            .collect();
        ensure!(
            got == want,
            "{}: {family} labels differ from Istio's: {diff:?}\n  got      {got:?}\n  expected {want:?}",
            node.name
        );
        ensure!(
            samples[0].value == value,
            "{}: {family} = {}, expected {value}",
            node.name,
            samples[0].value
        );
    }
    let failed = metric_samples(&m, "istio_tcp_connections_failed_total")?;
    ensure!(failed.is_empty(), "{}: failed {failed:?}", node.name);
    // Prometheus' other path (ztunnel serves both): the same series.
    let stats = proxy::demo::http_get(SocketAddr::new(node.ip, 15020), "/stats/prometheus")?;
    for family in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_received_bytes_total",
    ] {
        ensure!(
            metric_samples(&stats, family)? == metric_samples(&m, family)?,
            "{}: /stats/prometheus differs from /metrics in {family}:\n{stats}",
            node.name
        );
    }
    Ok(())
}

/// ztunnel's access-line fields, in order, for a complete HBONE connection (then ringmesh's
/// `outcome`).
const LINE_FIELDS: [&str; 17] = [
    "src.addr",
    "src.workload",
    "src.namespace",
    "src.identity",
    "src.cluster",
    "dst.addr",
    "dst.hbone_addr",
    "dst.service",
    "dst.workload",
    "dst.namespace",
    "dst.identity",
    "dst.cluster",
    "direction",
    "bytes_sent",
    "bytes_recv",
    "duration",
    "outcome",
];

#[test]
fn hbone_labels_between_named_workloads_match_istio_on_both_nodes() -> Result<()> {
    let (sleep, httpbin) = (ip4(X, 1, 1), ip4(X, 2, 1));
    const SIZES: (usize, usize) = (100, 3000);
    spawn_responder(SocketAddr::new(httpbin, 8080), SIZES.0, SIZES.1)?;
    let mesh = MeshDir::new(&config())?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;
    let mut c = socks_connect(sleep, n1.socks(), SocketAddr::new(ip4(X, 100, 1), 8000))?;
    request(&mut c, SIZES.0, SIZES.1)?;
    close(c)?;

    for (node, reporter, direction) in
        [(&n1, "source", "outbound"), (&n2, "destination", "inbound")]
    {
        let l = line(node, &format!("{}'s line", node.name), |l| l.complete())?;
        ensure_series(node, &expected(reporter), SIZES)?;

        // The access line names pods (not workloads) and both identities, in ztunnel's
        // order.
        let parsed = proxy::telemetry::format::parse_text_line(&l.line)
            .ok_or_else(|| anyhow::anyhow!("unparsable: {}", l.line))?;
        let names: Vec<&str> = parsed.fields.iter().map(|(k, _)| k.as_str()).collect();
        ensure!(names == LINE_FIELDS, "{}: fields {names:?}", node.name);
        let fields = [
            ("src.workload", "sleep-7d8f9c-xyz12"),
            ("src.namespace", "shop"),
            ("src.identity", "spiffe://cluster.local/ns/shop/sa/sleep-sa"),
            ("src.cluster", "east"),
            ("dst.addr", &format!("{httpbin}:15008")),
            ("dst.hbone_addr", &format!("{httpbin}:8080")),
            ("dst.service", "httpbin.store.svc.cluster.local"),
            ("dst.workload", "httpbin-5c5b6d9f-abcde"),
            ("dst.namespace", "store"),
            (
                "dst.identity",
                "spiffe://cluster.local/ns/store/sa/httpbin-sa",
            ),
            ("dst.cluster", "west"),
            ("direction", direction),
            ("outcome", "complete"),
        ];
        for (k, v) in fields {
            ensure!(l.get(k) == v, "{}: {k} is not {v:?}: {}", node.name, l.line);
        }
        ensure!(
            l.get("src.addr").starts_with(&format!("{sleep}:")),
            "{}: {}",
            node.name,
            l.line
        );
        let duration = l.get("duration");
        ensure!(
            duration
                .strip_suffix("ms")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "{}: duration {duration:?}",
            node.name
        );
    }
    Ok(())
}

#[test]
fn plain_tcp_outbound_labels_match_ztunnel() -> Result<()> {
    const Y: u8 = 218;
    let (sleep, httpbin) = (ip4(Y, 1, 1), ip4(Y, 2, 1));
    const SIZES: (usize, usize) = (150, 2500);
    spawn_responder(SocketAddr::new(httpbin, 8080), SIZES.0, SIZES.1)?;
    let mesh = MeshDir::new(&config_in(Y, "TCP"))?;
    let n1 = Node::start(&mesh, "node-1", ip4(Y, 0, 1), &[])?;
    let mut c = socks_connect(sleep, n1.socks(), SocketAddr::new(ip4(Y, 100, 1), 8000))?;
    request(&mut c, SIZES.0, SIZES.1)?;
    close(c)?;
    let l = line(&n1, "node-1's line", |l| l.complete())?;
    // The log names identities only for mutual TLS (ztunnel's `access_log!`).
    ensure!(
        l.carrier() == "tcp"
            && l.get("dst.addr") == format!("{httpbin}:8080")
            && l.get("dst.workload") == "httpbin-5c5b6d9f-abcde"
            && l.get("src.identity").is_empty()
            && l.get("dst.identity").is_empty(),
        "{}",
        l.line
    );
    ensure_series(&n1, &expected_plain("source"), SIZES)
}

#[test]
fn inbound_plaintext_labels_match_ztunnel() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root for iptables (CI runs as root)");
        return Ok(());
    }
    const Y: u8 = 219;
    let (sleep, httpbin) = (ip4(Y, 1, 1), ip4(Y, 2, 1));
    const SIZES: (usize, usize) = (120, 4500);
    let pod = SocketAddr::new(httpbin, 8080);
    spawn_responder(pod, SIZES.0, SIZES.1)?;
    let mesh = MeshDir::new(&config_in(Y, "HBONE"))?;
    // Only httpbin's node: sleep's plain connection to the pod is redirected to 15006, as
    // from a pod whose node does not capture its traffic.
    let n2 = Node::start(&mesh, "node-2", ip4(Y, 0, 2), &[])?;
    let _dnat = Dnat::add(sleep, pod, SocketAddr::new(httpbin, 15006))?;
    let mut c = connect_from(sleep, pod)?;
    request(&mut c, SIZES.0, SIZES.1)?;
    close(c)?;
    let l = line(&n2, "node-2's line", |l| l.complete())?;
    ensure!(
        l.carrier() == "tcp"
            && l.get("src.workload") == "sleep-7d8f9c-xyz12"
            && l.get("dst.service") == "httpbin.store.svc.cluster.local"
            && l.get("src.identity").is_empty()
            && l.get("dst.identity").is_empty(),
        "{}",
        l.line
    );
    ensure_series(&n2, &expected_plain("destination"), SIZES)
}
