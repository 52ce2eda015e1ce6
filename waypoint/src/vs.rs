//! Istio `VirtualService`, the subset that maps onto an `HTTPRoute`: each VirtualService is
//! translated into one [`HttpRouteSpec`] whose rules keep the VirtualService's order (Istio
//! takes the first `http` entry that matches, not the most specific one).
//!
//! The translation keeps Istio's meaning where the two differ:
//! - `uri: {prefix}` is a string prefix (`/api` matches `/apiv2`), so it becomes an anchored
//!   regular expression, not Gateway API's segment-wise `PathPrefix`;
//! - header `prefix` matches likewise become regular expressions;
//! - `retryOn` is Envoy's list: `5xx`, `gateway-error`, `connect-failure`, `reset`,
//!   `refused-stream` (a reset here), `retriable-status-codes` and numeric codes; the gRPC
//!   conditions (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
//!   `unavailable`) are accepted and have no effect, since backends are reached over
//!   HTTP/1.1, where a gRPC status arrives in trailers after the retry decision.
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
    BackendRefSpec, FaultSpec, FilterSpec, HeaderModifierSpec, HeaderValueSpec, HttpRouteSpec,
    MatchSpec, MirrorSpec, ParentRefSpec, PathMatchSpec, PathModifierSpec, RedirectSpec, RetrySpec,
    RouteError, RuleSpec, ServiceRef, TimeoutsSpec, UrlRewriteSpec, ValueMatchSpec, err,
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
    pub http_status: u16,
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
            resolve(&vs.namespace, host)
                .ok_or_else(|| err(at, format!("{host:?} is no Service of the mesh")))
        };
        let mut parent_refs = Vec::new();
        for (i, h) in vs.hosts.iter().enumerate() {
            let s = service(h, format!("{base}.hosts[{i}]"))?;
            parent_refs.push(ParentRefSpec {
                kind: None,
                group: None,
                name: s.name.to_string(),
                namespace: Some(s.namespace.to_string()),
                port: None,
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
        });
    }
    Ok(out)
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
        });
    }
    let mut backend_refs = Vec::new();
    for (j, r) in e.route.iter().enumerate() {
        backend_refs.push(backend(
            &r.destination,
            r.weight,
            &format!("{at}.route[{j}].destination"),
            service,
            subsets,
        )?);
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
        if let Some(r) = &h.request {
            filters.push(FilterSpec {
                kind: "RequestHeaderModifier".into(),
                request_header_modifier: Some(ops(r)),
                response_header_modifier: None,
                ..FilterSpec::default()
            });
        }
        if let Some(r) = &h.response {
            filters.push(FilterSpec {
                kind: "ResponseHeaderModifier".into(),
                request_header_modifier: None,
                response_header_modifier: Some(ops(r)),
                ..FilterSpec::default()
            });
        }
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
            percentage: a.percentage.as_ref().map(|p| p.value),
        }),
    });
    Ok(RuleSpec {
        name: e.name.clone(),
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
    Ok(BackendRefSpec {
        kind: None,
        group: None,
        name: s.name.to_string(),
        namespace: Some(s.namespace.to_string()),
        port: d.port.as_ref().map(|p| p.number),
        weight,
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
                "refused-stream" => on.push("reset".to_string()),
                "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
                | "unavailable" => {}
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
mod tests {
    use super::*;
    use crate::route::RouteTable;

    fn resolve(ns: &str, host: &str) -> Option<ServiceRef> {
        let name = host.split('.').next()?;
        ["reviews", "reviews-v2", "shadow"]
            .contains(&name)
            .then(|| ServiceRef::new(ns, name))
    }

    fn specs(yaml: &str) -> Vec<VirtualServiceSpec> {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const VS: &str = "
- name: reviews
  namespace: demo
  hosts: [reviews]
  http:
    - name: first
      match: [{headers: {x-a: {exact: \"1\"}}}]
      route: [{destination: {host: reviews-v2, port: {number: 80}}}]
    - name: exact
      match: [{uri: {exact: /api/x}}]
      route: [{destination: {host: reviews}}]
      retries: {attempts: 3, perTryTimeout: 200ms, retryOn: \"5xx,refused-stream,unavailable,503\"}
    - name: prefix
      match: [{uri: {prefix: /api}, method: {exact: GET}}]
      route:
        - {destination: {host: reviews}, weight: 90}
        - {destination: {host: reviews-v2}, weight: 10}
      timeout: 2s
      fault: {abort: {httpStatus: 418, percentage: {value: 5}}}
      mirror: {host: shadow}
      mirrorPercentage: {value: 20}
      headers: {request: {set: {x-route: prefix}, remove: [x-secret]}, response: {add: {x-by: vs}}}
    - route: [{destination: {host: reviews}}]
";

    #[test]
    fn entries_keep_their_order_and_istio_meanings() {
        let routes = to_http_routes(&specs(VS), &resolve, &DestinationRules::default()).unwrap();
        assert_eq!(routes.len(), 1);
        assert!(routes[0].ordered);
        let t = RouteTable::build(&routes).unwrap();
        let svc = ServiceRef::new("demo", "reviews");
        let pick = |path: &str, h: &[(&str, &str)]| {
            t.select(&svc, 80, &get(path, h))
                .unwrap()
                .unwrap()
                .name
                .to_string()
        };
        // First match wins, even over a more specific later entry.
        assert_eq!(pick("/api/x", &[("x-a", "1")]), "first");
        assert_eq!(pick("/api/x", &[]), "exact");
        // Istio's prefix is a string prefix, not a path segment.
        assert_eq!(pick("/apiv2", &[]), "prefix");
        assert_eq!(pick("/other", &[]), "3");
        let rule = t.select(&svc, 80, &get("/apiv2", &[])).unwrap().unwrap();
        assert_eq!(rule.backends.len(), 2);
        assert_eq!(
            rule.request_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        assert!(
            rule.mirror
                .as_ref()
                .is_some_and(|m| (m.fraction - 0.2).abs() < 1e-9)
        );
        assert!(rule.fault.as_ref().is_some_and(|f| f.abort.is_some()));
        assert!(!rule.request_headers.is_empty() && !rule.response_headers.is_empty());
        let retry = t
            .select(&svc, 80, &get("/api/x", &[]))
            .unwrap()
            .unwrap()
            .retry
            .clone()
            .unwrap();
        assert_eq!(retry.attempts, 3);
        assert!(retry.on_5xx && retry.on_reset && !retry.on_connect_failure);
        assert_eq!(retry.codes, vec![503]);
        assert_eq!(
            retry.per_try_timeout,
            Some(std::time::Duration::from_millis(200))
        );
    }

    #[test]
    fn subsets_come_from_destination_rules() {
        let drs: Vec<crate::dr::DestinationRuleSpec> = serde_yaml::from_str(
            "[{name: reviews, namespace: demo, host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}]",
        )
        .unwrap();
        let drs = DestinationRules::build(&drs, &resolve).unwrap();
        let yaml = "
- name: reviews
  namespace: demo
  hosts: [reviews]
  http:
    - route:
        - {destination: {host: reviews, subset: v1}, weight: 75}
        - {destination: {host: reviews, subset: v2}, weight: 25}
      mirror: {host: reviews, subset: v2}
";
        let routes = to_http_routes(&specs(yaml), &resolve, &drs).unwrap();
        let t = RouteTable::build(&routes).unwrap();
        let svc = ServiceRef::new("demo", "reviews");
        let rule = t.select(&svc, 80, &get("/", &[])).unwrap().unwrap();
        let subsets: Vec<_> = rule.backends.iter().map(|b| b.subset.as_deref()).collect();
        assert_eq!(subsets, [Some("v1"), Some("v2")]);
        assert_eq!(
            rule.mirror
                .as_ref()
                .and_then(|m| m.backend.subset.as_deref()),
            Some("v2")
        );
        let e = to_http_routes(
            &specs(
                "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v3}}]}]}",
            ),
            &resolve,
            &drs,
        )
        .unwrap_err();
        assert_eq!(
            e.path,
            "virtualServices[demo/v].http[0].route[0].destination.subset"
        );
        assert!(
            e.message.contains("demo/reviews has no subset \"v3\""),
            "{e}"
        );
    }

    #[test]
    fn unsupported_and_unknown_things_are_refused_with_their_field() {
        let cases = [
            (
                "- {name: v, namespace: demo, hosts: [nowhere], http: []}",
                "hosts[0]",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}",
                "destination.subset",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: elsewhere}}]}]}",
                "destination.host",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: reviews}}]}]}",
                "match[0].uri",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{match: [{method: {regex: G.*}}], route: [{destination: {host: reviews}}]}]}",
                "match[0].method",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retries: {retryOn: \"sometimes\"}}]}",
                "retries.retryOn",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{route: []}]}",
                "http[0].route",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{route: [{destination: {host: reviews}}], mirrorPercentage: {value: 5}}]}",
                "mirrorPercentage",
            ),
            ("- {name: v, namespace: demo, hosts: [], http: []}", "hosts"),
        ];
        for (yaml, field) in cases {
            let e =
                to_http_routes(&specs(yaml), &resolve, &DestinationRules::default()).unwrap_err();
            assert!(e.path.ends_with(field), "{yaml}: {e}");
            assert!(e.path.starts_with("virtualServices[demo/v]"), "{e}");
        }
        // Keys Istio has and this does not take are serde errors, not silent.
        assert!(
            serde_yaml::from_str::<Vec<VirtualServiceSpec>>(
                "- {name: v, namespace: demo, hosts: [reviews], gateways: [mesh]}"
            )
            .is_err()
        );
    }

    #[test]
    fn rewrite_and_redirect_keep_istio_meanings() {
        let yaml = "
- name: v
  namespace: demo
  hosts: [reviews]
  http:
    - name: moved
      match: [{uri: {exact: /old}}]
      redirect: {uri: /new, authority: reviews.example}
    - name: prefixed
      match: [{uri: {prefix: /api}}, {uri: {exact: /health}}]
      rewrite: {uri: /v2, authority: reviews-internal}
      route: [{destination: {host: reviews}}]
    - name: rest
      rewrite: {uri: /base/}
      route: [{destination: {host: reviews}}]
";
        let routes = to_http_routes(&specs(yaml), &resolve, &DestinationRules::default()).unwrap();
        let t = RouteTable::build(&routes).unwrap();
        let svc = ServiceRef::new("demo", "reviews");
        let rule = |path: &str| t.select(&svc, 80, &get(path, &[])).unwrap().unwrap();
        // Redirect: 301 by default, the whole path replaced.
        let r = rule("/old");
        let redirect = r.redirect.as_ref().unwrap();
        assert_eq!(redirect.status.as_u16(), 301);
        let parts = get("/old?x=1", &[("host", "reviews")]);
        assert_eq!(
            redirect.location(&parts, 80),
            "http://reviews.example/new?x=1"
        );
        // Rewrite after a string prefix: only the prefix; after an exact match: the path.
        let path_of = |p: &str| {
            let r = rule(p);
            let rw = r.rewrite.as_ref().unwrap();
            assert_eq!(rw.host.as_ref().unwrap(), "reviews-internal");
            rw.path.as_ref().unwrap().apply(p)
        };
        assert_eq!(path_of("/apiv1/users"), "/v2v1/users");
        assert_eq!(path_of("/health"), "/v2");
        // No uri match: Envoy's `/` prefix is what is replaced.
        let r = rule("/x/y");
        assert_eq!(
            r.rewrite
                .as_ref()
                .unwrap()
                .path
                .as_ref()
                .unwrap()
                .apply("/x/y"),
            "/base/x/y"
        );
        // A redirect with a route, or neither, is refused with the field named.
        for (yaml, field) in [
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{redirect: {uri: /a}, route: [{destination: {host: reviews}}]}]}",
                "http[0].route",
            ),
            (
                "- {name: v, namespace: demo, hosts: [reviews], http: [{redirect: {uri: /a, redirectCode: 200}}]}",
                "requestRedirect.statusCode",
            ),
        ] {
            let e = to_http_routes(&specs(yaml), &resolve, &DestinationRules::default())
                .and_then(|r| RouteTable::build(&r).map(|_| ()).map(|_| r))
                .unwrap_err();
            assert!(e.path.ends_with(field), "{yaml}: {e}");
        }
    }

    #[test]
    fn uri_regex_rewrite_replaces_every_match_as_envoy() {
        let yaml = r#"
- name: v
  namespace: demo
  hosts: [reviews]
  http:
    - match: [{uri: {prefix: /service}}]
      rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\2/instance/\\1"}}
      route: [{destination: {host: reviews}}]
    - rewrite: {uriRegexRewrite: {match: "o", rewrite: "0$"}}
      route: [{destination: {host: reviews}}]
"#;
        let routes = to_http_routes(&specs(yaml), &resolve, &DestinationRules::default()).unwrap();
        let t = RouteTable::build(&routes).unwrap();
        let svc = ServiceRef::new("demo", "reviews");
        let apply = |p: &str| {
            let r = t.select(&svc, 80, &get(p, &[])).unwrap().unwrap();
            r.rewrite.as_ref().unwrap().path.as_ref().unwrap().apply(p)
        };
        // Envoy's documented example: groups swapped.
        assert_eq!(apply("/service/foo/v1/api"), "/v1/api/instance/foo");
        // Every match, and a `$` is literal.
        assert_eq!(apply("/foo/boo"), "/f0$0$/b0$0$");
        for (rewrite, field) in [
            (
                "{uri: /a, uriRegexRewrite: {match: a, rewrite: b}}",
                "rewrite.uriRegexRewrite",
            ),
            (
                "{uriRegexRewrite: {match: \"(\", rewrite: b}}",
                "rewrite.uriRegexRewrite.match",
            ),
            (
                "{uriRegexRewrite: {match: \"(a)\", rewrite: \"/\\\\2\"}}",
                "rewrite.uriRegexRewrite.rewrite",
            ),
            (
                "{uriRegexRewrite: {match: a, rewrite: \"/x?y\"}}",
                "rewrite.uriRegexRewrite.rewrite",
            ),
        ] {
            let yaml = format!(
                "- {{name: v, namespace: demo, hosts: [reviews], http: [{{rewrite: {rewrite}, route: [{{destination: {{host: reviews}}}}]}}]}}"
            );
            let e =
                to_http_routes(&specs(&yaml), &resolve, &DestinationRules::default()).unwrap_err();
            assert_eq!(
                e.path,
                format!("virtualServices[demo/v].http[0].{field}"),
                "{e}"
            );
        }
    }
}
