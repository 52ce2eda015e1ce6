//! L4 authorization: Istio's `istio.security.Authorization` model and ztunnel's semantics.
//!
//! A policy has a scope (global, its namespace, or the workloads that name it), an action
//! (allow or deny), a dry-run flag, and rules. Matching is a four-level tree:
//! - a policy matches when **any** rule matches (no rules: never matches);
//! - a rule matches when **all** its clauses match (no clauses: matches everything, which
//!   is how istiod encodes an empty AuthorizationPolicy rule `{}`);
//! - a clause matches when **any** of its matches matches (no matches: matches);
//! - a match holds when every field pair it sets holds (a match that sets nothing never
//!   holds: istiod sends one for a rule that can match nothing); a positive list holds when
//!   empty or when one entry hits, a `not_` list when empty or when no entry hits.
//!
//! Fields are compared with the connection as the destination node sees it: principals with
//! the peer identity written without `spiffe://` (`td/ns/NS/sa/SA`), namespaces with the
//! identity's namespace, service accounts with its namespace and account; all three never
//! hit for a plaintext source (no identity). Source and destination IPs are CIDRs; ports are
//! the port the workload receives on.
//!
//! For one connection to workload W ([`decide`]): the candidates are every global policy,
//! every namespace policy of W's namespace, and the selector policies W names. Dry-run
//! policies are evaluated and logged, never enforced. Then: any enforced deny that matches
//! denies; else with no enforced allow, allow; else allow only if an enforced allow matches.
//!
//! Invariant: policies are validated and compiled when they arrive (file or xDS);
//! evaluation does not allocate.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::identity::Identity;

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// Which workloads a policy protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Scope {
    /// Every workload in the mesh (istiod: a policy in the root namespace without selector).
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// The workloads that list it (`authorizationPolicies` / `authorization_policies`).
    WorkloadSelector,
}

/// A compiled authorization policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub scope: Scope,
    pub action: Action,
    pub dry_run: bool,
    /// Any of them.
    pub rules: Vec<Rule>,
}

/// All of its clauses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// Any of its matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// Every field pair it sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

/// A string condition (Istio's `*` forms: `*` is presence, `*x` suffix, `x*` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(Arc<str>),
    Prefix(Arc<str>),
    Suffix(Arc<str>),
    /// Any non-empty value.
    Presence,
}

/// A source service account: namespace and name, compared exactly (trust domain ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountMatch {
    pub namespace: Arc<str>,
    pub service_account: Arc<str>,
}

/// An IP prefix. Invariant: `len` is at most the family's width and the host bits are as
/// given (a CIDR with host bits set matches like its network, as ipnet's `contains`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

/// What a policy sees of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer's verified identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    /// The workload's address and the port it receives on.
    pub destination: SocketAddr,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

/// Why a connection was denied, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// This deny policy (its key, `namespace/name`) matched.
    DeniedBy(Arc<str>),
    /// Allow policies apply to the destination and none matched.
    NotAllowed,
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::DeniedBy(name) => write!(f, "explicitly denied by: {name}"),
            DenyReason::NotAllowed => f.write_str("allow policies exist, but none allowed"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Global => "Global",
            Scope::Namespace => "Namespace",
            Scope::WorkloadSelector => "WorkloadSelector",
        })
    }
}

impl StringMatch {
    fn hits(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == &**s,
            StringMatch::Prefix(s) => value.starts_with(&**s),
            StringMatch::Suffix(s) => value.ends_with(&**s),
            StringMatch::Presence => !value.is_empty(),
        }
    }

    /// Istio's AuthorizationPolicy string form: `*` presence, `*x` suffix, `x*` prefix, else
    /// exact. A `spiffe://` prefix is dropped (principals are compared without it).
    pub fn from_istio(text: &str) -> StringMatch {
        let bare = text.strip_prefix("spiffe://").unwrap_or(text);
        if bare == "*" {
            StringMatch::Presence
        } else if let Some(rest) = bare.strip_prefix('*') {
            StringMatch::Suffix(rest.into())
        } else if let Some(rest) = bare.strip_suffix('*') {
            StringMatch::Prefix(rest.into())
        } else {
            StringMatch::Exact(bare.into())
        }
    }

    /// ztunnel's config-dump form: `{"Exact": "..."}`, `{"Presence": []}`.
    pub fn dump(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            StringMatch::Exact(s) => json!({ "Exact": &**s }),
            StringMatch::Prefix(s) => json!({ "Prefix": &**s }),
            StringMatch::Suffix(s) => json!({ "Suffix": &**s }),
            StringMatch::Presence => json!({ "Presence": [] }),
        }
    }
}

impl Cidr {
    /// `addr/len`, checking the length against the family.
    pub fn new(addr: IpAddr, len: u32) -> Result<Cidr, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!(
                "prefix length {len} is longer than {max} for {addr}"
            ));
        }
        Ok(Cidr {
            addr,
            len: len as u8,
        })
    }

    /// A single address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `a.b.c.d/len`, `::/len`, or a bare address (a host prefix).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an IP address or CIDR (like 10.0.0.0/8)");
        match s.split_once('/') {
            Some((ip, len)) => {
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let len: u32 = len.parse().map_err(|_| bad())?;
                Cidr::new(ip, len)
            }
            None => s.parse().map(Cidr::host).map_err(|_| bad()),
        }
    }
}

/// A positive list and its `not_` twin: the positive one hits (or is empty), the negative
/// one misses (or is empty).
fn pair<T>(yes: &[T], no: &[T], hit: impl Fn(&T) -> bool) -> bool {
    (yes.is_empty() || yes.iter().any(&hit)) && !no.iter().any(hit)
}

impl Match {
    /// Sets no condition at all (never holds).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
    }

    fn holds(&self, req: &Request<'_>) -> bool {
        if self.is_empty() {
            return false;
        }
        let principal = req.source.map(Identity::principal);
        let namespace = req.source.map_or("", Identity::namespace);
        let sa_hit = |m: &ServiceAccountMatch| {
            req.source.is_some_and(|id| {
                id.namespace() == &*m.namespace && id.service_account() == &*m.service_account
            })
        };
        let dst_port = req.destination.port();
        pair(&self.destination_ips, &self.not_destination_ips, |c| {
            c.contains(req.destination.ip())
        }) && pair(&self.source_ips, &self.not_source_ips, |c| {
            c.contains(req.source_ip)
        }) && pair(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == dst_port
        }) && pair(&self.service_accounts, &self.not_service_accounts, sa_hit)
            && pair(&self.principals, &self.not_principals, |m| {
                principal.is_some_and(|p| m.hits(p))
            })
            && pair(&self.namespaces, &self.not_namespaces, |m| {
                m.hits(namespace)
            })
    }
}

impl Authorization {
    /// The name istiod and ztunnel key policies by: `namespace/name` (just `name` when the
    /// namespace is empty, for ringmesh's own file policies).
    pub fn key(&self) -> Arc<str> {
        policy_key(&self.namespace, &self.name)
    }

    /// Whether the policy's conditions hold for `req` (regardless of action and dry-run).
    pub fn matches(&self, req: &Request<'_>) -> bool {
        self.rules.iter().any(|rule| {
            rule.clauses.iter().all(|clause| {
                clause.matches.is_empty() || clause.matches.iter().any(|m| m.holds(req))
            })
        })
    }

    /// The rules as ztunnel's config dump writes them: a list (rules) of lists (clauses) of
    /// lists (matches) of match objects.
    pub fn rules_dump(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let strings = |l: &[StringMatch]| l.iter().map(StringMatch::dump).collect::<Vec<_>>();
        let sas = |l: &[ServiceAccountMatch]| {
            l.iter()
                .map(|m| json!({"namespace": &*m.namespace, "serviceAccount": &*m.service_account}))
                .collect::<Vec<_>>()
        };
        let cidrs = |l: &[Cidr]| l.iter().map(Cidr::to_string).collect::<Vec<_>>();
        let one = |m: &Match| {
            let mut o = Map::new();
            o.insert("namespaces".into(), json!(strings(&m.namespaces)));
            o.insert("notNamespaces".into(), json!(strings(&m.not_namespaces)));
            o.insert("principals".into(), json!(strings(&m.principals)));
            o.insert("notPrincipals".into(), json!(strings(&m.not_principals)));
            o.insert("serviceAccounts".into(), json!(sas(&m.service_accounts)));
            o.insert(
                "notServiceAccounts".into(),
                json!(sas(&m.not_service_accounts)),
            );
            o.insert("sourceIps".into(), json!(cidrs(&m.source_ips)));
            o.insert("notSourceIps".into(), json!(cidrs(&m.not_source_ips)));
            o.insert("destinationIps".into(), json!(cidrs(&m.destination_ips)));
            o.insert(
                "notDestinationIps".into(),
                json!(cidrs(&m.not_destination_ips)),
            );
            o.insert("destinationPorts".into(), json!(m.destination_ports));
            o.insert("notDestinationPorts".into(), json!(m.not_destination_ports));
            Value::Object(o)
        };
        Value::Array(
            self.rules
                .iter()
                .map(|r| {
                    Value::Array(
                        r.clauses
                            .iter()
                            .map(|c| Value::Array(c.matches.iter().map(one).collect()))
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}

/// `namespace/name`, or `name` alone for an empty namespace.
pub fn policy_key(namespace: &str, name: &str) -> Arc<str> {
    if namespace.is_empty() {
        name.into()
    } else {
        format!("{namespace}/{name}").into()
    }
}

/// Decides a connection given the candidate policies for its destination workload (see the
/// module docs). Dry-run policies are logged (target `authz`), never enforced.
pub fn decide<'a>(
    candidates: impl IntoIterator<Item = &'a Authorization> + Clone,
    req: &Request<'_>,
) -> Decision {
    let mut allow_enforced = false;
    let mut allow_dry = false;
    let mut dry_allowed = false;
    let mut denied: Option<&Authorization> = None;
    for p in candidates.clone() {
        match (p.action, p.dry_run) {
            (Action::Deny, false) if denied.is_none() && p.matches(req) => denied = Some(p),
            (Action::Deny, true) if p.matches(req) => dry_run_note(p, req, "would deny"),
            (Action::Allow, false) => allow_enforced = true,
            (Action::Allow, true) => {
                allow_dry = true;
                if p.matches(req) {
                    dry_allowed = true;
                    dry_run_note(p, req, "would allow");
                }
            }
            _ => {}
        }
    }
    if let Some(p) = denied {
        return Decision::Deny(DenyReason::DeniedBy(p.key()));
    }
    if allow_dry && !allow_enforced && !dry_allowed {
        tracing::event!(
            target: "authz",
            tracing::Level::INFO,
            src.identity = req.source.map_or("", Identity::as_str),
            src.addr = %req.source_ip,
            dst.addr = %req.destination,
            "dry-run: no dry-run allow policy matched; the connection would be denied"
        );
    }
    if !allow_enforced {
        return Decision::Allow;
    }
    let allowed = candidates
        .into_iter()
        .any(|p| p.action == Action::Allow && !p.dry_run && p.matches(req));
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NotAllowed)
    }
}

fn dry_run_note(p: &Authorization, req: &Request<'_>, verdict: &str) {
    tracing::event!(
        target: "authz",
        tracing::Level::INFO,
        policy = %p.key(),
        src.identity = req.source.map_or("", Identity::as_str),
        src.addr = %req.source_ip,
        dst.addr = %req.destination,
        "dry-run policy matched: it {verdict} this connection"
    );
}

#[cfg(test)]
mod tests;
