//! The CONNECT target: `:authority` in authority-form (RFC 9110 §9.3.6, RFC 9113 §8.5).
//!
//! HBONE carries `ip:port` (IPv6 in brackets); `host:port` is accepted too for hostname
//! destinations. The port is mandatory and non-zero: a CONNECT without one names nothing to dial.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::error::{Error, Result};

/// RFC 1035 §2.3.4: a name is at most 253 characters in text form, a label at most 63.
const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Where a CONNECT asks to go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Authority {
    /// `1.2.3.4:80` or `[::1]:80`.
    Addr(SocketAddr),
    /// `name.example:80` (a DNS name, kept as given).
    Host {
        /// The host name.
        host: String,
        /// The port (non-zero).
        port: u16,
    },
}

impl Authority {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Authority::Addr(a) => a.port(),
            Authority::Host { port, .. } => *port,
        }
    }

    /// The socket address, when the authority is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Authority::Addr(a) => Some(*a),
            Authority::Host { .. } => None,
        }
    }

    /// The IP, when the authority is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.socket_addr().map(|a| a.ip())
    }
}

impl From<SocketAddr> for Authority {
    fn from(a: SocketAddr) -> Authority {
        Authority::Addr(a)
    }
}

impl FromStr for Authority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Authority> {
        let err = |reason: &str| Error::wire("authority", s, reason);
        if s.is_empty() {
            return Err(err("empty; expected ip:port, [ipv6]:port or host:port"));
        }
        if s.starts_with('[') {
            let close = s
                .find(']')
                .ok_or_else(|| err("'[' without a closing ']'"))?;
            let ip_text = &s[1..close];
            let ip: std::net::Ipv6Addr = ip_text
                .split('%')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| err("not an IPv6 address inside [...]"))?;
            let rest = &s[close + 1..];
            let port_text = rest
                .strip_prefix(':')
                .ok_or_else(|| err("missing :port after ]"))?;
            let port = parse_port(s, port_text)?;
            // Keep a numeric zone id (fe80::1%2) if present, as std does.
            let addr = match ip_text.split_once('%') {
                Some((_, zone)) => {
                    let scope: u32 = zone
                        .parse()
                        .map_err(|_| err("IPv6 zone id must be numeric"))?;
                    SocketAddr::V6(std::net::SocketAddrV6::new(ip, port, 0, scope))
                }
                None => SocketAddr::new(IpAddr::V6(ip), port),
            };
            return Ok(Authority::Addr(addr));
        }
        let (host, port_text) = s
            .rsplit_once(':')
            .ok_or_else(|| err("missing :port (CONNECT needs host:port)"))?;
        if host.contains(':') {
            return Err(err("IPv6 address must be in brackets, as [addr]:port"));
        }
        let port = parse_port(s, port_text)?;
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            return Ok(Authority::Addr(SocketAddr::new(IpAddr::V4(ip), port)));
        }
        check_host(s, host)?;
        Ok(Authority::Host {
            host: host.to_owned(),
            port,
        })
    }
}

fn parse_port(input: &str, p: &str) -> Result<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::wire(
            "authority",
            input,
            "port must be 1-65535 in decimal",
        ));
    }
    match p.parse::<u16>() {
        Ok(0) => Err(Error::wire("authority", input, "port 0 cannot be dialled")),
        Ok(port) => Ok(port),
        Err(_) => Err(Error::wire(
            "authority",
            input,
            "port must be 1-65535 in decimal",
        )),
    }
}

fn check_host(input: &str, host: &str) -> Result<()> {
    if host.len() > MAX_HOST_LEN {
        return Err(Error::wire(
            "authority",
            input,
            format!("host longer than {MAX_HOST_LEN} characters"),
        ));
    }
    // A fully qualified name may end in one '.'.
    let name = host.strip_suffix('.').unwrap_or(host);
    // RFC 1123 §2.1: a top-level label is never all-numeric, so this was meant as an IPv4.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Error::wire("authority", input, "not a valid IPv4 address"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(Error::wire("authority", input, "host has an empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(Error::wire(
                "authority",
                input,
                format!("host label longer than {MAX_LABEL_LEN} characters"),
            ));
        }
        // Letters, digits, '-' (RFC 1123 §2.1) and '_' (used by service-discovery names).
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(Error::wire(
                "authority",
                input,
                format!("host may hold only letters, digits, '-', '_' and '.', found {c:?}"),
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Error::wire(
                "authority",
                input,
                "host label may not start or end with '-'",
            ));
        }
    }
    Ok(())
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authority::Addr(a) => write!(f, "{a}"),
            Authority::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Authority {
        s.parse().unwrap()
    }

    fn err(s: &str) -> String {
        s.parse::<Authority>().unwrap_err().to_string()
    }

    #[test]
    fn parses_each_form_and_round_trips() {
        assert_eq!(
            ok("10.0.0.1:8080"),
            Authority::Addr("10.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(ok("[::1]:80"), Authority::Addr("[::1]:80".parse().unwrap()));
        assert_eq!(ok("[fe80::1%2]:80").to_string(), "[fe80::1%2]:80");
        assert_eq!(
            ok("reviews.default.svc.cluster.local:9080"),
            Authority::Host {
                host: "reviews.default.svc.cluster.local".into(),
                port: 9080
            }
        );
        for s in ["10.0.0.1:1", "[2001:db8::1]:65535", "a.b_c-d.e.:443"] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
        assert_eq!(ok("1.2.3.4:5").port(), 5);
        assert_eq!(ok("h:5").ip(), None);
        assert_eq!(ok("[::1]:5").ip(), Some("::1".parse().unwrap()));
    }

    #[test]
    fn clear_errors() {
        assert!(err("").contains("empty"));
        assert!(err("10.0.0.1").contains("missing :port"));
        assert!(err("10.0.0.1:").contains("port must be 1-65535"));
        assert!(err("10.0.0.1:0").contains("port 0"));
        assert!(err("10.0.0.1:65536").contains("port must be 1-65535"));
        assert!(err("10.0.0.1:+80").contains("port must be 1-65535"));
        assert!(err("::1:80").contains("must be in brackets"));
        assert!(err("[::1]").contains("missing :port after ]"));
        assert!(err("[::1:80").contains("without a closing"));
        assert!(err("[1.2.3.4]:80").contains("not an IPv6 address"));
        assert!(err("[fe80::1%eth0]:80").contains("zone id must be numeric"));
        assert!(err(":80").contains("empty host"));
        assert!(err("999.1.1.1:80").contains("not a valid IPv4"));
        assert!(err("1.2.3:80").contains("not a valid IPv4"));
        assert!(err("a..b:80").contains("empty label"));
        assert!(err("-a:80").contains("start or end with '-'"));
        assert!(err("a b:80").contains("found ' '"));
        assert!(err("user@host:80").contains("found '@'"));
        assert!(err(&format!("{}:80", "a".repeat(64))).contains("label longer than 63"));
        assert!(err(&format!("{}:80", "a.".repeat(200))).contains("longer than 253"));
        let e = Error::wire("authority", "x", "y");
        assert_eq!(e.status(), crate::wire::Status::BadRequest);
    }
}
