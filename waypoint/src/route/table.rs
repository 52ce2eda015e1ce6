//! The compiled table: every (rule, match) of every route, by parent Service (or by
//! hostname, for a VirtualService's host kept as it stands), in the order a request tries
//! them, and the lookup that picks a request's rule.

use super::*;

#[derive(Debug)]
struct Entry {
    /// The parent's port, if the route named one.
    port: Option<u16>,
    /// A VirtualService's position (its rules first, in order); `None` for an HTTPRoute.
    order: Option<usize>,
    hostnames: Arc<[HostMatch]>,
    matcher: Match,
    rule: Arc<Rule>,
}

impl Entry {
    /// Where the entry ranks among a Service's: ordered (VirtualService) entries first in
    /// their order, then by precedence, highest first.
    fn rank(&self) -> (u8, usize, std::cmp::Reverse<Precedence>) {
        match self.order {
            Some(i) => (0, i, std::cmp::Reverse((0, 0, false, 0, 0))),
            None => (1, 0, std::cmp::Reverse(self.matcher.precedence())),
        }
    }
}

#[derive(Debug)]
pub(super) enum HostMatch {
    Exact(String),
    /// `*.example.com`: the suffix `.example.com`, at least one label before it.
    Wildcard(String),
}

impl HostMatch {
    pub(super) fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Every route, compiled, by parent Service.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_parent: HashMap<ServiceRef, Vec<Entry>>,
    /// Entries whose parent is a hostname (a VirtualService's host from the cluster, kept
    /// as it stands), by that hostname: a request's Service takes these too.
    by_hostname: HashMap<Arc<str>, Vec<Entry>>,
    routes: usize,
    /// Ordered (VirtualService) entries so far: the next one's position.
    ordered_seen: usize,
}

impl RouteTable {
    /// Checks and compiles `specs`. Route names (`namespace/name`) must be unique.
    pub fn build(specs: &[HttpRouteSpec]) -> Result<RouteTable, RouteError> {
        let mut table = RouteTable::default();
        let mut seen = std::collections::HashSet::new();
        for spec in specs {
            let key = format!("{}/{}", spec.namespace, spec.name);
            let base = if spec.ordered {
                format!("virtualServices[{key}] (as an HTTPRoute)")
            } else if spec.grpc {
                format!("grpcRoutes[{key}]")
            } else {
                format!("httpRoutes[{key}]")
            };
            if spec.name.is_empty() || spec.namespace.is_empty() {
                return Err(err(base, "name and namespace must not be empty"));
            }
            if spec.name.contains('/') || spec.namespace.contains('/') {
                return Err(err(base, "a name or namespace cannot contain `/`"));
            }
            // A GRPCRoute and an HTTPRoute are different kinds: they may share a name.
            if !seen.insert((spec.grpc, key.clone())) {
                return Err(err(base, "a second route with this namespace/name"));
            }
            table.add(spec, &key, &base)?;
            table.routes += 1;
        }
        for entries in table
            .by_parent
            .values_mut()
            .chain(table.by_hostname.values_mut())
        {
            // Stable, so ties keep file order.
            entries.sort_by_key(Entry::rank);
        }
        Ok(table)
    }

    fn add(&mut self, spec: &HttpRouteSpec, key: &str, base: &str) -> Result<(), RouteError> {
        if spec.parent_refs.is_empty() {
            return Err(err(
                format!("{base}.parentRefs"),
                "at least one parent Service is required",
            ));
        }
        let hostnames: Arc<[HostMatch]> = spec
            .hostnames
            .iter()
            .enumerate()
            .map(|(i, h)| host_match(h).map_err(|m| err(format!("{base}.hostnames[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let mut parents = Vec::new();
        for (i, p) in spec.parent_refs.iter().enumerate() {
            let at = format!("{base}.parentRefs[{i}]");
            if p.port == Some(0) {
                return Err(err(format!("{at}.port"), "0 is not a port"));
            }
            // A VirtualService's host the registry was not asked about (config from the
            // cluster): a hostname, found per request. Not a kind an HTTPRoute may name.
            if spec.ordered && p.kind.as_deref() == Some(HOSTNAME_KIND) {
                parents.push((ServiceRef::by_host(&p.name), p.port));
                continue;
            }
            parent_kind(p.kind.as_deref(), p.group.as_deref(), &at)?;
            let ns = p.namespace.as_deref().unwrap_or(&spec.namespace);
            parents.push((ServiceRef::new(ns, &p.name), p.port));
        }
        let mut rules = Vec::new();
        for (r, rule) in spec.rules.iter().enumerate() {
            let at = format!("{base}.rules[{r}]");
            let name = rule.name.clone().unwrap_or_else(|| r.to_string());
            let compiled = compile_rule(rule, spec, key, &name, &at)?;
            let matches = if rule.matches.is_empty() {
                vec![MatchSpec::default()]
            } else {
                rule.matches.clone()
            };
            let mut shared = None;
            for (m, ms) in matches.iter().enumerate() {
                let at = format!("{at}.matches[{m}]");
                let matcher = compile_match(ms, &at)?;
                // A `ReplacePrefixMatch` replaces what this match matched: the rule is
                // resolved per match. Otherwise every match shares one rule.
                let mut own = compiled.clone();
                let rule = match own.prefix_modifier() {
                    Some(modifier) => {
                        resolve_prefix(modifier, ms.path.as_ref(), &at)?;
                        Arc::new(own)
                    }
                    None => shared
                        .get_or_insert_with(|| Arc::new(compiled.clone()))
                        .clone(),
                };
                rules.push((matcher, rule));
            }
        }
        if spec.rules.is_empty() {
            // Gateway API: a route with no rules sends everything to the parent; here it
            // adds nothing.
            return Ok(());
        }
        let first = self.ordered_seen;
        if spec.ordered {
            self.ordered_seen += rules.len();
        }
        for (parent, port) in parents {
            let entries = match parent.host() {
                Some(host) => self.by_hostname.entry(host.into()).or_default(),
                None => self.by_parent.entry(parent.clone()).or_default(),
            };
            for (i, (m, rule)) in rules.iter().enumerate() {
                let matcher = recompile(m);
                entries.push(Entry {
                    port,
                    order: spec.ordered.then_some(first + i),
                    hostnames: hostnames.clone(),
                    matcher,
                    rule: rule.clone(),
                });
            }
        }
        Ok(())
    }

    /// Routes compiled.
    pub fn len(&self) -> usize {
        self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// Whether any route takes traffic for `service`.
    pub fn has_routes(&self, service: &ServiceRef) -> bool {
        self.by_parent.contains_key(service)
    }

    /// The rule for a request to `service`:`port`: the first entry in precedence order whose
    /// port, hostnames and match take it. `Ok(None)`: the Service has no route at all (the
    /// caller passes traffic through). `Err(())`: it has routes and none matched (404).
    #[allow(clippy::result_unit_err)]
    pub fn select(
        &self,
        service: &ServiceRef,
        port: u16,
        parts: &Parts,
    ) -> Result<Option<Arc<Rule>>, ()> {
        match self.by_parent.get(service) {
            Some(entries) => self.select_in(entries, port, parts),
            None => Ok(None),
        }
    }

    /// [`select`](Self::select) for a request to the Service `service` whose hostname is
    /// `hostname`: its routes by name and those naming its hostname (VirtualServices read
    /// from the cluster), ranked as one list. The hostname is looked up only when some
    /// route has one, so a mesh without pays nothing for it; a Service with both merges
    /// the two sorted lists as it goes, without allocating.
    #[allow(clippy::result_unit_err)]
    pub fn select_for(
        &self,
        service: &ServiceRef,
        hostname: &str,
        port: u16,
        parts: &Parts,
    ) -> Result<Option<Arc<Rule>>, ()> {
        let named = self.by_parent.get(service).map(Vec::as_slice);
        let hosted = match self.by_hostname.is_empty() {
            true => None,
            false => self.by_hostname.get(hostname).map(Vec::as_slice),
        };
        match (named, hosted) {
            (Some(a), Some(b)) => self.select_in(Merged { a, b }, port, parts),
            (Some(one), None) | (None, Some(one)) => self.select_in(one.iter(), port, parts),
            (None, None) => Ok(None),
        }
    }

    fn select_in<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
        port: u16,
        parts: &Parts,
    ) -> Result<Option<Arc<Rule>>, ()> {
        let host = request_host(parts);
        let mut attached = false;
        for e in entries {
            if e.port.is_some_and(|p| p != port) {
                continue;
            }
            attached = true;
            if !e.hostnames.is_empty() && !e.hostnames.iter().any(|h| h.matches(host)) {
                continue;
            }
            if e.matcher.matches(parts) {
                return Ok(Some(e.rule.clone()));
            }
        }
        if attached { Err(()) } else { Ok(None) }
    }
}

/// Two ranked entry lists walked as one (a Service's routes by name and by hostname); of
/// two that rank alike, the first list's goes first.
struct Merged<'a> {
    a: &'a [Entry],
    b: &'a [Entry],
}

impl<'a> Iterator for Merged<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x.rank() <= y.rank(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let list = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = list.split_first()?;
        *list = rest;
        Some(first)
    }
}

/// Fills in the prefix a path modifier replaces, from the match that selects the rule.
fn resolve_prefix(
    modifier: &mut PathRewrite,
    path: Option<&PathMatchSpec>,
    at: &str,
) -> Result<(), RouteError> {
    let kind = path.and_then(|p| p.kind.as_deref()).unwrap_or("PathPrefix");
    *modifier = match (
        std::mem::replace(modifier, PathRewrite::Full(String::new())),
        path,
    ) {
        // Gateway API: no path match is `PathPrefix /`.
        (PathRewrite::Prefix { with, .. }, None) => PathRewrite::Prefix {
            matched: "/".into(),
            with,
        },
        (PathRewrite::Prefix { with, .. }, Some(p)) if kind == "PathPrefix" => {
            PathRewrite::Prefix {
                matched: p.value.clone(),
                with,
            }
        }
        (PathRewrite::Prefix { .. }, Some(_)) => {
            return Err(err(
                format!("{at}.path.type"),
                format!("{kind}: ReplacePrefixMatch needs a PathPrefix match (Gateway API)"),
            ));
        }
        // Istio: `rewrite.uri` replaces a matched prefix, or the whole path after an
        // exact or regex match; with no uri match Envoy's route matches prefix `/`.
        (PathRewrite::Literal { with, .. }, None) => PathRewrite::Literal {
            matched: "/".into(),
            with,
        },
        (PathRewrite::Literal { with, .. }, Some(p)) => match &p.literal_prefix {
            Some(prefix) => PathRewrite::Literal {
                matched: prefix.clone(),
                with,
            },
            None => PathRewrite::Full(with),
        },
        (done @ (PathRewrite::Full(_) | PathRewrite::Regex { .. }), _) => done,
    };
    Ok(())
}

/// Regexes are compiled once per match; entries for several parents share a copy.
fn recompile(m: &Match) -> Match {
    let path = match &m.path {
        PathMatch::Exact(p) => PathMatch::Exact(p.clone()),
        PathMatch::Prefix(p) => PathMatch::Prefix(p.clone()),
        PathMatch::Regex(r) => PathMatch::Regex(r.clone()),
    };
    let v = |x: &ValueMatch| match x {
        ValueMatch::Exact(e) => ValueMatch::Exact(e.clone()),
        ValueMatch::Regex(r) => ValueMatch::Regex(r.clone()),
    };
    Match {
        path,
        headers: m.headers.iter().map(|(k, x)| (k.clone(), v(x))).collect(),
        query: m.query.iter().map(|(k, x)| (k.clone(), v(x))).collect(),
        method: m.method.clone(),
        no_path: m.no_path,
    }
}
