//! Inbound: HBONE on 15008 and plaintext on 15006, one listener per local workload IP
//! (what ztunnel does in the pod's network namespace, and what lets several nodes share one
//! host on loopback).
//!
//! HBONE: the TLS handshake presents the listening workload's certificate and requires a
//! client certificate in our trust domain; each CONNECT is checked (authority IP = the IP it
//! arrived on, 400 otherwise; a local workload, 503 otherwise), authorized with the peer's
//! SPIFFE identity (401), and answered 200 only after the dial to the pod succeeded (503 if
//! it did not).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hbone::server::{Incoming, Served, ServerConfig};
use hbone::stream::RelayMeter;
use hbone::wire::Status;
use runtime::Worker;
use runtime::net::TcpStream;
use runtime::relay::{Progress, RelayOptions, relay_metered};

use super::core::{Core, CoreMsg, LiveGuard};
use crate::config::Decision;
use crate::metrics::{Direction, Outcome, Proto};

/// Deadline for dialing the local pod.
const POD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one TCP connection that arrived on `local_ip`:15008.
pub async fn serve_hbone(
    core: Rc<Core>,
    worker: Worker<CoreMsg>,
    client: TcpStream,
    peer: SocketAddr,
    local_ip: IpAddr,
) {
    let snapshot = core.snapshot();
    let Some(workload) = snapshot.local_workload_by_ip(local_ip).cloned() else {
        tracing::warn!(%peer, %local_ip, "HBONE: connection to an IP that is no local workload; closing");
        return;
    };
    let tls = match core.server_tls(&workload.identity) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%peer, identity = %workload.identity, error = %e, "HBONE: no server certificate; closing");
            return;
        }
    };
    let cfg = ServerConfig::new(tls);
    let drain = {
        let w = worker.clone();
        async move { w.shutdown().draining().await }
    };
    let handler = move |incoming: Incoming| {
        let core = core.clone();
        async move { handle_connect(core, incoming, peer, local_ip).await }
    };
    if let Err(e) = hbone::server::serve_tls(client, &cfg, drain, handler).await {
        tracing::debug!(%peer, %local_ip, error = %e, "HBONE connection ended with an error");
    }
}

async fn handle_connect(core: Rc<Core>, incoming: Incoming, peer: SocketAddr, local_ip: IpAddr) {
    let started = Instant::now();
    let peer_id = incoming.peer_identity().clone();
    let authority = incoming.request().authority.clone();
    let source = incoming
        .request()
        .forwarded
        .as_ref()
        .and_then(|f| f.client_addr());
    let snapshot = core.snapshot();
    core.metrics.conn_opened(Direction::Inbound, Proto::Hbone);
    let log = |outcome: Outcome, sent: u64, received: u64, detail: &str| {
        tracing::info!(
            target: "ringmesh::access",
            direction = "inbound",
            peer = %peer,
            src = %source.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            dst = %authority,
            src_identity = %peer_id,
            protocol = "hbone",
            outcome = outcome.label(),
            sent,
            received,
            duration_ms = started.elapsed().as_millis() as u64,
            detail,
            "connection closed"
        );
    };
    let reject = |incoming: Incoming, status: Status, outcome: Outcome, detail: String| {
        let _ = incoming.reject(status);
        core.metrics
            .conn_closed(Direction::Inbound, Proto::Hbone, outcome, 0, 0);
        log(outcome, 0, 0, &detail);
    };
    let Some(target) = authority.socket_addr() else {
        return reject(
            incoming,
            Status::BadRequest,
            Outcome::BadRequest,
            format!("authority {authority} is not ip:port"),
        );
    };
    if target.ip() != local_ip {
        return reject(
            incoming,
            Status::BadRequest,
            Outcome::BadRequest,
            format!(
                "authority IP {} is not the IP the tunnel arrived on ({local_ip})",
                target.ip()
            ),
        );
    }
    let Some(workload) = snapshot.local_workload_by_ip(target.ip()).cloned() else {
        return reject(
            incoming,
            Status::ServiceUnavailable,
            Outcome::NoEndpoint,
            format!("{} is no local workload", target.ip()),
        );
    };
    if let Decision::Deny(reason) = snapshot.decide(Some(&peer_id), &workload, target.port()) {
        return reject(
            incoming,
            Status::Unauthorized,
            Outcome::Denied,
            format!("denied: {reason:?}"),
        );
    }
    let dial = async {
        match runtime::time::timeout(POD_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "inbound dial failed");
                Err(Status::ServiceUnavailable)
            }
            Err(_) => Err(Status::ServiceUnavailable),
        }
    };
    // Until it ends, a policy change that denies this peer closes the tunnel (dropping the
    // relay resets the stream and closes the pod socket).
    let live = core.track_inbound(Some(peer_id.clone()), target);
    let meter = RelayMeter::default();
    let served = until_revoked(&live, incoming.serve_metered(dial, &meter)).await;
    let (outcome, sent, received, detail) = match served {
        Some(Served::Relayed(s)) => (Outcome::Ok, s.from_tunnel, s.to_tunnel, String::new()),
        Some(Served::Rejected(status)) => (
            Outcome::Unreachable,
            0,
            0,
            format!("pod {target} unreachable ({status})"),
        ),
        Some(Served::RelayFailed(s, e)) => {
            (Outcome::Reset, s.from_tunnel, s.to_tunnel, e.to_string())
        }
        None => {
            let s = meter.stats();
            let detail = "denied by a policy change while open".to_string();
            (Outcome::Denied, s.from_tunnel, s.to_tunnel, detail)
        }
    };
    core.metrics
        .conn_closed(Direction::Inbound, Proto::Hbone, outcome, sent, received);
    log(outcome, sent, received, &detail);
}

/// Serves one plaintext connection that arrived on `local_ip`:15006 from a source outside
/// the mesh (or redirected to us): authorized with no identity, then relayed by splice.
pub async fn serve_plaintext(
    core: Rc<Core>,
    client: TcpStream,
    peer: SocketAddr,
    local_ip: IpAddr,
) {
    let started = Instant::now();
    let target = match client.original_dst() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%peer, %local_ip, error = %e, "plaintext inbound: no original destination (not redirected); resetting");
            let _ = client.set_zero_linger();
            return;
        }
    };
    let snapshot = core.snapshot();
    let Some(workload) = snapshot.local_workload_by_ip(target.ip()).cloned() else {
        tracing::warn!(%peer, %target, "plaintext inbound: destination is no local workload; resetting");
        let _ = client.set_zero_linger();
        return;
    };
    core.metrics.conn_opened(Direction::Inbound, Proto::Tcp);
    let (outcome, sent, received, detail) =
        if let Decision::Deny(reason) = snapshot.decide(None, &workload, target.port()) {
            let _ = client.set_zero_linger();
            (Outcome::Denied, 0, 0, format!("denied: {reason:?}"))
        } else {
            match runtime::time::timeout(POD_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(pod)) => {
                    let live = core.track_inbound(None, target);
                    let (meter, opts) = (Progress::new(), RelayOptions::default());
                    let relay = relay_metered(client, pod, &opts, &meter);
                    match until_revoked(&live, relay).await {
                        Some(Ok(s)) => (Outcome::Ok, s.b_to_a, s.a_to_b, String::new()),
                        Some(Err(e)) => (
                            Outcome::Reset,
                            e.stats().b_to_a,
                            e.stats().a_to_b,
                            e.to_string(),
                        ),
                        None => {
                            let s = meter.stats();
                            let detail = "denied by a policy change while open".into();
                            (Outcome::Denied, s.b_to_a, s.a_to_b, detail)
                        }
                    }
                }
                _ => {
                    let _ = client.set_zero_linger();
                    (
                        Outcome::Unreachable,
                        0,
                        0,
                        format!("pod {target} unreachable"),
                    )
                }
            }
        };
    core.metrics
        .conn_closed(Direction::Inbound, Proto::Tcp, outcome, sent, received);
    tracing::info!(
        target: "ringmesh::access",
        direction = "inbound",
        src = %peer,
        dst = %target,
        dst_identity = %workload.identity,
        protocol = "tcp",
        outcome = outcome.label(),
        sent,
        received,
        duration_ms = started.elapsed().as_millis() as u64,
        detail,
        "connection closed"
    );
}

/// Runs `work` unless `live` is revoked first (then `work` is dropped: `None`).
async fn until_revoked<T>(live: &LiveGuard, work: impl Future<Output = T>) -> Option<T> {
    let mut work = std::pin::pin!(work);
    let mut revoked = std::pin::pin!(live.revoked());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if revoked.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}
