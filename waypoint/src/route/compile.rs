//! Compiling one route's spec: each check that needs more than serde, with the field it
//! names (`httpRoutes[demo/echo].rules[0].matches[0].path.value`), and the compiled
//! matchers, edits and policies `RouteTable` holds.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::backend::{compile_backend, edits};
use super::*;

pub(super) fn service_kind(
    kind: Option<&str>,
    group: Option<&str>,
    at: &str,
) -> Result<(), RouteError> {
    match kind {
        None | Some("Service") => {}
        Some(k) => {
            return Err(err(
                format!("{at}.kind"),
                format!("{k:?}: a backend is a Service, or a Hostname ({ISTIO_NETWORKING})"),
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

/// A route's parent: a Service, or a ServiceEntry (istiod attaches a route to one for a
/// waypoint, which sees it as a Service of the mesh by its name).
pub(super) fn parent_kind(
    kind: Option<&str>,
    group: Option<&str>,
    at: &str,
) -> Result<(), RouteError> {
    match (kind, group) {
        (Some("ServiceEntry"), Some(ISTIO_NETWORKING)) => Ok(()),
        (Some("ServiceEntry"), g) => Err(err(
            format!("{at}.group"),
            format!(
                "{:?}: a ServiceEntry's group is networking.istio.io",
                g.unwrap_or("")
            ),
        )),
        (None | Some("Service"), _) => service_kind(kind, group, at),
        (Some(k), _) => Err(err(
            format!("{at}.kind"),
            format!("{k:?}: a waypoint's routes attach to a Service or a ServiceEntry"),
        )),
    }
}

pub(super) fn host_match(h: &str) -> Result<HostMatch, String> {
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

/// The compiled size a config's regex may reach (the regex crate's own default is 10 MiB):
/// a route table is per core, and a config must not make a matcher huge.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(super) fn regex(value: &str, at: &str) -> Result<Regex, RouteError> {
    // Alone first: a value that closes a group it did not open (`a)|(?:.*`) would
    // otherwise close the anchoring group below and match anything.
    if let Err(e) = regex::RegexBuilder::new(value)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        return Err(err(
            at,
            format!("{value:?} is not a valid regular expression: {e}"),
        ));
    }
    // Anchored: Gateway API regexes match the whole value.
    regex::RegexBuilder::new(&format!("^(?:{value})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            err(
                at,
                format!("{value:?} is not a valid regular expression: {e}"),
            )
        })
}

pub(super) fn compile_match(m: &MatchSpec, at: &str) -> Result<Match, RouteError> {
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
        no_path: m.no_path,
    })
}

pub(super) fn percent(v: Option<f64>, at: &str) -> Result<f64, RouteError> {
    let p = v.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&p) || p.is_nan() {
        return Err(err(at, format!("{p} is not a percentage (0 to 100)")));
    }
    Ok(p / 100.0)
}

pub(super) fn compile_rule(
    rule: &RuleSpec,
    spec: &HttpRouteSpec,
    key: &str,
    name: &str,
    at: &str,
) -> Result<Rule, RouteError> {
    let ns = &spec.namespace;
    if rule.session_persistence.is_some() {
        tracing::warn!(rule = %at, "sessionPersistence is not applied (istiod does not apply it either): the rule routes without it");
    }
    let mut backends = Vec::new();
    for (i, b) in rule.backend_refs.iter().enumerate() {
        backends.push(compile_backend(b, ns, &format!("{at}.backendRefs[{i}]"))?);
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
    let mut rewrite = None;
    let mut redirect = None;
    let mut cors = None;
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
            ("urlRewrite", f.url_rewrite.is_some()),
            ("requestRedirect", f.request_redirect.is_some()),
            ("cors", f.cors.is_some()),
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
                    // Gateway API's mirror target is an object reference: no filters.
                    if !m.backend_ref.filters.is_empty() {
                        return Err(err(
                            format!("{at}.requestMirror.backendRef.filters"),
                            "a mirror's backendRef has no filters",
                        ));
                    }
                    mirror = Some(Mirror {
                        backend: compile_backend(
                            &m.backend_ref,
                            ns,
                            &format!("{at}.requestMirror.backendRef"),
                        )?,
                        fraction: percent(m.percent, &format!("{at}.requestMirror.percent"))?,
                    });
                }
            }
            "URLRewrite" => {
                body_of(f.url_rewrite.is_some(), "urlRewrite")?;
                if let Some(u) = &f.url_rewrite {
                    rewrite = Some(compile_rewrite(u, &format!("{at}.urlRewrite"))?);
                }
            }
            "RequestRedirect" => {
                body_of(f.request_redirect.is_some(), "requestRedirect")?;
                if let Some(r) = &f.request_redirect {
                    redirect = Some(compile_redirect(r, &format!("{at}.requestRedirect"))?);
                }
            }
            "CORS" => {
                body_of(f.cors.is_some(), "cors")?;
                if let Some(c) = &f.cors {
                    cors = Some(super::Cors::from_gateway(c, &format!("{at}.cors"))?);
                }
            }
            other => {
                return Err(err(
                    format!("{at}.type"),
                    format!(
                        "{other:?}: use RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, URLRewrite, RequestRedirect or CORS"
                    ),
                ));
            }
        }
    }
    if redirect.is_some() {
        // Gateway API: the two cannot share a rule; a redirect sends nothing anywhere.
        if rewrite.is_some() {
            return Err(err(
                format!("{at}.filters"),
                "URLRewrite and RequestRedirect cannot be used in the same rule",
            ));
        }
        if !backends.is_empty() {
            return Err(err(
                format!("{at}.backendRefs"),
                "a rule with a RequestRedirect answers the redirect itself: remove its backendRefs",
            ));
        }
        if mirror.is_some() {
            return Err(err(
                format!("{at}.filters"),
                "a rule with a RequestRedirect forwards nothing, so it cannot mirror",
            ));
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
        None => Some(istio_default_retry(backend_timeout)),
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
                    let status = match (a.http_status, &a.grpc_status) {
                        (Some(_), Some(_)) => {
                            return Err(err(
                                format!("{at}.abort"),
                                "give httpStatus or grpcStatus, not both",
                            ));
                        }
                        (None, None) => {
                            return Err(err(
                                format!("{at}.abort"),
                                "an abort needs httpStatus or grpcStatus",
                            ));
                        }
                        (Some(code), None) => http::StatusCode::from_u16(code)
                            .ok()
                            .filter(|s| (200..=599).contains(&s.as_u16()))
                            .ok_or_else(|| {
                                err(
                                    format!("{at}.abort.httpStatus"),
                                    format!("{code} is not a response status (200-599)"),
                                )
                            })?,
                        (None, Some(_)) => http::StatusCode::OK,
                    };
                    let grpc_status = match &a.grpc_status {
                        None => None,
                        Some(name) => Some(crate::grpc::status_by_name(name).ok_or_else(|| {
                            err(
                                format!("{at}.abort.grpcStatus"),
                                format!(
                                    "{name:?} is not a gRPC status (a name such as UNAVAILABLE, or 0-16)"
                                ),
                            )
                        })?),
                    };
                    Some((
                        Abort {
                            status,
                            grpc_status,
                        },
                        percent(a.percentage, &format!("{at}.abort.percentage"))?,
                    ))
                }
            };
            (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
        }
    };
    let one_destination = if spec.ordered {
        backends.len() == 1
    } else {
        backends.iter().filter(|b| b.weight > 0).count() == 1
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
        rewrite,
        redirect,
        cors: match (cors, &rule.cors) {
            (Some(c), _) => Some(c),
            (None, Some(c)) => Some(super::Cors::compile(c, &format!("{at}.corsPolicy"))?),
            (None, None) => None,
        },
        one_destination,
    })
}

fn path_modifier(m: &PathModifierSpec, at: &str) -> Result<PathRewrite, RouteError> {
    if let Some((pattern, with)) = &m.istio_regex {
        return regex_rewrite(pattern, with, at);
    }
    let check = |v: &str, field: &str| {
        if !v.starts_with('/')
            || v.bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
        {
            return Err(err(
                format!("{at}.{field}"),
                format!("{v:?} is not an absolute path (starts with /, no query, no spaces)"),
            ));
        }
        Ok(v.to_string())
    };
    let full = ("replaceFullPath", &m.replace_full_path);
    let prefix = ("replacePrefixMatch", &m.replace_prefix_match);
    let (want, unwanted) = match m.kind.as_str() {
        "ReplaceFullPath" => (full, prefix),
        "ReplacePrefixMatch" => (prefix, full),
        other => {
            return Err(err(
                format!("{at}.type"),
                format!("{other:?}: use ReplaceFullPath or ReplacePrefixMatch"),
            ));
        }
    };
    if unwanted.1.is_some() {
        return Err(err(
            format!("{at}.{}", unwanted.0),
            format!("does not belong to type {}", m.kind),
        ));
    }
    let v = want.1.as_deref().ok_or_else(|| {
        err(
            format!("{at}.{}", want.0),
            format!("required by type {}", m.kind),
        )
    })?;
    let with = check(v, want.0)?;
    // A prefix's matched part comes from each match (`RouteTable::build`).
    let matched = String::new();
    Ok(match (m.kind.as_str(), m.istio) {
        ("ReplaceFullPath", _) => PathRewrite::Full(with),
        (_, true) => PathRewrite::Literal { matched, with },
        (_, false) => PathRewrite::Prefix { matched, with },
    })
}

/// Istio's `uriRegexRewrite` (`at` is its path): the pattern compiled, and RE2's `\N`
/// group references turned into the regex crate's `${N}` (a literal `$` escaped), as Envoy
/// substitutes them.
pub(super) fn regex_rewrite(
    pattern: &str,
    with: &str,
    at: &str,
) -> Result<PathRewrite, RouteError> {
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            err(
                format!("{at}.match"),
                format!("{pattern:?} is not a valid regular expression: {e}"),
            )
        })?;
    if with
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(err(
            format!("{at}.rewrite"),
            format!("{with:?}: a path has no spaces, query or fragment"),
        ));
    }
    let mut out = String::with_capacity(with.len() + 8);
    let mut chars = with.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    let group = d.to_digit(10).unwrap_or(0) as usize;
                    chars.next();
                    if group > re.captures_len() - 1 {
                        return Err(err(
                            format!("{at}.rewrite"),
                            format!(
                                "\\{group}: the pattern has {} groups",
                                re.captures_len() - 1
                            ),
                        ));
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => {
                    return Err(err(
                        format!("{at}.rewrite"),
                        format!(
                            "{with:?}: a backslash is followed by a group number or another backslash"
                        ),
                    ));
                }
            },
            c => out.push(c),
        }
    }
    Ok(PathRewrite::Regex {
        pattern: Pattern(re),
        with: out,
    })
}

fn hostname(h: &str, at: &str) -> Result<String, RouteError> {
    match host_match(h) {
        Ok(HostMatch::Exact(h)) => Ok(h),
        _ => Err(err(
            at,
            format!("{h:?} is not a hostname (no port, no wildcard)"),
        )),
    }
}

fn compile_rewrite(u: &UrlRewriteSpec, at: &str) -> Result<Rewrite, RouteError> {
    let host = match &u.hostname {
        None => None,
        Some(h) => {
            let h = hostname(h, &format!("{at}.hostname"))?;
            Some(HeaderValue::from_str(&h).map_err(|_| {
                err(
                    format!("{at}.hostname"),
                    format!("{h:?} is not a header value"),
                )
            })?)
        }
    };
    let path = match &u.path {
        None => None,
        Some(p) => Some(path_modifier(p, &format!("{at}.path"))?),
    };
    if host.is_none() && path.is_none() {
        return Err(err(at, "rewrites nothing: give hostname or path"));
    }
    Ok(Rewrite { host, path })
}

fn compile_redirect(r: &RedirectSpec, at: &str) -> Result<Redirect, RouteError> {
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some(s @ ("http" | "https")) => Some(s.to_string()),
        Some(s) => {
            return Err(err(
                format!("{at}.scheme"),
                format!("{s:?}: use http or https"),
            ));
        }
    };
    let host = match &r.hostname {
        None => None,
        Some(h) => Some(hostname(h, &format!("{at}.hostname"))?),
    };
    if r.port == Some(0) {
        return Err(err(format!("{at}.port"), "0 is not a port"));
    }
    let path = match &r.path {
        None => None,
        Some(p) => Some(path_modifier(p, &format!("{at}.path"))?),
    };
    let code = r.status_code.unwrap_or(302);
    let status = match code {
        301 | 302 | 303 | 307 | 308 => http::StatusCode::from_u16(code).expect("a redirect status"),
        _ => {
            return Err(err(
                format!("{at}.statusCode"),
                format!("{code} is not a redirect status (301, 302, 303, 307 or 308)"),
            ));
        }
    };
    Ok(Redirect {
        scheme,
        host,
        port: r.port,
        path,
        status,
    })
}

/// Istio's retry policy for a route that sets none (`DefaultPolicy`): two retries on
/// `connect-failure`, `refused-stream`, `unavailable` and `cancelled`, which never repeat
/// a request the backend may have processed. The 503 Istio can add (unless
/// `EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`) is left out: a 503 may come from a backend
/// that did the work.
pub(crate) fn istio_default_retry(per_try_timeout: Option<Duration>) -> Retry {
    Retry {
        on_reset: false,
        per_try_timeout,
        ..default_retry()
    }
}

pub(super) fn default_retry() -> Retry {
    Retry {
        attempts: 2,
        codes: Vec::new(),
        on_5xx: false,
        on_gateway_error: false,
        on_reset: true,
        on_refused_stream: true,
        on_connect_failure: true,
        // Istio's default `retryOn` names `unavailable` and `cancelled`.
        grpc_statuses: vec![1, 14],
        backoff: Duration::from_millis(25),
        per_try_timeout: None,
        budget_percent: 0.2,
        min_retry_concurrency: 3,
    }
}

pub(super) fn compile_retry(
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
        out.on_refused_stream = false;
        out.on_connect_failure = false;
        out.grpc_statuses.clear();
        for (i, cond) in on.iter().enumerate() {
            match cond.as_str() {
                "reset" => out.on_reset = true,
                "refused-stream" => out.on_refused_stream = true,
                "connect-failure" => out.on_connect_failure = true,
                "5xx" => out.on_5xx = true,
                "gateway-error" => out.on_gateway_error = true,
                // Istio's spelling for "the codes list".
                "retriable-status-codes" => {}
                other => match crate::route::GRPC_RETRY_ON
                    .iter()
                    .find(|(n, _)| *n == other)
                {
                    Some((_, code)) => {
                        if !out.grpc_statuses.contains(code) {
                            out.grpc_statuses.push(*code);
                        }
                    }
                    None => {
                        return Err(err(
                            format!("{at}.retryOn[{i}]"),
                            format!(
                                "{other:?}: use connect-failure, reset, refused-stream, 5xx, gateway-error, retriable-status-codes, or a gRPC condition (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)"
                            ),
                        ));
                    }
                },
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

pub(super) fn opt_duration(v: Option<&str>, at: &str) -> Result<Option<Duration>, RouteError> {
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
