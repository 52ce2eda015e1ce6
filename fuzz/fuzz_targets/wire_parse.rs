//! Arbitrary bytes into every `hbone::wire` parser (see `hbone::wire::fuzz::check`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hbone::wire::fuzz::check(data);
});
