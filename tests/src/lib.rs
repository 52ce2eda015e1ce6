//! End-to-end test helpers: spawn real processes, wait on conditions, clean up.
#![forbid(unsafe_code)]
