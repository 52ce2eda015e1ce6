//! Outbound: traffic leaving a local workload, captured on 15001 (original destination from
//! `SO_ORIGINAL_DST`) or entered through SOCKS5 (15080).
//!
//! Decision first, bytes second (STYLE.md): the source workload is found by source IP, the
//! destination resolved (service VIP → endpoint, workload IP, or unknown) and the upstream
//! opened — an HBONE CONNECT stream from this core's pool, or a plain TCP socket — before
//! any byte of the client's is relayed. The relay then only moves and counts bytes.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::pool::PoolKey;
use hbone::stream::HboneStream;
use hbone::wire::ConnectRequest;
use runtime::net::TcpStream;
use runtime::relay::{RelayOptions, relay};

use super::core::{Core, UnknownSource};
use super::socks5::{self, Reply};
use crate::config::{Destination, Protocol, Snapshot, Workload};
use crate::metrics::{Direction, Outcome, Proto};

/// Deadline for dialing a plain-TCP upstream. HBONE dials have the pool's own deadline.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a SOCKS5 client to send its greeting and request.
const SOCKS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an outbound connection goes, decided before any byte moves.
enum Route {
    Hbone {
        key: Box<PoolKey>,
        request: Box<ConnectRequest>,
        dst_workload: Arc<Workload>,
    },
    Tcp {
        addr: SocketAddr,
        dst_workload: Option<Arc<Workload>>,
        proto: Proto,
    },
}

/// A refused route: the outcome for metrics and logs, and the SOCKS reply.
struct Refusal {
    outcome: Outcome,
    reason: String,
}

fn route(
    core: &Core,
    snapshot: &Snapshot,
    src: SocketAddr,
    dst: SocketAddr,
) -> Result<(Option<Arc<Workload>>, Route), Refusal> {
    let source = snapshot.local_workload_by_ip(src.ip()).cloned();
    let Some(source) = source else {
        return match core.options.unknown_source {
            UnknownSource::Passthrough => Ok((
                None,
                Route::Tcp {
                    addr: dst,
                    dst_workload: None,
                    proto: Proto::Passthrough,
                },
            )),
            UnknownSource::Reject => Err(Refusal {
                outcome: Outcome::Denied,
                reason: format!("source {} is not a local workload", src.ip()),
            }),
        };
    };
    let (workload, addr) = match snapshot.resolve(dst, core.next_pick()) {
        Destination::Service { endpoint, .. } => (endpoint.workload.clone(), endpoint.addr),
        Destination::Workload { workload, addr } => (workload.clone(), addr),
        Destination::NoEndpoint { port } => {
            return Err(Refusal {
                outcome: Outcome::NoEndpoint,
                reason: format!(
                    "service {} has no healthy endpoint for port {}",
                    port.service.key(),
                    port.port
                ),
            });
        }
        Destination::UnknownServicePort { service } => {
            return Err(Refusal {
                outcome: Outcome::NoEndpoint,
                reason: format!(
                    "service {} does not expose port {}",
                    service.key(),
                    dst.port()
                ),
            });
        }
        Destination::Unknown => {
            return Ok((
                Some(source),
                Route::Tcp {
                    addr: dst,
                    dst_workload: None,
                    proto: Proto::Passthrough,
                },
            ));
        }
    };
    let route = match workload.protocol {
        Protocol::Hbone => Route::Hbone {
            key: Box::new(PoolKey::new(
                source.identity.clone(),
                vec![workload.identity.clone()],
                core.hbone_addr(addr.ip()),
            )),
            request: Box::new(ConnectRequest::new(addr).with_source(src)),
            dst_workload: workload,
        },
        Protocol::Tcp => Route::Tcp {
            addr,
            dst_workload: Some(workload),
            proto: Proto::Tcp,
        },
    };
    Ok((Some(source), route))
}

enum Upstream {
    Hbone(HboneStream),
    Tcp(TcpStream),
}

/// What the access log says of a connection.
struct Log<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    source: Option<&'a Workload>,
    dst_workload: Option<&'a Workload>,
    upstream: Option<SocketAddr>,
    proto: Proto,
}

fn access_log(
    log: &Log<'_>,
    outcome: Outcome,
    sent: u64,
    received: u64,
    started: Instant,
    detail: &str,
) {
    tracing::info!(
        target: "ringmesh::access",
        direction = "outbound",
        src = %log.src,
        dst = %log.dst,
        src_identity = %log.source.map(|w| w.identity.to_string()).unwrap_or_else(|| "-".into()),
        dst_identity = %log.dst_workload.map(|w| w.identity.to_string()).unwrap_or_else(|| "-".into()),
        upstream = %log.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        protocol = log.proto.label(),
        outcome = outcome.label(),
        sent,
        received,
        duration_ms = started.elapsed().as_millis() as u64,
        detail,
        "connection closed"
    );
}

async fn open(core: &Core, route: &Route) -> Result<Upstream, (Outcome, String)> {
    match route {
        Route::Hbone { key, request, .. } => core
            .pool
            .connect(key, request)
            .await
            .map(Upstream::Hbone)
            .map_err(|e| (outcome_of_hbone(&e), e.to_string())),
        Route::Tcp { addr, .. } => {
            match runtime::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(*addr)).await {
                Ok(Ok(s)) => Ok(Upstream::Tcp(s)),
                Ok(Err(e)) => Err((Outcome::Unreachable, format!("connect {addr}: {e}"))),
                Err(_) => Err((
                    Outcome::Timeout,
                    format!("connect {addr}: timed out after {TCP_CONNECT_TIMEOUT:?}"),
                )),
            }
        }
    }
}

fn outcome_of_hbone(e: &hbone::Error) -> Outcome {
    match e.status() {
        hbone::wire::Status::Unauthorized => Outcome::Denied,
        hbone::wire::Status::BadRequest => Outcome::BadRequest,
        _ => match e {
            hbone::Error::Timeout { .. } => Outcome::Timeout,
            _ => Outcome::Unreachable,
        },
    }
}

/// Serves one connection captured on 15001: its original destination is where it goes.
pub async fn serve_captured(core: Rc<Core>, client: TcpStream, src: SocketAddr) {
    let dst = match client.original_dst() {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%src, error = %e, "outbound: no original destination (was the connection redirected?); resetting");
            let _ = client.set_zero_linger();
            return;
        }
    };
    // A redirected connection to our own listener would loop forever.
    if client.local_addr().ok() == Some(dst) {
        tracing::warn!(%src, %dst, "outbound: destination is the capture port itself; resetting");
        let _ = client.set_zero_linger();
        return;
    }
    serve(core, client, src, dst, None).await;
}

/// Serves one SOCKS5 connection.
pub async fn serve_socks5(core: Rc<Core>, client: TcpStream, src: SocketAddr) {
    let dst = match runtime::time::timeout(SOCKS_HANDSHAKE_TIMEOUT, socks5::accept(&client)).await {
        Ok(Ok(dst)) => dst,
        Ok(Err(e)) => {
            tracing::debug!(%src, error = %e, "SOCKS5 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%src, "SOCKS5 handshake timed out");
            return;
        }
    };
    serve(core, client, src, dst, Some(())).await;
}

async fn serve(
    core: Rc<Core>,
    client: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    socks: Option<()>,
) {
    let started = Instant::now();
    let snapshot = core.snapshot();
    let (source, route) = match route(&core, &snapshot, src, dst) {
        Ok(r) => r,
        Err(refusal) => {
            let log = Log {
                src,
                dst,
                source: snapshot.local_workload_by_ip(src.ip()).map(|w| &**w),
                dst_workload: None,
                upstream: None,
                proto: Proto::Passthrough,
            };
            core.metrics.conn_closed(
                Direction::Outbound,
                Proto::Passthrough,
                refusal.outcome,
                0,
                0,
            );
            access_log(&log, refusal.outcome, 0, 0, started, &refusal.reason);
            if socks.is_some() {
                let _ = socks5::reply(&client, socks_reply(refusal.outcome), None).await;
            } else {
                let _ = client.set_zero_linger();
            }
            return;
        }
    };
    let (proto, dst_workload, upstream_addr) = match &route {
        Route::Hbone {
            key, dst_workload, ..
        } => (Proto::Hbone, Some(dst_workload.clone()), key.dst),
        Route::Tcp {
            addr,
            dst_workload,
            proto,
        } => (*proto, dst_workload.clone(), *addr),
    };
    let log = Log {
        src,
        dst,
        source: source.as_deref(),
        dst_workload: dst_workload.as_deref(),
        upstream: Some(upstream_addr),
        proto,
    };
    core.metrics.conn_opened(Direction::Outbound, proto);
    let upstream = match open(&core, &route).await {
        Ok(u) => u,
        Err((outcome, reason)) => {
            core.metrics
                .conn_closed(Direction::Outbound, proto, outcome, 0, 0);
            access_log(&log, outcome, 0, 0, started, &reason);
            if socks.is_some() {
                let _ = socks5::reply(&client, socks_reply(outcome), None).await;
            } else {
                let _ = client.set_zero_linger();
            }
            return;
        }
    };
    if socks.is_some()
        && let Err(e) = socks5::reply(&client, Reply::Succeeded, client.local_addr().ok()).await
    {
        core.metrics
            .conn_closed(Direction::Outbound, proto, Outcome::Reset, 0, 0);
        access_log(
            &log,
            Outcome::Reset,
            0,
            0,
            started,
            &format!("SOCKS5 reply: {e}"),
        );
        return;
    }
    let (outcome, sent, received, detail) = match upstream {
        Upstream::Tcp(up) => match relay(client, up, &RelayOptions::default()).await {
            Ok(s) => (Outcome::Ok, s.a_to_b, s.b_to_a, String::new()),
            Err(e) => {
                let s = e.stats();
                let outcome = if e.is_reset() {
                    Outcome::Reset
                } else {
                    Outcome::Error
                };
                (outcome, s.a_to_b, s.b_to_a, e.to_string())
            }
        },
        Upstream::Hbone(mut tunnel) => {
            let mut client = client;
            match hbone::stream::relay(&mut tunnel, &mut client).await {
                Ok(s) => (Outcome::Ok, s.to_tunnel, s.from_tunnel, String::new()),
                Err(e) => {
                    // The tunnel was reset (or broke): the pod sees a reset too, not an
                    // orderly end it could mistake for a complete response.
                    let _ = client.set_zero_linger();
                    (
                        Outcome::Reset,
                        tunnel.bytes_written(),
                        tunnel.bytes_read(),
                        e.to_string(),
                    )
                }
            }
        }
    };
    core.metrics
        .conn_closed(Direction::Outbound, proto, outcome, sent, received);
    access_log(&log, outcome, sent, received, started, &detail);
}

fn socks_reply(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Denied => Reply::NotAllowed,
        Outcome::Unreachable | Outcome::NoEndpoint => Reply::HostUnreachable,
        Outcome::BadRequest => Reply::GeneralFailure,
        _ => Reply::ConnectionRefused,
    }
}
