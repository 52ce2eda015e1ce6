use super::*;

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn req<'a>(source: Option<&'a Identity>, src: &str, dst: &str) -> Request<'a> {
    Request {
        source,
        source_ip: src.parse().unwrap(),
        destination: dst.parse().unwrap(),
    }
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "ns".into(),
        scope: Scope::Namespace,
        action,
        dry_run: false,
        rules,
    }
}

/// One rule of one clause of one match.
fn single(m: Match) -> Vec<Rule> {
    vec![Rule {
        clauses: vec![Clause { matches: vec![m] }],
    }]
}

#[test]
fn empty_shapes_follow_ztunnel() {
    let client = id("spiffe://cluster.local/ns/demo/sa/client");
    let r = req(Some(&client), "10.0.0.1", "10.0.0.2:80");
    // No rules: never matches.
    assert!(!policy("p", Action::Allow, vec![]).matches(&r));
    // A rule with no clauses: matches everything.
    assert!(policy("p", Action::Allow, vec![Rule::default()]).matches(&r));
    // A clause with no matches counts as matched.
    let rules = vec![Rule {
        clauses: vec![Clause::default()],
    }];
    assert!(policy("p", Action::Allow, rules).matches(&r));
    // A match that sets nothing never holds.
    assert!(!policy("p", Action::Allow, single(Match::default())).matches(&r));
}

#[test]
fn rules_or_clauses_and_matches_or() {
    let client = id("spiffe://cluster.local/ns/demo/sa/client");
    let r = req(Some(&client), "10.0.0.1", "10.0.0.2:80");
    let port = |p: u16| Match {
        destination_ports: vec![p],
        ..Match::default()
    };
    let ns = |n: &str| Match {
        namespaces: vec![StringMatch::Exact(n.into())],
        ..Match::default()
    };
    // Clauses AND: port 80 and namespace demo.
    let and = vec![Rule {
        clauses: vec![
            Clause {
                matches: vec![port(80)],
            },
            Clause {
                matches: vec![ns("demo")],
            },
        ],
    }];
    assert!(policy("p", Action::Allow, and.clone()).matches(&r));
    let mut and_miss = and;
    and_miss[0].clauses[1].matches = vec![ns("prod")];
    assert!(!policy("p", Action::Allow, and_miss).matches(&r));
    // Matches OR inside a clause.
    let or = vec![Rule {
        clauses: vec![Clause {
            matches: vec![port(81), ns("demo")],
        }],
    }];
    assert!(policy("p", Action::Allow, or).matches(&r));
    // Rules OR.
    let rules = vec![
        Rule {
            clauses: vec![Clause {
                matches: vec![port(81)],
            }],
        },
        Rule {
            clauses: vec![Clause {
                matches: vec![port(80)],
            }],
        },
    ];
    assert!(policy("p", Action::Allow, rules).matches(&r));
}

#[test]
fn every_field_and_its_not_form() {
    let client = id("spiffe://cluster.local/ns/demo/sa/client");
    let r = req(Some(&client), "10.1.2.3", "10.0.0.2:8080");
    let plain = req(None, "10.1.2.3", "10.0.0.2:8080");
    let holds = |m: Match, r: &Request<'_>| policy("p", Action::Allow, single(m)).matches(r);

    let principal = |s: StringMatch| Match {
        principals: vec![s],
        ..Match::default()
    };
    assert!(holds(
        principal(StringMatch::Exact("cluster.local/ns/demo/sa/client".into())),
        &r
    ));
    assert!(holds(
        principal(StringMatch::Prefix("cluster.local/ns/demo/".into())),
        &r
    ));
    assert!(holds(
        principal(StringMatch::Suffix("/sa/client".into())),
        &r
    ));
    assert!(holds(principal(StringMatch::Presence), &r));
    assert!(!holds(principal(StringMatch::Presence), &plain));
    let not_principal = Match {
        not_principals: vec![StringMatch::Presence],
        ..Match::default()
    };
    // STRICT mTLS as istiod encodes it: deny notPrincipals [presence] hits plaintext only.
    assert!(!holds(not_principal.clone(), &r));
    assert!(holds(not_principal, &plain));

    let ns = Match {
        not_namespaces: vec![StringMatch::Exact("demo".into())],
        ..Match::default()
    };
    assert!(!holds(ns.clone(), &r));
    assert!(holds(ns, &plain));

    let sa = |n: &str, s: &str| ServiceAccountMatch {
        namespace: n.into(),
        service_account: s.into(),
    };
    let sas = Match {
        service_accounts: vec![sa("demo", "client")],
        ..Match::default()
    };
    assert!(holds(sas.clone(), &r));
    assert!(!holds(sas, &plain));
    let not_sas = Match {
        not_service_accounts: vec![sa("demo", "other"), sa("prod", "client")],
        ..Match::default()
    };
    assert!(holds(not_sas, &r));

    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    let src = Match {
        source_ips: vec![cidr("10.1.0.0/16")],
        not_source_ips: vec![cidr("10.1.9.0/24")],
        ..Match::default()
    };
    assert!(holds(src, &r));
    let dst = Match {
        destination_ips: vec![cidr("10.0.0.2")],
        ..Match::default()
    };
    assert!(holds(dst, &r));
    let not_dst = Match {
        not_destination_ips: vec![cidr("10.0.0.0/8")],
        ..Match::default()
    };
    assert!(!holds(not_dst, &r));
    let ports = Match {
        destination_ports: vec![80, 8080],
        not_destination_ports: vec![9999],
        ..Match::default()
    };
    assert!(holds(ports, &r));
    let not_port = Match {
        not_destination_ports: vec![8080],
        ..Match::default()
    };
    assert!(!holds(not_port, &r));
    // Fields AND inside one match.
    let both = Match {
        destination_ports: vec![8080],
        namespaces: vec![StringMatch::Exact("prod".into())],
        ..Match::default()
    };
    assert!(!holds(both, &r));
}

#[test]
fn deny_then_allow_list_then_default_allow_with_dry_run_ignored() {
    let client = id("spiffe://cluster.local/ns/demo/sa/client");
    let r = req(Some(&client), "10.0.0.1", "10.0.0.2:80");
    let all = vec![Rule::default()];
    let none: Vec<Rule> = vec![];

    assert_eq!(decide(&[] as &[Authorization], &r), Decision::Allow);
    let deny_all = policy("deny-all", Action::Deny, all.clone());
    let allow_all = policy("allow-all", Action::Allow, all.clone());
    let allow_none = policy("allow-none", Action::Allow, none);
    assert_eq!(
        decide(&[allow_all.clone(), deny_all.clone()], &r),
        Decision::Deny(DenyReason::DeniedBy("ns/deny-all".into()))
    );
    assert_eq!(
        decide(std::slice::from_ref(&allow_none), &r),
        Decision::Deny(DenyReason::NotAllowed)
    );
    assert_eq!(decide(&[allow_none, allow_all], &r), Decision::Allow);

    // Dry-run policies never change the outcome.
    let mut dry_deny = deny_all;
    dry_deny.dry_run = true;
    assert_eq!(decide(&[dry_deny], &r), Decision::Allow);
    let mut dry_allow = policy("dry-allow", Action::Allow, vec![]);
    dry_allow.dry_run = true;
    assert_eq!(decide(&[dry_allow], &r), Decision::Allow);
}

#[test]
fn cidrs() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains("10.255.0.1".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(!c.contains("::1".parse().unwrap()));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("1.2.3.4".parse().unwrap()));
    let v6: Cidr = "fd00::/8".parse().unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()));
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("10.0.0/8".parse::<Cidr>().is_err());
    assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
}

#[test]
fn istio_string_forms() {
    assert_eq!(StringMatch::from_istio("*"), StringMatch::Presence);
    assert_eq!(
        StringMatch::from_istio("*x"),
        StringMatch::Suffix("x".into())
    );
    assert_eq!(
        StringMatch::from_istio("x*"),
        StringMatch::Prefix("x".into())
    );
    assert_eq!(
        StringMatch::from_istio("spiffe://td/ns/a/sa/b"),
        StringMatch::Exact("td/ns/a/sa/b".into())
    );
}
