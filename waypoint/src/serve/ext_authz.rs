//! The CUSTOM step's exchange with a provider (AuthorizationPolicy `action: CUSTOM`): the
//! check sent through the waypoint's own upstream path, its answer read (capped), and what
//! it means for the request. What a check carries and what an answer means are
//! `crate::security::ext_authz`'s; which provider to ask is `SecurityTable::custom`'s.

use super::inbound::ReadAhead;
use super::*;
use crate::security::ext_authz::Allowed;

impl<U: Upstreams> Waypoint<U> {
    /// Asks the provider of CUSTOM policy `policy` about the request: `Ok` with what its
    /// answer changes (and whether to route again after), or the answer the client gets
    /// instead, with its outcome and details. A provider the MeshConfig lacks or cannot
    /// use, or whose Service the mesh does not know, refuses (fail closed, as istiod's
    /// deny-all; `failOpen` is for a provider that fails, not for one that is not there).
    /// A provider that asks for the body gets what [`Inbound::read_for_check`] reads of it
    /// (not for a WebSocket handshake, as Envoy's filter buffers no upgrade).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ext_authz(
        &self,
        table: &TelemetryTable,
        provider: &str,
        policy: &str,
        target: &Target,
        parts: &Parts,
        body: &mut Inbound,
        websocket: bool,
    ) -> Result<(Allowed, bool), (Outcome, String, Response<Body>)> {
        use crate::security::ext_authz::{CheckContext, Decision, MAX_ANSWER_BYTES};
        let usable = match table.authz_provider(provider) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(why)) => Err(why.clone()),
            None => Err("is not in the MeshConfig's extensionProviders".to_string()),
        };
        let to = usable.as_ref().ok().map(|p| Upstream {
            service: p.service.clone(),
            subset: None,
            port: p.port,
            hash: None,
        });
        let p = match (usable, &to) {
            (Ok(p), Some(to)) if self.upstreams.cluster_name(to).is_some() => p,
            (usable, _) => {
                let why = usable
                    .err()
                    .unwrap_or_else(|| "names a Service the mesh does not know".to_string());
                tracing::warn!(%policy, provider, %why, "CUSTOM policy: its provider cannot be used; request refused");
                let (ns, name) = policy.split_once('/').unwrap_or(("", policy));
                return Err((
                    Outcome::Denied,
                    format!("rbac_access_denied_matched_policy[ns[{ns}]-policy[{name}]]"),
                    local(StatusCode::FORBIDDEN, "RBAC: access denied"),
                ));
            }
        };
        let to = to.expect("a usable provider has its Service");
        let ctx = CheckContext {
            principal: target.peer.principal.as_deref(),
            source: target.peer.addr,
            destination: target.local,
        };
        let read = match p.body {
            Some(limit) if !websocket => match body.read_for_check(limit).await {
                Ok(read) => read,
                // Envoy's buffer limit: 413 before the provider is asked, `failOpen` or not.
                Err(ReadAhead::TooLarge) => {
                    return Err((
                        Outcome::TooLarge,
                        Outcome::TooLarge.details().into(),
                        local(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
                    ));
                }
                Err(ReadAhead::Failed(e)) => {
                    return Err((
                        Outcome::ClientError,
                        Outcome::ClientError.details().into(),
                        local(
                            StatusCode::BAD_REQUEST,
                            &format!("reading the request body: {e}"),
                        ),
                    ));
                }
            },
            _ => None,
        };
        let check = p.check(parts, &ctx, read.as_ref());
        // A check gRPC's default 4 MiB message limit would refuse (a body near the limit
        // with a long head): 413 here, not the provider's error, which `failOpen` would
        // let through.
        if p.grpc && check.body().len() > GRPC_MAX_MESSAGE + 5 {
            return Err((
                Outcome::TooLarge,
                Outcome::TooLarge.details().into(),
                local(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
            ));
        }
        let check = check.map(Body::full);
        let exchange = async {
            let mut tried = Tried::new();
            let (resp, _) = self
                .send(&to, check, &mut tried)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (head, body) = resp.into_parts();
            let (body, trailers) = read_capped(body, MAX_ANSWER_BYTES).await?;
            Ok::<_, String>((head, body, trailers))
        };
        let decision = match runtime::time::timeout(p.timeout, exchange).await {
            Err(_) => Decision::Error(format!("no answer within {:?}", p.timeout)),
            Ok(Err(e)) => Decision::Error(e),
            Ok(Ok((head, body, trailers))) => {
                p.answer(head.status, &head.headers, body, trailers.as_ref())
            }
        };
        match decision {
            Decision::Allow(allowed) => Ok((allowed, p.clear_route_cache)),
            Decision::Deny {
                status,
                headers,
                body,
            } => Err((
                Outcome::ExtAuthzDenied,
                "ext_authz_denied".into(),
                provider_page(status, headers, body),
            )),
            Decision::Failed {
                status,
                headers,
                body,
            } => {
                tracing::debug!(provider = %p.name, ?status, fail_open = p.fail_open, "ext_authz provider answered with an error");
                if p.fail_open {
                    return Ok((Allowed::default(), false));
                }
                Err((
                    Outcome::ExtAuthzError,
                    "ext_authz_error".into(),
                    provider_page(status.unwrap_or(p.status_on_error), headers, body),
                ))
            }
            Decision::Error(why) => {
                tracing::debug!(provider = %p.name, %why, fail_open = p.fail_open, "ext_authz check failed");
                if p.fail_open {
                    return Ok((Allowed::default(), false));
                }
                // Envoy's local reply: the status, no body (gRPC's form for a gRPC client).
                Err((
                    Outcome::ExtAuthzError,
                    "ext_authz_error".into(),
                    provider_page(p.status_on_error, HeaderMap::new(), Bytes::new()),
                ))
            }
        }
    }
}

/// The client's answer when the provider refuses or fails: its status, headers and body;
/// in gRPC's form for a gRPC client (the body as its message), as Envoy's local reply.
fn provider_page(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let text: Arc<str> = String::from_utf8_lossy(&body[..body.len().min(1024)]).into();
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp.extensions_mut().insert(Local {
        text,
        grpc_status: None,
    });
    resp
}

/// gRPC's default largest message, which most `envoyExtAuthzGrpc` servers hold to.
const GRPC_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Up to `limit` bytes of `body` and its trailers; a longer body is cut there (the rest is
/// not read), as Envoy cuts a denial's page, and then has no trailers.
async fn read_capped(mut body: Body, limit: usize) -> Result<(Bytes, Option<HeaderMap>), String> {
    let mut data = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        match frame.into_data() {
            Ok(chunk) => {
                let room = limit - data.len();
                data.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() >= room {
                    return Ok((data.freeze(), None));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    return Ok((data.freeze(), Some(t)));
                }
            }
        }
    }
    Ok((data.freeze(), None))
}
