//! The upstream side of a core's waypoint: the endpoint each attempt goes to (picked per
//! request, by the caller's balancing, with this core's requests in flight and outlier
//! ejections), the connections kept per endpoint (HTTP/1.1 idle lists, one HTTP/2
//! connection each), and outlier detection's judgement of every answer.
//!
//! Invariants: a request is counted in flight to its endpoint from the pick until its
//! response body is done with; a connection carries requests for the endpoint it was
//! opened to only; the per-endpoint maps hold only endpoints in use or with recent
//! trouble.

use super::*;

/// What a core knows of an endpoint when it picks one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Host {
    /// Requests in flight to it (least-request reads this).
    pub load: u32,
    /// Ejected by outlier detection, for now.
    pub ejected: bool,
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

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)?;
        if let Some(s) = &self.subset {
            write!(f, " (subset {s})")?;
        }
        Ok(())
    }
}

/// Idle HTTP/1.1 connections, per endpoint.
pub(super) type Idle = Rc<RefCell<HashMap<Endpoint, Vec<SendRequest<Body>>>>>;

/// Requests in flight per endpoint on this core (least-request reads it). An endpoint with
/// none has no entry, so the map holds at most the endpoints in use.
pub(super) type Load = Rc<RefCell<HashMap<SocketAddr, u32>>>;

/// One request in flight to an endpoint, from the pick until its response body is done
/// with (or the attempt fails).
pub(super) struct Active {
    load: Load,
    addr: SocketAddr,
}

impl Active {
    pub(super) fn enter(load: &Load, addr: SocketAddr) -> Active {
        *load.borrow_mut().entry(addr).or_insert(0) += 1;
        Active {
            load: load.clone(),
            addr,
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
    /// The endpoint for one attempt at `to`, counted in flight until the guard drops.
    pub(super) fn pick(&self, to: &Upstream) -> Result<(Picked, Active), SendError> {
        let now = Instant::now();
        let picked = {
            let load = self.load.borrow();
            let health = self.health.borrow();
            self.upstreams
                .pick(to, &|addr| Host {
                    load: load.get(&addr).copied().unwrap_or(0),
                    ejected: health
                        .get(&addr)
                        .is_some_and(|h| h.until.is_some_and(|u| u > now)),
                })
                .map_err(SendError::Upstream)?
        };
        let active = Active::enter(&self.load, picked.endpoint.addr);
        Ok((picked, active))
    }

    /// One attempt: an endpoint picked for this request, the request sent to it, the
    /// response head; the answer counts for outlier detection.
    pub(super) async fn send(
        &self,
        to: &Upstream,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Endpoint), SendError> {
        let (picked, active) = self.pick(to)?;
        let result = if req.version() == Version::HTTP_2 {
            self.send_h2(picked.endpoint.clone(), active, req).await
        } else {
            self.send_h1(picked.endpoint.clone(), active, req).await
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
        result: &Result<(Response<Body>, Endpoint), SendError>,
    ) {
        let (e5xx, gateway) = match result {
            Ok((resp, _)) => {
                let s = resp.status().as_u16();
                (s >= 500, matches!(s, 502..=504))
            }
            Err(SendError::Upstream(UpstreamError::Connect(_)) | SendError::Reset(_)) => {
                (true, true)
            }
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
        endpoint: Endpoint,
        active: Active,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Endpoint), SendError> {
        let mut sender = None;
        while let Some(mut s) = self.pooled(&endpoint) {
            // A kept connection finishes its previous exchange before it takes another;
            // one the endpoint closed meanwhile is dropped.
            if s.ready().await.is_ok() {
                sender = Some(s);
                break;
            }
        }
        let mut sender = match sender {
            Some(s) => s,
            None => {
                let io = self
                    .upstreams
                    .connect(&endpoint)
                    .await
                    .map_err(SendError::Upstream)?;
                let (s, conn) = hyper::client::conn::http1::Builder::new()
                    .max_buf_size(MAX_HEADER_BYTES.max(8192))
                    .handshake::<_, Body>(TokioIo::new(io))
                    .await
                    .map_err(handshake_failed)?;
                drive(conn, "upstream HTTP connection ended");
                s
            }
        };
        let resp = sender.send_request(req).await.map_err(|e| {
            // A "user" error is the request body's: the client sent a broken body (a bad
            // chunk), which is the client's fault, not the backend's.
            if e.is_user() {
                SendError::ClientBody(e.to_string())
            } else {
                SendError::Reset(e.to_string())
            }
        })?;
        let idle = self.idle.clone();
        let kept = endpoint.clone();
        let resp = resp.map(move |body| {
            Body::new(ReturnOnEnd {
                body,
                sender: Some(sender),
                key: Some(kept),
                idle,
                active: Some(active),
            })
        });
        Ok((resp, endpoint))
    }

    /// One attempt over HTTP/2 (gRPC): one multiplexed connection per endpoint on a core,
    /// opened on first use and replaced when it closes. The endpoint is still picked per
    /// request, so a client's streams spread over the Service.
    async fn send_h2(
        &self,
        endpoint: Endpoint,
        active: Active,
        req: Request<Body>,
    ) -> Result<(Response<Body>, Endpoint), SendError> {
        let live = self
            .h2
            .borrow()
            .get(&endpoint)
            .filter(|s| !s.is_closed())
            .cloned();
        let mut sender = match live {
            Some(s) => s,
            None => {
                let io = self
                    .upstreams
                    .connect(&endpoint)
                    .await
                    .map_err(SendError::Upstream)?;
                let (s, conn) = hyper::client::conn::http2::Builder::new(LocalExec)
                    .max_header_list_size(MAX_HEADER_BYTES as u32)
                    .handshake::<_, Body>(TokioIo::new(io))
                    .await
                    .map_err(handshake_failed)?;
                drive(conn, "upstream HTTP/2 connection ended");
                let mut h2 = self.h2.borrow_mut();
                // Closed connections of endpoints no longer picked go when another opens.
                h2.retain(|_, s| !s.is_closed());
                h2.insert(endpoint.clone(), s.clone());
                s
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| SendError::Reset(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| {
            if e.is_user() {
                SendError::ClientBody(e.to_string())
            } else {
                SendError::Reset(e.to_string())
            }
        })?;
        Ok((
            resp.map(|body| {
                Body::new(Holding {
                    body,
                    _active: active,
                })
            }),
            endpoint,
        ))
    }

    fn pooled(&self, endpoint: &Endpoint) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(endpoint)?;
        let mut found = None;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                found = Some(s);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(endpoint);
        }
        found
    }
}

/// An upstream HTTP handshake that failed: the endpoint could not be reached as HTTP
/// (retried on `connect-failure`).
pub(super) fn handshake_failed(e: hyper::Error) -> SendError {
    SendError::Upstream(UpstreamError::Connect(e.to_string()))
}

/// Runs an upstream connection's I/O on this core until it ends; how it ended is only
/// logged (`what`), since its requests have their own errors.
fn drive<F>(conn: F, what: &'static str)
where
    F: Future<Output = Result<(), hyper::Error>> + 'static,
{
    runtime::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{what}");
        }
    })
    .detach();
}
