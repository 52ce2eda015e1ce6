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
//! and match that come first.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::Deserialize;

/// Retries at most this many times per request whatever the config says: a route is not
/// allowed to turn one request into an unbounded amount of backend work.
pub const MAX_ATTEMPTS: u32 = 10;

/// A Service, as a backend or a parent: `namespace/name`.
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
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A route config error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RouteError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> RouteError {
    RouteError {
        path: path.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// The file's shape.

/// One `HTTPRoute`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    pub name: String,
    pub namespace: String,
    /// The Services whose traffic the route takes (GAMMA: `kind: Service`).
    pub parent_refs: Vec<ParentRefSpec>,
    /// Host header values the route answers (`*.example.com` wildcards); empty: all.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Set for a translated VirtualService (`crate::vs`): its rules are tried in their
    /// order, ahead of any HTTPRoute of the same Service, instead of by precedence.
    #[serde(skip)]
    pub ordered: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRefSpec {
    /// Only `Service` (the default); a Gateway parent is not a waypoint's business.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub name: String,
    /// Defaults to the route's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service port the route applies to; omitted: every port.
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Alternatives; none: every request.
    #[serde(default)]
    pub matches: Vec<MatchSpec>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Weighted Services; none: the parent Service itself, on the requested port.
    #[serde(default)]
    pub backend_refs: Vec<BackendRefSpec>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    /// Gateway API's `retry` (codes, attempts, backoff) with Istio's `perTryTimeout` and
    /// `retryOn`, and a budget.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Istio VirtualService's `fault`.
    #[serde(default)]
    pub fault: Option<FaultSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub path: Option<PathMatchSpec>,
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    #[serde(default)]
    pub query_params: Vec<ValueMatchSpec>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatchSpec {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatchSpec {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterSpec {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier` or `RequestMirror`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    pub request_mirror: Option<MirrorSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifierSpec {
    #[serde(default)]
    pub set: Vec<HeaderValueSpec>,
    #[serde(default)]
    pub add: Vec<HeaderValueSpec>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValueSpec {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSpec {
    pub backend_ref: BackendRefSpec,
    /// Share of requests mirrored, 0–100; default 100.
    #[serde(default)]
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRefSpec {
    /// Only `Service` (the default).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service port; defaults to the port the request came in on.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight; default 1, 0 takes no traffic.
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// The whole request, retries included (Gateway API duration: `10s`, `500ms`, `1m30s`).
    #[serde(default)]
    pub request: Option<String>,
    /// One attempt at the backend.
    #[serde(default)]
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts after the first; default 2 (Istio's default).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Response statuses that are retried.
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Pause before each retry; default 25 ms (Envoy's base interval).
    #[serde(default)]
    pub backoff: Option<String>,
    /// Deadline of each attempt (Istio's name; `timeouts.backendRequest` otherwise).
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Conditions besides `codes`: `connect-failure`, `reset`, `5xx`, `gateway-error`
    /// (Istio's `retryOn` names). Default: `connect-failure,reset`.
    #[serde(default)]
    pub retry_on: Option<Vec<String>>,
    /// Retries in flight at most this percent of requests in flight (Envoy's retry budget);
    /// default 20.
    #[serde(default)]
    pub budget_percent: Option<f64>,
    /// ... but always allow this many concurrent retries; default 3.
    #[serde(default)]
    pub min_retry_concurrency: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    #[serde(default)]
    pub abort: Option<AbortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelaySpec {
    pub fixed_delay: String,
    /// Percent of requests, 0–100; default 100.
    #[serde(default)]
    pub percentage: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortSpec {
    pub http_status: u16,
    #[serde(default)]
    pub percentage: Option<f64>,
}

// ---------------------------------------------------------------------------------------
// Compiled.

/// Where a request goes: a Service port, with its share of the rule's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: ServiceRef,
    /// `None`: the port the request came in on.
    pub port: Option<u16>,
    pub weight: u32,
}

/// Header edits, applied in Gateway API's order: set, add, remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
        for k in &self.remove {
            headers.remove(k);
        }
    }
}

/// What is retried, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts after the first.
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_reset: bool,
    pub on_connect_failure: bool,
    pub backoff: Duration,
    pub per_try_timeout: Option<Duration>,
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

impl Retry {
    /// Whether a response with `status` is worth another attempt.
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
            || (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
    }
}

/// Injected faults (percentages as probabilities in 0..=1).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(http::StatusCode, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub backend: Backend,
    /// Probability in 0..=1.
    pub fraction: f64,
}

/// One rule of a route: what happens to a request it matches.
#[derive(Debug)]
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
}

impl Rule {
    /// The rule a Service without routes gets: all traffic to itself, on the port asked.
    pub fn passthrough() -> Rule {
        Rule {
            route: Arc::from("-"),
            name: Arc::from("-"),
            backends: Vec::new(),
            total_weight: 1,
            request_timeout: None,
            retry: None,
            fault: None,
            mirror: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        }
    }

    /// The backend for a request to `parent` and a uniform random `r` (any u64): each
    /// backend's share is its weight over the total; a rule without backends sends to the
    /// parent. `None` when every weight is 0 (Gateway API: answer 500).
    pub fn pick_for(&self, parent: &ServiceRef, r: u64) -> Option<Backend> {
        if self.backends.is_empty() {
            return Some(Backend {
                service: parent.clone(),
                port: None,
                weight: 1,
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
    fn precedence(&self) -> (u8, usize, bool, usize, usize) {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (2, p.len()),
            PathMatch::Prefix(p) => (1, p.trim_end_matches('/').len()),
            PathMatch::Regex(_) => (0, 0),
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

#[derive(Debug)]
struct Entry {
    /// The parent's port, if the route named one.
    port: Option<u16>,
    /// A VirtualService's position (its rules first, in order); `None` for an HTTPRoute.
    order: Option<usize>,
    hostnames: Arc<[HostMatch]>,
    matcher: Match,
    rule: Arc<Rule>,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`: the suffix `.example.com`, at least one label before it.
    Wildcard(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Every route, compiled, by parent Service.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_parent: HashMap<ServiceRef, Vec<Entry>>,
    routes: usize,
    /// Ordered (VirtualService) entries so far: the next one's position.
    ordered_seen: usize,
}

impl RouteTable {
    /// Checks and compiles `specs`. Route names (`namespace/name`) must be unique.
    pub fn build(specs: &[HttpRouteSpec]) -> Result<RouteTable, RouteError> {
        let mut table = RouteTable::default();
        let mut seen = std::collections::HashSet::new();
        for spec in specs {
            let key = format!("{}/{}", spec.namespace, spec.name);
            let base = if spec.ordered {
                format!("virtualServices[{key}] (as an HTTPRoute)")
            } else {
                format!("httpRoutes[{key}]")
            };
            if spec.name.is_empty() || spec.namespace.is_empty() {
                return Err(err(base, "name and namespace must not be empty"));
            }
            if spec.name.contains('/') || spec.namespace.contains('/') {
                return Err(err(base, "a name or namespace cannot contain `/`"));
            }
            if !seen.insert(key.clone()) {
                return Err(err(base, "a second route with this namespace/name"));
            }
            table.add(spec, &key, &base)?;
            table.routes += 1;
        }
        for entries in table.by_parent.values_mut() {
            // Ordered (VirtualService) entries first in their order, then by precedence;
            // stable, so ties keep file order.
            entries.sort_by_key(|e| match e.order {
                Some(i) => (0, i, std::cmp::Reverse((0, 0, false, 0, 0))),
                None => (1, 0, std::cmp::Reverse(e.matcher.precedence())),
            });
        }
        Ok(table)
    }

    fn add(&mut self, spec: &HttpRouteSpec, key: &str, base: &str) -> Result<(), RouteError> {
        if spec.parent_refs.is_empty() {
            return Err(err(
                format!("{base}.parentRefs"),
                "at least one parent Service is required",
            ));
        }
        let hostnames: Arc<[HostMatch]> = spec
            .hostnames
            .iter()
            .enumerate()
            .map(|(i, h)| host_match(h).map_err(|m| err(format!("{base}.hostnames[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let mut parents = Vec::new();
        for (i, p) in spec.parent_refs.iter().enumerate() {
            let at = format!("{base}.parentRefs[{i}]");
            service_kind(p.kind.as_deref(), p.group.as_deref(), &at)?;
            if p.port == Some(0) {
                return Err(err(format!("{at}.port"), "0 is not a port"));
            }
            let ns = p.namespace.as_deref().unwrap_or(&spec.namespace);
            parents.push((ServiceRef::new(ns, &p.name), p.port));
        }
        let mut rules = Vec::new();
        for (r, rule) in spec.rules.iter().enumerate() {
            let at = format!("{base}.rules[{r}]");
            let name = rule.name.clone().unwrap_or_else(|| r.to_string());
            let compiled = Arc::new(compile_rule(rule, spec, key, &name, &at)?);
            let matches = if rule.matches.is_empty() {
                vec![MatchSpec::default()]
            } else {
                rule.matches.clone()
            };
            for (m, ms) in matches.iter().enumerate() {
                let matcher = compile_match(ms, &format!("{at}.matches[{m}]"))?;
                rules.push((matcher, compiled.clone()));
            }
        }
        if spec.rules.is_empty() {
            // Gateway API: a route with no rules sends everything to the parent; here it
            // adds nothing.
            return Ok(());
        }
        let first = self.ordered_seen;
        if spec.ordered {
            self.ordered_seen += rules.len();
        }
        for (parent, port) in parents {
            for (i, (m, rule)) in rules.iter().enumerate() {
                let matcher = recompile(m);
                self.by_parent
                    .entry(parent.clone())
                    .or_default()
                    .push(Entry {
                        port,
                        order: spec.ordered.then_some(first + i),
                        hostnames: hostnames.clone(),
                        matcher,
                        rule: rule.clone(),
                    });
            }
        }
        Ok(())
    }

    /// Routes compiled.
    pub fn len(&self) -> usize {
        self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// Whether any route takes traffic for `service`.
    pub fn has_routes(&self, service: &ServiceRef) -> bool {
        self.by_parent.contains_key(service)
    }

    /// The rule for a request to `service`:`port`: the first entry in precedence order whose
    /// port, hostnames and match take it. `Ok(None)`: the Service has no route at all (the
    /// caller passes traffic through). `Err(())`: it has routes and none matched (404).
    #[allow(clippy::result_unit_err)]
    pub fn select(
        &self,
        service: &ServiceRef,
        port: u16,
        parts: &Parts,
    ) -> Result<Option<Arc<Rule>>, ()> {
        let Some(entries) = self.by_parent.get(service) else {
            return Ok(None);
        };
        let host = request_host(parts);
        let mut attached = false;
        for e in entries {
            if e.port.is_some_and(|p| p != port) {
                continue;
            }
            attached = true;
            if !e.hostnames.is_empty() && !e.hostnames.iter().any(|h| h.matches(host)) {
                continue;
            }
            if e.matcher.matches(parts) {
                return Ok(Some(e.rule.clone()));
            }
        }
        if attached { Err(()) } else { Ok(None) }
    }
}

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

/// Regexes are compiled once per match; entries for several parents share a copy.
fn recompile(m: &Match) -> Match {
    let path = match &m.path {
        PathMatch::Exact(p) => PathMatch::Exact(p.clone()),
        PathMatch::Prefix(p) => PathMatch::Prefix(p.clone()),
        PathMatch::Regex(r) => PathMatch::Regex(r.clone()),
    };
    let v = |x: &ValueMatch| match x {
        ValueMatch::Exact(e) => ValueMatch::Exact(e.clone()),
        ValueMatch::Regex(r) => ValueMatch::Regex(r.clone()),
    };
    Match {
        path,
        headers: m.headers.iter().map(|(k, x)| (k.clone(), v(x))).collect(),
        query: m.query.iter().map(|(k, x)| (k.clone(), v(x))).collect(),
        method: m.method.clone(),
    }
}

fn service_kind(kind: Option<&str>, group: Option<&str>, at: &str) -> Result<(), RouteError> {
    match kind {
        None | Some("Service") => {}
        Some(k) => {
            return Err(err(
                format!("{at}.kind"),
                format!("{k:?}: only Service is supported"),
            ));
        }
    }
    match group {
        None | Some("") | Some("core") => Ok(()),
        Some(g) => Err(err(
            format!("{at}.group"),
            format!("{g:?}: a Service's group is \"\" (core)"),
        )),
    }
}

fn host_match(h: &str) -> Result<HostMatch, String> {
    if h.is_empty() || h.contains(['/', ':', ' ']) {
        return Err(format!("{h:?} is not a hostname"));
    }
    match h.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
            Ok(HostMatch::Wildcard(suffix.to_string()))
        }
        Some(_) => Err(format!("{h:?}: a wildcard is `*.` followed by a domain")),
        None if h.contains('*') => Err(format!(
            "{h:?}: `*` may only open a hostname (`*.example.com`)"
        )),
        None => Ok(HostMatch::Exact(h.to_string())),
    }
}

fn regex(value: &str, at: &str) -> Result<Regex, RouteError> {
    // Anchored: Gateway API regexes match the whole value. Size-limited so a config cannot
    // make the matcher huge.
    regex::RegexBuilder::new(&format!("^(?:{value})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            err(
                at,
                format!("{value:?} is not a valid regular expression: {e}"),
            )
        })
}

fn compile_match(m: &MatchSpec, at: &str) -> Result<Match, RouteError> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let at = format!("{at}.path");
            let kind = p.kind.as_deref().unwrap_or("PathPrefix");
            if kind != "RegularExpression" && !p.value.starts_with('/') {
                return Err(err(format!("{at}.value"), "a path starts with /"));
            }
            match kind {
                "Exact" => PathMatch::Exact(p.value.clone()),
                "PathPrefix" => PathMatch::Prefix(p.value.clone()),
                "RegularExpression" => PathMatch::Regex(regex(&p.value, &format!("{at}.value"))?),
                other => {
                    return Err(err(
                        format!("{at}.type"),
                        format!("{other:?}: use Exact, PathPrefix or RegularExpression"),
                    ));
                }
            }
        }
    };
    let value = |v: &ValueMatchSpec, at: &str| -> Result<ValueMatch, RouteError> {
        match v.kind.as_deref().unwrap_or("Exact") {
            "Exact" => Ok(ValueMatch::Exact(v.value.clone())),
            "RegularExpression" => Ok(ValueMatch::Regex(regex(&v.value, &format!("{at}.value"))?)),
            other => Err(err(
                format!("{at}.type"),
                format!("{other:?}: use Exact or RegularExpression"),
            )),
        }
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let at = format!("{at}.headers[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            err(
                format!("{at}.name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        headers.push((name, value(h, &at)?));
    }
    let mut query = Vec::new();
    for (i, q) in m.query_params.iter().enumerate() {
        let at = format!("{at}.queryParams[{i}]");
        if q.name.is_empty() {
            return Err(err(format!("{at}.name"), "must not be empty"));
        }
        query.push((q.name.clone(), value(q, &at)?));
    }
    let method = match &m.method {
        None => None,
        Some(s) => Some(
            Method::from_bytes(s.as_bytes())
                .ok()
                .filter(|_| s.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| {
                    err(
                        format!("{at}.method"),
                        format!("{s:?} is not an HTTP method (GET, POST, ...)"),
                    )
                })?,
        ),
    };
    Ok(Match {
        path,
        headers,
        query,
        method,
    })
}

fn percent(v: Option<f64>, at: &str) -> Result<f64, RouteError> {
    let p = v.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&p) || p.is_nan() {
        return Err(err(at, format!("{p} is not a percentage (0 to 100)")));
    }
    Ok(p / 100.0)
}

fn backend(b: &BackendRefSpec, ns: &str, at: &str) -> Result<Backend, RouteError> {
    service_kind(b.kind.as_deref(), b.group.as_deref(), at)?;
    if b.name.is_empty() {
        return Err(err(format!("{at}.name"), "must not be empty"));
    }
    if b.port == Some(0) {
        return Err(err(format!("{at}.port"), "0 is not a port"));
    }
    Ok(Backend {
        service: ServiceRef::new(b.namespace.as_deref().unwrap_or(ns), &b.name),
        port: b.port,
        weight: b.weight.unwrap_or(1),
    })
}

fn edits(h: &HeaderModifierSpec, at: &str) -> Result<HeaderEdits, RouteError> {
    let name = |n: &str, at: String| {
        HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| err(at, format!("{n:?} is not a header name")))
    };
    let pair = |v: &HeaderValueSpec, at: String| -> Result<(HeaderName, HeaderValue), RouteError> {
        let n = name(&v.name, format!("{at}.name"))?;
        let val = HeaderValue::from_str(&v.value).map_err(|_| {
            err(
                format!("{at}.value"),
                format!("{:?} is not a header value", v.value),
            )
        })?;
        Ok((n, val))
    };
    Ok(HeaderEdits {
        set: h
            .set
            .iter()
            .enumerate()
            .map(|(i, v)| pair(v, format!("{at}.set[{i}]")))
            .collect::<Result<_, _>>()?,
        add: h
            .add
            .iter()
            .enumerate()
            .map(|(i, v)| pair(v, format!("{at}.add[{i}]")))
            .collect::<Result<_, _>>()?,
        remove: h
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(n, format!("{at}.remove[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

fn compile_rule(
    rule: &RuleSpec,
    spec: &HttpRouteSpec,
    key: &str,
    name: &str,
    at: &str,
) -> Result<Rule, RouteError> {
    let ns = &spec.namespace;
    let mut backends = Vec::new();
    for (i, b) in rule.backend_refs.iter().enumerate() {
        backends.push(backend(b, ns, &format!("{at}.backendRefs[{i}]"))?);
    }
    // No backends: each request goes to the parent it addressed (`Rule::pick_for`).
    let total_weight = if backends.is_empty() {
        1
    } else {
        backends.iter().map(|b| u64::from(b.weight)).sum()
    };
    let mut request_headers = HeaderEdits::default();
    let mut response_headers = HeaderEdits::default();
    let mut mirror = None;
    let mut seen_filters = std::collections::HashSet::new();
    for (i, f) in rule.filters.iter().enumerate() {
        let at = format!("{at}.filters[{i}]");
        let bodies = [
            ("requestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("requestMirror", f.request_mirror.is_some()),
        ];
        let body_of = |present: bool, field: &str| {
            if !present {
                return Err(err(
                    format!("{at}.{field}"),
                    format!("required by type {}", f.kind),
                ));
            }
            match bodies.iter().find(|(name, set)| *set && *name != field) {
                Some((other, _)) => Err(err(
                    format!("{at}.{other}"),
                    format!("does not belong to a filter of type {}", f.kind),
                )),
                None => Ok(()),
            }
        };
        if !seen_filters.insert(f.kind.clone()) {
            return Err(err(
                format!("{at}.type"),
                format!(
                    "a second {} filter in one rule (Gateway API allows one)",
                    f.kind
                ),
            ));
        }
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                body_of(f.request_header_modifier.is_some(), "requestHeaderModifier")?;
                if let Some(h) = &f.request_header_modifier {
                    request_headers = edits(h, &format!("{at}.requestHeaderModifier"))?;
                }
            }
            "ResponseHeaderModifier" => {
                body_of(
                    f.response_header_modifier.is_some(),
                    "responseHeaderModifier",
                )?;
                if let Some(h) = &f.response_header_modifier {
                    response_headers = edits(h, &format!("{at}.responseHeaderModifier"))?;
                }
            }
            "RequestMirror" => {
                body_of(f.request_mirror.is_some(), "requestMirror")?;
                if let Some(m) = &f.request_mirror {
                    mirror = Some(Mirror {
                        backend: backend(
                            &m.backend_ref,
                            ns,
                            &format!("{at}.requestMirror.backendRef"),
                        )?,
                        fraction: percent(m.percent, &format!("{at}.requestMirror.percent"))?,
                    });
                }
            }
            other => {
                return Err(err(
                    format!("{at}.type"),
                    format!(
                        "{other:?}: use RequestHeaderModifier, ResponseHeaderModifier or RequestMirror"
                    ),
                ));
            }
        }
    }
    let t = rule.timeouts.clone().unwrap_or_default();
    let request_timeout = opt_duration(t.request.as_deref(), &format!("{at}.timeouts.request"))?;
    let backend_timeout = opt_duration(
        t.backend_request.as_deref(),
        &format!("{at}.timeouts.backendRequest"),
    )?;
    if let (Some(r), Some(b)) = (request_timeout, backend_timeout)
        && b > r
    {
        return Err(err(
            format!("{at}.timeouts.backendRequest"),
            "longer than timeouts.request, which bounds every attempt together",
        ));
    }
    let retry = match &rule.retry {
        None => backend_timeout.map(|t| Retry {
            attempts: 0,
            per_try_timeout: Some(t),
            ..default_retry()
        }),
        Some(r) => Some(compile_retry(r, backend_timeout, &format!("{at}.retry"))?),
    };
    if let (Some(req), Some(try_t)) = (
        request_timeout,
        retry.as_ref().and_then(|r| r.per_try_timeout),
    ) && try_t > req
    {
        return Err(err(
            format!("{at}.retry.perTryTimeout"),
            "longer than timeouts.request, which bounds every attempt together",
        ));
    }
    let fault = match &rule.fault {
        None => None,
        Some(f) => {
            let at = format!("{at}.fault");
            let delay = match &f.delay {
                None => None,
                Some(d) => Some((
                    duration(&d.fixed_delay, &format!("{at}.delay.fixedDelay"))?,
                    percent(d.percentage, &format!("{at}.delay.percentage"))?,
                )),
            };
            let abort = match &f.abort {
                None => None,
                Some(a) => {
                    let status = http::StatusCode::from_u16(a.http_status)
                        .ok()
                        .filter(|s| (200..=599).contains(&s.as_u16()))
                        .ok_or_else(|| {
                            err(
                                format!("{at}.abort.httpStatus"),
                                format!("{} is not a response status (200-599)", a.http_status),
                            )
                        })?;
                    Some((
                        status,
                        percent(a.percentage, &format!("{at}.abort.percentage"))?,
                    ))
                }
            };
            (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
        }
    };
    Ok(Rule {
        route: Arc::from(key),
        name: Arc::from(name),
        backends,
        total_weight,
        request_timeout,
        retry,
        fault,
        mirror,
        request_headers,
        response_headers,
    })
}

fn default_retry() -> Retry {
    Retry {
        attempts: 2,
        codes: Vec::new(),
        on_5xx: false,
        on_gateway_error: false,
        on_reset: true,
        on_connect_failure: true,
        backoff: Duration::from_millis(25),
        per_try_timeout: None,
        budget_percent: 0.2,
        min_retry_concurrency: 3,
    }
}

fn compile_retry(
    r: &RetrySpec,
    backend_timeout: Option<Duration>,
    at: &str,
) -> Result<Retry, RouteError> {
    let mut out = default_retry();
    if let Some(a) = r.attempts {
        if a > MAX_ATTEMPTS {
            return Err(err(
                format!("{at}.attempts"),
                format!("{a}: at most {MAX_ATTEMPTS}"),
            ));
        }
        out.attempts = a;
    }
    for (i, c) in r.codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            return Err(err(
                format!("{at}.codes[{i}]"),
                format!("{c} is not a response status"),
            ));
        }
    }
    out.codes = r.codes.clone();
    if let Some(b) = &r.backoff {
        out.backoff = duration(b, &format!("{at}.backoff"))?;
    }
    out.per_try_timeout = match &r.per_try_timeout {
        Some(t) => Some(duration(t, &format!("{at}.perTryTimeout"))?),
        None => backend_timeout,
    };
    if let Some(on) = &r.retry_on {
        out.on_reset = false;
        out.on_connect_failure = false;
        for (i, cond) in on.iter().enumerate() {
            match cond.as_str() {
                "reset" => out.on_reset = true,
                "connect-failure" => out.on_connect_failure = true,
                "5xx" => out.on_5xx = true,
                "gateway-error" => out.on_gateway_error = true,
                // Istio's spelling for "the codes list".
                "retriable-status-codes" => {}
                other => {
                    return Err(err(
                        format!("{at}.retryOn[{i}]"),
                        format!(
                            "{other:?}: use connect-failure, reset, 5xx, gateway-error or retriable-status-codes"
                        ),
                    ));
                }
            }
        }
    }
    out.budget_percent = percent(
        r.budget_percent.or(Some(20.0)),
        &format!("{at}.budgetPercent"),
    )?;
    if let Some(m) = r.min_retry_concurrency {
        out.min_retry_concurrency = m;
    }
    Ok(out)
}

fn opt_duration(v: Option<&str>, at: &str) -> Result<Option<Duration>, RouteError> {
    v.map(|s| duration(s, at)).transpose()
}

/// A Gateway API duration (GEP-2257): one or more `<number><unit>` with units `h`, `m`, `s`,
/// `ms`, e.g. `1h`, `500ms`, `1m30s`. Zero is refused: a zero timeout would fail everything.
pub fn duration(s: &str, at: &str) -> Result<Duration, RouteError> {
    let bad = || {
        err(
            at,
            format!("{s:?} is not a duration (e.g. 500ms, 10s, 1m30s)"),
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        rest = &rest[len..];
    }
    if total.is_zero() {
        return Err(err(at, "must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
