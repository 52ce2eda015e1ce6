//! The one error type of the bench library. Every variant names what failed and where
//! (which process, which file, which address), so a failed run says what to fix.

use std::path::PathBuf;

/// Result alias for the bench library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while setting up, running or reporting a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program the harness needs is not installed; the message says how to get it.
    #[error("`{program}` not found: {hint}")]
    MissingProgram { program: String, hint: String },

    /// Spawning a child process failed.
    #[error("cannot start {what} ({program}): {source}")]
    Spawn {
        what: String,
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A child process did not become ready before its deadline, or exited early.
    #[error("{what} did not become ready: {reason}{}", log_tail(.log))]
    NotReady {
        what: String,
        reason: String,
        log: String,
    },

    /// A load generator run failed.
    #[error("{what} failed: {reason}{}", log_tail(.log))]
    Loadgen {
        what: String,
        reason: String,
        log: String,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Any other I/O failure, with what was being done.
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A file (loadgen JSON, /proc entry, admin answer) did not have the expected shape.
    #[error("{what}: cannot parse: {reason}")]
    Parse { what: String, reason: String },

    /// A bad command-line value or template.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] hbone::Error),
}

fn log_tail(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- last lines of its output ---\n{}", log.trim_end())
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Os`] saying what was being done.
    pub fn os(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Os {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Parse`].
    pub fn parse(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Parse {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
