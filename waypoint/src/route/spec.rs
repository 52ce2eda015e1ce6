//! The shape of `httpRoutes` in the mesh config file: what serde reads (Gateway API
//! `HTTPRoute`, plus Istio VirtualService's `fault` and retry fields). Every struct denies
//! unknown keys, so a typo is an error with its path. The checks that need more than one
//! field are `RouteTable::build`'s.

use serde::Deserialize;

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
    /// Set for a translated GRPCRoute ([`super::grpc_to_http_routes`]): errors name
    /// `grpcRoutes[...]`, and its name may also be an HTTPRoute's.
    #[serde(skip)]
    pub grpc: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRefSpec {
    /// `Service` (the default) or `ServiceEntry` (group `networking.istio.io`, by its
    /// name); a Gateway parent is not a waypoint's business.
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
    /// A Gateway listener's name: istiod does not read it for a Service or ServiceEntry
    /// parent, and neither does this.
    #[serde(default)]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Taken and not applied, as istiod takes it (it has no session affinity to map it to):
    /// a route that sets it still routes. Said with a warning.
    #[serde(default)]
    pub session_persistence: Option<serde::de::IgnoredAny>,
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
    /// Set by the VirtualService translation: Istio's `corsPolicy` (an HTTPRoute's is its
    /// `CORS` filter).
    #[serde(skip)]
    pub cors: Option<super::CorsSpec>,
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
    /// Set by the GRPCRoute translation for a match without a method: it has no path
    /// condition, and ranks below every match that has one (as istiod ranks a route
    /// without a URI match).
    #[serde(skip)]
    pub no_path: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatchSpec {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub value: String,
    /// Set by the VirtualService translation: the Istio string prefix this
    /// `RegularExpression` stands for, which a rewrite replaces.
    #[serde(skip)]
    pub literal_prefix: Option<String>,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterSpec {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`, `URLRewrite`,
    /// `RequestRedirect` or `CORS`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(default)]
    pub request_mirror: Option<MirrorSpec>,
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewriteSpec>,
    #[serde(default)]
    pub request_redirect: Option<RedirectSpec>,
    /// Gateway API's `HTTPCORSFilter` (type `CORS`).
    #[serde(default)]
    pub cors: Option<HttpCorsSpec>,
}

/// Gateway API's `HTTPCORSFilter`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCorsSpec {
    /// `<scheme>://<host>(:<port>)`, `*` in the host a greedy match to the left; `*` alone:
    /// every origin.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Seconds; the CRD's default is 5 (the API server fills it in; so does this file).
    #[serde(default)]
    pub max_age: Option<i64>,
}

/// Gateway API's `HTTPURLRewriteFilter`: what the backend is sent instead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewriteSpec {
    /// Replaces the `Host` header (`:authority`).
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
}

/// Gateway API's `HTTPPathModifier`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifierSpec {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
    /// Set by the VirtualService translation: Istio's `rewrite.uri`, which replaces the
    /// matched string prefix, or the whole path after an exact or regex match.
    #[serde(skip)]
    pub istio: bool,
    /// Set by the VirtualService translation: Istio's `rewrite.uriRegexRewrite`, as
    /// (pattern, substitution in RE2's `\1` form).
    #[serde(skip)]
    pub istio_regex: Option<(String, String)>,
}

/// Gateway API's `HTTPRequestRedirectFilter`: the answer is a redirect, nothing is sent on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectSpec {
    /// `http` or `https`; default: the request's (`http` inside the mesh).
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifierSpec>,
    #[serde(default)]
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default)]
    pub status_code: Option<u16>,
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
    /// Header edits for the requests this backend gets and their responses
    /// (`RequestHeaderModifier`, `ResponseHeaderModifier`: what istiod supports here),
    /// applied in istiod's order with the rule's ([`super::Rule::backend_edits_last`]).
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Set by the VirtualService translation: a DestinationRule subset of the Service
    /// (Gateway API has none: it routes to a Service per version).
    #[serde(skip)]
    pub subset: Option<String>,
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
    /// One of `httpStatus` and `grpcStatus`.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// A gRPC status by name (`UNAVAILABLE`), as Istio's `grpcStatus`.
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub percentage: Option<f64>,
}
