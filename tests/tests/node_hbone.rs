//! Inbound HBONE (15008) answered to a peer the test plays itself: a CONNECT is relayed
//! (200) only for the IP the tunnel arrived on, to a pod port that accepts, from a peer the
//! policies allow; otherwise the status says why (400, 503, 401), and the node logs it.
//! The client side checks the server's identity: expecting another one fails the handshake.
//!
//! Address plan: 127.225.0.0/16; node-2 on 127.225.0.2 with workloads echo (.2.1) and
//! echo2 (.2.2).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use e2e::{MeshDir, Node, hbone_request, ip4, spawn_echo, spiffe};

const X: u8 = 225;

fn status(r: &std::result::Result<Vec<u8>, hbone::Error>) -> Result<u16> {
    match r {
        Ok(_) => Ok(200),
        Err(e @ hbone::Error::Rejected { .. }) => Ok(e.status().code()),
        Err(e) => bail!("expected an HBONE response, got {e}"),
    }
}

#[test]
fn inbound_hbone_answers_400_503_401_and_relays_only_what_is_allowed() -> Result<()> {
    let (echo, echo2) = (ip4(X, 2, 1), ip4(X, 2, 2));
    let config = format!(
        r#"workloads:
  - name: echo
    namespace: test
    serviceAccount: echo
    workloadIps: ["{echo}"]
    node: node-2
    protocol: HBONE
  - name: echo2
    namespace: test
    serviceAccount: echo2
    workloadIps: ["{echo2}"]
    node: node-2
    protocol: HBONE
policies:
  - name: no-denied
    action: Deny
    from:
      - principals: ["cluster.local/ns/test/sa/denied"]
"#
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    spawn_echo(SocketAddr::new(echo2, 8080))?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &[])?;

    let hbone = SocketAddr::new(echo, 15008);
    let (client, denied, server) = (
        spiffe("test", "client"),
        spiffe("test", "denied"),
        spiffe("test", "echo"),
    );
    let request = |from: &hbone::Identity, authority: SocketAddr| {
        hbone_request(
            &mesh.ca,
            from,
            &server,
            hbone,
            authority,
            b"through the tunnel",
        )
    };

    // Allowed: relayed to the pod and back.
    let ok = request(&client, SocketAddr::new(echo, 8080))?;
    ensure!(
        ok.as_ref().is_ok_and(|b| b == b"through the tunnel"),
        "allowed CONNECT: {ok:?}"
    );

    // Authority IP is not the IP the tunnel arrived on: a local workload's, and one outside the mesh.
    for other in [echo2, ip4(X, 9, 9)] {
        let r = request(&client, SocketAddr::new(other, 8080))?;
        ensure!(
            status(&r).map_err(|e| e.context(n2.proc.stderr()))? == 400,
            "CONNECT {other}:8080 on {hbone}: {r:?}"
        );
    }
    // The right IP, a port nobody listens on.
    let r = request(&client, SocketAddr::new(echo, 8081))?;
    ensure!(status(&r)? == 503, "CONNECT to a closed pod port: {r:?}");
    // A principal a Deny policy names.
    let r = request(&denied, SocketAddr::new(echo, 8080))?;
    ensure!(status(&r)? == 401, "CONNECT from a denied principal: {r:?}");

    // The node logs each refusal with its outcome and the peer's verified identity. The
    // malformed CONNECTs were refused before they were opened (`connection failed`, the error
    // names the authority); the others were opened and ended with an error.
    let wait = Duration::from_secs(5);
    let bad = n2.wait_access(wait, "a bad_request log", |l| {
        l.outcome() == "bad_request" && l.get("error").contains(&format!("{echo2}"))
    })?;
    ensure!(
        !bad.complete() && bad.get("dst.addr") == hbone.to_string() && bad.level == "warn",
        "{}",
        bad.line
    );
    let unreachable = n2.wait_access(wait, "an unreachable log", |l| {
        l.outcome() == "unreachable" && l.get("dst.hbone_addr") == format!("{echo}:8081")
    })?;
    ensure!(
        unreachable.complete()
            && unreachable.level == "error"
            && unreachable.get("src.identity") == client.to_string()
            && unreachable.get("dst.addr") == hbone.to_string(),
        "{}",
        unreachable.line
    );
    let d = n2.wait_access(wait, "a denied log", |l| l.outcome() == "denied")?;
    ensure!(
        d.get("src.identity") == denied.to_string()
            && d.get("dst.hbone_addr") == format!("{echo}:8080"),
        "{}",
        d.line
    );
    // Istio's counters: the opened connections closed with their flags (the relayed one with
    // none, the denied one DENY, the unreachable one CONNECT); the two malformed ones were
    // never opened, so only ringmesh's refusal counter has them.
    let m = n2.metrics()?;
    for (flags, want) in [("-", 1.0), ("DENY", 1.0), ("CONNECT", 1.0)] {
        let label = format!("response_flags=\"{flags}\"");
        let n = e2e::metric_sum(
            &m,
            "istio_tcp_connections_closed_total",
            &["reporter=\"destination\"", &label],
        );
        ensure!(
            n == want,
            "{n} inbound closes with {label} in the metrics, expected {want}:\n{m}"
        );
    }
    let opened = e2e::metric_sum(&m, "istio_tcp_connections_opened_total", &[]);
    let failed = e2e::metric_sum(&m, "istio_tcp_connections_failed_total", &[]);
    let refused = e2e::metric_sum(
        &m,
        "ringmesh_connections_refused_total",
        &["reason=\"bad_request\""],
    );
    ensure!(
        opened == 3.0 && failed == 2.0 && refused == 2.0,
        "opened {opened}, failed {failed}, refused as bad requests {refused}:\n{m}"
    );

    // The client verifies the server: expecting echo2's identity from echo's listener fails
    // the TLS handshake before any CONNECT.
    let wrong = hbone_request(
        &mesh.ca,
        &client,
        &spiffe("test", "echo2"),
        hbone,
        SocketAddr::new(echo, 8080),
        b"x",
    )?;
    match wrong {
        Err(e) => ensure!(
            format!("{e}").contains("peer identity mismatch"),
            "wrong server identity failed, but not on the identity check: {e}"
        ),
        Ok(_) => bail!("connected to a server presenting an identity the client did not expect"),
    }
    Ok(())
}

#[test]
fn inbound_authorization_follows_allow_and_deny_policies() -> Result<()> {
    const Y: u8 = 227;
    let (web, admin) = (ip4(Y, 2, 1), ip4(Y, 2, 2));
    let config = format!(
        r#"workloads:
  - {{name: web, namespace: app, serviceAccount: web, workloadIps: ["{web}"], node: node-2, protocol: HBONE, services: ["app/web.app.svc.cluster.local"]}}
  - {{name: admin, namespace: app, serviceAccount: admin, workloadIps: ["{admin}"], node: node-2, protocol: HBONE}}
services:
  - {{name: web, namespace: app, hostname: web.app.svc.cluster.local, vips: ["{vip}"], ports: {{80: 8080}}}}
policies:
  - name: web-from-front
    action: Allow
    destination: {{services: ["app/web.app.svc.cluster.local"]}}
    from:
      - namespaces: ["front"]
    ports: [8080]
  - name: no-legacy
    action: Deny
    from:
      - principals: ["cluster.local/ns/front/sa/legacy*"]
"#,
        vip = ip4(Y, 100, 1)
    );
    let mesh = MeshDir::new(&config)?;
    for addr in [
        SocketAddr::new(web, 8080),
        SocketAddr::new(web, 9090),
        SocketAddr::new(admin, 8080),
    ] {
        spawn_echo(addr)?;
    }
    let n2 = Node::start(&mesh, "node-2", ip4(Y, 0, 2), &[])?;
    let cases = [
        (
            ("front", "client"),
            (web, 8080, "web"),
            200,
            "allowed namespace and port",
        ),
        (
            ("other", "client"),
            (web, 8080, "web"),
            401,
            "namespace no Allow policy names",
        ),
        (
            ("front", "client"),
            (web, 9090, "web"),
            401,
            "port the Allow policy does not list",
        ),
        (
            ("front", "legacy-1"),
            (web, 8080, "web"),
            401,
            "principal a Deny policy matches by prefix",
        ),
        (
            ("other", "client"),
            (admin, 8080, "admin"),
            200,
            "workload no Allow policy protects",
        ),
        (
            ("front", "legacy-2"),
            (admin, 8080, "admin"),
            401,
            "Deny applies to every workload",
        ),
    ];
    for ((ns, sa), (ip, port, server), want, what) in cases {
        let r = hbone_request(
            &mesh.ca,
            &spiffe(ns, sa),
            &spiffe("app", server),
            SocketAddr::new(ip, 15008),
            SocketAddr::new(ip, port),
            b"authz",
        )?;
        let got = status(&r).map_err(|e| {
            e.context(format!(
                "{what}: {ns}/{sa} → {ip}:{port}\nnode-2:\n{}",
                n2.proc.stderr()
            ))
        })?;
        ensure!(
            got == want,
            "{what}: {ns}/{sa} → {ip}:{port} answered {got}, expected {want}: {r:?}"
        );
        if want == 200 {
            ensure!(
                r.as_ref().is_ok_and(|b| b == b"authz"),
                "{what}: relayed {r:?}"
            );
        }
    }
    // Logged when each request ends, which may be just after the client saw its answer.
    let denied = || {
        n2.access_logs()
            .into_iter()
            .filter(|l| l.outcome() == "denied")
            .count()
    };
    e2e::wait_for(Duration::from_secs(5), "4 denials in node-2's log", || {
        denied() >= 4
    })?;
    ensure!(
        denied() == 4,
        "node-2 logged {} denials, expected 4",
        denied()
    );
    Ok(())
}

#[test]
fn outbound_refuses_a_server_presenting_another_identity() -> Result<()> {
    // node-1 believes the workload at .2.1 is test/echo; node-2 serves it as test/impostor
    // (and holds only the impostor's certificate). node-1 must refuse the tunnel.
    const Y: u8 = 228;
    let (client, echo) = (ip4(Y, 1, 1), ip4(Y, 2, 1));
    let config = |sa: &str| {
        format!(
            "workloads:\n  - {{name: client, namespace: test, serviceAccount: client, workloadIps: [\"{client}\"], node: node-1, protocol: HBONE}}\n  - {{name: echo, namespace: test, serviceAccount: {sa}, workloadIps: [\"{echo}\"], node: node-2, protocol: HBONE}}\n"
        )
    };
    let mesh = MeshDir::new(&config("echo"))?;
    let impostor = mesh.dir.path().join("impostor.yaml");
    std::fs::write(&impostor, config("impostor"))?;
    let accepted = spawn_echo(SocketAddr::new(echo, 8080))?;
    let n1 = Node::start(&mesh, "node-1", ip4(Y, 0, 1), &[])?;
    let _n2 = Node::start_with_config(&mesh, &impostor, "node-2", ip4(Y, 0, 2), &[])?;
    let code = e2e::socks_reply_code(client, n1.socks(), SocketAddr::new(echo, 8080))?;
    ensure!(
        code != 0,
        "node-1 connected to a server presenting the wrong identity"
    );
    let log = n1.wait_access(Duration::from_secs(5), "node-1's log of the refusal", |l| {
        l.get("dst.hbone_addr") == format!("{echo}:8080")
    })?;
    ensure!(
        log.outcome() == "tls" && log.level == "error",
        "{}",
        log.line
    );
    ensure!(
        log.line.contains("impostor"),
        "the refusal does not name the identity presented: {}",
        log.line
    );
    ensure!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) == 0,
        "the pod got a connection"
    );
    Ok(())
}
