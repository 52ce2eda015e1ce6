//! loadgen: a thread-per-core load generator for capacity planning.
#![forbid(unsafe_code)]
