//! `ringmesh-bench fairness` end to end: a real node with one worker, every attack, probes
//! timed while it runs. Holds a generous bound that the stalls of issue 12 (a PING or
//! SETTINGS flood delayed other handshakes on the worker to p50 1.4–2.4 s, max 4.9 s) would
//! break: no probe handshake over one second, even on a debug build sharing two cores with
//! the attacker.

use std::time::Duration;

#[test]
fn no_attack_stalls_other_handshakes_on_the_worker() {
    let ringmesh = bench::ringmesh::locate(None).expect("the ringmesh binary (cargo build)");
    let out = tempfile::tempdir().unwrap();
    let opts = bench::fairness::Options {
        ringmesh,
        cores: "1".into(),
        attacks: bench::fairness::ATTACKS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        probes: 40,
        out: out.path().to_path_buf(),
    };
    let report = bench::fairness::run(&opts).expect("the fairness run");
    assert_eq!(report.rows.len(), bench::fairness::ATTACKS.len());
    for row in &report.rows {
        assert_eq!(row.probes, 40, "{row:?}");
        assert!(
            Duration::from_secs_f64(row.max_ms / 1e3) < Duration::from_secs(1),
            "{}: a handshake took {:.0} ms while the attack ran\n{}",
            row.attack,
            row.max_ms,
            bench::fairness::markdown(&report)
        );
        if row.attack != "none" {
            assert!(
                row.attacker_connections > 0,
                "the {} attack never connected",
                row.attack
            );
        }
        if matches!(row.attack.as_str(), "ping" | "settings" | "tiny-data") {
            assert!(
                row.attacker_cut_off > 0,
                "the node never cut off the {} flood",
                row.attack
            );
        }
    }
    // Machine- and person-readable output.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("fairness.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), report.rows.len());
    let md = std::fs::read_to_string(out.path().join("fairness.md")).unwrap();
    assert!(md.contains("| ping |"), "{md}");
}
