//! Replays the committed `wire_parse` and `tls_record` fuzz corpora on stable Rust: every file
//! in `fuzz/corpus/{wire_parse,tls_record}/` (at the workspace root) goes through the same
//! check its fuzzer runs (`hbone::wire::fuzz::check`, `hbone::tls::record::fuzz_check`), so a
//! crash found by fuzzing and added to a corpus stays fixed.

use std::path::Path;

/// Every file of `fuzz/corpus/NAME/` (at least ten) through `check`, as the fuzzer runs it.
fn replay(name: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
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
        let run = std::panic::catch_unwind(|| check(&data));
        assert!(
            run.is_ok(),
            "corpus file {} breaks an invariant of the {name} target",
            f.display()
        );
    }
}

#[test]
fn wire_parse_corpus() {
    replay("wire_parse", hbone::wire::fuzz::check);
}

/// The `tls_record` fuzz corpus through `hbone::tls::record::fuzz_check`.
#[test]
fn tls_record_corpus() {
    replay("tls_record", hbone::tls::record::fuzz_check);
}
