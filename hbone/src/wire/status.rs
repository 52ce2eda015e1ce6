//! The HBONE response statuses and what each means to the two ends.
//!
//! ztunnel answers a CONNECT with 200 once the upstream is connected, 400 for a malformed
//! request (or an authority whose IP is not the address the request arrived for), 401 when
//! authorization denies it and 503 when the upstream is unknown or unreachable. Any other code
//! a peer sends is kept as [`Status::Other`] and treated as a refusal.

use std::fmt;

/// An HBONE CONNECT response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 200: the upstream is connected; bytes may flow.
    Ok,
    /// 400: malformed request, bad authority, or authority not for this node.
    BadRequest,
    /// 401: denied by authorization policy.
    Unauthorized,
    /// 503: upstream unknown or unreachable, or the server could not serve the request.
    ServiceUnavailable,
    /// Any other status a peer sent.
    Other(u16),
}

impl Status {
    /// The numeric HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::ServiceUnavailable => 503,
            Status::Other(c) => c,
        }
    }

    /// Classify a numeric status code.
    pub fn from_code(code: u16) -> Status {
        match code {
            200 => Status::Ok,
            400 => Status::BadRequest,
            401 => Status::Unauthorized,
            503 => Status::ServiceUnavailable,
            c => Status::Other(c),
        }
    }

    /// As an `http` status code (codes outside 100..=999 become 500).
    pub fn to_http(self) -> http::StatusCode {
        http::StatusCode::from_u16(self.code()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Whether the tunnel is established.
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }

    /// A short, stable label for metrics and access logs.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadRequest => "bad_request",
            Status::Unauthorized => "unauthorized",
            Status::ServiceUnavailable => "unavailable",
            Status::Other(_) => "other",
        }
    }
}

impl From<http::StatusCode> for Status {
    fn from(s: http::StatusCode) -> Status {
        Status::from_code(s.as_u16())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in [
            Status::Ok,
            Status::BadRequest,
            Status::Unauthorized,
            Status::ServiceUnavailable,
            Status::Other(418),
        ] {
            assert_eq!(Status::from_code(s.code()), s);
            assert_eq!(Status::from(s.to_http()), s);
        }
        assert!(Status::Ok.is_ok());
        assert!(!Status::Other(204).is_ok());
        assert_eq!(
            Status::Other(7).to_http(),
            http::StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(Status::Unauthorized.to_string(), "401 (unauthorized)");
    }
}
