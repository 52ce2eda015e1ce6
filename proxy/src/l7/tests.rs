use super::*;

#[test]
fn endpoints_that_join_later_are_new_and_those_that_leave_are_forgotten() {
    let mesh = |ips: &[&str]| {
        let workloads: String = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                format!("  - {{name: w{i}, namespace: demo, workloadIps: [\"{ip}\"]}}\n")
            })
            .collect();
        config::parse(&format!("workloads:\n{workloads}"), &LoadOptions::default()).unwrap()
    };
    let (t0, t1) = (std::time::Instant::now(), std::time::Instant::now());
    let mut arrivals = std::collections::HashMap::new();
    let first = mesh(&["10.0.0.1", "10.0.0.2"]);
    let second = mesh(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    note_arrivals(&mut arrivals, &first, &second, t0);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals.get(&ip("10.0.0.3")), Some(&t0));
    // Seen again: still the first arrival; gone: forgotten.
    note_arrivals(&mut arrivals, &second, &second, t1);
    assert_eq!(arrivals.get(&ip("10.0.0.3")), Some(&t0));
    note_arrivals(&mut arrivals, &second, &first, t1);
    assert!(arrivals.is_empty());
}

#[test]
fn the_gateway_comes_from_the_flag_or_the_workload() {
    let snap = config::parse(
            r#"
workloads:
  - {name: wp-7f9c, namespace: demo, workloadIps: ["10.0.0.1"], labels: {gateway.networking.k8s.io/gateway-name: edge}}
  - {name: wp-1a2b, namespace: demo, workloadIps: ["10.0.0.2"], canonicalName: waypoint}
  - {name: plain, namespace: prod, workloadIps: ["10.0.0.3"]}
"#,
            &LoadOptions::default(),
        )
        .unwrap();
    let w = |uid: &str| snap.workload_by_uid(uid).unwrap().clone();
    let g = |flag: Option<&str>, uid: &str| gateway_of(flag, &w(uid)).map(|g| g.to_string());
    assert_eq!(g(None, "demo/wp-7f9c").unwrap(), "demo/edge");
    assert_eq!(g(None, "demo/wp-1a2b").unwrap(), "demo/waypoint");
    assert_eq!(g(None, "prod/plain").unwrap(), "prod/plain");
    assert_eq!(g(Some("east"), "prod/plain").unwrap(), "prod/east");
    assert_eq!(g(Some("ops/east"), "prod/plain").unwrap(), "ops/east");
    let e = g(Some("Bad Name"), "prod/plain").unwrap_err().to_string();
    assert!(e.contains("--gateway"), "{e}");
}
