//! HTTP routes: the config shape users know (Gateway API `HTTPRoute` attached to a Service,
//! as GAMMA does it, plus Istio VirtualService's `fault` and `retries` fields), checked and
//! compiled into a [`RouteTable`] that picks a [`Rule`] per request.
//!
//! Two layers:
//! - `*Spec` types: what serde reads from the mesh config's `httpRoutes` list. Every struct
//!   denies unknown keys, so a typo is an error with its path.
//! - [`RouteTable::build`]: the checks that need more than one field (a filter's `type`
//!   matching its body, regexes, durations, weights, percentages), each error naming the
//!   route and the field (`httpRoutes[demo/echo].rules[1].matches[0].path.value`), and the
//!   compiled table: per parent Service, every (rule, match) in Gateway API precedence order.
//!
//! Precedence (Gateway API, HTTPRouteRule): an Exact path beats a prefix, a longer prefix a
//! shorter one, then a regex; then a match with a method, then more header matches, then
//! more query matches; ties go to the route that comes first in the file, then to the rule
//! and match that come first. A GRPCRoute ([`grpc_to_http_routes`]) is compiled as the
//! HTTPRoute it stands for and ranks with them; its matches without a method (no path
//! condition) rank last, as istiod ranks them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

pub use policy::{Abort, Fault, GRPC_RETRY_ON, Mirror, Retry};

mod backend;
mod compile;
mod cors;
mod grpc;
mod policy;
mod spec;
mod table;

pub use backend::{BackendEdits, HeaderEdits};
pub use compile::duration;
pub use cors::{Cors, CorsSpec, CorsStep, OriginSpec};

/// Checks an Istio `uriRegexRewrite` (its pattern and substitution) where `at` names it, so
/// the VirtualService translation can report it under its own field.
pub fn check_regex_rewrite(pattern: &str, with: &str, at: &str) -> Result<(), RouteError> {
    compile::regex_rewrite(pattern, with, at).map(|_| ())
}
use compile::{compile_match, compile_rule, host_match, parent_kind, service_kind};
pub use grpc::{
    GrpcMatchSpec, GrpcMethodMatchSpec, GrpcRouteSpec, GrpcRuleSpec, grpc_to_http_routes,
};
pub use spec::*;
use table::HostMatch;
pub use table::RouteTable;

/// The kind of a backendRef (and, from a VirtualService, of a parent) that names a Service
/// by its hostname; its group is `networking.istio.io`, as istiod has it.
pub const HOSTNAME_KIND: &str = "Hostname";

/// What a host that names no one Service is told (a VirtualService's, a DestinationRule's).
pub(crate) fn no_service(host: &str) -> String {
    format!(
        "{host:?} is no Service of the mesh (or names several, as a ServiceEntry's hosts share its name: give the hostname)"
    )
}

/// Istio's networking API group (ServiceEntry, and the `Hostname` kind).
pub const ISTIO_NETWORKING: &str = "networking.istio.io";

/// Retries at most this many times per request whatever the config says: a route is not
/// allowed to turn one request into an unbounded amount of backend work.
pub const MAX_ATTEMPTS: u32 = 10;

/// A Service, as a backend or a parent: `namespace/name`, or a hostname alone
/// ([`ServiceRef::by_host`]).
///
/// A Kubernetes Service is named by namespace and name. A ServiceEntry's hosts are Services
/// of the mesh too, each with the entry's namespace and name and its own hostname, and Istio
/// names them by hostname: a VirtualService's `hosts` and destinations, a DestinationRule's
/// `host`, a backendRef of kind `Hostname`. Config read from the cluster is compiled without
/// the registry at hand, so such a name stays a hostname here, and the waypoint finds the
/// Service that has it when a request comes (`namespace` is empty then: no Kubernetes
/// namespace is).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceRef {
    pub fn new(namespace: &str, name: &str) -> ServiceRef {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The Service whose hostname is `host`, whatever its namespace and name.
    pub fn by_host(host: &str) -> ServiceRef {
        ServiceRef {
            namespace: "".into(),
            name: host.into(),
        }
    }

    /// The hostname, for a reference made by [`ServiceRef::by_host`].
    pub fn host(&self) -> Option<&str> {
        self.namespace.is_empty().then_some(&*self.name)
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host() {
            Some(host) => f.write_str(host),
            None => write!(f, "{}/{}", self.namespace, self.name),
        }
    }
}

/// A route config error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RouteError {
    pub path: String,
    pub message: String,
}

/// A [`RouteError`] at `path` (the config crates' error for a field of theirs).
pub(crate) fn err(path: impl Into<String>, message: impl Into<String>) -> RouteError {
    RouteError {
        path: path.into(),
        message: message.into(),
    }
}

/// Where a request goes: a Service port, with its share of the rule's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: ServiceRef,
    /// A DestinationRule subset of the Service's endpoints (VirtualService only).
    pub subset: Option<Arc<str>>,
    /// `None`: the port the request came in on.
    pub port: Option<u16>,
    pub weight: u32,
    /// Its own header edits (a backendRef's filters, a VirtualService destination's
    /// `headers`); `None` for most, so a pick clones no more than a reference count.
    pub edits: Option<Arc<BackendEdits>>,
}

/// A path modifier (Gateway API's `HTTPPathModifier`, or Istio's `rewrite.uri`), resolved
/// against the match that selected the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path becomes this (the query stays).
    Full(String),
    /// Gateway API `ReplacePrefixMatch`: the matched `PathPrefix`, whole segments, becomes
    /// `with` (`/foo/bar` with prefix `/foo` and `/xyz` gives `/xyz/bar`).
    Prefix { matched: String, with: String },
    /// Istio `rewrite.uri` after a `prefix` match: the matched string prefix becomes `with`
    /// (Envoy's `prefix_rewrite`: `/apiv2` with prefix `/api` and `/new` gives `/newv2`).
    Literal { matched: String, with: String },
    /// Istio `rewrite.uriRegexRewrite` (Envoy's `regex_rewrite`): every match of the pattern
    /// in the path is replaced, `with` naming capture groups as `${1}`.
    Regex { pattern: Pattern, with: String },
}

/// A compiled regular expression that compares by its source (routes compare in tests).
#[derive(Debug, Clone)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

impl PathRewrite {
    /// The rewritten path for `path` (which the rule's match accepted).
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix { matched, with } => {
                let p = matched.trim_end_matches('/');
                let rest = path.get(p.len()..).unwrap_or("");
                let out = format!("{}{rest}", with.trim_end_matches('/'));
                if out.starts_with('/') {
                    out
                } else {
                    format!("/{out}")
                }
            }
            PathRewrite::Literal { matched, with } => {
                let rest = path.strip_prefix(matched.as_str()).unwrap_or(path);
                format!("{with}{rest}")
            }
            PathRewrite::Regex { pattern, with } => {
                let out = pattern.0.replace_all(path, with.as_str());
                if out.starts_with('/') {
                    out.into_owned()
                } else {
                    format!("/{out}")
                }
            }
        }
    }

    /// A modifier's prefix not yet known: set per match by [`RouteTable::build`].
    fn needs_prefix(&self) -> bool {
        matches!(self, PathRewrite::Prefix { matched, .. } | PathRewrite::Literal { matched, .. } if matched.is_empty())
    }
}

/// What a rule changes in the request before it goes to the backend (`URLRewrite`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The new `Host` (`:authority`).
    pub host: Option<HeaderValue>,
    pub path: Option<PathRewrite>,
}

/// A rule that answers with a redirect (`RequestRedirect`) instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: http::StatusCode,
}

impl Redirect {
    /// The `Location` for a request that came in on Service port `listener_port`, by
    /// Gateway API's rules: the scheme, host and path are the request's unless the filter
    /// sets them; without a port, a scheme given in the filter brings its well-known port
    /// and otherwise the request's port stays; the port is left out when it is the
    /// scheme's default (80 for http, 443 for https). The query is kept.
    pub fn location(&self, parts: &Parts, listener_port: u16) -> String {
        let scheme = self
            .scheme
            .clone()
            .or_else(|| parts.uri.scheme_str().map(str::to_string))
            .unwrap_or_else(|| "http".to_string());
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => p,
            (None, Some(_)) => default_port,
            (None, None) => listener_port,
        };
        let host = self
            .host
            .clone()
            .unwrap_or_else(|| request_host(parts).to_string());
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let path = parts.uri.path();
        let path = match &self.path {
            Some(r) => r.apply(path),
            None => path.to_string(),
        };
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        if port == default_port {
            format!("{scheme}://{host}{path}{query}")
        } else {
            format!("{scheme}://{host}:{port}{path}{query}")
        }
    }
}

/// One rule of a route: what happens to a request it matches.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `namespace/route` and the rule's index or name, for logs and metrics.
    pub route: Arc<str>,
    pub name: Arc<str>,
    /// Empty: the rule sends to the Service the request addressed (its parent), on the
    /// port it came in on.
    pub backends: Vec<Backend>,
    total_weight: u64,
    pub request_timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub fault: Option<Fault>,
    pub mirror: Option<Mirror>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub rewrite: Option<Rewrite>,
    /// Set: the rule answers with a redirect and has no backends.
    pub redirect: Option<Redirect>,
    /// A VirtualService entry's `corsPolicy`.
    pub cors: Option<Arc<Cors>>,
    /// One destination, as istiod counts them: a VirtualService entry's listed
    /// destinations, an HTTPRoute rule's backendRefs with weight (istiod drops the others).
    one_destination: bool,
}

impl Rule {
    /// The rule a Service without routes gets: all traffic to itself, on the port asked,
    /// under Istio's default retry policy.
    pub fn passthrough() -> Rule {
        Rule {
            route: Arc::from("-"),
            name: Arc::from("-"),
            backends: Vec::new(),
            total_weight: 1,
            request_timeout: None,
            retry: Some(compile::istio_default_retry(None)),
            fault: None,
            mirror: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            rewrite: None,
            redirect: None,
            cors: None,
            one_destination: false,
        }
    }

    /// Whether a backend's own header edits come after the rule's: when the rule has one
    /// backend that takes traffic (istiod puts its edits in the route's lists, after the
    /// route's own); in a weighted split they come first (the weighted cluster's, which
    /// Envoy applies before the route's).
    pub fn backend_edits_last(&self) -> bool {
        self.one_destination
    }

    /// The path modifier that needs the matched prefix, if any.
    fn prefix_modifier(&mut self) -> Option<&mut PathRewrite> {
        let from_rewrite = self.rewrite.as_mut().and_then(|r| r.path.as_mut());
        let from_redirect = self.redirect.as_mut().and_then(|r| r.path.as_mut());
        from_rewrite.or(from_redirect).filter(|p| p.needs_prefix())
    }

    /// The backend for a request to `parent` and a uniform random `r` (any u64): each
    /// backend's share is its weight over the total; a rule without backends sends to the
    /// parent. `None` when every weight is 0 (Gateway API: answer 500).
    pub fn pick_for(&self, parent: &ServiceRef, r: u64) -> Option<Backend> {
        if self.backends.is_empty() {
            return Some(Backend {
                service: parent.clone(),
                subset: None,
                port: None,
                weight: 1,
                edits: None,
            });
        }
        self.pick(r).cloned()
    }

    /// The weighted pick among the rule's own backends (see [`Rule::pick_for`]).
    pub fn pick(&self, r: u64) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        // Multiply-shift maps r onto 0..total without the bias of a modulo.
        let mut x = ((u128::from(r) * u128::from(self.total_weight)) >> 64) as u64;
        for b in &self.backends {
            let w = u64::from(b.weight);
            if x < w {
                return Some(b);
            }
            x -= w;
        }
        None
    }
}

#[derive(Debug)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            // Gateway API: a prefix matches whole path segments (`/foo` matches `/foo` and
            // `/foo/bar`, not `/foobar`).
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                path.starts_with(p)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/' || p.is_empty())
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

#[derive(Debug)]
enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
struct Match {
    path: PathMatch,
    headers: Vec<(HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
    method: Option<Method>,
    /// No path condition (a GRPCRoute match without a method): ranks below the rest.
    no_path: bool,
}

impl Match {
    fn matches(&self, parts: &Parts) -> bool {
        if let Some(m) = &self.method
            && parts.method != m
        {
            return false;
        }
        if !self.path.matches(parts.uri.path()) {
            return false;
        }
        for (name, m) in &self.headers {
            // Several values of one header are matched as one comma-joined value (RFC 9110
            // §5.3), as Envoy does.
            let mut values = parts.headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                return false;
            }
            let joined: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
            if !m.matches(&joined.join(",")) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = parts.uri.query().unwrap_or("");
            for (name, m) in &self.query {
                // The first occurrence counts (Gateway API leaves it to the implementation).
                let found = query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                });
                match found {
                    Some(v) if m.matches(v) => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// Sort key, larger first (see the module docs).
    fn precedence(&self) -> Precedence {
        let (kind, len) = match &self.path {
            _ if self.no_path => (0, 0),
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Prefix(p) => (2, p.trim_end_matches('/').len()),
            PathMatch::Regex(_) => (1, 0),
        };
        (
            kind,
            len,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }
}

/// A match's place in its parent's entries, larger first: the path's kind (exact, prefix,
/// regex, none) and length, a method, header and query matches.
type Precedence = (u8, usize, bool, usize, usize);

/// A path with its dot segments removed (RFC 3986 §5.2.4), as Envoy's `normalize_path`
/// (Istio's default `BASE` normalization) does before routing and authorization: so
/// `/public/../admin` is matched, denied and forwarded as `/admin`. Borrowed when there is
/// nothing to remove.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let has_dots = path.split('/').any(|seg| seg == "." || seg == "..");
    if !has_dots {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').collect();
    let last = segs.len().saturating_sub(1);
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    std::borrow::Cow::Owned(if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    })
}

/// The request's host without the port: `:authority` (HTTP/2, or an absolute URI) or `Host`.
pub fn request_host(parts: &Parts) -> &str {
    let raw = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok())
        .unwrap_or("");
    strip_port(raw)
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

#[cfg(test)]
mod tests;
