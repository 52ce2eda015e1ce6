//! Mesh config end to end: `ringmesh config check` on good and bad files, and a running
//! node's file watcher — a bad file is rejected (logged with the field path) while the old
//! snapshot keeps serving, a good file adding a workload and a service is picked up by
//! both nodes without a restart, live connections survive reloads, and destinations
//! outside the mesh are passed through.
//!
//! Address plan: 127.210.0.0/16 for the running mesh.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use e2e::{
    MeshDir, Node, bin, echo_once, hbone_request, ip4, socks_connect, spawn_echo, spiffe, wait_for,
};

const X: u8 = 210;
const RELOAD: Duration = Duration::from_secs(10);

/// The mesh: a client on node-1, `echo` (VIP .100.1) on node-2; `with_echo2` adds a
/// workload `echo2` on node-2 and its service (VIP .100.2, port 80 → 9090).
fn config_in(x: u8, with_echo2: bool) -> String {
    let mut c = format!(
        r#"workloads:
  - name: client
    namespace: test
    serviceAccount: client
    workloadIps: ["{client}"]
    node: node-1
    protocol: HBONE
  - name: echo
    namespace: test
    serviceAccount: echo
    workloadIps: ["{echo}"]
    node: node-2
    protocol: HBONE
    services: ["test/echo.test.svc.cluster.local"]
"#,
        client = ip4(x, 1, 1),
        echo = ip4(x, 2, 1)
    );
    if with_echo2 {
        c += &format!(
            r#"  - name: echo2
    namespace: test
    serviceAccount: echo2
    workloadIps: ["{}"]
    node: node-2
    protocol: HBONE
    services: ["test/echo2.test.svc.cluster.local"]
"#,
            ip4(x, 2, 2)
        );
    }
    c += &format!(
        r#"services:
  - name: echo
    namespace: test
    hostname: echo.test.svc.cluster.local
    vips: ["{}"]
    ports: {{80: 8080}}
"#,
        ip4(x, 100, 1)
    );
    if with_echo2 {
        c += &format!(
            r#"  - name: echo2
    namespace: test
    hostname: echo2.test.svc.cluster.local
    vips: ["{}"]
    ports: {{80: 9090}}
"#,
            ip4(x, 100, 2)
        );
    }
    c
}

fn config(with_echo2: bool) -> String {
    config_in(X, with_echo2)
}

/// `config(false)` with the echo service's port map broken.
fn bad_config() -> String {
    config(false).replace("ports: {80: 8080}", "ports: {80: \"http\"}")
}

/// `config check --waypoint`: a cluster waypoint's file, its own kinds only.
#[test]
fn config_check_takes_a_cluster_waypoints_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let l7 = dir.path().join("waypoint.yaml");
    std::fs::write(
        &l7,
        "virtualServices:
  - {name: r, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}
destinationRules:
  - {name: r, namespace: demo, host: reviews.demo.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}
",
    )?;
    let run = |args: &[&str], file: &std::path::Path| {
        Command::new(bin("ringmesh"))
            .args(["config", "check"])
            .args(args)
            .arg(file)
            .output()
    };
    let out = run(&["--waypoint"], &l7)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("1 routes, 1 destination rules"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --waypoint the same file names Services the file does not have.
    let out = run(&[], &l7)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("is no Service of the mesh"),
        "{stderr}"
    );
    // A node's file is not a cluster waypoint's.
    let node = dir.path().join("node.yaml");
    std::fs::write(&node, config(true))?;
    let out = run(&["--waypoint"], &node)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("the mesh comes from istiod"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn config_check_names_the_field_and_reason_of_a_bad_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, bad_config())?;
    let out = Command::new(bin("ringmesh"))
        .args(["config", "check"])
        .arg(&bad)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "config check accepted a bad file: {stderr}"
    );
    ensure!(
        stderr.contains("services[0].ports") && stderr.contains("\"http\" is not a port number"),
        "config check's message lacks the field path or reason: {stderr}"
    );
    ensure!(
        stderr.contains("bad.yaml"),
        "config check's message does not name the file: {stderr}"
    );

    let unknown_key = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown_key,
        config(false).replace(
            "    protocol: HBONE\n  - name: echo",
            "    protocl: HBONE\n  - name: echo",
        ),
    )?;
    let out = Command::new(bin("ringmesh"))
        .args(["config", "check"])
        .arg(&unknown_key)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "config check accepted an unknown key: {stderr}"
    );
    ensure!(
        stderr.contains("workloads[0]") && stderr.contains("protocl"),
        "unknown key message: {stderr}"
    );

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, config(true))?;
    let out = Command::new(bin("ringmesh"))
        .args(["config", "check"])
        .arg(&good)
        .output()?;
    ensure!(
        out.status.success(),
        "config check rejected a good file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "no ok from config check"
    );
    Ok(())
}

#[test]
fn running_node_rejects_bad_file_keeps_serving_and_picks_up_a_new_service() -> Result<()> {
    let (client, echo, echo2) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2));
    let (vip1, vip2) = (
        SocketAddr::new(ip4(X, 100, 1), 80),
        SocketAddr::new(ip4(X, 100, 2), 80),
    );
    let mesh = MeshDir::new(&config(false))?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    spawn_echo(SocketAddr::new(echo2, 9090))?;
    // Two cores each: every core must get the new snapshot (and node-2 bind the new
    // workload's listener on each).
    let watch = ["--watch-interval", "100ms", "--cores", "2"];
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &watch)?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &watch)?;

    let roundtrip = |target: SocketAddr, msg: &[u8]| -> Result<Vec<u8>> {
        echo_once(socks_connect(client, n1.socks(), target)?, msg)
    };
    ensure!(roundtrip(vip1, b"before")? == b"before");
    // Not in the mesh yet: passed through to an address nobody listens on, so it fails.
    ensure!(
        roundtrip(vip2, b"x").is_err(),
        "the second service answered before it was configured"
    );

    // A connection that lives across both reloads.
    let mut live = socks_connect(client, n1.socks(), vip1)?;
    live.write_all(b"ping-1")?;
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf)?;
    ensure!(&buf == b"ping-1");

    // A bad file: both nodes log the rejection with the field path and keep the old config.
    mesh.write_config(&bad_config())?;
    for node in [&n1, &n2] {
        wait_for(
            RELOAD,
            &format!("{} to reject the bad file", node.name),
            || {
                node.proc
                    .stderr()
                    .lines()
                    .any(|l| l.contains("config rejected") && l.contains("services[0].ports"))
            },
        )
        .map_err(|e| e.context(node.proc.stderr()))?;
    }
    ensure!(roundtrip(vip1, b"after the bad file")? == b"after the bad file");

    // A good file with a new workload and service: picked up without a restart.
    mesh.write_config(&config(true))?;
    let mut last = String::new();
    wait_for(RELOAD, "the new service to answer", || {
        match roundtrip(vip2, b"new service") {
            Ok(b) => b == b"new service",
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        }
    })
    .map_err(|e| {
        e.context(format!(
            "last error: {last}\nnode-1:\n{}\nnode-2:\n{}",
            n1.proc.stderr(),
            n2.proc.stderr()
        ))
    })?;
    // Connections land on either core (SO_REUSEPORT hashing): all of them see the new service.
    for i in 0..12 {
        let msg = format!("new service {i}");
        ensure!(
            roundtrip(vip2, msg.as_bytes())? == msg.as_bytes(),
            "connection {i} to the new service"
        );
    }
    ensure!(roundtrip(vip1, b"old service")? == b"old service");
    let new = n1.wait_access(RELOAD, "node-1 log of the new service", |l| {
        l.get("dst.service") == "echo2.test.svc.cluster.local" && l.outcome() == "complete"
    })?;
    ensure!(new.carrier() == "hbone", "{}", new.line);
    ensure!(
        new.get("dst.identity") == "spiffe://cluster.local/ns/test/sa/echo2",
        "{}",
        new.line
    );
    ensure!(
        new.get("dst.addr") == format!("{echo2}:15008")
            && new.get("dst.hbone_addr") == format!("{echo2}:9090"),
        "{}",
        new.line
    );
    let dump = n2.config_dump()?;
    let certs = dump["certificates"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    ensure!(
        certs == 2,
        "node-2 holds {certs} certificates after the reload: {dump}"
    );

    // The connection opened before both reloads still works.
    live.write_all(b"ping-2")?;
    live.read_exact(&mut buf)?;
    ensure!(
        &buf == b"ping-2",
        "the live connection broke across reloads"
    );
    Ok(())
}

#[test]
fn unknown_destination_is_passed_through() -> Result<()> {
    const Y: u8 = 211;
    let client = ip4(Y, 1, 1);
    let cfg = format!(
        "workloads:\n  - name: client\n    namespace: test\n    workloadIps: [\"{client}\"]\n    node: node-1\n    protocol: HBONE\n"
    );
    let mesh = MeshDir::new(&cfg)?;
    let outside = TcpListener::bind(SocketAddr::new(ip4(Y, 9, 9), 0))?;
    let target = outside.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let (mut s, peer) = outside.accept()?;
        let mut b = [0u8; 5];
        s.read_exact(&mut b)?;
        s.write_all(&b)?;
        Ok(peer)
    });
    let n1 = Node::start(&mesh, "node-1", ip4(Y, 0, 1), &[])?;
    let back = echo_once(socks_connect(client, n1.socks(), target)?, b"hello")?;
    ensure!(back == b"hello", "passthrough: got {back:?}");
    let peer = server.join().unwrap()?;
    ensure!(
        peer.ip() != client,
        "the passthrough connection came straight from the client"
    );
    let log = n1.wait_access(
        Duration::from_secs(5),
        "node-1 log of the passthrough",
        |l| l.get("dst.addr") == target.to_string(),
    )?;
    ensure!(
        log.carrier() == "passthrough"
            && log.get("dst.workload").is_empty()
            && log.get("dst.identity").is_empty(),
        "{}",
        log.line
    );
    ensure!(
        log.outcome() == "complete" && log.num("bytes_sent") == 5 && log.num("bytes_recv") == 5,
        "{}",
        log.line
    );
    Ok(())
}

#[test]
fn removed_workload_loses_its_listener_and_comes_back_when_re_added() -> Result<()> {
    const Y: u8 = 216;
    let (client, echo2) = (ip4(Y, 1, 1), ip4(Y, 2, 2));
    let vip2 = SocketAddr::new(ip4(Y, 100, 2), 80);
    let mesh = MeshDir::new(&config_in(Y, true))?;
    spawn_echo(SocketAddr::new(ip4(Y, 2, 1), 8080))?;
    spawn_echo(SocketAddr::new(echo2, 9090))?;
    let args = ["--watch-interval", "100ms", "--cores", "2"];
    let n1 = Node::start(&mesh, "node-1", ip4(Y, 0, 1), &args)?;
    let n2 = Node::start(&mesh, "node-2", ip4(Y, 0, 2), &args)?;
    let roundtrip = |msg: &[u8]| -> Result<Vec<u8>> {
        echo_once(socks_connect(client, n1.socks(), vip2)?, msg)
    };
    // The test's own tunnel straight to echo2's HBONE listener on node-2.
    let direct = || {
        hbone_request(
            &mesh.ca,
            &spiffe("test", "client"),
            &spiffe("test", "echo2"),
            SocketAddr::new(echo2, 15008),
            SocketAddr::new(echo2, 9090),
            b"direct",
        )
    };
    ensure!(roundtrip(b"first")? == b"first");
    ensure!(
        direct()?.is_ok_and(|b| b == b"direct"),
        "direct tunnel to echo2 before removal"
    );

    // Removed: the service is gone on node-1, the listener and certificate on node-2.
    mesh.write_config(&config_in(Y, false))?;
    wait_for(RELOAD, "echo2's service to stop answering", || {
        roundtrip(b"x").is_err()
    })?;
    wait_for(RELOAD, "echo2's HBONE listener to close", || {
        direct().is_ok_and(|r| r.is_err())
    })
    .map_err(|e| e.context(n2.proc.stderr()))?;
    wait_for(RELOAD, "node-2 to drop echo2's certificate", || {
        n2.config_dump()
            .is_ok_and(|d| d["certificates"].as_array().is_some_and(|c| c.len() == 1))
    })?;

    // Re-added: listeners bind again on every core, the service answers again.
    mesh.write_config(&config_in(Y, true))?;
    wait_for(RELOAD, "echo2's service to answer again", || {
        roundtrip(b"again").is_ok_and(|b| b == b"again")
    })
    .map_err(|e| {
        e.context(format!(
            "node-1:\n{}\nnode-2:\n{}",
            n1.proc.stderr(),
            n2.proc.stderr()
        ))
    })?;
    for i in 0..12 {
        let msg = format!("re-added {i}");
        ensure!(
            roundtrip(msg.as_bytes())? == msg.as_bytes(),
            "connection {i} after re-adding"
        );
        ensure!(
            direct()?.is_ok_and(|b| b == b"direct"),
            "direct tunnel {i} after re-adding"
        );
    }
    let errors: Vec<_> = n2
        .proc
        .stderr()
        .lines()
        .filter(|l| l.contains("could not bind"))
        .map(String::from)
        .collect();
    ensure!(errors.is_empty(), "node-2: {errors:?}");
    Ok(())
}

#[test]
fn ca_init_refuses_to_overwrite_and_keeps_the_key_private() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    let init = |force: bool| {
        let mut c = Command::new(bin("ringmesh"));
        c.args(["ca", "init", "--dir"]).arg(&ca);
        if force {
            c.arg("--force");
        }
        c.output()
    };
    let out = init(false)?;
    ensure!(
        out.status.success(),
        "ca init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = ca.join("root-key.pem");
    let mode = std::fs::metadata(&key)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "root key mode {mode:o}");
    let first = std::fs::read(&key)?;
    let again = init(false)?;
    ensure!(!again.status.success(), "ca init overwrote an existing CA");
    ensure!(
        std::fs::read(&key)? == first,
        "the refused init changed the key"
    );
    let forced = init(true)?;
    ensure!(
        forced.status.success(),
        "ca init --force: {}",
        String::from_utf8_lossy(&forced.stderr)
    );
    ensure!(std::fs::read(&key)? != first, "--force kept the old key");
    Ok(())
}

#[test]
fn run_refuses_to_start_on_a_bad_config_or_missing_ca() -> Result<()> {
    let mesh = MeshDir::new(&bad_config())?;
    // Each attempt must exit on its own; one that starts anyway is killed (Proc) and fails.
    let run = |config: &std::path::Path, ca: &std::path::Path| -> Result<(Option<i32>, String)> {
        let (config, ca) = (
            config.to_string_lossy().into_owned(),
            ca.to_string_lossy().into_owned(),
        );
        let args = [
            "run",
            "--node",
            "node-1",
            "--capture",
            "none",
            "--socks5",
            "none",
            "--admin",
            "none",
            "--metrics",
            "none",
            "--ready",
            "none",
            "--cores",
            "1",
            "--config",
            &config,
            "--ca-dir",
            &ca,
        ];
        let mut p = e2e::Proc::spawn(&bin("ringmesh"), &args)?;
        let code = p.wait_exit(Duration::from_secs(10))?;
        // The stderr reader thread may trail the exit; its last line is the error.
        let _ = wait_for(
            Duration::from_secs(5),
            "the start-up error on stderr",
            || p.stderr().contains("error"),
        );
        Ok((code, p.stderr()))
    };
    let (code, stderr) = run(&mesh.config, &mesh.ca)?;
    ensure!(
        code.is_some_and(|c| c != 0),
        "ran with a bad config: {code:?}"
    );
    ensure!(
        stderr.contains("services[0].ports"),
        "start-up error lacks the field path: {stderr}"
    );

    mesh.write_config(&config_in(218, false))?;
    let missing = mesh.dir.path().join("no-such-ca");
    let (code, stderr) = run(&mesh.config, &missing)?;
    ensure!(code.is_some_and(|c| c != 0), "ran without a CA: {code:?}");
    ensure!(
        stderr.contains("no-such-ca"),
        "start-up error does not name the CA directory: {stderr}"
    );
    Ok(())
}

#[test]
fn deleted_config_file_keeps_the_old_snapshot_until_a_new_one_appears() -> Result<()> {
    const Y: u8 = 217;
    let client = ip4(Y, 1, 1);
    let (vip1, vip2) = (
        SocketAddr::new(ip4(Y, 100, 1), 80),
        SocketAddr::new(ip4(Y, 100, 2), 80),
    );
    let mesh = MeshDir::new(&config_in(Y, false))?;
    spawn_echo(SocketAddr::new(ip4(Y, 2, 1), 8080))?;
    spawn_echo(SocketAddr::new(ip4(Y, 2, 2), 9090))?;
    let watch = ["--watch-interval", "100ms"];
    let n1 = Node::start(&mesh, "node-1", ip4(Y, 0, 1), &watch)?;
    let _n2 = Node::start(&mesh, "node-2", ip4(Y, 0, 2), &watch)?;
    let roundtrip = |target: SocketAddr, msg: &[u8]| -> Result<Vec<u8>> {
        echo_once(socks_connect(client, n1.socks(), target)?, msg)
    };
    ensure!(roundtrip(vip1, b"before")? == b"before");
    std::fs::remove_file(&mesh.config)?;
    wait_for(RELOAD, "node-1 to log the missing file", || {
        n1.proc
            .stderr()
            .lines()
            // The watcher names the file it cannot read and keeps the config it has.
            .any(|l| {
                l.contains("config unreadable; the previous config keeps serving")
                    && l.contains("mesh.yaml")
                    && l.contains("No such file")
            })
    })
    .map_err(|e| e.context(n1.proc.stderr()))?;
    ensure!(
        roundtrip(vip1, b"file gone")? == b"file gone",
        "stopped serving without its file"
    );
    mesh.write_config(&config_in(Y, true))?;
    wait_for(RELOAD, "the new file's service", || {
        roundtrip(vip2, b"new").is_ok_and(|b| b == b"new")
    })
    .map_err(|e| e.context(n1.proc.stderr()))?;
    Ok(())
}
