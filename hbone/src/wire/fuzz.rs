//! The `wire_parse` fuzz entry point, shared by the cargo-fuzz target (`fuzz/`) and the
//! stable test that replays the committed corpus (`hbone/tests/wire_corpus.rs`).
//!
//! [`check`] feeds the input to every parser in [`crate::wire`] and, for each value that parses,
//! asserts that encoding it and parsing the encoding gives the same value. It panics only when
//! one of those invariants is broken, which is what the fuzzer looks for.

use std::str::FromStr;

use http::{Method, Request};

use super::{Authority, Baggage, ConnectRequest, Forwarded, TraceParent};

/// Run every wire parser on `data` and check the encode/parse round trip of what parses.
///
/// The whole input is tried as each field; then, split at `\n`, its lines are used as
/// authority, `forwarded`, `baggage` and `traceparent` of one CONNECT request head.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    round_trip::<Authority>(&text);
    round_trip::<Forwarded>(&text);
    round_trip::<Baggage>(&text);
    round_trip::<TraceParent>(&text);
    round_trip::<crate::Identity>(&text);

    let mut lines = text.split('\n');
    let mut builder = Request::builder().method(Method::CONNECT);
    if let Some(authority) = lines.next() {
        builder = builder.uri(authority);
    }
    for name in [super::FORWARDED, super::BAGGAGE, super::TRACEPARENT] {
        if let Some(v) = lines.next() {
            builder = builder.header(name, v);
        }
    }
    // The http crate refuses some inputs itself; those never reach our parser.
    let Ok(req) = builder.body(()) else {
        return;
    };
    if let Ok(parsed) = ConnectRequest::from_request(&req) {
        let encoded = parsed
            .to_request()
            .unwrap_or_else(|e| panic!("{parsed:?} parsed but does not encode: {e}"));
        let again = ConnectRequest::from_request(&encoded)
            .unwrap_or_else(|e| panic!("{parsed:?} encoded as {encoded:?} does not parse: {e}"));
        assert_eq!(again, parsed, "CONNECT request round trip");
    }
}

fn round_trip<T>(s: &str)
where
    T: FromStr<Err = crate::Error> + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let text = v.to_string();
        match text.parse::<T>() {
            Ok(again) => assert_eq!(again, v, "{s:?} -> {text:?} round trip"),
            Err(e) => panic!("{s:?} parsed as {v:?}, encoded as {text:?}, which fails: {e}"),
        }
    }
}
