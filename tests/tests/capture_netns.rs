//! Redirected outbound traffic (port 15001, original destination from SO_ORIGINAL_DST) in a
//! network namespace of its own, with a real iptables REDIRECT rule, as a node sees pod
//! traffic in production. Needs root (namespaces, iptables): skipped with a message when
//! not root; CI runs as root, so it always runs there.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::{AccessLog, Proc, bin, is_root, wait_for};

/// Deletes the namespace (and with it its iptables rules) when the test ends, even on panic.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        run("ip", &["netns", "add", name])?;
        let ns = Netns(name.to_string());
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec(&self, cmd: &[&str]) -> Result<()> {
        let mut args = vec!["netns", "exec", &self.0];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

const CONFIG: &str = r#"
workloads:
  - {uid: t/client, name: client, namespace: t, serviceAccount: client, workloadIps: ["127.31.1.1"], node: node-1, protocol: HBONE}
  - {uid: t/echo, name: echo, namespace: t, serviceAccount: echo, workloadIps: ["127.31.2.1"], node: node-1, protocol: HBONE, services: ["t/echo.t.svc.cluster.local"]}
  - {uid: t/db, name: db, namespace: t, serviceAccount: db, workloadIps: ["127.31.2.2"], node: node-1, protocol: TCP, services: ["t/db.t.svc.cluster.local"]}
services:
  - {name: echo, namespace: t, hostname: echo.t.svc.cluster.local, vips: ["127.31.100.1"], ports: {80: 8080}}
  - {name: db, namespace: t, hostname: db.t.svc.cluster.local, vips: ["127.31.100.2"], ports: {5432: 5432}}
"#;

/// Backends and client, run inside the namespace: echo pods, then 1 MiB through each
/// service VIP from the client workload's IP. Prints OK when every byte came back.
const CLIENT: &str = r#"
import socket, threading, time, urllib.request, sys
def echo(addr):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(addr); l.listen(64)
    def serve(c):
        while True:
            d = c.recv(65536)
            if not d: break
            c.sendall(d)
        c.shutdown(socket.SHUT_WR); c.close()
    while True:
        c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
for a in [("127.31.2.1", 8080), ("127.31.2.2", 5432)]:
    threading.Thread(target=echo, args=(a,), daemon=True).start()
deadline = time.time() + 30
while True:
    try:
        if urllib.request.urlopen("http://127.0.0.1:15021/healthz/ready", timeout=1).status == 200: break
    except Exception:
        pass
    if time.time() > deadline: sys.exit("node not ready")
    time.sleep(0.05)
data = bytes(i % 251 for i in range(1 << 20))
for vip in [("127.31.100.1", 80), ("127.31.100.2", 5432)]:
    s = socket.socket(); s.bind(("127.31.1.1", 0)); s.settimeout(20); s.connect(vip)
    threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True).start()
    got = bytearray()
    while True:
        d = s.recv(65536)
        if not d: break
        got += d
    if bytes(got) != data: sys.exit(f"{vip}: {len(got)} bytes back, corrupted or short")
print("OK")
"#;

#[test]
fn redirected_traffic_is_captured_and_tunnelled() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces and iptables (CI runs as root)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ns = Netns::create(&format!("rmcap{}", std::process::id()))?;
    let ca = dir.path().join("ca");
    run(
        bin("ringmesh").to_str().unwrap(),
        &["ca", "init", "--dir", ca.to_str().unwrap()],
    )?;
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, CONFIG)?;
    // Pod traffic to the service VIPs goes to the capture port, as istio-cni sets up.
    for vip in ["127.31.100.1", "127.31.100.2"] {
        ns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            vip,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ])?;
    }
    let ringmesh = bin("ringmesh");
    let node = Proc::spawn(
        &"ip".into(),
        &[
            "netns",
            "exec",
            &ns.0,
            ringmesh.to_str().unwrap(),
            "run",
            "--config",
            config.to_str().unwrap(),
            "--ca-dir",
            ca.to_str().unwrap(),
            "--node",
            "node-1",
            "--cores",
            "2",
            "--capture",
            "127.0.0.1:15001",
            "--socks5",
            "none",
        ],
    )?;
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", CLIENT])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "client failed: {stdout}{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.stderr()
    );
    let outbound = || -> Vec<AccessLog> {
        node.stderr()
            .lines()
            .filter_map(AccessLog::parse)
            .filter(|l| l.complete() && l.get("direction") == "outbound")
            .collect()
    };
    wait_for(Duration::from_secs(5), "access logs", || {
        outbound().len() >= 2
    })?;
    let log = outbound();
    let find = |hostname: &str| {
        log.iter()
            .find(|l| l.get("dst.service") == hostname)
            .with_context(|| format!("no outbound log for {hostname}:\n{}", node.stderr()))
    };
    let hbone = find("echo.t.svc.cluster.local")?;
    assert!(
        hbone.carrier() == "hbone" && hbone.get("dst.addr") == "127.31.2.1:15008",
        "{}",
        hbone.line
    );
    assert!(
        hbone.get("src.identity") == "spiffe://cluster.local/ns/t/sa/client",
        "{}",
        hbone.line
    );
    assert!(
        hbone.get("dst.identity") == "spiffe://cluster.local/ns/t/sa/echo",
        "{}",
        hbone.line
    );
    assert!(
        hbone.num("bytes_sent") == 1 << 20 && hbone.num("bytes_recv") == 1 << 20,
        "{}",
        hbone.line
    );
    let tcp = find("db.t.svc.cluster.local")?;
    assert!(
        tcp.carrier() == "tcp" && tcp.get("dst.addr") == "127.31.2.2:5432",
        "{}",
        tcp.line
    );
    drop(node);
    Ok(())
}
