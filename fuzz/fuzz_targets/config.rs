//! Arbitrary bytes as a mesh config file (`proxy::config::fuzz_check`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proxy::config::fuzz_check(data);
});
