//! L7 security: Istio's `RequestAuthentication` (JWT) and `AuthorizationPolicy` with its L7
//! fields, attached by `targetRefs` as ambient mode attaches them: to a Service the waypoint
//! serves, or to the waypoint's own `Gateway` (every request through it).
//!
//! Per request, before any routing (Envoy's filter order: jwt_authn, then RBAC):
//! 1. A token (the `Authorization: Bearer` header, or a rule's `fromHeaders`) is checked
//!    against the JWT rule of its issuer: signature by the rule's JWKS, `exp`/`nbf` with
//!    60 s of leeway (Envoy's default), audiences. A present but bad token is refused with
//!    401 and Envoy's words (`Jwt is expired`, `Jwt issuer is not configured`, `Audiences
//!    in Jwt are not allowed`, `Jwt verification fails`). A missing token is no error: the
//!    request just has no request principal.
//! 3. DENY policies: any matching rule refuses with 403 `RBAC: access denied`.
//! 4. ALLOW policies: when a Service has any, one rule must match, else 403.
//!
//! Before all of them (a waypoint's filter order in istiod: the CUSTOM filter, then
//! jwt_authn, then RBAC), [`SecurityTable::custom`]: when a rule of a CUSTOM policy matches,
//! the request is handed to the policy's provider ([`ext_authz`]), whose answer allows or
//! refuses it, and whose header edits the steps above then see. The Gateway's and the
//! Service's CUSTOM policies are one set, as istiod gives them to one filter, with one
//! provider: when they name two, the requests their rules match are refused (istiod's
//! "deny due to bad CUSTOM action"). The CUSTOM step runs before the JWT is checked, so its
//! rules see no request principal, as in Istio.
//!
//! The policies on the waypoint's Gateway (and the class-wide ones) and the Service's are
//! one set, as istiod gives them to the one RBAC filter of the Service's chain in a
//! waypoint (`ShouldAttachPolicy` attaches all three kinds of target to it): any matching
//! DENY refuses; when there is any ALLOW, a request passes when one of them matches,
//! whichever target it came from. JWT rules of both verify tokens together.
//!
//! Matching follows Istio's semantics: within a rule, `from`, `to` and `when` must all hold;
//! each of them holds when any of its entries does; within an entry every field given must
//! hold, a field holding when any of its values matches and none of its `not` values does.
//! String values match exactly, by prefix (`abc*`), by suffix (`*abc`), or presence (`*`).

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;

use crate::route::{RouteError, ServiceRef, err};

pub mod ext_authz;
mod ip;
pub mod jwks;
mod jwt;
mod spec;
mod targets;

use ip::IpField;
pub use jwks::JwksRegistry;
use jwt::{Auth, JwtRule, authenticate, claim, compile_jwt, string_list};
pub use spec::*;
use targets::{Target, targets};

/// Envoy's default clock skew for `exp` and `nbf`.
pub const JWT_LEEWAY_SECS: u64 = 60;

/// Longest token accepted (Envoy bounds headers at 60 KiB; a token is one header).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

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
    ip_blocks: IpField,
    remote_ip_blocks: IpField,
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
    /// `source.ip`: the client's address, against prefixes.
    ClientIp(IpField),
    /// `remote.ip`: Envoy's remote address (`X-Forwarded-For`'s last, else the client's).
    RemoteIp(IpField),
    /// `destination.ip`: the address the client called (the tunnel's CONNECT authority,
    /// Envoy's local address in a waypoint), against prefixes.
    DestinationIp(IpField),
    /// `connection.sni`: the HTTP a waypoint reads came inside the tunnel, not over TLS of
    /// its own: there is no SNI (Envoy's is empty there), so `values` never hold and
    /// `notValues` always do.
    ConnectionSni,
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Custom(Arc<str>),
}

#[derive(Debug, Clone)]
struct Policy {
    key: Arc<str>,
    rules: Vec<AuthzRule>,
}

/// What a Service's requests go through.
#[derive(Debug, Default, Clone)]
struct ServiceSecurity {
    jwt: Vec<Arc<JwtRule>>,
    /// CUSTOM policies, each with the provider it names.
    custom: Vec<(Arc<Policy>, Arc<str>)>,
    deny: Vec<Arc<Policy>>,
    allow: Vec<Arc<Policy>>,
}

impl ServiceSecurity {
    fn is_empty(&self) -> bool {
        self.jwt.is_empty()
            && self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
    }
}

/// Every L7 policy and JWT rule, by target: a Service, or a waypoint's Gateway.
#[derive(Debug, Default)]
pub struct SecurityTable {
    by_service: HashMap<ServiceRef, ServiceSecurity>,
    /// By the Gateway's namespace and name: its own policies.
    by_gateway: HashMap<ServiceRef, ServiceSecurity>,
    /// Policies on GatewayClass `istio-waypoint`, by the namespace they live in. Only the
    /// MeshConfig's `rootNamespace`'s apply (to every waypoint), and which namespace that
    /// is comes with the MeshConfig, which may change without this table being rebuilt:
    /// each namespace's are kept, merged ahead of time with every Gateway's own.
    by_class: HashMap<Arc<str>, ClassLevel>,
    policies: usize,
    authentications: usize,
    /// Any CUSTOM policy at all: without one, the CUSTOM step costs a branch.
    has_custom: bool,
}

/// The class-wide policies of one namespace: alone (for a Gateway without its own), and
/// merged with each Gateway's own (one RBAC filter in Envoy's waypoint: an ALLOW of either
/// lets a request in).
#[derive(Debug, Default)]
struct ClassLevel {
    alone: ServiceSecurity,
    with_gateway: HashMap<ServiceRef, ServiceSecurity>,
}

/// The waypoint a request passes: its Gateway, and the MeshConfig's `rootNamespace`, whose
/// policies on GatewayClass `istio-waypoint` apply to every waypoint.
#[derive(Debug, Clone, Copy)]
pub struct Through<'a> {
    pub gateway: &'a ServiceRef,
    pub root: &'a str,
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
    /// The address the caller called (the CONNECT authority's), for `destination.ip`.
    pub dest: Option<std::net::IpAddr>,
}

/// A provider to ask, and the CUSTOM policy whose rule matched (`namespace/name`).
pub type Ask = (Arc<str>, Arc<str>);

/// The policy name a refusal for CUSTOM policies that name different providers reports.
pub const BAD_CUSTOM: &str = "default-deny-all-due-to-bad-CUSTOM-action";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401, with Envoy's jwt_authn words.
    Unauthenticated(&'static str),
    /// 403 `RBAC: access denied`, with the policy that decided (for the log).
    Denied(Arc<str>),
}

impl SecurityTable {
    /// Checks and compiles the policies and authentications. `read` reads a `jwksFile`;
    /// remote key sets (`jwksUri`, or OpenID discovery from the issuer) are slots of
    /// `remote`, filled by whoever fetches them.
    pub fn build(
        policies: &[AuthorizationPolicySpec],
        authentications: &[RequestAuthenticationSpec],
        read: &dyn Fn(&str) -> std::io::Result<String>,
        remote: &JwksRegistry,
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
                "CUSTOM" => match &p.provider {
                    Some(r) if !r.name.is_empty() => Action::Custom(r.name.as_str().into()),
                    _ => {
                        return Err(err(
                            format!("{base}.provider"),
                            "a CUSTOM policy names its provider (an extensionProviders entry of the MeshConfig)",
                        ));
                    }
                },
                other => {
                    return Err(err(
                        format!("{base}.action"),
                        format!("{other:?}: use ALLOW, DENY or CUSTOM"),
                    ));
                }
            };
            if p.provider.is_some() && !matches!(action, Action::Custom(_)) {
                return Err(err(
                    format!("{base}.provider"),
                    "only a CUSTOM policy names a provider",
                ));
            }
            let mut rules = Vec::new();
            for (i, r) in p.rules.iter().enumerate() {
                rules.push(compile_rule(r, &format!("{base}.rules[{i}]"))?);
            }
            let policy = Arc::new(Policy {
                key: format!("{}/{}", p.namespace, p.name).into(),
                rules,
            });
            for t in targets(&p.target_refs, &p.namespace, &base)? {
                let s = table.level(t);
                match &action {
                    Action::Allow => s.allow.push(policy.clone()),
                    Action::Deny => s.deny.push(policy.clone()),
                    Action::Custom(provider) => {
                        s.custom.push((policy.clone(), provider.clone()));
                        table.has_custom = true;
                    }
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
                    remote,
                )?));
            }
            for t in targets(&a.target_refs, &a.namespace, &base)? {
                let s = table.level(t);
                for r in &rules {
                    if s.jwt.iter().any(|x| x.issuer == r.issuer) {
                        return Err(err(
                            format!("{base}.jwtRules"),
                            format!("issuer {:?} already has a rule for this target", r.issuer),
                        ));
                    }
                    s.jwt.push(r.clone());
                }
            }
            table.authentications += 1;
        }
        for class in table.by_class.values_mut() {
            class.with_gateway = table
                .by_gateway
                .iter()
                .map(|(g, own)| {
                    let mut both = own.clone();
                    let c = &class.alone;
                    both.jwt.extend(c.jwt.iter().cloned());
                    both.custom.extend(c.custom.iter().cloned());
                    both.deny.extend(c.deny.iter().cloned());
                    both.allow.extend(c.allow.iter().cloned());
                    (g.clone(), both)
                })
                .collect();
        }
        Ok(table)
    }

    fn level(&mut self, t: Target) -> &mut ServiceSecurity {
        match t {
            Target::Service(s) => self.by_service.entry(s).or_default(),
            Target::Gateway(g) => self.by_gateway.entry(g).or_default(),
            Target::Class(ns) => &mut self.by_class.entry(ns).or_default().alone,
        }
    }

    /// The Gateway's level: its own policies with the root namespace's class-wide ones,
    /// or either alone.
    fn gateway_level(&self, t: Through<'_>) -> Option<&ServiceSecurity> {
        // Most meshes have no class-wide policy: one lookup then.
        let class = match self.by_class.is_empty() {
            true => None,
            false => self.by_class.get(t.root),
        };
        match class {
            None => self.by_gateway.get(t.gateway),
            Some(c) => c
                .with_gateway
                .get(t.gateway)
                .or_else(|| (!c.alone.is_empty()).then_some(&c.alone)),
        }
    }

    /// Policies and authentications compiled.
    pub fn counts(&self) -> (usize, usize) {
        (self.policies, self.authentications)
    }

    /// The CUSTOM step for a request to `service`:`port` from `peer` (see the module docs):
    /// the provider to ask and the policy whose rule matched, or `None`. Refused when the
    /// matching policies name different providers.
    pub fn custom(
        &self,
        service: &ServiceRef,
        through: Option<Through<'_>>,
        port: u16,
        peer: &Peer,
        parts: &Parts,
    ) -> Result<Option<Ask>, Refusal> {
        if !self.has_custom {
            return Ok(None);
        }
        let levels = [
            through.and_then(|t| self.gateway_level(t)),
            self.by_service.get(service),
        ];
        let mut custom = levels.iter().flatten().flat_map(|l| &l.custom).peekable();
        let Some((_, first)) = custom.peek() else {
            return Ok(None);
        };
        let first = first.clone();
        let req = RequestView {
            parts,
            peer,
            port,
            auth: None,
        };
        let mut conflict = false;
        let mut matched = None;
        for (policy, provider) in custom {
            conflict |= *provider != first;
            if matched.is_none() && policy.rules.iter().any(|r| req.matches(r)) {
                matched = Some((provider.clone(), policy.key.clone()));
            }
        }
        match matched {
            Some(_) if conflict => Err(Refusal::Denied(BAD_CUSTOM.into())),
            m => Ok(m),
        }
    }

    /// Authenticates and authorizes a request to `service`:`port` from `peer`, through the
    /// waypoint whose Gateway is `gateway` (after [`SecurityTable::custom`]'s provider, if
    /// one was asked, allowed it). On success the request's headers are edited as the JWT
    /// rule says (claims to headers, the token removed unless forwarded).
    pub fn check(
        &self,
        service: &ServiceRef,
        through: Option<Through<'_>>,
        port: u16,
        peer: &Peer,
        parts: &mut Parts,
    ) -> Result<(), Refusal> {
        let g = through.and_then(|t| self.gateway_level(t));
        let s = self.by_service.get(service);
        if g.is_none() && s.is_none() {
            return Ok(());
        }
        let auth = match (g, s) {
            (Some(g), Some(s)) if !g.jwt.is_empty() && !s.jwt.is_empty() => {
                let both: Vec<Arc<JwtRule>> = g.jwt.iter().chain(&s.jwt).cloned().collect();
                authenticate(&both, parts)?
            }
            (Some(g), _) if !g.jwt.is_empty() => authenticate(&g.jwt, parts)?,
            (_, Some(s)) => authenticate(&s.jwt, parts)?,
            _ => None,
        };
        let req = RequestView {
            parts,
            peer,
            port,
            auth: auth.as_ref(),
        };
        Self::rbac(&req, [g, s])
    }

    /// The DENY, then the ALLOW, policies of both levels as one set (the Gateway's first,
    /// for the name a refusal reports).
    fn rbac(req: &RequestView<'_>, levels: [Option<&ServiceSecurity>; 2]) -> Result<(), Refusal> {
        let levels = levels.into_iter().flatten();
        let matched = |p: &&Arc<Policy>| p.rules.iter().any(|r| req.matches(r));
        if let Some(p) = levels.clone().flat_map(|l| &l.deny).find(matched) {
            return Err(Refusal::Denied(p.key.clone()));
        }
        let mut allow = levels.flat_map(|l| &l.allow).peekable();
        let Some(first) = allow.peek().map(|p| p.key.clone()) else {
            return Ok(());
        };
        match allow.any(|p| matched(&p)) {
            true => Ok(()),
            false => Err(Refusal::Denied(first)),
        }
    }
}

fn compile_rule(r: &AuthzRuleSpec, at: &str) -> Result<AuthzRule, RouteError> {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let s = &f.source;
            let at = format!("{at}.from[{i}].source");
            Ok(Source {
                principals: Field::new(
                    &strip_spiffe(&s.principals),
                    &strip_spiffe(&s.not_principals),
                ),
                request_principals: Field::new(&s.request_principals, &s.not_request_principals),
                namespaces: Field::new(&s.namespaces, &s.not_namespaces),
                ip_blocks: IpField::new(
                    &s.ip_blocks,
                    &s.not_ip_blocks,
                    [&format!("{at}.ipBlocks"), &format!("{at}.notIpBlocks")],
                )?,
                remote_ip_blocks: IpField::new(
                    &s.remote_ip_blocks,
                    &s.not_remote_ip_blocks,
                    [
                        &format!("{at}.remoteIpBlocks"),
                        &format!("{at}.notRemoteIpBlocks"),
                    ],
                )?,
            })
        })
        .collect::<Result<Vec<_>, RouteError>>()?;
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
        let mut key = cond_key(&c.key).map_err(|m| err(format!("{at}.key"), m))?;
        if let CondKey::ClientIp(f) | CondKey::RemoteIp(f) | CondKey::DestinationIp(f) = &mut key {
            *f = IpField::new(
                &c.values,
                &c.not_values,
                [&format!("{at}.values"), &format!("{at}.notValues")],
            )?;
        }
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
        "source.ip" => Ok(CondKey::ClientIp(IpField::default())),
        "remote.ip" => Ok(CondKey::RemoteIp(IpField::default())),
        "destination.ip" => Ok(CondKey::DestinationIp(IpField::default())),
        "connection.sni" => Ok(CondKey::ConnectionSni),
        other => Err(format!(
            "{other:?}: use request.headers[NAME], request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], source.principal, source.namespace, source.ip, remote.ip, destination.ip, destination.port or connection.sni"
        )),
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
            && s.ip_blocks.holds(self.client_ip())
            && s.remote_ip_blocks.holds(self.remote_ip())
    }

    /// The client's address: the original source the node proxy forwarded (Envoy's
    /// `direct_remote_ip`).
    fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.peer.addr.map(|a| a.ip())
    }

    /// Envoy's `remote_ip` in a waypoint (`use_remote_address: false`, no trusted hops):
    /// the last `X-Forwarded-For` address when the request has one, else the client's. The
    /// header is the client's to write, as it is for Envoy: `ipBlocks` is the one a client
    /// cannot choose.
    fn remote_ip(&self) -> Option<std::net::IpAddr> {
        let xff = self
            .parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok());
        xff.or_else(|| self.client_ip())
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
            CondKey::ClientIp(f) => return f.holds(self.client_ip()),
            CondKey::RemoteIp(f) => return f.holds(self.remote_ip()),
            CondKey::DestinationIp(f) => return f.holds(self.peer.dest),
            CondKey::ConnectionSni => Vec::new(),
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
