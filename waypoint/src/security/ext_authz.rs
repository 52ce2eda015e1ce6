//! External authorization: an AuthorizationPolicy with `action: CUSTOM` hands the request
//! to a MeshConfig provider (`envoyExtAuthzHttp`), as Envoy's `ext_authz` filter does in an
//! Istio waypoint. This module owns the provider's checked config, the check request made
//! from a client request, and what the provider's answer means; the waypoint sends the
//! check through its own upstream path (the provider is a Service of the mesh).
//!
//! The exchange, as Envoy's HTTP `ext_authz` client has it:
//! - the check request carries the client's method, its path behind `pathPrefix`, its
//!   `:authority`, `Authorization`, the headers `includeRequestHeadersInCheck` names (exact
//!   names, `prefix*` or `*suffix`, without case), the fixed `includeAdditionalHeadersInCheck`,
//!   and no body (`content-length: 0`);
//! - `200` allows: the headers `headersToUpstreamOnAllow` names are set on the request, the
//!   ones the answer lists in `x-envoy-auth-headers-to-remove` are removed from it, and the
//!   ones `headersToDownstreamOnAllow` names go on the client's response;
//! - a `5xx`, no answer, or none within `timeout` is an error: the client gets
//!   `statusOnError` (403 by default) with no body, unless `failOpen` lets the request on;
//! - any other status denies: the client gets that status, the answer's body, and its
//!   headers (only those `headersToDownstreamOnDeny` names, when it names any, plus the
//!   ones Envoy always keeps: `WWW-Authenticate`, `Location`, `Content-Type`).
//!
//! A provider the waypoint cannot use (a bad field, a service that is not a Service of the
//! mesh, the request body in the check) is kept by name with why: the policies that name
//! it deny what they match, as istiod's "deny all due to bad CUSTOM action" does.

use std::collections::BTreeMap;
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
    /// Not supported: a provider with it is unusable.
    #[serde(default)]
    pub include_request_body_in_check: Option<crate::telemetry::spec::serde_yaml_ignored::Ignored>,
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
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

fn any_matches(list: &[NamePattern], name: &str) -> bool {
    list.iter().any(|p| p.matches(name))
}

/// A checked `envoyExtAuthzHttp` provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthzHttp {
    /// The provider's name (for logs).
    pub name: Arc<str>,
    /// The Service the checks go to, on `port` (a Service port).
    pub service: ServiceRef,
    /// Its hostname, for the check's `:authority`.
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    path_prefix: String,
    pub fail_open: bool,
    pub status_on_error: StatusCode,
    include: Vec<NamePattern>,
    additional: Vec<(HeaderName, HeaderValue)>,
    upstream_on_allow: Vec<NamePattern>,
    downstream_on_deny: Vec<NamePattern>,
    downstream_on_allow: Vec<NamePattern>,
}

/// What a provider's answer means for the request.
#[derive(Debug)]
pub enum Decision {
    /// Go on; `upstream` headers set on the request, `remove` removed from it, `downstream`
    /// added to the client's response.
    Allow {
        upstream: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
        downstream: Vec<(HeaderName, HeaderValue)>,
    },
    /// The client gets this answer instead.
    Deny {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// No usable answer: `statusOnError`, or on with `failOpen`.
    Error(String),
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

impl ExtAuthzHttp {
    /// Checks provider `name`'s spec; `at` names it (`extensionProviders[2]`). An error
    /// makes the provider unusable, not the MeshConfig.
    pub fn build(name: &str, s: &ExtAuthzHttpSpec, at: &str) -> Result<ExtAuthzHttp, RouteError> {
        let at = format!("{at}.envoyExtAuthzHttp");
        let (service, host) = service_of(&s.service).ok_or_else(|| {
            err(
                format!("{at}.service"),
                format!(
                    "{:?}: the waypoint reaches a provider that is a Service of the mesh (name.namespace.svc.cluster.local)",
                    s.service
                ),
            )
        })?;
        let port = u16::try_from(s.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("{at}.port"), format!("{}: not a port", s.port)))?;
        let timeout = match &s.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => crate::route::duration(t, &format!("{at}.timeout"))?,
        };
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
        let status_on_error = match s.status_on_error.as_deref() {
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
        if s.include_request_body_in_check.is_some() {
            return Err(err(
                format!("{at}.includeRequestBodyInCheck"),
                "the waypoint sends checks without the request body",
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
        Ok(ExtAuthzHttp {
            name: name.into(),
            service,
            host,
            port,
            timeout,
            path_prefix,
            fail_open: s.fail_open,
            status_on_error,
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

    /// The check request for the client request `parts` (HTTP/1.1, no body).
    pub fn check_request(&self, parts: &Parts) -> Request<()> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{path}", self.path_prefix);
        let mut req = Request::new(());
        *req.method_mut() = parts.method.clone();
        // The prefix was checked as a path, and the client's path is one.
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let headers = req.headers_mut();
        // The client's authority as it sent it (port included).
        let authority = parts.headers.get(header::HOST).cloned().or_else(|| {
            let a = parts.uri.authority()?;
            HeaderValue::from_str(a.as_str()).ok()
        });
        if let Some(v) = authority {
            headers.insert(header::HOST, v);
        }
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if n == "host" || n == "content-length" || n == "transfer-encoding" {
                continue;
            }
            if name == header::AUTHORIZATION || any_matches(&self.include, n) {
                headers.append(name.clone(), value.clone());
            }
        }
        for (k, v) in &self.additional {
            headers.insert(k.clone(), v.clone());
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
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
                    .filter(|(n, _)| any_matches(list, n.as_str()))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect()
            };
            let remove = headers
                .get_all(HEADERS_TO_REMOVE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                // Pseudo-headers and Host are not the provider's to remove.
                .filter(|n| *n != header::HOST)
                .collect();
            return Decision::Allow {
                upstream: pick(&self.upstream_on_allow),
                remove,
                downstream: pick(&self.downstream_on_allow),
            };
        }
        let mut out = HeaderMap::new();
        for (n, v) in headers {
            let always =
                n == header::WWW_AUTHENTICATE || n == header::LOCATION || n == header::CONTENT_TYPE;
            let hop = n == header::CONTENT_LENGTH
                || n == header::TRANSFER_ENCODING
                || n == header::CONNECTION
                || n == header::HOST;
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
pub type AuthzProviders = BTreeMap<String, Result<Arc<ExtAuthzHttp>, String>>;

#[cfg(test)]
mod tests;
