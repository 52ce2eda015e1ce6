//! istio-cni's ZDS messages as the node's ZDS client reads them: any sequence of packets,
//! with or without a namespace descriptor, gets one bounded answer each and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    control::zds::fuzz_check(data);
});
