//! L7 security: Istio's `RequestAuthentication` (JWT) and `AuthorizationPolicy` with its L7
//! fields, attached to Services by `targetRefs` as ambient mode attaches them to a waypoint's
//! Services.
//!
//! Per request, before any routing (Envoy's filter order: jwt_authn, then RBAC):
//! 1. A token (the `Authorization: Bearer` header, or a rule's `fromHeaders`) is checked
//!    against the JWT rule of its issuer: signature by the rule's JWKS, `exp`/`nbf` with
//!    60 s of leeway (Envoy's default), audiences. A present but bad token is refused with
//!    401 and Envoy's words (`Jwt is expired`, `Jwt issuer is not configured`, `Audiences
//!    in Jwt are not allowed`, `Jwt verification fails`). A missing token is no error: the
//!    request just has no request principal.
//! 2. DENY policies: any matching rule refuses with 403 `RBAC: access denied`.
//! 3. ALLOW policies: when a Service has any, one rule must match, else 403.
//!
//! Matching follows Istio's semantics: within a rule, `from`, `to` and `when` must all hold;
//! each of them holds when any of its entries does; within an entry every field given must
//! hold, a field holding when any of its values matches and none of its `not` values does.
//! String values match exactly, by prefix (`abc*`), by suffix (`*abc`), or presence (`*`).

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::route::{RouteError, ServiceRef};

/// Envoy's default clock skew for `exp` and `nbf`.
pub const JWT_LEEWAY_SECS: u64 = 60;

/// Longest token accepted (Envoy bounds headers at 60 KiB; a token is one header).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

fn err(path: impl Into<String>, message: impl Into<String>) -> RouteError {
    RouteError {
        path: path.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// The file's shape (Istio's, flattened: `name` and `namespace` beside the spec's fields).

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRefSpec {
    /// Only `Service` (the default).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    pub name: String,
    /// Defaults to the policy's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub name: String,
    pub namespace: String,
    pub target_refs: Vec<TargetRefSpec>,
    /// `ALLOW` (default) or `DENY`.
    #[serde(default)]
    pub action: Option<String>,
    /// ALLOW without rules allows nothing; DENY without rules denies nothing (Istio).
    #[serde(default)]
    pub rules: Vec<AuthzRuleSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRuleSpec {
    #[serde(default)]
    pub from: Vec<FromSpec>,
    #[serde(default)]
    pub to: Vec<ToSpec>,
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSpec {
    pub source: SourceSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToSpec {
    pub operation: OperationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationSpec {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionSpec {
    /// `request.headers[NAME]`, `request.auth.principal`, `request.auth.audiences`,
    /// `request.auth.presenter`, `request.auth.claims[NAME]`, `source.principal`,
    /// `source.namespace`, `destination.port`.
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    pub name: String,
    pub namespace: String,
    pub target_refs: Vec<TargetRefSpec>,
    pub jwt_rules: Vec<JwtRuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRuleSpec {
    pub issuer: String,
    /// Accepted `aud` values; empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The JWKS as inline JSON (Istio's `jwks`).
    #[serde(default)]
    pub jwks: Option<String>,
    /// ... or a file holding it (read when the config loads, again on every reload).
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Where the token is; default `Authorization: Bearer <token>`.
    #[serde(default)]
    pub from_headers: Vec<FromHeaderSpec>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeaderSpec>,
    /// Keep the token on the forwarded request (default: removed, as Istio does).
    #[serde(default)]
    pub forward_original_token: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromHeaderSpec {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    pub header: String,
    pub claim: String,
}

// ---------------------------------------------------------------------------------------
// Compiled.

/// Istio's string match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StrMatch {
    fn new(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Presence
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.to_string())
        } else {
            StrMatch::Exact(v.to_string())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => v == e,
            StrMatch::Prefix(p) => v.starts_with(p.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
            StrMatch::Presence => !v.is_empty(),
        }
    }
}

/// A field: holds when a value is given and any `values` match and no `not_values` does.
#[derive(Debug, Clone, Default)]
struct Field {
    values: Vec<StrMatch>,
    not_values: Vec<StrMatch>,
}

impl Field {
    fn new(values: &[String], not_values: &[String]) -> Field {
        Field {
            values: values.iter().map(|v| StrMatch::new(v)).collect(),
            not_values: not_values.iter().map(|v| StrMatch::new(v)).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// `candidates`: the request's values for this field (several for a list claim).
    fn holds(&self, candidates: &[&str]) -> bool {
        if self.is_empty() {
            return true;
        }
        if !self.values.is_empty()
            && !candidates
                .iter()
                .any(|c| self.values.iter().any(|m| m.matches(c)))
        {
            return false;
        }
        !candidates
            .iter()
            .any(|c| self.not_values.iter().any(|m| m.matches(c)))
    }
}

#[derive(Debug, Clone)]
struct Source {
    principals: Field,
    request_principals: Field,
    namespaces: Field,
}

#[derive(Debug, Clone)]
struct Operation {
    methods: Field,
    paths: Field,
    hosts: Field,
    ports: Field,
}

#[derive(Debug, Clone)]
enum CondKey {
    Header(HeaderName),
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    AuthClaim(Vec<String>),
    SourcePrincipal,
    SourceNamespace,
    DestinationPort,
}

#[derive(Debug, Clone)]
struct Condition {
    key: CondKey,
    field: Field,
}

#[derive(Debug, Clone)]
struct AuthzRule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
struct Policy {
    key: Arc<str>,
    rules: Vec<AuthzRule>,
}

/// A JWT rule, ready to verify.
struct JwtRule {
    issuer: String,
    audiences: Vec<String>,
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    from_headers: Vec<(HeaderName, String)>,
    claims_to_headers: Vec<(HeaderName, Vec<String>)>,
    forward_original_token: bool,
}

impl std::fmt::Debug for JwtRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtRule")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// What a Service's requests go through.
#[derive(Debug, Default)]
struct ServiceSecurity {
    jwt: Vec<Arc<JwtRule>>,
    deny: Vec<Arc<Policy>>,
    allow: Vec<Arc<Policy>>,
}

/// Every L7 policy and JWT rule, by target Service.
#[derive(Debug, Default)]
pub struct SecurityTable {
    by_service: HashMap<ServiceRef, ServiceSecurity>,
    policies: usize,
    authentications: usize,
}

/// What the request's caller is, for `source.*` matches: the tunnel's peer.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// `cluster.local/ns/NS/sa/SA` (Istio's principal form, no `spiffe://`).
    pub principal: Option<Arc<str>>,
    pub namespace: Option<Arc<str>>,
    /// The source workload's uid, when the caller knows it (telemetry only).
    pub workload: Option<Arc<str>>,
    /// The original client address (HBONE's `forwarded`), for the access log.
    pub addr: Option<std::net::SocketAddr>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401, with Envoy's jwt_authn words.
    Unauthenticated(&'static str),
    /// 403 `RBAC: access denied`, with the policy that decided (for the log).
    Denied(Arc<str>),
}

/// What a validated token says.
#[derive(Debug, Clone)]
struct Auth {
    principal: Option<String>,
    claims: serde_json::Map<String, Value>,
}

impl SecurityTable {
    /// Checks and compiles the policies and authentications. `read` reads a `jwksFile`.
    pub fn build(
        policies: &[AuthorizationPolicySpec],
        authentications: &[RequestAuthenticationSpec],
        read: &dyn Fn(&str) -> std::io::Result<String>,
    ) -> Result<SecurityTable, RouteError> {
        let mut table = SecurityTable::default();
        let mut seen = std::collections::HashSet::new();
        for p in policies {
            let base = format!("authorizationPolicies[{}/{}]", p.namespace, p.name);
            if !seen.insert((p.namespace.clone(), p.name.clone())) {
                return Err(err(base, "a second policy with this namespace/name"));
            }
            let action = match p.action.as_deref().unwrap_or("ALLOW") {
                "ALLOW" => Action::Allow,
                "DENY" => Action::Deny,
                other => {
                    return Err(err(
                        format!("{base}.action"),
                        format!("{other:?}: use ALLOW or DENY (CUSTOM is not supported)"),
                    ));
                }
            };
            let mut rules = Vec::new();
            for (i, r) in p.rules.iter().enumerate() {
                rules.push(compile_rule(r, &format!("{base}.rules[{i}]"))?);
            }
            let policy = Arc::new(Policy {
                key: format!("{}/{}", p.namespace, p.name).into(),
                rules,
            });
            for t in targets(&p.target_refs, &p.namespace, &base)? {
                let s = table.by_service.entry(t).or_default();
                match action {
                    Action::Allow => s.allow.push(policy.clone()),
                    Action::Deny => s.deny.push(policy.clone()),
                }
            }
            table.policies += 1;
        }
        let mut seen = std::collections::HashSet::new();
        for a in authentications {
            let base = format!("requestAuthentications[{}/{}]", a.namespace, a.name);
            if !seen.insert((a.namespace.clone(), a.name.clone())) {
                return Err(err(
                    base,
                    "a second authentication with this namespace/name",
                ));
            }
            if a.jwt_rules.is_empty() {
                return Err(err(
                    format!("{base}.jwtRules"),
                    "at least one rule is required",
                ));
            }
            let mut rules = Vec::new();
            for (i, r) in a.jwt_rules.iter().enumerate() {
                rules.push(Arc::new(compile_jwt(
                    r,
                    &format!("{base}.jwtRules[{i}]"),
                    read,
                )?));
            }
            for t in targets(&a.target_refs, &a.namespace, &base)? {
                let s = table.by_service.entry(t).or_default();
                for r in &rules {
                    if s.jwt.iter().any(|x| x.issuer == r.issuer) {
                        return Err(err(
                            format!("{base}.jwtRules"),
                            format!("issuer {:?} already has a rule for this Service", r.issuer),
                        ));
                    }
                    s.jwt.push(r.clone());
                }
            }
            table.authentications += 1;
        }
        Ok(table)
    }

    /// Policies and authentications compiled.
    pub fn counts(&self) -> (usize, usize) {
        (self.policies, self.authentications)
    }

    /// Authenticates and authorizes a request to `service`:`port` from `peer`. On success
    /// the request's headers are edited as the JWT rule says (claims to headers, the token
    /// removed unless forwarded).
    pub fn check(
        &self,
        service: &ServiceRef,
        port: u16,
        peer: &Peer,
        parts: &mut Parts,
    ) -> Result<(), Refusal> {
        let Some(s) = self.by_service.get(service) else {
            return Ok(());
        };
        let auth = authenticate(&s.jwt, parts)?;
        let req = RequestView {
            parts,
            peer,
            port,
            auth: auth.as_ref(),
        };
        for p in &s.deny {
            if p.rules.iter().any(|r| req.matches(r)) {
                return Err(Refusal::Denied(p.key.clone()));
            }
        }
        if !s.allow.is_empty()
            && !s
                .allow
                .iter()
                .any(|p| p.rules.iter().any(|r| req.matches(r)))
        {
            return Err(Refusal::Denied(s.allow[0].key.clone()));
        }
        Ok(())
    }
}

fn targets(refs: &[TargetRefSpec], ns: &str, base: &str) -> Result<Vec<ServiceRef>, RouteError> {
    if refs.is_empty() {
        return Err(err(
            format!("{base}.targetRefs"),
            "at least one target Service is required (a waypoint enforces policies on the Services it serves)",
        ));
    }
    let mut out = Vec::new();
    for (i, t) in refs.iter().enumerate() {
        let at = format!("{base}.targetRefs[{i}]");
        match t.kind.as_deref() {
            None | Some("Service") => {}
            Some(k) => {
                return Err(err(
                    format!("{at}.kind"),
                    format!("{k:?}: only Service is supported"),
                ));
            }
        }
        if !matches!(t.group.as_deref(), None | Some("") | Some("core")) {
            return Err(err(
                format!("{at}.group"),
                "a Service's group is \"\" (core)",
            ));
        }
        out.push(ServiceRef::new(
            t.namespace.as_deref().unwrap_or(ns),
            &t.name,
        ));
    }
    Ok(out)
}

fn compile_rule(r: &AuthzRuleSpec, at: &str) -> Result<AuthzRule, RouteError> {
    let from = r
        .from
        .iter()
        .map(|f| {
            let s = &f.source;
            Source {
                principals: Field::new(
                    &strip_spiffe(&s.principals),
                    &strip_spiffe(&s.not_principals),
                ),
                request_principals: Field::new(&s.request_principals, &s.not_request_principals),
                namespaces: Field::new(&s.namespaces, &s.not_namespaces),
            }
        })
        .collect();
    let mut to = Vec::new();
    for (i, t) in r.to.iter().enumerate() {
        let o = &t.operation;
        for (field, list) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
            for (j, p) in list.iter().enumerate() {
                if p.parse::<u16>().map_or(true, |n| n == 0) {
                    return Err(err(
                        format!("{at}.to[{i}].operation.{field}[{j}]"),
                        format!("{p:?} is not a port"),
                    ));
                }
            }
        }
        to.push(Operation {
            methods: Field::new(&o.methods, &o.not_methods),
            paths: Field::new(&o.paths, &o.not_paths),
            hosts: Field::new(&lower(&o.hosts), &lower(&o.not_hosts)),
            ports: Field::new(&o.ports, &o.not_ports),
        });
    }
    let mut when = Vec::new();
    for (i, c) in r.when.iter().enumerate() {
        let at = format!("{at}.when[{i}]");
        if c.values.is_empty() && c.not_values.is_empty() {
            return Err(err(
                format!("{at}.values"),
                "values or notValues is required",
            ));
        }
        let key = cond_key(&c.key).map_err(|m| err(format!("{at}.key"), m))?;
        when.push(Condition {
            key,
            field: Field::new(&c.values, &c.not_values),
        });
    }
    Ok(AuthzRule { from, to, when })
}

/// Hosts match case-insensitively (DNS names): both sides lower-cased.
fn lower(v: &[String]) -> Vec<String> {
    v.iter().map(|h| h.to_ascii_lowercase()).collect()
}

fn strip_spiffe(v: &[String]) -> Vec<String> {
    v.iter()
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p).to_string())
        .collect()
}

fn cond_key(k: &str) -> Result<CondKey, String> {
    let bracket = |prefix: &str| -> Option<String> {
        k.strip_prefix(prefix)?
            .strip_suffix(']')
            .map(str::to_string)
    };
    if let Some(h) = bracket("request.headers[") {
        return HeaderName::from_bytes(h.as_bytes())
            .map(CondKey::Header)
            .map_err(|_| format!("{h:?} is not a header name"));
    }
    if let Some(c) = bracket("request.auth.claims[") {
        // Nested claims as Istio writes them: `claims[a][b]`.
        let path: Vec<String> = c.split("][").map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("{k:?}: an empty claim name"));
        }
        return Ok(CondKey::AuthClaim(path));
    }
    match k {
        "request.auth.principal" => Ok(CondKey::AuthPrincipal),
        "request.auth.audiences" => Ok(CondKey::AuthAudiences),
        "request.auth.presenter" => Ok(CondKey::AuthPresenter),
        "source.principal" => Ok(CondKey::SourcePrincipal),
        "source.namespace" => Ok(CondKey::SourceNamespace),
        "destination.port" => Ok(CondKey::DestinationPort),
        other => Err(format!(
            "{other:?}: use request.headers[NAME], request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], source.principal, source.namespace or destination.port"
        )),
    }
}

fn compile_jwt(
    r: &JwtRuleSpec,
    at: &str,
    read: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<JwtRule, RouteError> {
    if r.issuer.is_empty() {
        return Err(err(format!("{at}.issuer"), "must not be empty"));
    }
    let text = match (&r.jwks, &r.jwks_file) {
        (Some(j), None) => j.clone(),
        (None, Some(f)) => {
            read(f).map_err(|e| err(format!("{at}.jwksFile"), format!("{f}: {e}")))?
        }
        _ => {
            return Err(err(
                at,
                "give the keys as exactly one of jwks (inline JSON) or jwksFile",
            ));
        }
    };
    let field = if r.jwks.is_some() { "jwks" } else { "jwksFile" };
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| err(format!("{at}.{field}"), format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for (i, k) in set.keys.iter().enumerate() {
        let alg = match k.common.key_algorithm {
            Some(a) => a.to_string().parse::<Algorithm>().map_err(|_| {
                err(
                    format!("{at}.{field}.keys[{i}].alg"),
                    format!("{a} cannot sign a JWT"),
                )
            })?,
            None => default_alg(k).ok_or_else(|| {
                err(
                    format!("{at}.{field}.keys[{i}]"),
                    "no alg, and the key type does not imply one",
                )
            })?,
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(err(
                format!("{at}.{field}.keys[{i}]"),
                "symmetric (HMAC) keys are refused: a JWKS is public",
            ));
        }
        let key = DecodingKey::from_jwk(k).map_err(|e| {
            err(
                format!("{at}.{field}.keys[{i}]"),
                format!("unusable key: {e}"),
            )
        })?;
        keys.push((k.common.key_id.clone(), key, alg));
    }
    if keys.is_empty() {
        return Err(err(format!("{at}.{field}"), "the JWKS holds no key"));
    }
    let mut from_headers = Vec::new();
    for (i, h) in r.from_headers.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            err(
                format!("{at}.fromHeaders[{i}].name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        from_headers.push((name, h.prefix.clone().unwrap_or_default()));
    }
    if from_headers.is_empty() {
        from_headers.push((http::header::AUTHORIZATION, "Bearer ".to_string()));
    }
    let mut claims_to_headers = Vec::new();
    for (i, c) in r.output_claim_to_headers.iter().enumerate() {
        let name = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
            err(
                format!("{at}.outputClaimToHeaders[{i}].header"),
                format!("{:?} is not a header name", c.header),
            )
        })?;
        claims_to_headers.push((name, c.claim.split('.').map(str::to_string).collect()));
    }
    Ok(JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        keys,
        from_headers,
        claims_to_headers,
        forward_original_token: r.forward_original_token,
    })
}

/// The algorithm a key without `alg` is used with (the JOSE defaults Envoy assumes).
fn default_alg(k: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match &k.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Finds the token, verifies it with the rule of its issuer, applies the rule's header
/// edits. `Ok(None)`: no token.
fn authenticate(rules: &[Arc<JwtRule>], parts: &mut Parts) -> Result<Option<Auth>, Refusal> {
    if rules.is_empty() {
        return Ok(None);
    }
    // Headers the rules fill from claims are the waypoint's to write: a client's own copy
    // never passes, token or not.
    for r in rules {
        for (name, _) in &r.claims_to_headers {
            parts.headers.remove(name);
        }
    }
    let mut found = None;
    'rules: for r in rules {
        for (name, prefix) in &r.from_headers {
            if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok())
                && let Some(token) = v.strip_prefix(prefix.as_str())
            {
                found = Some((token.trim().to_string(), name.clone(), prefix.clone()));
                break 'rules;
            }
        }
    }
    let Some((token, header, prefix)) = found else {
        return Ok(None);
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::Unauthenticated("Jwt verification fails"));
    }
    // The issuer picks the rule; its signature is checked with that rule's keys only.
    let unverified: serde_json::Map<String, Value> = jsonwebtoken::dangerous::insecure_decode(
        &token,
    )
    .map(|d| d.claims)
    .map_err(|_| {
        Refusal::Unauthenticated(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        )
    })?;
    let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
    // A token is verified only by a rule that looks for tokens where this one was found
    // (Envoy binds providers to their locations).
    let Some(rule) = rules.iter().find(|r| {
        r.issuer == iss
            && r.from_headers
                .iter()
                .any(|(n, p)| *n == header && *p == prefix)
    }) else {
        return Err(Refusal::Unauthenticated("Jwt issuer is not configured"));
    };
    let head = jsonwebtoken::decode_header(&token)
        .map_err(|_| Refusal::Unauthenticated("Jwt verification fails"))?;
    let mut verified = None;
    for (kid, key, alg) in &rule.keys {
        if *alg != head.alg || (head.kid.is_some() && kid.is_some() && *kid != head.kid) {
            continue;
        }
        let mut v = Validation::new(*alg);
        v.leeway = JWT_LEEWAY_SECS;
        v.set_issuer(&[&rule.issuer]);
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        v.validate_aud = false;
        match jsonwebtoken::decode::<serde_json::Map<String, Value>>(&token, key, &v) {
            Ok(d) => {
                verified = Some(d.claims);
                break;
            }
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    return Err(Refusal::Unauthenticated("Jwt is expired"));
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    return Err(Refusal::Unauthenticated("Jwt not yet valid"));
                }
                _ => {}
            },
        }
    }
    let Some(claims) = verified else {
        return Err(Refusal::Unauthenticated("Jwt verification fails"));
    };
    if !rule.audiences.is_empty() {
        let aud = string_list(claims.get("aud"));
        if !aud.iter().any(|a| rule.audiences.iter().any(|w| w == a)) {
            return Err(Refusal::Unauthenticated("Audiences in Jwt are not allowed"));
        }
    }
    // Istio's request principal is `iss/sub`; a token without a subject has none.
    let principal = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{}/{}", rule.issuer, sub));
    let auth = Auth { principal, claims };
    if !rule.forward_original_token {
        parts.headers.remove(&header);
    }
    for (name, path) in &rule.claims_to_headers {
        let v = claim(&auth.claims, path).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        });
        match v.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            Some(v) => {
                parts.headers.insert(name.clone(), v);
            }
            None => {
                // A client must not be able to set the header itself.
                parts.headers.remove(name);
            }
        }
    }
    Ok(Some(auth))
}

fn claim<'a>(claims: &'a serde_json::Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let mut v = claims.get(path.first()?)?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    Some(v)
}

/// A claim as strings: a string, a list of strings, or a space-separated string (`scope`).
fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::Number(n)) => vec![n.to_string()],
        Some(Value::Bool(b)) => vec![b.to_string()],
        _ => Vec::new(),
    }
}

struct RequestView<'a> {
    parts: &'a Parts,
    peer: &'a Peer,
    port: u16,
    auth: Option<&'a Auth>,
}

impl RequestView<'_> {
    fn matches(&self, r: &AuthzRule) -> bool {
        (r.from.is_empty() || r.from.iter().any(|s| self.source(s)))
            && (r.to.is_empty() || r.to.iter().any(|o| self.operation(o)))
            && r.when.iter().all(|c| self.condition(c))
    }

    fn opt(v: Option<&str>) -> Vec<&str> {
        v.into_iter().collect()
    }

    fn source(&self, s: &Source) -> bool {
        s.principals
            .holds(&Self::opt(self.peer.principal.as_deref()))
            && s.namespaces
                .holds(&Self::opt(self.peer.namespace.as_deref()))
            && s.request_principals
                .holds(&Self::opt(self.auth.and_then(|a| a.principal.as_deref())))
    }

    fn operation(&self, o: &Operation) -> bool {
        let host = crate::route::request_host(self.parts).to_ascii_lowercase();
        let port = self.port.to_string();
        let path = crate::route::normalize_path(self.parts.uri.path());
        o.methods.holds(&[self.parts.method.as_str()])
            && o.paths.holds(&[&path])
            && o.hosts.holds(&[&host])
            && o.ports.holds(&[port.as_str()])
    }

    fn condition(&self, c: &Condition) -> bool {
        let owned: Vec<String> = match &c.key {
            CondKey::Header(h) => self
                .parts
                .headers
                .get_all(h)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect(),
            CondKey::AuthPrincipal => self
                .auth
                .and_then(|a| a.principal.clone())
                .into_iter()
                .collect(),
            CondKey::AuthAudiences => self
                .auth
                .map(|a| string_list(a.claims.get("aud")))
                .unwrap_or_default(),
            CondKey::AuthPresenter => self
                .auth
                .and_then(|a| a.claims.get("azp")?.as_str().map(str::to_string))
                .into_iter()
                .collect(),
            CondKey::AuthClaim(path) => self
                .auth
                .map(|a| string_list(claim(&a.claims, path)))
                .unwrap_or_default(),
            CondKey::SourcePrincipal => self.peer.principal.iter().map(|p| p.to_string()).collect(),
            CondKey::SourceNamespace => self.peer.namespace.iter().map(|p| p.to_string()).collect(),
            CondKey::DestinationPort => vec![self.port.to_string()],
        };
        if owned.is_empty() {
            // Istio: `values` on something the request does not have never holds;
            // `notValues` alone (not(any of them)) does.
            return c.field.values.is_empty();
        }
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        c.field.holds(&refs)
    }
}

#[cfg(test)]
mod tests;
