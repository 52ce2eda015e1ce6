//! `loadBalancer.consistentHash`: soft session affinity. A request's key (a header, a
//! cookie, the client's IP or a query parameter) is hashed, and the hash picks the endpoint,
//! so the same key reaches the same endpoint from every core and every waypoint replica, and
//! a change of endpoints moves only the keys of the endpoints that came or went.
//!
//! The pick is rendezvous hashing (highest random weight, Thaler and Ravishankar 1998): each
//! candidate endpoint scores `mix(key hash, endpoint hash)`, and the highest score wins.
//! Envoy builds a ring (`ringHash`) or a Maglev table for the same two properties; a
//! waypoint's Service has a short endpoint list, so scoring it per request costs less than
//! keeping a table per Service and core, and needs no rebuild when endpoints change. The
//! tables' sizes (`minimumRingSize`, `maglev.tableSize`) are checked as Envoy checks them
//! and otherwise have nothing to size here. The endpoint a key lands on differs from
//! Envoy's: affinity holds within ringmesh, not across a mix of ringmesh and Envoy.
//!
//! A request without its key (no such header, cookie or parameter) is balanced at random,
//! as Envoy's ring does without a hash. An `httpCookie` with a `ttl` is made when the
//! request has none: its value hashes as the cookie will on the client's next request, and
//! the response sets it (Envoy's behaviour, and its `Set-Cookie` shape).

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::route::{RouteError, err};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashSpec {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookieSpec>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHashSpec>,
    #[serde(default)]
    pub maglev: Option<MaglevSpec>,
    /// Istio's deprecated spelling of `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookieSpec {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    /// How long a cookie the waypoint makes lives; without it, none is made.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub attributes: Vec<CookieAttributeSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttributeSpec {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHashSpec {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaglevSpec {
    #[serde(default)]
    pub table_size: Option<u64>,
}

/// Envoy's largest ring (`maximum_ring_size`'s default).
const MAX_RING: u64 = 8 * 1024 * 1024;

/// What a request is hashed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Every value of the header, sorted (Envoy hashes a repeated header's values so).
    Header(HeaderName),
    Cookie(CookieKey),
    /// The client's IP (HBONE's `forwarded` address), without its port.
    SourceIp,
    /// The query parameter's first value, as sent (not decoded).
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieKey {
    pub name: String,
    pub path: String,
    /// `Some`: a request without the cookie gets one that lives this long (zero: for the
    /// browser session).
    pub ttl: Option<Duration>,
    /// Extra `Set-Cookie` attributes: `name=value`, or a bare `name`.
    pub attributes: Vec<(String, Option<String>)>,
}

/// A compiled `consistentHash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub key: HashKey,
}

/// What a request's key gives: the hash (none without a key), and the cookie to set on the
/// response when the waypoint made one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Affinity {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

impl HashPolicy {
    /// The request's hash, from its head and the client's address. `made` is used for a
    /// cookie the waypoint must make and the client's address is unknown.
    pub fn affinity(
        &self,
        parts: &http::request::Parts,
        client: Option<SocketAddr>,
        made: u64,
    ) -> Affinity {
        let hash = |h: Option<u64>| Affinity {
            hash: h,
            set_cookie: None,
        };
        match &self.key {
            HashKey::Header(name) => {
                let mut values: Vec<&[u8]> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                if values.is_empty() {
                    return hash(None);
                }
                values.sort_unstable();
                hash(Some(values.iter().fold(FNV_OFFSET, |h, v| fnv1a(h, v))))
            }
            HashKey::SourceIp => {
                hash(client.map(|a| fnv1a(FNV_OFFSET, a.ip().to_string().as_bytes())))
            }
            HashKey::Query(name) => hash(parts.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| match pair.split_once('=') {
                        Some((k, v)) if k == name => Some(v),
                        None if pair == name => Some(""),
                        _ => None,
                    })
                    .map(|v| fnv1a(FNV_OFFSET, v.as_bytes()))
            })),
            HashKey::Cookie(c) => {
                if let Some(v) = cookie(&parts.headers, &c.name) {
                    return hash(Some(fnv1a(FNV_OFFSET, v.as_bytes())));
                }
                let Some(ttl) = c.ttl else {
                    return hash(None);
                };
                // One value per client address and port, so a connection's concurrent
                // requests get the same cookie (Envoy's choice).
                let seed = client.map_or(made, |a| fnv1a(FNV_OFFSET, a.to_string().as_bytes()));
                let value = format!("{seed:016x}");
                Affinity {
                    hash: Some(fnv1a(FNV_OFFSET, value.as_bytes())),
                    set_cookie: HeaderValue::from_str(&c.set_cookie(&value, ttl)).ok(),
                }
            }
        }
    }
}

impl CookieKey {
    /// `name="value"; Max-Age=N; Path=P; attributes; HttpOnly`, Envoy's shape.
    fn set_cookie(&self, value: &str, ttl: Duration) -> String {
        let mut s = format!("{}=\"{value}\"", self.name);
        if !ttl.is_zero() {
            s.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
        }
        if !self.path.is_empty() {
            s.push_str(&format!("; Path={}", self.path));
        }
        for (k, v) in &self.attributes {
            match v {
                Some(v) => s.push_str(&format!("; {k}={v}")),
                None => s.push_str(&format!("; {k}")),
            }
        }
        s.push_str("; HttpOnly");
        s
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, quotes removed.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// Checks and compiles a `consistentHash`, at `at`.
pub fn compile(spec: &ConsistentHashSpec, at: &str) -> Result<HashPolicy, RouteError> {
    let keys = [
        spec.http_header_name.is_some(),
        spec.http_cookie.is_some(),
        spec.use_source_ip == Some(true),
        spec.http_query_parameter_name.is_some(),
    ];
    match keys.iter().filter(|k| **k).count() {
        1 => {}
        0 => {
            return Err(err(
                at,
                "names no hash key: set one of httpHeaderName, httpCookie, useSourceIp: true or httpQueryParameterName",
            ));
        }
        _ => {
            return Err(err(
                at,
                "names more than one hash key: keep one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName",
            ));
        }
    }
    if spec.ring_hash.is_some() && spec.maglev.is_some() {
        return Err(err(
            at,
            "sets both ringHash and maglev: they are two ways to do one thing; keep one",
        ));
    }
    let ring = spec
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .map(|n| (n, format!("{at}.ringHash.minimumRingSize")))
        .or(spec
            .minimum_ring_size
            .map(|n| (n, format!("{at}.minimumRingSize"))));
    if let Some((n, field)) = ring
        && n > MAX_RING
    {
        return Err(err(
            field,
            format!("{n}: a ring has at most {MAX_RING} entries (Envoy's limit)"),
        ));
    }
    if let Some(n) = spec.maglev.as_ref().and_then(|m| m.table_size)
        && !is_prime(n)
    {
        return Err(err(
            format!("{at}.maglev.tableSize"),
            format!("{n}: a Maglev table's size must be a prime number (65537 by default)"),
        ));
    }
    let key = if let Some(h) = &spec.http_header_name {
        HashKey::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            err(
                format!("{at}.httpHeaderName"),
                format!("{h:?} is not a header name"),
            )
        })?)
    } else if let Some(c) = &spec.http_cookie {
        let at = format!("{at}.httpCookie");
        if c.name.is_empty() || !c.name.bytes().all(cookie_name_byte) {
            return Err(err(
                format!("{at}.name"),
                format!("{:?} is not a cookie name (RFC 6265 token)", c.name),
            ));
        }
        let ttl = match c.ttl.as_deref() {
            None => None,
            // Zero is allowed here: a cookie for the browser's session.
            Some(t) if is_zero(t) => Some(Duration::ZERO),
            Some(t) => Some(crate::route::duration(t, &format!("{at}.ttl"))?),
        };
        let path = c.path.clone().unwrap_or_default();
        let mut attributes = Vec::with_capacity(c.attributes.len());
        for (i, a) in c.attributes.iter().enumerate() {
            let name_ok = !a.name.is_empty() && a.name.bytes().all(cookie_name_byte);
            let value_ok = a
                .value
                .as_ref()
                .is_none_or(|v| v.bytes().all(|b| b.is_ascii_graphic() && b != b';'));
            if !name_ok || !value_ok {
                return Err(err(
                    format!("{at}.attributes[{i}]"),
                    "a cookie attribute is a token name and an optional value without ';' or spaces",
                ));
            }
            attributes.push((a.name.clone(), a.value.clone()));
        }
        let cookie = CookieKey {
            name: c.name.clone(),
            path,
            ttl,
            attributes,
        };
        // The header this would make must be one, or the rule is refused now.
        if HeaderValue::from_str(&cookie.set_cookie("0", Duration::ZERO)).is_err() {
            return Err(err(
                format!("{at}.path"),
                "cannot be carried in a Set-Cookie header",
            ));
        }
        HashKey::Cookie(cookie)
    } else if spec.use_source_ip == Some(true) {
        HashKey::SourceIp
    } else {
        let q = spec.http_query_parameter_name.clone().unwrap_or_default();
        if q.is_empty() {
            return Err(err(
                format!("{at}.httpQueryParameterName"),
                "must not be empty",
            ));
        }
        HashKey::Query(q)
    };
    Ok(HashPolicy { key })
}

/// `0s`, `0ms`, `0`: a zero duration in any unit.
fn is_zero(t: &str) -> bool {
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    !digits.is_empty() && digits.bytes().all(|b| b == b'0' || b == b'.')
}

/// RFC 6265's cookie-name: an RFC 7230 token.
fn cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits, continuing from `h`: a hash that is the same in every process and
/// build, which affinity across cores and replicas needs (std's hasher promises neither).
pub fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Rendezvous hashing: the index, among `candidates`, of the endpoint with the highest
/// score for `key`. Ties (equal scores) go to the lower address, so the answer does not
/// depend on the candidates' order.
pub fn rendezvous(key: u64, candidates: impl Iterator<Item = SocketAddr>) -> Option<usize> {
    let mut best: Option<(u64, SocketAddr, usize)> = None;
    for (i, addr) in candidates.enumerate() {
        let score = super::splitmix64(key ^ endpoint_hash(addr));
        let better = match best {
            None => true,
            Some((s, a, _)) => score > s || (score == s && addr < a),
        };
        if better {
            best = Some((score, addr, i));
        }
    }
    best.map(|(_, _, i)| i)
}

fn endpoint_hash(addr: SocketAddr) -> u64 {
    let h = match addr.ip() {
        std::net::IpAddr::V4(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
        std::net::IpAddr::V6(ip) => fnv1a(FNV_OFFSET, &ip.octets()),
    };
    fnv1a(h, &addr.port().to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ConsistentHashSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    #[test]
    fn the_same_key_lands_on_the_same_endpoint_and_keys_spread() {
        let eps = addrs(4);
        let mut counts = [0u32; 4];
        for k in 0..4000u64 {
            let key = fnv1a(FNV_OFFSET, format!("user-{k}").as_bytes());
            let a = rendezvous(key, eps.iter().copied()).unwrap();
            // The order of the candidates does not change the answer.
            let b = rendezvous(key, eps.iter().rev().copied()).unwrap();
            assert_eq!(eps[a], eps[eps.len() - 1 - b]);
            counts[a] += 1;
        }
        // Four endpoints share 4,000 keys within ±20 % of 1,000 each.
        assert!(
            counts.iter().all(|c| (800..=1200).contains(c)),
            "{counts:?}"
        );
        assert_eq!(rendezvous(1, std::iter::empty()), None);
    }

    #[test]
    fn a_new_endpoint_takes_keys_only_for_itself() {
        let four = addrs(4);
        let five = addrs(5);
        let (mut moved, mut to_new) = (0, 0);
        for k in 0..5000u64 {
            let key = fnv1a(FNV_OFFSET, &k.to_be_bytes());
            let before = four[rendezvous(key, four.iter().copied()).unwrap()];
            let after = five[rendezvous(key, five.iter().copied()).unwrap()];
            if before != after {
                moved += 1;
                to_new += u32::from(after == five[4]);
            }
        }
        // Every key that moved went to the new endpoint, about a fifth of them.
        assert_eq!(moved, to_new);
        assert!((800..=1200).contains(&moved), "{moved}");
    }

    #[test]
    fn keys_come_from_headers_cookies_ips_and_queries() {
        let client = Some(SocketAddr::from(([192, 168, 1, 7], 40000)));
        let header = compile(&spec("httpHeaderName: x-user"), "lb").unwrap();
        let a = header.affinity(&parts("/", &[("x-user", "ann")]), client, 0);
        let b = header.affinity(&parts("/other", &[("x-user", "ann")]), None, 9);
        assert_eq!(a.hash, b.hash);
        assert!(a.hash.is_some() && a.set_cookie.is_none());
        let c = header.affinity(&parts("/", &[("x-user", "bob")]), client, 0);
        assert_ne!(a.hash, c.hash);
        assert_eq!(header.affinity(&parts("/", &[]), client, 0).hash, None);

        let ip = compile(&spec("useSourceIp: true"), "lb").unwrap();
        let other_port = Some(SocketAddr::from(([192, 168, 1, 7], 50000)));
        assert_eq!(
            ip.affinity(&parts("/", &[]), client, 0).hash,
            ip.affinity(&parts("/x", &[]), other_port, 0).hash
        );
        assert_eq!(ip.affinity(&parts("/", &[]), None, 0).hash, None);

        let q = compile(&spec("httpQueryParameterName: session"), "lb").unwrap();
        let s1 = q.affinity(&parts("/a?x=1&session=42", &[]), None, 0).hash;
        assert_eq!(s1, q.affinity(&parts("/b?session=42", &[]), None, 0).hash);
        assert_ne!(s1, q.affinity(&parts("/b?session=43", &[]), None, 0).hash);
        assert_eq!(
            q.affinity(&parts("/b?sessions=42", &[]), None, 0).hash,
            None
        );

        let session = compile(&spec("httpCookie: {name: sticky}"), "lb").unwrap();
        let with = session.affinity(&parts("/", &[("cookie", "a=1; sticky=\"v9\"")]), None, 0);
        assert_eq!(with.hash, Some(fnv1a(FNV_OFFSET, b"v9")));
        // No ttl: a request without the cookie is not given one.
        assert_eq!(
            session.affinity(&parts("/", &[]), client, 0),
            Affinity::default()
        );
    }

    #[test]
    fn a_missing_cookie_is_made_and_hashes_as_it_will_come_back() {
        let p = compile(
            &spec("httpCookie: {name: sticky, path: /, ttl: 60s, attributes: [{name: SameSite, value: Strict}, {name: Secure}]}"),
            "lb",
        )
        .unwrap();
        let client = Some(SocketAddr::from(([192, 168, 1, 7], 40000)));
        let made = p.affinity(&parts("/", &[]), client, 0);
        let set = made.set_cookie.clone().unwrap();
        let set = set.to_str().unwrap();
        let value = set
            .strip_prefix("sticky=\"")
            .and_then(|s| s.split('"').next())
            .unwrap();
        assert_eq!(
            set,
            format!("sticky=\"{value}\"; Max-Age=60; Path=/; SameSite=Strict; Secure; HttpOnly")
        );
        let back = p.affinity(
            &parts("/", &[("cookie", &format!("sticky={value}"))]),
            None,
            0,
        );
        assert_eq!(back.hash, made.hash);
        assert_eq!(back.set_cookie, None);
        // The same connection gets the same cookie.
        assert_eq!(p.affinity(&parts("/x", &[]), client, 5), made);
    }

    #[test]
    fn bad_policies_are_named() {
        let e = |yaml: &str| compile(&spec(yaml), "lb").unwrap_err().to_string();
        assert!(e("{}").contains("names no hash key"));
        assert!(e("useSourceIp: false").contains("names no hash key"));
        assert!(e("{httpHeaderName: a, useSourceIp: true}").contains("more than one"));
        assert!(e("httpHeaderName: 'a b'").contains("lb.httpHeaderName"));
        assert!(e("httpCookie: {name: 'a;b'}").contains("lb.httpCookie.name"));
        assert!(e("httpCookie: {name: a, ttl: soon}").contains("lb.httpCookie.ttl"));
        assert!(
            e("httpCookie: {name: a, attributes: [{name: x, value: 'a;b'}]}")
                .contains("lb.httpCookie.attributes[0]")
        );
        assert!(e("httpQueryParameterName: ''").contains("must not be empty"));
        assert!(e("{useSourceIp: true, maglev: {tableSize: 65536}}").contains("prime"));
        assert!(
            compile(
                &spec("{useSourceIp: true, maglev: {tableSize: 65537}}"),
                "lb"
            )
            .is_ok()
        );
        assert!(
            e("{useSourceIp: true, ringHash: {minimumRingSize: 9000000}}")
                .contains("lb.ringHash.minimumRingSize")
        );
        assert!(e("{useSourceIp: true, minimumRingSize: 9000000}").contains("lb.minimumRingSize"));
        assert!(e("{useSourceIp: true, ringHash: {}, maglev: {}}").contains("keep one"));
    }
}
