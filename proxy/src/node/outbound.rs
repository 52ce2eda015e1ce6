//! Outbound: traffic leaving a local workload, captured on 15001 (original destination from
//! `SO_ORIGINAL_DST`) or entered through SOCKS5 (15080).
//!
//! Decision first, bytes second (STYLE.md): the connection is admitted, its destination
//! checked against the node's own listeners, the source workload found by source IP, the
//! destination resolved (service VIP → endpoint, workload IP, or unknown) and the upstream
//! opened — an HBONE CONNECT stream from this core's pool, or a plain TCP socket — before
//! any byte of the client's is relayed. The relay then only moves and counts bytes. Every
//! step reports through the connection's record (`crate::conn`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use hbone::pool::PoolKey;
use hbone::stream::{HboneStream, Originator};
use hbone::wire::ConnectRequest;
use runtime::net::{Placement, TcpStream};
use runtime::relay::{RelayError, RelayOptions, Side, relay_metered};

use super::core::{Core, UnknownSource};
use super::inpod::PodSpec;
use crate::config::types::{Gateway, GatewayTarget};
use crate::config::{Destination, Protocol, Service, Snapshot, Workload};
use crate::conn::{ConnRecord, Outcome, ResetBy};
use crate::socks5::{self, Reply};
use crate::telemetry::{Carrier, Refusal, Reporter, Security};

/// Where an outbound connection goes, decided before any byte moves.
enum Route {
    Hbone {
        key: Box<PoolKey>,
        request: Box<ConnectRequest>,
    },
    Tcp {
        addr: SocketAddr,
    },
}

/// What the route resolution learnt, for the record.
struct Resolved {
    route: Route,
    carrier: Carrier,
    destination: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
}

fn route(
    core: &Core,
    snapshot: &Snapshot,
    source: Option<&Arc<Workload>>,
    src: SocketAddr,
    dst: SocketAddr,
    place: &Placement,
) -> Result<Resolved, (Refusal, String)> {
    let Some(source) = source else {
        return match core.options.unknown_source {
            UnknownSource::Passthrough => Ok(Resolved {
                route: Route::Tcp { addr: dst },
                carrier: Carrier::Passthrough,
                destination: None,
                service: None,
            }),
            UnknownSource::Reject => Err((
                Refusal::UnknownSource,
                format!("source {} is not a local workload", src.ip()),
            )),
        };
    };
    let (workload, addr, service) = match snapshot.resolve(dst, core.next_pick()) {
        Destination::Service { port, .. } | Destination::NoEndpoint { port }
            if port.service.waypoint.is_some()
                && !is_waypoint(source, port.service.waypoint.as_ref()) =>
        {
            let gw = port.service.waypoint.as_ref().expect("checked");
            return via_waypoint(
                core,
                snapshot,
                source,
                src,
                dst,
                gw,
                Some(port.service.clone()),
                place,
            );
        }
        Destination::Workload { workload, .. }
            if workload.waypoint.is_some() && !is_waypoint(source, workload.waypoint.as_ref()) =>
        {
            let gw = workload.waypoint.as_ref().expect("checked");
            return via_waypoint(core, snapshot, source, src, dst, gw, None, place);
        }
        Destination::Service { endpoint, port } => (
            endpoint.workload.clone(),
            endpoint.addr,
            Some(port.service.clone()),
        ),
        Destination::Workload { workload, addr } => (workload.clone(), addr, None),
        Destination::NoEndpoint { port } => {
            return Err((
                Refusal::NoEndpoint,
                format!(
                    "no healthy upstream: service {} has no endpoint for port {}",
                    port.service.key(),
                    port.port
                ),
            ));
        }
        Destination::UnknownServicePort { service } => {
            return Err((
                Refusal::NoEndpoint,
                format!(
                    "service {} does not expose port {}",
                    service.key(),
                    dst.port()
                ),
            ));
        }
        Destination::Unknown => {
            return Ok(Resolved {
                route: Route::Tcp { addr: dst },
                carrier: Carrier::Passthrough,
                destination: None,
                service: None,
            });
        }
    };
    let resolved = match workload.protocol {
        Protocol::Hbone => Resolved {
            route: Route::Hbone {
                key: Box::new(
                    PoolKey::new(
                        source.identity.clone(),
                        vec![workload.identity.clone()],
                        core.hbone_addr(addr.ip()),
                    )
                    .placed(place.clone()),
                ),
                request: Box::new(ConnectRequest::new(addr).with_source(src)),
            },
            carrier: Carrier::Hbone,
            destination: Some(workload),
            service,
        },
        Protocol::Tcp => Resolved {
            route: Route::Tcp { addr },
            carrier: Carrier::Tcp,
            destination: Some(workload),
            service,
        },
    };
    Ok(resolved)
}

/// Whether `source` is the waypoint `gw` names (its own traffic never loops back to it).
fn is_waypoint(source: &Arc<Workload>, gw: Option<&Gateway>) -> bool {
    match gw.map(|g| &g.target) {
        Some(GatewayTarget::Address { ip, .. }) => source.ips.contains(ip),
        _ => false,
    }
}

/// The route to a Service (or workload) that names a waypoint: an HBONE CONNECT to the
/// waypoint for the original destination (ztunnel's behaviour: the authority stays the
/// Service VIP:port, the tunnel presents the source's identity and expects the waypoint's).
#[allow(clippy::too_many_arguments)]
fn via_waypoint(
    core: &Core,
    snapshot: &Snapshot,
    source: &Arc<Workload>,
    src: SocketAddr,
    dst: SocketAddr,
    gw: &Gateway,
    service: Option<Arc<Service>>,
    place: &Placement,
) -> Result<Resolved, (Refusal, String)> {
    let waypoint = match &gw.target {
        GatewayTarget::Address { ip, .. } => snapshot.workload_by_ip(*ip).cloned(),
        GatewayTarget::Hostname {
            namespace,
            hostname,
        } => snapshot.service(namespace, hostname).and_then(|svc| {
            let vip = svc.vips.first()?;
            match snapshot.resolve(SocketAddr::new(vip.ip, gw.hbone_port), core.next_pick()) {
                Destination::Service { endpoint, .. } => Some(endpoint.workload.clone()),
                _ => None,
            }
        }),
    };
    let Some(waypoint) = waypoint else {
        return Err((
            Refusal::NoEndpoint,
            format!("waypoint {} of {dst} has no known workload", gw.target),
        ));
    };
    let Some(&ip) = waypoint.ips.first() else {
        return Err((
            Refusal::NoEndpoint,
            format!("waypoint {} has no IP", waypoint.uid),
        ));
    };
    Ok(Resolved {
        route: Route::Hbone {
            key: Box::new(
                PoolKey::new(
                    source.identity.clone(),
                    vec![waypoint.identity.clone()],
                    SocketAddr::new(ip, gw.hbone_port),
                )
                .placed(place.clone()),
            ),
            request: Box::new(ConnectRequest::new(dst).with_source(src)),
        },
        carrier: Carrier::Hbone,
        destination: Some(waypoint),
        service,
    })
}

enum Upstream {
    Hbone(HboneStream),
    Tcp(TcpStream),
}

async fn open(core: &Core, route: &Route, place: &Placement) -> Result<Upstream, Outcome> {
    match route {
        Route::Hbone { key, request } => core
            .pool
            .connect(key, request)
            .await
            .map(Upstream::Hbone)
            .map_err(|e| outcome_of_hbone(&e)),
        Route::Tcp { addr } => {
            let limit = core.limits().connect_timeout;
            let dial = TcpStream::connect_placed(place, None, *addr);
            match runtime::time::timeout(limit, dial).await {
                Ok(Ok(s)) => Ok(Upstream::Tcp(s)),
                Ok(Err(e)) => Err(Outcome::Unreachable(format!("connect {addr}: {e}"))),
                Err(_) => Err(Outcome::Timeout {
                    detail: format!("connect {addr} after {limit:?}"),
                    hbone: false,
                }),
            }
        }
    }
}

/// The outcome of a failed HBONE request (pool dial or CONNECT).
fn outcome_of_hbone(e: &hbone::Error) -> Outcome {
    use hbone::Error as E;
    let text = e.to_string();
    match e {
        E::Dial { source, .. } => match outcome_of_hbone(source) {
            Outcome::Failed(_) => Outcome::Unreachable(text),
            other => other,
        },
        E::Rejected { status } => match status.as_u16() {
            401 | 403 => Outcome::Denied(format!("the destination node answered {status}")),
            _ => Outcome::Unreachable(format!("the destination node answered {status}")),
        },
        E::Timeout { .. } => Outcome::Timeout {
            detail: text,
            hbone: true,
        },
        E::Tls(_) | E::UnexpectedPeerIdentity { .. } | E::WrongTrustDomain { .. } => {
            Outcome::Tls(text)
        }
        E::NoH2Alpn(_) | E::H2(_) | E::Flood(_) => Outcome::Http2(text),
        E::TlsConfig(_) => Outcome::NoIdentity(text),
        E::Io(_) | E::Unavailable(_) => Outcome::Unreachable(text),
        _ => Outcome::Failed(text),
    }
}

/// How the client hears of a refusal: a SOCKS5 reply, or a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Capture,
    Socks5,
}

/// Serves one connection captured on 15001: its original destination is where it goes.
/// In in-pod mode `pod` is the pod whose namespace the listener is in: upstream sockets are
/// made there (the peer sees the pod's address), and the source workload must be that pod.
pub async fn serve_captured(
    core: Rc<Core>,
    client: TcpStream,
    src: SocketAddr,
    pod: Option<Arc<PodSpec>>,
) {
    let _socket = core.conns.socket(Reporter::Source);
    let dst = match client.original_dst() {
        Ok(d) => d,
        Err(e) => {
            let local = client.local_addr().unwrap_or(src);
            let rec = ConnRecord::accept(
                &core.conns,
                Reporter::Source,
                Carrier::Passthrough,
                src,
                local,
            );
            let _ = client.set_zero_linger();
            rec.refuse(
                Refusal::BadRequest,
                &format!("no original destination (was the connection redirected?): {e}"),
            );
            return;
        }
    };
    serve(core, client, src, dst, Entry::Capture, pod).await;
}

/// Serves one SOCKS5 connection.
pub async fn serve_socks5(core: Rc<Core>, client: TcpStream, src: SocketAddr) {
    let _socket = core.conns.socket(Reporter::Source);
    let limit = core.limits().socks5_handshake_timeout;
    let refused = match runtime::time::timeout(limit, socks5::accept(&client)).await {
        Ok(Ok(dst)) => {
            return serve(core, client, src, dst, Entry::Socks5, None).await;
        }
        Ok(Err(e)) => (Refusal::BadRequest, e.to_string()),
        Err(_) => (
            Refusal::HandshakeTimeout,
            format!("SOCKS5 handshake not done after {limit:?}"),
        ),
    };
    let local = client.local_addr().unwrap_or(src);
    let rec = ConnRecord::accept(
        &core.conns,
        Reporter::Source,
        Carrier::Passthrough,
        src,
        local,
    );
    rec.refuse(refused.0, &refused.1);
}

/// Boxed where it is awaited only on a refusal: its SOCKS5 write (~0.7 KiB of state) would
/// otherwise size every connection's task (a task is as large as its largest await).
fn refuse<'a>(
    rec: ConnRecord,
    client: &'a TcpStream,
    entry: Entry,
    why: Refusal,
    detail: &'a str,
) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
    Box::pin(refuse_inline(rec, client, entry, why, detail))
}

async fn refuse_inline(
    rec: ConnRecord,
    client: &TcpStream,
    entry: Entry,
    why: Refusal,
    detail: &str,
) {
    match entry {
        Entry::Socks5 => {
            let _ = socks5::reply(client, why.socks_reply(), None).await;
        }
        Entry::Capture => {
            let _ = client.set_zero_linger();
        }
    }
    rec.refuse(why, detail);
}

/// The decisions made before any byte moves: loops, the source workload, the route. Fills
/// in and opens `rec`. Synchronous, so that nothing it looks at (the snapshot, the own
/// listeners) is held by the connection's task past it: a long connection must not pin an
/// old snapshot.
fn decide(
    core: &Core,
    rec: &mut ConnRecord,
    pod: Option<&PodSpec>,
    place: &Placement,
) -> Result<Route, (Refusal, String)> {
    let (src, dst) = (rec.src(), rec.dst());
    let own = core.own_listeners();
    if own.contains(dst) {
        return Err((
            Refusal::Loop,
            format!("{dst} is this node's own listener (a loop)"),
        ));
    }
    let snapshot = core.snapshot();
    let source = snapshot.local_workload_by_ip(src.ip()).cloned();
    // In a pod, the source is that pod or nobody: an address alone could be one another
    // pod added to its own namespace, and plaintext passthrough would leak a mesh pod's
    // traffic before its workload reached the config.
    if let Some(p) = pod
        && !source
            .as_ref()
            .is_some_and(|w| *w.namespace == *p.namespace && *w.name == *p.pod_name)
    {
        let detail = format!(
            "source {} is not pod {}/{} in the mesh config (yet)",
            src.ip(),
            p.namespace,
            p.pod_name
        );
        return Err((Refusal::UnknownSource, detail));
    }
    let resolved = route(core, &snapshot, source.as_ref(), src, dst, place)?;
    let security = match &resolved.route {
        Route::Hbone { key, request } => {
            rec.set_dst(key.dst);
            rec.set_hbone_addr(request.authority.socket_addr().unwrap_or(key.dst));
            Security::MutualTls
        }
        Route::Tcp { addr } => {
            if own.contains(*addr) {
                let detail = format!("{addr} is this node's own listener (a loop)");
                return Err((Refusal::Loop, detail));
            }
            rec.set_dst(*addr);
            Security::Unknown
        }
    };
    let identity = source.as_ref().map(|w| w.identity.clone());
    rec.set_source(source, identity);
    rec.set_destination(resolved.destination, resolved.service);
    rec.set_carrier(resolved.carrier);
    rec.open(security);
    Ok(resolved.route)
}

async fn serve(
    core: Rc<Core>,
    mut client: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    entry: Entry,
    pod: Option<Arc<PodSpec>>,
) {
    let place = pod.as_ref().map(|p| p.place.clone()).unwrap_or_default();
    let mut rec = ConnRecord::accept(
        &core.conns,
        Reporter::Source,
        Carrier::Passthrough,
        src,
        dst,
    );
    let _admitted = match core.admit(None) {
        Ok(a) => a,
        Err((why, detail)) => return refuse(rec, &client, entry, why, &detail).await,
    };
    let route = match decide(&core, &mut rec, pod.as_deref(), &place) {
        Ok(r) => r,
        Err((why, detail)) => return refuse(rec, &client, entry, why, &detail).await,
    };
    drop(pod);
    // Boxed: a pool dial that handshakes is several KiB of state, and inline it would size
    // this task, which lives as long as the connection, for the dial rather than the relay.
    let upstream = match Box::pin(open(&core, &route, &place)).await {
        Ok(u) => u,
        Err(outcome) => {
            match entry {
                Entry::Socks5 => {
                    let _ = socks5::reply(&client, outcome.socks_reply(), None).await;
                }
                Entry::Capture => {
                    let _ = client.set_zero_linger();
                }
            }
            return rec.finish(outcome);
        }
    };
    // The pool key and request (with their identities and headers) are not needed past the
    // dial; the task lives as long as the connection.
    drop(route);
    drop(place);
    if entry == Entry::Socks5
        && let Err(e) = socks5::reply(&client, Reply::Succeeded, client.local_addr().ok()).await
    {
        return rec.finish(Outcome::Reset(ResetBy::Downstream).or_failed(&e));
    }
    let outcome = match upstream {
        Upstream::Tcp(up) => {
            let opts = RelayOptions {
                idle_timeout: core.limits().idle_timeout,
                ..RelayOptions::default()
            };
            // Boxed: the plain relay's state (2.3 KiB) would otherwise size this task for
            // every connection, HBONE ones included (a task is as large as its largest
            // await), and the task lives as long as the connection.
            let relay = Box::pin(relay_metered(client, up, &opts, rec.meter(), rec.aborted()));
            match relay.await {
                Ok(()) => Outcome::Complete,
                Err(e) => tcp_relay_outcome(&rec, e),
            }
        }
        Upstream::Hbone(mut tunnel) => {
            let idle = core.limits().idle_timeout;
            let cut = rec.cut(idle);
            match hbone::stream::relay(
                &mut tunnel,
                &mut client,
                rec.meter(),
                Originator::Socket,
                cut,
            )
            .await
            {
                Ok(()) => Outcome::Complete,
                Err(e) => tunnel_relay_outcome(&rec, &e, Originator::Socket, idle),
            }
        }
    };
    rec.finish(outcome);
}

/// The outcome of a TCP relay that ended early (the relay reset both sockets).
pub(super) fn tcp_relay_outcome(rec: &ConnRecord, e: RelayError) -> Outcome {
    match e {
        RelayError::Aborted => rec.abort_outcome(),
        RelayError::IdleTimeout(d) => Outcome::IdleTimeout(d),
        RelayError::Io {
            side, ref source, ..
        } if runtime::relay::RelayError::is_reset(&e) => {
            let _ = source;
            Outcome::Reset(match side {
                Side::Originator => ResetBy::Downstream,
                Side::Upstream => ResetBy::Upstream,
            })
        }
        other => Outcome::Failed(other.to_string()),
    }
}

/// The outcome of a tunnel relay that ended early; `originator` says which end faced the
/// client.
pub(super) fn tunnel_relay_outcome(
    rec: &ConnRecord,
    e: &hbone::stream::RelayError,
    originator: Originator,
    idle: Option<std::time::Duration>,
) -> Outcome {
    use hbone::stream::RelayError as R;
    let socket_side = match originator {
        Originator::Socket => ResetBy::Downstream,
        Originator::Tunnel => ResetBy::Upstream,
    };
    let tunnel_side = match socket_side {
        ResetBy::Downstream => ResetBy::Upstream,
        ResetBy::Upstream => ResetBy::Downstream,
    };
    match e {
        R::Aborted => rec.cut_outcome(idle),
        R::Socket(io) => Outcome::Reset(socket_side).or_failed(io),
        R::Tunnel(_) => Outcome::Reset(tunnel_side),
    }
}

trait OrFailed {
    fn or_failed(self, e: &std::io::Error) -> Outcome;
}

impl OrFailed for Outcome {
    /// This outcome if `e` is a reset, else a failure naming `e`.
    fn or_failed(self, e: &std::io::Error) -> Outcome {
        if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        ) {
            self
        } else {
            Outcome::Failed(e.to_string())
        }
    }
}
