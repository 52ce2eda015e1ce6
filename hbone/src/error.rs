//! The crate's one error type.
//!
//! Every fallible function in `hbone` returns [`Error`]. Variants are grouped by what a caller
//! does about them: fix the input (identity, wire, certificate files), fix the trust setup
//! (certificate verification), or retry/answer the peer (TLS, I/O, HTTP/2). Text that came from
//! a peer is truncated with [`excerpt`] before it goes into a message, so a hostile peer cannot
//! make log lines unbounded.
//!
//! [`Error::status`] is the single classification of a failed tunnel request into the HBONE
//! response status (400/401/503); the proxy uses it for the answer and the metric label.

use std::path::PathBuf;

use crate::identity::Identity;
use crate::wire::Status;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `hbone`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string that should be a SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`) is not one.
    #[error("invalid SPIFFE identity {input:?}: {reason}")]
    InvalidIdentity {
        /// The offending input (truncated).
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate's DER could not be parsed as X.509.
    #[error("malformed certificate: {0}")]
    BadCertificate(String),

    /// A certificate carries no URI SAN that parses as a SPIFFE identity.
    #[error("certificate has no SPIFFE identity among its URI SANs (found {found:?})")]
    NoIdentity {
        /// The URI SANs that were present but did not parse (truncated).
        found: Vec<String>,
    },

    /// The server's certificate does not carry any of the identities the client expected.
    #[error(
        "peer identity mismatch: expected one of [{}], peer presented [{}]",
        join(expected),
        join(presented)
    )]
    UnexpectedPeerIdentity {
        /// What the caller asked for.
        expected: Vec<Identity>,
        /// What the peer's leaf certificate carries.
        presented: Vec<Identity>,
    },

    /// The client's certificate carries no identity in the server's trust domain.
    #[error(
        "peer is outside trust domain {trust_domain:?}: certificate presents [{}]",
        join(presented)
    )]
    WrongTrustDomain {
        /// The trust domain the server accepts.
        trust_domain: String,
        /// What the peer's leaf certificate carries.
        presented: Vec<Identity>,
    },

    /// A certificate or key file could not be read.
    #[error("{}: {source}", path.display())]
    CertFileIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// A certificate or key file (or in-memory PEM) has the wrong content.
    #[error("{origin}: {reason}")]
    CertFile {
        /// The file path, or a description of the in-memory source.
        origin: String,
        /// What is wrong with its content.
        reason: String,
    },

    /// Certificate generation (dev tooling) failed.
    #[error("certificate generation failed: {0}")]
    CertGen(#[from] rcgen::Error),

    /// A rustls configuration could not be built from the given material
    /// (for example a key that does not match the certificate).
    #[error("TLS configuration rejected: {0}")]
    TlsConfig(String),

    /// A TLS handshake or record-layer failure.
    #[error("TLS: {}", crate::tls::describe(.0))]
    Tls(#[from] rustls::Error),

    /// A field of an HBONE request (authority, `forwarded`, `baggage`, `traceparent`, method)
    /// could not be parsed or is not allowed.
    #[error("invalid {what} {input:?}: {reason}")]
    Wire {
        /// Which field.
        what: &'static str,
        /// The offending value (truncated).
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The HBONE peer answered a CONNECT with a non-200 status.
    #[error("tunnel request rejected by peer with {status}")]
    Rejected {
        /// The status the peer answered.
        status: http::StatusCode,
    },

    /// The request was refused by authorization policy (answered 401).
    #[error("request denied: {0}")]
    Denied(String),

    /// The upstream is unknown or could not be reached (answered 503).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),

    /// A socket or stream I/O error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),

    /// An HTTP/2 error: protocol violation, GOAWAY, RST_STREAM, or the connection's I/O.
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),

    /// The TLS peer did not negotiate ALPN `h2` (HBONE speaks HTTP/2 only).
    #[error("peer did not negotiate ALPN h2 (negotiated {0:?})")]
    NoH2Alpn(Option<String>),

    /// A handshake, dial or PING did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The deadline.
        after: std::time::Duration,
    },

    /// The peer flooded control frames (PING, SETTINGS, PRIORITY, unknown types) far above
    /// any client's rate, and the connection was ended (`crate::guard`).
    #[error("{0}")]
    Flood(String),

    /// A pooled HBONE dial failed; every request that waited on it gets the same cause.
    #[error("HBONE connection to {addr} failed: {source}")]
    Dial {
        /// The HBONE server address.
        addr: std::net::SocketAddr,
        /// Why the dial failed.
        source: std::sync::Arc<Error>,
    },
}

impl Error {
    /// Build a [`Error::Wire`] with the input truncated for display.
    pub fn wire(what: &'static str, input: &str, reason: impl Into<String>) -> Self {
        Error::Wire {
            what,
            input: excerpt(input),
            reason: reason.into(),
        }
    }

    /// Build a [`Error::InvalidIdentity`] with the input truncated for display.
    pub fn identity(input: &str, reason: impl Into<String>) -> Self {
        Error::InvalidIdentity {
            input: excerpt(input),
            reason: reason.into(),
        }
    }

    /// The HBONE response status this error should be answered with when it ends a tunnel
    /// request on the server side: bad input → 400, policy → 401, everything else (upstream,
    /// I/O, TLS) → 503, the status Istio's ztunnel uses for "could not serve this".
    pub fn status(&self) -> Status {
        match self {
            Error::Wire { .. } | Error::InvalidIdentity { .. } => Status::BadRequest,
            Error::Denied(_) => Status::Unauthorized,
            Error::Rejected { status } => Status::from_code(status.as_u16()),
            _ => Status::ServiceUnavailable,
        }
    }
}

/// The longest peer-supplied text quoted in an error message, in characters.
/// Long enough to recognise a value, short enough to keep one log line per error.
pub const EXCERPT_MAX: usize = 128;

/// Truncate peer-controlled text for an error message (at most [`EXCERPT_MAX`] characters,
/// then `…`).
pub fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

fn join(ids: &[Identity]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_truncates_on_char_boundary() {
        let long = "é".repeat(EXCERPT_MAX + 10);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_MAX + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn status_classification() {
        assert_eq!(
            Error::wire("authority", "x", "bad").status(),
            Status::BadRequest
        );
        assert_eq!(
            Error::Denied("policy".into()).status(),
            Status::Unauthorized
        );
        assert_eq!(
            Error::Unavailable("no route".into()).status(),
            Status::ServiceUnavailable
        );
        assert_eq!(
            Error::Io(std::io::ErrorKind::ConnectionRefused.into()).status(),
            Status::ServiceUnavailable
        );
    }

    #[test]
    fn mismatch_message_lists_both_sides() {
        let e = Error::UnexpectedPeerIdentity {
            expected: vec!["spiffe://td/ns/a/sa/b".parse().unwrap()],
            presented: vec!["spiffe://td/ns/c/sa/d".parse().unwrap()],
        };
        let s = e.to_string();
        assert!(s.contains("spiffe://td/ns/a/sa/b"), "{s}");
        assert!(s.contains("spiffe://td/ns/c/sa/d"), "{s}");
    }
}
