use super::*;

fn resolve(ns: &str, host: &str) -> Option<ServiceRef> {
    let name = host.split('.').next()?;
    ["reviews", "ratings"]
        .contains(&name)
        .then(|| ServiceRef::new(ns, name))
}

fn build(yaml: &str) -> Result<DestinationRules, RouteError> {
    let specs: Vec<DestinationRuleSpec> = serde_yaml::from_str(yaml).expect("yaml");
    DestinationRules::build(&specs, &resolve)
}

#[test]
fn subsets_and_balancing_follow_istio() {
    let drs = build(
        r#"
- name: reviews
  namespace: demo
  host: reviews.demo.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}, tls: {mode: ISTIO_MUTUAL}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2, app.kubernetes.io/part-of: bookinfo}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  - {name: all}
"#,
    )
    .unwrap();
    let reviews = ServiceRef::new("demo", "reviews");
    assert_eq!(drs.len(), 1);
    assert_eq!(drs.balance(&reviews, None, 80), Some(Balance::Random));
    assert_eq!(drs.balance(&reviews, Some("v1"), 80), Some(Balance::Random));
    assert_eq!(
        drs.balance(&reviews, Some("v2"), 80),
        Some(Balance::RoundRobin)
    );
    assert_eq!(
        drs.balance(&ServiceRef::new("demo", "ratings"), None, 80),
        None
    );
    let labels: HashMap<&str, &str> = [("version", "v2"), ("app", "reviews")].into();
    let look = |k: &str| labels.get(k).copied();
    assert!(!drs.subset(&reviews, "v1").unwrap().admits(look));
    // Every label must match: v2 also wants part-of.
    assert!(!drs.subset(&reviews, "v2").unwrap().admits(look));
    let more: HashMap<&str, &str> =
        [("version", "v2"), ("app.kubernetes.io/part-of", "bookinfo")].into();
    assert!(
        drs.subset(&reviews, "v2")
            .unwrap()
            .admits(|k| more.get(k).copied())
    );
    assert!(drs.subset(&reviews, "all").unwrap().admits(|_| None));
    assert!(drs.subset(&reviews, "v3").is_none());
}

#[test]
fn unsupported_and_wrong_things_are_refused_with_their_field() {
    let cases = [
        (
            "[{name: r, namespace: demo, host: nowhere}]",
            "destinationRules[demo/r].host",
        ),
        (
            "[{name: r, namespace: demo, host: reviews}, {name: s, namespace: demo, host: reviews.demo}]",
            "destinationRules[demo/s].host",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, subsets: [{name: v1}, {name: v1}]}]",
            "destinationRules[demo/r].subsets[1].name",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, subsets: [{name: ''}]}]",
            "destinationRules[demo/r].subsets[0].name",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, subsets: [{name: v1, labels: {version: -v1}}]}]",
            "destinationRules[demo/r].subsets[0].labels.version",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, subsets: [{name: v1, labels: {'Bad/x': v1}}]}]",
            "destinationRules[demo/r].subsets[0].labels.Bad/x",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}]",
            "destinationRules[demo/r].trafficPolicy.loadBalancer.simple",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {httpHeaderName: x}}}}]",
            "destinationRules[demo/r].trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM, warmupDurationSecs: 60s}}}]",
            "destinationRules[demo/r].trafficPolicy.loadBalancer.warmup",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {loadBalancer: {warmup: {duration: 1m, aggression: -1}}}}]",
            "destinationRules[demo/r].trafficPolicy.loadBalancer.warmup.aggression",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, subsets: [{name: v1, trafficPolicy: {loadBalancer: {consistentHash: {}}}}]}]",
            "destinationRules[demo/r].subsets[0].trafficPolicy.loadBalancer.consistentHash",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 1y}}}}}]",
            "destinationRules[demo/r].trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: 1s}}}}}]",
            "destinationRules[demo/r].trafficPolicy.connectionPool.tcp.tcpKeepalive",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, subsets: [{name: v1, trafficPolicy: {outlierDetection: {consecutiveErrors: 3}}}]}]",
            "destinationRules[demo/r].subsets[0].trafficPolicy.outlierDetection.consecutiveErrors",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}]",
            "destinationRules[demo/r].trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {outlierDetection: {baseEjectionTime: soon}}}]",
            "destinationRules[demo/r].trafficPolicy.outlierDetection.baseEjectionTime",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {tls: {mode: SIMPLE}}}]",
            "destinationRules[demo/r].trafficPolicy.tls.mode",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, exportTo: ['.']}]",
            "destinationRules[demo/r].exportTo",
        ),
    ];
    for (yaml, path) in cases {
        let e = build(yaml).expect_err(yaml);
        assert_eq!(e.path, path, "{yaml}: {e}");
    }
}

#[test]
fn a_consistent_hash_follows_the_balancing_that_wins() {
    let drs = build(
            r#"
- name: reviews
  namespace: demo
  host: reviews
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
  subsets:
    - {name: rr, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
    - {name: cookie, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 0s}}}}}
    - {name: plain}
"#,
        )
        .unwrap();
    let svc = ServiceRef::new("demo", "reviews");
    let key = |subset| drs.hash(&svc, subset, 80).map(|h| h.key.clone());
    assert_eq!(drs.balance(&svc, None, 80), Some(Balance::ConsistentHash));
    assert_eq!(
        key(None),
        Some(hash::HashKey::Header(http::HeaderName::from_static(
            "x-user"
        )))
    );
    // A subset's own balancing replaces the rule's, hash and all.
    assert_eq!(drs.balance(&svc, Some("rr"), 80), Some(Balance::RoundRobin));
    assert_eq!(key(Some("rr")), None);
    assert!(
        matches!(key(Some("cookie")), Some(hash::HashKey::Cookie(c)) if c.ttl == Some(Duration::ZERO))
    );
    // A subset without one inherits the rule's.
    assert_eq!(key(Some("plain")), key(None));
}

#[test]
fn port_level_settings_take_precedence_in_istios_order() {
    let drs = build(
        r#"
- name: reviews
  namespace: demo
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {http: {http2MaxRequests: 10}}
    portLevelSettings:
      - port: {number: 9080}
        loadBalancer: {simple: ROUND_ROBIN}
        outlierDetection: {consecutive5xxErrors: 2}
  subsets:
    - name: v1
      trafficPolicy:
        portLevelSettings:
          - port: {number: 9080}
            loadBalancer: {consistentHash: {useSourceIp: true}}
    - name: v2
      trafficPolicy:
        loadBalancer: {simple: LEAST_REQUEST}
"#,
    )
    .unwrap();
    let svc = ServiceRef::new("demo", "reviews");
    // The rule's port level beats the rule's own; other ports keep the rule's.
    assert_eq!(drs.balance(&svc, None, 9080), Some(Balance::RoundRobin));
    assert_eq!(drs.balance(&svc, None, 80), Some(Balance::Random));
    assert!(drs.outlier(&svc, None, 9080).is_some());
    assert!(drs.outlier(&svc, None, 80).is_none());
    // A subset's port level beats everything; its own policy beats the rule's port
    // level; parts it does not set come from the rule's levels.
    assert_eq!(
        drs.balance(&svc, Some("v1"), 9080),
        Some(Balance::ConsistentHash)
    );
    assert!(drs.hash(&svc, Some("v1"), 9080).is_some());
    assert_eq!(drs.balance(&svc, Some("v1"), 80), Some(Balance::Random));
    assert_eq!(
        drs.balance(&svc, Some("v2"), 9080),
        Some(Balance::LeastRequest)
    );
    assert!(drs.outlier(&svc, Some("v2"), 9080).is_some());
    let limits = drs.limits(&svc, Some("v2"), 9080).unwrap();
    assert_eq!(limits.policy.max_requests, 10);
    for (yaml, path) in [
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 0}}]}}]",
            "destinationRules[demo/r].trafficPolicy.portLevelSettings[0].port.number",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]}}]",
            "destinationRules[demo/r].trafficPolicy.portLevelSettings[1].port.number",
        ),
        (
            "[{name: r, namespace: demo, host: reviews, trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: DISABLE}}]}}]",
            "destinationRules[demo/r].trafficPolicy.portLevelSettings[0].tls.mode",
        ),
    ] {
        assert_eq!(build(yaml).expect_err(yaml).path, path, "{yaml}");
    }
}

#[test]
fn outlier_detection_has_istios_defaults_and_envoys_limits() {
    let drs = build(
            r#"
- name: reviews
  namespace: demo
  host: reviews
  trafficPolicy: {outlierDetection: {}}
  subsets:
  - {name: v1, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 10m, maxEjectionPercent: 50, minHealthPercent: 20}}}
  - {name: v2}
"#,
        )
        .unwrap();
    let reviews = ServiceRef::new("demo", "reviews");
    let d = drs.outlier(&reviews, None, 80).unwrap();
    assert_eq!(
        **d,
        Outlier {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    );
    assert!(Arc::ptr_eq(
        drs.outlier(&reviews, Some("v2"), 80).unwrap(),
        d
    ));
    let v1 = drs.outlier(&reviews, Some("v1"), 80).unwrap();
    assert_eq!((v1.consecutive_5xx, v1.consecutive_gateway), (0, 2));
    // Ejections lengthen with their count, capped at 300 s or the base if longer.
    assert_eq!(d.ejection(1), Duration::from_secs(30));
    assert_eq!(d.ejection(3), Duration::from_secs(90));
    assert_eq!(d.ejection(50), MAX_EJECTION);
    assert_eq!(v1.ejection(2), Duration::from_secs(600));
    // 10 % of 4 is less than one endpoint: the first may go anyway, a second not.
    assert!(d.may_eject(4, 0) && !d.may_eject(4, 1));
    assert!(d.may_eject(20, 1) && !d.may_eject(20, 2));
    assert!(v1.may_eject(4, 1) && !v1.may_eject(4, 2));
}

#[test]
fn least_request_takes_the_less_loaded_of_two() {
    let lr = Balance::LeastRequest;
    assert_eq!(lr.choose(0, 7, |_| 0), None);
    assert_eq!(lr.choose(1, 7, |_| 9), Some(0));
    // Two candidates: the idle one always wins.
    for c in 0..100 {
        assert_eq!(lr.choose(2, c, |i| [5, 0][i]), Some(1));
    }
    // Four candidates, one loaded: it is never taken, since the other of the pair is
    // always lighter; the rest share the picks.
    let mut seen = [0; 4];
    for c in 0..4000 {
        seen[lr.choose(4, c, |i| [0, 0, 9, 0][i]).unwrap()] += 1;
    }
    assert_eq!(seen[2], 0, "{seen:?}");
    assert!(
        seen.iter().enumerate().all(|(i, &k)| i == 2 || k > 1000),
        "{seen:?}"
    );
    // Equal loads: uniform.
    let mut seen = [0; 3];
    for c in 0..3000 {
        seen[lr.choose(3, c, |_| 1).unwrap()] += 1;
    }
    assert!(seen.iter().all(|&k| (800..1200).contains(&k)), "{seen:?}");
    // Round robin is in turn; random covers all.
    let rr: Vec<_> = (0..6)
        .map(|c| Balance::RoundRobin.choose(3, c, |_| 0).unwrap())
        .collect();
    assert_eq!(rr, [0, 1, 2, 0, 1, 2]);
    let mut seen = [false; 5];
    for c in 0..100 {
        seen[Balance::Random.choose(5, c, |_| 0).unwrap()] = true;
    }
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn label_syntax_is_kubernetes() {
    for ok in ["version", "app.kubernetes.io/name", "a", "x_y-z.1"] {
        assert!(label_key(ok).is_ok(), "{ok}");
    }
    for bad in ["", "/x", "Ab.io/x", "-x", "x-", &"a".repeat(64), "a/b/"] {
        assert!(label_key(bad).is_err(), "{bad}");
    }
    for ok in ["", "v1", "1.2.3", "a_b"] {
        assert!(label_value(ok).is_ok(), "{ok}");
    }
    for bad in ["-v1", "v1.", "a b", &"a".repeat(64)] {
        assert!(label_value(bad).is_err(), "{bad}");
    }
}

/// A rule whose host stayed a hostname (a ServiceEntry's, from the cluster) is found for a
/// request that named the Service by name, and a rule by name for one that named it by
/// hostname; a mesh whose rules all go by name builds no key.
#[test]
fn a_rule_is_found_by_name_or_by_hostname() {
    let resolve = |ns: &str, host: &str| match host {
        "api.example.com" => Some(ServiceRef::by_host(host)),
        _ => resolve(ns, host),
    };
    let specs: Vec<DestinationRuleSpec> = serde_yaml::from_str(
        "
- {name: api, namespace: egress, host: api.example.com, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
- {name: reviews, namespace: demo, host: reviews, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
",
    )
    .unwrap();
    let drs = DestinationRules::build(&specs, &resolve).unwrap();
    let by_host = ServiceRef::by_host("api.example.com");
    assert_eq!(drs.balance(&by_host, None, 443), Some(Balance::Random));
    // Named by the ServiceEntry's name: its hostname finds the rule.
    let by_name = ServiceRef::new("egress", "api");
    let api = ("egress", "api", "api.example.com");
    let key = drs.key_for(&by_name, api, false);
    assert_eq!(key.as_ref(), Some(&by_host));
    // Named by hostname, kept by name: the name finds it, if no other Service has it.
    let reviews = ServiceRef::by_host("reviews.demo.svc.cluster.local");
    let at = ("demo", "reviews", "reviews.demo.svc.cluster.local");
    assert_eq!(
        drs.key_for(&reviews, at, true),
        Some(ServiceRef::new("demo", "reviews"))
    );
    // A ServiceEntry's host of that name (its name shared by its hosts): not its rule.
    let entry_host = ServiceRef::by_host("reviews.example.com");
    let at = ("demo", "reviews", "reviews.example.com");
    assert_eq!(drs.key_for(&entry_host, at, false), None);
    // The rule is the route's own, or there is none: no key.
    assert_eq!(drs.key_for(&by_host, api, false), None);
    let other = ServiceRef::new("demo", "ratings");
    let at = ("demo", "ratings", "ratings.demo.svc.cluster.local");
    assert_eq!(drs.key_for(&other, at, true), None);
    assert_eq!(format!("{by_host}"), "api.example.com");
}
