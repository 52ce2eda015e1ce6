//! End-to-end tests: every client mode of the `loadgen` binary against `loadgen serve` on
//! loopback, on both drivers: counts match and bytes are intact.

mod common;

use common::{Backend, DL, assert_clean, loadgen, serial, u};

#[test]
fn tcp_echo_counts_and_bytes_intact() {
    let _g = serial();
    let b = Backend::start(&["--mode", "echo", "--cores", "0,"]);
    let r = loadgen(
        &[
            "tcp", &b.addr, "--size", "1000", "-c", "4", "--cores", "2", "-n", "2000",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 2000);
    // Every byte sent came back and compared equal (a mismatch counts as an error).
    assert_eq!(u(&v, "bytes_sent"), 2000 * 1000);
    assert_eq!(u(&v, "bytes_received"), 2000 * 1000);
    assert_eq!(u(&v, "connects"), 4);
    assert_eq!(v["mode"], "tcp");
    // Requests larger than the socket buffers: written and read at once, so no stall.
    let big = (16 << 20).to_string();
    let r = loadgen(
        &[
            "tcp",
            &b.addr,
            "--size",
            &big,
            "-c",
            "1",
            "--cores",
            "1,",
            "-n",
            "6",
            "--timeout",
            "20s",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 6);
    assert_eq!(u(&v, "bytes_received"), 6 << 24);
}

#[test]
fn http1_get_and_post_against_serve() {
    let _g = serial();
    let b = Backend::start(&["--mode", "http1", "--cores", "0,", "--body-size", "300"]);
    let r = loadgen(
        &["http1", &b.url(), "-c", "3", "--cores", "1,", "-n", "1500"],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 1500);
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n".len() as u64;
    assert_eq!(u(&v, "bytes_received"), 1500 * (head + 300));
    let r = loadgen(
        &[
            "http1",
            &b.url(),
            "--method",
            "POST",
            "--body-size",
            "5000",
            "-c",
            "2",
            "--cores",
            "1,",
            "-n",
            "500",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 500);
    assert!(u(&v, "bytes_sent") > 500 * 5000);
}

#[test]
fn http2_streams_against_serve() {
    let _g = serial();
    let b = Backend::start(&["--mode", "http2", "--cores", "0,", "--body-size", "1000"]);
    let r = loadgen(
        &[
            "http2",
            &b.url(),
            "-c",
            "2",
            "--streams",
            "8",
            "--cores",
            "2",
            "-n",
            "3000",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 3000);
    assert_eq!(u(&v, "bytes_received"), 3000 * 1000);
    assert_eq!(u(&v, "connects"), 2, "streams share their connection");
    assert_eq!(u(&v, "streams"), 8);
}

#[test]
fn connect_churn_tcp_and_http() {
    let _g = serial();
    let echo = Backend::start(&["--mode", "echo", "--cores", "0,"]);
    let r = loadgen(
        &[
            "connect-churn",
            &echo.addr,
            "--size",
            "100",
            "-c",
            "2",
            "--cores",
            "1,",
            "-n",
            "300",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 300);
    assert_eq!(u(&v, "connects"), 300, "one connection per request");
    assert_eq!(u(&v, "bytes_received"), 300 * 100);

    let http = Backend::start(&["--mode", "http1", "--cores", "0,"]);
    let r = loadgen(
        &[
            "connect-churn",
            &http.url(),
            "--http",
            "-c",
            "2",
            "--cores",
            "1,",
            "-n",
            "300",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 300);
    assert_eq!(u(&v, "connects"), 300);
}

#[test]
fn both_drivers_serve_and_load() {
    let _g = serial();
    for driver in ["epoll", "io-uring"] {
        // (serve mode, client args): every client I/O path on this driver, server on it too.
        let cases: [(&str, &[&str]); 4] = [
            ("http1", &["http1"]),
            ("echo", &["tcp", "--size", "300"]),
            ("http2", &["http2", "--streams", "4"]),
            ("echo", &["connect-churn", "--size", "10"]),
        ];
        for (mode, client) in cases {
            let b = Backend::start(&["--mode", mode, "--cores", "0,", "--driver", driver]);
            let target = if client[0].starts_with("http") {
                b.url()
            } else {
                b.addr.clone()
            };
            let mut args = vec![client[0], &target];
            args.extend_from_slice(&client[1..]);
            args.extend(["-c", "2", "--cores", "1,", "--driver", driver, "-n", "400"]);
            let r = loadgen(&args, DL);
            assert_eq!(r.code, 0, "{driver} {client:?}: {}{}", r.stdout, r.stderr);
            let v = r.json.unwrap();
            assert_clean(&v, 400);
            assert_eq!(v["driver"], driver.replace('-', "_"));
        }
    }
}

#[test]
fn tcp_bulk_upload_echo_and_download() {
    let _g = serial();
    let sink = Backend::start(&["--mode", "sink", "--cores", "0,"]);
    let r = loadgen(
        &[
            "tcp", &sink.addr, "--bulk", "--size", "65536", "-c", "2", "--cores", "1,", "-d",
            "500ms",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert!(u(&v, "bytes_sent") > 10 << 20, "{v}");
    assert_eq!(
        u(&v, "bytes_sent"),
        u(&v, "requests") * 65520,
        "whole pattern cycles per write"
    );

    let echo = Backend::start(&["--mode", "echo", "--cores", "0,"]);
    let r = loadgen(
        &[
            "tcp", &echo.addr, "--bulk", "--size", "16384", "-c", "2", "--cores", "1,", "-n",
            "2000",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_eq!(u(&v, "requests"), 2000);
    // Every byte came back, in order (checked against the pattern as it arrived).
    assert_eq!(u(&v, "bytes_received"), u(&v, "bytes_sent"));
    assert_eq!(u(&v, "bytes_sent"), 2000 * 16380);

    let source = Backend::start(&["--mode", "source", "--cores", "0,"]);
    let r = loadgen(
        &[
            "tcp",
            &source.addr,
            "--bulk",
            "--download",
            "-c",
            "1",
            "--cores",
            "1,",
            "-d",
            "500ms",
        ],
        DL,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert!(u(&v, "bytes_received") > 10 << 20, "{v}");
    assert_eq!(u(&v, "errors_total"), 0);
}

/// HBONE: dev certificates, `serve --mode hbone` (echo inside each tunnel), keep-alive
/// tunnels and a CONNECT per request; a wrong expected server identity fails every request.
#[test]
fn hbone_tunnels_against_serve() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let r = loadgen(&["dev-certs", "--out", d], DL);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = |f: &str| format!("{d}/{f}");
    let b = Backend::start(&[
        "--mode",
        "hbone",
        "--cores",
        "0,",
        "--cert",
        &p("server.pem"),
        "--key",
        &p("server.key"),
        "--roots",
        &p("root.pem"),
    ]);
    let tls = [
        "--cert".to_string(),
        p("client.pem"),
        "--key".into(),
        p("client.key"),
        "--roots".into(),
        p("root.pem"),
        "--server-identity".into(),
        "spiffe://cluster.local/ns/loadgen/sa/server".into(),
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["hbone", &b.addr, "--dest", "127.0.0.1:9", "--cores", "1,"];
        args.extend(tls.iter().map(String::as_str));
        args.extend_from_slice(extra);
        loadgen(&args, DL)
    };
    let r = run(&["--size", "500", "-c", "2", "--streams", "4", "-n", "1000"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 1000);
    assert_eq!(u(&v, "bytes_received"), 1000 * 500);
    assert_eq!(u(&v, "connects"), 2, "tunnels share their connection");
    assert_eq!(v["mode"], "hbone");

    // Larger than the 4 MiB stream window: written and read at once, no stall.
    let r = run(&[
        "-c",
        "1",
        "-n",
        "3",
        "--size",
        "9000000",
        "--timeout",
        "20s",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_clean(&v, 3);
    assert_eq!(u(&v, "bytes_received"), 27_000_000);

    let r = run(&[
        "--size",
        "500",
        "-c",
        "1",
        "--streams",
        "2",
        "-n",
        "200",
        "--tunnel-per-request",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_clean(&r.json.unwrap(), 200);

    let mut args = vec![
        "hbone",
        &b.addr,
        "--dest",
        "127.0.0.1:9",
        "--cores",
        "1,",
        "-c",
        "1",
        "-n",
        "5",
    ];
    args.extend(tls[..6].iter().map(String::as_str));
    args.extend(["--server-identity", "spiffe://cluster.local/ns/other/sa/x"]);
    let r = loadgen(&args, DL);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v = r.json.unwrap();
    assert_eq!(u(&v, "responses"), 0);
    assert_eq!(u(&v["errors"], "other"), 5, "{v}");
}
