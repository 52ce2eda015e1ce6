//! The upstream side of a core's waypoint: the endpoint each attempt goes to (picked per
//! request, by the caller's balancing, with this core's requests in flight and outlier
//! ejections), the connections kept per endpoint (HTTP/1.1 in [`super::pool`], one HTTP/2
//! connection each), the Service's `connectionPool` limits, and outlier detection's
//! judgement of every answer.
//!
//! Invariants: a request is counted in flight to its endpoint, and against its Service's
//! `http2MaxRequests`, from the pick until its response body is done with; a connection
//! carries requests for the endpoint it was opened to only, and counts against its
//! Service's `maxConnections` until it closes; the per-endpoint maps hold only endpoints in
//! use or with recent trouble.

use super::*;

/// What a core knows of an endpoint when it picks one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Host {
    /// Requests in flight to it (least-request reads this).
    pub load: u32,
    /// Ejected by outlier detection, for now.
    pub ejected: bool,
    /// How long ago it joined the mesh, if recently (slow start reads this); the
    /// [`Upstreams`] knows, the waypoint leaves it `None`.
    pub age: Option<Duration>,
}

/// The endpoint picked for an attempt, and what outlier detection needs to judge its
/// answer: the policy, the size of the pool it was picked from and how many of the pool
/// were ejected then.
#[derive(Debug, Clone)]
pub struct Picked {
    pub endpoint: Endpoint,
    pub outlier: Option<Arc<Outlier>>,
    pub pool: u32,
    pub ejected: u32,
    /// The Service's (or subset's) `connectionPool` limits, if its rule sets them.
    pub limits: Option<Arc<Limits>>,
}

/// An HTTP/2 connection to an endpoint (gRPC), with what its reuse depends on.
pub(super) struct H2Conn {
    sender: hyper::client::conn::http2::SendRequest<Body>,
    /// Streams it has carried.
    uses: u32,
    opened: Instant,
    /// This side's address on its socket.
    local: Option<SocketAddr>,
}

/// An endpoint's recent answers on this core, while they matter to outlier detection.
#[derive(Debug, Default)]
pub(super) struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Ejections so far (each lasts longer).
    times: u32,
    until: Option<Instant>,
}

/// How many times a retry picks again to find an endpoint its request has not tried
/// (Istio's `HostSelectionRetryMaxAttempts`).
const RETRY_HOST_PICKS: usize = 5;

/// The endpoints a request's attempts went to, so a retry prefers another. Inline for
/// the first attempt and Istio's default two retries: every request records one, and
/// the hot path allocates nothing for it; a longer retry policy spills to the heap.
pub(super) type Tried = smallvec::SmallVec<[SocketAddr; 3]>;

/// Where an attempt goes: a Service port, or the endpoints of one of its DestinationRule
/// subsets; with the request's hash when the Service balances by consistent hashing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub service: ServiceRef,
    pub subset: Option<Arc<str>>,
    pub port: u16,
    /// The request's key, hashed ([`crate::dr::HashPolicy`]); `None` without one.
    pub hash: Option<u64>,
}

impl Upstream {
    /// The backend's Service port, or `default` (the port the request came in on).
    pub fn of(backend: &Backend, default: u16) -> Upstream {
        Upstream {
            service: backend.service.clone(),
            subset: backend.subset.clone(),
            port: backend.port.unwrap_or(default),
            hash: None,
        }
    }
}

/// The Envoy cluster istiod names for a Service port in a waypoint: a Service bound to the
/// waypoint is reached through `inbound-vip|PORT|http[/SUBSET]|HOST` (the protocol, with the
/// DestinationRule subset behind a slash), any other through the sidecar's
/// `outbound|PORT|SUBSET|HOST`. Envoy writes these in `%UPSTREAM_CLUSTER_RAW%` and the span's
/// `upstream_cluster`.
pub fn cluster_name(port: u16, subset: Option<&str>, host: &str, bound: bool) -> String {
    match (bound, subset) {
        (true, Some(s)) => format!("inbound-vip|{port}|http/{s}|{host}"),
        (true, None) => format!("inbound-vip|{port}|http|{host}"),
        (false, s) => format!("outbound|{port}|{}|{host}", s.unwrap_or("")),
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)?;
        if let Some(s) = &self.subset {
            write!(f, " (subset {s})")?;
        }
        Ok(())
    }
}

/// Requests in flight per endpoint on this core (least-request reads it). An endpoint with
/// none has no entry, so the map holds at most the endpoints in use.
pub(super) type Load = Rc<RefCell<HashMap<SocketAddr, u32>>>;

/// One request in flight to an endpoint, from the pick until its response body is done
/// with (or the attempt fails).
pub(super) struct Active {
    load: Load,
    addr: SocketAddr,
    /// The request's place in its Service's `http2MaxRequests`.
    _request: Option<Slot>,
}

impl Active {
    pub(super) fn enter(load: &Load, addr: SocketAddr, request: Option<Slot>) -> Active {
        *load.borrow_mut().entry(addr).or_insert(0) += 1;
        Active {
            load: load.clone(),
            addr,
            _request: request,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let mut load = self.load.borrow_mut();
        if let Some(n) = load.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                load.remove(&self.addr);
            }
        }
    }
}

impl<U: Upstreams> Waypoint<U> {
    /// The endpoint for one attempt at `to`, counted in flight until the guard drops; an
    /// overflow if the Service has its `http2MaxRequests` in flight already.
    pub(super) fn pick(
        &self,
        to: &Upstream,
        avoid: &[SocketAddr],
    ) -> Result<(Picked, Active), SendError> {
        let now = Instant::now();
        let picked = {
            let load = self.load.borrow();
            let health = self.health.borrow();
            let host = |addr| Host {
                load: load.get(&addr).copied().unwrap_or(0),
                ejected: health
                    .get(&addr)
                    .is_some_and(|h| h.until.is_some_and(|u| u > now)),
                age: None,
            };
            let mut picked = self
                .upstreams
                .pick(to, &host)
                .map_err(SendError::Upstream)?;
            // A retry prefers an endpoint not tried yet (Istio's `previous_hosts`), picking
            // again a few times; by hash, the key's endpoint is the one wanted.
            if to.hash.is_none() {
                for _ in 0..RETRY_HOST_PICKS {
                    if !avoid.contains(&picked.endpoint.addr) {
                        break;
                    }
                    picked = self
                        .upstreams
                        .pick(to, &host)
                        .map_err(SendError::Upstream)?;
                }
            }
            picked
        };
        let request = match &picked.limits {
            Some(l) => Some(
                l.requests
                    .try_enter(l.policy.max_requests)
                    .ok_or(SendError::Overflow)?,
            ),
            None => None,
        };
        let active = Active::enter(&self.load, picked.endpoint.addr, request);
        Ok((picked, active))
    }

    /// One attempt: an endpoint picked for this request, the request sent to it, the
    /// response head; the answer counts for outlier detection.
    /// `tried` holds the endpoints of the request's earlier attempts, and gets this one's.
    pub(super) async fn send(
        &self,
        to: &Upstream,
        req: Request<Body>,
        tried: &mut Tried,
    ) -> Result<(Response<Body>, Reached), SendError> {
        let (picked, active) = self.pick(to, tried)?;
        tried.push(picked.endpoint.addr);
        let result = if req.version() == Version::HTTP_2 {
            self.send_h2(&picked, active, req).await
        } else {
            self.send_h1(&picked, active, req).await
        };
        if let Some(policy) = &picked.outlier {
            self.judge(&picked, policy, &result);
        }
        result
    }

    /// Outlier detection (Envoy's consecutive-errors kinds): a 5xx answer, or a failure to
    /// connect or a reset, counts against the endpoint, anything else clears its count; at
    /// the policy's count it is ejected for the policy's time, if the pool allows.
    /// Timeouts, the client's own body errors and local answers do not count.
    fn judge(
        &self,
        picked: &Picked,
        policy: &Outlier,
        result: &Result<(Response<Body>, Reached), SendError>,
    ) {
        let (e5xx, gateway) = match result {
            Ok((resp, _)) => {
                let s = resp.status().as_u16();
                (s >= 500, matches!(s, 502..=504))
            }
            Err(
                SendError::Upstream(UpstreamError::Connect(_))
                | SendError::Reset(_)
                | SendError::Refused(_),
            ) => (true, true),
            Err(_) => return,
        };
        let now = Instant::now();
        let addr = picked.endpoint.addr;
        let mut health = self.health.borrow_mut();
        let h = health.entry(addr).or_default();
        let out = h.until.is_some_and(|u| u > now);
        h.consecutive_5xx = if e5xx { h.consecutive_5xx + 1 } else { 0 };
        h.consecutive_gateway = if gateway {
            h.consecutive_gateway + 1
        } else {
            0
        };
        let tripped = (policy.consecutive_5xx > 0 && h.consecutive_5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway > 0
                && h.consecutive_gateway >= policy.consecutive_gateway);
        if tripped && !out && policy.may_eject(picked.pool, picked.ejected) {
            h.times = h.times.saturating_add(1);
            let length = policy.ejection(h.times);
            h.until = Some(now + length);
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            self.stats.ejections.set(self.stats.ejections.get() + 1);
            tracing::info!(
                endpoint = %picked.endpoint.uid,
                addr = %addr,
                ejection = h.times,
                seconds = length.as_secs_f64(),
                "outlier detection ejected an endpoint"
            );
        } else if !e5xx && !gateway && h.until.is_none_or(|u| now > u + policy.base_ejection) {
            // Healthy again for a base ejection time since its last one: forgotten, so the
            // map holds only endpoints with recent trouble.
            health.remove(&addr);
        }
    }

    /// An attempt over HTTP/1.1: a pooled or new connection to the endpoint, the request,
    /// the response head. The connection goes back to the endpoint's pool when the
    /// response body ends.
    async fn send_h1(
        &self,
        picked: &Picked,
        active: Active,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Reached), SendError> {
        let endpoint = &picked.endpoint;
        let mut conn = self.h1_conn(endpoint, picked.limits.as_ref()).await?;
        conn.uses = conn.uses.saturating_add(1);
        let resp = conn.sender.send_request(req).await.map_err(send_failed)?;
        let reached = Reached {
            endpoint: endpoint.clone(),
            local: conn.local,
        };
        let idle = self.idle.clone();
        let kept = endpoint.clone();
        let policy = picked.limits.clone();
        let resp = resp.map(move |body| {
            Body::new(ReturnOnEnd {
                body,
                conn: Some(conn),
                key: Some(kept),
                idle,
                policy,
                active: Some(active),
            })
        });
        Ok((resp, reached))
    }

    /// A connection to `endpoint` ready for a request: an idle one; else a new one, if
    /// the Service is within its `maxConnections` (or this core has none to the endpoint,
    /// Envoy's rule); else the next of this core's to come free, waited for as one of the
    /// Service's pending requests. A request waiting for its new connection to be set up is
    /// pending too, as in Envoy.
    async fn h1_conn(
        &self,
        endpoint: &Endpoint,
        limits: Option<&Arc<Limits>>,
    ) -> Result<Conn, SendError> {
        let default = PoolPolicy::default();
        let policy = limits.map_or(&default, |l| &l.policy);
        loop {
            let idle = self.idle.borrow_mut().take(endpoint, policy);
            if let Some(mut c) = idle {
                // A kept connection finishes its previous exchange before it takes
                // another; one the endpoint closed meanwhile is dropped.
                if c.sender.ready().await.is_ok() {
                    return Ok(c);
                }
                continue;
            }
            let Some(l) = limits else {
                return Box::pin(self.open_h1(endpoint, policy.connect_timeout, None)).await;
            };
            let _pending = l
                .pending
                .try_enter(l.policy.max_pending)
                .ok_or(SendError::Overflow)?;
            let slot = match l.connections.try_enter(l.policy.max_connections) {
                Some(slot) => slot,
                None if self.idle.borrow().open(endpoint) == 0 => l.connections.enter(),
                None => {
                    let rx = self.idle.borrow_mut().wait(endpoint);
                    if let Ok(Some(mut c)) = rx.await
                        && c.sender.ready().await.is_ok()
                    {
                        return Ok(c);
                    }
                    // A connection closed (or the one handed over had): look again.
                    continue;
                }
            };
            return Box::pin(self.open_h1(endpoint, l.policy.connect_timeout, Some(slot))).await;
        }
    }

    /// A new HTTP/1.1 connection to `endpoint`, counted open on this core (and in the
    /// Service's connections, by `slot`) until it closes. Callers box it: dialling is rare
    /// (connections are pooled), and its future inline would grow every request's.
    async fn open_h1(
        &self,
        endpoint: &Endpoint,
        connect_timeout: Duration,
        slot: Option<Slot>,
    ) -> Result<Conn, SendError> {
        let io = self.connect(endpoint, connect_timeout).await?;
        let local = U::local_addr(&io);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(handshake_failed)?;
        self.idle.borrow_mut().opened(endpoint);
        let pool = self.idle.clone();
        let key = endpoint.clone();
        runtime::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP connection ended");
            }
            drop(slot);
            pool.borrow_mut().closed(&key);
        })
        .detach();
        Ok(Conn {
            sender,
            uses: 0,
            opened: Instant::now(),
            local,
        })
    }

    /// A byte stream to `endpoint`, within `timeout` (the rule's `connectTimeout`, else
    /// Istio's 10 s).
    pub(super) async fn connect(
        &self,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<U::Io, SendError> {
        match runtime::time::timeout(timeout, self.upstreams.connect(endpoint)).await {
            Ok(io) => io.map_err(SendError::Upstream),
            Err(_) => Err(SendError::Upstream(UpstreamError::Connect(format!(
                "no connection to {} within {timeout:?}",
                endpoint.addr
            )))),
        }
    }

    /// One attempt over HTTP/2 (gRPC): one multiplexed connection per endpoint on a core,
    /// opened on first use and replaced when it closes or has carried its
    /// `maxRequestsPerConnection` or lived its `maxConnectionDuration`. The endpoint is
    /// still picked per request, so a client's streams spread over the Service.
    async fn send_h2(
        &self,
        picked: &Picked,
        active: Active,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Reached), SendError> {
        let endpoint = &picked.endpoint;
        let default = PoolPolicy::default();
        let policy = picked.limits.as_ref().map_or(&default, |l| &l.policy);
        let live = {
            let mut h2 = self.h2.borrow_mut();
            match h2.get_mut(endpoint) {
                Some(c) if !c.sender.is_closed() && policy.reusable(c.uses, c.opened) => {
                    c.uses += 1;
                    Some((c.sender.clone(), c.local))
                }
                _ => None,
            }
        };
        let (mut sender, local) = match live {
            Some(s) => s,
            None => {
                let slot = picked.limits.as_ref().map(|l| {
                    l.connections
                        .try_enter(l.policy.max_connections)
                        // One connection per endpoint and core at least (Envoy's rule).
                        .unwrap_or_else(|| l.connections.enter())
                });
                // Boxed, as `open_h1`: the dial and the handshake are rare, and inline they
                // would grow every request's future.
                let (s, conn, local) = Box::pin(async {
                    let io = self.connect(endpoint, policy.connect_timeout).await?;
                    let local = U::local_addr(&io);
                    hyper::client::conn::http2::Builder::new(LocalExec)
                        .max_header_list_size(MAX_HEADER_BYTES as u32)
                        .handshake::<_, Body>(TokioIo::new(io))
                        .await
                        .map(|(s, conn)| (s, conn, local))
                        .map_err(handshake_failed)
                })
                .await?;
                runtime::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                    drop(slot);
                })
                .detach();
                let mut h2 = self.h2.borrow_mut();
                // Closed connections of endpoints no longer picked go when another opens.
                h2.retain(|_, c| !c.sender.is_closed());
                h2.insert(
                    endpoint.clone(),
                    H2Conn {
                        sender: s.clone(),
                        uses: 1,
                        opened: Instant::now(),
                        local,
                    },
                );
                (s, local)
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| SendError::Reset(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(send_failed)?;
        Ok((
            resp.map(|body| {
                Body::new(Holding {
                    body,
                    _active: active,
                })
            }),
            Reached {
                endpoint: endpoint.clone(),
                local,
            },
        ))
    }
}

/// An exchange that failed after its connection was had. A "user" error is the request
/// body's: the client sent a broken body (a bad chunk), which is the client's fault, not
/// the backend's; anything else is a reset.
fn send_failed(e: hyper::Error) -> SendError {
    if e.is_user() {
        SendError::ClientBody(e.to_string())
    } else if refused_stream(&e) {
        SendError::Refused(e.to_string())
    } else {
        SendError::Reset(e.to_string())
    }
}

/// Whether an HTTP/2 backend refused the stream (`REFUSED_STREAM`, RFC 9113 §8.7: the
/// request was not processed).
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = c.source();
    }
    false
}

/// An upstream HTTP handshake that failed: the endpoint could not be reached as HTTP
/// (retried on `connect-failure`).
pub(super) fn handshake_failed(e: hyper::Error) -> SendError {
    SendError::Upstream(UpstreamError::Connect(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// istiod's names (pilot's `BuildSubsetKey` with the waypoint's directions).
    #[test]
    fn clusters_are_named_as_istiod_names_them_in_a_waypoint() {
        let host = "reviews.demo.svc.cluster.local";
        assert_eq!(
            cluster_name(9080, None, host, true),
            "inbound-vip|9080|http|reviews.demo.svc.cluster.local"
        );
        assert_eq!(
            cluster_name(9080, Some("v2"), host, true),
            "inbound-vip|9080|http/v2|reviews.demo.svc.cluster.local"
        );
        assert_eq!(
            cluster_name(9080, None, host, false),
            "outbound|9080||reviews.demo.svc.cluster.local"
        );
        assert_eq!(
            cluster_name(9080, Some("v2"), host, false),
            "outbound|9080|v2|reviews.demo.svc.cluster.local"
        );
    }
}
