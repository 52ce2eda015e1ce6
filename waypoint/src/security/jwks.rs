//! JSON Web Key Sets: parsing one into verification keys, and the keys a rule fetches from
//! a URL (Istio's `jwksUri`, or the `jwks_uri` of the issuer's OpenID discovery document
//! when the rule gives no keys at all, as istiod does).
//!
//! A fetched set lives in a [`RemoteJwks`] slot that the rule holds and a fetcher fills
//! (in `ringmesh waypoint`, a task on the control runtime). Slots come from a
//! [`JwksRegistry`], keyed by where the keys come from, so a config reload that keeps a
//! rule keeps its keys, and a slot no table holds any more is dropped with its last table.
//!
//! Invariants: keys are replaced whole, never mixed; a failed refresh keeps the last keys
//! that were fetched (istiod keeps its cache likewise), and a set that never arrived
//! verifies nothing (Envoy's "Jwks remote fetch is failed", 401); every slot is retried
//! with a bounded backoff and refreshed on a fixed interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::jwt::default_alg;

/// Keys of one set: `(kid, key, algorithm)`.
pub struct Keys(pub(super) Vec<(Option<String>, DecodingKey, Algorithm)>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({})", self.0.len())
    }
}

impl Keys {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A JWKS document as verification keys. On error: the path inside the document (`""`,
/// `keys[2]`, `keys[2].alg`) and why.
pub fn parse(text: &str) -> Result<Keys, (String, String)> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| (String::new(), format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for (i, k) in set.keys.iter().enumerate() {
        let alg = match k.common.key_algorithm {
            Some(a) => a
                .to_string()
                .parse::<Algorithm>()
                .map_err(|_| (format!("keys[{i}].alg"), format!("{a} cannot sign a JWT")))?,
            None => default_alg(k).ok_or_else(|| {
                (
                    format!("keys[{i}]"),
                    "no alg, and the key type does not imply one".to_string(),
                )
            })?,
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err((
                format!("keys[{i}]"),
                "symmetric (HMAC) keys are refused: a JWKS is public".to_string(),
            ));
        }
        let key = DecodingKey::from_jwk(k)
            .map_err(|e| (format!("keys[{i}]"), format!("unusable key: {e}")))?;
        keys.push((k.common.key_id.clone(), key, alg));
    }
    if keys.is_empty() {
        return Err((String::new(), "the JWKS holds no key".to_string()));
    }
    Ok(Keys(keys))
}

/// Where a rule's remote keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// `jwksUri`.
    Uri(String),
    /// OpenID discovery: `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery { issuer: String },
}

impl Source {
    /// The URL fetched first.
    pub fn url(&self) -> String {
        match self {
            Source::Uri(u) => u.clone(),
            Source::Discovery { issuer } => format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ),
        }
    }
}

/// How often fetched keys are fetched again by default: istiod's
/// (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`), so key rotation reaches a ringmesh waypoint as
/// soon as it would reach an Envoy one.
pub const REFRESH: Duration = Duration::from_secs(20 * 60);

/// First retry after a failed fetch; doubled per failure up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between retries: a set that is down is tried at least this often.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// One remote key set: the current keys (if any ever arrived) and when to fetch again.
#[derive(Debug)]
pub struct RemoteJwks {
    pub source: Source,
    /// The rule's fetch timeout (Istio's `timeout`, default 5 s).
    pub timeout: Duration,
    keys: RwLock<Option<Arc<Keys>>>,
    state: Mutex<FetchState>,
}

#[derive(Debug)]
struct FetchState {
    next: Instant,
    failures: u32,
    last_error: Option<String>,
    fetched: Option<Instant>,
}

/// What a slot says of itself (for logs and `/config_dump`-style output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub keys: usize,
    pub failures: u32,
    pub last_error: Option<String>,
    pub fetched: bool,
}

impl RemoteJwks {
    pub fn new(source: Source, timeout: Duration) -> RemoteJwks {
        RemoteJwks {
            source,
            timeout,
            keys: RwLock::new(None),
            state: Mutex::new(FetchState {
                next: Instant::now(),
                failures: 0,
                last_error: None,
                fetched: None,
            }),
        }
    }

    /// The keys in force; `None` until a fetch succeeded.
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the fetcher should fetch now.
    pub fn due(&self, now: Instant) -> bool {
        self.lock().next <= now
    }

    /// Takes the next fetch if it is due: `true` once, until the fetch is recorded or its
    /// timeout (and a second) has passed, so a fetcher that checks often starts one fetch
    /// at a time.
    pub fn begin(&self, now: Instant) -> bool {
        let mut st = self.lock();
        if st.next > now {
            return false;
        }
        st.next = now + self.timeout + RETRY_MIN;
        true
    }

    /// Records a fetch: new keys replace the old whole and are fetched again after
    /// `refresh`; a failure keeps them and schedules a retry (1 s, doubling, at most a
    /// minute).
    pub fn record(&self, result: Result<Keys, String>, now: Instant, refresh: Duration) {
        let mut st = self.lock();
        match result {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
                st.failures = 0;
                st.last_error = None;
                st.fetched = Some(now);
                st.next = now + refresh;
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let backoff = RETRY_MIN
                    .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
                    .min(RETRY_MAX);
                st.next = now + backoff;
                st.last_error = Some(e);
            }
        }
    }

    pub fn status(&self) -> Status {
        let st = self.lock();
        Status {
            keys: self.keys().map_or(0, |k| k.len()),
            failures: st.failures,
            last_error: st.last_error.clone(),
            fetched: st.fetched.is_some(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The process's remote key sets, one per source. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct JwksRegistry(Arc<Mutex<HashMap<Source, Weak<RemoteJwks>>>>);

impl JwksRegistry {
    /// The slot for `source`: the live one if a table holds it, else a new one (due now).
    /// A new timeout for a live source replaces the old on the next slot made.
    pub fn slot(&self, source: Source, timeout: Duration) -> Arc<RemoteJwks> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = map.get(&source).and_then(Weak::upgrade)
            && live.timeout == timeout
        {
            return live;
        }
        let slot = Arc::new(RemoteJwks::new(source.clone(), timeout));
        if let Some(old) = map.get(&source).and_then(Weak::upgrade)
            && let Some(keys) = old.keys()
        {
            // Same source, new timeout: the keys carry over.
            *slot.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(keys);
        }
        map.insert(source, Arc::downgrade(&slot));
        slot
    }

    /// Every slot some table still holds (and the dead ones forgotten).
    pub fn live(&self) -> Vec<Arc<RemoteJwks>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }
}

/// Reads `jwks_uri` from an OpenID discovery document.
pub fn discovered_uri(doc: &[u8]) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_slice(doc)
        .map_err(|e| format!("the discovery document is not JSON: {e}"))?;
    v.get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "the discovery document has no jwks_uri".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_keeps_keys_through_failures_and_backs_off() {
        let slot = RemoteJwks::new(Source::Uri("https://x/jwks".into()), Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(slot.due(t0) && slot.keys().is_none());
        assert!(slot.begin(t0) && !slot.begin(t0) && !slot.due(t0));
        slot.record(Err("down".into()), t0, REFRESH);
        assert!(!slot.due(t0) && slot.due(t0 + RETRY_MIN));
        slot.record(Err("down".into()), t0, REFRESH);
        assert!(!slot.due(t0 + RETRY_MIN) && slot.due(t0 + RETRY_MIN * 2));
        for _ in 0..20 {
            slot.record(Err("down".into()), t0, REFRESH);
        }
        assert!(slot.due(t0 + RETRY_MAX));
        assert_eq!(slot.status().failures, 22);
        slot.record(Ok(Keys(Vec::new())), t0, REFRESH);
        assert!(slot.keys().is_some() && !slot.due(t0 + RETRY_MAX) && slot.due(t0 + REFRESH));
        // A failed refresh keeps what was fetched.
        slot.record(Err("down again".into()), t0 + REFRESH, REFRESH);
        assert!(slot.keys().is_some());
        assert_eq!(slot.status().last_error.as_deref(), Some("down again"));
    }

    #[test]
    fn the_registry_shares_live_slots_and_forgets_dead_ones() {
        let reg = JwksRegistry::default();
        let src = Source::Discovery {
            issuer: "https://issuer.example/".into(),
        };
        assert_eq!(
            src.url(),
            "https://issuer.example/.well-known/openid-configuration"
        );
        let a = reg.slot(src.clone(), Duration::from_secs(5));
        let b = reg.slot(src.clone(), Duration::from_secs(5));
        assert!(Arc::ptr_eq(&a, &b));
        a.record(Ok(Keys(Vec::new())), Instant::now(), REFRESH);
        // A new timeout makes a new slot, with the keys carried over.
        let c = reg.slot(src.clone(), Duration::from_secs(9));
        assert!(!Arc::ptr_eq(&a, &c) && c.keys().is_some());
        assert_eq!(reg.live().len(), 1);
        drop((a, b, c));
        assert!(reg.live().is_empty());
    }

    #[test]
    fn discovery_documents_name_their_jwks() {
        assert_eq!(
            discovered_uri(br#"{"issuer":"x","jwks_uri":"https://x/keys"}"#).unwrap(),
            "https://x/keys"
        );
        assert!(discovered_uri(b"{}").is_err());
        assert!(discovered_uri(b"<html>").is_err());
    }
}
