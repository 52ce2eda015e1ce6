//! Inbound: HBONE on 15008 and plaintext on 15006, one listener per local workload IP
//! (what ztunnel does in the pod's network namespace, and what lets several nodes share one
//! host on loopback).
//!
//! HBONE: the connection is admitted (node memory, this worker's share, the peer's share);
//! the TLS handshake presents the listening workload's certificate and requires a client
//! certificate in our trust domain, within its deadline, and so do the HTTP/2 preface and
//! SETTINGS; each CONNECT is checked (authority IP = the IP it arrived on, 400 otherwise;
//! not one of the node's own listeners and a local workload, 503 otherwise), authorized with
//! the peer's SPIFFE identity (401), and answered 200 only after the dial to the pod
//! succeeded (503 if it did not). Handshake failures and refusals are counted and logged at
//! WARN, rate-limited (`crate::telemetry::ratelimit`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use futures_util::future::Either;
use hbone::h2conn::H2Settings;
use hbone::server::{Incoming, Served, ServerConfig};
use hbone::stream::Originator;
use hbone::wire::Status;
use runtime::Worker;
use runtime::net::TcpStream;
use runtime::relay::{RelayOptions, relay_metered};

use runtime::net::Placement;

use super::core::{Core, CoreMsg};
use super::outbound::{tcp_relay_outcome, tunnel_relay_outcome};
use crate::config::{Decision, Request};
use crate::conn::{ConnRecord, Grant, Outcome};
use crate::telemetry::ratelimit::LineKind;
use crate::telemetry::{Carrier, Refusal, Reporter, Security};

/// Serves one TCP connection that arrived on `local_ip`:15008. Upstream sockets are made
/// where `place` says (in in-pod mode, in the destination pod's namespace).
pub async fn serve_hbone(
    core: Rc<Core>,
    worker: Worker<CoreMsg>,
    client: TcpStream,
    peer: SocketAddr,
    local_ip: IpAddr,
    place: Placement,
) {
    let _socket = core.conns.socket(Reporter::Destination);
    let _admitted = match core.admit(Some(peer.ip())) {
        Ok(a) => a,
        Err((why, detail)) => {
            let _ = client.set_zero_linger();
            core.conns.refused(why, LineKind::Overload, |suppressed| {
                tracing::warn!(%peer, %local_ip, suppressed, "HBONE connection refused: {detail}")
            });
            return;
        }
    };
    let snapshot = core.snapshot();
    let workload = snapshot.local_workload_by_ip(local_ip).cloned();
    let tls = workload
        .as_ref()
        .ok_or_else(|| format!("{local_ip} is no local workload"))
        .and_then(|w| core.server_tls(&w.identity).map_err(|e| e.to_string()));
    let tls = match tls {
        Ok(t) => t,
        Err(detail) => {
            let _ = client.set_zero_linger();
            core.conns
                .refused(Refusal::NotServed, LineKind::Refused, |suppressed| {
                    tracing::warn!(%peer, %local_ip, suppressed, "HBONE connection refused: {detail}")
                });
            return;
        }
    };
    // The connection may outlive many snapshots; it must not pin this one.
    drop((snapshot, workload));
    let limits = core.limits();
    let cfg = ServerConfig {
        tls,
        h2: H2Settings {
            handshake_timeout: limits.h2_handshake_timeout,
            idle_timeout: Some(limits.h2_idle_timeout),
            ..H2Settings::default()
        },
        tls_handshake_timeout: limits.tls_handshake_timeout,
    };
    let drain = {
        let w = worker.clone();
        async move { w.shutdown().draining().await }
    };
    let handler = {
        let core = core.clone();
        move |incoming: Incoming| {
            handle_connect(core.clone(), incoming, peer, local_ip, place.clone())
        }
    };
    if let Err(e) = hbone::server::serve_tls(client, &cfg, drain, handler).await {
        report_connection_error(&core, peer, local_ip, &e);
    }
}

/// Counts and logs (rate-limited, at WARN) an HBONE connection a peer got wrong.
fn report_connection_error(core: &Core, peer: SocketAddr, local_ip: IpAddr, e: &hbone::Error) {
    use hbone::Error as E;
    let (why, kind, what) = match e {
        E::Tls(_) | E::NoH2Alpn(_) | E::NoIdentity { .. } | E::WrongTrustDomain { .. } => {
            (Refusal::Tls, LineKind::Handshake, "TLS handshake failed")
        }
        E::Timeout { what, .. } if what.contains("TLS") || what.contains("preface") => (
            Refusal::HandshakeTimeout,
            LineKind::Handshake,
            "handshake timed out",
        ),
        E::Flood(_) => (
            Refusal::Flood,
            LineKind::Protocol,
            "peer flooded control frames",
        ),
        // A peer that goes away, a PING timeout, a protocol error after streams ran: the
        // connection had its chance; nothing to refuse.
        _ => {
            tracing::debug!(%peer, %local_ip, error = %e, "HBONE connection ended with an error");
            return;
        }
    };
    core.conns.refused(
        why,
        kind,
        |suppressed| tracing::warn!(%peer, %local_ip, error = %e, suppressed, "HBONE: {what}"),
    );
}

/// Serves one CONNECT: decided synchronously ([`admit_connect`]), then the dial and the relay.
///
/// Not an `async fn`: an `async fn` keeps a second copy of every argument it moves into its
/// body (the request, the record) for the stream's whole life. The returned block uses what
/// it captures in place (docs/design-notes.md, "Memory per held connection").
fn handle_connect(
    core: Rc<Core>,
    incoming: Incoming,
    peer: SocketAddr,
    local_ip: IpAddr,
    place: Placement,
) -> impl Future<Output = ()> + 'static {
    match admit_connect(&core, incoming, peer, local_ip) {
        None => Either::Left(std::future::ready(())),
        Some((rec, incoming, src, target)) => {
            Either::Right(relay_connect(core, rec, incoming, src, target, place))
        }
    }
}

/// Everything decided before the dial: the request checked, the record opened, policy
/// applied. `None` once the stream was answered (and its record ended).
fn admit_connect(
    core: &Core,
    incoming: Incoming,
    peer: SocketAddr,
    local_ip: IpAddr,
) -> Option<(ConnRecord, Incoming, SocketAddr, SocketAddr)> {
    let peer_id = incoming.peer_identity().clone();
    let authority = &incoming.request().authority;
    // The original client, as the source node says (`forwarded: for=`), else the peer.
    let src = incoming
        .request()
        .forwarded
        .as_ref()
        .and_then(|f| f.client_addr())
        .unwrap_or(peer);
    let here = SocketAddr::new(local_ip, core.options.hbone_port);
    let mut rec = ConnRecord::accept(
        &core.conns,
        Reporter::Destination,
        Carrier::Hbone,
        src,
        here,
    );
    let refuse = |rec: ConnRecord, incoming: Incoming, why: Refusal, detail: String| {
        let _ = incoming.reject(why.hbone_status());
        rec.refuse(why, &detail);
        None
    };
    let Some(target) = authority.socket_addr() else {
        let detail = format!("authority {authority} is not ip:port");
        return refuse(rec, incoming, Refusal::BadRequest, detail);
    };
    rec.set_hbone_addr(target);
    if target.ip() != local_ip {
        let detail = format!(
            "ip mismatch: authority IP {} is not the IP the tunnel arrived on ({local_ip})",
            target.ip()
        );
        return refuse(rec, incoming, Refusal::BadRequest, detail);
    }
    if core.own_listeners().contains(target) {
        let detail = format!("{target} is this node's own listener (a loop)");
        return refuse(rec, incoming, Refusal::Loop, detail);
    }
    let snapshot = core.snapshot();
    let Some(workload) = snapshot.local_workload_by_ip(target.ip()).cloned() else {
        let detail = format!("{} is no local workload", target.ip());
        return refuse(rec, incoming, Refusal::NotServed, detail);
    };
    let source = snapshot.workload_by_ip(src.ip()).cloned();
    let service = snapshot.inbound_service(&workload, target.port()).cloned();
    rec.set_source(source, Some(peer_id.clone()));
    rec.set_destination(Some(workload.clone()), service);
    rec.open(Security::MutualTls);
    if core.load.over_memory() {
        core.load.count_shed();
        let outcome = Outcome::Shed("resident memory is above --memory-limit".into());
        let _ = incoming.reject(Status::ServiceUnavailable);
        rec.finish(outcome);
        return None;
    }
    let req = Request {
        source: Some(&peer_id),
        source_ip: src.ip(),
        destination: target,
    };
    if let Decision::Deny(reason) = snapshot.decide(&req, &workload) {
        let outcome = Outcome::Denied(reason.to_string());
        let _ = incoming.reject(outcome.hbone_status());
        rec.finish(outcome);
        return None;
    }
    // Until it ends, a policy change that denies this peer closes the tunnel.
    rec.grant(Grant {
        peer: Some(peer_id),
        src,
        dst: target,
    });
    Some((rec, incoming, src, target))
}

/// Dials the workload for an admitted CONNECT, answers, and relays until the stream ends.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold the record and the request twice for the stream's life"
)]
fn relay_connect(
    core: Rc<Core>,
    rec: ConnRecord,
    incoming: Incoming,
    src: SocketAddr,
    target: SocketAddr,
    place: Placement,
) -> impl Future<Output = ()> + 'static {
    async move {
        let dial_error = std::cell::RefCell::new(None);
        let limit = core.limits().connect_timeout;
        let dial = async {
            match runtime::time::timeout(limit, dial_workload(&place, src.ip(), target)).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => {
                    *dial_error.borrow_mut() =
                        Some(Outcome::Unreachable(format!("connect {target}: {e}")));
                    Err(Status::ServiceUnavailable)
                }
                Err(_) => {
                    *dial_error.borrow_mut() = Some(Outcome::Timeout {
                        detail: format!("connect {target} after {limit:?}"),
                        hbone: false,
                    });
                    Err(Status::ServiceUnavailable)
                }
            }
        };
        let idle = core.limits().idle_timeout;
        let served = incoming.serve(dial, rec.meter(), rec.cut(idle)).await;
        let outcome = match served {
            Served::Relayed => Outcome::Complete,
            Served::Rejected(status) => dial_error
                .take()
                .unwrap_or_else(|| Outcome::Unreachable(format!("answered {status}"))),
            Served::Cancelled => Outcome::Reset(crate::conn::ResetBy::Downstream),
            Served::RelayFailed(e) => tunnel_relay_outcome(&rec, &e, Originator::Tunnel, idle),
        };
        rec.finish(outcome);
    }
}

/// Serves one plaintext connection that arrived on `local_ip`:15006 from a source outside
/// the mesh (or redirected to us): authorized with no identity, then relayed by splice.
pub async fn serve_plaintext(
    core: Rc<Core>,
    client: TcpStream,
    peer: SocketAddr,
    local_ip: IpAddr,
    place: Placement,
) {
    let _socket = core.conns.socket(Reporter::Destination);
    let here = SocketAddr::new(local_ip, core.options.plaintext_port);
    let mut rec = ConnRecord::accept(&core.conns, Reporter::Destination, Carrier::Tcp, peer, here);
    let refuse = |rec: ConnRecord, client: &TcpStream, why: Refusal, detail: String| {
        let _ = client.set_zero_linger();
        rec.refuse(why, &detail);
    };
    let _admitted = match core.admit(None) {
        Ok(a) => a,
        Err((why, detail)) => return refuse(rec, &client, why, detail),
    };
    let target = match client.original_dst() {
        Ok(d) => d,
        Err(e) => {
            let detail = format!("no original destination (not redirected): {e}");
            return refuse(rec, &client, Refusal::BadRequest, detail);
        }
    };
    rec.set_dst(target);
    if core.own_listeners().contains(target) {
        let detail = format!("{target} is this node's own listener (a loop)");
        return refuse(rec, &client, Refusal::Loop, detail);
    }
    let snapshot = core.snapshot();
    let Some(workload) = snapshot.local_workload_by_ip(target.ip()).cloned() else {
        let detail = format!("destination {} is no local workload", target.ip());
        return refuse(rec, &client, Refusal::NotServed, detail);
    };
    let source = snapshot.workload_by_ip(peer.ip()).cloned();
    let service = snapshot.inbound_service(&workload, target.port()).cloned();
    rec.set_source(source, None);
    rec.set_destination(Some(workload.clone()), service);
    rec.open(Security::Unknown);
    let req = Request {
        source: None,
        source_ip: peer.ip(),
        destination: target,
    };
    if let Decision::Deny(reason) = snapshot.decide(&req, &workload) {
        let _ = client.set_zero_linger();
        return rec.finish(Outcome::Denied(reason.to_string()));
    }
    rec.grant(Grant {
        peer: None,
        src: peer,
        dst: target,
    });
    drop((snapshot, workload));
    let limit = core.limits().connect_timeout;
    let pod = match runtime::time::timeout(limit, dial_workload(&place, peer.ip(), target)).await {
        Ok(Ok(pod)) => pod,
        Ok(Err(e)) => {
            let _ = client.set_zero_linger();
            return rec.finish(Outcome::Unreachable(format!("connect {target}: {e}")));
        }
        Err(_) => {
            let _ = client.set_zero_linger();
            return rec.finish(Outcome::Timeout {
                detail: format!("connect {target} after {limit:?}"),
                hbone: false,
            });
        }
    };
    let opts = RelayOptions {
        idle_timeout: core.limits().idle_timeout,
        ..RelayOptions::default()
    };
    let outcome = match relay_metered(client, pod, &opts, rec.meter(), rec.aborted()).await {
        Ok(()) => Outcome::Complete,
        Err(e) => tcp_relay_outcome(&rec, e),
    };
    rec.finish(outcome);
}

/// Dials a local workload for a connection from `source`. Inside a pod (in-pod mode) the
/// socket is made in the pod's namespace, transparent, from the original source address, so
/// the application sees its real client, as under ztunnel; istio-cni's rules route the
/// replies of the node's marked connections back to it. Elsewhere (dedicated mode) it
/// connects from the node's own address.
async fn dial_workload(
    place: &Placement,
    source: IpAddr,
    target: SocketAddr,
) -> std::io::Result<TcpStream> {
    let spoof = place.netns.is_some()
        && source != target.ip()
        && source.is_ipv4() == target.is_ipv4()
        && !source.is_loopback();
    if spoof {
        let (s, _) = TcpStream::connect_transparent(place, source, target).await?;
        Ok(s)
    } else {
        TcpStream::connect_placed(place, None, target).await
    }
}
