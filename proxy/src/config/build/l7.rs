//! The waypoint's kinds in the file (`httpRoutes`, `virtualServices`, `destinationRules`,
//! `authorizationPolicies`, `requestAuthentications`): compiled by the waypoint crate, with
//! the Services they name either looked up among the file's (and checked to exist) or, for a
//! waypoint whose mesh comes from istiod, named by Kubernetes' rules.

use super::*;

/// `authorizationPolicies` and `requestAuthentications`: compiled by the waypoint crate;
/// every target must be a known Service. A `jwksFile` is read now (a relative path from the
/// directory the process runs in).
pub(super) fn build_security(
    raw: &RawConfig,
    jwks: &waypoint::security::JwksRegistry,
    names: Names,
) -> Result<waypoint::security::SecurityTable, ConfigError> {
    let read = |path: &str| std::fs::read_to_string(path);
    let table = waypoint::security::SecurityTable::build(
        &raw.authorization_policies,
        &raw.request_authentications,
        &read,
        jwks,
    )
    .map_err(|e| invalid(e.path, e.message))?;
    if names == Names::Kubernetes {
        return Ok(table);
    }
    let known: HashSet<(&str, &str)> = raw
        .services
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    let refs = raw
        .authorization_policies
        .iter()
        .map(|p| {
            (
                "authorizationPolicies",
                &p.namespace,
                &p.name,
                &p.target_refs,
            )
        })
        .chain(raw.request_authentications.iter().map(|a| {
            (
                "requestAuthentications",
                &a.namespace,
                &a.name,
                &a.target_refs,
            )
        }));
    for (list, ns, name, targets) in refs {
        for (i, t) in targets.iter().enumerate() {
            // Only a Service (or ServiceEntry) target in the policy's own namespace names a
            // Service of the file; a Gateway or GatewayClass is the waypoint's, and a target
            // in another namespace never matches (as istiod attaches them).
            if !matches!(
                t.kind.as_deref(),
                None | Some("Service") | Some("ServiceEntry")
            ) || t.namespace.as_deref().is_some_and(|n| n != ns.as_str())
            {
                continue;
            }
            let tns = ns.as_str();
            if !known.contains(&(tns, t.name.as_str())) {
                return Err(invalid(
                    format!("{list}[{ns}/{name}].targetRefs[{i}]"),
                    format!(
                        "unknown service {tns}/{} (no service has this namespace and name)",
                        t.name
                    ),
                ));
            }
        }
    }
    Ok(table)
}

/// `telemetries`: each checked by the waypoint crate, names unique; with the file's names,
/// a Service a Telemetry targets must exist.
pub(super) fn build_telemetries(
    raw: &RawConfig,
    names: Names,
) -> Result<Vec<waypoint::telemetry::TelemetrySpec>, ConfigError> {
    let mut seen = HashSet::new();
    for t in &raw.telemetries {
        waypoint::telemetry::check(t).map_err(|e| invalid(e.path, e.message))?;
        let at = format!("telemetries[{}/{}]", t.namespace, t.name);
        if !seen.insert((t.namespace.as_str(), t.name.as_str())) {
            return Err(invalid(format!("{at}.name"), "defined twice"));
        }
        if names == Names::Kubernetes {
            continue;
        }
        for (i, r) in t.target_ref.iter().chain(&t.target_refs).enumerate() {
            if r.kind == "Service"
                && !raw
                    .services
                    .iter()
                    .any(|s| s.namespace == t.namespace && s.name == r.name)
            {
                return Err(invalid(
                    format!("{at}.targetRefs[{i}]"),
                    format!(
                        "unknown service {}/{} (no service has this namespace and name)",
                        t.namespace, r.name
                    ),
                ));
            }
        }
    }
    Ok(raw.telemetries.clone())
}

/// How the waypoint's kinds name Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Names {
    /// Looked up among the file's `services` (and checked to exist).
    File,
    /// Istio's rules for Kubernetes, with no list to check against (the mesh comes from
    /// istiod or the cluster): `name` and `name.namespace.svc.<domain>` name a Service, any
    /// other host is a hostname looked up per request (see `kubernetes_service`).
    Kubernetes,
}

/// Only the waypoint's kinds, for a waypoint whose mesh comes from istiod: a snapshot with
/// no workloads, Services or L4 policies, and the routes, DestinationRules and L7 security
/// of the file.
pub(crate) fn build_l7_only(
    raw: &RawConfig,
    content_hash: u64,
    jwks: &waypoint::security::JwksRegistry,
) -> Result<Snapshot, ConfigError> {
    for (field, n) in [
        ("workloads", raw.workloads.len()),
        ("services", raw.services.len()),
        ("policies", raw.policies.len()),
    ] {
        if n > 0 {
            return Err(invalid(
                field,
                "the mesh comes from istiod here: this file holds only httpRoutes, grpcRoutes, virtualServices, destinationRules, authorizationPolicies, requestAuthentications and telemetries",
            ));
        }
    }
    let (routes, destination_rules) = build_routes(raw, Names::Kubernetes)?;
    let security = build_security(raw, jwks, Names::Kubernetes)?;
    let telemetries = build_telemetries(raw, Names::Kubernetes)?;
    let mut snapshot = MeshState::new().snapshot(None, content_hash);
    snapshot.routes = Arc::new(routes);
    snapshot.destination_rules = Arc::new(destination_rules);
    snapshot.security = Arc::new(security);
    snapshot.telemetries = Arc::new(telemetries);
    Ok(snapshot)
}

/// A Service by Istio's rules for Kubernetes, seen from namespace `ns`: a short name
/// (`reviews`) is a Service of `ns`, `name.namespace.svc.<domain>` that Service; any other
/// name with a dot is a hostname as it stands (istiod's `ResolveShortnameToFQDN`: a
/// ServiceEntry's host, found in the registry per request). A wildcard names no one Service.
fn kubernetes_service(ns: &str, host: &str) -> Option<waypoint::route::ServiceRef> {
    if host.is_empty() || host.contains(['*', '/', ':', ' ']) || host.split('.').any(str::is_empty)
    {
        return None;
    }
    let mut parts = host.split('.');
    let name = parts.next()?;
    let Some(sns) = parts.next() else {
        return Some(waypoint::route::ServiceRef::new(ns, name));
    };
    // `svc.<domain>`: any cluster domain.
    if parts.next() == Some("svc") && parts.next().is_some() {
        return Some(waypoint::route::ServiceRef::new(sns, name));
    }
    Some(waypoint::route::ServiceRef::by_host(host))
}

/// Whether several of the file's Services are `namespace/name` (a ServiceEntry's hosts).
fn shared_name(raw: &RawConfig, namespace: &str, name: &str) -> bool {
    raw.services
        .iter()
        .filter(|s| s.namespace == namespace && s.name == name)
        .nth(1)
        .is_some()
}

/// `httpRoutes`, `virtualServices` and `destinationRules`: compiled by the waypoint crate
/// (which names the field on error); with the file's names, every Service a route names as
/// parent, backend or mirror must exist, and every subset a VirtualService names must be in
/// a DestinationRule.
pub(super) fn build_routes(
    raw: &RawConfig,
    names: Names,
) -> Result<(waypoint::route::RouteTable, waypoint::dr::DestinationRules), ConfigError> {
    // A VirtualService host: a Service hostname, or Kubernetes' short forms (`name`,
    // `name.namespace`, `name.namespace.svc`) seen from the VirtualService's namespace.
    let resolve = |ns: &str, host: &str| -> Option<waypoint::route::ServiceRef> {
        if names == Names::Kubernetes {
            return kubernetes_service(ns, host);
        }
        let by_host = raw.services.iter().find(|s| s.hostname == host);
        let short = || {
            let mut parts = host.split('.');
            let name = parts.next()?;
            let sns = parts.next().unwrap_or(ns);
            match parts.next() {
                None | Some("svc") if parts.next().is_none() => raw
                    .services
                    .iter()
                    .find(|s| s.name == name && s.namespace == sns),
                _ => None,
            }
        };
        // One of a ServiceEntry's hosts (each a Service of the entry's namespace and name):
        // only its hostname names it alone, and a short name names none of them.
        let shared = |s: &crate::config::model::RawService| shared_name(raw, &s.namespace, &s.name);
        match by_host {
            Some(s) if shared(s) => Some(waypoint::route::ServiceRef::by_host(&s.hostname)),
            Some(s) => Some(waypoint::route::ServiceRef::new(&s.namespace, &s.name)),
            None => short()
                .filter(|s| !shared(s))
                .map(|s| waypoint::route::ServiceRef::new(&s.namespace, &s.name)),
        }
    };
    let destination_rules = waypoint::dr::DestinationRules::build(&raw.destination_rules, &resolve)
        .map_err(|e| invalid(e.path, e.message))?;
    let mut specs =
        waypoint::vs::to_http_routes(&raw.virtual_services, &resolve, &destination_rules)
            .map_err(|e| invalid(e.path, e.message))?;
    for (vs, route) in raw.virtual_services.iter().zip(&specs) {
        if raw
            .http_routes
            .iter()
            .any(|r| r.namespace == route.namespace && r.name == route.name)
        {
            return Err(invalid(
                format!("virtualServices[{}/{}]", vs.namespace, vs.name),
                "an HTTPRoute has the same namespace/name; rename one",
            ));
        }
    }
    specs.extend(raw.http_routes.iter().cloned());
    let grpc = waypoint::route::grpc_to_http_routes(&raw.grpc_routes)
        .map_err(|e| invalid(e.path, e.message))?;
    specs.extend(grpc.iter().cloned());
    let table =
        waypoint::route::RouteTable::build(&specs).map_err(|e| invalid(e.path, e.message))?;
    if names == Names::Kubernetes {
        return Ok((table, destination_rules));
    }
    let known: HashSet<(&str, &str)> = raw
        .services
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    // A translated GRPCRoute keeps its parents', backends' and filters' places, so the
    // fields named here are its own.
    for r in raw.http_routes.iter().chain(&grpc) {
        let list = if r.grpc { "grpcRoutes" } else { "httpRoutes" };
        let base = format!("{list}[{}/{}]", r.namespace, r.name);
        // `backend`: a backendRef (a parent may name all of a ServiceEntry's hosts at once).
        let check = |backend: bool,
                     kind: &Option<String>,
                     ns: &Option<String>,
                     name: &str,
                     at: String| {
            if kind.as_deref() == Some(waypoint::route::HOSTNAME_KIND) {
                return match raw.services.iter().any(|s| s.hostname == name) {
                    true => Ok(()),
                    false => Err(invalid(
                        at,
                        format!("unknown hostname {name} (no service has this hostname)"),
                    )),
                };
            }
            let ns = ns.as_deref().unwrap_or(&r.namespace);
            if backend && shared_name(raw, ns, name) {
                return Err(invalid(
                    at,
                    format!(
                        "{ns}/{name} is the name of several services (a ServiceEntry's hosts): name one by its hostname ({{kind: Hostname, group: networking.istio.io, name: HOST}})"
                    ),
                ));
            }
            if known.contains(&(ns, name)) {
                Ok(())
            } else {
                Err(invalid(
                    at,
                    format!("unknown service {ns}/{name} (no service has this namespace and name)"),
                ))
            }
        };
        for (i, p) in r.parent_refs.iter().enumerate() {
            check(
                false,
                &None,
                &p.namespace,
                &p.name,
                format!("{base}.parentRefs[{i}]"),
            )?;
        }
        for (j, rule) in r.rules.iter().enumerate() {
            for (k, b) in rule.backend_refs.iter().enumerate() {
                check(
                    true,
                    &b.kind,
                    &b.namespace,
                    &b.name,
                    format!("{base}.rules[{j}].backendRefs[{k}]"),
                )?;
            }
            for (k, f) in rule.filters.iter().enumerate() {
                if let Some(m) = &f.request_mirror {
                    let b = &m.backend_ref;
                    check(
                        true,
                        &b.kind,
                        &b.namespace,
                        &b.name,
                        format!("{base}.rules[{j}].filters[{k}].requestMirror.backendRef"),
                    )?;
                }
            }
        }
    }
    Ok((table, destination_rules))
}
