//! What a Telemetry's CEL costs a request: one evaluation of an access-log filter or an
//! `UPSERT` tag value over a typical request (a dozen headers), as the waypoint runs it.
//!
//! Run: `cargo bench -p ringmesh-waypoint --bench telemetry_expr` (`-- --iterations N`,
//! default 200,000). Prints ns per evaluation for each expression (the median of 5 rounds),
//! as text and as one JSON line. Only requests whose Service's plan has a filter or an
//! `UPSERT` pay this; the others pay nothing.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use waypoint::telemetry::{Attributes, Expr};

fn main() {
    let mut iterations = 200_000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iterations" {
            iterations = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--iterations N");
        }
    }
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("host", "echo.demo.svc.cluster.local"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-request-id", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"),
        ("x-team", "blue"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("content-type", "application/json"),
        ("content-length", "42"),
        ("x-forwarded-proto", "http"),
        ("accept-encoding", "gzip"),
        ("cookie", "session=abc"),
        ("x-debug", "off"),
    ] {
        headers.insert(k, v.parse().expect("header"));
    }
    let a = Attributes {
        method: "GET",
        path: "/api/items?id=3",
        host: "echo.demo.svc.cluster.local",
        headers: &headers,
        protocol: "HTTP/1.1",
        code: 200,
        flags: "-",
        request_size: 42,
        response_size: 512,
        duration: Duration::from_micros(800),
        source: Some("10.0.0.1:5000".parse().expect("addr")),
        source_principal: Some("spiffe://cluster.local/ns/demo/sa/client"),
        port: 80,
        upstream: Some("10.0.1.1:8080".parse().expect("addr")),
    };
    let cases = [
        ("filter: status", "response.code >= 400"),
        (
            "filter: status or header",
            "response.code >= 400 || request.headers['x-debug'] == 'on'",
        ),
        ("upsert: header", "request.headers['x-team']"),
    ];
    let mut json = Vec::new();
    for (name, source) in cases {
        let e = Expr::compile(source).expect("compiles");
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(if name.starts_with("upsert") {
                    e.label(std::hint::black_box(&a)).map(|v| v.len())
                } else {
                    e.matches(std::hint::black_box(&a)).map(usize::from)
                });
            }
            rounds.push(start.elapsed().as_nanos() as f64 / f64::from(iterations));
        }
        rounds.sort_by(f64::total_cmp);
        let ns = rounds[2];
        println!("{name:28} {source:60} {ns:8.0} ns");
        json.push(format!("\"{name}\":{ns:.0}"));
    }
    println!("{{{}}}", json.join(","));
}
