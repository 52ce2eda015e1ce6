//! The crate's one error type.
//!
//! Owns: how a failure to talk to istiod is told to the caller. Every variant names what
//! failed (an address, a file, a header, an element of a certificate chain), so a log line
//! is enough to act on. Text that came from the peer (a gRPC status message) is truncated
//! and escaped by [`peer_text`] before it enters an error.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to istiod, or preparing to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The control-plane address is not a usable `https://host:port`.
    #[error("control-plane address {address:?}: {reason}")]
    Address { address: String, reason: String },
    /// The root certificates to verify istiod with could not be loaded.
    #[error("root certificates ({from}): {reason}")]
    Roots { from: String, reason: String },
    /// The alternate server name is not a DNS name or IP address.
    #[error("alternate server name {name:?}: {reason}")]
    AltHostname { name: String, reason: String },
    /// The bearer token file could not be read, or is empty.
    #[error("token file {}: {reason}", path.display())]
    Token { path: PathBuf, reason: String },
    /// A configured request header (or the cluster id, or the token) is not a valid gRPC
    /// metadata entry.
    #[error("request header {name:?}: {reason}")]
    Header { name: String, reason: String },
    /// A value taken from the environment is malformed.
    #[error("{var}: {reason}")]
    Env { var: String, reason: String },
    /// istiod could not be reached: TCP, TLS (including certificate verification) or HTTP/2
    /// setup failed.
    #[error("connecting to {address}: {reason}")]
    Unreachable { address: String, reason: String },
    /// The call did not finish within its deadline.
    #[error("{address}: no answer within {after:?}")]
    Timeout { address: String, after: Duration },
    /// istiod answered with a gRPC error status.
    #[error("{address} answered {code:?}: {message}")]
    Status {
        address: String,
        code: tonic::Code,
        message: String,
    },
    /// The CA answered with no certificate at all.
    #[error("the CA answered an empty certificate chain")]
    EmptyChain,
    /// The CA answered a leaf without the root bundle that must follow it.
    #[error("the CA answered a single certificate: no root certificate present")]
    NoRoot,
    /// An element of the CA's certificate chain holds no certificate, or a malformed one.
    #[error("certificate chain element {index} ({role}): {reason}")]
    BadChain {
        index: usize,
        role: &'static str,
        reason: String,
    },
    /// The control runtime could not be started.
    #[error("starting the control runtime {name:?}: {reason}")]
    RuntimeStart { name: String, reason: String },
    /// The control runtime stopped (or the task panicked) before the work finished.
    #[error("the control runtime stopped before the task finished")]
    RuntimeStopped,
    /// A channel was built outside a tokio runtime (it must live on the control runtime).
    #[error("a gRPC channel must be built inside a tokio runtime (the control runtime)")]
    NoRuntime,
    /// `block_on` was called on the control runtime's own thread, where it would deadlock.
    #[error("block_on called on the control runtime's own thread")]
    BlockOnControlThread,
}

/// The longest peer-provided text kept in an error or a log field (characters). Long enough
/// for any real gRPC status message from istiod; short enough that a hostile or broken peer
/// cannot flood logs through us.
pub const PEER_TEXT_MAX: usize = 512;

/// `s` cut to [`PEER_TEXT_MAX`] characters (with `…` when cut), control characters escaped.
pub fn peer_text(s: &str) -> String {
    truncate_escaped(s, PEER_TEXT_MAX)
}

/// `s` cut to `max` characters (with `…` when cut), control characters escaped.
pub(crate) fn truncate_escaped(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 4));
    for (i, c) in s.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An error and its sources, joined with `: ` (transport errors hide the useful part, such
/// as a certificate verification failure, in their source chain). Repeated links are
/// dropped.
pub(crate) fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    // Generic wrappers ("transport error") add nothing when something more precise follows.
    if parts.len() > 1 {
        parts.retain(|p| p != "transport error" && p != "error trying to connect");
    }
    peer_text(&parts.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_cut_and_escaped() {
        assert_eq!(peer_text("a\nb"), "a\\nb");
        let long = "x".repeat(PEER_TEXT_MAX + 10);
        let cut = peer_text(&long);
        assert_eq!(cut.chars().count(), PEER_TEXT_MAX + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn chain_text_skips_repeats_and_wrappers() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(chain_text(&e), "invalid peer certificate: UnknownIssuer");
    }
}
