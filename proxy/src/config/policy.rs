//! L4 authorization: which source identities may open connections to which workloads.
//!
//! Semantics follow Istio's AuthorizationPolicy at L4, reduced to what a node proxy can see
//! before any byte moves: the peer's SPIFFE identity (absent for plaintext), and the
//! destination workload and port. For one connection:
//! 1. if any `Deny` policy that applies to the destination matches → deny;
//! 2. else if no `Allow` policy applies to the destination → allow;
//! 3. else allow only if one of those `Allow` policies matches.
//!
//! A policy matches when one of its `from` entries matches (or it has none) and the port is
//! one of its `ports` (or it has none). A `from` entry matches when every list it gives
//! matches: `principals`/`namespaces` need one hit, `notPrincipals`/`notNamespaces` need
//! none. A source without identity has principal "" and namespace "", as in ztunnel, so a
//! principal or namespace rule never admits plaintext traffic.
//!
//! Invariant: policies are compiled once per snapshot; `decide` allocates only when a
//! prefix/suffix principal must be compared against the identity's text.

use std::sync::Arc;

use crate::identity::Identity;

pub use super::model::Action;

/// A compiled authorization policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Arc<str>,
    pub action: Action,
    /// It protects every workload (no `destination`).
    pub global: bool,
    pub(crate) from: Vec<SourceMatch>,
    pub(crate) ports: Vec<u16>,
}

/// One `from` entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceMatch {
    pub principals: Vec<PrincipalMatch>,
    pub not_principals: Vec<PrincipalMatch>,
    pub namespaces: Vec<Arc<str>>,
    pub not_namespaces: Vec<Arc<str>>,
}

/// A principal pattern, compared with the identity written without `spiffe://`
/// (Istio's principal form, e.g. `cluster.local/ns/demo/sa/client`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrincipalMatch {
    Exact(Identity),
    Prefix(String),
    Suffix(String),
    /// `*`: any authenticated source.
    Any,
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
    /// This `Deny` policy matched.
    DeniedBy(Arc<str>),
    /// `Allow` policies apply to the destination and none matched.
    NotAllowed,
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyReason::DeniedBy(name) => write!(f, "explicitly denied by: {name}"),
            DenyReason::NotAllowed => f.write_str("allow policies exist, but none allowed"),
        }
    }
}

impl PrincipalMatch {
    /// Parses a principal as written in the file: `spiffe://td/ns/x/sa/y`, `td/ns/x/sa/y`,
    /// `prefix*`, `*suffix` or `*`.
    pub(crate) fn parse(text: &str) -> Result<PrincipalMatch, String> {
        let bare = text.strip_prefix("spiffe://").unwrap_or(text);
        if bare == "*" {
            return Ok(PrincipalMatch::Any);
        }
        match bare.matches('*').count() {
            0 => format!("spiffe://{bare}")
                .parse::<Identity>()
                .map(PrincipalMatch::Exact)
                .map_err(|e| e.to_string()),
            1 if bare.ends_with('*') && bare.len() > 1 => {
                Ok(PrincipalMatch::Prefix(bare[..bare.len() - 1].to_string()))
            }
            1 if bare.starts_with('*') && bare.len() > 1 => {
                Ok(PrincipalMatch::Suffix(bare[1..].to_string()))
            }
            _ => Err(format!(
                "{text:?} is not a principal (an identity like cluster.local/ns/NS/sa/SA, \
                 optionally with one '*' at the start or end, or '*')"
            )),
        }
    }

    fn matches(&self, src: Option<&Identity>, text: &mut Option<String>) -> bool {
        let Some(id) = src else {
            return false;
        };
        let bare = || {
            format!(
                "{}/ns/{}/sa/{}",
                id.trust_domain(),
                id.namespace(),
                id.service_account()
            )
        };
        match self {
            PrincipalMatch::Exact(want) => want == id,
            PrincipalMatch::Any => true,
            PrincipalMatch::Prefix(p) => text.get_or_insert_with(bare).starts_with(p.as_str()),
            PrincipalMatch::Suffix(s) => text.get_or_insert_with(bare).ends_with(s.as_str()),
        }
    }
}

impl SourceMatch {
    fn matches(&self, src: Option<&Identity>, text: &mut Option<String>) -> bool {
        let ns = src.map(Identity::namespace).unwrap_or("");
        let ns_hit = |list: &[Arc<str>]| list.iter().any(|n| &**n == ns);
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(src, text)))
            && !self.not_principals.iter().any(|p| p.matches(src, text))
            && (self.namespaces.is_empty() || ns_hit(&self.namespaces))
            && !ns_hit(&self.not_namespaces)
    }
}

impl PrincipalMatch {
    /// ztunnel's string-match JSON (`{"Exact": "td/ns/x/sa/y"}`, `{"Prefix": …}`, …), in
    /// Istio's principal form.
    fn dump(&self) -> serde_json::Value {
        match self {
            PrincipalMatch::Exact(id) => serde_json::json!({"Exact": id.principal()}),
            PrincipalMatch::Prefix(p) => serde_json::json!({"Prefix": p}),
            PrincipalMatch::Suffix(s) => serde_json::json!({"Suffix": s}),
            PrincipalMatch::Any => serde_json::json!({"Presence": []}),
        }
    }
}

impl Policy {
    /// The policy as ztunnel's config dump writes rules: rules (any) → clauses (all) →
    /// matches (any). Each `from` entry is a rule; each of its lists a clause; the ports are a
    /// clause of every rule.
    pub fn rules_dump(&self) -> serde_json::Value {
        use serde_json::{Value, json};
        let ports: Option<Value> =
            (!self.ports.is_empty()).then(|| json!([{"destinationPorts": self.ports}]));
        let mut rules: Vec<Value> = Vec::new();
        let froms: Vec<Option<&SourceMatch>> = if self.from.is_empty() {
            vec![None]
        } else {
            self.from.iter().map(Some).collect()
        };
        for from in froms {
            let mut clauses: Vec<Value> = Vec::new();
            if let Some(m) = from {
                let dump =
                    |l: &[PrincipalMatch]| l.iter().map(PrincipalMatch::dump).collect::<Vec<_>>();
                let ns =
                    |l: &[Arc<str>]| l.iter().map(|n| json!({"Exact": &**n})).collect::<Vec<_>>();
                if !m.principals.is_empty() {
                    clauses.push(json!([{"principals": dump(&m.principals)}]));
                }
                if !m.not_principals.is_empty() {
                    clauses.push(json!([{"notPrincipals": dump(&m.not_principals)}]));
                }
                if !m.namespaces.is_empty() {
                    clauses.push(json!([{"namespaces": ns(&m.namespaces)}]));
                }
                if !m.not_namespaces.is_empty() {
                    clauses.push(json!([{"notNamespaces": ns(&m.not_namespaces)}]));
                }
            }
            if let Some(p) = &ports {
                clauses.push(p.clone());
            }
            rules.push(Value::Array(clauses));
        }
        Value::Array(rules)
    }

    /// Whether this policy's conditions hold for a connection (regardless of its action).
    pub fn matches(&self, src: Option<&Identity>, dst_port: u16) -> bool {
        if !self.ports.is_empty() && !self.ports.contains(&dst_port) {
            return false;
        }
        let mut text = None;
        self.from.is_empty() || self.from.iter().any(|m| m.matches(src, &mut text))
    }
}

/// Decides a connection given the policies that apply to its destination workload.
pub fn decide<'a>(
    applicable: impl IntoIterator<Item = &'a Policy> + Clone,
    src: Option<&Identity>,
    dst_port: u16,
) -> Decision {
    let mut any_allow = false;
    for p in applicable.clone() {
        if p.action == Action::Deny && p.matches(src, dst_port) {
            return Decision::Deny(DenyReason::DeniedBy(p.name.clone()));
        }
        any_allow |= p.action == Action::Allow;
    }
    if !any_allow {
        return Decision::Allow;
    }
    let allowed = applicable
        .into_iter()
        .any(|p| p.action == Action::Allow && p.matches(src, dst_port));
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    fn policy(name: &str, action: Action, from: Vec<SourceMatch>, ports: Vec<u16>) -> Policy {
        Policy {
            name: name.into(),
            action,
            global: true,
            from,
            ports,
        }
    }

    #[test]
    fn principal_patterns() {
        let client = id("spiffe://cluster.local/ns/demo/sa/client");
        let check = |pat: &str| {
            PrincipalMatch::parse(pat)
                .unwrap()
                .matches(Some(&client), &mut None)
        };
        assert!(check("cluster.local/ns/demo/sa/client"));
        assert!(check("spiffe://cluster.local/ns/demo/sa/client"));
        assert!(!check("cluster.local/ns/demo/sa/other"));
        assert!(check("cluster.local/ns/demo/*"));
        assert!(!check("cluster.local/ns/prod/*"));
        assert!(check("*/sa/client"));
        assert!(check("*"));
        assert!(!PrincipalMatch::parse("*").unwrap().matches(None, &mut None));
        assert!(PrincipalMatch::parse("a*b").is_err());
        assert!(PrincipalMatch::parse("cluster.local/ns/demo").is_err());
    }

    #[test]
    fn deny_wins_then_allow_list_then_default_allow() {
        let client = id("spiffe://cluster.local/ns/demo/sa/client");
        let other = id("spiffe://cluster.local/ns/legacy/sa/app");
        let from_demo = SourceMatch {
            namespaces: vec!["demo".into()],
            ..Default::default()
        };
        let from_legacy = SourceMatch {
            namespaces: vec!["legacy".into()],
            ..Default::default()
        };

        // No policies: allow, even plaintext.
        assert_eq!(decide(&[] as &[Policy], None, 80), Decision::Allow);

        let allow = policy(
            "allow-demo",
            Action::Allow,
            vec![from_demo.clone()],
            vec![8080],
        );
        let set = [allow.clone()];
        assert_eq!(decide(&set, Some(&client), 8080), Decision::Allow);
        assert_eq!(
            decide(&set, Some(&client), 9090),
            Decision::Deny(DenyReason::NotAllowed)
        );
        assert_eq!(
            decide(&set, Some(&other), 8080),
            Decision::Deny(DenyReason::NotAllowed)
        );
        assert_eq!(
            decide(&set, None, 8080),
            Decision::Deny(DenyReason::NotAllowed)
        );

        let deny = policy("deny-legacy", Action::Deny, vec![from_legacy], vec![]);
        let set = [deny.clone()];
        assert_eq!(decide(&set, Some(&client), 1), Decision::Allow);
        assert_eq!(
            decide(&set, Some(&other), 1),
            Decision::Deny(DenyReason::DeniedBy("deny-legacy".into()))
        );

        // Deny is checked before allow, whatever the order.
        let deny_all = policy("deny-all", Action::Deny, vec![], vec![]);
        let set = [allow, deny_all];
        assert_eq!(
            decide(&set, Some(&client), 8080),
            Decision::Deny(DenyReason::DeniedBy("deny-all".into()))
        );
    }

    #[test]
    fn not_lists_exclude() {
        let client = id("spiffe://cluster.local/ns/demo/sa/client");
        let m = SourceMatch {
            not_principals: vec![PrincipalMatch::parse("cluster.local/ns/demo/sa/client").unwrap()],
            ..Default::default()
        };
        let set = [policy("all-but-client", Action::Allow, vec![m], vec![])];
        assert!(!decide(&set, Some(&client), 1).is_allow());
        assert!(decide(&set, Some(&id("spiffe://cluster.local/ns/demo/sa/x")), 1).is_allow());
        // Plaintext has principal "", which no principal pattern matches: admitted by a not-list.
        assert!(decide(&set, None, 1).is_allow());
    }
}
