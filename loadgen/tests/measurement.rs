//! End-to-end tests of what loadgen reports: coordinated-omission correction, rate
//! accuracy, error accounting and exit codes, and the JSON, HdrHistogram and sweep outputs.

mod common;

use common::{Backend, DL, loadgen, refused_port, serial, u};

/// Coordinated omission: the backend (one core) stalls 200 ms once. An open-loop run at
/// 2000 req/s must show it in the tail; a closed-loop run hides it in a handful of samples.
///
/// Why p99.9 ≥ 197 ms and not ≥ 200 ms: requests intended t ms into a 200 ms stall wait
/// 200 − t ms, so exactly-200 ms samples are a vanishing share. With N = 2000 × 3 s = 6000
/// samples, the top 0.1 % (6 requests) are those intended in the first 3 ms of the stall,
/// so the corrected p99.9 is ≥ 197 ms; the max is ≥ 200 ms.
#[test]
fn open_loop_shows_stall_closed_loop_does_not() {
    let _g = serial();
    let b = Backend::start(&[
        "--mode",
        "http1",
        "--cores",
        "1,",
        "--stall-once-ms",
        "200",
        "--stall-after",
        "2000",
    ]);
    let r = loadgen(
        &[
            "http1",
            &b.url(),
            "--rate",
            "2000",
            "-c",
            "4",
            "--cores",
            "1,",
            "-d",
            "3s",
            "--warmup",
            "200ms",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    let p999 = v["latency_us"]["p999"].as_u64().unwrap();
    let max = v["latency_us"]["max"].as_u64().unwrap();
    assert!(
        p999 >= 197_000,
        "open loop p99.9 {p999} us should show the stall: {v}"
    );
    assert!(max >= 200_000, "max {max}");
    assert!(u(&v, "late_sends") > 0, "the stall forces late sends");

    let b = Backend::start(&[
        "--mode",
        "http1",
        "--cores",
        "1,",
        "--stall-once-ms",
        "200",
        "--stall-after",
        "2000",
    ]);
    let r = loadgen(
        &[
            "http1",
            &b.url(),
            "--closed",
            "-c",
            "4",
            "--cores",
            "1,",
            "-d",
            "3s",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    let p999 = v["latency_us"]["p999"].as_u64().unwrap();
    let max = v["latency_us"]["max"].as_u64().unwrap();
    assert!(
        max >= 200_000,
        "the stalled requests are there (max {max} us)"
    );
    assert!(
        p999 < 100_000,
        "closed loop hides the stall in its p99.9 ({p999} us): {v}"
    );
}

#[test]
fn achieved_rate_within_two_percent() {
    let _g = serial();
    let b = Backend::start(&["--mode", "http1", "--cores", "0,"]);
    for poisson in [false, true] {
        let mut args = vec![
            "http1",
            b.url().leak(),
            "--rate",
            "2000",
            "-c",
            "8",
            "--cores",
            "1,",
            "-d",
            "3s",
        ];
        if poisson {
            args.push("--poisson");
        }
        let r = loadgen(&args, DL);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let v = r.json.unwrap();
        let rps = v["achieved_rps"].as_f64().unwrap();
        // Poisson counts over 3 s have a standard deviation of sqrt(6000) ≈ 1.3 %.
        let tol = if poisson { 0.04 } else { 0.02 };
        assert!(
            (rps / 2000.0 - 1.0).abs() <= tol,
            "achieved {rps} (poisson {poisson})"
        );
        assert_eq!(v["target_rps"].as_f64(), Some(2000.0));
        assert_eq!(v["arrival"], if poisson { "poisson" } else { "uniform" });
    }
}

#[test]
fn refused_port_counts_connect_refused_and_exits_1() {
    let _g = serial();
    let port = refused_port();
    let r = loadgen(
        &[
            "tcp",
            &format!("127.0.0.1:{port}"),
            "-c",
            "2",
            "--cores",
            "1,",
            "-d",
            "500ms",
        ],
        DL,
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert!(u(&v["errors"], "connect_refused") > 0, "{v}");
    assert_eq!(u(&v, "errors_total"), u(&v["errors"], "connect_refused"));
    assert_eq!(u(&v, "responses"), 0);
    assert!(r.stdout.contains("connect_refused"));
}

#[test]
fn reset_mid_response_counts_reset_and_exits_1() {
    let _g = serial();
    let b = Backend::start(&[
        "--mode",
        "http1",
        "--cores",
        "1,",
        "--body-size",
        "20000",
        "--reset-after",
        "3",
    ]);
    let r = loadgen(
        &["http1", &b.url(), "-c", "2", "--cores", "1,", "-n", "400"],
        DL,
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_eq!(u(&v, "requests"), 400);
    assert_eq!(
        u(&v, "requests"),
        u(&v, "responses") + u(&v, "errors_total")
    );
    // Every 4th request on a connection is cut: 3 good, then a reset (or, if the RST
    // overtook the partial body, a short read — never a success).
    let cut = u(&v["errors"], "reset") + u(&v["errors"], "short_read");
    assert_eq!(cut, 100, "{v}");
    assert!(u(&v["errors"], "reset") > 0, "{v}");
    assert_eq!(u(&v, "responses"), 300);

    let echo = Backend::start(&["--mode", "echo", "--cores", "0,", "--reset-after", "2"]);
    let r = loadgen(
        &[
            "tcp", &echo.addr, "--size", "100", "-c", "1", "--cores", "1,", "-n", "30",
        ],
        DL,
    );
    assert_eq!(r.code, 1);
    let v = r.json.unwrap();
    assert_eq!(u(&v, "responses"), 20);
    assert_eq!(
        u(&v["errors"], "reset") + u(&v["errors"], "short_read"),
        10,
        "{v}"
    );
}

#[test]
fn http_500_counts_bad_status_and_exits_1() {
    let _g = serial();
    let b = Backend::start(&["--mode", "http1", "--cores", "0,", "--status", "500"]);
    let r = loadgen(
        &["http1", &b.url(), "-c", "2", "--cores", "1,", "-n", "200"],
        DL,
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_eq!(u(&v["errors"], "bad_status"), 200, "{v}");
    assert_eq!(u(&v, "connects"), 2, "a bad status keeps the connection");
    let h2 = Backend::start(&["--mode", "http2", "--cores", "0,", "--status", "500"]);
    let r = loadgen(
        &[
            "http2",
            &h2.url(),
            "-c",
            "1",
            "--streams",
            "4",
            "--cores",
            "1,",
            "-n",
            "100",
        ],
        DL,
    );
    assert_eq!(r.code, 1);
    assert_eq!(u(&r.json.unwrap()["errors"], "bad_status"), 100);
    // --expect-status turns the 500 into the expected answer.
    let r = loadgen(
        &[
            "http1",
            &b.url(),
            "--expect-status",
            "500",
            "-c",
            "1",
            "--cores",
            "1,",
            "-n",
            "50",
        ],
        DL,
    );
    assert_eq!(r.code, 0);
}

/// Every field documented in `loadgen --help` is in the JSON.
#[test]
fn json_carries_the_documented_fields() {
    let _g = serial();
    let b = Backend::start(&["--mode", "http1", "--cores", "0,"]);
    let r = loadgen(
        &[
            "http1",
            &b.url(),
            "--rate",
            "500",
            "-c",
            "2",
            "--cores",
            "1,",
            "-d",
            "1s",
        ],
        DL,
    );
    assert_eq!(r.code, 0);
    let v = r.json.unwrap();
    let help = std::process::Command::new(common::BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let section = help
        .split("JSON report")
        .nth(1)
        .expect("help documents the JSON report");
    let mut checked = 0;
    // Field lines are indented by exactly two spaces: "  name[, name]   description".
    for line in section
        .lines()
        .take_while(|l| !l.starts_with("Exit status"))
    {
        if !line.starts_with("  ") || line.starts_with("   ") {
            continue;
        }
        let names = line[2..].split("  ").next().unwrap();
        for name in names.split(',').map(str::trim) {
            assert!(
                v.get(name).is_some(),
                "documented field {name} missing from {v}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "parsed only {checked} documented fields");
    for k in ["p50", "p90", "p99", "p999", "p9999", "max", "mean"] {
        assert!(v["latency_us"][k].is_number(), "latency_us.{k}");
    }
    for k in [
        "connect_refused",
        "connect_timeout",
        "timeout",
        "reset",
        "bad_status",
        "short_read",
        "other",
    ] {
        assert!(v["errors"][k].is_u64(), "errors.{k}");
    }
    assert_eq!(v["load"], "open");
    assert_eq!(v["mode"], "http1");
    assert_eq!(u(&v, "connections"), 2);
    assert!(v["duration_s"].as_f64().unwrap() > 0.9);
}

#[test]
fn hdr_log_is_written() {
    let _g = serial();
    let b = Backend::start(&["--mode", "echo", "--cores", "0,"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.hlog");
    let r = loadgen(
        &[
            "tcp",
            &b.addr,
            "-c",
            "1",
            "--cores",
            "1,",
            "-n",
            "100",
            "--hdr-log",
            p.to_str().unwrap(),
        ],
        DL,
    );
    assert_eq!(r.code, 0);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("#[StartTime:") && text.contains("microseconds"));
    assert!(
        text.lines().any(|l| l.starts_with("Tag=tcp,0.000,")),
        "{text}"
    );
}

#[test]
fn sweep_writes_curve_json_and_svg() {
    let _g = serial();
    let b = Backend::start(&["--mode", "http1", "--cores", "0,"]);
    let dir = tempfile::tempdir().unwrap();
    let (j, s) = (dir.path().join("s.json"), dir.path().join("s.svg"));
    let r = loadgen(
        &[
            "sweep",
            "--slo-p99",
            "1s",
            "--start",
            "200",
            "--step",
            "200",
            "--max",
            "600",
            "--step-duration",
            "500ms",
            "--json",
            j.to_str().unwrap(),
            "--svg",
            s.to_str().unwrap(),
            "http1",
            &b.url(),
            "-c",
            "2",
            "--cores",
            "1,",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    let pts = v["points"].as_array().unwrap();
    assert_eq!(
        pts.iter()
            .map(|p| p["load"].as_f64().unwrap())
            .collect::<Vec<_>>(),
        [200.0, 400.0, 600.0]
    );
    assert_eq!(v["max_sustainable_load"].as_f64(), Some(600.0));
    assert!(v["stopped_because"].as_str().unwrap().contains("maximum"));
    let svg = std::fs::read_to_string(&s).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    assert!(r.stdout.contains("max sustainable"));
    // The plot can be re-drawn from the JSON alone.
    let again = dir.path().join("again.svg");
    let r = loadgen(
        &[
            "plot",
            "--json",
            j.to_str().unwrap(),
            "--svg",
            again.to_str().unwrap(),
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&again)
            .unwrap()
            .matches("<circle")
            .count(),
        svg.matches("<circle").count()
    );
}

#[test]
fn usage_errors_exit_2() {
    let r = loadgen(&["tcp", "192.0.2.1:80", "-n", "1"], DL);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--allow-remote"), "{}", r.stderr);
    let r = loadgen(&["http1", "https://127.0.0.1/", "-n", "1"], DL);
    assert_eq!(r.code, 2);
    let r = loadgen(&["tcp", "127.0.0.1:1", "--rate", "10", "--closed"], DL);
    assert_eq!(r.code, 2);
}

/// A request that outlives --timeout counts as `timeout` (the slot's watchdog fires) and the
/// slot carries on with a new connection.
#[test]
fn slow_responses_count_as_timeouts() {
    let _g = serial();
    let b = Backend::start(&[
        "--mode",
        "http1",
        "--cores",
        "0,",
        "--stall-once-ms",
        "600",
        "--stall-after",
        "50",
    ]);
    let r = loadgen(
        &[
            "http1",
            &b.url(),
            "-c",
            "1",
            "--cores",
            "1,",
            "-n",
            "300",
            "--timeout",
            "150ms",
        ],
        DL,
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    let timeouts = u(&v["errors"], "timeout");
    // The backend's only core sleeps 600 ms: the stalled request and the retries behind it
    // time out every 150 ms until it wakes.
    assert!((1..=5).contains(&timeouts), "{v}");
    assert_eq!(u(&v, "errors_total"), timeouts, "{v}");
    assert_eq!(u(&v, "requests"), 300);
    assert_eq!(u(&v, "responses"), 300 - timeouts);
    assert!(u(&v, "connects") > 1, "a timed-out connection is replaced");
}
