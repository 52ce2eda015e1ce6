//! The identity manager: issue on demand, renew before expiry, keep the valid certificate
//! when renewal fails and retry with backoff, publish immutable sets, write files 0600.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use proxy::identity::{
    Ca, CertSet, CertifiedKey, Identity, IdentityError, IdentityManager, ManagerOptions, Signer, ca,
};
use rustls_pki_types::CertificateDer;

/// Each published set, with when it arrived.
type Published = mpsc::Receiver<(Instant, Arc<CertSet>)>;

const DEADLINE: Duration = Duration::from_secs(20);

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// The real CA behind a switch that makes signing fail, counting attempts.
struct Flaky {
    ca: Ca,
    failing: AtomicBool,
    attempts: AtomicUsize,
}

impl Signer for Flaky {
    fn sign(&self, identity: &Identity, lifetime: Duration) -> Result<CertifiedKey, IdentityError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(IdentityError::Sign {
                identity: identity.to_string(),
                reason: "CA unreachable (test)".into(),
            });
        }
        self.ca.sign_leaf(identity, lifetime)
    }
    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.ca.roots()
    }
    fn roots_pem(&self) -> String {
        self.ca.roots_pem()
    }
}

fn flaky() -> Arc<Flaky> {
    Arc::new(Flaky {
        ca: Ca::generate().unwrap(),
        failing: AtomicBool::new(false),
        attempts: AtomicUsize::new(0),
    })
}

fn publisher() -> (impl Fn(Arc<CertSet>) + Send + Sync + 'static, Published) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    (
        move |set| {
            let _ = tx.lock().unwrap().send((Instant::now(), set));
        },
        rx,
    )
}

/// Waits for a published set satisfying `pred`.
fn wait_for(
    rx: &Published,
    what: &str,
    pred: impl Fn(&CertSet) -> bool,
) -> (Instant, Arc<CertSet>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, set) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        if pred(&set) {
            return (at, set);
        }
    }
}

#[test]
fn issues_for_wanted_identities_and_drops_unwanted() {
    let signer = flaky();
    let (publish, rx) = publisher();
    let mgr = IdentityManager::start(signer.clone(), ManagerOptions::default(), publish).unwrap();
    let a = id("spiffe://cluster.local/ns/demo/sa/a");
    let b = id("spiffe://cluster.local/ns/demo/sa/b");
    mgr.set_identities([a.clone(), b.clone()]).unwrap();
    let (_, set) = wait_for(&rx, "two certs", |s| s.len() == 2);
    assert_eq!(set.roots(), signer.roots().as_slice());
    let cert_a = set.get(&a).unwrap();
    assert_eq!(Identity::from_leaf_cert(&cert_a.chain[0]).unwrap(), a);

    mgr.set_identities([b.clone()]).unwrap();
    let (_, set) = wait_for(&rx, "a dropped", |s| s.len() == 1);
    assert!(set.get(&a).is_none() && set.get(&b).is_some());
    assert_eq!(mgr.current().generation(), set.generation());
}

#[test]
fn ensure_issues_on_demand_and_reuses() {
    let signer = flaky();
    let mgr = IdentityManager::start(signer.clone(), ManagerOptions::default(), |_| {}).unwrap();
    let c = id("spiffe://td/ns/x/sa/y");
    let first = mgr.ensure(&c).unwrap();
    let again = mgr.ensure(&c).unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "a valid cert is reused, not re-signed"
    );
    assert_eq!(signer.attempts.load(Ordering::SeqCst), 1);
    assert!(mgr.current().get(&c).is_some());
}

#[test]
fn renews_at_half_life_before_expiry() {
    let signer = flaky();
    let (publish, rx) = publisher();
    let opts = ManagerOptions {
        lifetime: Duration::from_secs(4),
        ..ManagerOptions::default()
    };
    let mgr = IdentityManager::start(signer, opts, publish).unwrap();
    let w = id("spiffe://cluster.local/ns/demo/sa/w");
    mgr.set_identities([w.clone()]).unwrap();
    let (issued_at, first) = wait_for(&rx, "first cert", |s| s.get(&w).is_some());
    let first = first.get(&w).unwrap().clone();

    let (renewed_at, second) = wait_for(&rx, "renewal", |s| {
        s.get(&w).is_some_and(|c| !Arc::ptr_eq(c, &first))
    });
    let second = second.get(&w).unwrap().clone();
    assert!(second.not_after > first.not_after, "renewal is newer");
    assert_ne!(second.chain[0], first.chain[0]);
    // Before the first expired, and not much before half-life (4 s / 2).
    assert!(
        SystemTime::now() < first.not_after + Duration::from_secs(1),
        "renewed after expiry"
    );
    let after = renewed_at - issued_at;
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(4),
        "renewed after {after:?}"
    );
}

#[test]
fn failed_renewal_keeps_the_valid_cert_and_retries_with_backoff() {
    let signer = flaky();
    let (publish, rx) = publisher();
    let opts = ManagerOptions {
        lifetime: Duration::from_secs(6),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        write_dir: None,
    };
    let mgr = IdentityManager::start(signer.clone(), opts, publish).unwrap();
    let w = id("spiffe://cluster.local/ns/demo/sa/w");
    mgr.set_identities([w.clone()]).unwrap();
    let (_, set) = wait_for(&rx, "first cert", |s| s.get(&w).is_some());
    let first = set.get(&w).unwrap().clone();

    signer.failing.store(true, Ordering::SeqCst);
    let attempts_at_failure = signer.attempts.load(Ordering::SeqCst);
    // Half-life is 3 s; wait until several retries have failed.
    let deadline = Instant::now() + DEADLINE;
    while signer.attempts.load(Ordering::SeqCst) < attempts_at_failure + 4 {
        assert!(Instant::now() < deadline, "no retries happened");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    // Backoff: 100+200+400 ms for the first four attempts, so not hammering.
    let cur = mgr.current();
    assert!(Arc::ptr_eq(
        cur.get(&w).expect("valid cert dropped on failure"),
        &first
    ));
    assert!(mgr.ensure(&w).is_ok_and(|c| Arc::ptr_eq(&c, &first)));

    signer.failing.store(false, Ordering::SeqCst);
    let (_, set) = wait_for(&rx, "recovery", |s| {
        s.get(&w).is_some_and(|c| !Arc::ptr_eq(c, &first))
    });
    assert!(set.get(&w).unwrap().not_after > first.not_after);
    assert!(
        SystemTime::now() < first.not_after,
        "recovered only after expiry"
    );
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let signer = flaky();
    signer.failing.store(true, Ordering::SeqCst);
    let opts = ManagerOptions {
        lifetime: Duration::from_secs(60),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        write_dir: None,
    };
    let mgr = IdentityManager::start(signer.clone(), opts, |_| {}).unwrap();
    let w = id("spiffe://cluster.local/ns/demo/sa/w");
    let started = Instant::now();
    mgr.set_identities([w.clone()]).unwrap();
    // Attempts at 0, 50, 150, 350, 550, 750 ms: six attempts need >= 750 ms.
    let deadline = Instant::now() + DEADLINE;
    while signer.attempts.load(Ordering::SeqCst) < 6 {
        assert!(Instant::now() < deadline, "retries stopped");
        std::thread::park_timeout(Duration::from_millis(10));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "retried too fast: 6 attempts in {took:?}"
    );
    let err = mgr.ensure(&w).unwrap_err();
    assert!(err.to_string().contains("CA unreachable (test)"), "{err}");
}

#[test]
fn writes_files_with_key_0600() {
    let dir = tempfile::tempdir().unwrap();
    let signer = flaky();
    let opts = ManagerOptions {
        write_dir: Some(dir.path().to_path_buf()),
        ..ManagerOptions::default()
    };
    let mgr = IdentityManager::start(signer, opts, |_| {}).unwrap();
    let w = id("spiffe://cluster.local/ns/demo/sa/w");
    let cert = mgr.ensure(&w).unwrap();
    let d = dir.path().join("cluster.local/demo/w");
    let mode = |f: &str| std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("key.pem"), 0o600);
    assert_eq!(mode("cert-chain.pem"), 0o644);
    let chain = std::fs::read_to_string(d.join("cert-chain.pem")).unwrap();
    let der = hbone::certs::certs_from_pem(chain.as_bytes(), "test").unwrap();
    assert_eq!(der, cert.chain);
    assert!(
        std::fs::read_to_string(d.join("root-cert.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let _ = ca::DEFAULT_LEAF_LIFETIME;
}

#[test]
fn expired_cert_is_dropped_when_renewal_keeps_failing() {
    let signer = flaky();
    let (publish, rx) = publisher();
    let opts = ManagerOptions {
        lifetime: Duration::from_secs(2),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(200),
        write_dir: None,
    };
    let mgr = IdentityManager::start(signer.clone(), opts, publish).unwrap();
    let w = id("spiffe://cluster.local/ns/demo/sa/w");
    mgr.set_identities([w.clone()]).unwrap();
    let (_, set) = wait_for(&rx, "first cert", |s| s.get(&w).is_some());
    let not_after = set.get(&w).unwrap().not_after;
    signer.failing.store(true, Ordering::SeqCst);
    let (_, set) = wait_for(&rx, "expired cert dropped", |s| s.get(&w).is_none());
    assert!(SystemTime::now() >= not_after, "dropped while still valid");
    assert!(set.is_empty());
}
