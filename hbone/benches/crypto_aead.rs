//! AES-GCM seal/open throughput of aws-lc-rs vs ring, the two rustls crypto providers.
//!
//! Run: `cargo bench -p ringmesh-hbone --bench crypto_aead` (add `-- --quick` for a shorter
//! run). Each case seals (or opens) one TLS-record-sized buffer repeatedly in place, as rustls
//! does per record, for a bounded time, and reports MB/s (10^6 bytes per second of plaintext).
//! The result chose `hbone::tls::provider()`; see `hbone/README.md` for the recorded figures.
//!
//! Both crates expose the same `aead` API, so one macro generates both sides and they are
//! measured with identical code, interleaved, in one process.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

/// TLS 1.3 max plaintext record (RFC 8446 §5.1): what a bulk stream seals per record.
const RECORD_BULK: usize = 16 * 1024;
/// A small request/response record.
const RECORD_SMALL: usize = 1024;

macro_rules! aead_case {
    ($name:ident, $krate:ident) => {
        mod $name {
            use super::*;
            use $krate::aead::{Aad, LessSafeKey, Nonce, UnboundKey};

            pub fn run(alg_256: bool, open: bool, size: usize, budget: Duration) -> f64 {
                let (alg, key_len) = if alg_256 {
                    (&$krate::aead::AES_256_GCM, 32)
                } else {
                    (&$krate::aead::AES_128_GCM, 16)
                };
                let key = LessSafeKey::new(UnboundKey::new(alg, &vec![7u8; key_len]).unwrap());
                let aad = [0x17u8, 3, 3, 0, 0];
                let mut buf = vec![0xa5u8; size];
                let mut sealed = buf.clone();
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([1; 12]),
                        Aad::from(aad),
                        &mut sealed,
                    )
                    .unwrap();
                sealed.extend_from_slice(tag.as_ref());
                let mut work = sealed.clone();

                let start = Instant::now();
                let mut bytes = 0u64;
                let mut seq = 0u64;
                // Bounded by time and by count.
                while start.elapsed() < budget && seq < 50_000_000 {
                    for _ in 0..64 {
                        seq += 1;
                        if open {
                            work.copy_from_slice(&sealed);
                            let out = key
                                .open_in_place(
                                    Nonce::assume_unique_for_key([1; 12]),
                                    Aad::from(aad),
                                    &mut work,
                                )
                                .unwrap();
                            black_box(out);
                        } else {
                            let mut nonce = [0u8; 12];
                            nonce[4..].copy_from_slice(&seq.to_be_bytes());
                            let tag = key
                                .seal_in_place_separate_tag(
                                    Nonce::assume_unique_for_key(nonce),
                                    Aad::from(aad),
                                    &mut buf,
                                )
                                .unwrap();
                            let _ = black_box(tag);
                        }
                        bytes += size as u64;
                    }
                }
                bytes as f64 / start.elapsed().as_secs_f64() / 1e6
            }
        }
    };
}

aead_case!(awslc, aws_lc_rs);
aead_case!(ring_impl, ring);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 200 } else { 1000 });
    let rounds = if quick { 1 } else { 3 };
    println!("AES-GCM throughput, MB/s of plaintext (best of {rounds} rounds of {budget:?})");
    println!(
        "{:<6} {:<12} {:>8} {:>12} {:>12} {:>8}",
        "op", "alg", "record", "aws-lc-rs", "ring", "ratio"
    );
    for open in [false, true] {
        for alg_256 in [false, true] {
            for size in [RECORD_BULK, RECORD_SMALL] {
                let (mut a, mut r) = (0f64, 0f64);
                // Interleave the two so machine noise (other builds) hits both alike.
                for _ in 0..rounds {
                    a = a.max(awslc::run(alg_256, open, size, budget));
                    r = r.max(ring_impl::run(alg_256, open, size, budget));
                }
                println!(
                    "{:<6} {:<12} {:>8} {:>12.0} {:>12.0} {:>8.2}",
                    if open { "open" } else { "seal" },
                    if alg_256 {
                        "AES-256-GCM"
                    } else {
                        "AES-128-GCM"
                    },
                    size,
                    a,
                    r,
                    a / r
                );
            }
        }
    }
}
