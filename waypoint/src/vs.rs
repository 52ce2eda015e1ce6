//! Istio `VirtualService`, the subset that maps onto an `HTTPRoute`: each VirtualService is
//! translated into one [`HttpRouteSpec`] whose rules keep the VirtualService's order (Istio
//! takes the first `http` entry that matches, not the most specific one).
//!
//! The translation keeps Istio's meaning where the two differ:
//! - `uri: {prefix}` is a string prefix (`/api` matches `/apiv2`), so it becomes an anchored
//!   regular expression, not Gateway API's segment-wise `PathPrefix`;
//! - header `prefix` matches likewise become regular expressions;
//! - `retryOn` is Envoy's list: `5xx`, `gateway-error`, `connect-failure`, `reset`,
//!   `refused-stream` (an HTTP/2 backend's `REFUSED_STREAM`), `retriable-status-codes`,
//!   numeric codes, and the gRPC conditions (`cancelled`, `deadline-exceeded`, `internal`,
//!   `resource-exhausted`, `unavailable`), which, as Envoy's, retry a trailers-only answer
//!   whose head carries that `grpc-status` (a status in trailers comes after the response
//!   is the client's); an entry without `retries` gets Istio's default policy, and
//!   `attempts: 0` turns retries off.
//!
//! - `rewrite.uri` replaces the matched string prefix, or the whole path after an exact or
//!   regex match (Envoy's `prefix_rewrite`); `redirect.uri` replaces the whole path, and a
//!   redirect is 301 unless `redirectCode` says otherwise.
//!
//! - `destination.subset` (and `mirror.subset`) must name a subset of the DestinationRule
//!   for that host ([`crate::dr`]); the request then goes to the subset's endpoints only.
//!
//! - `rewrite.uriRegexRewrite` replaces every match of its pattern in the path (Envoy's
//!   `regex_rewrite`), with RE2's `\1` group references.
//!
//! Not supported, and refused with the field named: `redirect.derivePort`, `delegate`, regex methods,
//! `sourceLabels`, `gateways`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::dr::DestinationRules;
use crate::route::{
    BackendRefSpec, FaultSpec, FilterSpec, HOSTNAME_KIND, HeaderModifierSpec, HeaderValueSpec,
    HttpRouteSpec, ISTIO_NETWORKING, MatchSpec, MirrorSpec, ParentRefSpec, PathMatchSpec,
    PathModifierSpec, RedirectSpec, RetrySpec, RouteError, RuleSpec, ServiceRef, TimeoutsSpec,
    UrlRewriteSpec, ValueMatchSpec, err,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    pub name: String,
    pub namespace: String,
    /// Service hostnames (`reviews`, `reviews.demo`, `reviews.demo.svc.cluster.local`).
    pub hosts: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpEntrySpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpEntrySpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<VsMatchSpec>,
    #[serde(default)]
    pub route: Vec<DestinationWeightSpec>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<VsRetriesSpec>,
    #[serde(default)]
    pub fault: Option<VsFaultSpec>,
    #[serde(default)]
    pub mirror: Option<DestinationSpec>,
    #[serde(default)]
    pub mirror_percentage: Option<PercentSpec>,
    #[serde(default)]
    pub headers: Option<VsHeadersSpec>,
    #[serde(default)]
    pub rewrite: Option<VsRewriteSpec>,
    #[serde(default)]
    pub redirect: Option<VsRedirectSpec>,
    #[serde(default)]
    pub cors_policy: Option<VsCorsPolicySpec>,
}

/// Istio's `CorsPolicy` ([`crate::route::Cors`] applies it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsCorsPolicySpec {
    #[serde(default)]
    pub allow_origins: Vec<StringMatchSpec>,
    /// The older form of `allowOrigins`: exact origins, used when that is empty.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// A duration (`24h`); whole seconds go to the client.
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `FORWARD` (the default) or `IGNORE`.
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsRewriteSpec {
    /// Replaces the matched prefix (or the whole path after an exact or regex match).
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces every match of a pattern in the path.
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewriteSpec>,
    /// Replaces the Host / `:authority`.
    #[serde(default)]
    pub authority: Option<String>,
}

/// Istio's `RegexRewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewriteSpec {
    /// An RE2 pattern, unanchored.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The substitution; `\1` is the first capture group.
    pub rewrite: String,
}

/// Istio's `HTTPRedirect` (`derivePort` is not supported: the port is Gateway API's rule).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsRedirectSpec {
    /// Replaces the whole path.
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub scheme: Option<String>,
    /// Default 301, as Istio.
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

/// Istio's `StringMatch`: exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatchSpec {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsMatchSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatchSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub method: Option<StringMatchSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationWeightSpec {
    pub destination: DestinationSpec,
    #[serde(default)]
    pub weight: Option<u32>,
    /// Header edits for the requests this destination gets and their responses.
    #[serde(default)]
    pub headers: Option<VsHeadersSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationSpec {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub number: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PercentSpec {
    pub value: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsRetriesSpec {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsFaultSpec {
    #[serde(default)]
    pub delay: Option<VsDelaySpec>,
    #[serde(default)]
    pub abort: Option<VsAbortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsDelaySpec {
    pub fixed_delay: String,
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsAbortSpec {
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsHeadersSpec {
    #[serde(default)]
    pub request: Option<VsHeaderOpsSpec>,
    #[serde(default)]
    pub response: Option<VsHeaderOpsSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsHeaderOpsSpec {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Translates `specs` into HTTPRoutes (ordered). `resolve(namespace, host)` finds the
/// Service a host names, seen from `namespace` (short names are the VirtualService's
/// namespace's).
/// `subsets` holds the DestinationRules a destination's `subset` must be found in.
pub fn to_http_routes(
    specs: &[VirtualServiceSpec],
    resolve: &dyn Fn(&str, &str) -> Option<ServiceRef>,
    subsets: &DestinationRules,
) -> Result<Vec<HttpRouteSpec>, RouteError> {
    let mut out = Vec::new();
    for vs in specs {
        let base = format!("virtualServices[{}/{}]", vs.namespace, vs.name);
        if vs.hosts.is_empty() {
            return Err(err(
                format!("{base}.hosts"),
                "at least one host is required",
            ));
        }
        let service = |host: &str, at: String| {
            resolve(&vs.namespace, host).ok_or_else(|| err(at, crate::route::no_service(host)))
        };
        let mut parent_refs = Vec::new();
        for (i, h) in vs.hosts.iter().enumerate() {
            let s = service(h, format!("{base}.hosts[{i}]"))?;
            let (kind, group, namespace) = kind_of(&s);
            parent_refs.push(ParentRefSpec {
                kind,
                group,
                name: s.name.to_string(),
                namespace,
                port: None,
                section_name: None,
            });
        }
        let mut rules = Vec::new();
        for (i, e) in vs.http.iter().enumerate() {
            let at = format!("{base}.http[{i}]");
            rules.push(rule(e, &at, &service, subsets)?);
        }
        out.push(HttpRouteSpec {
            name: vs.name.clone(),
            namespace: vs.namespace.clone(),
            parent_refs,
            hostnames: Vec::new(),
            rules,
            ordered: true,
            grpc: false,
        });
    }
    Ok(out)
}

/// How a translated ref names `s`: a Service by namespace and name, or a hostname (kind
/// `Hostname`, no namespace) when the host was not resolved to one.
fn kind_of(s: &ServiceRef) -> (Option<String>, Option<String>, Option<String>) {
    match s.host() {
        Some(_) => (
            Some(HOSTNAME_KIND.to_string()),
            Some(ISTIO_NETWORKING.to_string()),
            None,
        ),
        None => (None, None, Some(s.namespace.to_string())),
    }
}

fn escape_prefix(p: &str) -> String {
    format!("{}.*", regex::escape(p))
}

fn string_match(m: &StringMatchSpec, at: &str) -> Result<(String, String), RouteError> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Ok(("Exact".into(), e.clone())),
        (None, Some(p), None) => Ok(("RegularExpression".into(), escape_prefix(p))),
        (None, None, Some(r)) => Ok(("RegularExpression".into(), r.clone())),
        _ => Err(err(at, "give exactly one of exact, prefix or regex")),
    }
}

fn rule(
    e: &HttpEntrySpec,
    at: &str,
    service: &dyn Fn(&str, String) -> Result<ServiceRef, RouteError>,
    subsets: &DestinationRules,
) -> Result<RuleSpec, RouteError> {
    let mut matches = Vec::new();
    for (j, m) in e.matches.iter().enumerate() {
        let at = format!("{at}.match[{j}]");
        let path = match &m.uri {
            None => None,
            Some(u) => {
                let (kind, value) = string_match(u, &format!("{at}.uri"))?;
                Some(PathMatchSpec {
                    kind: Some(kind),
                    value,
                    // What a `rewrite.uri` replaces.
                    literal_prefix: u.prefix.clone(),
                })
            }
        };
        let values = |map: &BTreeMap<String, StringMatchSpec>, field: &str| {
            map.iter()
                .map(|(name, v)| {
                    let (kind, value) = string_match(v, &format!("{at}.{field}.{name}"))?;
                    Ok(ValueMatchSpec {
                        kind: Some(kind),
                        name: name.clone(),
                        value,
                    })
                })
                .collect::<Result<Vec<_>, RouteError>>()
        };
        let method = match &m.method {
            None => None,
            Some(StringMatchSpec {
                exact: Some(x),
                prefix: None,
                regex: None,
            }) => Some(x.clone()),
            Some(_) => {
                return Err(err(
                    format!("{at}.method"),
                    "only an exact method is supported",
                ));
            }
        };
        matches.push(MatchSpec {
            path,
            headers: values(&m.headers, "headers")?,
            query_params: values(&m.query_params, "queryParams")?,
            method,
            no_path: false,
        });
    }
    let mut backend_refs = Vec::new();
    for (j, r) in e.route.iter().enumerate() {
        // A lone destination takes every request whatever its weight says (istiod sends
        // it as the route's cluster, weight unread).
        let weight = if e.route.len() == 1 { None } else { r.weight };
        let mut b = backend(
            &r.destination,
            weight,
            &format!("{at}.route[{j}].destination"),
            service,
            subsets,
        )?;
        // The destination's own `headers`, before the entry's (Envoy's weighted cluster
        // headers, then the route's).
        if let Some(h) = &r.headers {
            b.filters = header_filters(h);
        }
        backend_refs.push(b);
    }
    match (&e.redirect, backend_refs.is_empty()) {
        (None, true) => {
            return Err(err(
                format!("{at}.route"),
                "at least one destination is required (or a redirect)",
            ));
        }
        (Some(_), false) => {
            return Err(err(
                format!("{at}.route"),
                "an entry with a redirect answers it itself: route and redirect cannot both be given",
            ));
        }
        _ => {}
    }
    let mut filters = Vec::new();
    if let Some(r) = &e.rewrite {
        let path = match (&r.uri, &r.uri_regex_rewrite) {
            (Some(_), Some(_)) => {
                return Err(err(
                    format!("{at}.rewrite.uriRegexRewrite"),
                    "give uri or uriRegexRewrite, not both",
                ));
            }
            (Some(uri), None) => Some(PathModifierSpec {
                kind: "ReplacePrefixMatch".into(),
                replace_prefix_match: Some(uri.clone()),
                istio: true,
                ..PathModifierSpec::default()
            }),
            (None, Some(rx)) => {
                crate::route::check_regex_rewrite(
                    &rx.pattern,
                    &rx.rewrite,
                    &format!("{at}.rewrite.uriRegexRewrite"),
                )?;
                Some(PathModifierSpec {
                    kind: "ReplaceFullPath".into(),
                    istio_regex: Some((rx.pattern.clone(), rx.rewrite.clone())),
                    ..PathModifierSpec::default()
                })
            }
            (None, None) => None,
        };
        filters.push(FilterSpec {
            kind: "URLRewrite".into(),
            url_rewrite: Some(UrlRewriteSpec {
                hostname: r.authority.clone(),
                path,
            }),
            ..FilterSpec::default()
        });
    }
    if let Some(r) = &e.redirect {
        // Istio: the whole path is replaced, whatever the match; 301 by default.
        let path = r.uri.as_ref().map(|uri| PathModifierSpec {
            kind: "ReplaceFullPath".into(),
            replace_full_path: Some(uri.clone()),
            ..PathModifierSpec::default()
        });
        filters.push(FilterSpec {
            kind: "RequestRedirect".into(),
            request_redirect: Some(RedirectSpec {
                scheme: r.scheme.clone(),
                hostname: r.authority.clone(),
                path,
                port: r.port,
                status_code: Some(r.redirect_code.unwrap_or(301)),
            }),
            ..FilterSpec::default()
        });
    }
    if let Some(h) = &e.headers {
        filters.extend(header_filters(h));
    }
    match (&e.mirror, &e.mirror_percentage) {
        (Some(m), p) => filters.push(FilterSpec {
            kind: "RequestMirror".into(),
            request_mirror: Some(MirrorSpec {
                backend_ref: backend(m, None, &format!("{at}.mirror"), service, subsets)?,
                percent: p.as_ref().map(|p| p.value),
            }),
            ..FilterSpec::default()
        }),
        (None, Some(_)) => {
            return Err(err(
                format!("{at}.mirrorPercentage"),
                "given without a mirror",
            ));
        }
        (None, None) => {}
    }
    let retry = match &e.retries {
        None => None,
        Some(r) => Some(retry(r, &format!("{at}.retries"))?),
    };
    let fault = e.fault.as_ref().map(|f| FaultSpec {
        delay: f.delay.as_ref().map(|d| crate::route::DelaySpec {
            fixed_delay: d.fixed_delay.clone(),
            percentage: d.percentage.as_ref().map(|p| p.value),
        }),
        abort: f.abort.as_ref().map(|a| crate::route::AbortSpec {
            http_status: a.http_status,
            grpc_status: a.grpc_status.clone(),
            percentage: a.percentage.as_ref().map(|p| p.value),
        }),
    });
    let cors = match &e.cors_policy {
        None => None,
        Some(c) => Some(cors(c, &format!("{at}.corsPolicy"))?),
    };
    Ok(RuleSpec {
        cors,
        name: e.name.clone(),
        session_persistence: None,
        matches,
        filters,
        backend_refs,
        timeouts: e.timeout.as_ref().map(|t| TimeoutsSpec {
            request: Some(t.clone()),
            backend_request: None,
        }),
        retry,
        fault,
    })
}

/// Istio's `CorsPolicy`, checked (`at` names it), as istiod hands it to Envoy.
fn cors(c: &VsCorsPolicySpec, at: &str) -> Result<crate::route::CorsSpec, RouteError> {
    use crate::route::OriginSpec;
    let allow_origins = if c.allow_origins.is_empty() {
        c.allow_origin
            .iter()
            .map(|o| OriginSpec::Exact(o.clone()))
            .collect()
    } else {
        c.allow_origins
            .iter()
            .enumerate()
            .map(|(i, m)| match (&m.exact, &m.prefix, &m.regex) {
                // Empty matchers are refused, as Istio's validation refuses them (an
                // empty prefix would allow every origin).
                (Some(v), None, None) | (None, Some(v), None) | (None, None, Some(v))
                    if v.is_empty() =>
                {
                    Err(err(
                        format!("{at}.allowOrigins[{i}]"),
                        "an empty match: give an origin, a prefix or a regex",
                    ))
                }
                (Some(e), None, None) => Ok(OriginSpec::Exact(e.clone())),
                (None, Some(p), None) => Ok(OriginSpec::Prefix(p.clone())),
                (None, None, Some(r)) => Ok(OriginSpec::Regex(r.clone())),
                _ => Err(err(
                    format!("{at}.allowOrigins[{i}]"),
                    "give exactly one of exact, prefix or regex",
                )),
            })
            .collect::<Result<_, _>>()?
    };
    let forward_unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("FORWARD") | Some("UNSPECIFIED") => true,
        Some("IGNORE") => false,
        Some(other) => {
            return Err(err(
                format!("{at}.unmatchedPreflights"),
                format!("{other:?}: FORWARD or IGNORE"),
            ));
        }
    };
    let max_age = match &c.max_age {
        None => None,
        Some(d) => Some(crate::route::duration(d, &format!("{at}.maxAge"))?.as_secs()),
    };
    let spec = crate::route::CorsSpec {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights,
    };
    // Checked here, so an error names the VirtualService's field.
    crate::route::Cors::compile(&spec, at)?;
    Ok(spec)
}

/// Istio's `Headers` (request and response `set`/`add`/`remove`) as Gateway API header
/// modifier filters.
fn header_filters(h: &VsHeadersSpec) -> Vec<FilterSpec> {
    let ops = |o: &VsHeaderOpsSpec| HeaderModifierSpec {
        set: o
            .set
            .iter()
            .map(|(n, v)| HeaderValueSpec {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
        add: o
            .add
            .iter()
            .map(|(n, v)| HeaderValueSpec {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
        remove: o.remove.clone(),
    };
    let mut filters = Vec::new();
    if let Some(r) = &h.request {
        filters.push(FilterSpec {
            kind: "RequestHeaderModifier".into(),
            request_header_modifier: Some(ops(r)),
            ..FilterSpec::default()
        });
    }
    if let Some(r) = &h.response {
        filters.push(FilterSpec {
            kind: "ResponseHeaderModifier".into(),
            response_header_modifier: Some(ops(r)),
            ..FilterSpec::default()
        });
    }
    filters
}

fn backend(
    d: &DestinationSpec,
    weight: Option<u32>,
    at: &str,
    service: &dyn Fn(&str, String) -> Result<ServiceRef, RouteError>,
    subsets: &DestinationRules,
) -> Result<BackendRefSpec, RouteError> {
    let s = service(&d.host, format!("{at}.host"))?;
    if let Some(name) = &d.subset
        && subsets.subset(&s, name).is_none()
    {
        let why = match subsets.get(&s) {
            Some(rule) => format!(
                "DestinationRule {} of {s} has no subset {name:?}",
                rule.name
            ),
            None => format!("no DestinationRule names {s}, so it has no subset {name:?}"),
        };
        return Err(err(format!("{at}.subset"), why));
    }
    let (kind, group, namespace) = kind_of(&s);
    Ok(BackendRefSpec {
        kind,
        group,
        name: s.name.to_string(),
        namespace,
        port: d.port.as_ref().map(|p| p.number),
        weight,
        filters: Vec::new(),
        subset: d.subset.clone(),
    })
}

fn retry(r: &VsRetriesSpec, at: &str) -> Result<RetrySpec, RouteError> {
    let mut codes = Vec::new();
    let mut on = Vec::new();
    if let Some(list) = &r.retry_on {
        for cond in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match cond {
                "5xx"
                | "gateway-error"
                | "connect-failure"
                | "reset"
                | "retriable-status-codes" => on.push(cond.to_string()),
                "refused-stream" => on.push(cond.to_string()),
                "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
                | "unavailable" => on.push(cond.to_string()),
                code => match code.parse::<u16>() {
                    Ok(c) => codes.push(c),
                    Err(_) => {
                        return Err(err(
                            format!("{at}.retryOn"),
                            format!(
                                "{code:?}: use 5xx, gateway-error, connect-failure, reset, refused-stream, retriable-status-codes, a gRPC status or a response code"
                            ),
                        ));
                    }
                },
            }
        }
    }
    Ok(RetrySpec {
        attempts: r.attempts,
        codes,
        backoff: None,
        per_try_timeout: r.per_try_timeout.clone(),
        retry_on: r.retry_on.as_ref().map(|_| on),
        budget_percent: None,
        min_retry_concurrency: None,
    })
}

#[cfg(test)]
mod tests;
