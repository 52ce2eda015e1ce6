//! gRPC as the waypoint sees it: the length-prefixed messages in a stream's bodies (counted
//! for Istio's `istio_request_messages_total` and `istio_response_messages_total`), the
//! status a response ends with (Istio's `grpc_response_status` label), and the waypoint's
//! own answers in gRPC's trailers-only form, as Envoy sends them.
//!
//! Invariants:
//! - counting a stream's messages costs a few bytes of state whatever its bodies hold: a
//!   [`Frames`] keeps where it is in the current message, never the bytes, and skips a
//!   message's payload in one step however it is split into DATA frames;
//! - a status outside gRPC's seventeen codes is read as 2 (UNKNOWN), as gRPC clients read
//!   it: a backend cannot make the series grow without bound;
//! - a local answer to a gRPC request is `:status 200` with `grpc-status` and
//!   `grpc-message` in its headers and no body; its telemetry keeps the HTTP code the
//!   answer stands for (`response_code="403"` for a denial), as Envoy's stream info does.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

/// `grpc-status`.
pub const STATUS: &str = "grpc-status";
/// `grpc-message`.
pub const MESSAGE: &str = "grpc-message";

/// The highest status code gRPC defines (16, UNAUTHENTICATED).
const MAX_STATUS: u32 = 16;
/// UNKNOWN: what a missing or foreign status is read as.
pub const UNKNOWN: u8 = 2;

/// The length prefix: a compressed flag and a 4-byte big-endian length.
const PREFIX: u8 = 5;

/// Counts the length-prefixed messages of one direction of a gRPC stream, fed its DATA as
/// it streams by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Frames {
    /// Prefix bytes of the current message read so far (0 between messages).
    prefix: u8,
    /// The length being read from the prefix.
    len: u32,
    /// Payload bytes of the current message still to come.
    skip: u64,
}

impl Frames {
    /// Reads `data`; returns how many messages began in it (a message counts once its
    /// prefix is whole, as Envoy's gRPC frame inspector counts).
    pub fn scan(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let k = usize::try_from(self.skip).map_or(data.len(), |s| s.min(data.len()));
                self.skip -= k as u64;
                data = &data[k..];
                continue;
            }
            let b = data[0];
            data = &data[1..];
            if self.prefix > 0 {
                self.len = (self.len << 8) | u32::from(b);
            }
            self.prefix += 1;
            if self.prefix == PREFIX {
                messages += 1;
                self.skip = u64::from(self.len);
                self.prefix = 0;
                self.len = 0;
            }
        }
        messages
    }
}

/// A `grpc-status` value: its code, UNKNOWN for one gRPC does not define, `None` when it
/// is not a number.
pub fn parse_status(v: &HeaderValue) -> Option<u8> {
    let n: u32 = v.to_str().ok()?.trim().parse().ok()?;
    Some(if n <= MAX_STATUS { n as u8 } else { UNKNOWN })
}

/// The status in `headers`, if they carry one.
pub fn status_in(headers: &HeaderMap) -> Option<u8> {
    headers.get(STATUS).and_then(parse_status)
}

/// The status an HTTP code stands for when a response carries none (gRPC's mapping, as
/// Envoy applies it).
pub fn status_of_http(code: u16) -> u8 {
    match code {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => UNKNOWN,
    }
}

/// A status by its name in gRPC's code list (`UNAVAILABLE`), as Istio's
/// `fault.abort.grpcStatus` gives it, or by its number.
pub fn status_by_name(name: &str) -> Option<u8> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let name = name.trim();
    if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) {
        return Some(i as u8);
    }
    name.parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_STATUS)
        .map(|n| n as u8)
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, percent-encoded.
pub fn encode_message(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `resp` (a local answer) as gRPC's trailers-only response: `:status 200`,
/// `content-type: application/grpc`, `grpc-status` (`status`, or the one `resp`'s code
/// stands for) and `grpc-message` (`text`), no body. The other headers stay.
pub fn trailers_only<B>(
    resp: Response<B>,
    status: Option<u8>,
    text: &str,
    empty: B,
) -> Response<B> {
    let (mut parts, _) = resp.into_parts();
    let status = status.unwrap_or_else(|| status_of_http(parts.status.as_u16()));
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert(STATUS, HeaderValue::from(u16::from(status)));
    let message = encode_message(text.trim_end());
    if !message.is_empty()
        && let Ok(v) = HeaderValue::from_str(&message)
    {
        parts.headers.insert(MESSAGE, v);
    }
    Response::from_parts(parts, empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn messages_count_however_the_bytes_are_split() {
        let mut stream = Vec::new();
        for p in [&b"hello"[..], b"", &[7u8; 70_000], b"x"] {
            stream.extend(message(p));
        }
        // Whole.
        assert_eq!(Frames::default().scan(&stream), 4);
        // One byte at a time, and in uneven pieces: the same count, and the state ends
        // between messages.
        for size in [1, 2, 3, 5, 7, 4096, 65_535] {
            let mut f = Frames::default();
            let n: u64 = stream.chunks(size).map(|c| f.scan(c)).sum();
            assert_eq!(n, 4, "pieces of {size}");
            assert_eq!(f, Frames::default(), "pieces of {size}");
        }
    }

    #[test]
    fn a_message_counts_once_its_prefix_is_whole() {
        let mut f = Frames::default();
        assert_eq!(f.scan(&[0, 0, 0, 0]), 0);
        assert_eq!(f.scan(&[3, b'a']), 1);
        assert_eq!(f.scan(b"bc"), 0);
        assert_eq!(f.scan(&[1, 0, 0, 0, 0]), 1, "a compressed empty message");
        // A length of 4 GiB is skipped without holding anything.
        assert_eq!(f.scan(&[0, 0xff, 0xff, 0xff, 0xff]), 1);
        assert_eq!(f.scan(&[0u8; 1024]), 0);
        assert_eq!(f.skip, u64::from(u32::MAX) - 1024);
    }

    #[test]
    fn statuses_parse_map_and_stay_bounded() {
        assert_eq!(parse_status(&HeaderValue::from_static("0")), Some(0));
        assert_eq!(parse_status(&HeaderValue::from_static(" 14 ")), Some(14));
        assert_eq!(parse_status(&HeaderValue::from_static("17")), Some(UNKNOWN));
        assert_eq!(
            parse_status(&HeaderValue::from_static("99999999999")),
            None,
            "not a u32"
        );
        assert_eq!(parse_status(&HeaderValue::from_static("ok")), None);
        assert_eq!(status_of_http(403), 7);
        assert_eq!(status_of_http(401), 16);
        assert_eq!(status_of_http(404), 12);
        assert_eq!(status_of_http(503), 14);
        assert_eq!(status_of_http(504), 14);
        assert_eq!(status_of_http(200), UNKNOWN);
        assert_eq!(status_by_name("UNAVAILABLE"), Some(14));
        assert_eq!(status_by_name("permission_denied"), Some(7));
        assert_eq!(status_by_name("4"), Some(4));
        assert_eq!(status_by_name("17"), None);
        assert_eq!(status_by_name("TEAPOT"), None);
    }

    #[test]
    fn a_local_answer_becomes_trailers_only() {
        let mut resp = Response::new("RBAC: access denied\n");
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp.headers_mut()
            .insert("x-kept", HeaderValue::from_static("yes"));
        let g = trailers_only(resp, None, "RBAC: access denied\n", "");
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(g.headers()[STATUS], "7");
        assert_eq!(g.headers()[MESSAGE], "RBAC: access denied");
        assert_eq!(g.headers()["x-kept"], "yes");
        assert_eq!(*g.body(), "");
        // A given status wins; the message is percent-encoded.
        let g = trailers_only(Response::new("x"), Some(14), "50% of it: é\n", "");
        assert_eq!(g.headers()[STATUS], "14");
        assert_eq!(g.headers()[MESSAGE], "50%25 of it: %C3%A9");
    }
}
