//! SPIFFE workload identities, as Istio names them: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! An [`Identity`] is always valid once built: the trust domain is a lowercase SPIFFE trust
//! domain name (`[a-z0-9._-]+`) and the namespace and service account are non-empty SPIFFE path
//! segments (`[A-Za-z0-9._-]+`, not `.` or `..`), per the SPIFFE-ID specification §2. The whole
//! URI is at most 2048 bytes (SPIFFE-ID §2.3). Parsing never panics on any input.
//!
//! Identities come from config (parsed with [`str::parse`]) or from a peer's leaf certificate
//! ([`Identity::from_leaf_cert`]: the first URI SAN that parses, like ztunnel).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, Result, excerpt};

const SCHEME: &str = "spiffe://";
/// SPIFFE-ID §2.3: "SPIFFE IDs ... MUST NOT exceed 2048 bytes".
const MAX_LEN: usize = 2048;

/// A SPIFFE identity of a Kubernetes-style workload: trust domain, namespace, service account.
///
/// Held as one shared string (the URI, scheme in lowercase) with the parts' offsets, so a
/// clone is a reference count: connection records and metric series keep identities per
/// connection. Ordering compares trust domain, then namespace, then service account.
#[derive(Clone)]
pub struct Identity {
    uri: Arc<str>,
    /// End of the trust domain; the namespace starts after `/ns/`.
    td_end: u16,
    ns_end: u16,
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

impl Eq for Identity {}

impl std::hash::Hash for Identity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uri.hash(state)
    }
}

impl PartialOrd for Identity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Identity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.trust_domain(),
            self.namespace(),
            self.service_account(),
        )
            .cmp(&(
                other.trust_domain(),
                other.namespace(),
                other.service_account(),
            ))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identity").field(&&*self.uri).finish()
    }
}

impl Identity {
    /// Build an identity from its parts, validating each as parsing would.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Identity> {
        let rendered = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_trust_domain(&rendered, trust_domain)?;
        check_segment(&rendered, "namespace", namespace)?;
        check_segment(&rendered, "service account", service_account)?;
        if rendered.len() > MAX_LEN {
            return Err(Error::identity(&rendered, too_long(rendered.len())));
        }
        Ok(Identity::from_parts(
            trust_domain,
            namespace,
            service_account,
        ))
    }

    /// Assembles checked parts (the length is within [`MAX_LEN`], so offsets fit in u16).
    fn from_parts(trust_domain: &str, namespace: &str, service_account: &str) -> Identity {
        let uri = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        let td_end = SCHEME.len() + trust_domain.len();
        let ns_end = td_end + "/ns/".len() + namespace.len();
        Identity {
            uri: uri.into(),
            td_end: td_end as u16,
            ns_end: ns_end as u16,
        }
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end as usize]
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[self.td_end as usize + "/ns/".len()..self.ns_end as usize]
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.uri[self.ns_end as usize + "/sa/".len()..]
    }

    /// The whole URI, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Istio's principal form: the URI without `spiffe://` (`cluster.local/ns/a/sa/b`).
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// The identity of the first URI SAN of a DER-encoded leaf certificate that parses as one
    /// (URI SANs that are not SPIFFE IDs are skipped, as ztunnel does).
    pub fn from_leaf_cert(der: &[u8]) -> Result<Identity> {
        let (ids, rejected) = cert_identities(der)?;
        ids.into_iter()
            .next()
            .ok_or(Error::NoIdentity { found: rejected })
    }
}

/// Every SPIFFE identity among a DER certificate's URI SANs, in certificate order, and the URI
/// SANs that did not parse (truncated, for error messages).
pub(crate) fn cert_identities(der: &[u8]) -> Result<(Vec<Identity>, Vec<String>)> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| Error::BadCertificate(format!("X.509 DER does not parse: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::BadCertificate(format!("subjectAltName extension: {e}")))?;
    let mut ids = Vec::new();
    let mut rejected = Vec::new();
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            match uri.parse::<Identity>() {
                Ok(id) => ids.push(id),
                Err(_) => rejected.push(excerpt(uri)),
            }
        }
    }
    Ok((ids, rejected))
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Identity> {
        if s.len() > MAX_LEN {
            return Err(Error::identity(s, too_long(s.len())));
        }
        let Some(rest) = strip_prefix_ignore_ascii_case(s, SCHEME) else {
            return Err(Error::identity(s, "must start with \"spiffe://\""));
        };
        let mut parts = rest.split('/');
        // `split` always yields at least one item.
        let trust_domain = parts.next().unwrap_or_default();
        check_trust_domain(s, trust_domain)?;
        let segments: Vec<&str> = parts.collect();
        let [ns_key, namespace, sa_key, service_account] = segments[..] else {
            return Err(Error::identity(
                s,
                format!(
                    "path must be /ns/<namespace>/sa/<service-account>, found {} segment(s)",
                    segments.len()
                ),
            ));
        };
        if ns_key != "ns" {
            return Err(Error::identity(
                s,
                format!(
                    "first path segment must be \"ns\", found {:?}",
                    excerpt(ns_key)
                ),
            ));
        }
        if sa_key != "sa" {
            return Err(Error::identity(
                s,
                format!(
                    "third path segment must be \"sa\", found {:?}",
                    excerpt(sa_key)
                ),
            ));
        }
        check_segment(s, "namespace", namespace)?;
        check_segment(s, "service account", service_account)?;
        Ok(Identity::from_parts(
            trust_domain,
            namespace,
            service_account,
        ))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// The scheme is case-insensitive (RFC 3986 §3.1); everything after it is not.
fn strip_prefix_ignore_ascii_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn too_long(len: usize) -> String {
    format!("{len} bytes, longer than the SPIFFE limit of {MAX_LEN}")
}

fn check_trust_domain(input: &str, td: &str) -> Result<()> {
    if td.is_empty() {
        return Err(Error::identity(input, "trust domain is empty"));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(Error::identity(
            input,
            format!(
                "trust domain may hold only lowercase letters, digits, '.', '-' and '_', found {c:?}"
            ),
        ));
    }
    Ok(())
}

fn check_segment(input: &str, what: &str, seg: &str) -> Result<()> {
    if seg.is_empty() {
        return Err(Error::identity(input, format!("{what} is empty")));
    }
    if seg == "." || seg == ".." {
        return Err(Error::identity(input, format!("{what} may not be {seg:?}")));
    }
    if let Some(c) = seg
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(Error::identity(
            input,
            format!("{what} may hold only letters, digits, '.', '-' and '_', found {c:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    fn err(s: &str) -> String {
        s.parse::<Identity>().unwrap_err().to_string()
    }

    #[test]
    fn parses_and_displays_round_trip() {
        let i = id("spiffe://cluster.local/ns/default/sa/bookinfo-ratings");
        assert_eq!(i.trust_domain(), "cluster.local");
        assert_eq!(i.namespace(), "default");
        assert_eq!(i.service_account(), "bookinfo-ratings");
        assert_eq!(
            i.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
        );
        assert_eq!(id(&i.to_string()), i);
        assert_eq!(
            Identity::new("cluster.local", "default", "bookinfo-ratings").unwrap(),
            i
        );
    }

    #[test]
    fn scheme_is_case_insensitive_rest_is_not() {
        assert_eq!(id("SPIFFE://td/ns/a/sa/b"), id("spiffe://td/ns/a/sa/b"));
        assert!(err("spiffe://TD/ns/a/sa/b").contains("lowercase"));
        assert_ne!(id("spiffe://td/ns/A/sa/b"), id("spiffe://td/ns/a/sa/b"));
    }

    #[test]
    fn clear_errors() {
        assert!(err("http://td/ns/a/sa/b").contains("must start with \"spiffe://\""));
        assert!(err("").contains("must start with"));
        assert!(err("spiffe://").contains("trust domain is empty"));
        assert!(err("spiffe:///ns/a/sa/b").contains("trust domain is empty"));
        assert!(err("spiffe://td").contains("found 0 segment(s)"));
        assert!(err("spiffe://td/ns/a/sa").contains("found 3 segment(s)"));
        assert!(err("spiffe://td/ns/a/sa/b/c").contains("found 5 segment(s)"));
        assert!(err("spiffe://td/ns/a/sa/b/").contains("found 5 segment(s)"));
        assert!(err("spiffe://td/nx/a/sa/b").contains("first path segment must be \"ns\""));
        assert!(err("spiffe://td/ns/a/sx/b").contains("third path segment must be \"sa\""));
        assert!(err("spiffe://td/ns//sa/b").contains("namespace is empty"));
        assert!(err("spiffe://td/ns/a/sa/").contains("service account is empty"));
        assert!(err("spiffe://td/ns/../sa/b").contains("namespace may not be \"..\""));
        assert!(err("spiffe://td/ns/a b/sa/b").contains("found ' '"));
        assert!(err("spiffe://td:8080/ns/a/sa/b").contains("found ':'"));
        assert!(err("spiffe://user@td/ns/a/sa/b").contains("found '@'"));
        assert!(err("spiffe://td/ns/a/sa/b?x=1").contains("found '?'"));
        assert!(err("spiffe://td/ns/a/sa/b#f").contains("found '#'"));
        let long = format!("spiffe://td/ns/a/sa/{}", "b".repeat(3000));
        let e = err(&long);
        assert!(e.contains("longer than the SPIFFE limit"), "{e}");
        assert!(
            e.len() < 400,
            "error message echoes the whole input: {}",
            e.len()
        );
    }

    #[test]
    fn new_validates_parts() {
        assert!(Identity::new("td", "a/b", "c").is_err());
        assert!(Identity::new("", "a", "c").is_err());
        assert!(Identity::new("td", "a", "").is_err());
    }

    #[test]
    fn ordering_and_hash() {
        use std::collections::HashSet;
        let mut v = [
            id("spiffe://b/ns/a/sa/a"),
            id("spiffe://a/ns/b/sa/a"),
            id("spiffe://a/ns/a/sa/b"),
            id("spiffe://a/ns/a/sa/a"),
        ];
        v.sort();
        let shown: Vec<String> = v.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            shown,
            [
                "spiffe://a/ns/a/sa/a",
                "spiffe://a/ns/a/sa/b",
                "spiffe://a/ns/b/sa/a",
                "spiffe://b/ns/a/sa/a"
            ]
        );
        let set: HashSet<Identity> = v.iter().cloned().chain(v.iter().cloned()).collect();
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn from_leaf_cert_takes_first_spiffe_uri() {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("example.com".try_into().unwrap()),
            rcgen::SanType::URI("https://example.com/x".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://td/ns/first/sa/x".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://td/ns/second/sa/x".try_into().unwrap()),
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let got = Identity::from_leaf_cert(cert.der()).unwrap();
        assert_eq!(got, id("spiffe://td/ns/first/sa/x"));
    }

    #[test]
    fn from_leaf_cert_errors() {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "https://example.com/x".try_into().unwrap(),
        )];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let e = Identity::from_leaf_cert(cert.der()).unwrap_err();
        assert!(matches!(e, Error::NoIdentity { .. }), "{e}");
        assert!(e.to_string().contains("https://example.com/x"), "{e}");

        let no_san = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            Identity::from_leaf_cert(no_san.der()),
            Err(Error::NoIdentity { .. })
        ));

        let e = Identity::from_leaf_cert(b"not a certificate").unwrap_err();
        assert!(matches!(e, Error::BadCertificate(_)), "{e}");
    }
}
