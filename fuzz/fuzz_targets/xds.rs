//! istiod's xDS resources (an `istio.workload.Address` or an `istio.security.Authorization`,
//! chosen by the first byte) decoded and validated as a node does: no panic, bounded
//! rejection messages, and an accepted resource's snapshot agrees with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxy::config::xds::fuzz_check(data);
});
