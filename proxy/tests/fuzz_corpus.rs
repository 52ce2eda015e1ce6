//! Replays the committed `socks5`, `config`, `xds` and `zds` fuzz corpora (`fuzz/corpus/`, at the workspace
//! root) on stable Rust through the same checks the fuzz targets run, so an input that broke
//! an invariant once and was added to a corpus stays fixed.

use std::path::{Path, PathBuf};

fn corpus(name: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "seed corpus went missing from {}",
        dir.display()
    );
    files
}

fn replay(name: &str, check: fn(&[u8])) {
    for f in corpus(name) {
        let data = std::fs::read(&f).unwrap();
        let run = std::panic::catch_unwind(|| check(&data));
        assert!(
            run.is_ok(),
            "corpus file {} breaks an invariant",
            f.display()
        );
    }
}

#[test]
fn socks5_corpus() {
    replay("socks5", proxy::socks5::fuzz_check);
}

#[test]
fn config_corpus() {
    replay("config", proxy::config::fuzz_check);
}

#[test]
fn xds_corpus() {
    replay("xds", proxy::config::xds::fuzz_check);
}

#[test]
fn zds_corpus() {
    replay("zds", control::zds::fuzz_check);
}

#[test]
fn config_seeds_reach_past_the_yaml_reader() {
    // The example must parse, or the fuzzer never gets past validation into the builder.
    let example = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/config/example_mesh"),
    )
    .unwrap();
    proxy::config::parse(
        std::str::from_utf8(&example).unwrap(),
        &proxy::config::LoadOptions::default(),
    )
    .unwrap();
}
