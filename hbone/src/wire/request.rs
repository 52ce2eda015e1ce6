//! The HBONE CONNECT request as a value: target authority plus optional `forwarded`,
//! `baggage` and `traceparent`.
//!
//! [`ConnectRequest::from_http`] is the server's one entry point for a request head a peer sent:
//! a method other than CONNECT or an authority that does not parse is an [`Error::Wire`], which
//! [`Error::status`] answers with 400. The optional headers never fail a request: one that does
//! not parse is dropped and logged, as ztunnel ignores a `forwarded` it cannot read and as
//! W3C Trace Context requires (a bad `traceparent` restarts the trace, it does not fail the
//! call).

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use tracing::debug;

use crate::error::{Error, Result};
use crate::wire::{Authority, Baggage, Forwarded, TraceParent};

/// Header names (HTTP/2 requires lowercase, RFC 9113 §8.2.1).
pub const FORWARDED: &str = "forwarded";
/// W3C Baggage header.
pub const BAGGAGE: &str = "baggage";
/// W3C Trace Context header.
pub const TRACEPARENT: &str = "traceparent";

/// An HBONE CONNECT request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Where to connect (`:authority`).
    pub authority: Authority,
    /// The original client (`forwarded: for="ip:port"`).
    pub forwarded: Option<Forwarded>,
    /// W3C baggage.
    pub baggage: Option<Baggage>,
    /// W3C trace context.
    pub traceparent: Option<TraceParent>,
}

impl ConnectRequest {
    /// A request for `target` with no optional headers.
    pub fn new(target: impl Into<Authority>) -> ConnectRequest {
        ConnectRequest {
            authority: target.into(),
            forwarded: None,
            baggage: None,
            traceparent: None,
        }
    }

    /// Set `forwarded: for="<source>"` (the source workload's address).
    pub fn with_source(mut self, source: SocketAddr) -> ConnectRequest {
        self.forwarded = Some(Forwarded::for_client(source));
        self
    }

    /// Parse a request head (the server side). Errors are [`Error::Wire`] (status 400).
    pub fn from_http(parts: &http::request::Parts) -> Result<ConnectRequest> {
        Self::parse(&parts.method, &parts.uri, &parts.headers)
    }

    /// Parse a request (the head only; the body is not touched).
    pub fn from_request<T>(req: &Request<T>) -> Result<ConnectRequest> {
        Self::parse(req.method(), req.uri(), req.headers())
    }

    fn parse(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<ConnectRequest> {
        if method != Method::CONNECT {
            return Err(Error::wire(
                "method",
                method.as_str(),
                "HBONE accepts only CONNECT",
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| {
                Error::wire("authority", &uri.to_string(), "CONNECT without :authority")
            })?
            .as_str()
            .parse()?;
        Ok(ConnectRequest {
            authority,
            forwarded: optional(headers, FORWARDED, ", "),
            baggage: optional(headers, BAGGAGE, ","),
            traceparent: single(headers, TRACEPARENT),
        })
    }

    /// The request head to send (the client side): `CONNECT` with `:authority`, HTTP/2.
    pub fn to_request(&self) -> Result<Request<()>> {
        let uri = Uri::builder()
            .authority(self.authority.to_string())
            .build()
            .map_err(|e| Error::wire("authority", &self.authority.to_string(), e.to_string()))?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .version(Version::HTTP_2)
            .body(())
            .map_err(|e| Error::wire("request", &self.authority.to_string(), e.to_string()))?;
        let h = req.headers_mut();
        if let Some(f) = &self.forwarded {
            h.insert(FORWARDED, header_value(FORWARDED, &f.to_string())?);
        }
        if let Some(b) = &self.baggage {
            h.insert(BAGGAGE, header_value(BAGGAGE, &b.to_string())?);
        }
        if let Some(t) = &self.traceparent {
            h.insert(TRACEPARENT, header_value(TRACEPARENT, &t.to_string())?);
        }
        Ok(req)
    }

    /// Same as [`Self::to_request`] (name used by the HTTP/2 client).
    pub fn to_http_request(&self) -> Result<Request<()>> {
        self.to_request()
    }
}

fn header_value(name: &'static str, v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|_| Error::wire(name, v, "not a valid header value"))
}

/// A list-valued header: all field lines joined (RFC 9110 §5.3), parsed; dropped if bad.
fn optional<T>(headers: &HeaderMap, name: &'static str, sep: &str) -> Option<T>
where
    T: std::str::FromStr<Err = Error>,
{
    let mut joined = String::new();
    for v in headers.get_all(name) {
        let Ok(v) = v.to_str() else {
            debug!(header = name, "ignoring a non-ASCII header value");
            return None;
        };
        if !joined.is_empty() {
            joined.push_str(sep);
        }
        joined.push_str(v);
    }
    if joined.is_empty() {
        return None;
    }
    joined
        .parse()
        .inspect_err(|e| debug!(error = %e, "ignoring an unparsable header"))
        .ok()
}

/// A single-valued header; several field lines make it invalid (W3C Trace Context §3.2).
fn single<T>(headers: &HeaderMap, name: &'static str) -> Option<T>
where
    T: std::str::FromStr<Err = Error>,
{
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        debug!(header = name, "ignoring a header sent more than once");
        return None;
    }
    first
        .to_str()
        .ok()?
        .parse()
        .inspect_err(|e| debug!(error = %e, "ignoring an unparsable header"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Status;

    fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn round_trip_with_all_headers() {
        let mut r = ConnectRequest::new("10.1.2.3:8080".parse::<SocketAddr>().unwrap())
            .with_source("[2001:db8::7]:5555".parse().unwrap());
        r.traceparent = Some(TP.parse().unwrap());
        let mut b = Baggage::default();
        b.push("k8s.cluster.name", "Kubernetes").unwrap();
        r.baggage = Some(b);
        let http = r.to_request().unwrap();
        assert_eq!(http.method(), Method::CONNECT);
        assert_eq!(http.uri().to_string(), "10.1.2.3:8080");
        assert_eq!(http.headers()[FORWARDED], "for=\"[2001:db8::7]:5555\"");
        assert_eq!(http.headers()[TRACEPARENT], TP);
        assert_eq!(ConnectRequest::from_request(&http).unwrap(), r);
        let (parts, ()) = http.into_parts();
        assert_eq!(ConnectRequest::from_http(&parts).unwrap(), r);
    }

    #[test]
    fn ipv6_and_host_authorities() {
        for a in ["[::1]:15008", "reviews.default.svc:9080"] {
            let r = ConnectRequest::new(a.parse::<Authority>().unwrap());
            let back = ConnectRequest::from_request(&r.to_request().unwrap()).unwrap();
            assert_eq!(back, r);
            assert_eq!(back.authority.to_string(), a);
        }
    }

    #[test]
    fn bad_requests_are_400() {
        let e = ConnectRequest::from_request(&req(Method::GET, "http://10.0.0.1:80/", &[]))
            .unwrap_err();
        assert_eq!(e.status(), Status::BadRequest);
        assert!(e.to_string().contains("HBONE accepts only CONNECT"), "{e}");
        let e = ConnectRequest::from_request(&req(Method::CONNECT, "10.0.0.1", &[])).unwrap_err();
        assert_eq!(e.status(), Status::BadRequest);
        assert!(e.to_string().contains("missing :port"), "{e}");
        let e = ConnectRequest::from_request(&req(Method::CONNECT, "/path", &[])).unwrap_err();
        assert!(e.to_string().contains("CONNECT without :authority"), "{e}");
    }

    #[test]
    fn bad_optional_headers_are_dropped_not_fatal() {
        let r = ConnectRequest::from_request(&req(
            Method::CONNECT,
            "10.0.0.1:80",
            &[
                (FORWARDED, "for=nonsense"),
                (BAGGAGE, "a=%zz"),
                (TRACEPARENT, "00-xyz"),
            ],
        ))
        .unwrap();
        assert_eq!(
            r,
            ConnectRequest::new("10.0.0.1:80".parse::<Authority>().unwrap())
        );
        // Two traceparent lines: ambiguous, dropped. Two forwarded lines: joined.
        let r = ConnectRequest::from_request(&req(
            Method::CONNECT,
            "10.0.0.1:80",
            &[
                (TRACEPARENT, TP),
                (TRACEPARENT, TP),
                (FORWARDED, "for=1.1.1.1"),
                (FORWARDED, "for=2.2.2.2"),
                (BAGGAGE, "a=1"),
                (BAGGAGE, "b=2"),
            ],
        ))
        .unwrap();
        assert_eq!(r.traceparent, None);
        assert_eq!(r.forwarded.unwrap().elements().len(), 2);
        assert_eq!(r.baggage.unwrap().get("b"), Some("2"));
    }
}
