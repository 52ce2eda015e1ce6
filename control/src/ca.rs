//! The Istio CA client: `/istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Owns: the call (CSR in, PEM chain out), its deadline, the channel to the CA (rebuilt
//! when the root file's content changes, as ztunnel rebuilds on a root rotation), and the
//! reading of the answer ([`split_chain`]). Key and CSR generation, the SAN check on the
//! leaf, caching and rotation belong to the proxy's identity manager.
//!
//! Invariants: one request per call, never retried here (the identity manager owns
//! backoff); every call carries the token and cluster id read at call time; an answer with
//! fewer than two elements is an error (leaf, then at least the root bundle); the call
//! never outlives its deadline.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prost_types::value::Kind;
use prost_types::{Struct, Value};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::Error;
use crate::grpc::{self, ChannelConfig, IstiodChannel, RootCa};
use crate::pb::ca::IstioCertificateRequest;
use crate::pb::ca::istio_certificate_service_client::IstioCertificateServiceClient;

/// The metadata key istiod reads to sign for a workload on the caller's node.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// A default per-call deadline: long enough for istiod to run a TokenReview against a slow
/// API server (seconds), short enough that a hung CA is retried by the identity manager's
/// backoff well within a certificate's half-life.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel in use and the root file content it was built with.
struct Cached {
    roots: Option<Vec<u8>>,
    channel: IstiodChannel,
}

/// A client of the Istio CA. Cheap to share (`Arc`); calls must run on the control runtime.
pub struct CaClient {
    config: ChannelConfig,
    timeout: Duration,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.config.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// Nothing is dialed until the first call. `timeout` bounds each call, dial included.
    pub fn new(config: ChannelConfig, timeout: Duration) -> CaClient {
        CaClient {
            config,
            timeout,
            cached: Mutex::new(None),
        }
    }

    /// The channel to use now: the cached one unless the root file changed.
    fn channel(&self) -> Result<IstiodChannel, Error> {
        let roots = match &self.config.root {
            RootCa::File(path) => match std::fs::read(path) {
                Ok(b) => Some(b),
                Err(e) => {
                    // Keep a working channel through a root file briefly missing (a
                    // ConfigMap update swaps a symlink); only a first build must fail.
                    let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(c) = cached.as_ref() {
                        tracing::warn!(path = %path.display(), error = %e, "cannot re-read the CA root file; keeping the current channel");
                        return Ok(c.channel.clone());
                    }
                    return Err(Error::Roots {
                        from: self.config.root.describe(),
                        reason: e.to_string(),
                    });
                }
            },
            _ => None,
        };
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref()
            && c.roots == roots
        {
            return Ok(c.channel.clone());
        }
        match grpc::connect_lazy(&self.config) {
            Ok(channel) => {
                if cached.is_some() {
                    tracing::info!(address = %self.config.address, "CA roots changed; new channel to the CA");
                }
                *cached = Some(Cached {
                    roots,
                    channel: channel.clone(),
                });
                Ok(channel)
            }
            Err(e) => match cached.as_ref() {
                // A half-written root file: keep the old channel, try again next call.
                Some(c) => {
                    tracing::warn!(error = %e, "cannot rebuild the CA channel; keeping the current one");
                    Ok(c.channel.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Asks the CA to sign `csr_pem` for `validity`, on behalf of `impersonate` (a SPIFFE
    /// URI; shared mode) or of the caller's own identity (`None`; dedicated mode). Returns
    /// `cert_chain`: leaf first, root bundle last, at least two elements.
    pub async fn create_certificate(
        &self,
        csr_pem: &str,
        validity: Duration,
        impersonate: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let channel = self.channel()?;
        let metadata = impersonate.map(|id| Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_string(),
                Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]),
        });
        let mut req = channel.request(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
            metadata,
        })?;
        // Sent as `grpc-timeout`, so istiod stops working on an answer we will not wait for.
        req.set_timeout(self.timeout);
        let mut client = IstioCertificateServiceClient::new(channel.channel());
        let answer = tokio::time::timeout(self.timeout, client.create_certificate(req)).await;
        let chain = match answer {
            Err(_) => {
                return Err(Error::Timeout {
                    address: self.config.address.clone(),
                    after: self.timeout,
                });
            }
            Ok(Err(status)) => {
                return Err(grpc::status_error(channel.address(), &status, self.timeout));
            }
            Ok(Ok(resp)) => resp.into_inner().cert_chain,
        };
        match chain.len() {
            0 => Err(Error::EmptyChain),
            1 => Err(Error::NoRoot),
            _ => Ok(chain),
        }
    }
}

/// A CA answer taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitChain {
    /// The leaf certificate (PEM).
    pub leaf: String,
    /// Intermediates, leaf side first (PEM, one certificate each).
    pub intermediates: Vec<String>,
    /// The trust anchors of the root bundle (PEM, one certificate each).
    pub roots: Vec<String>,
}

/// Reads `cert_chain` as istiod writes it: element 0 the leaf, the last element the root
/// bundle (several roots concatenated during a root rotation), intermediates between. An
/// element may hold more than one certificate: extra ones after the leaf count as
/// intermediates. Each certificate block must decode (PEM, base64); parsing the DER is
/// the caller's (it builds its certificate types from it).
pub fn split_chain(chain: Vec<String>) -> Result<SplitChain, Error> {
    let n = chain.len();
    match n {
        0 => return Err(Error::EmptyChain),
        1 => return Err(Error::NoRoot),
        _ => {}
    }
    let mut leaf = None;
    let mut intermediates = Vec::new();
    let mut roots = Vec::new();
    for (index, element) in chain.iter().enumerate() {
        let role = match index {
            0 => "leaf",
            i if i + 1 == n => "root bundle",
            _ => "intermediate",
        };
        let certs = pem_blocks(element).map_err(|reason| Error::BadChain {
            index,
            role,
            reason,
        })?;
        match role {
            "leaf" => {
                let mut it = certs.into_iter();
                leaf = it.next();
                intermediates.extend(it);
            }
            "root bundle" => roots = certs,
            _ => intermediates.extend(certs),
        }
    }
    let leaf = leaf.ok_or(Error::EmptyChain)?;
    Ok(SplitChain {
        leaf,
        intermediates,
        roots,
    })
}

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Each certificate block of a PEM text, checked to decode, as its own PEM text.
fn pem_blocks(pem: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else {
            return Err(format!("certificate {} has no END line", out.len() + 1));
        };
        let block = &after[..end + END.len()];
        CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| format!("certificate {} is not valid PEM: {e}", out.len() + 1))?;
        out.push(format!("{block}\n"));
        rest = &after[end + END.len()..];
    }
    if out.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    #[test]
    fn splits_leaf_intermediates_and_root_bundle() {
        let (leaf, int, r1, r2) = (cert("leaf"), cert("int"), cert("r1"), cert("r2"));
        let s = split_chain(vec![leaf.clone(), int.clone(), format!("{r1}{r2}")]).unwrap();
        assert_eq!(s.leaf.trim(), leaf.trim());
        assert_eq!(s.intermediates.len(), 1);
        assert_eq!(s.intermediates[0].trim(), int.trim());
        assert_eq!(s.roots.len(), 2);
        assert_eq!(s.roots[1].trim(), r2.trim());

        // Leaf and root only; a leaf element carrying its chain.
        let s = split_chain(vec![format!("{leaf}{int}"), r1.clone()]).unwrap();
        assert_eq!(s.intermediates.len(), 1);
        assert_eq!(s.roots.len(), 1);
    }

    #[test]
    fn bad_chains_are_named() {
        assert!(matches!(split_chain(vec![]), Err(Error::EmptyChain)));
        assert!(matches!(split_chain(vec![cert("l")]), Err(Error::NoRoot)));
        let e = split_chain(vec![cert("l"), "junk".into()]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::BadChain {
                    index: 1,
                    role: "root bundle",
                    ..
                }
            ),
            "{e}"
        );
        let broken = format!("{BEGIN}\n!!!!\n{END}\n");
        let e = split_chain(vec![broken, cert("r")]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::BadChain {
                    index: 0,
                    role: "leaf",
                    ..
                }
            ),
            "{e}"
        );
        let e = split_chain(vec![format!("{BEGIN}\nAAAA"), cert("r")]).unwrap_err();
        assert!(e.to_string().contains("no END line"), "{e}");
    }
}
