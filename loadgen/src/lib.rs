//! loadgen: a thread-per-core load generator for capacity planning.
//!
//! Layers, bottom up: wire framing with no I/O (`http1`), measurement (`histogram`, `stats`,
//! `schedule`), results (`report`, `sweep`, `svg`), then the clients and backends that run on
//! the `runtime` crate's per-core workers.
#![forbid(unsafe_code)]

mod error;
pub mod histogram;
pub mod http1;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod svg;
pub mod sweep;

pub use error::Error;
pub mod cli;
pub mod client;
pub mod progress;
pub mod run;
pub mod serve;
