//! The checks of one Telemetry on its own, and the readings of its parts (modes, tags,
//! metric selectors, tag overrides) the merge uses too.

use super::*;

/// Checks a Telemetry on its own (its providers are checked against the MeshConfig when
/// the table is built): the fields the waypoint refuses, enum values, expressions.
pub fn check(t: &TelemetrySpec) -> Result<(), RouteError> {
    let at = format!("telemetries[{}/{}]", t.namespace, t.name);
    if t.name.is_empty() || t.namespace.is_empty() {
        return Err(err(at, "a Telemetry needs a name and a namespace"));
    }
    if t.target_ref.is_some() && !t.target_refs.is_empty() {
        return Err(err(
            format!("{at}.targetRef"),
            "give targetRef or targetRefs, not both",
        ));
    }
    if t.selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
        && (t.target_ref.is_some() || !t.target_refs.is_empty())
    {
        return Err(err(
            format!("{at}.selector"),
            "give a selector or targetRefs, not both",
        ));
    }
    for (i, r) in t.target_ref.iter().chain(&t.target_refs).enumerate() {
        let rat = format!("{at}.targetRefs[{i}]");
        let group = r.group.as_deref().unwrap_or("");
        match (r.kind.as_str(), group) {
            ("Gateway", "gateway.networking.k8s.io") | ("Service", "" | "core") => {}
            ("Gateway" | "Service", g) => {
                return Err(err(
                    format!("{rat}.group"),
                    format!("{g:?} is not the group of a {}", r.kind),
                ));
            }
            (k, _) => {
                return Err(err(
                    format!("{rat}.kind"),
                    format!("{k:?}: a Telemetry on a waypoint targets a Gateway or a Service"),
                ));
            }
        }
        if r.namespace.as_deref().is_some_and(|n| n != t.namespace) {
            return Err(err(
                format!("{rat}.namespace"),
                "a target is in the Telemetry's own namespace",
            ));
        }
    }
    for (i, tr) in t.tracing.iter().enumerate() {
        let tat = format!("{at}.tracing[{i}]");
        mode(tr.match_.as_ref(), &format!("{tat}.match.mode"))?;
        if let Some(p) = tr.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            return Err(err(
                format!("{tat}.randomSamplingPercentage"),
                format!("{p} is not 0 to 100"),
            ));
        }
        for (name, tag) in tr.custom_tags.iter().flatten() {
            custom_tag(name, tag, &format!("{tat}.customTags.{name}"))?;
        }
    }
    for (i, m) in t.metrics.iter().enumerate() {
        for (j, o) in m.overrides.iter().enumerate() {
            let oat = format!("{at}.metrics[{i}].overrides[{j}]");
            metric_selector(o.match_.as_ref(), &format!("{oat}.match"))?;
            for (name, tag) in &o.tag_overrides {
                tag_override(name, tag, &format!("{oat}.tagOverrides.{name}"))?;
            }
        }
        if let Some(r) = &m.reporting_interval {
            crate::route::duration(r, &format!("{at}.metrics[{i}].reportingInterval"))?;
        }
    }
    for (i, l) in t.access_logging.iter().enumerate() {
        let lat = format!("{at}.accessLogging[{i}]");
        mode(l.match_.as_ref(), &format!("{lat}.match.mode"))?;
        if let Some(f) = &l.filter {
            Expr::compile(&f.expression).map_err(|e| err(format!("{lat}.filter.expression"), e))?;
        }
    }
    Ok(())
}

/// Whether an entry with this mode applies to the waypoint (the server side).
pub(super) fn mode(m: Option<&spec::ModeSelectorSpec>, at: &str) -> Result<bool, RouteError> {
    match m.and_then(|m| m.mode.as_deref()) {
        None | Some("CLIENT_AND_SERVER") | Some("SERVER") => Ok(true),
        Some("CLIENT") => Ok(false),
        Some(other) => Err(err(
            at,
            format!("{other:?} is not one of CLIENT, SERVER, CLIENT_AND_SERVER"),
        )),
    }
}

pub(super) fn custom_tag(
    name: &str,
    t: &spec::CustomTagSpec,
    at: &str,
) -> Result<TagValue, RouteError> {
    if name.is_empty() {
        return Err(err(at, "a tag needs a name"));
    }
    let given = [
        t.literal.is_some(),
        t.environment.is_some(),
        t.header.is_some(),
        t.formatter.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(err(
            at,
            "give exactly one of literal, environment, header, formatter",
        ));
    }
    if let Some(f) = &t.formatter {
        let f = super::format::Format::parse(&f.value)
            .map_err(|e| err(format!("{at}.formatter.value"), e))?;
        return Ok(TagValue::Format(Arc::new(f)));
    }
    if let Some(l) = &t.literal {
        return Ok(TagValue::Fixed(l.value.clone()));
    }
    if let Some(e) = &t.environment {
        if e.name.is_empty() {
            return Err(err(format!("{at}.environment.name"), "empty"));
        }
        let v = std::env::var(&e.name)
            .ok()
            .or_else(|| e.default_value.clone())
            .unwrap_or_default();
        return Ok(TagValue::Fixed(v));
    }
    let h = t.header.as_ref().expect("one of the four is given");
    let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
        err(
            format!("{at}.header.name"),
            format!("{:?} is not a header name", h.name),
        )
    })?;
    Ok(TagValue::Header {
        name,
        default: h.default_value.clone().unwrap_or_default(),
    })
}

/// The metrics a selector picks (empty: none of the waypoint's), or an error.
pub(super) fn metric_selector(
    m: Option<&spec::MetricSelectorSpec>,
    at: &str,
) -> Result<(Vec<Metric>, bool), RouteError> {
    let Some(m) = m else {
        return Ok((Metric::ALL.to_vec(), true));
    };
    let applies = mode(
        Some(&spec::ModeSelectorSpec {
            mode: m.mode.clone(),
        }),
        &format!("{at}.mode"),
    )?;
    if m.metric.is_some() && m.custom_metric.is_some() {
        return Err(err(at, "give metric or customMetric, not both"));
    }
    let metrics = match (m.metric.as_deref(), m.custom_metric.as_deref()) {
        (None | Some("ALL_METRICS"), None) => Metric::ALL.to_vec(),
        (Some("REQUEST_COUNT"), _) => vec![Metric::RequestCount],
        (Some("REQUEST_DURATION"), _) => vec![Metric::RequestDuration],
        (Some("REQUEST_SIZE"), _) => vec![Metric::RequestSize],
        (Some("RESPONSE_SIZE"), _) => vec![Metric::ResponseSize],
        (Some("GRPC_REQUEST_MESSAGES"), _) => vec![Metric::GrpcRequestMessages],
        (Some("GRPC_RESPONSE_MESSAGES"), _) => vec![Metric::GrpcResponseMessages],
        (
            Some(
                "TCP_OPENED_CONNECTIONS"
                | "TCP_CLOSED_CONNECTIONS"
                | "TCP_SENT_BYTES"
                | "TCP_RECEIVED_BYTES",
            ),
            _,
        ) => Vec::new(),
        (Some(other), _) => {
            return Err(err(
                format!("{at}.metric"),
                format!("{other:?} is not one of Istio's metrics"),
            ));
        }
        (None, Some(custom)) => match custom {
            "requests_total" => vec![Metric::RequestCount],
            "request_duration_milliseconds" => vec![Metric::RequestDuration],
            "request_bytes" => vec![Metric::RequestSize],
            "response_bytes" => vec![Metric::ResponseSize],
            "request_messages_total" => vec![Metric::GrpcRequestMessages],
            "response_messages_total" => vec![Metric::GrpcResponseMessages],
            // Another proxy's metric: not one this waypoint reports.
            _ => Vec::new(),
        },
    };
    Ok((metrics, applies))
}

/// A tag override: `None` for REMOVE, `Some(expr)` for UPSERT.
pub(super) fn tag_override(
    name: &str,
    t: &spec::TagOverrideSpec,
    at: &str,
) -> Result<Option<Expr>, RouteError> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(err(at, format!("{name:?} is not a Prometheus label name")));
    }
    match t.operation.as_deref() {
        Some("REMOVE") => Ok(None),
        None | Some("UPSERT") => {
            let v = t.value.as_deref().ok_or_else(|| {
                err(
                    format!("{at}.value"),
                    "UPSERT needs a value (a CEL expression)",
                )
            })?;
            Expr::compile(v)
                .map(Some)
                .map_err(|e| err(format!("{at}.value"), e))
        }
        Some(other) => Err(err(
            format!("{at}.operation"),
            format!("{other:?} is not UPSERT or REMOVE"),
        )),
    }
}
