use super::*;
use crate::config::{LoadOptions, parse};

const MESH: &str = "node: n1
workloads:
  - {name: a, namespace: ns, workloadIps: [\"10.0.0.1\"], node: n1, protocol: HBONE}
  - {name: b, namespace: ns, workloadIps: [\"10.0.0.2\"], node: n2, protocol: HBONE}
";

fn request(snap: &crate::config::Snapshot) -> SeriesRequest {
    let a = snap.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap();
    let b = snap.workload_by_ip("10.0.0.2".parse().unwrap()).unwrap();
    SeriesRequest {
        source: Some(a.clone()),
        principal: Some(a.identity.clone()),
        destination: Some(b.clone()),
        service: None,
    }
}

#[test]
fn connections_count_per_label_set_summed_over_cores_and_snapshots() {
    let m = Metrics::new(2);
    let snap = parse(MESH, &LoadOptions::default()).unwrap();
    let req = request(&snap);
    let mut c0 = m.series_cache(0);
    let mut c1 = m.series_cache(1);
    let s0 = c0.series(Reporter::Source, Security::MutualTls, &req);
    let again = c0.series(Reporter::Source, Security::MutualTls, &req);
    assert!(Arc::ptr_eq(&s0, &again), "the cache finds the series");
    s0.opened();
    s0.live_counters().from_originator.fetch_add(100, Relaxed);
    s0.live_counters()
        .toward_originator
        .fetch_add(3000, Relaxed);
    s0.closed(ResponseFlags::None);
    // The same label set on another core, and after a config change on this one: one series
    // of the exposition.
    let s1 = c1.series(Reporter::Source, Security::MutualTls, &req);
    s1.opened();
    s1.closed(ResponseFlags::Deny);
    c0.forget_snapshot();
    let snap2 = parse(MESH, &LoadOptions::default()).unwrap();
    let s2 = c0.series(Reporter::Source, Security::MutualTls, &request(&snap2));
    assert!(
        Arc::ptr_eq(&s0, &s2),
        "equal labels reuse the core's series"
    );
    s2.opened();

    let t = m.totals(Reporter::Source);
    assert_eq!((t.opened, t.closed, t.failed), (3, 2, 1));
    assert_eq!((t.received, t.sent), (100, 3000));
    assert_eq!(m.totals(Reporter::Destination), Totals::default());

    let text = m.render_prometheus(&Extras::default());
    let line = |name: &str, flags: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&format!("response_flags=\"{flags}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(
        line("istio_tcp_connections_opened_total", "-").as_deref(),
        Some("3")
    );
    assert_eq!(
        line("istio_tcp_received_bytes_total", "-").as_deref(),
        Some("100")
    );
    assert_eq!(
        line("istio_tcp_sent_bytes_total", "-").as_deref(),
        Some("3000")
    );
    assert_eq!(
        line("istio_tcp_connections_closed_total", "-").as_deref(),
        Some("1")
    );
    assert_eq!(
        line("istio_tcp_connections_closed_total", "DENY").as_deref(),
        Some("1")
    );
    assert_eq!(
        line("istio_tcp_connections_failed_total", "DENY").as_deref(),
        Some("1")
    );
    assert_eq!(line("istio_tcp_connections_failed_total", "-"), None);
    check_exposition(&text);
}

#[test]
fn fixed_families_are_always_there_and_istio_ones_only_with_traffic() {
    let m = Metrics::new(2);
    let shard = m.shard(1);
    shard.socket_opened(Reporter::Destination);
    shard.conn_opened(Reporter::Destination, Carrier::Hbone);
    shard.refused(Refusal::Loop);
    shard.hbone_pool(3, 10, 1);
    let text = m.render_prometheus(&Extras {
        driver: "io_uring".into(),
        istio_version: Some("1.28.0".into()),
        gauges: vec![("ringmesh_x", "X.", 1.5), ("bad name", "no", 1.0)],
        counters: vec![("ringmesh_y_total", "Y.", f64::INFINITY)],
        families: String::new(),
    });
    assert!(
        !text.contains("istio_tcp_connections_opened_total"),
        "no series yet"
    );
    assert!(text.contains("istio_build{component=\"ztunnel\",tag=\"1.28.0\"} 1\n"));
    assert!(text.contains("istio_tcp_sockets_open{reporter=\"destination\"} 1\n"));
    assert!(
        text.contains(
            "ringmesh_connections_active{reporter=\"destination\",protocol=\"hbone\"} 1\n"
        )
    );
    assert!(text.contains("ringmesh_connections_refused_total{reason=\"loop\"} 1\n"));
    assert!(text.contains("ringmesh_worker_connections_opened_total{worker=\"1\"} 1\n"));
    assert!(text.contains("ringmesh_worker_connections_active{worker=\"0\"} 0\n"));
    assert!(text.contains("ringmesh_hbone_pool_dials_total 3\n"));
    assert!(text.contains("ringmesh_runtime_info{driver=\"io_uring\"} 1\n"));
    assert!(text.contains("ringmesh_x 1.5\n"));
    assert!(text.contains("ringmesh_y_total +Inf\n"));
    assert!(!text.contains("bad name"));
    shard.conn_closed(Reporter::Destination, Carrier::Hbone);
    shard.socket_closed(Reporter::Destination);
    let text = m.render_prometheus(&Extras::default());
    assert!(
        text.contains(
            "ringmesh_connections_active{reporter=\"destination\",protocol=\"hbone\"} 0\n"
        )
    );
    assert!(text.contains("istio_tcp_sockets_open{reporter=\"destination\"} 0\n"));
    check_exposition(&text);
}

#[test]
fn cardinality_is_bounded_per_core() {
    let m = Metrics::new(1);
    let mut cache = m.series_cache(0);
    let mut yaml = String::from("node: n1\nworkloads:\n");
    let n = MAX_SERIES_PER_CORE + 5;
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{name: w{i}, namespace: ns, workloadIps: [\"10.{}.{}.{}\"], node: n1}}\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let snap = parse(&yaml, &LoadOptions::default()).unwrap();
    for w in snap.workloads() {
        let req = SeriesRequest {
            source: Some(w.clone()),
            ..SeriesRequest::default()
        };
        cache
            .series(Reporter::Source, Security::Unknown, &req)
            .opened();
    }
    assert_eq!(m.totals(Reporter::Source).opened, n as u64, "nothing lost");
    let text = m.render_prometheus(&Extras::default());
    let series = text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .count();
    assert_eq!(
        series,
        MAX_SERIES_PER_CORE + 1,
        "the overflow series takes the rest"
    );
}

/// Every non-comment line is `name{labels} value` or `name value`, names are valid, values
/// parse as floats, every sample's family has HELP and TYPE lines before it, counters end in
/// `_total`, and a family's samples are contiguous.
fn check_exposition(text: &str) -> usize {
    let mut helped = std::collections::HashSet::new();
    let mut typed = std::collections::HashMap::new();
    let mut samples = 0;
    let mut last_family = String::new();
    let mut closed_families = std::collections::HashSet::new();
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
            let name = series.split_once('{').map_or(series, |(n, _)| n);
            assert!(valid_metric_name(name), "{line}");
            assert!(helped.contains(name) && typed.contains_key(name), "{line}");
            if typed[name] == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            if name != last_family {
                assert!(closed_families.insert(last_family.clone()) || last_family.is_empty());
                assert!(
                    !closed_families.contains(name),
                    "family {name} split: {line}"
                );
                last_family = name.to_string();
            }
            let ok = matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok();
            assert!(ok, "bad value in {line:?}");
            samples += 1;
        }
    }
    samples
}
