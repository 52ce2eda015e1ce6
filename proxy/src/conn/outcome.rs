//! How a connection ended: the one classification every path reports through, and what each
//! ending means on every surface (Istio's `response_flags`, the access log's `error`, the
//! HBONE status, the SOCKS5 reply, FIN or RST toward the client).

use std::time::Duration;

use hbone::wire::Status;

use crate::socks5::Reply;
use crate::telemetry::ResponseFlags;
use crate::telemetry::metrics::Refusal;

/// Which socket's TCP reset ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetBy {
    /// The originator's side (the client, or the peer node's tunnel on inbound).
    Downstream,
    /// The destination's side.
    Upstream,
}

impl ResetBy {
    pub fn label(self) -> &'static str {
        match self {
            ResetBy::Downstream => "downstream",
            ResetBy::Upstream => "upstream",
        }
    }
}

/// How an opened connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions ended with an orderly close.
    Complete,
    /// A TCP reset (or an HBONE stream error) from one side ended it; the other side was
    /// reset too (RFC 9113 §8.5), so neither mistakes it for a complete stream.
    Reset(ResetBy),
    /// Refused by authorization policy.
    Denied(String),
    /// A policy change denied it while it was open; both sides were reset.
    Revoked(String),
    /// The upstream refused the connection or could not be routed to.
    Unreachable(String),
    /// Dialling the upstream took too long. `hbone`: it was a peer node's 15008, which a
    /// NetworkPolicy blocking the port looks like (ztunnel's `NETWORK_POLICY` flag).
    Timeout { detail: String, hbone: bool },
    /// The mTLS handshake with the peer failed.
    Tls(String),
    /// The HTTP/2 layer failed (handshake, protocol error, GOAWAY).
    Http2(String),
    /// No certificate for the source workload's identity (yet).
    NoIdentity(String),
    /// The node's drain deadline passed with the connection still open; both sides were
    /// reset.
    Drained,
    /// No byte moved for the configured idle timeout; both sides were reset.
    IdleTimeout(Duration),
    /// Refused to protect the node (memory or connection limits).
    Shed(String),
    /// Any other failure (a local I/O error).
    Failed(String),
}

impl Outcome {
    /// Istio's `response_flags` (ztunnel's vocabulary).
    pub fn response_flags(&self) -> ResponseFlags {
        match self {
            Outcome::Complete | Outcome::Reset(_) | Outcome::Drained | Outcome::IdleTimeout(_) => {
                ResponseFlags::None
            }
            Outcome::Denied(_) | Outcome::Revoked(_) => ResponseFlags::Deny,
            Outcome::Timeout { hbone: true, .. } => ResponseFlags::NetworkPolicy,
            Outcome::Unreachable(_)
            | Outcome::Timeout { .. }
            | Outcome::Shed(_)
            | Outcome::Failed(_) => ResponseFlags::Connect,
            Outcome::Tls(_) => ResponseFlags::TlsFailure,
            Outcome::Http2(_) => ResponseFlags::H2HandshakeFailure,
            Outcome::NoIdentity(_) => ResponseFlags::IdentityError,
        }
    }

    /// The access log's `error` (`None`: it ended well).
    pub fn error(&self) -> Option<String> {
        Some(match self {
            Outcome::Complete | Outcome::Reset(_) => return None,
            Outcome::Denied(why) => format!("connection rejected due to policy: {why}"),
            Outcome::Revoked(why) => format!("connection closed due to policy rejection: {why}"),
            Outcome::Unreachable(d) => format!("connection failed: {d}"),
            Outcome::Timeout {
                detail,
                hbone: true,
            } => format!(
                "connection timed out, maybe a NetworkPolicy is blocking HBONE port 15008: {detail}"
            ),
            Outcome::Timeout { detail, .. } => format!("connection timed out: {detail}"),
            Outcome::Tls(d) => format!("TLS handshake failed: {d}"),
            Outcome::Http2(d) => format!("HTTP/2: {d}"),
            Outcome::NoIdentity(d) => format!("identity: {d}"),
            Outcome::Drained => "connection closed due to connection drain".into(),
            Outcome::IdleTimeout(d) => format!("connection idle for {d:?}; closed"),
            Outcome::Shed(d) => format!("node overloaded: {d}"),
            Outcome::Failed(d) => d.clone(),
        })
    }

    /// ringmesh's one-word name of the outcome (`ringmesh_*` families and tests).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Reset(_) => "reset",
            Outcome::Denied(_) => "denied",
            Outcome::Revoked(_) => "revoked",
            Outcome::Unreachable(_) => "unreachable",
            Outcome::Timeout { .. } => "timeout",
            Outcome::Tls(_) => "tls",
            Outcome::Http2(_) => "http2",
            Outcome::NoIdentity(_) => "no_identity",
            Outcome::Drained => "drained",
            Outcome::IdleTimeout(_) => "idle",
            Outcome::Shed(_) => "shed",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The HBONE answer to a CONNECT that ended this way before its 200 (DESIGN.md: 401
    /// denied by policy, 503 upstream unknown or unreachable).
    pub fn hbone_status(&self) -> Status {
        match self {
            Outcome::Denied(_) | Outcome::Revoked(_) => Status::Unauthorized,
            _ => Status::ServiceUnavailable,
        }
    }

    /// The SOCKS5 reply to a CONNECT that ended this way before its success reply.
    pub fn socks_reply(&self) -> Reply {
        match self {
            Outcome::Denied(_) | Outcome::Revoked(_) => Reply::NotAllowed,
            Outcome::Unreachable(_) | Outcome::Timeout { .. } => Reply::HostUnreachable,
            _ => Reply::GeneralFailure,
        }
    }

    /// Whether the client's socket is closed with a reset (everything but a complete
    /// connection: a client must be able to tell truncation from a normal end).
    pub fn resets_client(&self) -> bool {
        !matches!(self, Outcome::Complete)
    }
}

impl Refusal {
    /// The HBONE answer to a CONNECT refused this way.
    pub fn hbone_status(self) -> Status {
        match self {
            Refusal::BadRequest => Status::BadRequest,
            // ztunnel answers a call to its own ports with 503 too.
            _ => Status::ServiceUnavailable,
        }
    }

    /// The SOCKS5 reply to a CONNECT refused this way.
    pub fn socks_reply(self) -> Reply {
        match self {
            Refusal::Loop | Refusal::UnknownSource => Reply::NotAllowed,
            Refusal::NoEndpoint | Refusal::NotServed => Reply::HostUnreachable,
            _ => Reply::GeneralFailure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_one_meaning_on_every_surface() {
        let cases = [
            (
                Outcome::Complete,
                "-",
                false,
                Status::ServiceUnavailable,
                false,
            ),
            (
                Outcome::Reset(ResetBy::Upstream),
                "-",
                false,
                Status::ServiceUnavailable,
                true,
            ),
            (
                Outcome::Denied("x".into()),
                "DENY",
                true,
                Status::Unauthorized,
                true,
            ),
            (
                Outcome::Revoked("x".into()),
                "DENY",
                true,
                Status::Unauthorized,
                true,
            ),
            (
                Outcome::Unreachable("x".into()),
                "CONNECT",
                true,
                Status::ServiceUnavailable,
                true,
            ),
            (
                Outcome::Timeout {
                    detail: "x".into(),
                    hbone: true,
                },
                "NETWORK_POLICY",
                true,
                Status::ServiceUnavailable,
                true,
            ),
            (
                Outcome::Tls("x".into()),
                "TLS_FAILURE",
                true,
                Status::ServiceUnavailable,
                true,
            ),
            (
                Outcome::Http2("x".into()),
                "H2_HANDSHAKE_FAILURE",
                true,
                Status::ServiceUnavailable,
                true,
            ),
            (
                Outcome::NoIdentity("x".into()),
                "IDENTITY_ERROR",
                true,
                Status::ServiceUnavailable,
                true,
            ),
            (
                Outcome::Drained,
                "-",
                true,
                Status::ServiceUnavailable,
                true,
            ),
            (
                Outcome::Shed("x".into()),
                "CONNECT",
                true,
                Status::ServiceUnavailable,
                true,
            ),
        ];
        for (outcome, flags, has_error, status, rst) in cases {
            assert_eq!(outcome.response_flags().label(), flags, "{outcome:?}");
            assert_eq!(outcome.error().is_some(), has_error, "{outcome:?}");
            assert_eq!(outcome.hbone_status(), status, "{outcome:?}");
            assert_eq!(outcome.resets_client(), rst, "{outcome:?}");
        }
        assert_eq!(
            Outcome::Drained.error().unwrap(),
            "connection closed due to connection drain"
        );
        assert_eq!(Outcome::Denied("p".into()).socks_reply(), Reply::NotAllowed);
        assert_eq!(Refusal::BadRequest.hbone_status(), Status::BadRequest);
        assert_eq!(Refusal::Loop.hbone_status(), Status::ServiceUnavailable);
        assert_eq!(Refusal::Loop.socks_reply(), Reply::NotAllowed);
    }
}
