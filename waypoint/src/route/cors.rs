//! CORS, as Envoy's `cors` filter applies a route's policy (Istio's VirtualService
//! `corsPolicy`, which istiod hands Envoy as the route's CORS policy unchanged):
//!
//! - a request without `Origin` is not a CORS request: nothing happens;
//! - an origin is allowed when one of `allowOrigins` matches it, or matches `*` (so an
//!   exact `*`, an empty prefix or `.*` allow every origin);
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
//!   allowed origin is answered by the waypoint: 200 with `Access-Control-Allow-Origin` (the
//!   origin), `-Allow-Credentials`, `-Allow-Methods` and `-Allow-Headers` (a policy's `*`
//!   echoes what the preflight asked for) and `-Max-Age`; from an origin not allowed it goes
//!   on to the backend, or with `unmatchedPreflights: IGNORE` is answered 200 without
//!   `Access-Control-Allow-Origin`;
//! - any other answer to an allowed origin (the backend's, or one the waypoint gives after
//!   routing) gets `Access-Control-Allow-Origin`, `-Allow-Credentials` and
//!   `-Expose-Headers`.
//!
//! The route's policy is the only one (a waypoint has no virtual host policy to fall back
//! to). The check runs after authorization and faults, as Envoy's filter comes after RBAC
//! and the fault filter in a waypoint: a preflight must be allowed like any request, and a
//! fault's abort answers it without CORS headers.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use super::{RouteError, err};

/// How an origin is matched (Istio's `StringMatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginSpec {
    Exact(String),
    Prefix(String),
    /// RE2 syntax, matched against the whole origin.
    Regex(String),
}

/// A route's CORS policy, as the VirtualService translation hands it over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsSpec {
    pub allow_origins: Vec<OriginSpec>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Seconds.
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
    /// `unmatchedPreflights`: `true` (FORWARD, the default) sends a preflight from an origin
    /// not allowed to the backend; `false` (IGNORE) answers it without CORS headers.
    pub forward_unmatched_preflights: bool,
}

#[derive(Debug, Clone)]
enum Origin {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

impl Origin {
    fn matches(&self, s: &str) -> bool {
        match self {
            Origin::Exact(e) => s == e,
            Origin::Prefix(p) => s.starts_with(p.as_str()),
            Origin::Regex(r) => r.is_match(s),
        }
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<Origin>,
    /// `*` in the policy: the preflight's own request.
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    forward_unmatched_preflights: bool,
}

/// What the policy does with a request.
#[derive(Debug)]
pub enum CorsStep {
    /// Not a CORS request, or from an origin not allowed: on to the backend as it is.
    Pass,
    /// On to the backend; the answer, whatever it is, carries the origin's headers.
    Allowed(HeaderValue),
    /// A preflight the waypoint answers: 200 with these headers (an allowed origin's also
    /// go on it as on any answer).
    Answer(HeaderMap, Option<HeaderValue>),
}

const ALLOW_ORIGIN: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ALLOW_CREDENTIALS: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const ALLOW_METHODS: HeaderName = HeaderName::from_static("access-control-allow-methods");
const ALLOW_HEADERS: HeaderName = HeaderName::from_static("access-control-allow-headers");
const EXPOSE_HEADERS: HeaderName = HeaderName::from_static("access-control-expose-headers");
const MAX_AGE: HeaderName = HeaderName::from_static("access-control-max-age");
const REQUEST_METHOD: HeaderName = HeaderName::from_static("access-control-request-method");
const REQUEST_HEADERS: HeaderName = HeaderName::from_static("access-control-request-headers");

impl Cors {
    /// Compiles `spec`; `at` names the policy for errors.
    pub fn compile(spec: &CorsSpec, at: &str) -> Result<Arc<Cors>, RouteError> {
        let mut origins = Vec::new();
        for (i, o) in spec.allow_origins.iter().enumerate() {
            origins.push(match o {
                OriginSpec::Exact(e) => Origin::Exact(e.clone()),
                OriginSpec::Prefix(p) => Origin::Prefix(p.clone()),
                OriginSpec::Regex(r) => Origin::Regex(super::compile::regex(
                    r,
                    &format!("{at}.allowOrigins[{i}].regex"),
                )?),
            });
        }
        let joined = |list: &[String], field: &str| -> Result<Option<HeaderValue>, RouteError> {
            if list.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&list.join(","))
                .map(Some)
                .map_err(|_| err(format!("{at}.{field}"), "not a header value"))
        };
        Ok(Arc::new(Cors {
            origins,
            allow_methods: joined(&spec.allow_methods, "allowMethods")?,
            allow_headers: joined(&spec.allow_headers, "allowHeaders")?,
            expose_headers: joined(&spec.expose_headers, "exposeHeaders")?,
            max_age: spec.max_age.map(HeaderValue::from),
            allow_credentials: spec.allow_credentials,
            forward_unmatched_preflights: spec.forward_unmatched_preflights,
        }))
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|o| o.matches("*") || o.matches(origin))
    }

    /// What the policy does with request `parts`.
    pub fn step(&self, parts: &Parts) -> CorsStep {
        let Some(origin) = parts.headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return CorsStep::Pass;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let latched = allowed.then(|| origin.clone());
        let asked_method = parts.headers.get(&REQUEST_METHOD).filter(|m| !m.is_empty());
        let preflight = parts.method == http::Method::OPTIONS && asked_method.is_some();
        if !preflight || (!allowed && self.forward_unmatched_preflights) {
            return latched.map_or(CorsStep::Pass, CorsStep::Allowed);
        }
        let mut h = HeaderMap::new();
        if let Some(o) = &latched {
            h.insert(ALLOW_ORIGIN, o.clone());
        }
        if self.allow_credentials {
            h.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        let echo = |own: &Option<HeaderValue>, asked: Option<&HeaderValue>| match own {
            Some(v) if v == "*" => asked.cloned(),
            other => other.clone(),
        };
        if let Some(v) = echo(&self.allow_methods, asked_method) {
            h.insert(ALLOW_METHODS, v);
        }
        if let Some(v) = echo(&self.allow_headers, parts.headers.get(&REQUEST_HEADERS)) {
            h.insert(ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age {
            h.insert(MAX_AGE, v.clone());
        }
        CorsStep::Answer(h, latched)
    }

    /// The headers an answer to allowed origin `origin` carries.
    pub fn decorate(&self, headers: &mut HeaderMap, origin: HeaderValue) {
        headers.insert(ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            headers.insert(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(v) = &self.expose_headers {
            headers.insert(EXPOSE_HEADERS, v.clone());
        }
    }
}

/// What istiod makes of Gateway API's `*` origin: any well-formed origin
/// (`scheme://host[:port]`), not any string.
const ANY_ORIGIN: &str = r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+";

/// The most values the CRD takes in `allowOrigins`, `allowHeaders`, `exposeHeaders`.
const MAX_VALUES: usize = 64;
/// The most `allowMethods` the CRD takes (the nine methods of RFC 9110, or `*`).
const MAX_METHODS: usize = 9;
/// What the CRD takes in `allowMethods`.
const GATEWAY_METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*",
];

/// The CRD's pattern for an origin: `*`, or `http(s)://host[:port]` whose host is a name
/// (its first label may be `*`) or `*`.
const GATEWAY_ORIGIN: &str =
    r"\*|https?://((\*\.)?([a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+|\*)(:[0-9]{1,5})?";

impl Cors {
    /// An HTTPRoute's `CORS` filter (`at` names it), compiled: see
    /// [`CorsSpec::from_gateway`].
    pub fn from_gateway(f: &super::HttpCorsSpec, at: &str) -> Result<Arc<Cors>, RouteError> {
        Cors::compile(&CorsSpec::from_gateway(f, at)?, at)
    }
}

impl CorsSpec {
    /// An HTTPRoute's `CORS` filter as istiod translates it (`createCorsFilter`): `*` any
    /// well-formed origin, an origin without `*` exact, one ending in its only `*` a prefix,
    /// any other `*` (a greedy match, dots included) a regex; a preflight from an origin not
    /// allowed answered without CORS headers (`IGNORE`). What the CRD's validation refuses
    /// is refused, by field (`at` names the filter).
    fn from_gateway(f: &super::HttpCorsSpec, at: &str) -> Result<CorsSpec, RouteError> {
        let lists = [
            ("allowOrigins", &f.allow_origins, MAX_VALUES),
            ("allowMethods", &f.allow_methods, MAX_METHODS),
            ("allowHeaders", &f.allow_headers, MAX_VALUES),
            ("exposeHeaders", &f.expose_headers, MAX_VALUES),
        ];
        for (field, list, max) in lists {
            if list.len() > max {
                return Err(err(
                    format!("{at}.{field}"),
                    format!("at most {max} values"),
                ));
            }
            if field != "exposeHeaders" && list.len() > 1 && list.iter().any(|v| v == "*") {
                return Err(err(
                    format!("{at}.{field}"),
                    "`*` cannot stand beside other values",
                ));
            }
            if let Some(i) = list.iter().position(|v| v.is_empty()) {
                return Err(err(format!("{at}.{field}[{i}]"), "empty"));
            }
            // A set in the CRD (headers compared without case).
            for (i, v) in list.iter().enumerate() {
                if list[..i].iter().any(|w| w.eq_ignore_ascii_case(v)) {
                    return Err(err(
                        format!("{at}.{field}[{i}]"),
                        format!("{v:?} is listed twice"),
                    ));
                }
            }
        }
        let origin_form = regex::Regex::new(&format!("^(?:{GATEWAY_ORIGIN})$"))
            .expect("the CRD's origin pattern compiles");
        if let Some(i) = f
            .allow_origins
            .iter()
            .position(|o| o.len() > 253 || !origin_form.is_match(o))
        {
            return Err(err(
                format!("{at}.allowOrigins[{i}]"),
                format!(
                    "{:?}: an origin is `*` or http(s)://host[:port], the host a name (its first label may be `*`) or `*`",
                    f.allow_origins[i]
                ),
            ));
        }
        for (field, list) in [
            ("allowHeaders", &f.allow_headers),
            ("exposeHeaders", &f.expose_headers),
        ] {
            if let Some(i) = list
                .iter()
                .position(|v| v != "*" && HeaderName::from_bytes(v.as_bytes()).is_err())
            {
                return Err(err(
                    format!("{at}.{field}[{i}]"),
                    format!("{:?} is not a header name", list[i]),
                ));
            }
        }
        if let Some(i) = f
            .allow_methods
            .iter()
            .position(|m| !GATEWAY_METHODS.contains(&m.as_str()))
        {
            return Err(err(
                format!("{at}.allowMethods[{i}]"),
                format!(
                    "{:?}: one of {} (case matters)",
                    f.allow_methods[i],
                    GATEWAY_METHODS.join(", ")
                ),
            ));
        }
        let allow_origins = f
            .allow_origins
            .iter()
            .map(|o| {
                if o == "*" {
                    OriginSpec::Regex(ANY_ORIGIN.into())
                } else if !o.contains('*') {
                    OriginSpec::Exact(o.clone())
                } else if o.matches('*').count() == 1 && o.ends_with('*') {
                    OriginSpec::Prefix(o[..o.len() - 1].into())
                } else {
                    OriginSpec::Regex(regex::escape(o).replace(r"\*", ".*"))
                }
            })
            .collect();
        let max_age = match f.max_age {
            None => 5,
            Some(s) if s >= 1 => s as u64,
            Some(s) => {
                return Err(err(
                    format!("{at}.maxAge"),
                    format!("{s}: at least 1 (seconds)"),
                ));
            }
        };
        let spec = CorsSpec {
            allow_origins,
            allow_methods: f.allow_methods.clone(),
            allow_headers: f.allow_headers.clone(),
            expose_headers: f.expose_headers.clone(),
            max_age: Some(max_age),
            allow_credentials: f.allow_credentials.unwrap_or(false),
            forward_unmatched_preflights: false,
        };
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri("/api");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn policy(origins: Vec<OriginSpec>, forward: bool) -> Arc<Cors> {
        Cors::compile(
            &CorsSpec {
                allow_origins: origins,
                allow_methods: vec!["GET".into(), "POST".into()],
                allow_headers: vec!["x-token".into()],
                expose_headers: vec!["x-trace".into()],
                max_age: Some(86400),
                allow_credentials: true,
                forward_unmatched_preflights: forward,
            },
            "p",
        )
        .unwrap()
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered() {
        let c = policy(
            vec![
                OriginSpec::Exact("https://app.example".into()),
                OriginSpec::Regex(r"https://.*\.test".into()),
            ],
            true,
        );
        for origin in ["https://app.example", "https://a.b.test"] {
            let step = c.step(&req(
                "OPTIONS",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
            ));
            let CorsStep::Answer(h, Some(o)) = step else {
                panic!("{origin}: {step:?}");
            };
            assert_eq!(o, origin);
            assert_eq!(h["access-control-allow-origin"], origin);
            assert_eq!(h["access-control-allow-methods"], "GET,POST");
            assert_eq!(h["access-control-allow-headers"], "x-token");
            assert_eq!(h["access-control-max-age"], "86400");
            assert_eq!(h["access-control-allow-credentials"], "true");
        }
        // The regex is anchored: the whole origin must match.
        let step = c.step(&req("GET", &[("origin", "https://a.test.evil")]));
        assert!(matches!(step, CorsStep::Pass), "{step:?}");
    }

    #[test]
    fn other_requests_pass_and_their_answers_carry_the_origin() {
        let c = policy(vec![OriginSpec::Exact("https://app.example".into())], true);
        assert!(matches!(c.step(&req("GET", &[])), CorsStep::Pass));
        let step = c.step(&req("GET", &[("origin", "https://app.example")]));
        let CorsStep::Allowed(o) = step else {
            panic!("{step:?}");
        };
        let mut h = HeaderMap::new();
        c.decorate(&mut h, o);
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-expose-headers"], "x-trace");
        assert_eq!(h["access-control-allow-credentials"], "true");
        // OPTIONS without Access-Control-Request-Method is not a preflight.
        let step = c.step(&req("OPTIONS", &[("origin", "https://app.example")]));
        assert!(matches!(step, CorsStep::Allowed(_)), "{step:?}");
    }

    #[test]
    fn an_unmatched_preflight_goes_on_or_is_answered_bare() {
        let preflight = req(
            "OPTIONS",
            &[
                ("origin", "https://other"),
                ("access-control-request-method", "GET"),
            ],
        );
        let forward = policy(vec![OriginSpec::Exact("https://app.example".into())], true);
        assert!(matches!(forward.step(&preflight), CorsStep::Pass));
        let ignore = policy(vec![OriginSpec::Exact("https://app.example".into())], false);
        let CorsStep::Answer(h, None) = ignore.step(&preflight) else {
            panic!("answered");
        };
        assert!(h.get("access-control-allow-origin").is_none());
    }

    #[test]
    fn a_wildcard_allows_every_origin_and_echoes_what_is_asked() {
        let c = Cors::compile(
            &CorsSpec {
                allow_origins: vec![OriginSpec::Exact("*".into())],
                allow_methods: vec!["*".into()],
                allow_headers: vec!["*".into()],
                forward_unmatched_preflights: true,
                ..CorsSpec::default()
            },
            "p",
        )
        .unwrap();
        let step = c.step(&req(
            "OPTIONS",
            &[
                ("origin", "https://anyone"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-a, x-b"),
            ],
        ));
        let CorsStep::Answer(h, Some(_)) = step else {
            panic!("{step:?}");
        };
        assert_eq!(h["access-control-allow-origin"], "https://anyone");
        assert_eq!(h["access-control-allow-methods"], "PUT");
        assert_eq!(h["access-control-allow-headers"], "x-a, x-b");
        assert!(h.get("access-control-allow-credentials").is_none());
        // A prefix of "" and `.*` also match `*`.
        for o in [
            OriginSpec::Prefix(String::new()),
            OriginSpec::Regex(".*".into()),
        ] {
            let c = policy(vec![o], true);
            assert!(c.allows("https://x"));
        }
    }

    #[test]
    fn a_bad_regex_is_refused_by_field() {
        let e = Cors::compile(
            &CorsSpec {
                allow_origins: vec![OriginSpec::Exact("a".into()), OriginSpec::Regex("(".into())],
                ..CorsSpec::default()
            },
            "http[0].corsPolicy",
        )
        .unwrap_err();
        assert_eq!(e.path, "http[0].corsPolicy.allowOrigins[1].regex");
    }

    fn gateway(yaml: &str) -> Result<CorsSpec, RouteError> {
        let f: crate::route::HttpCorsSpec = serde_yaml::from_str(yaml).unwrap();
        CorsSpec::from_gateway(&f, "f.cors")
    }

    #[test]
    fn a_gateway_api_filter_is_read_as_istiod_translates_it() {
        let spec = gateway(
            "{allowOrigins: ['https://app.example', 'https://*.example.com', 'http://*'],
              allowMethods: [GET, PUT], allowHeaders: [x-token], exposeHeaders: ['*'],
              allowCredentials: true}",
        )
        .unwrap();
        assert_eq!(
            spec.allow_origins,
            [
                OriginSpec::Exact("https://app.example".into()),
                OriginSpec::Regex(r"https://.*\.example\.com".into()),
                OriginSpec::Prefix("http://".into()),
            ]
        );
        // The CRD's default age; a preflight from another origin answered bare.
        assert_eq!(spec.max_age, Some(5));
        assert!(spec.allow_credentials && !spec.forward_unmatched_preflights);
        let c = Cors::compile(&spec, "p").unwrap();
        // `*` in a host is greedy to the left, dots included; the rest is literal.
        assert!(c.allows("https://a.b.example.com"));
        assert!(!c.allows("https://a.example.com.evil"));
        assert!(!c.allows("https://aexample.com"));
        assert!(c.allows("http://localhost:3000"));
        assert!(!c.allows("https://localhost:3000"));
        let preflight = req(
            "OPTIONS",
            &[
                ("origin", "https://other"),
                ("access-control-request-method", "PUT"),
            ],
        );
        assert!(matches!(c.step(&preflight), CorsStep::Answer(_, None)));

        // `*` alone: a well-formed origin, not any string.
        let c = Cors::compile(&gateway("{allowOrigins: ['*'], maxAge: 60}").unwrap(), "p").unwrap();
        assert!(c.allows("https://anyone.test:8443"));
        assert!(!c.allows("null"));
        assert!(!c.allows("https://x/path"));
        assert_eq!(c.max_age.as_ref().unwrap(), "60");
    }

    #[test]
    fn what_the_crd_refuses_is_refused_by_field() {
        for (yaml, path) in [
            ("{allowOrigins: ['*', 'https://a']}", "f.cors.allowOrigins"),
            ("{allowMethods: [GET, '*']}", "f.cors.allowMethods"),
            (
                "{allowOrigins: ['https://a', '']}",
                "f.cors.allowOrigins[1]",
            ),
            ("{maxAge: 0}", "f.cors.maxAge"),
            (
                "{allowOrigins: ['https://a', 'https://a']}",
                "f.cors.allowOrigins[1]",
            ),
            (
                "{allowOrigins: ['https://a/path']}",
                "f.cors.allowOrigins[0]",
            ),
            ("{allowOrigins: ['ftp://a']}", "f.cors.allowOrigins[0]"),
            (
                "{allowOrigins: ['https://a.*.b']}",
                "f.cors.allowOrigins[0]",
            ),
            ("{allowHeaders: ['*', x-a]}", "f.cors.allowHeaders"),
            ("{exposeHeaders: [X-A, x-a]}", "f.cors.exposeHeaders[1]"),
            ("{allowHeaders: ['bad header']}", "f.cors.allowHeaders[0]"),
            ("{exposeHeaders: [x-a, 'x:b']}", "f.cors.exposeHeaders[1]"),
            ("{allowMethods: [get]}", "f.cors.allowMethods[0]"),
        ] {
            let e = gateway(yaml).unwrap_err();
            assert_eq!(e.path, path, "{yaml}: {e}");
        }
        let many = format!("{{allowMethods: [{}]}}", ["GET"; 10].join(","));
        assert_eq!(gateway(&many).unwrap_err().path, "f.cors.allowMethods");
    }
}
