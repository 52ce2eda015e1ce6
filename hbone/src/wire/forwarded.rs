//! The `forwarded` header (RFC 7239): who the original client was.
//!
//! HBONE uses it to carry the source workload's address, `forwarded: for="10.0.0.1:4321"`
//! (IPv6 as `for="[2001:db8::1]:4321"`). The parser takes the whole RFC 7239 grammar
//! (several elements, `for`/`by`/`host`/`proto` and extension parameters, tokens and
//! quoted strings with escapes) and rejects anything else with a reason; encoding always
//! produces text the parser reads back to the same value.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::error::{Error, Result};

/// A parsed `forwarded` header: one element per proxy hop, client-most first (RFC 7239 §4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Forwarded {
    elements: Vec<ForwardedElement>,
}

/// One hop of a `forwarded` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardedElement {
    /// `for=`: the client side of the hop.
    pub for_node: Option<Node>,
    /// `by=`: the proxy side of the hop.
    pub by: Option<Node>,
    /// `host=`: the Host the hop received (kept as text).
    pub host: Option<String>,
    /// `proto=`: the scheme the hop received.
    pub proto: Option<String>,
    /// Other parameters, names lowercased, values unquoted.
    pub extensions: Vec<(String, String)>,
}

/// A `for`/`by` node (RFC 7239 §6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    /// The address or its stand-in.
    pub name: NodeName,
    /// The port, if given.
    pub port: Option<NodePort>,
}

/// RFC 7239 §6 `nodename`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeName {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// `unknown` (§6.2).
    Unknown,
    /// An obfuscated identifier, `_` followed by letters, digits, `.`, `_`, `-` (§6.3).
    Obfuscated(String),
}

/// RFC 7239 §6 `node-port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodePort {
    /// A numeric port.
    Port(u16),
    /// An obfuscated port (`_` ...).
    Obfuscated(String),
}

impl Forwarded {
    /// `for="<ip>:<port>"`: what HBONE clients send for the source workload.
    pub fn for_client(addr: SocketAddr) -> Forwarded {
        Forwarded {
            elements: vec![ForwardedElement {
                for_node: Some(Node {
                    name: NodeName::Ip(addr.ip()),
                    port: Some(NodePort::Port(addr.port())),
                }),
                ..ForwardedElement::default()
            }],
        }
    }

    /// Build from elements (at least one).
    pub fn from_elements(elements: Vec<ForwardedElement>) -> Result<Forwarded> {
        if elements.is_empty() {
            return Err(Error::wire("forwarded", "", "no elements"));
        }
        Ok(Forwarded { elements })
    }

    /// All elements, client-most first.
    pub fn elements(&self) -> &[ForwardedElement] {
        &self.elements
    }

    /// The original client: the first element's `for=` node.
    pub fn client(&self) -> Option<&Node> {
        self.elements.first()?.for_node.as_ref()
    }

    /// The original client's IP, if the first `for=` is an address.
    pub fn client_ip(&self) -> Option<IpAddr> {
        match self.client()?.name {
            NodeName::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    /// The original client's socket address, if the first `for=` is an address with a port.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        let node = self.client()?;
        match (&node.name, &node.port) {
            (NodeName::Ip(ip), Some(NodePort::Port(p))) => Some(SocketAddr::new(*ip, *p)),
            _ => None,
        }
    }
}

impl FromStr for Forwarded {
    type Err = Error;

    fn from_str(s: &str) -> Result<Forwarded> {
        let mut p = Parser { s, pos: 0 };
        let mut elements = Vec::new();
        loop {
            p.skip_ows();
            if let Some(el) = p.element()? {
                elements.push(el);
            }
            p.skip_ows();
            match p.peek() {
                None => break,
                Some(b',') => p.pos += 1,
                Some(c) => return Err(p.error(format!("unexpected {:?}", char::from(c)))),
            }
        }
        if elements.is_empty() {
            return Err(Error::wire("forwarded", s, "no elements"));
        }
        Ok(Forwarded { elements })
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::wire(
            "forwarded",
            self.s,
            format!("{reason} at byte {}", self.pos),
        )
    }

    /// One element; `None` for an empty list element (RFC 9110 §5.6.1 allows them).
    fn element(&mut self) -> Result<Option<ForwardedElement>> {
        let mut el = ForwardedElement::default();
        let mut any = false;
        loop {
            self.skip_ows();
            if matches!(self.peek(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'))
                || self.peek().is_some_and(is_tchar)
            {
                let name = self.token().to_ascii_lowercase();
                if self.peek() != Some(b'=') {
                    return Err(self.error(format!("expected '=' after {name:?}")));
                }
                self.pos += 1;
                let value = self.value()?;
                el.set(&name, value).map_err(|r| self.error(r))?;
                any = true;
            }
            self.skip_ows();
            if self.peek() == Some(b';') {
                self.pos += 1;
                continue;
            }
            break;
        }
        Ok(any.then_some(el))
    }

    fn token(&mut self) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    fn value(&mut self) -> Result<String> {
        if self.peek() != Some(b'"') {
            let t = self.token().to_owned();
            if matches!(self.peek(), Some(b':' | b'[' | b']')) {
                return Err(self.error(
                    "a value holding ':', '[' or ']' must be a quoted string (RFC 7239 §6)".into(),
                ));
            }
            if t.is_empty() {
                return Err(self.error("expected a token or quoted string".into()));
            }
            return Ok(t);
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated quoted string".into())),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) if c == b'\t' || (0x20..0x7f).contains(&c) => {
                            out.push(char::from(c));
                            self.pos += 1;
                        }
                        _ => return Err(self.error("bad escape in quoted string".into())),
                    }
                }
                Some(c) if c == b'\t' || (0x20..0x7f).contains(&c) => {
                    out.push(char::from(c));
                    self.pos += 1;
                }
                Some(c) => {
                    return Err(self.error(format!("byte 0x{c:02x} not allowed in quoted string")));
                }
            }
        }
    }
}

impl ForwardedElement {
    fn set(&mut self, name: &str, value: String) -> std::result::Result<(), String> {
        let dup = || format!("parameter {name:?} given twice in one element (RFC 7239 §4)");
        match name {
            "for" | "by" => {
                let node: Node = value.parse().map_err(|e: String| format!("{name}: {e}"))?;
                let slot = if name == "for" {
                    &mut self.for_node
                } else {
                    &mut self.by
                };
                if slot.replace(node).is_some() {
                    return Err(dup());
                }
            }
            "host" => {
                if self.host.replace(value).is_some() {
                    return Err(dup());
                }
            }
            "proto" => {
                let valid = value
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
                if !valid {
                    return Err(format!("proto {value:?} is not a URI scheme"));
                }
                if self.proto.replace(value).is_some() {
                    return Err(dup());
                }
            }
            _ => {
                if self.extensions.iter().any(|(n, _)| n == name) {
                    return Err(dup());
                }
                self.extensions.push((name.to_owned(), value));
            }
        }
        Ok(())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_obf(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FromStr for Node {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Node, String> {
        let (name, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or("'[' without a closing ']'")?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected ':' after ']'")?),
            };
            (NodeName::Ip(IpAddr::V6(ip)), port)
        } else {
            let (name, port) = match s.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (s, None),
            };
            let name = if name.eq_ignore_ascii_case("unknown") {
                NodeName::Unknown
            } else if is_obf(name) {
                NodeName::Obfuscated(name.to_owned())
            } else if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
                NodeName::Ip(IpAddr::V4(ip))
            } else if name.contains(':') || s.matches(':').count() > 1 {
                return Err("IPv6 address must be in brackets".into());
            } else {
                return Err(format!(
                    "{name:?} is not an IPv4 address, [IPv6], \"unknown\" or _obfuscated"
                ));
            };
            (name, port)
        };
        let port = match port {
            None => None,
            Some(p) if is_obf(p) => Some(NodePort::Obfuscated(p.to_owned())),
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(NodePort::Port(
                    p.parse().map_err(|_| format!("port {p} > 65535"))?,
                ))
            }
            Some(p) => return Err(format!("port {p:?} is neither 0-65535 nor _obfuscated")),
        };
        Ok(Node { name, port })
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            NodeName::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            NodeName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            NodeName::Unknown => f.write_str("unknown")?,
            NodeName::Obfuscated(o) => f.write_str(o)?,
        }
        match &self.port {
            None => Ok(()),
            Some(NodePort::Port(p)) => write!(f, ":{p}"),
            Some(NodePort::Obfuscated(o)) => write!(f, ":{o}"),
        }
    }
}

/// A value as a token when it is one, else as a quoted string (RFC 7239 §4).
fn write_value(f: &mut fmt::Formatter<'_>, v: &str) -> fmt::Result {
    if !v.is_empty() && v.bytes().all(is_tchar) {
        return f.write_str(v);
    }
    f.write_str("\"")?;
    for c in v.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

impl fmt::Display for ForwardedElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut pair = |f: &mut fmt::Formatter<'_>, name: &str, value: &str| {
            write!(f, "{sep}{name}=")?;
            sep = ";";
            write_value(f, value)
        };
        if let Some(n) = &self.for_node {
            pair(f, "for", &n.to_string())?;
        }
        if let Some(n) = &self.by {
            pair(f, "by", &n.to_string())?;
        }
        if let Some(h) = &self.host {
            pair(f, "host", h)?;
        }
        if let Some(p) = &self.proto {
            pair(f, "proto", p)?;
        }
        for (n, v) in &self.extensions {
            pair(f, n, v)?;
        }
        Ok(())
    }
}

impl fmt::Display for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, el) in self.elements.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{el}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Forwarded {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> String {
        s.parse::<Forwarded>().unwrap_err().to_string()
    }

    #[test]
    fn hbone_forms() {
        let v4 = Forwarded::for_client("10.0.0.1:4321".parse().unwrap());
        assert_eq!(v4.to_string(), "for=\"10.0.0.1:4321\"");
        let v6 = Forwarded::for_client("[2001:db8::1]:4321".parse().unwrap());
        assert_eq!(v6.to_string(), "for=\"[2001:db8::1]:4321\"");
        for f in [v4, v6] {
            assert_eq!(ok(&f.to_string()), f);
            assert!(f.client_addr().is_some());
        }
        assert_eq!(
            ok("for=10.0.0.1").client_ip(),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(ok("for=10.0.0.1").client_addr(), None);
    }

    #[test]
    fn rfc7239_examples() {
        // RFC 7239 §4 and §7.4 examples.
        let f = ok("for=\"_gazonk\"");
        assert_eq!(
            f.client().unwrap().name,
            NodeName::Obfuscated("_gazonk".into())
        );
        let f = ok("For=\"[2001:db8:cafe::17]:4711\"");
        assert_eq!(
            f.client_addr(),
            Some("[2001:db8:cafe::17]:4711".parse().unwrap())
        );
        let f = ok("for=192.0.2.60;proto=http;by=203.0.113.43");
        assert_eq!(f.elements()[0].proto.as_deref(), Some("http"));
        assert_eq!(
            f.elements()[0].by.as_ref().unwrap().to_string(),
            "203.0.113.43"
        );
        let f = ok("for=192.0.2.43, for=198.51.100.17");
        assert_eq!(f.elements().len(), 2);
        assert_eq!(f.client_ip(), Some("192.0.2.43".parse().unwrap()));
        let f =
            ok("for=unknown, for=\"_hidden:_port\" ;host=\"example.com:8080\"; x-ext=\"a\\\"b\"");
        assert_eq!(f.client().unwrap().name, NodeName::Unknown);
        let second = &f.elements()[1];
        assert_eq!(second.host.as_deref(), Some("example.com:8080"));
        assert_eq!(second.extensions, vec![("x-ext".into(), "a\"b".into())]);
        // Everything re-encodes to something that parses back equal.
        for s in [
            "for=\"_gazonk\"",
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            "for=unknown, for=\"_hidden:_port\" ;host=\"example.com:8080\"; x-ext=\"a\\\"b\"",
            ", ,for=1.2.3.4,",
        ] {
            let f = ok(s);
            assert_eq!(ok(&f.to_string()), f, "{s}");
        }
    }

    #[test]
    fn clear_errors() {
        assert!(err("").contains("no elements"));
        assert!(err(" , ").contains("no elements"));
        assert!(err("for").contains("expected '=' after \"for\""));
        assert!(err("for=").contains("expected a token or quoted string"));
        assert!(err("for=\"1.2.3.4").contains("unterminated quoted string"));
        assert!(err("for=2001:db8::1").contains("must be a quoted string"));
        assert!(err("for=1.2.3.4:80").contains("must be a quoted string"));
        assert!(err("for=\"2001:db8::1\"").contains("must be in brackets"));
        assert!(err("for=\"[2001:db8::1\"").contains("without a closing"));
        assert!(err("for=\"[1.2.3.4]\"").contains("not an IPv6 address"));
        assert!(err("for=\"1.2.3.4:99999\"").contains("99999"));
        assert!(err("for=\"1.2.3.4:x\"").contains("neither 0-65535"));
        assert!(err("for=example.com").contains("not an IPv4 address"));
        assert!(err("for=1.2.3.4;for=5.6.7.8").contains("given twice"));
        assert!(err("proto=\"1http\"").contains("not a URI scheme"));
        {
            let e = err("for=1.2.3.4 x");
            assert!(e.contains("unexpected 'x' at byte 12"), "{e}");
        }
        assert!(err("for=\"a\u{1}\"").contains("not allowed in quoted string"));
    }
}
