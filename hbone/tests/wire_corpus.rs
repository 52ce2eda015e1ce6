//! Replays the committed `wire_parse` fuzz corpus on stable Rust: every file in
//! `fuzz/corpus/wire_parse/` (at the workspace root) goes through the same `hbone::wire::fuzz::check` the fuzzer
//! runs, so a crash found by fuzzing and added to the corpus stays fixed.

use std::path::Path;

#[test]
fn wire_parse_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wire_parse");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "seed corpus went missing from {}",
        dir.display()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let run = std::panic::catch_unwind(|| hbone::wire::fuzz::check(&data));
        assert!(
            run.is_ok(),
            "corpus file {} breaks a wire invariant",
            f.display()
        );
    }
}

#[test]
fn seeds_exercise_the_parsers() {
    // The seeds are meant to parse; if a parser starts rejecting them, the corpus no longer
    // reaches the code past validation and the fuzzer loses its footing.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wire_parse");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    read("authority_v6")
        .parse::<hbone::wire::Authority>()
        .unwrap();
    read("forwarded_ext")
        .parse::<hbone::wire::Forwarded>()
        .unwrap();
    read("baggage").parse::<hbone::wire::Baggage>().unwrap();
    read("traceparent_future")
        .parse::<hbone::wire::TraceParent>()
        .unwrap();
    let full = read("request_full");
    let mut lines = full.lines();
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(lines.next().unwrap())
        .header("forwarded", lines.next().unwrap())
        .header("baggage", lines.next().unwrap())
        .header("traceparent", lines.next().unwrap())
        .body(())
        .unwrap();
    let r = hbone::wire::ConnectRequest::from_request(&req).unwrap();
    assert!(r.forwarded.is_some() && r.baggage.is_some() && r.traceparent.is_some());
}

/// The `tls_record` fuzz corpus through `hbone::tls::record::fuzz_check`, as the fuzzer runs it.
#[test]
fn tls_record_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tls_record");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "seed corpus went missing from {}",
        dir.display()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let run = std::panic::catch_unwind(|| hbone::tls::record::fuzz_check(&data));
        assert!(
            run.is_ok(),
            "corpus file {} breaks a record-layer invariant",
            f.display()
        );
    }
}
