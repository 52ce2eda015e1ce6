//! A [`Signer`] backed by the Istio CA (`istio.v1.auth.IstioCertificateService`): a fresh
//! ECDSA P-256 key and CSR per certificate, signed by istiod on behalf of the node's pods.
//!
//! Owns: the CSR (one URI SAN, the workload's SPIFFE id; an empty subject, as ztunnel
//! sends), the checks on what comes back (a leaf, optional intermediates, then the root
//! bundle; the leaf's key is ours and its SPIFFE id is the one asked for; it is valid now),
//! and the trust roots, which follow the CA's answers (a root rotation reaches peers'
//! verification with the next certificate). The gRPC call itself is the caller's
//! [`CaCall`]: this module does no I/O, so it is tested with a scripted CA.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hbone::certs::Validity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::ca::CertifiedKey;
use super::manager::Signer;
use super::{Identity, IdentityError};

/// One `CreateCertificate` call: CSR PEM, requested lifetime in seconds, and the identity to
/// impersonate (the node's pods' in shared mode; `None` when the caller is the workload).
/// Returns the `cert_chain` strings, or why not.
pub type CaCall =
    Arc<dyn Fn(String, i64, Option<String>) -> Result<Vec<String>, String> + Send + Sync>;

/// How the node asks the Istio CA.
pub struct IstioCaSigner {
    call: CaCall,
    /// Ask on behalf of the workload (ztunnel's shared mode).
    impersonate: bool,
    /// The roots the last answer carried (at start: the configured root file's).
    roots: Mutex<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for IstioCaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioCaSigner")
            .field("impersonate", &self.impersonate)
            .finish_non_exhaustive()
    }
}

fn sign_err(identity: &Identity, reason: impl Into<String>) -> IdentityError {
    IdentityError::Sign {
        identity: identity.to_string(),
        reason: reason.into(),
    }
}

/// Every certificate in a PEM text, in order.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))
}

impl IstioCaSigner {
    /// `roots`: the trust anchors to verify peers with until the CA's first answer (the
    /// mounted `root-cert.pem`).
    pub fn new(call: CaCall, impersonate: bool, roots: Vec<CertificateDer<'static>>) -> Self {
        IstioCaSigner {
            call,
            impersonate,
            roots: Mutex::new(roots),
        }
    }

    fn csr(identity: &Identity) -> Result<(rcgen::KeyPair, String), String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating a P-256 key: {e}"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = identity
            .as_str()
            .to_string()
            .try_into()
            .map_err(|e| format!("{identity} cannot be a URI SAN: {e}"))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("building the CSR: {e}"))?;
        let pem = csr.pem().map_err(|e| format!("encoding the CSR: {e}"))?;
        Ok((key, pem))
    }

    /// Checks an answer and turns it into a certified key.
    fn accept(
        identity: &Identity,
        key: &rcgen::KeyPair,
        chain: Vec<String>,
    ) -> Result<(CertifiedKey, Vec<CertificateDer<'static>>), String> {
        if chain.is_empty() {
            return Err("the CA answered with an empty certificate chain".into());
        }
        if chain.len() < 2 {
            return Err(
                "the CA's answer has no root certificate (one element in cert_chain)".into(),
            );
        }
        let mut certs: Vec<CertificateDer<'static>> = Vec::new();
        for (i, pem) in chain[..chain.len() - 1].iter().enumerate() {
            let parsed = pem_certs(pem).map_err(|e| format!("cert_chain[{i}]: {e}"))?;
            if parsed.is_empty() {
                return Err(format!("cert_chain[{i}]: no certificate"));
            }
            certs.extend(parsed);
        }
        let roots = pem_certs(&chain[chain.len() - 1])
            .map_err(|e| format!("cert_chain[{}] (roots): {e}", chain.len() - 1))?;
        if roots.is_empty() {
            return Err("the CA's root bundle holds no certificate".into());
        }
        let leaf = &certs[0];
        let got =
            Identity::from_leaf_cert(leaf).map_err(|e| format!("the signed certificate: {e}"))?;
        if &got != identity {
            return Err(format!("the CA signed {got}, not the requested {identity}"));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("the signed certificate does not parse: {e}"))?;
        let spki = parsed
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .to_vec();
        if spki != key.public_key_raw() {
            return Err("the signed certificate is not for the key in the CSR".into());
        }
        let at = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let validity = Validity {
            not_before: at(parsed.validity().not_before),
            not_after: at(parsed.validity().not_after),
        };
        if validity.not_after <= SystemTime::now() {
            return Err("the signed certificate has already expired".into());
        }
        let chain_pem: String = chain[..chain.len() - 1]
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if !p.ends_with('\n') {
                    p.push('\n');
                }
                p
            })
            .collect();
        let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok((
            CertifiedKey {
                identity: identity.clone(),
                chain: certs,
                chain_pem,
                key: key_der,
                key_pem: key.serialize_pem(),
                validity,
            },
            roots,
        ))
    }
}

impl Signer for IstioCaSigner {
    fn sign(&self, identity: &Identity, lifetime: Duration) -> Result<CertifiedKey, IdentityError> {
        let (key, csr) = Self::csr(identity).map_err(|e| sign_err(identity, e))?;
        let impersonate = self.impersonate.then(|| identity.to_string());
        let secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        let chain = (self.call)(csr, secs, impersonate)
            .map_err(|e| sign_err(identity, format!("Istio CA: {e}")))?;
        let (ck, roots) = Self::accept(identity, &key, chain)
            .map_err(|e| sign_err(identity, format!("Istio CA: {e}")))?;
        *self.roots.lock().unwrap_or_else(|p| p.into_inner()) = roots;
        Ok(ck)
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.roots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn roots_pem(&self) -> String {
        self.roots()
            .iter()
            .map(|der| hbone::certs::to_pem("CERTIFICATE", der))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbone::certs::{CaOptions, CertificateAuthority};

    fn new_ca() -> Arc<CertificateAuthority> {
        Arc::new(CertificateAuthority::new_root(&CaOptions::new("test CA")).unwrap())
    }

    fn valid(secs: u64) -> Validity {
        Validity::starting_now(Duration::from_secs(secs))
    }

    /// A CA that signs whatever identity the CSR's impersonation names, like istiod.
    fn scripted(ca: Arc<CertificateAuthority>) -> CaCall {
        Arc::new(move |csr: String, secs: i64, who: Option<String>| {
            let who = who.ok_or("no impersonated identity")?;
            let id: Identity = who.parse().map_err(|e| format!("{e}"))?;
            let mut chain = ca
                .sign_csr(&csr, &id, valid(secs as u64))
                .map_err(|e| e.to_string())?;
            chain.push(ca.root_pem());
            Ok(chain)
        })
    }

    #[test]
    fn csr_round_trip_with_a_ca_that_signs_it() {
        let ca = new_ca();
        let signer = IstioCaSigner::new(scripted(ca.clone()), true, vec![]);
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        let ck = signer.sign(&id, Duration::from_secs(3600)).unwrap();
        assert_eq!(ck.identity, id);
        assert_eq!(Identity::from_leaf_cert(&ck.chain[0]).unwrap(), id);
        assert_eq!(signer.roots(), vec![ca.root_der().clone()]);
    }

    #[test]
    fn bad_answers_are_errors_that_say_why() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        let other: Identity = "spiffe://cluster.local/ns/shop/sa/other".parse().unwrap();
        let ca = new_ca();
        type Answer = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;
        let answer = |f: Answer| -> CaCall { Arc::new(move |csr: String, _, _| Ok(f(&csr))) };
        let root = ca.root_pem();
        let cases: Vec<(CaCall, &str)> = vec![
            (answer(Box::new(|_| vec![])), "empty certificate chain"),
            (
                answer(Box::new(|_| vec!["x".into()])),
                "no root certificate",
            ),
            (
                {
                    let (ca, other, root) = (ca.clone(), other.clone(), root.clone());
                    answer(Box::new(move |csr| {
                        let mut c = ca.sign_csr(csr, &other, valid(60)).unwrap();
                        c.push(root.clone());
                        c
                    }))
                },
                "not the requested",
            ),
            (
                {
                    let (ca, id, root) = (ca.clone(), id.clone(), root.clone());
                    // A certificate for a key that is not the CSR's.
                    answer(Box::new(move |_| {
                        let (_, csr) = IstioCaSigner::csr(&id).unwrap();
                        let mut c = ca.sign_csr(&csr, &id, valid(60)).unwrap();
                        c.push(root.clone());
                        c
                    }))
                },
                "not for the key in the CSR",
            ),
            (
                Arc::new(|_, _, _| Err("status Unavailable: connection refused".into())),
                "connection refused",
            ),
        ];
        for (call, want) in cases {
            let signer = IstioCaSigner::new(call, true, vec![]);
            let err = signer
                .sign(&id, Duration::from_secs(60))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
