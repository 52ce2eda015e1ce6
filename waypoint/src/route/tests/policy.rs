//! The policy a rule carries (`route/policy.rs`): retries and timeouts, faults, header
//! edits, mirrors; with the table helpers of the route tests.
use super::*;

// ---------------------------------------------------------------------------------------
// Retries and timeouts.

#[test]
fn retry_defaults() {
    let rule = one_rule("{retry: {}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 2);
    assert!(r.codes.is_empty());
    assert!(r.on_reset);
    assert!(r.on_connect_failure);
    assert!(!r.on_5xx);
    assert!(!r.on_gateway_error);
    assert_eq!(r.backoff, ms(25));
    assert_eq!(r.per_try_timeout, None);
    assert_eq!(r.budget_percent, 0.2);
    assert_eq!(r.min_retry_concurrency, 3);
    // No condition on statuses by default.
    for s in [500, 502, 503, 504, 429] {
        assert!(!r.retries_status(s), "{s}");
    }
}

#[test]
fn retry_on_replaces_the_defaults() {
    let rule = one_rule("{retry: {retryOn: [5xx]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.on_5xx);
    assert!(!r.on_reset);
    assert!(!r.on_connect_failure);
    assert!(!r.on_gateway_error);

    let rule = one_rule("{retry: {retryOn: [reset, gateway-error]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.on_reset && r.on_gateway_error);
    assert!(!r.on_connect_failure && !r.on_5xx);

    let rule = one_rule("{retry: {retryOn: [connect-failure]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.on_connect_failure);
    assert!(!r.on_reset && !r.on_5xx && !r.on_gateway_error);

    // An empty list: nothing but the codes.
    let rule = one_rule("{retry: {retryOn: [], codes: [503]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(!r.on_reset && !r.on_connect_failure && !r.on_5xx && !r.on_gateway_error);
    assert!(r.retries_status(503));

    // `retriable-status-codes` is accepted and adds nothing by itself.
    let rule = one_rule("{retry: {retryOn: [retriable-status-codes], codes: [429]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(!r.on_reset && !r.on_connect_failure && !r.on_5xx && !r.on_gateway_error);
    assert!(r.retries_status(429));
    assert!(!r.retries_status(503));
}

#[test]
fn retries_status_for_codes_5xx_and_gateway_errors() {
    let rule = one_rule("{retry: {codes: [429, 503]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.retries_status(429));
    assert!(r.retries_status(503));
    assert!(!r.retries_status(500));
    assert!(!r.retries_status(502));
    assert!(!r.retries_status(200));

    let rule = one_rule("{retry: {retryOn: [5xx]}}");
    let r = rule.retry.as_ref().unwrap();
    for s in [500, 501, 502, 503, 504, 599] {
        assert!(r.retries_status(s), "{s}");
    }
    for s in [200, 404, 429, 499] {
        assert!(!r.retries_status(s), "{s}");
    }

    let rule = one_rule("{retry: {retryOn: [gateway-error]}}");
    let r = rule.retry.as_ref().unwrap();
    for s in [502, 503, 504] {
        assert!(r.retries_status(s), "{s}");
    }
    for s in [500, 501, 505, 429, 200] {
        assert!(!r.retries_status(s), "{s}");
    }

    let rule = one_rule("{retry: {retryOn: [gateway-error], codes: [500]}}");
    let r = rule.retry.as_ref().unwrap();
    assert!(r.retries_status(500) && r.retries_status(502));
    assert!(!r.retries_status(501));
}

#[test]
fn grpc_conditions_retry_a_trailers_only_status() {
    let grpc = |status: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", status.parse().unwrap());
        h
    };
    // Istio's default conditions: unavailable and cancelled.
    let rule = one_rule("{retry: {}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.grpc_statuses, vec![1, 14]);
    assert!(r.retries_response(200, &grpc("14")));
    assert!(r.retries_response(200, &grpc("1")));
    assert!(!r.retries_response(200, &grpc("13")));
    assert!(!r.retries_response(200, &http::HeaderMap::new()));

    let rule = one_rule("{retry: {retryOn: [internal, resource-exhausted, internal]}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.grpc_statuses, vec![13, 8]);
    assert!(r.retries_response(200, &grpc("13")) && r.retries_response(200, &grpc("8")));
    assert!(
        !r.retries_response(200, &grpc("14")),
        "the list replaces the defaults"
    );
    assert!(!r.retries_response(200, &grpc("0")));

    let rule = one_rule("{retry: {retryOn: [5xx]}}");
    assert!(rule.retry.as_ref().unwrap().grpc_statuses.is_empty());
}

#[test]
fn retry_fields_override_defaults() {
    let rule = one_rule(
        "{retry: {attempts: 0, backoff: 100ms, perTryTimeout: 3s, budgetPercent: 50, minRetryConcurrency: 7}}",
    );
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 0);
    assert_eq!(r.backoff, ms(100));
    assert_eq!(r.per_try_timeout, Some(secs(3)));
    assert_eq!(r.budget_percent, 0.5);
    assert_eq!(r.min_retry_concurrency, 7);
    // Not touched: the default conditions.
    assert!(r.on_reset && r.on_connect_failure);

    let rule = one_rule("{retry: {budgetPercent: 0}}");
    assert_eq!(rule.retry.as_ref().unwrap().budget_percent, 0.0);
    let rule = one_rule("{retry: {budgetPercent: 100}}");
    assert_eq!(rule.retry.as_ref().unwrap().budget_percent, 1.0);
}

#[test]
fn backend_request_timeout_without_retry() {
    // Istio's default policy, each attempt under the backend timeout.
    let rule = one_rule("{timeouts: {backendRequest: 750ms}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(r.per_try_timeout, Some(ms(750)));
    assert_eq!(rule.request_timeout, None);
}

#[test]
fn per_try_timeout_sources() {
    // From timeouts.backendRequest when the retry block does not say.
    let rule = one_rule("{timeouts: {request: 10s, backendRequest: 2s}, retry: {attempts: 3}}");
    let r = rule.retry.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(r.per_try_timeout, Some(secs(2)));
    assert_eq!(rule.request_timeout, Some(secs(10)));

    // retry.perTryTimeout wins over it.
    let rule = one_rule("{timeouts: {backendRequest: 2s}, retry: {perTryTimeout: 500ms}}");
    assert_eq!(rule.retry.as_ref().unwrap().per_try_timeout, Some(ms(500)));
}

#[test]
fn a_rule_without_retry_gets_istios_default_policy() {
    let rule = one_rule("{}");
    let r = rule.retry.as_ref().unwrap();
    // Istio's DefaultPolicy: connect-failure, refused-stream, unavailable, cancelled; no
    // condition that repeats a request the backend may have processed.
    assert_eq!(r.attempts, 2);
    assert!(r.on_connect_failure && r.on_refused_stream);
    assert!(!r.on_reset && !r.on_5xx && !r.on_gateway_error && r.codes.is_empty());
    assert_eq!(r.grpc_statuses, vec![1, 14]);
    assert_eq!(r.per_try_timeout, None);
    assert!(rule.request_timeout.is_none());
    let rule = one_rule("{timeouts: {request: 1m30s}}");
    assert_eq!(rule.retry, Some(istio_default_retry(None)));
    assert_eq!(rule.request_timeout, Some(secs(90)));
    // `attempts: 0` turns retries off.
    assert_eq!(
        one_rule("{retry: {attempts: 0}}")
            .retry
            .clone()
            .unwrap()
            .attempts,
        0
    );
    // `refused-stream` by name; `reset` is the wider condition.
    let r = one_rule("{retry: {retryOn: [refused-stream]}}")
        .retry
        .clone()
        .unwrap();
    assert!(r.on_refused_stream && !r.on_reset && !r.on_connect_failure);
}

// ---------------------------------------------------------------------------------------
// Faults.

#[test]
fn fault_percentages_become_fractions() {
    let rule = one_rule(
        "{fault: {delay: {fixedDelay: 5s, percentage: 10}, abort: {httpStatus: 503, percentage: 50}}}",
    );
    assert_eq!(
        rule.fault,
        Some(Fault {
            delay: Some((secs(5), 0.1)),
            abort: Some((http_abort(http::StatusCode::SERVICE_UNAVAILABLE), 0.5)),
        })
    );

    // Default: every request.
    let rule = one_rule("{fault: {delay: {fixedDelay: 250ms}}}");
    assert_eq!(
        rule.fault,
        Some(Fault {
            delay: Some((ms(250), 1.0)),
            abort: None,
        })
    );
    let rule = one_rule("{fault: {abort: {httpStatus: 429, percentage: 0}}}");
    assert_eq!(
        rule.fault,
        Some(Fault {
            delay: None,
            abort: Some((http_abort(http::StatusCode::TOO_MANY_REQUESTS), 0.0)),
        })
    );
    let rule = one_rule("{fault: {abort: {httpStatus: 200, percentage: 0.5}}}");
    assert_eq!(
        rule.fault.as_ref().unwrap().abort,
        Some((http_abort(http::StatusCode::OK), 0.005))
    );

    // An empty fault block is no fault.
    assert!(one_rule("{fault: {}}").fault.is_none());
}

#[test]
fn abort_status_must_be_a_response_status() {
    for status in [0, 99, 100, 101, 199, 1000, 65535] {
        let e = one_rule_err(&format!("{{fault: {{abort: {{httpStatus: {status}}}}}}}"));
        assert_rule_err(&e, ".fault.abort.httpStatus");
    }
    for status in [200, 404, 500, 599] {
        let rule = one_rule(&format!("{{fault: {{abort: {{httpStatus: {status}}}}}}}"));
        assert_eq!(
            rule.fault
                .as_ref()
                .unwrap()
                .abort
                .unwrap()
                .0
                .status
                .as_u16(),
            status
        );
    }
}

#[test]
fn a_grpc_abort_gives_its_status_by_name() {
    let rule = one_rule("{fault: {abort: {grpcStatus: UNAVAILABLE, percentage: 20}}}");
    assert_eq!(
        rule.fault.as_ref().unwrap().abort,
        Some((
            Abort {
                status: http::StatusCode::OK,
                grpc_status: Some(14),
            },
            0.2
        ))
    );
    let rule = one_rule("{fault: {abort: {grpcStatus: \"7\"}}}");
    assert_eq!(
        rule.fault.as_ref().unwrap().abort.unwrap().0.grpc_status,
        Some(7)
    );
    for bad in ["TEAPOT", "17", "\"\""] {
        let e = one_rule_err(&format!("{{fault: {{abort: {{grpcStatus: {bad}}}}}}}"));
        assert_rule_err(&e, ".fault.abort.grpcStatus");
    }
    let e = one_rule_err("{fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}}");
    assert_rule_err(&e, ".fault.abort");
    let e = one_rule_err("{fault: {abort: {percentage: 5}}}");
    assert_rule_err(&e, ".fault.abort");
}

// ---------------------------------------------------------------------------------------
// Header edits.

fn edits_of(rule: &str) -> HeaderEdits {
    let rule = one_rule(&format!(
        "{{filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {rule}}}]}}"
    ));
    rule.request_headers.clone()
}

fn values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[test]
fn header_edits_set_then_add_then_remove() {
    let e = edits_of(
        "{set: [{name: x-set, value: new}, {name: x-both, value: s}, {name: x-gone, value: s}],
          add: [{name: x-add, value: a2}, {name: x-both, value: a}, {name: x-gone, value: a}],
          remove: [x-gone, x-old]}",
    );
    assert!(!e.is_empty());
    let mut h = http::HeaderMap::new();
    h.append("x-set", HeaderValue::from_static("old1"));
    h.append("x-set", HeaderValue::from_static("old2"));
    h.append("x-add", HeaderValue::from_static("a1"));
    h.append("x-both", HeaderValue::from_static("orig"));
    h.append("x-old", HeaderValue::from_static("o"));
    h.append("x-keep", HeaderValue::from_static("k"));
    e.apply(&mut h);

    // set replaces every value.
    assert_eq!(values(&h, "x-set"), vec!["new"]);
    // add appends to what is there.
    assert_eq!(values(&h, "x-add"), vec!["a1", "a2"]);
    // set, then add: the set value and the added one.
    assert_eq!(values(&h, "x-both"), vec!["s", "a"]);
    // remove runs last: it takes what set and add put there too.
    assert!(values(&h, "x-gone").is_empty());
    assert!(values(&h, "x-old").is_empty());
    assert_eq!(values(&h, "x-keep"), vec!["k"]);
}

#[test]
fn header_edits_names_are_case_insensitive() {
    let e = edits_of("{set: [{name: X-Up, value: v}], remove: [X-DOWN]}");
    let mut h = http::HeaderMap::new();
    h.insert("x-up", HeaderValue::from_static("old"));
    h.insert("x-down", HeaderValue::from_static("d"));
    e.apply(&mut h);
    assert_eq!(values(&h, "x-up"), vec!["v"]);
    assert!(h.get("x-down").is_none());
}

#[test]
fn header_edits_on_an_empty_map_and_empty_edits() {
    let e = edits_of("{add: [{name: x-a, value: '1'}, {name: x-a, value: '2'}]}");
    let mut h = http::HeaderMap::new();
    e.apply(&mut h);
    assert_eq!(values(&h, "x-a"), vec!["1", "2"]);

    let empty = HeaderEdits::default();
    assert!(empty.is_empty());
    let mut h = http::HeaderMap::new();
    h.insert("x-a", HeaderValue::from_static("1"));
    empty.apply(&mut h);
    assert_eq!(values(&h, "x-a"), vec!["1"]);

    assert!(edits_of("{}").is_empty());
}

#[test]
fn response_header_modifier_is_separate() {
    let rule = one_rule(
        "{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-r, value: '1'}]}}]}",
    );
    assert!(rule.request_headers.is_empty());
    assert!(!rule.response_headers.is_empty());
    let mut h = http::HeaderMap::new();
    rule.response_headers.apply(&mut h);
    assert_eq!(values(&h, "x-r"), vec!["1"]);
}

#[test]
fn mirror_defaults() {
    let rule =
        one_rule("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]}");
    assert_eq!(
        rule.mirror,
        Some(Mirror {
            backend: Backend {
                service: ServiceRef::new("demo", "shadow"),
                subset: None,
                port: None,
                weight: 1,
                edits: None,
            },
            fraction: 1.0,
        })
    );
}
