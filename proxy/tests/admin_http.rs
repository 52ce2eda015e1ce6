//! The admin, metrics and readiness endpoints over real loopback sockets, against a fake
//! `AdminSource`: every route, the error statuses, and hostile clients (garbage, oversized
//! heads, stalled requests, floods) that must neither panic nor hang the server.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy::admin::{self, AdminAddrs, AdminServer, AdminSource, Limits};
use proxy::telemetry::metrics::Refusal;
use proxy::telemetry::{Extras, Metrics};

struct Fake {
    ready: AtomicBool,
    drains: AtomicUsize,
    level: Mutex<String>,
    metrics: Arc<Metrics>,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            ready: AtomicBool::new(false),
            drains: AtomicUsize::new(0),
            level: Mutex::new("info".into()),
            metrics: Metrics::new(2),
        })
    }
}

impl AdminSource for Fake {
    fn config_dump(&self) -> serde_json::Value {
        serde_json::json!({
            "workloads": 2,
            "certificates": [{"identity": "spiffe://cluster.local/ns/default/sa/a",
                              "not_after": "2026-11-29T00:00:00Z"}],
            "driver": "io_uring",
        })
    }
    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("proxy".into())
        }
    }
    fn metrics(&self) -> String {
        self.metrics.render_prometheus(&Extras {
            driver: "io_uring".into(),
            gauges: vec![("ringmesh_certificates", "Certificates.", 1.0)],
            ..Extras::default()
        })
    }
    fn log_filter(&self) -> String {
        self.level.lock().unwrap().clone()
    }
    fn default_log_filter(&self) -> String {
        "info".into()
    }
    fn set_log_filter(&self, filter: &str) -> Result<(), String> {
        if filter.contains("hbone=trace") {
            return Err("the source refuses this one".into());
        }
        *self.level.lock().unwrap() = filter.to_string();
        Ok(())
    }
    fn drain(&self) {
        self.drains.fetch_add(1, Ordering::SeqCst);
    }
}

fn any_port() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

fn ephemeral() -> AdminAddrs {
    AdminAddrs {
        admin: any_port(),
        metrics: any_port(),
        ready: any_port(),
    }
}

fn start(source: Arc<Fake>) -> AdminServer {
    let limits = Limits {
        request_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    admin::start_with(&ephemeral(), source, limits).unwrap()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Send raw bytes, half-close, and read the whole reply (the server closes after one).
fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    assert!(head.contains("\r\nConnection: close"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    if !request.starts_with(b"HEAD ") {
        assert_eq!(len, body.len(), "Content-Length matches the body");
    }
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn req(addr: SocketAddr, method: &str, target: &str) -> Reply {
    raw(
        addr,
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn admin_routes() {
    let fake = Fake::new();
    let server = start(Arc::clone(&fake));
    let a = server.local_addrs().admin.unwrap();
    assert_ne!(a.port(), 0);

    let r = req(a, "GET", "/");
    assert_eq!(r.status, 200);
    for route in ["/config_dump", "/logging", "/drain", "/quitquitquit"] {
        assert!(r.body.contains(route), "{}", r.body);
    }

    let r = req(a, "GET", "/config_dump");
    assert_eq!(r.status, 200);
    assert!(
        r.head.contains("Content-Type: application/json"),
        "{}",
        r.head
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["certificates"][0]["identity"],
        "spiffe://cluster.local/ns/default/sa/a"
    );

    // ztunnel's /logging: a plain POST (or GET) lists; `level` adds directives; `reset`
    // starts from the filter the process started with; istioctl's `target:level` works.
    let r = req(a, "GET", "/logging");
    assert_eq!(
        (r.status, r.body.trim()),
        (200, "current log level is info")
    );
    let r = req(a, "POST", "/logging");
    assert_eq!(
        (r.status, r.body.trim()),
        (200, "current log level is info")
    );
    assert_eq!(req(a, "POST", "/logging?level=").status, 200);
    let r = req(a, "POST", "/logging?level=access%3Adebug%2Cproxy%3Dwarning");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body.trim(),
        "current log level is info,access=debug,proxy=warn"
    );
    assert_eq!(*fake.level.lock().unwrap(), "info,access=debug,proxy=warn");
    // A level the admin API does not know: 400 naming it, and the filter stays.
    let r = req(a, "POST", "/logging?level=loud");
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("invalid level provided: loud"),
        "{}",
        r.body
    );
    // The source refuses it: 400 with its reason, and the filter stays.
    let r = req(a, "POST", "/logging?level=hbone%3Dtrace");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("refuses"), "{}", r.body);
    assert_eq!(*fake.level.lock().unwrap(), "info,access=debug,proxy=warn");
    let r = req(a, "POST", "/logging?level=debug&reset");
    assert_eq!(r.body.trim(), "current log level is info,debug");
    assert_eq!(req(a, "POST", "/logging?level=%zz").status, 400);

    assert_eq!(fake.drains.load(Ordering::SeqCst), 0);
    let r = req(a, "POST", "/drain");
    assert_eq!((r.status, r.body.trim()), (200, "draining"));
    assert_eq!(fake.drains.load(Ordering::SeqCst), 1);
    let r = req(a, "POST", "/quitquitquit");
    assert_eq!((r.status, r.body.trim()), (200, "shutdown now"));
    assert_eq!(fake.drains.load(Ordering::SeqCst), 2);
    assert_eq!(req(a, "GET", "/quitquitquit").status, 405);

    // HEAD: the GET headers without the body.
    let r = req(a, "HEAD", "/config_dump");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    server.stop();
}

#[test]
fn post_with_a_body_still_gets_its_response() {
    let fake = Fake::new();
    let server = start(Arc::clone(&fake));
    let a = server.local_addrs().admin.unwrap();
    let body = vec![b'x'; 20_000];
    let mut request = format!(
        "POST /drain HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let r = raw(a, &request);
    assert_eq!(r.status, 200);
    assert_eq!(fake.drains.load(Ordering::SeqCst), 1);
}

#[test]
fn metrics_route() {
    let fake = Fake::new();
    fake.metrics.shard(1).refused(Refusal::Loop);
    let server = start(Arc::clone(&fake));
    let m = server.local_addrs().metrics.unwrap();
    let r = req(m, "GET", "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.head.contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    assert!(r.body.contains("# TYPE istio_build gauge"));
    assert!(
        r.body
            .contains("ringmesh_connections_refused_total{reason=\"loop\"} 1\n")
    );
    // Istio's path for the same figures.
    let r2 = req(m, "GET", "/stats/prometheus");
    assert_eq!(r2.status, 200);
    assert!(r2.body.contains("# TYPE istio_build gauge"));
    assert!(
        r.body
            .contains("ringmesh_runtime_info{driver=\"io_uring\"} 1\n")
    );
    assert!(r.body.contains("ringmesh_certificates 1\n"));
    // Routes live on their own ports only.
    assert_eq!(req(m, "GET", "/config_dump").status, 404);
    assert_eq!(req(m, "GET", "/healthz/ready").status, 404);
}

#[test]
fn ready_flips_from_500_to_200() {
    let fake = Fake::new();
    let server = start(Arc::clone(&fake));
    let rd = server.local_addrs().ready.unwrap();
    let r = req(rd, "GET", "/healthz/ready");
    assert_eq!(
        (r.status, r.body.trim()),
        (500, "not ready, pending: proxy")
    );
    fake.ready.store(true, Ordering::SeqCst);
    let r = req(rd, "GET", "/healthz/ready");
    assert_eq!((r.status, r.body.trim()), (200, "ready"));
    assert_eq!(req(rd, "GET", "/metrics").status, 404);
}

#[test]
fn error_statuses() {
    let server = start(Fake::new());
    let AdminAddrs {
        admin: Some(a),
        metrics: Some(m),
        ready: Some(rd),
    } = server.local_addrs()
    else {
        panic!("all three listeners bound");
    };
    assert_eq!(req(a, "GET", "/nope").status, 404);
    assert_eq!(req(a, "GET", "/config_dump/extra").status, 404);

    let r = req(a, "GET", "/drain");
    assert_eq!(r.status, 405);
    assert!(r.head.contains("\r\nAllow: POST"), "{}", r.head);
    let r = req(a, "DELETE", "/logging");
    assert_eq!(r.status, 405);
    assert!(r.head.contains("\r\nAllow: GET, HEAD, POST"), "{}", r.head);
    assert_eq!(req(a, "POST", "/config_dump").status, 405);
    assert_eq!(req(m, "PUT", "/metrics").status, 405);
    assert_eq!(req(rd, "POST", "/healthz/ready").status, 405);

    assert_eq!(raw(a, b"GET /\r\n\r\n").status, 400);
    assert_eq!(raw(a, b"GET http://example/ HTTP/1.1\r\n\r\n").status, 400);
    assert_eq!(
        raw(a, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").status,
        400
    );
    assert_eq!(raw(a, b"GET / HTTP/9.9\r\n\r\n").status, 505);
}

#[test]
fn garbage_and_oversized_heads_do_not_break_the_server() {
    let fake = Fake::new();
    let server = start(Arc::clone(&fake));
    let a = server.local_addrs().admin.unwrap();

    // Binary garbage with a blank line: a 400, not a panic.
    let mut junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    junk.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw(a, &junk).status, 400);

    // A header that never ends: 431 once past the limit, without waiting for the client.
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&big); // the server may close before taking it all
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&buf[..buf.len().min(80)])
    );

    // Garbage without a blank line, then the client stalls with the socket open: the server
    // gives up at its request deadline (800 ms here) and closes.
    let started = Instant::now();
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x00\xff\x13GET garbage").unwrap();
    let mut buf = Vec::new();
    let n = s.read_to_end(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "no response to an incomplete head");
    assert!(
        waited < Duration::from_secs(5),
        "server closed at its deadline, took {waited:?}"
    );

    // Connect-and-close does nothing either.
    drop(TcpStream::connect(a).unwrap());

    // After all that the server still answers.
    assert_eq!(req(a, "GET", "/config_dump").status, 200);
}

#[test]
fn connection_flood_is_capped_and_probe_survives() {
    let fake = Fake::new();
    fake.ready.store(true, Ordering::SeqCst);
    let limits = Limits {
        request_timeout: Duration::from_secs(2),
        max_connections: 4,
        ..Limits::default()
    };
    let server = admin::start_with(&ephemeral(), fake, limits).unwrap();
    let rd = server.local_addrs().ready.unwrap();
    // Fill every slot with a silent client.
    let stalled: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(rd).unwrap()).collect();
    // Over the cap: an immediate 503 rather than a queue behind the stalled ones. The slots
    // are taken asynchronously by the accept thread, so retry until the cap is observed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = req(rd, "GET", "/healthz/ready");
        if r.status == 503 && r.body.contains("too many") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cap never observed: {} {}",
            r.status,
            r.body
        );
    }
    drop(stalled);
    // Slots come back once the stalled connections are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while req(rd, "GET", "/healthz/ready").status != 200 {
        assert!(Instant::now() < deadline, "slots never released");
    }
}

#[test]
fn bind_error_names_the_address_and_stop_frees_ports() {
    let server = start(Fake::new());
    let taken = server.local_addrs().admin.unwrap();
    let addrs = AdminAddrs {
        admin: any_port(),
        metrics: Some(taken),
        ready: None,
    };
    let err = match admin::start(&addrs, Fake::new()) {
        Ok(_) => panic!("binding a taken port succeeded"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains("metrics") && msg.contains(&taken.to_string()),
        "{msg}"
    );

    let local = server.local_addrs();
    server.stop();
    // Stopped: the ports refuse connections (the accept threads have been joined).
    for addr in [local.admin, local.metrics, local.ready]
        .into_iter()
        .flatten()
    {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still accepting");
    }

    let none = AdminAddrs {
        admin: None,
        metrics: None,
        ready: None,
    };
    let server = admin::start(&none, Fake::new()).unwrap();
    assert_eq!(server.local_addrs(), none);
    assert_eq!(
        AdminAddrs::default().ready,
        Some("127.0.0.1:15021".parse().unwrap())
    );
}
