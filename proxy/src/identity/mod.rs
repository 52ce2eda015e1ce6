//! Workload identities and their certificates.
//!
//! Owns: field-level SPIFFE checks for config errors (`spiffe`; the identity type is
//! `hbone::identity::Identity`), the built-in CA that signs per-workload leaves (`ca`), and the identity manager that keeps one valid certificate per local
//! workload identity and publishes immutable [`CertSet`] snapshots (`manager`).
//! Invariants: private keys are written to disk only with mode 0600, and only by replacing
//! the file atomically (write a temp file, then rename), so a reader never sees a partial
//! key or a key with wider permissions.

pub mod ca;
pub mod istio_ca;
pub mod manager;
pub mod spiffe;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use ca::{Ca, CaFiles, CertifiedKey};
pub use hbone::identity::Identity;
pub use istio_ca::{CaCall, IstioCaSigner};
pub use manager::{CertSet, IdentityManager, ManagerOptions, Signer, WorkloadCert};

/// Why a CA or certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "a CA already exists at {} (pass --force to replace it; certificates signed by the old root will no longer verify)",
        path.display()
    )]
    CaExists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("signing a certificate for {identity}: {reason}")]
    Sign { identity: String, reason: String },
    #[error("creating the CA: {0}")]
    Generate(String),
    #[error("no certificate for {identity} yet (last attempt: {last_error})")]
    Unavailable {
        identity: Identity,
        last_error: String,
    },
    #[error("the identity manager has stopped")]
    Stopped,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` atomically with `bytes`, created with `mode` (0600 for keys).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        IdentityError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}
