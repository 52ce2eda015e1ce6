//! External authorization: an AuthorizationPolicy with `action: CUSTOM` hands the request
//! to a MeshConfig provider (`envoyExtAuthzHttp` or `envoyExtAuthzGrpc`), as Envoy's
//! `ext_authz` filter does in an Istio waypoint. This module owns the provider's checked config, the check request made
//! from a client request, and what the provider's answer means; the waypoint sends the
//! check through its own upstream path (the provider is a Service of the mesh).
//!
//! The exchange, as Envoy's HTTP `ext_authz` client has it:
//! - the check request carries the client's method, its path behind `pathPrefix`, its
//!   `:authority`, `Authorization`, the headers `includeRequestHeadersInCheck` names (exact
//!   names, `prefix*` or `*suffix`, without case), the fixed `includeAdditionalHeadersInCheck`,
//!   and no body (`content-length: 0`) unless `includeRequestBodyInCheck` asks for one
//!   ([`BodyInCheck`]);
//! - `200` allows: the headers `headersToUpstreamOnAllow` names are set on the request, the
//!   ones the answer lists in `x-envoy-auth-headers-to-remove` are removed from it, and the
//!   ones `headersToDownstreamOnAllow` names go on the client's response;
//! - a `5xx`, no answer, or none within `timeout` is an error: the client gets
//!   `statusOnError` (403 by default) with no body, unless `failOpen` lets the request on;
//! - any other status denies: the client gets that status, the answer's body, and its
//!   headers (only those `headersToDownstreamOnDeny` names, when it names any, plus the
//!   ones Envoy always keeps: `WWW-Authenticate`, `Location`).
//!   `x-envoy-auth-headers-to-remove` and the framing never go to the client.
//!
//! Over gRPC (`envoy.service.auth.v3.Authorization/Check`, messages in [`pb`]): the check
//! carries the request's method, path, host, headers (pseudo-headers included), id and
//! size, the tunnel peer's identity and address and the address it called, and the body as
//! `body` or, with `packAsBytes`, `raw_body`, when it is asked for; an `OK` status
//! allows, with `ok_response`'s headers set (or appended) on the request, its
//! `headers_to_remove` removed, its `query_parameters_to_set`/`_to_remove` applied to the
//! query ([`edit_query`]) and its `response_headers_to_add` on the client's response;
//! any other status denies with `denied_response` (its status, 403 by default, headers and
//! body), or with `error_response` is an error whose answer the provider gives (its status,
//! else `statusOnError`; `failOpen` lets the request on); a gRPC error, no answer or a late
//! one is an error, as over HTTP.
//!
//! A provider the waypoint cannot use (a bad field, a service that is not a Service of the
//! mesh, a body limit of 0) is kept by name with why: the policies that name
//! it deny what they match, as istiod's "deny all due to bad CUSTOM action" does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, StatusCode};
use serde::Deserialize;

use crate::route::{RouteError, ServiceRef, err};

/// Istio's default `timeout` for a check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Largest answer body read from a provider (a denial's page); more is an error.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The header in an allowing answer that names request headers to remove.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The header a check with a body carries: `true` when the body is cut (Envoy's). A
/// client's own is never passed on in a check, where it would lie about the body.
pub const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// Largest `maxRequestBytes` the waypoint holds for one request's check; a larger one is
/// held to it (with a warning). Envoy takes any `uint32`; a waypoint that buffered 4 GiB
/// per request would give each client a lever on its memory. gRPC's default largest
/// message is 4 MiB, which most `envoyExtAuthzGrpc` servers hold to: this leaves room for
/// the request's head in the check (a gRPC check longer than 4 MiB all the same, from a
/// long head, is answered 413 rather than sent, where the provider's error would let
/// `failOpen` through). A
/// request's check holds about three times this at most: the frames read, the body joined,
/// the check encoded.
pub const MAX_BODY_IN_CHECK: u32 = 4 * 1024 * 1024 - 64 * 1024;

/// MeshConfig `includeRequestBodyInCheck`: the request body goes in the check.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBodySpec {
    #[serde(default)]
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// How much of the request body a check carries, checked. As Envoy's `ext_authz`
/// `with_request_body`: the waypoint reads the body until `max` bytes are in or it ends;
/// a longer body is refused with 413 (before the provider is asked, whatever `failOpen`
/// says) unless `allow_partial`, when its first `max` bytes go, marked partial. The body
/// read is sent on to the backend whole, as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyInCheck {
    pub max: usize,
    pub allow_partial: bool,
    /// gRPC: the body goes as `raw_body` (bytes), not `body` (a string). Envoy ignores it
    /// over HTTP.
    pub raw: bool,
}

/// The body a check carries: the first bytes of the request's, and whether that is less
/// than all of it (or it may be: the body had not ended when the limit was reached).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckBody {
    pub bytes: Bytes,
    pub partial: bool,
}

/// `envoyExtAuthzHttp` in the MeshConfig's `extensionProviders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzHttpSpec {
    /// `name.namespace.svc.cluster.local`, optionally behind `namespace/`.
    pub service: String,
    pub port: u32,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    /// An HTTP status, as a string (`"500"`).
    #[serde(default)]
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// The older name of `includeRequestHeadersInCheck`, used when that is empty.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBodySpec>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    /// Route the request again after the provider's header edits.
    #[serde(default)]
    pub clear_route_cache: bool,
}

/// A header name pattern (Istio's: exact, `prefix*` or `*suffix`, case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl NamePattern {
    fn new(s: &str, at: &str) -> Result<NamePattern, RouteError> {
        let lower = s.to_ascii_lowercase();
        if lower.is_empty() || lower == "*" {
            return Err(err(
                at,
                format!(
                    "{s:?}: name a header, a `prefix*` or a `*suffix` (a single `*` is not allowed)"
                ),
            ));
        }
        Ok(if let Some(suffix) = lower.strip_prefix('*') {
            NamePattern::Suffix(suffix.to_string())
        } else if let Some(prefix) = lower.strip_suffix('*') {
            NamePattern::Prefix(prefix.to_string())
        } else {
            NamePattern::Exact(lower)
        })
    }

    /// `name` is lower case (an `http::HeaderName`).
    fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(e) => name == e,
            NamePattern::Prefix(p) => name.starts_with(p.as_str()),
            NamePattern::Suffix(s) => name.ends_with(s.as_str()),
        }
    }
}

fn patterns(list: &[String], at: &str) -> Result<Vec<NamePattern>, RouteError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| NamePattern::new(s, &format!("{at}[{i}]")))
        .collect()
}

/// Headers a provider never sets, on the request or the response, whatever the lists say:
/// the message's framing and the connection's (a provider's `content-length` on the
/// request would change where the backend thinks it ends), and the request's `Host`.
fn framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
    )
}

/// The client's authority as it sent it (port included): `Host`, else the URI's (HTTP/2).
fn authority(parts: &Parts) -> Option<HeaderValue> {
    parts.headers.get(header::HOST).cloned().or_else(|| {
        let a = parts.uri.authority()?;
        HeaderValue::from_str(a.as_str()).ok()
    })
}

fn any_matches(list: &[NamePattern], name: &str) -> bool {
    list.iter().any(|p| p.matches(name))
}

/// A checked `envoyExtAuthzHttp` or `envoyExtAuthzGrpc` provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthz {
    /// The provider's name (for logs).
    pub name: Arc<str>,
    /// Asked over gRPC (`Authorization/Check`), else over HTTP. The header lists and the
    /// path prefix are the HTTP flavour's (a gRPC check carries every header).
    pub grpc: bool,
    /// The Service the checks go to, on `port` (a Service port).
    pub service: ServiceRef,
    /// Its hostname, for the check's `:authority`.
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    path_prefix: String,
    pub fail_open: bool,
    pub status_on_error: StatusCode,
    /// The route is chosen again after the provider's edits (else before them, as Envoy
    /// has chosen it when its ext_authz filter runs).
    pub clear_route_cache: bool,
    /// The request body in the check, and how much of it.
    pub body: Option<BodyInCheck>,
    include: Vec<NamePattern>,
    additional: Vec<(HeaderName, HeaderValue)>,
    upstream_on_allow: Vec<NamePattern>,
    downstream_on_deny: Vec<NamePattern>,
    downstream_on_allow: Vec<NamePattern>,
}

/// How a provider's header goes on the request (Envoy's header mutation actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Replace any values (or add).
    Set,
    /// Add a value beside any there are.
    Add,
    /// Add only when the request has none.
    AddIfAbsent,
    /// Replace only when the request has one.
    OverwriteIfExists,
}

/// An allowing answer's changes to the request and the client's response.
#[derive(Debug, Default)]
pub struct Allowed {
    pub edits: Vec<(Edit, HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
    /// Added to the client's response.
    pub downstream: Vec<(HeaderName, HeaderValue)>,
    /// Query parameters set (gRPC's `query_parameters_to_set`), names and values as text.
    pub query_set: Vec<(String, String)>,
    /// Query parameters removed (gRPC's `query_parameters_to_remove`).
    pub query_remove: Vec<String>,
}

impl Allowed {
    /// Whether the request's headers or query change (and so, perhaps, its route).
    pub fn edits_request(&self) -> bool {
        !self.edits.is_empty()
            || !self.remove.is_empty()
            || !self.query_set.is_empty()
            || !self.query_remove.is_empty()
    }

    /// Applies the header edits and the query edits to the request.
    pub fn apply_to(&self, parts: &mut Parts) {
        self.apply(&mut parts.headers);
        if self.query_set.is_empty() && self.query_remove.is_empty() {
            return;
        }
        let Some(pq) = parts.uri.path_and_query() else {
            return;
        };
        let edited = edit_query(pq.as_str(), &self.query_set, &self.query_remove);
        // Every byte the edit writes is a query's or was in the target already; should the
        // URI still not rebuild, the request keeps the one it had.
        let Ok(pq) = http::uri::PathAndQuery::from_maybe_shared(edited) else {
            return;
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }

    /// Applies the edits and removals to the request's headers, in Envoy's order.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (edit, name, value) in &self.edits {
            let present = headers.contains_key(name);
            match edit {
                Edit::Set => {
                    headers.insert(name.clone(), value.clone());
                }
                Edit::Add => {
                    headers.append(name.clone(), value.clone());
                }
                Edit::AddIfAbsent if !present => {
                    headers.insert(name.clone(), value.clone());
                }
                Edit::OverwriteIfExists if present => {
                    headers.insert(name.clone(), value.clone());
                }
                Edit::AddIfAbsent | Edit::OverwriteIfExists => {}
            }
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// What a provider's answer means for the request.
#[derive(Debug)]
pub enum Decision {
    /// Go on, with the answer's changes.
    Allow(Allowed),
    /// The client gets this answer instead.
    Deny {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// No usable answer: `statusOnError`, or on with `failOpen`.
    Error(String),
    /// The provider failed and said what the client gets (gRPC's `error_response`): its
    /// status (`statusOnError` when it gives none), headers and body; or on with
    /// `failOpen`.
    Failed {
        status: Option<StatusCode>,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// A Kubernetes Service hostname (`name.namespace`, `name.namespace.svc`, or with any
/// cluster domain after `svc`), with an optional `namespace/` in front, as Istio accepts.
fn service_of(s: &str) -> Option<(ServiceRef, String)> {
    let host = s.split_once('/').map_or(s, |(_, h)| h);
    let mut labels = host.split('.');
    let name = labels.next().filter(|n| !n.is_empty())?;
    let ns = labels.next().filter(|n| !n.is_empty())?;
    match labels.next() {
        None => {}
        Some("svc") if labels.all(|l| !l.is_empty()) => {}
        Some(_) => return None,
    }
    Some((ServiceRef::new(ns, name), host.to_string()))
}

/// The fields both flavours have, checked.
struct Common {
    service: ServiceRef,
    host: String,
    port: u16,
    timeout: Duration,
    status_on_error: StatusCode,
    body: Option<BodyInCheck>,
}

impl Common {
    fn check(
        service: &str,
        port: u32,
        timeout: Option<&str>,
        status_on_error: Option<&str>,
        body: Option<&RequestBodySpec>,
        at: &str,
    ) -> Result<Common, RouteError> {
        let (service, host) = service_of(service).ok_or_else(|| {
            err(
                format!("{at}.service"),
                format!(
                    "{service:?}: the waypoint reaches a provider that is a Service of the mesh (name.namespace.svc.cluster.local)"
                ),
            )
        })?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("{at}.port"), format!("{port}: not a port")))?;
        let timeout = match timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => crate::route::duration(t, &format!("{at}.timeout"))?,
        };
        let status_on_error = match status_on_error {
            None | Some("") => StatusCode::FORBIDDEN,
            Some(v) => v
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .ok_or_else(|| {
                    err(
                        format!("{at}.statusOnError"),
                        format!("{v:?}: an HTTP status (200-599)"),
                    )
                })?,
        };
        let body = match body {
            None => None,
            Some(b) if b.max_request_bytes == 0 => {
                // Envoy's `max_request_bytes` must be more than 0: its listener would be
                // refused.
                return Err(err(
                    format!("{at}.includeRequestBodyInCheck.maxRequestBytes"),
                    "0: give how many bytes of the body the check carries (1 or more)",
                ));
            }
            Some(b) => Some(BodyInCheck {
                max: if b.max_request_bytes > MAX_BODY_IN_CHECK {
                    tracing::warn!(
                        field = %format!("{at}.includeRequestBodyInCheck.maxRequestBytes"),
                        configured = b.max_request_bytes,
                        held_to = MAX_BODY_IN_CHECK,
                        "more than the waypoint holds for one request's check: a longer body is refused (413), or sent in part with allowPartialMessage"
                    );
                    MAX_BODY_IN_CHECK as usize
                } else {
                    b.max_request_bytes as usize
                },
                allow_partial: b.allow_partial_message,
                raw: b.pack_as_bytes,
            }),
        };
        Ok(Common {
            service,
            host,
            port,
            timeout,
            status_on_error,
            body,
        })
    }
}

/// `envoyExtAuthzGrpc` in the MeshConfig's `extensionProviders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuthzGrpcSpec {
    pub service: String,
    pub port: u32,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub status_on_error: Option<String>,
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBodySpec>,
    /// Route the request again after the provider's header edits.
    #[serde(default)]
    pub clear_route_cache: bool,
}

/// What a check says of the request beyond its head: who sent it and where.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckContext<'a> {
    /// The tunnel peer's identity (`cluster.local/ns/NS/sa/SA`).
    pub principal: Option<&'a str>,
    /// The client's address.
    pub source: Option<SocketAddr>,
    /// The address it called (the Service's).
    pub destination: Option<SocketAddr>,
}

impl ExtAuthz {
    /// Checks provider `name`'s `envoyExtAuthzGrpc` spec, as [`ExtAuthz::build`].
    pub fn build_grpc(name: &str, s: &ExtAuthzGrpcSpec, at: &str) -> Result<ExtAuthz, RouteError> {
        let at = format!("{at}.envoyExtAuthzGrpc");
        let c = Common::check(
            &s.service,
            s.port,
            s.timeout.as_deref(),
            s.status_on_error.as_deref(),
            s.include_request_body_in_check.as_ref(),
            &at,
        )?;
        Ok(ExtAuthz {
            name: name.into(),
            grpc: true,
            service: c.service,
            host: c.host,
            port: c.port,
            timeout: c.timeout,
            path_prefix: String::new(),
            fail_open: s.fail_open,
            status_on_error: c.status_on_error,
            clear_route_cache: s.clear_route_cache,
            body: c.body,
            include: Vec::new(),
            additional: Vec::new(),
            upstream_on_allow: Vec::new(),
            downstream_on_deny: Vec::new(),
            downstream_on_allow: Vec::new(),
        })
    }

    /// The check for the client request `parts` (with `body`, what was read of its body
    /// when the provider asks for it): a gRPC `Check` call, or an HTTP/1.1 request.
    pub fn check(
        &self,
        parts: &Parts,
        ctx: &CheckContext<'_>,
        body: Option<&CheckBody>,
    ) -> Request<Bytes> {
        if self.grpc {
            self.grpc_check(parts, ctx, body)
        } else {
            self.check_request(parts, body)
        }
    }

    /// The provider's answer, whichever the flavour: what it means for the request.
    pub fn answer(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        trailers: Option<&HeaderMap>,
    ) -> Decision {
        if self.grpc {
            grpc::grpc_answer(status, headers, &body, trailers)
        } else {
            self.decide(status, headers, body)
        }
    }

    /// Checks provider `name`'s spec; `at` names it (`extensionProviders[2]`). An error
    /// makes the provider unusable, not the MeshConfig.
    pub fn build(name: &str, s: &ExtAuthzHttpSpec, at: &str) -> Result<ExtAuthz, RouteError> {
        let at = format!("{at}.envoyExtAuthzHttp");
        let c = Common::check(
            &s.service,
            s.port,
            s.timeout.as_deref(),
            s.status_on_error.as_deref(),
            s.include_request_body_in_check.as_ref(),
            &at,
        )?;
        let path_prefix = s.path_prefix.clone().unwrap_or_default();
        if !path_prefix.is_empty()
            && (!path_prefix.starts_with('/')
                || http::uri::PathAndQuery::from_maybe_shared(path_prefix.clone()).is_err())
        {
            return Err(err(
                format!("{at}.pathPrefix"),
                format!("{path_prefix:?}: a path that begins with /"),
            ));
        }
        let include = if s.include_request_headers_in_check.is_empty() {
            patterns(
                &s.include_headers_in_check,
                &format!("{at}.includeHeadersInCheck"),
            )?
        } else {
            patterns(
                &s.include_request_headers_in_check,
                &format!("{at}.includeRequestHeadersInCheck"),
            )?
        };
        let mut additional = Vec::new();
        for (k, v) in &s.include_additional_headers_in_check {
            let field = format!("{at}.includeAdditionalHeadersInCheck.{k}");
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| err(&field, format!("{k:?} is not a header name")))?;
            let value = HeaderValue::from_str(v).map_err(|_| err(&field, "not a header value"))?;
            additional.push((name, value));
        }
        Ok(ExtAuthz {
            name: name.into(),
            grpc: false,
            service: c.service,
            host: c.host,
            port: c.port,
            timeout: c.timeout,
            path_prefix,
            fail_open: s.fail_open,
            status_on_error: c.status_on_error,
            clear_route_cache: s.clear_route_cache,
            body: c.body,
            include,
            additional,
            upstream_on_allow: patterns(
                &s.headers_to_upstream_on_allow,
                &format!("{at}.headersToUpstreamOnAllow"),
            )?,
            downstream_on_deny: patterns(
                &s.headers_to_downstream_on_deny,
                &format!("{at}.headersToDownstreamOnDeny"),
            )?,
            downstream_on_allow: patterns(
                &s.headers_to_downstream_on_allow,
                &format!("{at}.headersToDownstreamOnAllow"),
            )?,
        })
    }

    /// The check request for the client request `parts` (HTTP/1.1), with `body` as its
    /// body. The partial-body header is among the headers the patterns may pick, as in
    /// Envoy (which offers it to `includeRequestHeadersInCheck` like the client's own).
    pub fn check_request(&self, parts: &Parts, body: Option<&CheckBody>) -> Request<Bytes> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{path}", self.path_prefix);
        let mut req = Request::new(body.map(|b| b.bytes.clone()).unwrap_or_default());
        *req.method_mut() = parts.method.clone();
        // The prefix was checked as a path, and the client's path is one.
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let headers = req.headers_mut();
        if let Some(v) = authority(parts) {
            headers.insert(header::HOST, v);
        }
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if n == "host" || n == "content-length" || n == "transfer-encoding" || n == PARTIAL_BODY
            {
                continue;
            }
            if name == header::AUTHORIZATION || any_matches(&self.include, n) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(b) = body
            && any_matches(&self.include, PARTIAL_BODY)
        {
            headers.insert(
                HeaderName::from_static(PARTIAL_BODY),
                HeaderValue::from_static(if b.partial { "true" } else { "false" }),
            );
        }
        for (k, v) in &self.additional {
            headers.insert(k.clone(), v.clone());
        }
        let len = body.map_or(0, |b| b.bytes.len());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        req
    }

    /// What the provider's answer (`status`, `headers`, `body`) means.
    pub fn decide(&self, status: StatusCode, headers: &HeaderMap, body: Bytes) -> Decision {
        if status.is_server_error() {
            return Decision::Error(format!("the provider answered {status}"));
        }
        if status == StatusCode::OK {
            let pick = |list: &[NamePattern]| -> Vec<(HeaderName, HeaderValue)> {
                headers
                    .iter()
                    .filter(|(n, _)| !framing(n) && any_matches(list, n.as_str()))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect()
            };
            let remove = headers
                .get_all(HEADERS_TO_REMOVE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                // Pseudo-headers, Host and the framing are not the provider's to remove.
                .filter(|n| !framing(n))
                .collect();
            return Decision::Allow(Allowed {
                // Envoy sets them: the last value of a name wins.
                edits: pick(&self.upstream_on_allow)
                    .into_iter()
                    .map(|(n, v)| (Edit::Set, n, v))
                    .collect(),
                remove,
                downstream: pick(&self.downstream_on_allow),
                ..Allowed::default()
            });
        }
        let mut out = HeaderMap::new();
        for (n, v) in headers {
            // Envoy keeps these whatever the list says (and `:status`, `content-length`).
            let always = n == header::WWW_AUTHENTICATE || n == header::LOCATION;
            let hop = framing(n) || n == HEADERS_TO_REMOVE;
            let listed = self.downstream_on_deny.is_empty()
                || any_matches(&self.downstream_on_deny, n.as_str());
            if !hop && (always || listed) {
                out.append(n.clone(), v.clone());
            }
        }
        Decision::Deny {
            status,
            headers: out,
            body,
        }
    }
}

/// The MeshConfig's authorization providers, by name (exact, as istiod looks them up):
/// each one usable, or why not.
pub type AuthzProviders = BTreeMap<String, Result<Arc<ExtAuthz>, String>>;

mod grpc;
pub mod pb;
mod query;
pub use query::edit_query;

#[cfg(test)]
mod tests;
