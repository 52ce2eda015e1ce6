//! W3C trace context (`traceparent`) and W3C baggage (`baggage`) headers.
//!
//! Both are carried on the CONNECT so that traces and workload metadata cross the tunnel.
//! Parsing follows the W3C Trace Context (Level 1, §3.2) and Baggage (§3.3) grammars exactly;
//! values that parse re-encode to text that parses back equal.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A `traceparent` header: `<version>-<trace-id>-<parent-id>-<flags>` in lowercase hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// Version; `00` today. Higher versions parse (forward compatibility, §3.2.4) and are
    /// re-encoded with only the four version-00 fields.
    pub version: u8,
    /// 16-byte trace id, never all zero.
    pub trace_id: [u8; 16],
    /// 8-byte parent (span) id, never all zero.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Length of a version-00 traceparent: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const TRACEPARENT_LEN: usize = 55;

impl FromStr for TraceParent {
    type Err = Error;

    fn from_str(s: &str) -> Result<TraceParent> {
        let err = |reason: &str| Error::wire("traceparent", s, reason);
        let b = s.as_bytes();
        if b.len() < TRACEPARENT_LEN {
            return Err(err("too short; expected 00-<32 hex>-<16 hex>-<2 hex>"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(err(
                "fields must be separated by '-' as 00-<32 hex>-<16 hex>-<2 hex>",
            ));
        }
        let version =
            hex_byte(&b[0..2]).ok_or_else(|| err("version is not 2 lowercase hex digits"))?;
        if version == 0xff {
            return Err(err("version ff is forbidden"));
        }
        if version == 0 && b.len() != TRACEPARENT_LEN {
            return Err(err("version 00 must be exactly 55 characters"));
        }
        if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
            return Err(err("fields after the flags must follow a '-'"));
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])
                .ok_or_else(|| err("trace-id is not 32 lowercase hex digits"))?;
        }
        let mut parent_id = [0u8; 8];
        for (i, out) in parent_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])
                .ok_or_else(|| err("parent-id is not 16 lowercase hex digits"))?;
        }
        let flags =
            hex_byte(&b[53..55]).ok_or_else(|| err("flags are not 2 lowercase hex digits"))?;
        if trace_id == [0; 16] {
            return Err(err("trace-id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(err("parent-id is all zeros"));
        }
        Ok(TraceParent {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}-", self.version)?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// A `baggage` header: a list of `key=value` members with optional `;property` parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Baggage {
    members: Vec<BaggageMember>,
}

/// One baggage list member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaggageMember {
    /// The key (an RFC 7230 token).
    pub key: String,
    /// The value, percent-decoded.
    pub value: String,
    /// Properties, as given (`key` or `key=value`, whitespace trimmed).
    pub properties: Vec<String>,
}

/// W3C Baggage §3.3.1 limits: at most 180 list members (the grammar's `0*179` more after the
/// first) and 8192 bytes for the whole header.
pub const BAGGAGE_MAX_MEMBERS: usize = 180;
/// See [`BAGGAGE_MAX_MEMBERS`].
pub const BAGGAGE_MAX_BYTES: usize = 8192;

impl Baggage {
    /// Members in order.
    pub fn members(&self) -> &[BaggageMember] {
        &self.members
    }

    /// The decoded value of the first member named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value.as_str())
    }

    /// Append a member; the key must be a token.
    pub fn push(&mut self, key: &str, value: &str) -> Result<()> {
        if key.is_empty() || !key.bytes().all(is_tchar) {
            return Err(Error::wire("baggage", key, "key must be a non-empty token"));
        }
        if self.members.len() >= BAGGAGE_MAX_MEMBERS {
            return Err(Error::wire("baggage", key, "too many members"));
        }
        self.members.push(BaggageMember {
            key: key.to_owned(),
            value: value.to_owned(),
            properties: Vec::new(),
        });
        Ok(())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// W3C Baggage §3.3.1.4 `baggage-octet`: printable ASCII except `"`, `,`, `;`, `\` and space.
fn is_baggage_octet(c: u8) -> bool {
    matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

impl FromStr for Baggage {
    type Err = Error;

    fn from_str(s: &str) -> Result<Baggage> {
        let err = |reason: String| Error::wire("baggage", s, reason);
        if s.len() > BAGGAGE_MAX_BYTES {
            return Err(err(format!("longer than {BAGGAGE_MAX_BYTES} bytes")));
        }
        let mut members = Vec::new();
        for (i, raw) in s.split(',').enumerate() {
            if i >= BAGGAGE_MAX_MEMBERS {
                return Err(err(format!("more than {BAGGAGE_MAX_MEMBERS} members")));
            }
            let mut parts = raw.split(';');
            let kv = ows(parts.next().unwrap_or_default());
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| err(format!("member {i} is not key=value")))?;
            let (key, value) = (ows(key), ows(value));
            if key.is_empty() || !key.bytes().all(is_tchar) {
                return Err(err(format!("member {i}: key {key:?} is not a token")));
            }
            let value =
                percent_decode(value).map_err(|r| err(format!("member {i} ({key}): value {r}")))?;
            let mut properties = Vec::new();
            for prop in parts {
                let prop = ows(prop);
                let (pk, pv) = match prop.split_once('=') {
                    Some((k, v)) => (ows(k), Some(ows(v))),
                    None => (prop, None),
                };
                if pk.is_empty() || !pk.bytes().all(is_tchar) {
                    return Err(err(format!(
                        "member {i} ({key}): property key {pk:?} is not a token"
                    )));
                }
                match pv {
                    Some(v) if !v.bytes().all(is_baggage_octet) => {
                        return Err(err(format!(
                            "member {i} ({key}): property {pk} has a value with a character outside baggage-octet"
                        )));
                    }
                    Some(v) => properties.push(format!("{pk}={v}")),
                    None => properties.push(pk.to_owned()),
                }
            }
            members.push(BaggageMember {
                key: key.to_owned(),
                value,
                properties,
            });
        }
        Ok(Baggage { members })
    }
}

fn percent_decode(v: &str) -> std::result::Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let byte = b
                    .get(i + 1..i + 3)
                    .and_then(|two| Some(hex_digit_any(two[0])? << 4 | hex_digit_any(two[1])?))
                    .ok_or_else(|| format!("has a bad percent-escape at byte {i}"))?;
                out.push(byte);
                i += 3;
            }
            c if is_baggage_octet(c) => {
                out.push(c);
                i += 1;
            }
            c => return Err(format!("has byte 0x{c:02x}, not allowed unescaped")),
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded".to_owned())
}

fn hex_digit_any(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'F' => Some(c - b'A' + 10),
        c => hex_digit(c),
    }
}

impl fmt::Display for Baggage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}=", m.key)?;
            for &b in m.value.as_bytes() {
                // '%' itself is a baggage-octet but must be escaped to survive decoding.
                if is_baggage_octet(b) && b != b'%' {
                    write!(f, "{}", char::from(b))?;
                } else {
                    write!(f, "%{b:02X}")?;
                }
            }
            for p in &m.properties {
                write!(f, ";{p}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_round_trip() {
        let t: TraceParent = TP.parse().unwrap();
        assert_eq!(t.version, 0);
        assert_eq!(t.trace_id[0], 0x0a);
        assert_eq!(t.parent_id[7], 0x31);
        assert!(t.sampled());
        assert_eq!(t.to_string(), TP);
        // A future version with extra fields parses and re-encodes its known fields.
        let future = format!("cc{}-extra", &TP[2..]);
        let t: TraceParent = future.parse().unwrap();
        assert_eq!(t.version, 0xcc);
        assert_eq!(t.to_string(), format!("cc{}", &TP[2..]));
    }

    #[test]
    fn traceparent_errors() {
        let err = |s: &str| s.parse::<TraceParent>().unwrap_err().to_string();
        assert!(err("").contains("too short"));
        assert!(err(&TP.replace('-', "_")).contains("separated by '-'"));
        assert!(err(&format!("ff{}", &TP[2..])).contains("version ff"));
        assert!(err(&format!("{TP}-x")).contains("exactly 55"));
        assert!(err(&format!("01{}x", &TP[2..])).contains("after the flags"));
        assert!(err(&TP.to_uppercase()).contains("lowercase hex"));
        assert!(
            err(&TP.replace("0af7651916cd43dd8448eb211c80319c", &"0".repeat(32)))
                .contains("trace-id is all zeros")
        );
        assert!(
            err(&TP.replace("b7ad6b7169203331", &"0".repeat(16)))
                .contains("parent-id is all zeros")
        );
        assert!(err(&TP.replace("b7ad", "b7az")).contains("parent-id is not"));
        assert!(err(&TP.replace("-01", "-0g")).contains("flags"));
        // Multi-byte characters at field positions are rejected, not sliced.
        assert!(err(&format!("0é{}", &TP[3..])).contains("traceparent"));
    }

    #[test]
    fn baggage_parse_and_encode() {
        let b: Baggage = "userId=alice, serverNode = DF%2028 ;prop1;p2=x , isProduction=false"
            .parse()
            .unwrap();
        assert_eq!(b.members().len(), 3);
        assert_eq!(b.get("userId"), Some("alice"));
        assert_eq!(b.get("serverNode"), Some("DF 28"));
        assert_eq!(b.members()[1].properties, vec!["prop1", "p2=x"]);
        assert_eq!(
            b.to_string(),
            "userId=alice,serverNode=DF%2028;prop1;p2=x,isProduction=false"
        );
        assert_eq!(b.to_string().parse::<Baggage>().unwrap(), b);

        let mut mine = Baggage::default();
        mine.push("k8s.namespace.name", "default").unwrap();
        mine.push("odd", "a,b;c\"d\\e %é").unwrap();
        let text = mine.to_string();
        assert_eq!(text.parse::<Baggage>().unwrap(), mine, "{text}");
        assert!(mine.push("bad key", "v").is_err());
    }

    #[test]
    fn baggage_errors() {
        let err = |s: &str| s.parse::<Baggage>().unwrap_err().to_string();
        assert!(err("").contains("member 0 is not key=value"));
        assert!(err("a=1,,b=2").contains("member 1 is not key=value"));
        assert!(err("a b=1").contains("key \"a b\" is not a token"));
        assert!(err("a=x y").contains("byte 0x20"));
        assert!(err("a=%zz").contains("bad percent-escape"));
        assert!(err("a=%").contains("bad percent-escape"));
        assert!(err("a=%ff").contains("not UTF-8"));
        assert!(err("a=1;=x").contains("property key"));
        assert!(err("a=1;p=\"q\"").contains("outside baggage-octet"));
        assert!(err(&"a=1,".repeat(181)).contains("more than 180 members"));
        assert!(err(&format!("a={}", "x".repeat(9000))).contains("longer than 8192"));
    }
}
