//! The request side: what every attempt repeats (`Head`), the body held for retries and
//! mirrors, header hygiene (hop-by-hop, path normalization), local answers, and why an
//! attempt failed.

use super::*;

/// The request body for the next attempt.
pub(super) enum ReqBody {
    /// Held (small, with a retry or mirror): every attempt gets a copy.
    Replay(Bytes),
    /// Of unknown length, with a retry: streamed and kept while it fits, so a retry can
    /// start over ([`Tee`]).
    Tee(Tee),
    /// Streaming: one attempt only.
    Stream(Option<Counted>),
}

impl ReqBody {
    pub(super) fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Replay(b) => Some(Body::full(b.clone())),
            ReqBody::Tee(t) => Some(t.attempt()),
            ReqBody::Stream(s) => s.take().map(Body::new),
        }
    }

    /// Whether another attempt can have the whole body.
    pub(super) fn replayable(&self) -> bool {
        match self {
            ReqBody::Replay(_) => true,
            ReqBody::Tee(t) => t.replayable(),
            ReqBody::Stream(_) => false,
        }
    }
}

/// Whether a body known by its size hint fits [`REPLAY_LIMIT`].
pub(super) fn fits(hint: &SizeHint) -> bool {
    hint.upper().is_some_and(|u| u <= REPLAY_LIMIT)
}

pub(super) struct Limited;

impl Limited {
    pub(super) async fn collect(body: Inbound) -> Result<Bytes, String> {
        let limited = http_body_util::Limited::new(body, REPLAY_LIMIT as usize);
        limited
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string())
    }
}

/// The parts of a request every attempt repeats (`Parts` is not `Clone`: its extensions).
#[derive(Clone)]
pub(super) struct Head {
    pub(super) method: http::Method,
    pub(super) path: http::uri::PathAndQuery,
    pub(super) headers: HeaderMap,
    /// gRPC (`content-type: application/grpc*`): it goes to the backend over HTTP/2, with
    /// `te: trailers`, because gRPC needs HTTP/2 and its trailers end to end.
    pub(super) grpc: bool,
}

impl Head {
    /// HTTP/1.1 to the backend (HTTP/2 for gRPC): origin-form target, `Host` from the
    /// authority (HTTP/2's `:authority`), hop-by-hop headers dropped.
    pub(super) fn of(parts: &Parts) -> Head {
        let grpc = is_grpc(&parts.headers);
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        if grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if !headers.contains_key(header::HOST)
            && let Some(a) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            headers.insert(header::HOST, v);
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        Head {
            method: parts.method.clone(),
            path,
            headers,
            grpc,
        }
    }

    /// The WebSocket handshake goes on with its upgrade headers, which [`Head::of`] drops as
    /// hop-by-hop.
    pub(super) fn websocket(mut self) -> Head {
        self.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        self.headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        self
    }

    /// The mirror's copy: `Host` gets Envoy's `-shadow` suffix, so the mirror can tell.
    pub(super) fn shadow(&self) -> Head {
        let mut h = self.clone();
        if let Some(host) = h.headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
            let shadow = match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("{name}-shadow:{port}")
                }
                _ => format!("{host}-shadow"),
            };
            if let Ok(v) = HeaderValue::from_str(&shadow) {
                h.headers.insert(header::HOST, v);
            }
        }
        h
    }

    pub(super) fn request(&self, body: Option<Body>) -> Request<Body> {
        let body = body.unwrap_or_else(|| Body::full(Bytes::new()));
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        if self.grpc {
            // HTTP/2 takes the authority from the URI (`:authority`), and Host must go.
            let host = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_else(|| "backend".to_string());
            *req.uri_mut() = http::Uri::builder()
                .scheme("http")
                .authority(host.as_str())
                .path_and_query(self.path.clone())
                .build()
                .unwrap_or_else(|_| http::Uri::from(self.path.clone()));
            *req.version_mut() = Version::HTTP_2;
        } else {
            *req.uri_mut() = http::Uri::from(self.path.clone());
            *req.version_mut() = Version::HTTP_11;
        }
        req
    }
}

/// An HTTP/1.1 WebSocket handshake (`Connection: upgrade`, `Upgrade: websocket`), the one
/// upgrade Istio lets through a waypoint by default. Other upgrades (`h2c`) are stripped as
/// hop-by-hop headers and the request goes on as a plain one.
pub(super) fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// `content-type: application/grpc` or `application/grpc+proto` etc.
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Removes dot segments from the request's path before policy, routing and forwarding
/// (Envoy's `normalize_path`, Istio's default): what is checked is what is sent.
pub(super) fn normalize(parts: &mut Parts) {
    let std::borrow::Cow::Owned(path) = crate::route::normalize_path(parts.uri.path()) else {
        return;
    };
    set_path(parts, path);
}

/// Envoy's `x-request-id`: a request that has one keeps it (the waypoint is inside the
/// mesh, where Envoy preserves it); one without gets a random UUID (version 4), which the
/// backend, the access log and the span then share.
pub(super) fn ensure_request_id(parts: &mut Parts, rng: &mut impl rand::Rng) {
    if parts
        .headers
        .get(X_REQUEST_ID)
        .is_some_and(|v| !v.is_empty())
    {
        return;
    }
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[usize::from(byte >> 4)];
        out[j + 1] = HEX[usize::from(byte & 0x0f)];
        j += 2;
    }
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        parts.headers.insert(X_REQUEST_ID, v);
    }
}

/// The request id header (Envoy's `x-request-id`).
pub(super) const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// A rule's `URLRewrite`: the new path (query kept) and `Host`.
pub(super) fn rewrite(parts: &mut Parts, rw: &crate::route::Rewrite) {
    if let Some(p) = &rw.path {
        let path = p.apply(parts.uri.path());
        set_path(parts, path);
    }
    if let Some(host) = &rw.host {
        // `Head::of` takes `Host` over the URI's authority (HTTP/2's `:authority`).
        parts.headers.insert(header::HOST, host.clone());
    }
}

/// Replaces the URI's path, keeping its scheme, authority and query.
fn set_path(parts: &mut Parts, path: String) {
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut builder = http::Uri::builder();
    if let Some(s) = parts.uri.scheme() {
        builder = builder.scheme(s.clone());
    }
    if let Some(a) = parts.uri.authority() {
        builder = builder.authority(a.clone());
    }
    if let Ok(uri) = builder.path_and_query(pq).build() {
        parts.uri = uri;
    }
}

/// Headers that belong to one hop (RFC 9110 §7.6.1), plus those the `Connection` header
/// names. HTTP/2 forbids them; HTTP/1.1 must not forward them.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for h in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(h);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A local answer: `status`, plain text (a gRPC client gets it in gRPC's trailers-only
/// form, [`crate::grpc::trailers_only`]).
pub fn local(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::full(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.extensions_mut().insert(Local {
        text: Arc::from(text),
        grpc_status: None,
    });
    resp
}

/// What a local answer says, riding on the response for a gRPC client's trailers-only
/// form: its text (`grpc-message`) and the gRPC status it gives, when it names one (a
/// fault's `grpcStatus`); otherwise the status its HTTP code stands for.
#[derive(Debug, Clone)]
pub(super) struct Local {
    pub(super) text: Arc<str>,
    pub(super) grpc_status: Option<u8>,
}

/// Why an attempt produced no response.
#[derive(Debug)]
pub(super) enum SendError {
    Upstream(UpstreamError),
    /// The connection broke before the response head.
    Reset(String),
    /// The HTTP/2 backend refused the stream (`REFUSED_STREAM`): it did not process the
    /// request, so another attempt is always safe (Envoy's `refused-stream`).
    Refused(String),
    /// The client's request body could not be read (never retried).
    ClientBody(String),
    Timeout,
    /// The Service's `connectionPool` is full: requests in flight or waiting for a
    /// connection at their limits (never retried, as Envoy's).
    Overflow,
}

impl SendError {
    pub(super) fn retried_by(&self, r: &Retry) -> bool {
        match self {
            SendError::Upstream(UpstreamError::Connect(_)) => r.on_connect_failure,
            SendError::Upstream(UpstreamError::NoEndpoint(_)) => false,
            SendError::Reset(_) => r.on_reset,
            SendError::Refused(_) => r.on_reset || r.on_refused_stream,
            SendError::ClientBody(_) | SendError::Overflow => false,
            // A per-try timeout is worth another try (Envoy retries it on `5xx` and
            // `gateway-error` too, as a 504).
            SendError::Timeout => r.on_5xx || r.on_gateway_error || r.codes.contains(&504),
        }
    }

    pub(super) fn answer(self) -> (Outcome, Response<Body>) {
        match self {
            SendError::Upstream(UpstreamError::NoEndpoint(why)) => {
                tracing::debug!(%why, "no endpoint");
                (
                    Outcome::NoHealthyUpstream,
                    local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                )
            }
            SendError::Upstream(UpstreamError::Connect(why)) => (
                Outcome::ConnectFailure,
                local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {why}"
                    ),
                ),
            ),
            SendError::Refused(why) => (
                Outcome::Reset,
                local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset ({why})"
                    ),
                ),
            ),
            SendError::Reset(why) => (
                Outcome::Reset,
                local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination ({why})"
                    ),
                ),
            ),
            SendError::ClientBody(why) => {
                let mut resp = local(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body could not be read: {why}"),
                );
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                (Outcome::ClientError, resp)
            }
            SendError::Timeout => (
                Outcome::Timeout,
                local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            ),
            SendError::Overflow => {
                // Envoy's circuit breaker answer, and its header saying why.
                let mut resp = local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
                resp.headers_mut()
                    .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                (Outcome::Overflow, resp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn request_ids_are_kept_or_made_as_uuid_v4() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let (mut parts, ()) = http::Request::new(()).into_parts();
        ensure_request_id(&mut parts, &mut rng);
        let made = parts.headers[X_REQUEST_ID].to_str().unwrap().to_string();
        let groups: Vec<&str> = made.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{made}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {made}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{made}"
        );
        assert!(
            made.bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // Kept: a second call, and a client's own.
        ensure_request_id(&mut parts, &mut rng);
        assert_eq!(parts.headers[X_REQUEST_ID], made.as_str());
        parts
            .headers
            .insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        ensure_request_id(&mut parts, &mut rng);
        assert_eq!(parts.headers[X_REQUEST_ID], "abc");
        // An empty one is replaced.
        parts
            .headers
            .insert(X_REQUEST_ID, HeaderValue::from_static(""));
        ensure_request_id(&mut parts, &mut rng);
        assert_eq!(parts.headers[X_REQUEST_ID].len(), 36);
    }
}
