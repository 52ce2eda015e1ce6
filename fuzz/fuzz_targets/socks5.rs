//! Arbitrary bytes into the SOCKS5 greeting and request parsers (`proxy::socks5::fuzz_check`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proxy::socks5::fuzz_check(data);
});
