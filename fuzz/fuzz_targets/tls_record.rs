//! Arbitrary bytes into the HBONE TLS record layer (`hbone::tls::record::fuzz_check`): record
//! headers and ciphertext a peer may send, and inner plaintexts a rule-breaking peer seals.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hbone::tls::record::fuzz_check(data);
});
