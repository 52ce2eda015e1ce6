//! bench: ringmesh side by side with sidecar Envoy, on one machine, in one command.
//!
//! The crate owns the comparison harness and nothing that generates load: every byte of
//! traffic comes from the `loadgen` binary, which this crate only launches and reads.
//!
//! - [`procs`]: every child process (backends, proxies, clients) is tracked by a
//!   [`procs::Supervisor`]; a guard kills its processes on drop, and a signal thread kills
//!   them all on Ctrl-C. Nothing outlives the harness.
//! - [`scenario`]: a "system under test" starts its proxy processes in front of a backend
//!   and hands back the address the client targets and the PIDs to sample.
//!   [`tcp_relay`] is the floor: two plain `ringmesh forward` hops, whose CPU the report
//!   subtracts.
//! - [`topology`]: loopback, or two namespaces joined by a veth (two "nodes"): where
//!   each role's processes run and on which CPUs.
//! - [`sampler`]: CPU-seconds and RSS/RssAnon of those PIDs from `/proc`.
//! - [`workload`]: the loadgen command lines for each workload and the JSON they write.
//! - [`runner`]: repetitions with scenarios interleaved; one raw [`report::Run`] per run.
//! - [`report`]: medians and spreads, the Markdown table, `results.json` and the SVG charts.
#![forbid(unsafe_code)]

pub mod certs;
pub mod envoy;
pub mod error;
pub mod external;
pub mod fairness;
pub mod net;
pub mod procs;
pub mod report;
pub mod ringmesh;
pub mod runner;
pub mod sampler;
pub mod scenario;
pub mod svg;
pub mod tcp_relay;
pub mod topology;
pub mod workload;
pub mod ztunnel;

pub use error::{Error, Result};
