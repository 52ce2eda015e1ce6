//! External authorization servers for the waypoint's CUSTOM policies, as Istio's sample
//! `ext-authz` answers: over HTTP ([`spawn_ext_authz`]) and over gRPC, Envoy's own
//! generated `Authorization` service ([`spawn_grpc_ext_authz`]).

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::QueryParameter;

use crate::l7::{header, read_request};

/// A check an [`ExtAuthz`] server received: method, path and headers (lower-case names).
pub type Check = (String, String, Vec<(String, String)>);

/// A running external authorization server, as Istio's sample `ext-authz` (HTTP).
pub struct ExtAuthz {
    /// Every check received, in order.
    pub checks: Arc<Mutex<Vec<Check>>>,
}

/// Starts an external authorization server on `addr` that answers each check as Istio's
/// sample does: `x-ext-authz: allow` allows (200, `x-ext-authz-check-result: allowed`, a
/// `set-cookie`, and `x-envoy-auth-headers-to-remove: x-remove-me`); anything else is
/// denied (403, `x-ext-authz-check-result: denied`, `x-private: 1`, a text body). A path
/// with `/fail` gets a 503 (the server failing). A check whose body says `deny-by-body` is
/// denied too; an allowing answer says what the check carried of the body
/// (`x-ext-authz-body: LEN`, `x-ext-authz-body-text` for a short one, and
/// `x-ext-authz-partial`: the check's `x-envoy-auth-partial-body`, or `-`).
pub fn spawn_ext_authz(addr: SocketAddr) -> Result<ExtAuthz> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding ext-authz {addr}"))?;
    let checks: Arc<Mutex<Vec<Check>>> = Arc::default();
    let seen = checks.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let seen = seen.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut w = s.try_clone()?;
                let mut r = BufReader::new(s);
                while let Some(req) = read_request(&mut r)? {
                    let by_body = req.body_head.windows(12).any(|w| w == b"deny-by-body");
                    let allow = header(&req.headers, "x-ext-authz") == Some("allow") && !by_body;
                    let response = if req.path.contains("/fail") {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_string()
                    } else if allow {
                        let text = if req.body_head.len() <= 64 {
                            String::from_utf8_lossy(&req.body_head).into_owned()
                        } else {
                            "(long)".into()
                        };
                        format!(
                            "HTTP/1.1 200 OK\r\nx-ext-authz-check-result: allowed\r\nset-cookie: authz=1\r\nx-private: 1\r\nx-envoy-auth-headers-to-remove: x-remove-me\r\nx-ext-authz-body: {}\r\nx-ext-authz-body-text: {text}\r\nx-ext-authz-partial: {}\r\ncontent-length: 0\r\n\r\n",
                            req.body_head.len(),
                            header(&req.headers, "x-envoy-auth-partial-body").unwrap_or("-"),
                        )
                    } else {
                        let body = "denied by ext_authz for not found header `x-ext-authz: allow` in the request";
                        format!(
                            "HTTP/1.1 403 Forbidden\r\nx-ext-authz-check-result: denied\r\nx-private: 1\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    seen.lock()
                        .unwrap()
                        .push((req.method, req.path, req.headers));
                    w.write_all(response.as_bytes())?;
                }
                Ok(())
            });
        }
    });
    Ok(ExtAuthz { checks })
}

/// What a gRPC [`GrpcExtAuthz`] server saw of each check: the request's method, path and
/// headers, and the source's principal and address.
#[derive(Debug, Clone)]
pub struct GrpcCheck {
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: HashMap<String, String>,
    pub source_principal: String,
    pub source_address: String,
    pub destination_address: String,
    /// The check's `body` and `raw_body`.
    pub body: String,
    pub raw_body: Vec<u8>,
}

/// A running gRPC external authorization server.
pub struct GrpcExtAuthz {
    pub checks: Arc<Mutex<Vec<GrpcCheck>>>,
}

struct Authz {
    checks: Arc<Mutex<Vec<GrpcCheck>>>,
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = request.into_inner().attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let address =
            |p: &Option<envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer>| {
                use envoy_types::pb::envoy::config::core::v3::address::Address as A;
                use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
                match p
                    .as_ref()
                    .and_then(|p| p.address.as_ref())
                    .and_then(|a| a.address.as_ref())
                {
                    Some(A::SocketAddress(s)) => match s.port_specifier {
                        Some(PortSpecifier::PortValue(port)) => format!("{}:{port}", s.address),
                        _ => s.address.clone(),
                    },
                    _ => String::new(),
                }
            };
        let check = GrpcCheck {
            method: http.method.clone(),
            path: http.path.clone(),
            host: http.host.clone(),
            headers: http.headers.clone(),
            source_principal: attrs
                .source
                .as_ref()
                .map(|p| p.principal.clone())
                .unwrap_or_default(),
            source_address: address(&attrs.source),
            destination_address: address(&attrs.destination),
            body: http.body.clone(),
            raw_body: http.raw_body.to_vec(),
        };
        self.checks.lock().unwrap().push(check);
        if http.path.contains("/fail") {
            return Err(tonic::Status::unavailable("the policy engine is down"));
        }
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let allow = http.headers.get("x-ext-authz").map(String::as_str) == Some("allow");
        let resp = if http.path.contains("/error-page") {
            CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status {
                    code: 14,
                    message: "warming up".into(),
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::ErrorResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 503 }),
                    headers: vec![header("retry-after", "5")],
                    body: "the policy engine is warming up".into(),
                })),
                ..Default::default()
            }
        } else if allow {
            CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-ext-authz-check-result", "allowed")],
                    headers_to_remove: vec!["x-remove-me".into()],
                    response_headers_to_add: vec![header("x-ext-authz-checked", "grpc")],
                    query_parameters_to_set: vec![
                        QueryParameter {
                            key: "authz".into(),
                            value: "ok by grpc".into(),
                        },
                        // Encoded as Envoy expects a provider to send it: passed on as is.
                        QueryParameter {
                            key: "next".into(),
                            value: "%2Fhome".into(),
                        },
                    ],
                    query_parameters_to_remove: vec!["secret".into()],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status {
                    code: 7,
                    message: "denied".into(),
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![header("x-ext-authz-check-result", "denied")],
                    body: "denied by the gRPC ext_authz".into(),
                })),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

/// Starts a gRPC external authorization server on `addr` (h2c), Envoy's generated
/// `envoy.service.auth.v3.Authorization`: `x-ext-authz: allow` allows (sets
/// `x-ext-authz-check-result: allowed` on the request, removes `x-remove-me`, adds
/// `x-ext-authz-checked: grpc` to the response, sets query parameters `authz=ok by grpc` and
/// `next=%2Fhome` (encoded) and
/// removes `secret`); anything else is denied with 401, a header and a body; a path with
/// `/fail` fails the call (UNAVAILABLE), one with `/error-page` answers UNAVAILABLE with an
/// `error_response` (503, `retry-after: 5`, a body). Runs for the test's life.
pub fn spawn_grpc_ext_authz(addr: SocketAddr) -> Result<GrpcExtAuthz> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding the gRPC ext-authz {addr}"))?;
    listener.set_nonblocking(true)?;
    let checks: Arc<Mutex<Vec<GrpcCheck>>> = Arc::default();
    let service = AuthorizationServer::new(Authz {
        checks: checks.clone(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("grpc-ext-authz".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .serve_with_incoming(service, incoming)
                    .await;
            });
        })?;
    Ok(GrpcExtAuthz { checks })
}
