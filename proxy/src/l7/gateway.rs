//! Which Gateway the waypoint is, for policies that target it.

use super::*;

/// The waypoint's Gateway: `--gateway` (`NAME` in the workload's namespace, or
/// `NAMESPACE/NAME`), else the workload's `gateway.networking.k8s.io/gateway-name` label,
/// else its canonical name, else its name.
pub(super) fn gateway_of(
    flag: Option<&str>,
    me: &config::snapshot::Workload,
) -> Result<ServiceRef> {
    if let Some(g) = flag {
        let (ns, name) = g.split_once('/').unwrap_or((&me.namespace, g));
        let dns_label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !dns_label(ns) || !dns_label(name) {
            anyhow::bail!(
                "--gateway {g:?}: give NAME or NAMESPACE/NAME, lower-case Kubernetes names"
            );
        }
        return Ok(ServiceRef::new(ns, name));
    }
    let name = me
        .label("gateway.networking.k8s.io/gateway-name")
        .filter(|n| !n.is_empty())
        .or_else(|| Some(&*me.meta.canonical_name).filter(|n| !n.is_empty()))
        .unwrap_or(&me.name);
    Ok(ServiceRef::new(&me.namespace, name))
}
