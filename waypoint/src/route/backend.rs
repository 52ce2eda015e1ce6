//! Where a rule sends and what it edits on the way: a backendRef checked into a
//! [`Backend`] (with its own header filters), and header modifiers into [`HeaderEdits`].

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::*;

/// A backend's own header edits: in a weighted split applied before its rule's (Envoy
/// applies the weighted cluster's, then the route's), for a rule's one backend after them
/// (istiod appends the destination's to the route's); see [`Rule::backend_edits_last`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendEdits {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
}

/// Header edits, applied in Gateway API's order: set, add, remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
        for k in &self.remove {
            headers.remove(k);
        }
    }
}

pub(super) fn compile_backend(
    b: &BackendRefSpec,
    ns: &str,
    at: &str,
) -> Result<Backend, RouteError> {
    if b.name.is_empty() {
        return Err(err(format!("{at}.name"), "must not be empty"));
    }
    let service = match (b.kind.as_deref(), b.group.as_deref()) {
        // istiod's `Hostname` kind: a ServiceEntry's host (or any Service's hostname), found
        // in the registry when a request is sent.
        (Some(HOSTNAME_KIND), Some(ISTIO_NETWORKING)) => {
            if b.namespace.is_some() {
                return Err(err(
                    format!("{at}.namespace"),
                    "a backendRef of kind Hostname takes no namespace (the hostname says where)",
                ));
            }
            // A wildcard names the Service declared with that very host (a ServiceEntry's
            // `*.example.com`), as istiod looks it up.
            match host_match(&b.name) {
                Ok(_) => ServiceRef::by_host(&b.name),
                Err(m) => return Err(err(format!("{at}.name"), m)),
            }
        }
        (Some(HOSTNAME_KIND), g) => {
            return Err(err(
                format!("{at}.group"),
                format!(
                    "{:?}: the Hostname kind's group is {ISTIO_NETWORKING}",
                    g.unwrap_or("")
                ),
            ));
        }
        (kind, group) => {
            service_kind(kind, group, at)?;
            ServiceRef::new(b.namespace.as_deref().unwrap_or(ns), &b.name)
        }
    };
    if b.port == Some(0) {
        return Err(err(format!("{at}.port"), "0 is not a port"));
    }
    let mut own = BackendEdits::default();
    let mut seen = std::collections::HashSet::new();
    for (i, f) in b.filters.iter().enumerate() {
        let at = format!("{at}.filters[{i}]");
        let (body, field) = match f.kind.as_str() {
            "RequestHeaderModifier" => (&f.request_header_modifier, "requestHeaderModifier"),
            "ResponseHeaderModifier" => (&f.response_header_modifier, "responseHeaderModifier"),
            other => {
                return Err(err(
                    format!("{at}.type"),
                    format!(
                        "{other:?}: a backendRef's filters may be RequestHeaderModifier or ResponseHeaderModifier (as istiod's)"
                    ),
                ));
            }
        };
        if !seen.insert(f.kind.as_str()) {
            return Err(err(
                format!("{at}.type"),
                format!("a second {} filter on one backendRef", f.kind),
            ));
        }
        let others = [
            ("requestMirror", f.request_mirror.is_some()),
            ("urlRewrite", f.url_rewrite.is_some()),
            ("requestRedirect", f.request_redirect.is_some()),
            ("cors", f.cors.is_some()),
            (
                "responseHeaderModifier",
                field != "responseHeaderModifier" && f.response_header_modifier.is_some(),
            ),
            (
                "requestHeaderModifier",
                field != "requestHeaderModifier" && f.request_header_modifier.is_some(),
            ),
        ];
        if let Some((other, _)) = others.iter().find(|(_, set)| *set) {
            return Err(err(
                format!("{at}.{other}"),
                format!("does not belong to a filter of type {}", f.kind),
            ));
        }
        let Some(h) = body else {
            return Err(err(
                format!("{at}.{field}"),
                format!("required by type {}", f.kind),
            ));
        };
        let e = edits(h, &format!("{at}.{field}"))?;
        if field == "requestHeaderModifier" {
            own.request = e;
        } else {
            own.response = e;
        }
    }
    let edits = (!own.request.is_empty() || !own.response.is_empty()).then(|| Arc::new(own));
    Ok(Backend {
        service,
        subset: b.subset.as_deref().map(Arc::from),
        port: b.port,
        weight: b.weight.unwrap_or(1),
        edits,
    })
}

pub(super) fn edits(h: &HeaderModifierSpec, at: &str) -> Result<HeaderEdits, RouteError> {
    let name = |n: &str, at: String| {
        HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| err(at, format!("{n:?} is not a header name")))
    };
    let pair = |v: &HeaderValueSpec, at: String| -> Result<(HeaderName, HeaderValue), RouteError> {
        let n = name(&v.name, format!("{at}.name"))?;
        let val = HeaderValue::from_str(&v.value).map_err(|_| {
            err(
                format!("{at}.value"),
                format!("{:?} is not a header value", v.value),
            )
        })?;
        Ok((n, val))
    };
    Ok(HeaderEdits {
        set: h
            .set
            .iter()
            .enumerate()
            .map(|(i, v)| pair(v, format!("{at}.set[{i}]")))
            .collect::<Result<_, _>>()?,
        add: h
            .add
            .iter()
            .enumerate()
            .map(|(i, v)| pair(v, format!("{at}.add[{i}]")))
            .collect::<Result<_, _>>()?,
        remove: h
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(n, format!("{at}.remove[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}
