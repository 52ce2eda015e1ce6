//! The crate's error type: what went wrong setting up, running or reporting a load run.

use std::path::PathBuf;

/// Errors of the loadgen library. Request failures during a run are not errors: they are
/// counted by kind in [`crate::stats::ErrorCounts`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad user input (CLI or config): names what and why.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// A target outside loopback without `--allow-remote`.
    #[error("refusing non-loopback target {0} (pass --allow-remote to allow it)")]
    RemoteTarget(String),
    /// Writing an output file failed.
    #[error("writing {what} to {}: {source}", path.display())]
    Output {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Histogram bookkeeping failed.
    #[error("histogram: {0}")]
    Histogram(String),
    /// Starting or running the worker threads failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// Local I/O failure outside request traffic (binding a listener, etc.).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}
