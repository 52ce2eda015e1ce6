//! The identity manager: one valid certificate per wanted workload identity, renewed at
//! half-life, published as immutable [`CertSet`] snapshots.
//!
//! Runs on its own control-plane thread; nothing here is touched by a core on a handshake.
//! Cores get a `CertSet` by message (the `publish` callback) and build their TLS configs
//! from it. State per identity: the current certificate (if any), when to act next, and the
//! retry backoff. Invariants:
//! - a certificate is replaced only by a newer one, or dropped when it expires: a failed
//!   renewal keeps the current certificate and retries with exponential backoff
//!   (`min_backoff` doubling up to `max_backoff`, 1 s..60 s by default);
//! - renewal is due at half the certificate's remaining validity at issue time (Istio's
//!   default grace ratio is 0.5 too);
//! - every published set is complete and immutable; `generation` increases by one per set.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ca::{Ca, CertifiedKey, DEFAULT_LEAF_LIFETIME};
use super::{Identity, IdentityError, write_atomic};

/// Who signs leaves: the built-in CA, or (later) an external CA. Also the test seam for
/// signing failures.
pub trait Signer: Send + Sync + 'static {
    fn sign(&self, identity: &Identity, lifetime: Duration) -> Result<CertifiedKey, IdentityError>;
    /// The trust anchors peers' certificates must chain to.
    fn roots(&self) -> Vec<CertificateDer<'static>>;
    /// The same roots in PEM, for the files `ManagerOptions::write_dir` asks for.
    fn roots_pem(&self) -> String;
}

impl Signer for Ca {
    fn sign(&self, identity: &Identity, lifetime: Duration) -> Result<CertifiedKey, IdentityError> {
        self.sign_leaf(identity, lifetime)
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.root_der().clone()]
    }

    fn roots_pem(&self) -> String {
        self.root_pem().to_string()
    }
}

/// Settings; `Default` is production's.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Leaf lifetime asked of the signer (24 h; tests use seconds).
    pub lifetime: Duration,
    /// First retry delay after a failed signing (1 s).
    pub min_backoff: Duration,
    /// Longest retry delay (60 s): bounded so a recovered CA is used within a minute.
    pub max_backoff: Duration,
    /// If set, each certificate is also written to
    /// `DIR/<trust-domain>/<namespace>/<service-account>/{cert-chain.pem,key.pem,root-cert.pem}`
    /// (key 0600), for tools and debugging.
    pub write_dir: Option<PathBuf>,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            lifetime: DEFAULT_LEAF_LIFETIME,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            write_dir: None,
        }
    }
}

/// One workload's certificate and key.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// The key in the form rustls' `with_single_cert` takes.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// An immutable set of certificates, one per identity, with the trust roots.
#[derive(Debug, Default)]
pub struct CertSet {
    certs: BTreeMap<Identity, Arc<WorkloadCert>>,
    roots: Arc<[CertificateDer<'static>]>,
    generation: u64,
}

impl CertSet {
    pub fn get(&self, identity: &Identity) -> Option<&Arc<WorkloadCert>> {
        self.certs.get(identity)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Identity, &Arc<WorkloadCert>)> {
        self.certs.iter()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// 0 for the empty initial set, then +1 per published set.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

type Reply = mpsc::SyncSender<Result<Arc<WorkloadCert>, IdentityError>>;

enum Command {
    Want(Vec<Identity>),
    Ensure(Identity, Reply),
}

/// Handle to the manager thread. Dropping it stops the thread.
pub struct IdentityManager {
    tx: Option<mpsc::Sender<Command>>,
    current: Arc<Mutex<Arc<CertSet>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityManager").finish_non_exhaustive()
    }
}

impl Drop for IdentityManager {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl IdentityManager {
    /// Starts the manager thread. `publish` runs on that thread after every change.
    pub fn start<F>(
        signer: Arc<dyn Signer>,
        opts: ManagerOptions,
        publish: F,
    ) -> std::io::Result<IdentityManager>
    where
        F: Fn(Arc<CertSet>) + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let roots: Arc<[CertificateDer<'static>]> = signer.roots().into();
        let current = Arc::new(Mutex::new(Arc::new(CertSet {
            roots: roots.clone(),
            ..CertSet::default()
        })));
        let state = State {
            signer,
            opts,
            roots,
            entries: HashMap::new(),
            generation: 0,
            current: current.clone(),
            publish: Box::new(publish),
        };
        let thread = std::thread::Builder::new()
            .name("identity".into())
            .spawn(move || state.run(rx))?;
        Ok(IdentityManager {
            tx: Some(tx),
            current,
            thread: Some(thread),
        })
    }

    /// Sets the identities to hold certificates for (normally the local workloads'):
    /// new ones are issued at once, ones not listed are dropped.
    pub fn set_identities(
        &self,
        ids: impl IntoIterator<Item = Identity>,
    ) -> Result<(), IdentityError> {
        self.send(Command::Want(ids.into_iter().collect()))
    }

    /// The certificate for `identity`, issuing it now if there is none. The identity is
    /// then kept and renewed until a `set_identities` that leaves it out.
    pub fn ensure(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, IdentityError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Command::Ensure(identity.clone(), reply))?;
        rx.recv().map_err(|_| IdentityError::Stopped)?
    }

    /// The latest published set.
    pub fn current(&self) -> Arc<CertSet> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn send(&self, cmd: Command) -> Result<(), IdentityError> {
        self.tx
            .as_ref()
            .ok_or(IdentityError::Stopped)?
            .send(cmd)
            .map_err(|_| IdentityError::Stopped)
    }
}

struct Entry {
    cert: Option<Arc<WorkloadCert>>,
    /// When to (re)issue.
    due: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

struct State {
    signer: Arc<dyn Signer>,
    opts: ManagerOptions,
    roots: Arc<[CertificateDer<'static>]>,
    entries: HashMap<Identity, Entry>,
    generation: u64,
    current: Arc<Mutex<Arc<CertSet>>>,
    publish: Box<dyn Fn(Arc<CertSet>) + Send + Sync>,
}

/// How long to sleep with nothing scheduled (a wake-up to re-check expiry is harmless).
const IDLE_WAKE: Duration = Duration::from_secs(3600);

impl State {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            if self.work_due() {
                self.publish();
            }
            let wait = self.next_wake().saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    if self.handle(cmd) {
                        self.publish();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Want(ids) => {
                let before = self.entries.len();
                self.entries.retain(|id, _| ids.contains(id));
                let mut changed = self.entries.len() != before;
                for id in ids {
                    self.entries.entry(id).or_insert_with(|| Entry {
                        cert: None,
                        due: Instant::now(),
                        backoff: self.opts.min_backoff,
                        last_error: None,
                    });
                }
                changed |= self.work_due();
                changed
            }
            Command::Ensure(id, reply) => {
                let min_backoff = self.opts.min_backoff;
                let entry = self.entries.entry(id.clone()).or_insert_with(|| Entry {
                    cert: None,
                    due: Instant::now(),
                    backoff: min_backoff,
                    last_error: None,
                });
                let changed = if entry.cert.is_none() && entry.due <= Instant::now() {
                    self.attempt(&id)
                } else {
                    false
                };
                let entry = &self.entries[&id];
                let answer = match &entry.cert {
                    Some(c) => Ok(c.clone()),
                    None => Err(IdentityError::Unavailable {
                        identity: id,
                        last_error: entry
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "retry pending".into()),
                    }),
                };
                let _ = reply.send(answer);
                changed
            }
        }
    }

    /// Issues what is due and drops what expired; true if any certificate changed.
    fn work_due(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<Identity> = self
            .entries
            .iter()
            .filter(|(_, e)| e.due <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut changed = false;
        for id in due {
            changed |= self.attempt(&id);
        }
        let wall = SystemTime::now();
        for (id, e) in &mut self.entries {
            if e.cert.as_ref().is_some_and(|c| c.not_after <= wall) {
                tracing::error!(identity = %id, "certificate expired before it could be renewed; dropping it");
                e.cert = None;
                changed = true;
            }
        }
        changed
    }

    /// Signs a certificate for `id` now; true if a new one was stored.
    fn attempt(&mut self, id: &Identity) -> bool {
        let result = self.signer.sign(id, self.opts.lifetime);
        let now = Instant::now();
        let wall = SystemTime::now();
        let (min_b, max_b) = (self.opts.min_backoff, self.opts.max_backoff);
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        match result {
            Ok(ck) => {
                let remaining = ck
                    .validity
                    .not_after
                    .duration_since(wall)
                    .unwrap_or_default();
                entry.due = now + remaining / 2;
                entry.backoff = min_b;
                entry.last_error = None;
                let written = match &self.opts.write_dir {
                    Some(dir) => write_files(dir, id, &ck, &self.signer.roots_pem()),
                    None => Ok(()),
                };
                if let Err(e) = written {
                    tracing::warn!(identity = %id, error = %e, "could not write certificate files");
                }
                tracing::info!(identity = %id, valid_for = ?remaining, renew_in = ?(remaining / 2), "issued certificate");
                entry.cert = Some(Arc::new(WorkloadCert {
                    identity: id.clone(),
                    chain: ck.chain,
                    key: ck.key,
                    not_before: ck.validity.not_before,
                    not_after: ck.validity.not_after,
                }));
                true
            }
            Err(e) => {
                tracing::warn!(identity = %id, error = %e, retry_in = ?entry.backoff, keeps_current = entry.cert.is_some(), "signing failed");
                entry.due = now + entry.backoff;
                entry.backoff = (entry.backoff * 2).clamp(min_b, max_b);
                entry.last_error = Some(e.to_string());
                false
            }
        }
    }

    /// The earliest renewal, retry or expiry.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.entries
            .values()
            .flat_map(|e| {
                let expiry = e
                    .cert
                    .as_ref()
                    .map(|c| now + c.not_after.duration_since(wall).unwrap_or_default());
                std::iter::once(e.due).chain(expiry)
            })
            .min()
            .unwrap_or(now + IDLE_WAKE)
    }

    fn publish(&mut self) {
        self.generation += 1;
        // The signer's roots may have moved on (the Istio CA's answers carry them).
        let roots = self.signer.roots();
        if *self.roots != *roots {
            tracing::info!(roots = roots.len(), "trust roots changed");
            self.roots = roots.into();
        }
        let set = Arc::new(CertSet {
            certs: self
                .entries
                .iter()
                .filter_map(|(id, e)| e.cert.clone().map(|c| (id.clone(), c)))
                .collect(),
            roots: self.roots.clone(),
            generation: self.generation,
        });
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = set.clone();
        (self.publish)(set);
    }
}

fn write_files(
    dir: &std::path::Path,
    id: &Identity,
    ck: &CertifiedKey,
    roots_pem: &str,
) -> Result<(), IdentityError> {
    let d = dir
        .join(id.trust_domain())
        .join(id.namespace())
        .join(id.service_account());
    write_atomic(&d.join("key.pem"), ck.key_pem.as_bytes(), 0o600)?;
    write_atomic(&d.join("cert-chain.pem"), ck.chain_pem.as_bytes(), 0o644)?;
    write_atomic(&d.join("root-cert.pem"), roots_pem.as_bytes(), 0o644)
}
