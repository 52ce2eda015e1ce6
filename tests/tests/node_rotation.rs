//! Certificate rotation end to end: nodes started with 6 s workload certificates renew them
//! at half-life (seen in `/config_dump`), the pooled HBONE connection made with the old
//! certificate is retired, a connection opened before the renewal keeps working through it
//! and past the first certificate's expiry, and new TLS handshakes after
//! that expiry succeed — which they could not if either node still presented the expired
//! certificate (both sides verify validity).
//!
//! Address plan: 127.220.0.0/16; client on node-1, echo (.2.1) and echo-b (.2.2) on node-2.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use e2e::{
    MeshDir, Node, echo_once, hbone_request, ip4, ping, socks_connect, spawn_echo, spiffe, wait_for,
};

const X: u8 = 220;
// Short enough for a quick test, long enough that half-life renewal (3 s) survives a loaded
// CI machine delaying a thread by a second or two.
const LIFETIME: &str = "6s";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// (not_before, not_after) in Unix seconds of `identity`'s certificate in the node's dump.
fn validity(node: &Node, identity: &str) -> Result<(u64, u64)> {
    let dump = node.config_dump()?;
    let cert = dump["certificates"]
        .as_array()
        .and_then(|certs| certs.iter().find(|c| c["identity"] == identity))
        .with_context(|| format!("{}: no certificate for {identity} in {dump}", node.name))?;
    // The leaf is the chain's first entry; its validity is RFC 3339, as istioctl reads it.
    let leaf = &cert["certChain"][0];
    let secs = |k: &str| -> Result<u64> {
        let text = leaf[k].as_str().with_context(|| format!("{k} in {cert}"))?;
        Ok(u64::try_from(e2e::rfc3339_unix(text)?)?)
    };
    Ok((secs("validFrom")?, secs("expirationTime")?))
}

/// Waits until `identity`'s certificate on `node` is replaced; returns the new not_after
/// and the time (Unix seconds) the replacement was seen.
fn wait_renewed(node: &Node, identity: &str, first_not_after: u64) -> Result<(u64, u64)> {
    let mut renewed = None;
    wait_for(
        Duration::from_secs(10),
        &format!("{} to renew {identity}", node.name),
        || match validity(node, identity) {
            Ok((_, after)) if after != first_not_after => {
                renewed = Some((after, now_secs()));
                true
            }
            _ => false,
        },
    )
    .map_err(|e| e.context(node.proc.stderr()))?;
    Ok(renewed.unwrap())
}

#[test]
fn nodes_renew_short_certificates_before_expiry_and_new_handshakes_use_them() -> Result<()> {
    let (client, echo, echo_b) = (ip4(X, 1, 1), ip4(X, 2, 1), ip4(X, 2, 2));
    let wl = |name: &str, ip, node: &str| {
        format!(
            "  - name: {name}\n    namespace: test\n    serviceAccount: {name}\n    workloadIps: [\"{ip}\"]\n    node: {node}\n    protocol: HBONE\n"
        )
    };
    let config = format!(
        "workloads:\n{}{}{}",
        wl("client", client, "node-1"),
        wl("echo", echo, "node-2"),
        wl("echo-b", echo_b, "node-2")
    );
    let mesh = MeshDir::new(&config)?;
    spawn_echo(SocketAddr::new(echo, 8080))?;
    spawn_echo(SocketAddr::new(echo_b, 8080))?;
    let args = ["--cert-lifetime", LIFETIME];
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &args)?;
    let n2 = Node::start(&mesh, "node-2", ip4(X, 0, 2), &args)?;

    let (client_id, echo_id, echo_b_id) = (
        spiffe("test", "client").to_string(),
        spiffe("test", "echo").to_string(),
        spiffe("test", "echo-b").to_string(),
    );
    let (before, client_after) = validity(&n1, &client_id)?;
    ensure!(
        client_after > before,
        "not_after {client_after} ≤ not_before {before}"
    );
    ensure!(
        client_after <= now_secs() + 7,
        "the client certificate lives until {client_after}, now is {}: --cert-lifetime {LIFETIME} ignored?",
        now_secs()
    );
    let (_, echo_after) = validity(&n2, &echo_id)?;
    let (_, echo_b_after) = validity(&n2, &echo_b_id)?;

    // Opened with the first certificates.
    let mut live = socks_connect(client, n1.socks(), SocketAddr::new(echo, 8080))?;
    ping(&mut live, b"before renewal")?;

    // Renewed at half-life: seen while the first certificate is still valid.
    for (node, id, first) in [(&n1, &client_id, client_after), (&n2, &echo_id, echo_after)] {
        let (after, seen_at) = wait_renewed(node, id, first)?;
        ensure!(
            after > first,
            "{}: {id} renewed to not_after {after}, was {first}",
            node.name
        );
        ensure!(
            seen_at < first,
            "{}: {id} renewed at {seen_at}, not before the old not_after {first}",
            node.name
        );
    }
    ping(&mut live, b"after renewal")?;
    // node-1's pooled connection to echo was made with the first client certificate: the
    // renewal retired it (no new streams on it), while `live` keeps running on it.
    wait_for(
        Duration::from_secs(5),
        "node-1 to retire the pooled connection made with the old certificate",
        || {
            n1.proc
                .stderr()
                .contains("pooled HBONE connections retired")
        },
    )?;

    // Past the first certificates' expiry (not_after has 1 s resolution).
    let expired = client_after.max(echo_after).max(echo_b_after) + 1;
    wait_for(
        Duration::from_secs(10),
        "the first certificates to expire",
        || now_secs() > expired,
    )?;
    ping(&mut live, b"after the first certificate expired")?;

    // A destination node-1 has no pooled connection to: a fresh mTLS handshake, in which
    // node-2 rejects an expired client certificate and node-1 an expired server one.
    let back = echo_once(
        socks_connect(client, n1.socks(), SocketAddr::new(echo_b, 8080))?,
        b"fresh handshake",
    )
    .map_err(|e| {
        e.context(format!(
            "node-1:\n{}\nnode-2:\n{}",
            n1.proc.stderr(),
            n2.proc.stderr()
        ))
    })?;
    ensure!(back == b"fresh handshake", "got {back:?}");
    // The test's own handshake to echo's listener: node-2 presents a valid certificate.
    let direct = hbone_request(
        &mesh.ca,
        &spiffe("test", "client"),
        &spiffe("test", "echo"),
        SocketAddr::new(echo, 15008),
        SocketAddr::new(echo, 8080),
        b"direct",
    )?;
    ensure!(
        direct.as_ref().is_ok_and(|b| b == b"direct"),
        "direct HBONE after expiry (now {}): {direct:?}\nnode-2:\n{}",
        now_secs(),
        n2.proc.stderr()
    );
    // Another connection to echo: a new pooled connection, made with the renewed
    // certificates (the first one was retired at the renewal).
    let back = echo_once(
        socks_connect(client, n1.socks(), SocketAddr::new(echo, 8080))?,
        b"again",
    )?;
    ensure!(back == b"again", "got {back:?}");
    ping(&mut live, b"still alive")?;
    Ok(())
}
