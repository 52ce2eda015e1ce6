//! HBONE certificate options: the client's workload certificate flags and `dev-certs`.

use std::path::PathBuf;

use clap::Args;

use crate::Error;

/// Workload certificate for the HBONE client (PEM files; `loadgen dev-certs` writes some).
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// Certificate chain (leaf first) whose URI SAN is the client's SPIFFE identity.
    #[arg(long)]
    pub cert: PathBuf,
    /// Private key of the certificate.
    #[arg(long)]
    pub key: PathBuf,
    /// Trust roots for the server's chain.
    #[arg(long)]
    pub roots: PathBuf,
    /// Expected SPIFFE identity of the server (repeatable).
    #[arg(long = "server-identity", required = true)]
    pub server_identity: Vec<String>,
}

impl ClientTlsArgs {
    pub fn config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
        let tls = |e: hbone::Error| Error::Invalid {
            what: "HBONE TLS settings",
            detail: e.to_string(),
        };
        let chain = hbone::certs::read_certs(&self.cert).map_err(tls)?;
        let key = hbone::certs::read_key(&self.key).map_err(tls)?;
        let roots = hbone::certs::read_certs(&self.roots).map_err(tls)?;
        let expected = self
            .server_identity
            .iter()
            .map(|s| s.parse::<hbone::Identity>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls)?;
        hbone::tls::client_config(chain, key, &roots, expected).map_err(tls)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DevCertsArgs {
    /// Directory to write root.pem, client.pem, client.key, server.pem, server.key into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

impl DevCertsArgs {
    /// Writes the files; returns (client identity, server identity).
    pub fn write(&self) -> Result<(String, String), Error> {
        use hbone::certs::{CaOptions, CertificateAuthority, LeafOptions};
        let gen_err = |e: hbone::Error| Error::Invalid {
            what: "dev-certs",
            detail: e.to_string(),
        };
        let ca =
            CertificateAuthority::new_root(&CaOptions::new("loadgen dev CA")).map_err(gen_err)?;
        let client =
            hbone::Identity::new(&self.trust_domain, "loadgen", "client").map_err(gen_err)?;
        let server =
            hbone::Identity::new(&self.trust_domain, "loadgen", "server").map_err(gen_err)?;
        let c = ca
            .issue(&client, &LeafOptions::default())
            .map_err(gen_err)?;
        let sv = ca
            .issue(&server, &LeafOptions::default())
            .map_err(gen_err)?;
        std::fs::create_dir_all(&self.out).map_err(|source| Error::Output {
            what: "certificates",
            path: self.out.clone(),
            source,
        })?;
        for (name, text) in [
            ("root.pem", ca.root_pem()),
            ("client.pem", c.chain_pem.clone()),
            ("client.key", c.key_pem.clone()),
            ("server.pem", sv.chain_pem.clone()),
            ("server.key", sv.key_pem.clone()),
        ] {
            let path = self.out.join(name);
            std::fs::write(&path, text).map_err(|source| Error::Output {
                what: "certificates",
                path,
                source,
            })?;
        }
        Ok((client.to_string(), server.to_string()))
    }
}
