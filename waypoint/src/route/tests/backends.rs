//! Where a rule sends: weighted backends, backend refs and their ports, durations; with
//! the table helpers of the route tests.
use super::*;

// ---------------------------------------------------------------------------------------
// Weighted backends.

#[test]
fn pick_spreads_by_weight_exactly() {
    let rule = weighted(&[90, 10]);
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    assert!(counts[0].abs_diff(9000) <= 1, "{counts:?}");
    assert!(counts[1].abs_diff(1000) <= 1, "{counts:?}");
    assert_eq!(counts[0] + counts[1], 10_000);

    let rule = weighted(&[1, 2, 3, 4]);
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    for (c, want) in counts.iter().zip([1000, 2000, 3000, 4000]) {
        assert!(c.abs_diff(want) <= 1, "{counts:?}");
    }
}

#[test]
fn pick_ends_of_the_range() {
    let rule = weighted(&[90, 10]);
    assert_eq!(&*rule.pick(0).unwrap().service.name, "b0");
    assert_eq!(&*rule.pick(u64::MAX).unwrap().service.name, "b1");
    // The boundary: r / 2^64 just below and at 0.9.
    let cut = ((u128::from(u64::MAX) + 1) * 9 / 10) as u64;
    assert_eq!(&*rule.pick(cut - 1).unwrap().service.name, "b0");
    assert_eq!(&*rule.pick(cut + 1).unwrap().service.name, "b1");
}

#[test]
fn default_weight_is_one() {
    let rule = one_rule("{backendRefs: [{name: a}, {name: b}]}");
    assert!(rule.backends.iter().all(|b| b.weight == 1));
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    assert!(counts[0].abs_diff(5000) <= 1, "{counts:?}");
    assert!(counts[1].abs_diff(5000) <= 1, "{counts:?}");
}

#[test]
fn weight_zero_gets_nothing() {
    let rule = weighted(&[1, 0, 1]);
    let (counts, none) = spread(&rule, 10_000);
    assert_eq!(none, 0);
    assert_eq!(counts[1], 0, "{counts:?}");
    assert!(counts[0].abs_diff(5000) <= 1, "{counts:?}");
    assert!(counts[2].abs_diff(5000) <= 1, "{counts:?}");
    for r in [0, u64::MAX / 2, u64::MAX / 2 + 1, u64::MAX] {
        assert_ne!(&*rule.pick(r).unwrap().service.name, "b1");
    }

    let rule = weighted(&[0, 5]);
    let (counts, _) = spread(&rule, 1000);
    assert_eq!(counts, vec![0, 1000]);
}

#[test]
fn all_zero_weights_pick_nothing() {
    let rule = weighted(&[0, 0]);
    for r in [0, 1, u64::MAX / 3, u64::MAX] {
        assert!(rule.pick(r).is_none());
    }
    let (counts, none) = spread(&rule, 1000);
    assert_eq!(counts, vec![0, 0]);
    assert_eq!(none, 1000);
}

#[test]
fn pick_with_a_random_source() {
    let rule = weighted(&[90, 10]);
    let mut rng = SmallRng::seed_from_u64(0x5eed_cafe);
    let n = 10_000u64;
    let mut first = 0u64;
    for _ in 0..n {
        let b = rule.pick(rng.random::<u64>()).unwrap();
        if &*b.service.name == "b0" {
            first += 1;
        }
    }
    // Binomial(n, 0.9): mean 9000, standard deviation 30.
    let mean = n as f64 * 0.9;
    let sd = (n as f64 * 0.9 * 0.1).sqrt();
    let off = (first as f64 - mean).abs();
    assert!(off <= 5.0 * sd, "{first} of {n} (mean {mean}, sd {sd})");
}

#[test]
fn large_weights_do_not_overflow() {
    let rule = weighted(&[u32::MAX, u32::MAX]);
    let (counts, none) = spread(&rule, 1000);
    assert_eq!(none, 0);
    assert!(counts[0].abs_diff(500) <= 1, "{counts:?}");
}

// ---------------------------------------------------------------------------------------
// Backends.

#[test]
fn default_backend_is_the_parent_service() {
    let rule = one_rule("{}");
    assert!(rule.backends.is_empty());
    assert_eq!(
        rule.pick_for(&echo(), 12345),
        Some(Backend {
            service: echo(),
            subset: None,
            port: None,
            weight: 1,
            edits: None,
        })
    );

    // A parent in another namespace is the default backend there.
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo, namespace: prod, port: 80}]
  rules: [{}]
",
    );
    let rule = t
        .select(&ServiceRef::new("prod", "echo"), 80, &get("/"))
        .unwrap()
        .unwrap();
    let prod = ServiceRef::new("prod", "echo");
    let b = rule.pick_for(&prod, 1).unwrap();
    assert_eq!(b.service, prod);
    // The backend port is the port asked, not the parentRef's.
    assert_eq!(b.port, None);
}

#[test]
fn each_parent_is_its_own_default_backend() {
    let t = table(
        "
- name: r
  namespace: demo
  parentRefs: [{name: a}, {name: b}]
  rules: [{}]
",
    );
    for name in ["a", "b"] {
        let parent = ServiceRef::new("demo", name);
        let rule = t.select(&parent, 80, &get("/")).unwrap().unwrap();
        assert_eq!(rule.pick_for(&parent, 3).unwrap().service, parent);
    }
}

#[test]
fn filter_bodies_must_match_their_type_and_appear_once() {
    let e = one_rule_err(
        "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, requestMirror: {backendRef: {name: m}}}]}",
    );
    assert!(e.path.ends_with(".filters[0].requestMirror"), "{e}");
    let e = one_rule_err(
        "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]}",
    );
    assert!(e.path.ends_with(".filters[1].type"), "{e}");
}

#[test]
fn abort_status_above_599_and_long_per_try_timeouts_are_refused() {
    let e = one_rule_err("{fault: {abort: {httpStatus: 700}}}");
    assert!(e.path.ends_with(".fault.abort.httpStatus"), "{e}");
    let e = one_rule_err("{timeouts: {request: 1s}, retry: {perTryTimeout: 2s}}");
    assert!(e.path.ends_with(".retry.perTryTimeout"), "{e}");
}

#[test]
fn a_wildcard_inside_a_hostname_is_refused() {
    let e = RouteTable::build(&specs(
        "
- name: r
  namespace: demo
  parentRefs: [{name: echo}]
  hostnames: [\"foo.*.com\"]
  rules: [{}]
",
    ))
    .unwrap_err();
    assert!(e.path.ends_with(".hostnames[0]"), "{e}");
}

#[test]
fn backend_ref_namespace_and_port() {
    let rule = one_rule(
        "{backendRefs: [{name: a}, {name: b, namespace: other, port: 8080}, {name: c, kind: Service, group: core}]}",
    );
    assert_eq!(rule.backends[0].service, ServiceRef::new("demo", "a"));
    assert_eq!(rule.backends[0].port, None);
    assert_eq!(rule.backends[1].service, ServiceRef::new("other", "b"));
    assert_eq!(rule.backends[1].port, Some(8080));
    assert_eq!(rule.backends[2].service, ServiceRef::new("demo", "c"));
    assert_eq!(&*rule.route, "demo/r");
    assert_eq!(&*rule.name, "0");
}

#[test]
fn bad_backend_refs_are_refused() {
    let cases = [
        (
            "{backendRefs: [{name: a, kind: Deployment}]}",
            ".backendRefs[0].kind",
        ),
        (
            "{backendRefs: [{name: a, group: apps}]}",
            ".backendRefs[0].group",
        ),
        (
            "{backendRefs: [{name: a}, {name: ''}]}",
            ".backendRefs[1].name",
        ),
        (
            "{backendRefs: [{name: a, port: 0}]}",
            ".backendRefs[0].port",
        ),
    ];
    for (rule, suffix) in cases {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
}

#[test]
fn service_display() {
    assert_eq!(echo().to_string(), "demo/echo");
}

// ---------------------------------------------------------------------------------------
// Durations.

#[test]
fn durations_parse() {
    let d = |s: &str| duration(s, "x").unwrap();
    assert_eq!(d("1m30s"), secs(90));
    assert_eq!(d("500ms"), ms(500));
    assert_eq!(d("1h"), secs(3600));
    assert_eq!(d("10s"), secs(10));
    assert_eq!(d("1m"), secs(60));
    assert_eq!(d("1ms"), ms(1));
    assert_eq!(d("1h2m3s4ms"), secs(3723) + ms(4));
    assert_eq!(d("0s1ms"), ms(1));
    assert_eq!(d("99999s"), secs(99999));
    assert_eq!(d("99999h"), secs(99999 * 3600));
}

#[test]
fn bad_durations_are_refused() {
    for s in [
        "", "10", "5x", "0s", "0ms", "0h0m0s", "-1s", "1.5s", "s", "ms", "1 s", " 1s", "1s ", "1S",
        "1sec", "100000ms", "1m30", "+1s", "1d",
    ] {
        let e = duration(s, "a.b").expect_err(s);
        assert_eq!(e.path, "a.b", "{s:?}");
        assert!(!e.message.is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// A backendRef's own header filters.

#[test]
fn a_backend_ref_carries_its_own_header_edits() {
    let rule = one_rule(
        "{backendRefs: [
            {name: a, filters: [
              {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: a}], remove: [x-drop]}},
              {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served, value: a}]}}]},
            {name: b}]}",
    );
    let a = rule.backends[0].edits.as_ref().expect("a's edits");
    let mut h = http::HeaderMap::new();
    h.insert("x-drop", HeaderValue::from_static("1"));
    a.request.apply(&mut h);
    assert_eq!(h["x-backend"], "a");
    assert!(h.get("x-drop").is_none());
    let mut resp = http::HeaderMap::new();
    a.response.apply(&mut resp);
    assert_eq!(resp["x-served"], "a");
    // None for a backend without filters: a pick clones nothing more.
    assert!(rule.backends[1].edits.is_none());
}

#[test]
fn a_backend_refs_filters_are_checked_by_field() {
    for (rule, suffix) in [
        (
            "{backendRefs: [{name: a, filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]}]}",
            ".backendRefs[0].filters[0].type",
        ),
        (
            "{backendRefs: [{name: a, filters: [{type: RequestHeaderModifier}]}]}",
            ".backendRefs[0].filters[0].requestHeaderModifier",
        ),
        (
            "{backendRefs: [{name: a}, {name: b, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}, responseHeaderModifier: {}}]}]}",
            ".backendRefs[1].filters[0].responseHeaderModifier",
        ),
        (
            "{backendRefs: [{name: a, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}, cors: {}}]}]}",
            ".backendRefs[0].filters[0].cors",
        ),
        (
            "{backendRefs: [{name: a, filters: [
               {type: ResponseHeaderModifier, responseHeaderModifier: {}},
               {type: ResponseHeaderModifier, responseHeaderModifier: {}}]}]}",
            ".backendRefs[0].filters[1].type",
        ),
        (
            "{backendRefs: [{name: a, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'bad name', value: y}]}}]}]}",
            ".backendRefs[0].filters[0].requestHeaderModifier.set[0].name",
        ),
        (
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}]}}}]}",
            ".filters[0].requestMirror.backendRef.filters",
        ),
    ] {
        assert_rule_err(&one_rule_err(rule), suffix);
    }
}
