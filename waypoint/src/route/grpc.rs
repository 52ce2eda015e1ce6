//! Gateway API `GRPCRoute`, as the mesh config's `grpcRoutes` list and the cluster's
//! `grpcroutes` give it: checked here with its own field names, then turned into the
//! HTTPRoute it stands for, since a gRPC call is an HTTP/2 POST to `/<service>/<method>`.
//! istiod does the same (its GRPCRoute conversion), and so does the match translation:
//!
//! | `method` match                 | path match                       |
//! |--------------------------------|----------------------------------|
//! | Exact, service and method      | Exact `/<service>/<method>`      |
//! | Exact, service only            | PathPrefix `/<service>/`         |
//! | Exact, method only             | RegularExpression `/[^/]+/<method>` |
//! | RegularExpression, both        | RegularExpression `/<service>/<method>` |
//! | RegularExpression, service only | RegularExpression `/<service>/.+` |
//! | RegularExpression, method only | RegularExpression `/[^/]+/<method>` |
//!
//! Precedence is istiod's for the routes it makes (its `sortHTTPRoutes`), the same order as
//! an HTTPRoute's, so the two kinds rank together on one Service: an exact method, then a
//! whole service (the longer first), then the regular expressions, then matches on
//! metadata alone (no path condition), each tie going to more header matches. For exact
//! matches this is GRPCRoute's own order (more service characters, then more method
//! characters, then more header matches).
//!
//! A GRPCRoute has fewer filters than an HTTPRoute (`RequestHeaderModifier`,
//! `ResponseHeaderModifier`, `RequestMirror`) and no `timeouts` or `retry`; the fields it
//! does not have are refused by name, as every spec here refuses unknown keys.

use serde::Deserialize;

use super::*;

/// One `GRPCRoute`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    pub name: String,
    pub namespace: String,
    /// The Services whose traffic the route takes (GAMMA: `kind: Service`).
    pub parent_refs: Vec<ParentRefSpec>,
    /// `:authority` values the route answers (`*.example.com` wildcards); empty: all.
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRuleSpec {
    #[serde(default)]
    pub name: Option<String>,
    /// Taken and not applied, as an HTTPRoute's.
    #[serde(default)]
    pub session_persistence: Option<serde::de::IgnoredAny>,
    /// Alternatives; none: every call.
    #[serde(default)]
    pub matches: Vec<GrpcMatchSpec>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Weighted Services; none: the parent Service itself.
    #[serde(default)]
    pub backend_refs: Vec<BackendRefSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMatchSpec {
    #[serde(default)]
    pub method: Option<GrpcMethodMatchSpec>,
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
}

/// `GRPCMethodMatch`: the service (`package.Service`), the method, or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatchSpec {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

/// The filters a GRPCRoute rule may have.
const GRPC_FILTERS: [&str; 3] = [
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
];

/// Gateway API's validation of an exact service name: dot-separated identifiers, with an
/// optional leading dot.
fn is_service_name(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_identifier)
}

/// An exact method name: one identifier.
fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The HTTPRoutes `specs` stand for, in order; the first error names the GRPCRoute's own
/// field (`grpcRoutes[demo/echo].rules[0].matches[1].method.service`).
pub fn grpc_to_http_routes(specs: &[GrpcRouteSpec]) -> Result<Vec<HttpRouteSpec>, RouteError> {
    specs.iter().map(to_http_route).collect()
}

fn to_http_route(g: &GrpcRouteSpec) -> Result<HttpRouteSpec, RouteError> {
    let base = format!("grpcRoutes[{}/{}]", g.namespace, g.name);
    let mut rules = Vec::with_capacity(g.rules.len());
    for (r, rule) in g.rules.iter().enumerate() {
        let at = format!("{base}.rules[{r}]");
        for (f, filter) in rule.filters.iter().enumerate() {
            if !GRPC_FILTERS.contains(&filter.kind.as_str()) {
                return Err(err(
                    format!("{at}.filters[{f}].type"),
                    format!(
                        "{:?}: a GRPCRoute takes RequestHeaderModifier, ResponseHeaderModifier or RequestMirror",
                        filter.kind
                    ),
                ));
            }
        }
        let mut matches = Vec::with_capacity(rule.matches.len().max(1));
        if rule.matches.is_empty() {
            // Every call, ranked below any match that names something.
            matches.push(MatchSpec {
                no_path: true,
                ..MatchSpec::default()
            });
        }
        for (m, gm) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{m}]");
            let path = match &gm.method {
                None => None,
                Some(mm) => Some(method_path(mm, &format!("{at}.method"))?),
            };
            matches.push(MatchSpec {
                no_path: path.is_none(),
                path,
                headers: gm.headers.clone(),
                query_params: Vec::new(),
                method: None,
            });
        }
        rules.push(RuleSpec {
            name: rule.name.clone(),
            session_persistence: rule.session_persistence,
            matches,
            filters: rule.filters.clone(),
            backend_refs: rule.backend_refs.clone(),
            timeouts: None,
            retry: None,
            fault: None,
            cors: None,
        });
    }
    Ok(HttpRouteSpec {
        name: g.name.clone(),
        namespace: g.namespace.clone(),
        parent_refs: g.parent_refs.clone(),
        hostnames: g.hostnames.clone(),
        rules,
        ordered: false,
        grpc: true,
    })
}

/// The path match a method match stands for (the table in the module docs).
fn method_path(m: &GrpcMethodMatchSpec, at: &str) -> Result<PathMatchSpec, RouteError> {
    let path = |kind: &str, value: String| PathMatchSpec {
        kind: Some(kind.to_string()),
        value,
        literal_prefix: None,
    };
    for (field, v) in [("service", &m.service), ("method", &m.method)] {
        if v.as_deref() == Some("") {
            return Err(err(
                format!("{at}.{field}"),
                "must not be empty (leave it out)",
            ));
        }
    }
    let service = m.service.as_deref();
    let method = m.method.as_deref();
    if service.is_none() && method.is_none() {
        return Err(err(at, "a method match names a service, a method or both"));
    }
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            if let Some(s) = service.filter(|s| !is_service_name(s)) {
                return Err(err(
                    format!("{at}.service"),
                    format!("{s:?} is not a gRPC service name (package.Service)"),
                ));
            }
            if let Some(s) = method.filter(|s| !is_identifier(s)) {
                return Err(err(
                    format!("{at}.method"),
                    format!("{s:?} is not a gRPC method name"),
                ));
            }
            Ok(match (service, method) {
                (Some(s), Some(m)) => path("Exact", format!("/{s}/{m}")),
                (Some(s), None) => path("PathPrefix", format!("/{s}/")),
                // An identifier has nothing a regex reads specially.
                (None, Some(m)) => path("RegularExpression", format!("/[^/]+/{m}")),
                (None, None) => unreachable!("checked above"),
            })
        }
        "RegularExpression" => {
            // Each part must be a regex of its own, so an error names its field.
            for (field, v) in [("service", service), ("method", method)] {
                if let Some(v) = v {
                    compile::regex(v, &format!("{at}.{field}"))?;
                }
            }
            let value = match (service, method) {
                (Some(s), Some(m)) => format!("/(?:{s})/(?:{m})"),
                (Some(s), None) => format!("/(?:{s})/.+"),
                (None, Some(m)) => format!("/[^/]+/(?:{m})"),
                (None, None) => unreachable!("checked above"),
            };
            // The parts can each be fine and the whole not (a group name in both, the size
            // limit): said of this match, not of the path it became.
            compile::regex(&value, at)?;
            Ok(path("RegularExpression", value))
        }
        other => Err(err(
            format!("{at}.type"),
            format!("{other:?}: use Exact or RegularExpression"),
        )),
    }
}
