//! What a policy's `targetRefs` attach it to, as istiod's `ShouldAttachPolicy` attaches
//! them in a waypoint.

use super::*;

/// What a `targetRef` attaches a policy to.
pub(super) enum Target {
    Service(ServiceRef),
    /// A waypoint's Gateway (Gateway API), by namespace and name.
    Gateway(ServiceRef),
    /// GatewayClass `istio-waypoint`, from this namespace: every waypoint, when it is the
    /// MeshConfig's `rootNamespace`.
    Class(Arc<str>),
}

/// The GatewayClass of Istio's waypoints, which a root-namespace policy may target.
const WAYPOINT_CLASS: &str = "istio-waypoint";

pub(super) fn targets(
    refs: &[TargetRefSpec],
    ns: &str,
    base: &str,
) -> Result<Vec<Target>, RouteError> {
    if refs.is_empty() {
        return Err(err(
            format!("{base}.targetRefs"),
            "at least one target is required: a Service, or the waypoint's Gateway (a waypoint enforces policies on the traffic it serves)",
        ));
    }
    let mut out = Vec::new();
    for (i, t) in refs.iter().enumerate() {
        let at = format!("{base}.targetRefs[{i}]");
        let group = t.group.as_deref().unwrap_or("");
        // As istiod attaches them (`ShouldAttachPolicy`): a target in another namespace
        // never matches (a team's policy does not reach another team's Service), and a kind
        // a waypoint serves no traffic for (a ServiceEntry, another GatewayClass) attaches
        // nowhere here; neither makes the policy invalid, so its other targets keep it.
        if t.namespace.as_deref().is_some_and(|n| n != ns) {
            tracing::warn!(target = %at, "a policy target in another namespace never matches (as istiod attaches them)");
            continue;
        }
        let name = ServiceRef::new(ns, &t.name);
        match t.kind.as_deref() {
            Some("GatewayClass") if group == "gateway.networking.k8s.io" => {
                // Istio's class-wide policies: GatewayClass `istio-waypoint`, from the
                // MeshConfig's root namespace (`istio-system` by default), apply to every
                // waypoint; from another namespace, to none (kept: the root may change).
                if t.name == WAYPOINT_CLASS {
                    out.push(Target::Class(ns.into()));
                } else {
                    tracing::warn!(target = %at, "a GatewayClass target applies only as `istio-waypoint` (from the MeshConfig's rootNamespace): it matches nothing here");
                }
                continue;
            }
            // A ServiceEntry reaches a waypoint as a Service of the mesh (istiod sends it so),
            // by its name.
            Some("ServiceEntry") if group == "networking.istio.io" => {
                out.push(Target::Service(name));
            }
            None | Some("Service") => {
                if !matches!(group, "" | "core") {
                    return Err(err(
                        format!("{at}.group"),
                        "a Service's group is \"\" (core)",
                    ));
                }
                out.push(Target::Service(name));
            }
            Some("Gateway") => {
                if group != "gateway.networking.k8s.io" {
                    return Err(err(
                        format!("{at}.group"),
                        "a Gateway's group is gateway.networking.k8s.io",
                    ));
                }
                out.push(Target::Gateway(name));
            }
            Some(k) => {
                return Err(err(
                    format!("{at}.kind"),
                    format!("{k:?}: a waypoint's policies target a Service or its Gateway"),
                ));
            }
        }
    }
    Ok(out)
}
