use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::node::limits::Limits;

fn opts() -> NodeOptions {
    NodeOptions {
        config: Some("mesh.yaml".into()),
        node: None,
        ca_dir: Some("ca".into()),
        cluster: crate::node::cluster::ClusterSettings::from_env(
            Vec::new(),
            &crate::node::cluster::ClusterFlags::default(),
        )
        .unwrap(),
        runtime: runtime::RuntimeConfig::default(),
        drain_timeout: Duration::from_secs(5),
        entries: EntryAddrs {
            capture: Some("127.0.0.1:15001".parse().unwrap()),
            socks5: Some("127.0.0.1:15080".parse().unwrap()),
        },
        admin: AdminAddrs::default(),
        hbone_port: 15008,
        plaintext_port: 15006,
        unknown_source: UnknownSource::Passthrough,
        incoming_cpu: IncomingCpu::All,
        cert_lifetime: Duration::from_secs(24 * 3600),
        pool_idle_timeout: Duration::from_secs(300),
        hbone_spread: 1,
        watch_interval: Duration::from_millis(500),
        limits: Limits::default(),
        istio_version: None,
        inpod: None,
    }
}

fn flag_of(o: &NodeOptions) -> String {
    o.validate().unwrap_err().flag
}

#[test]
fn the_defaults_are_valid() {
    opts().validate().unwrap();
}

#[test]
fn each_bad_setting_is_refused_naming_its_flag() {
    let mut o = opts();
    o.hbone_port = 0;
    assert_eq!(flag_of(&o), "--hbone-port");
    let mut o = opts();
    o.plaintext_port = 15008;
    assert_eq!(flag_of(&o), "--hbone-port and --plaintext-port");
    let mut o = opts();
    o.entries.capture = Some("127.0.0.1:0".parse().unwrap());
    let e = o.validate().unwrap_err();
    assert_eq!(e.flag, "--capture");
    assert!(e.reason.contains("every core"), "{e}");
    let mut o = opts();
    o.entries.socks5 = Some("0.0.0.0:15001".parse().unwrap());
    assert_eq!(flag_of(&o), "--capture and --socks5");
    let mut o = opts();
    o.admin.metrics = Some("0.0.0.0:15008".parse().unwrap());
    assert_eq!(flag_of(&o), "--metrics and --hbone-port");
    let mut o = opts();
    o.cert_lifetime = Duration::ZERO;
    let e = o.validate().unwrap_err();
    assert_eq!(e.flag, "--cert-lifetime");
    assert!(e.to_string().contains("--cert-lifetime: 0ns"), "{e}");
    let mut o = opts();
    o.cert_lifetime = Duration::from_secs(365 * 24 * 3600);
    assert_eq!(flag_of(&o), "--cert-lifetime");
    let mut o = opts();
    o.pool_idle_timeout = Duration::ZERO;
    assert_eq!(flag_of(&o), "--pool-idle-timeout");
    for bad in [0, MAX_HBONE_SPREAD + 1] {
        let mut o = opts();
        o.hbone_spread = bad;
        let e = o.validate().unwrap_err();
        assert_eq!(e.flag, "--hbone-spread");
        assert!(
            e.to_string().contains(&format!("{bad} is outside 1..=")),
            "{e}"
        );
    }
    let mut o = opts();
    o.hbone_spread = 8;
    assert!(o.validate().is_ok());
}

#[test]
fn overlap_is_same_port_and_family_with_one_ip_or_a_wildcard() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(overlaps(a("127.0.0.1:1"), a("127.0.0.1:1")));
    assert!(overlaps(a("0.0.0.0:1"), a("127.0.0.1:1")));
    assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.2:1")));
    assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.1:2")));
    assert!(!overlaps(a("[::]:1"), a("127.0.0.1:1")));
}

#[test]
fn a_port_another_process_serves_is_refused() {
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let e = claim_port("--socks5", addr, None).unwrap_err();
    assert_eq!(e.flag, "--socks5");
    assert!(e.reason.contains("already served"), "{e}");
    // Within a grace, still served at its end: refused, after the grace.
    let started = std::time::Instant::now();
    let e = claim_port("--socks5", addr, Some(started + Duration::from_millis(100))).unwrap_err();
    assert!(e.reason.contains("already served"), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    drop(other);
    claim_port("--socks5", addr, None).unwrap();
}

#[test]
fn a_port_freed_within_the_grace_is_claimed() {
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let freer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        drop(other);
    });
    let until = std::time::Instant::now() + Duration::from_secs(10);
    claim_port("--socks5", addr, Some(until)).unwrap();
    freer.join().unwrap();
}

fn istiod() -> control::grpc::ChannelConfig {
    control::grpc::ChannelConfig::new("istiod:15012", control::grpc::RootCa::System).unwrap()
}

#[test]
fn a_node_needs_one_source_and_one_ca() {
    let mut o = opts();
    o.config = None;
    assert_eq!(flag_of(&o), "--config or --xds-address");
    o.cluster.xds = Some(istiod());
    o.validate().unwrap();
    o.config = Some("mesh.yaml".into());
    assert_eq!(flag_of(&o), "--config and --xds-address");
    let mut o = opts();
    o.ca_dir = None;
    assert_eq!(flag_of(&o), "--ca-dir or --ca-address");
    o.cluster.ca = Some(istiod());
    o.validate().unwrap();
    o.ca_dir = Some("ca".into());
    assert_eq!(flag_of(&o), "--ca-dir and --ca-address");
}
