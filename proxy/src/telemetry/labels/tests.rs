use super::*;
use crate::config::{LoadOptions, parse};

const MESH: &str = "node: n1
workloads:
  - {uid: Kubernetes//Pod/default/sleep-7d8f9c-xyz12, name: sleep-7d8f9c-xyz12, namespace: default,
     serviceAccount: sleep, workloadIps: [\"10.0.0.1\"], node: n1, protocol: HBONE,
     workloadName: sleep, canonicalName: sleep, canonicalRevision: latest, clusterId: Kubernetes}
  - {uid: Kubernetes//Pod/default/httpbin-5c5b6d9f-abcde, name: httpbin-5c5b6d9f-abcde,
     namespace: default, serviceAccount: httpbin, workloadIps: [\"10.0.0.2\"], node: n2,
     protocol: HBONE, workloadName: httpbin, canonicalName: httpbin, canonicalRevision: v1,
     clusterId: Kubernetes, locality: {region: r1, zone: z1},
     services: [\"default/httpbin.default.svc.cluster.local\"]}
services:
  - {name: httpbin, namespace: default, hostname: httpbin.default.svc.cluster.local,
     vips: [\"10.96.0.1\"], ports: {8000: 80}}
";

/// Splits a rendered label set into (name, value) pairs.
fn pairs(labels: &str) -> Vec<(String, String)> {
    let inner = labels.trim_start_matches('{').trim_end_matches('}');
    let mut out = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap();
        let end = after.find('"').unwrap();
        out.push((name.to_string(), after[..end].to_string()));
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

#[test]
fn an_hbone_connection_between_two_named_workloads_has_istios_labels_in_order() {
    let snap = parse(MESH, &LoadOptions::default()).unwrap();
    let sleep = snap.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap();
    let httpbin = snap.workload_by_ip("10.0.0.2".parse().unwrap()).unwrap();
    let svc = snap
        .service("default", "httpbin.default.svc.cluster.local")
        .unwrap();
    let set = LabelSet {
        reporter: Reporter::Destination,
        source: Some(sleep),
        source_principal: Some(&sleep.identity),
        destination: Some(httpbin),
        service: Some(svc),
        security: Security::MutualTls,
    };
    let got = pairs(&set.render().with_flags(ResponseFlags::None));
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, LABEL_NAMES);
    let want = [
        "destination",
        "sleep",
        "sleep",
        "latest",
        "default",
        "spiffe://cluster.local/ns/default/sa/sleep",
        "sleep",
        "latest",
        "Kubernetes",
        "httpbin.default.svc.cluster.local",
        "default",
        "httpbin",
        "httpbin",
        "httpbin",
        "v1",
        "default",
        "spiffe://cluster.local/ns/default/sa/httpbin",
        "httpbin",
        "v1",
        "Kubernetes",
        "tcp",
        "-",
        "mutual_tls",
        "unknown",
        "unknown",
        "r1",
        "z1",
    ];
    let values: Vec<&str> = got.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, want);
}

#[test]
fn plain_tcp_to_an_unknown_destination_is_unknown_everywhere_but_the_source() {
    // (To a known workload over plain TCP, `destination_principal` is its identity: ztunnel
    // sets it from the workload whatever the transport; the end-to-end tests check it.)
    let snap = parse(MESH, &LoadOptions::default()).unwrap();
    let sleep = snap.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap();
    let set = LabelSet {
        reporter: Reporter::Source,
        source: Some(sleep),
        source_principal: Some(&sleep.identity),
        destination: None,
        service: None,
        security: Security::Unknown,
    };
    let got = pairs(&set.render().with_flags(ResponseFlags::Connect));
    let get = |n: &str| got.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(get("reporter"), "source");
    assert_eq!(get("source_workload"), "sleep");
    // Off mutual TLS, no principal is claimed.
    assert_eq!(get("source_principal"), "unknown");
    assert_eq!(get("destination_workload"), "unknown");
    assert_eq!(
        get("destination_principal"),
        "unknown",
        "no destination workload"
    );
    assert_eq!(get("destination_service"), "unknown");
    assert_eq!(get("response_flags"), "CONNECT");
    assert_eq!(get("connection_security_policy"), "unknown");
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(simple(&[("a", "x\"y\\z\nw")]), "{a=\"x\\\"y\\\\z\\nw\"}");
}
