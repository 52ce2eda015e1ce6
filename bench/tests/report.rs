//! The report from synthetic runs: results.json parses and carries every scenario, workload
//! and documented figure; medians, spreads, added latency and CPU over the `tcp-relay`
//! floor are computed right; the
//! Markdown table and the SVG charts name every scenario.

use bench::report::{Meta, Results, Run, markdown, summarize, write_all};
use bench::sampler::ProcUsage;
use bench::scenario::Kind;
use bench::workload::{ClientResult, Latency, Workload};

const FIELDS: [&str; 13] = [
    "scenario",
    "workload",
    "rps",
    "gbps",
    "p50_us",
    "p99_us",
    "p999_us",
    "added_p99_us",
    "proxy_cpu_s_per_1k_req",
    "proxy_cpu_s_per_gb",
    "proxy_rss_mib",
    "proxy_rss_anon_mib",
    "errors",
];

fn proc(pid: u32, cpu_s: f64, rss_mib: u64, anon_mib: u64) -> ProcUsage {
    ProcUsage {
        pid,
        cpu_s,
        rss_peak_kib: rss_mib * 1024 + 2048,
        rss_steady_kib: rss_mib * 1024,
        rss_anon_peak_kib: anon_mib * 1024 + 1024,
        rss_anon_steady_kib: anon_mib * 1024,
        samples: 30,
    }
}

/// RssAnon before the load such that proxy `i` holds `kib[i]` KiB per held connection
/// (nothing for other workloads).
fn held_idle(w: Workload, proxies: &[ProcUsage], kib: &[u64]) -> Vec<u64> {
    let Some(n) = w.held_connections() else {
        return vec![];
    };
    proxies
        .iter()
        .zip(kib)
        .map(|(p, k)| p.rss_anon_steady_kib - k * u64::from(n))
        .collect()
}

/// Runs where scenario `i` adds `i * 100` µs at p99 and uses `i * (1 + j)` CPU-s per proxy
/// process in workload `j` (so a figure taken from the wrong workload shows). `external` is
/// a one-proxy scenario.
fn synthetic() -> (Vec<Run>, Vec<(String, String)>) {
    let mut runs = Vec::new();
    let mut order = Vec::new();
    for (j, w) in Workload::ALL.into_iter().enumerate() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            if !k.carries(w.protocol()) {
                continue;
            }
            order.push((k.name().to_string(), w.name().to_string()));
            for rep in 1..=3u32 {
                let jitter = rep as f64; // medians must pick the middle repetition
                let cpu = (i * (1 + j)) as f64;
                // Held connections need room under their steady RssAnon.
                let anon = if w.held_connections().is_some() {
                    100
                } else {
                    0
                };
                let proxies = match k {
                    Kind::Direct => vec![],
                    Kind::External => vec![proc(10, cpu, 60, 15 + anon)],
                    _ => vec![proc(10, cpu, 60, 14 + anon), proc(11, cpu, 60, 16 + anon)],
                };
                runs.push(Run {
                    scenario: k.name().into(),
                    workload: w.name().into(),
                    repetition: rep,
                    client: Some(ClientResult {
                        achieved_rps: 1000.0 + jitter,
                        requests: 10_000,
                        errors: if *k == Kind::External { 1 } else { 0 },
                        latency_us: Latency {
                            p50: 50.0 + i as f64 * 10.0,
                            p90: 80.0 + i as f64 * 50.0,
                            p99: 100.0 + i as f64 * 100.0 + jitter,
                            p999: 300.0 + i as f64 * 200.0,
                            max: 1000.0,
                        },
                        late_sends: 0,
                        bytes: 2_000_000_000,
                        duration_s: 10.0,
                    }),
                    wall_s: 10.2,
                    idle_cpu_pct: (*k != Kind::Direct).then_some(0.5 + rep as f64),
                    // Held connections: 4 KiB each on the first proxy, 2 on the second,
                    // and half a KiB each kept on both after they closed.
                    idle_rss_anon_kib: held_idle(w, &proxies, &[4, 2]),
                    after_rss_anon_kib: held_idle(w, &proxies, &[4, 2])
                        .iter()
                        .map(|i| i + u64::from(w.held_connections().unwrap_or(0)) / 2)
                        .collect(),
                    proxies,
                    failure: None,
                });
            }
        }
    }
    // One failed run: excluded from medians, counted.
    runs.push(Run {
        scenario: "ringmesh".into(),
        workload: "http-1k".into(),
        repetition: 4,
        client: None,
        proxies: vec![],
        wall_s: 0.0,
        idle_cpu_pct: None,
        idle_rss_anon_kib: vec![],
        after_rss_anon_kib: vec![],
        failure: Some("ringmesh node-1 did not become ready: exited with status 1".into()),
    });
    (runs, order)
}

#[test]
fn results_json_has_every_pair_and_figure() {
    let (runs, order) = synthetic();
    let results = Results {
        meta: Meta {
            date: "2026-11-28T03:00:00Z".into(),
            repeat: 3,
            ..Meta::default()
        },
        summary: summarize(&runs, &order),
        runs,
    };
    let dir = tempfile::tempdir().unwrap();
    let written = write_all(&results, dir.path()).unwrap();
    assert!(written.iter().any(|p| p.ends_with("report.md")));

    let text = std::fs::read_to_string(dir.path().join("results.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let summary = v["summary"].as_array().unwrap();
    assert_eq!(summary.len(), order.len());
    for (sc, w) in &order {
        let s = summary
            .iter()
            .find(|s| s["scenario"] == sc.as_str() && s["workload"] == w.as_str())
            .unwrap_or_else(|| panic!("{sc}/{w} missing"));
        for f in FIELDS {
            assert!(s.get(f).is_some(), "{sc}/{w} has no `{f}`");
        }
    }
    assert_eq!(v["runs"].as_array().unwrap().len(), results.runs.len());

    let get = |sc: &str, w: &str| {
        results
            .summary
            .iter()
            .find(|s| s.scenario == sc && s.workload == w)
            .unwrap()
    };
    let rm = get("ringmesh", "http-1k");
    assert_eq!((rm.runs, rm.failed_runs), (3, 1));
    assert_eq!(rm.p99_us, 302.0); // 100 + 2*100 + median jitter 2
    assert_eq!(rm.spread["p99_us"], [301.0, 303.0]);
    assert_eq!(rm.added_p99_us, Some(200.0));
    // 2 proxies × 2 CPU-s over 10,000 requests = 0.4 CPU-s per 1k; over 2 GB = 2 per GB.
    assert!((rm.proxy_cpu_s_per_1k_req.unwrap() - 0.4).abs() < 1e-9);
    assert!((rm.proxy_cpu_s_per_gb.unwrap() - 2.0).abs() < 1e-9);
    // The floor (tcp-relay: 2 × 1 CPU-s) is subtracted: 0.2 per 1k and 1 per GB over it.
    assert!((rm.proxy_cpu_s_per_1k_req_over_floor.unwrap() - 0.2).abs() < 1e-9);
    assert!((rm.proxy_cpu_s_per_gb_over_floor.unwrap() - 1.0).abs() < 1e-9);
    let floor = get("tcp-relay", "http-1k");
    assert_eq!(floor.proxy_cpu_s_per_1k_req_over_floor, None);
    assert_eq!(get("direct", "http-1k").proxy_cpu_s_per_gb_over_floor, None);
    // The floor of the same workload: http-max has 2 × 4 CPU-s for ringmesh and 2 × 2 for
    // the floor, so 0.4 over it (the http-1k floor would give 0.6).
    let rm_max = get("ringmesh", "http-max");
    assert!((rm_max.proxy_cpu_s_per_1k_req_over_floor.unwrap() - 0.4).abs() < 1e-9);
    // No two-hop baseline for a one-proxy scenario, nor for churn (the relay dials per
    // connection where a data plane may pool).
    assert_eq!(
        get("external", "http-1k").proxy_cpu_s_per_1k_req_over_floor,
        None
    );
    assert_eq!(
        get("ringmesh", "churn").proxy_cpu_s_per_1k_req_over_floor,
        None
    );
    assert!(
        get("envoy-sidecar-tcp", "bulk-1")
            .proxy_cpu_s_per_gb_over_floor
            .is_some()
    );
    assert_eq!((rm.proxy_rss_mib, rm.proxy_rss_anon_mib), (60.0, 15.0));
    assert_eq!(rm.proxy_idle_cpu_pct, Some(2.5));
    assert_eq!(get("direct", "http-1k").proxy_idle_cpu_pct, None);
    assert!((rm.gbps - 1.6).abs() < 1e-9);
    let eh = get("envoy-sidecar-http", "http-1k");
    assert_eq!(eh.added_p99_us, Some(400.0));
    assert!((eh.proxy_cpu_s_per_1k_req_over_floor.unwrap() - 0.6).abs() < 1e-9);
    assert_eq!(get("direct", "bulk-1").added_p99_us, Some(0.0));
    assert_eq!(get("external", "churn").errors, 3);
    assert!(
        results
            .summary
            .iter()
            .all(|s| !(s.scenario == "envoy-sidecar-http" && s.workload == "bulk-1"))
    );

    let back = bench::report::read(&dir.path().join("results.json")).unwrap();
    assert_eq!(back, results);
}

#[test]
fn markdown_and_charts_name_every_scenario() {
    let (runs, order) = synthetic();
    let results = Results {
        meta: Meta::default(),
        summary: summarize(&runs, &order),
        runs,
    };
    let md = bench::report::markdown(&results);
    for k in Kind::ALL {
        assert!(md.contains(&format!("| {} |", k.name())), "table lacks {k}");
    }
    for h in [
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "added p99 µs",
        "CPU-s / 1k req",
        "CPU-s / GB",
        "idle CPU %",
        "RSS MiB",
        "RssAnon MiB",
        "errors",
    ] {
        assert!(md.contains(h), "table lacks column {h}");
    }
    assert!(
        md.contains("302 (301–303)"),
        "median with spread missing:\n{md}"
    );
    // The over-the-floor table: ringmesh http-1k is 0.2 CPU-s per 1k over tcp-relay.
    assert!(md.contains("## Cost over the two-hop floor"), "{md}");
    assert!(md.contains("| ringmesh | http-1k | 0.200 | 1.00 |"), "{md}");
    assert!(
        !md.contains("| tcp-relay | http-1k | 0"),
        "the floor over itself: {md}"
    );
    assert!(md.contains("Failed runs") && md.contains("did not become ready"));

    let dir = tempfile::tempdir().unwrap();
    write_all(&results, dir.path()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cpu-per-1k-req.svg",
            "cpu-per-gb.svg",
            "latency-churn.svg",
            "latency-hold-10k.svg",
            "latency-hold-1k.svg",
            "latency-http-1k.svg",
            "latency-http-max.svg",
            "memory-rss-anon.svg",
            "memory-rss.svg"
        ]
    );
    let lat = std::fs::read_to_string(dir.path().join("latency-http-1k.svg")).unwrap();
    assert!(lat.starts_with("<svg") && lat.trim_end().ends_with("</svg>"));
    for k in Kind::ALL {
        assert!(
            lat.contains(&format!(">{}</text>", k.name())),
            "latency chart lacks {k}"
        );
    }
    let mem = std::fs::read_to_string(dir.path().join("memory-rss-anon.svg")).unwrap();
    assert!(
        !mem.contains(">direct</text>"),
        "direct has no proxy memory to chart"
    );
    assert!(mem.contains(">ringmesh</text>") && mem.contains(">bulk-8</text>"));
    // Synthetic RssAnon is 15 MiB for every proxied pair: one labelled bar per pair.
    assert!(mem.matches(">15.0</text>").count() >= 4 * 3, "{mem}");
    // Bars never overflow the plot: every rect height is finite and non-negative.
    for bar in lat.split("<rect x=").skip(1) {
        let h = bar.split("height=\"").nth(1).unwrap();
        let h: f64 = h.split('"').next().unwrap().parse().unwrap();
        assert!(h.is_finite() && h >= 0.0);
    }
}

#[test]
fn held_connection_memory_is_per_connection_on_the_worse_proxy() {
    let (runs, order) = synthetic();
    let summary = summarize(&runs, &order);
    for w in ["hold-1k", "hold-10k"] {
        let s = summary
            .iter()
            .find(|s| s.scenario == "ringmesh" && s.workload == w)
            .unwrap();
        assert_eq!(
            s.held_kib_per_conn,
            Some(4.0),
            "{w}: the worse of 4 and 2 KiB"
        );
        assert_eq!(s.retained_kib_per_conn, Some(0.5), "{w}");
    }
    let bulk = summary
        .iter()
        .find(|s| s.scenario == "ringmesh" && s.workload == "bulk-1")
        .unwrap();
    assert_eq!(
        bulk.held_kib_per_conn, None,
        "only hold-* workloads hold connections"
    );
    let md = markdown(&Results {
        meta: Meta::default(),
        summary,
        runs,
    });
    assert!(md.contains("## Held connections"), "{md}");
    assert!(
        md.contains("| ringmesh | hold-10k | 4.00 (4.00–4.00) | 0.500 |"),
        "{md}"
    );
}
