//! The waypoint's remote key sets: the task that fetches every `jwksUri` (and every
//! issuer's OpenID discovery document, for rules that give no keys) into the slots the
//! compiled RequestAuthentications hold, and refreshes them. istiod does this for an Envoy
//! waypoint; a ringmesh waypoint does it itself.
//!
//! Runs on the control runtime (never on a core). A slot is fetched when it is due: at once
//! when a config first names it, every `--jwks-refresh` (20 minutes) after a success, and
//! after 1 s, 2 s, ...
//! (at most a minute) after failures; each fetch in its own task, bounded by the rule's
//! timeout. Cores read a slot's keys when a token arrives; they never wait for a fetch.

use std::time::{Duration, Instant};

use control::fetch;
use control::grpc::RootCa;
use control::runtime::ControlRuntime;
use waypoint::security::JwksRegistry;
use waypoint::security::jwks::{self, Keys, RemoteJwks, Source};

/// How often the registry is looked at for due slots: the delay before a newly configured
/// `jwksUri` is first fetched, and the resolution of the backoff.
const TICK: Duration = Duration::from_secs(1);

/// Largest JWKS document taken. Public key sets are a few KiB (Google's and Microsoft's
/// are under 10); a megabyte is generous and still bounded.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Largest OpenID discovery document taken (they are a few KiB).
const MAX_DISCOVERY_BYTES: usize = 256 << 10;

/// Starts the fetcher on `rt`; HTTPS servers are verified against `roots` (the system's
/// trust store by default, which `SSL_CERT_FILE` overrides). Keys are fetched again every
/// `refresh`.
pub(crate) fn start(rt: &ControlRuntime, registry: JwksRegistry, roots: RootCa, refresh: Duration) {
    rt.spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for slot in registry.live() {
                if !slot.begin(now) {
                    continue;
                }
                let roots = roots.clone();
                tokio::spawn(async move {
                    let result = fetch_keys(&slot, &roots).await;
                    match &result {
                        Ok(keys) => tracing::info!(
                            source = %slot.source.url(),
                            keys = keys.len(),
                            "JWKS fetched"
                        ),
                        Err(e) => tracing::warn!(
                            source = %slot.source.url(),
                            error = %e,
                            failures = slot.status().failures + 1,
                            "JWKS fetch failed; tokens of this issuer are refused until one succeeds (earlier keys stay in use)"
                        ),
                    }
                    slot.record(result, Instant::now(), refresh);
                });
            }
        }
    });
}

/// The slot's keys, fetched now: its `jwksUri`, or the `jwks_uri` its issuer's discovery
/// document names.
async fn fetch_keys(slot: &RemoteJwks, roots: &RootCa) -> Result<Keys, String> {
    let url = match &slot.source {
        Source::Uri(u) => u.clone(),
        Source::Discovery { .. } => {
            let doc = fetch::get(&slot.source.url(), roots, slot.timeout, MAX_DISCOVERY_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            let uri =
                jwks::discovered_uri(&doc).map_err(|e| format!("{}: {e}", slot.source.url()))?;
            fetch::check_url(&uri).map_err(|e| format!("{}: jwks_uri {e}", slot.source.url()))?;
            uri
        }
    };
    let body = fetch::get(&url, roots, slot.timeout, MAX_JWKS_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&body).map_err(|_| format!("{url}: the JWKS is not UTF-8"))?;
    jwks::parse(text).map_err(|(at, why)| {
        if at.is_empty() {
            format!("{url}: {why}")
        } else {
            format!("{url}: {at}: {why}")
        }
    })
}
