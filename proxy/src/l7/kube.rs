//! The waypoint's L7 config from the cluster: HTTPRoutes, GRPCRoutes, VirtualServices,
//! DestinationRules, AuthorizationPolicies, RequestAuthentications and Telemetries read from the
//! Kubernetes API (list and watch, [`control::kube`]) instead of the `--config` file, in the
//! same shapes the file takes.
//!
//! Owns: which objects are a waypoint's (the translation below), the document they make,
//! and building it as the file is built (Kubernetes naming, as with istiod). An object the
//! waypoint cannot apply (a field it refuses, a bad value) is left out by name and logged,
//! and the rest apply: one team's mistake does not freeze every other team's routes. An
//! AuthorizationPolicy is not left out but applied in its safe form ([`fail_closed`]): an
//! ALLOW policy that allows nothing, a DENY or CUSTOM one that refuses everything it
//! targets; leaving it out would open what it guarded. A rebuild follows each change, at
//! most every [`DEBOUNCE`].
//!
//! Which objects apply, as istiod chooses them for a waypoint:
//! - HTTPRoutes and GRPCRoutes with a `parentRef` of kind `Service` (GAMMA) or
//!   `ServiceEntry` (an egress waypoint's); other parents (ingress Gateways) are left
//!   aside, and a route with none is not a waypoint's. A
//!   cluster whose Gateway API has no GRPCRoute (before v1.1) has none to apply: the kind
//!   counts as listed, empty, and is asked for again now and then;
//! - VirtualServices without `gateways`, or whose `gateways` include `mesh` (a host outside
//!   the cluster's domain, a ServiceEntry's, is a hostname found per request);
//! - DestinationRules without a `workloadSelector` (those configure sidecars); `exportTo`
//!   is dropped (the waypoint applies every rule it is given);
//! - AuthorizationPolicies and RequestAuthentications with `targetRefs` (or the older
//!   `targetRef`); those with a `selector` or no target are enforced by the node proxies
//!   or sidecars, not by a waypoint;
//! - Telemetries without a workload `selector` (namespace-wide ones, and those that target
//!   the waypoint's Gateway or a Service); which of them apply is the waypoint crate's
//!   choice (`waypoint::telemetry`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::kube::{KubeApi, Objects, Resource, Store};
use serde_json::{Map, Value};

use crate::config::{self, ConfigError, LoadOptions, Snapshot};

/// The kinds read, with the mesh config list each goes to.
pub const KINDS: [(Resource, &str); 7] = [
    (
        Resource {
            name: "httproutes.gateway.networking.k8s.io",
            path: "/apis/gateway.networking.k8s.io/v1/httproutes",
            optional: false,
        },
        "httpRoutes",
    ),
    (
        Resource {
            name: "grpcroutes.gateway.networking.k8s.io",
            path: "/apis/gateway.networking.k8s.io/v1/grpcroutes",
            // Routes only, and new: a cluster with an older Gateway API, or a role from
            // before it was read, has none.
            optional: true,
        },
        "grpcRoutes",
    ),
    (
        Resource {
            name: "virtualservices.networking.istio.io",
            path: "/apis/networking.istio.io/v1/virtualservices",
            optional: false,
        },
        "virtualServices",
    ),
    (
        Resource {
            name: "destinationrules.networking.istio.io",
            path: "/apis/networking.istio.io/v1/destinationrules",
            optional: false,
        },
        "destinationRules",
    ),
    (
        Resource {
            name: "authorizationpolicies.security.istio.io",
            path: "/apis/security.istio.io/v1/authorizationpolicies",
            optional: false,
        },
        "authorizationPolicies",
    ),
    (
        Resource {
            name: "requestauthentications.security.istio.io",
            path: "/apis/security.istio.io/v1/requestauthentications",
            optional: false,
        },
        "requestAuthentications",
    ),
    (
        Resource {
            name: "telemetries.telemetry.istio.io",
            path: "/apis/telemetry.istio.io/v1/telemetries",
            optional: false,
        },
        "telemetries",
    ),
];

/// Objects from the cluster the last build left out, and AuthorizationPolicies it applied
/// in their safe form ([`fail_closed`]): gauges on `/metrics`, so that a policy that stopped
/// applying as written is seen, not only logged. One waypoint per process, one build loop.
pub static LEFT_OUT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
pub static FAIL_CLOSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Changes that arrive together make one rebuild.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How long the waypoint waits for the first list of every kind before it gives up: it
/// must not serve without its policies.
pub const FIRST_SYNC: Duration = Duration::from_secs(60);

/// The reflectors' stores, one per kind in [`KINDS`]' order.
pub struct Stores(pub Vec<Arc<Mutex<Store>>>);

impl Stores {
    fn new() -> Stores {
        Stores(KINDS.iter().map(|_| Arc::default()).collect())
    }

    /// The kinds whose first list has not arrived.
    pub fn unsynced(&self) -> Vec<&'static str> {
        KINDS
            .iter()
            .zip(&self.0)
            .filter(|(_, s)| !s.lock().unwrap_or_else(|p| p.into_inner()).synced)
            .map(|((r, _), _)| r.name)
            .collect()
    }

    fn objects(&self) -> Vec<Objects> {
        self.0
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).objects.clone())
            .collect()
    }
}

/// Starts a reflector per kind on the control runtime; `changed` is called after every
/// change (from the control thread).
pub fn start(
    rt: &control::runtime::ControlRuntime,
    api: &KubeApi,
    changed: Arc<dyn Fn() + Send + Sync>,
) -> Arc<Stores> {
    let stores = Arc::new(Stores::new());
    for ((resource, _), store) in KINDS.iter().zip(&stores.0) {
        let (api, resource, store, changed) = (
            api.clone(),
            resource.clone(),
            store.clone(),
            changed.clone(),
        );
        let failed: Arc<control::kube::OnError> = Arc::new(|r: &Resource, e| {
            tracing::warn!(resource = r.name, error = %e, "Kubernetes list or watch failed; retrying");
        });
        rt.spawn(async move { api.reflect(resource, store, changed, failed).await });
    }
    stores
}

/// An object as the mesh config's list takes it: its `spec` with `name` and `namespace`,
/// or `None` when it is not a waypoint's (see the module docs).
pub fn translate(list: &str, object: &Value) -> Option<Value> {
    let meta = object.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta.get("namespace")?.as_str()?;
    let mut spec: Map<String, Value> = object.get("spec")?.as_object()?.clone();
    match list {
        "httpRoutes" | "grpcRoutes" => {
            let parents: Vec<Value> = spec
                .get("parentRefs")?
                .as_array()?
                .iter()
                .filter(|p| {
                    let group = p.get("group").and_then(Value::as_str);
                    match p.get("kind").and_then(Value::as_str) {
                        Some("Service") => matches!(group, None | Some("") | Some("core")),
                        // An egress waypoint's parent (its traffic reaches the waypoint as a
                        // Service of the mesh by this name).
                        Some("ServiceEntry") => group == Some("networking.istio.io"),
                        _ => false,
                    }
                })
                .cloned()
                .collect();
            if parents.is_empty() {
                return None;
            }
            spec.insert("parentRefs".into(), Value::Array(parents));
        }
        "virtualServices" => {
            if let Some(g) = spec.remove("gateways") {
                let mesh = g
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("mesh")));
                if !mesh {
                    return None;
                }
            }
            spec.remove("exportTo");
        }
        "destinationRules" => {
            if spec.contains_key("workloadSelector") {
                return None;
            }
            spec.remove("exportTo");
        }
        "authorizationPolicies" | "requestAuthentications" => {
            if let Some(one) = spec.remove("targetRef") {
                spec.insert("targetRefs".into(), Value::Array(vec![one]));
            }
            let targeted = spec
                .get("targetRefs")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if !targeted {
                return None;
            }
        }
        "telemetries" => {
            // A workload selector configures sidecars and node proxies, not a waypoint.
            let selected = spec
                .get("selector")
                .and_then(|s| s.get("matchLabels"))
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty());
            if selected {
                return None;
            }
            spec.remove("selector");
        }
        _ => return None,
    }
    spec.insert("name".into(), Value::from(name));
    spec.insert("namespace".into(), Value::from(namespace));
    Some(Value::Object(spec))
}

/// The waypoint's objects, by list, each with its `namespace/name`.
type Lists = BTreeMap<&'static str, Vec<(String, Value)>>;

fn lists(objects: &[Objects]) -> Lists {
    let mut out = Lists::new();
    for ((_, list), objs) in KINDS.iter().zip(objects) {
        let entries = out.entry(*list).or_default();
        for ((ns, name), o) in objs {
            if let Some(v) = translate(list, o) {
                entries.push((format!("{ns}/{name}"), v));
            }
        }
    }
    out
}

/// Builds the L7 snapshot from `objects`, leaving out each object the build refuses (and
/// saying which, and why). Fails only on an error that names no object.
pub fn build(
    objects: &[Objects],
    jwks: &waypoint::security::JwksRegistry,
) -> Result<(Snapshot, Vec<String>), ConfigError> {
    let mut lists = lists(objects);
    let opts = LoadOptions {
        node: None,
        jwks: jwks.clone(),
        l7_only: true,
    };
    /// What could not apply: list, object, field, why, and the safe form it took.
    type Refused = (String, String, String, String, Option<&'static str>);
    let mut left_out: Vec<Refused> = Vec::new();
    let mut closed = std::collections::HashSet::new();
    loop {
        let doc: Map<String, Value> = lists
            .iter()
            .map(|(k, v)| {
                let items = v.iter().map(|(_, o)| o.clone()).collect();
                (k.to_string(), Value::Array(items))
            })
            .collect();
        let text = Value::Object(doc).to_string();
        let err = match config::parse(&text, &opts) {
            Ok(snap) => {
                let closed = left_out.iter().filter(|r| r.4.is_some()).count();
                FAIL_CLOSED.store(closed, std::sync::atomic::Ordering::Relaxed);
                LEFT_OUT.store(
                    left_out.len() - closed,
                    std::sync::atomic::Ordering::Relaxed,
                );
                let said = left_out
                    .into_iter()
                    .map(|(list, key, path, reason, form): Refused| {
                        match form {
                            None => {
                                tracing::warn!(list, object = %key, path, reason, "left out of the waypoint's config: it cannot be applied");
                                format!("{list} {key}: {path}: {reason}")
                            }
                            Some(form) => {
                                tracing::warn!(list, object = %key, path, reason, applied_as = form, "cannot be applied as written: applied in its safe form");
                                format!("{list} {key}: {path}: {reason} (applied as {form})")
                            }
                        }
                    })
                    .collect();
                return Ok((snap, said));
            }
            Err(e) => e,
        };
        let ConfigError::Invalid { path, reason, .. } = &err else {
            return Err(err);
        };
        // `list[3]...` (serde: by index) or `list[ns/name]...` (checks: by name).
        let culprit = path.split_once('[').and_then(|(list, rest)| {
            let sel = rest.split(']').next()?;
            let entries = lists.get_mut(list)?;
            let i = match sel.parse::<usize>() {
                Ok(i) if i < entries.len() => i,
                _ => entries.iter().position(|(key, _)| key == sel)?,
            };
            let (key, object) = &mut entries[i];
            let key = key.clone();
            // A policy once, in its safe form; if even that cannot apply (its targets),
            // it targets nothing the waypoint serves and goes.
            if list == "authorizationPolicies"
                && closed.insert(key.clone())
                && let Some((safe, form)) = fail_closed(object)
            {
                *object = safe;
                return Some((list.to_string(), key, Some(form)));
            }
            entries.remove(i);
            Some((list.to_string(), key, None))
        });
        match culprit {
            Some((list, key, form)) => {
                // A safe form that could not apply either: only its leaving is said.
                left_out.retain(|(l, k, ..)| !(*l == list && *k == key));
                left_out.push((list, key, path.clone(), reason.clone(), form));
            }
            None => return Err(err),
        }
    }
}

/// The safe form of an AuthorizationPolicy the waypoint cannot apply as written, and its
/// name: an ALLOW policy allows nothing (istiod skips the rules it cannot build, which
/// leaves an ALLOW policy that allows less), a DENY or CUSTOM policy, or one whose action
/// is not known, refuses every request to its targets (istiod skips a bad DENY rule, which
/// would let through what it was written to stop; its bad CUSTOM action denies). `None` for
/// an AUDIT policy, which decides nothing.
fn fail_closed(policy: &Value) -> Option<(Value, &'static str)> {
    let action = policy
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("ALLOW");
    let (action, rules, form) = match action {
        "AUDIT" => return None,
        "ALLOW" => ("ALLOW", serde_json::json!([]), "allow-nothing"),
        _ => ("DENY", serde_json::json!([{}]), "deny-all"),
    };
    let mut safe = Map::new();
    for k in ["name", "namespace", "targetRefs"] {
        if let Some(v) = policy.get(k) {
            safe.insert(k.into(), v.clone());
        }
    }
    safe.insert("action".into(), Value::from(action));
    safe.insert("rules".into(), rules);
    Some((Value::Object(safe), form))
}

/// Builds again after changes, at most every [`DEBOUNCE`], and hands each snapshot to
/// `apply`. Runs on the control runtime until dropped.
pub struct Rebuilder {
    notify: Arc<tokio::sync::Notify>,
}

impl Rebuilder {
    /// What the reflectors call on a change.
    pub fn trigger(&self) -> Arc<dyn Fn() + Send + Sync> {
        let n = self.notify.clone();
        Arc::new(move || n.notify_one())
    }

    pub fn start(
        rt: &control::runtime::ControlRuntime,
        stores: Arc<Mutex<Option<Arc<Stores>>>>,
        jwks: waypoint::security::JwksRegistry,
        apply: impl Fn(Arc<Snapshot>) + Send + Sync + 'static,
    ) -> Rebuilder {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        rt.spawn(async move {
            loop {
                n.notified().await;
                tokio::time::sleep(DEBOUNCE).await;
                let Some(s) = stores.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
                    continue;
                };
                if !s.unsynced().is_empty() {
                    continue;
                }
                match build(&s.objects(), &jwks) {
                    Ok((snap, left_out)) => {
                        tracing::info!(
                            routes = snap.routes().len(),
                            left_out = left_out.len(),
                            "config from Kubernetes applied"
                        );
                        apply(Arc::new(snap));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "config from Kubernetes refused; the previous one serves on");
                    }
                }
            }
        });
        Rebuilder { notify }
    }
}

/// Starts the reflectors and waits (at most [`FIRST_SYNC`]) for the first list of every
/// kind; returns the first snapshot, and keeps applying new ones through `apply`.
pub fn sync(
    rt: &control::runtime::ControlRuntime,
    api: &KubeApi,
    jwks: &waypoint::security::JwksRegistry,
    apply: impl Fn(Arc<Snapshot>) + Send + Sync + 'static,
) -> anyhow::Result<(Arc<Snapshot>, Rebuilder)> {
    let slot: Arc<Mutex<Option<Arc<Stores>>>> = Arc::default();
    let rebuilder = Rebuilder::start(rt, slot.clone(), jwks.clone(), apply);
    let stores = start(rt, api, rebuilder.trigger());
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(stores.clone());
    let deadline = std::time::Instant::now() + FIRST_SYNC;
    loop {
        let missing = stores.unsynced();
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "Kubernetes API {}: no list of {} within {FIRST_SYNC:?} (the waypoint needs list and watch on them; the log says why)",
                api.base,
                missing.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (snap, left_out) = build(&stores.objects(), jwks).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        api = %api.base,
        routes = snap.routes().len(),
        left_out = left_out.len(),
        "config from Kubernetes"
    );
    Ok((Arc::new(snap), rebuilder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(ns: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": spec})
    }

    #[test]
    fn only_a_waypoints_objects_are_taken() {
        let route = obj(
            "demo",
            "r",
            json!({"parentRefs": [{"kind": "Service", "group": "", "name": "echo"}, {"name": "ingress"}], "rules": []}),
        );
        let t = translate("httpRoutes", &route).unwrap();
        assert_eq!(t["name"], "r");
        assert_eq!(t["namespace"], "demo");
        assert_eq!(t["parentRefs"].as_array().unwrap().len(), 1);
        // An ingress route (Gateway parents only) is not a waypoint's.
        let ingress = obj("demo", "i", json!({"parentRefs": [{"name": "gw"}]}));
        assert!(translate("httpRoutes", &ingress).is_none());
        // A ServiceEntry parent is a waypoint's too.
        let egress = obj(
            "demo",
            "e",
            json!({"parentRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "api"}, {"kind": "ServiceEntry", "name": "x"}]}),
        );
        let t = translate("httpRoutes", &egress).unwrap();
        assert_eq!(t["parentRefs"].as_array().unwrap().len(), 1);
        assert_eq!(t["parentRefs"][0]["name"], "api");
        // GRPCRoutes by the same rule.
        let t = translate("grpcRoutes", &route).unwrap();
        assert_eq!(t["parentRefs"].as_array().unwrap().len(), 1);
        assert!(translate("grpcRoutes", &ingress).is_none());
        // VirtualServices: mesh or no gateways.
        let vs = |g: Value| obj("demo", "v", json!({"hosts": ["echo"], "gateways": g}));
        assert!(translate("virtualServices", &vs(json!(["mesh"]))).is_some());
        assert!(translate("virtualServices", &vs(json!(["istio-system/ingress"]))).is_none());
        let plain = obj("demo", "v", json!({"hosts": ["echo"], "exportTo": ["."]}));
        assert!(
            translate("virtualServices", &plain)
                .unwrap()
                .get("exportTo")
                .is_none()
        );
        // DestinationRules for sidecars are not.
        let sidecar = obj("demo", "d", json!({"host": "echo", "workloadSelector": {}}));
        assert!(translate("destinationRules", &sidecar).is_none());
        // Policies: targeted only; the older targetRef becomes a list.
        let selected = obj(
            "demo",
            "p",
            json!({"selector": {"matchLabels": {"app": "x"}}}),
        );
        assert!(translate("authorizationPolicies", &selected).is_none());
        let old = obj(
            "demo",
            "p",
            json!({"targetRef": {"kind": "Service", "name": "echo"}}),
        );
        let t = translate("authorizationPolicies", &old).unwrap();
        assert_eq!(t["targetRefs"][0]["name"], "echo");
        assert!(translate("requestAuthentications", &obj("demo", "a", json!({}))).is_none());
        // Telemetries: all but those with a workload selector (an empty one is none).
        let sidecars = obj(
            "demo",
            "t",
            json!({"selector": {"matchLabels": {"app": "x"}}, "tracing": [{}]}),
        );
        assert!(translate("telemetries", &sidecars).is_none());
        let wide = obj("demo", "t", json!({"selector": {}, "tracing": [{}]}));
        let t = translate("telemetries", &wide).unwrap();
        assert!(t.get("selector").is_none() && t["name"] == "t");
    }

    #[test]
    fn a_policy_that_cannot_apply_is_applied_in_its_safe_form() {
        use waypoint::route::ServiceRef;
        use waypoint::security::{Peer, Refusal};
        let jwks = waypoint::security::JwksRegistry::default();
        let mut policies = Objects::new();
        let target = |svc: &str| json!([{"kind": "Service", "group": "", "name": svc}]);
        // An ALLOW policy with a field the waypoint refuses: allows nothing (not: dropped,
        // which would leave the Service open to all).
        policies.insert(
            ("demo".into(), "allow-bad".into()),
            obj(
                "demo",
                "allow-bad",
                json!({"targetRefs": target("echo"), "action": "ALLOW",
                       "rules": [{"from": [{"source": {"bogus": ["x"]}}]}]}),
            ),
        );
        // A DENY policy with a condition it cannot evaluate: refuses everything.
        policies.insert(
            ("demo".into(), "deny-bad".into()),
            obj(
                "demo",
                "deny-bad",
                json!({"targetRefs": target("other"), "action": "DENY",
                       "rules": [{"when": [{"key": "request.bogus", "values": ["1"]}]}]}),
            ),
        );
        // An AUDIT policy decides nothing: left out. One whose targets are bad: its safe
        // form cannot apply either, and it goes.
        policies.insert(
            ("demo".into(), "audit".into()),
            obj(
                "demo",
                "audit",
                json!({"targetRefs": target("third"), "action": "AUDIT", "rules": [{}]}),
            ),
        );
        policies.insert(
            ("demo".into(), "bad-target".into()),
            obj(
                "demo",
                "bad-target",
                json!({"targetRefs": [{"kind": "Pod", "name": "p"}], "action": "DENY", "rules": [{}]}),
            ),
        );
        let empty = Objects::new();
        let mut objects = vec![empty; KINDS.len()];
        let at = KINDS
            .iter()
            .position(|(_, l)| *l == "authorizationPolicies")
            .unwrap();
        objects[at] = policies;
        let (snap, left_out) = build(&objects, &jwks).unwrap();
        let has = |s: &str| left_out.iter().any(|l| l.starts_with(s));
        assert_eq!(left_out.len(), 4, "{left_out:?}");
        assert!(has("authorizationPolicies demo/allow-bad"), "{left_out:?}");
        assert!(
            left_out
                .iter()
                .any(|l| l.ends_with("(applied as allow-nothing)")),
            "{left_out:?}"
        );
        assert!(
            left_out
                .iter()
                .any(|l| l.ends_with("(applied as deny-all)")),
            "{left_out:?}"
        );
        let check = |svc: &str| {
            let mut parts = http::Request::get("/").body(()).unwrap().into_parts().0;
            snap.security().check(
                &ServiceRef::new("demo", svc),
                None,
                80,
                &Peer::default(),
                &mut parts,
            )
        };
        assert!(matches!(check("echo"), Err(Refusal::Denied(p)) if &*p == "demo/allow-bad"));
        assert!(matches!(check("other"), Err(Refusal::Denied(p)) if &*p == "demo/deny-bad"));
        assert_eq!(check("third"), Ok(()));
    }

    #[test]
    fn an_object_that_cannot_apply_is_left_out_and_the_rest_apply() {
        let jwks = waypoint::security::JwksRegistry::default();
        let mut routes = Objects::new();
        let good = json!({"parentRefs": [{"kind": "Service", "name": "echo"}], "rules": [{"backendRefs": [{"name": "echo-v1", "port": 80}]}]});
        routes.insert(("demo".into(), "good".into()), obj("demo", "good", good));
        // An unknown field (serde's error, by index) and a bad value (a check's, by name).
        let unknown =
            json!({"parentRefs": [{"kind": "Service", "name": "echo"}], "rules": [], "bogus": 1});
        routes.insert(
            ("demo".into(), "unknown".into()),
            obj("demo", "unknown", unknown),
        );
        // A GRPCRoute with a check's error under its own list; a good one beside it.
        let mut grpc = Objects::new();
        let rpc = json!({"parentRefs": [{"kind": "Service", "name": "echo"}], "rules": [{"matches": [{"method": {"service": "pkg.Echo"}}]}]});
        grpc.insert(("demo".into(), "rpc".into()), obj("demo", "rpc", rpc));
        let empty_method = json!({"parentRefs": [{"kind": "Service", "name": "echo"}], "rules": [{"matches": [{"method": {}}]}]});
        grpc.insert(
            ("demo".into(), "no-method".into()),
            obj("demo", "no-method", empty_method),
        );
        let mut policies = Objects::new();
        let bad = json!({"targetRefs": [{"kind": "Service", "name": "echo"}], "action": "AUDIT"});
        policies.insert(("demo".into(), "bad".into()), obj("demo", "bad", bad));
        let mut telemetries = Objects::new();
        let sampled = json!({"tracing": [{"randomSamplingPercentage": 10}]});
        telemetries.insert(("demo".into(), "ok".into()), obj("demo", "ok", sampled));
        let over = json!({"tracing": [{"randomSamplingPercentage": 200}]});
        telemetries.insert(("demo".into(), "over".into()), obj("demo", "over", over));
        let empty = Objects::new();
        let (snap, left_out) = build(
            &[
                routes,
                grpc,
                empty.clone(),
                empty.clone(),
                policies,
                empty,
                telemetries,
            ],
            &jwks,
        )
        .unwrap();
        assert_eq!(snap.routes().len(), 2, "{left_out:?}");
        assert_eq!(snap.telemetries().len(), 1, "{left_out:?}");
        assert_eq!(left_out.len(), 4, "{left_out:?}");
        assert!(
            left_out
                .iter()
                .any(|l| l.starts_with("grpcRoutes demo/no-method"))
        );
        assert!(
            left_out
                .iter()
                .any(|l| l.starts_with("telemetries demo/over"))
        );
        assert!(
            left_out
                .iter()
                .any(|l| l.starts_with("httpRoutes demo/unknown"))
        );
        assert!(
            left_out
                .iter()
                .any(|l| l.starts_with("authorizationPolicies demo/bad"))
        );
        // Nothing at all is a valid, empty config.
        let none = vec![Objects::new(); KINDS.len()];
        assert_eq!(build(&none, &jwks).unwrap().0.routes().len(), 0);
    }
}
