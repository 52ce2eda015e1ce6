//! Merging the Telemetries that apply into one plan per Service, as istiod merges them
//! for a waypoint (see the module docs of [`super`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::check::{custom_tag, metric_selector, mode, tag_override};
use super::*;

/// Where the waypoint stands, for choosing Telemetries.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The waypoint's Gateway; its namespace is the waypoint's.
    pub gateway: ServiceRef,
    /// `--otlp-endpoint`'s exporter and `--trace-sampling` (0..=1): tracing where no
    /// Telemetry and no default provider says otherwise.
    pub fallback: Option<(Arc<Tracing>, f64)>,
}

/// What building a table noticed and skipped, for the log.
pub type Warnings = Vec<String>;

impl TelemetryTable {
    /// Merges `telemetries` (each already [`check`]ed) for every Service a Telemetry
    /// targets, and for the rest. Exporters come from `exporters`; one that fails to start
    /// is an error.
    pub fn build(
        telemetries: &[TelemetrySpec],
        mesh: &Mesh,
        scope: &Scope,
        exporters: &mut dyn Exporters,
    ) -> Result<(TelemetryTable, Warnings), RouteError> {
        let ns = &*scope.gateway.namespace;
        fn wide<'a>(
            telemetries: &'a [TelemetrySpec],
            n: &'a str,
        ) -> impl Iterator<Item = &'a TelemetrySpec> {
            telemetries.iter().filter(move |t| {
                t.namespace == n
                    && t.selector
                        .as_ref()
                        .is_none_or(|s| s.match_labels.is_empty())
                    && t.target_ref.is_none()
                    && t.target_refs.is_empty()
            })
        }
        let targets = |t: &TelemetrySpec, kind: &str, name: &str| {
            t.target_ref
                .iter()
                .chain(&t.target_refs)
                .any(|r| r.kind == kind && r.name == name)
        };
        let mut base: Vec<&TelemetrySpec> =
            wide(telemetries, &mesh.root_namespace).take(1).collect();
        if ns != mesh.root_namespace {
            base.extend(wide(telemetries, ns).take(1));
        }
        base.extend(
            telemetries
                .iter()
                .filter(|t| t.namespace == ns && targets(t, "Gateway", &scope.gateway.name)),
        );
        let mut services: Vec<ServiceRef> = Vec::new();
        let mut seen = HashSet::new();
        for t in telemetries {
            for r in t.target_ref.iter().chain(&t.target_refs) {
                if r.kind == "Service" {
                    let s = ServiceRef::new(&t.namespace, &r.name);
                    if seen.insert(s.clone()) {
                        services.push(s);
                    }
                }
            }
        }
        let mut b = Builder {
            mesh,
            scope,
            exporters,
            warnings: Vec::new(),
            upserts: BTreeMap::new(),
        };
        let default = Arc::new(b.plan(&base)?);
        let mut by_service = HashMap::new();
        for s in services {
            let mut applied = base.clone();
            applied.extend(
                telemetries
                    .iter()
                    .filter(|t| t.namespace == *s.namespace && targets(t, "Service", &s.name)),
            );
            by_service.insert(s, Arc::new(b.plan(&applied)?));
        }
        let mut warnings = b.warnings;
        warnings.sort();
        warnings.dedup();
        Ok((
            TelemetryTable {
                default,
                by_service,
                upserts: b.upserts,
                authz: Arc::new(mesh.authz_providers()),
                root_namespace: mesh.root_namespace.as_str().into(),
            },
            warnings,
        ))
    }
}

struct Builder<'a> {
    mesh: &'a Mesh,
    scope: &'a Scope,
    exporters: &'a mut dyn Exporters,
    warnings: Warnings,
    upserts: BTreeMap<String, Expr>,
}

impl Builder<'_> {
    fn plan(&mut self, applied: &[&TelemetrySpec]) -> Result<Plan, RouteError> {
        let (access_log, formatted_logs) = self.access_log(applied)?;
        Ok(Plan {
            tracing: self.tracing(applied)?,
            access_log,
            formatted_logs,
            metrics: self.metrics(applied)?,
        })
    }

    /// A provider by name, if it is of the wanted kind; otherwise a warning.
    fn provider(&mut self, name: &str, who: &str, want: &str) -> Option<Provider> {
        match self.mesh.provider(name) {
            None => {
                self.warnings.push(format!("{who}: provider {name:?} is not in the MeshConfig's extensionProviders; skipped"));
                None
            }
            Some(Provider::Unusable(why)) => {
                self.warnings
                    .push(format!("{who}: provider {name:?} {why}; skipped"));
                None
            }
            Some(p) => {
                let kind_ok = matches!(
                    (p, want),
                    (Provider::OpenTelemetry(_), "tracing")
                        | (Provider::StdoutLog(_), "access logging")
                        | (Provider::OpenTelemetry(_), "access logging")
                        | (Provider::OtelLog(_), "access logging")
                        | (Provider::Prometheus, "metrics")
                );
                if !kind_ok {
                    self.warnings.push(format!(
                        "{who}: provider {name:?} does not do {want}; skipped"
                    ));
                    return None;
                }
                Some(p.clone())
            }
        }
    }

    fn tracing(&mut self, applied: &[&TelemetrySpec]) -> Result<Option<TracingPlan>, RouteError> {
        let entries: Vec<(&TelemetrySpec, &spec::TracingSpec)> = applied
            .iter()
            .flat_map(|t| t.tracing.iter().map(move |e| (*t, e)))
            .collect();
        let fallback = self.scope.fallback.clone();
        let mut provider: Option<(Arc<Tracing>, usize)> = None;
        let mut sampling = fallback.as_ref().map_or(0.01, |(_, s)| *s);
        if let Some(name) = self.mesh.default_tracing.first().cloned() {
            provider = self.tracer(&name, "defaultProviders.tracing")?;
        } else if let Some((t, _)) = &fallback {
            provider = Some((t.clone(), DEFAULT_MAX_TAG_LENGTH));
        }
        let (mut report, mut istio_tags) = (true, true);
        let mut custom = Vec::new();
        for (t, e) in entries {
            let who = format!("telemetries[{}/{}]", t.namespace, t.name);
            if !mode(e.match_.as_ref(), "")? {
                continue;
            }
            if let Some(p) = e.providers.first() {
                provider = self.tracer(&p.name, &who)?;
            }
            if let Some(d) = e.disable_span_reporting {
                report = !d;
            }
            if let Some(tags) = &e.custom_tags {
                custom = tags
                    .iter()
                    .map(|(k, v)| {
                        custom_tag(k, v, &format!("{who}.customTags.{k}")).map(|v| (k.clone(), v))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
            }
            if let Some(p) = e.random_sampling_percentage {
                sampling = p / 100.0;
            }
            if let Some(i) = e.enable_istio_tags {
                istio_tags = i;
            }
            // Without propagation the waypoint neither starts spans nor rewrites the
            // context; reporting spans whose context goes nowhere would break traces.
            if let Some(true) = e.disable_context_propagation {
                report = false;
            }
        }
        Ok(match provider {
            Some((tracer, max_path)) if report => Some(TracingPlan {
                tracer,
                sampling,
                istio_tags,
                custom_tags: custom,
                max_path,
            }),
            _ => None,
        })
    }

    fn tracer(
        &mut self,
        name: &str,
        who: &str,
    ) -> Result<Option<(Arc<Tracing>, usize)>, RouteError> {
        match self.provider(name, who, "tracing") {
            Some(Provider::OpenTelemetry(e)) => {
                let t = self
                    .exporters
                    .exporter(&e)
                    .map_err(|m| err(format!("extensionProviders[{name}]"), m))?;
                Ok(Some((t, e.max_tag_length)))
            }
            _ => Ok(None),
        }
    }

    /// Istio's merge of access logging: a provider list overrides its parent's; `disabled`
    /// and `filter` apply to the providers they name. Returns the waypoint's own line (for
    /// the providers without a format) and the lines in Envoy formats.
    #[allow(clippy::type_complexity)]
    fn access_log(
        &mut self,
        applied: &[&TelemetrySpec],
    ) -> Result<(Option<LogPlan>, Vec<FormattedLog>), RouteError> {
        // Entries for the client side are not the waypoint's: dropped before merging, so
        // they leave the server side as it would be without them.
        let logs: Vec<(&TelemetrySpec, &spec::AccessLoggingSpec)> = applied
            .iter()
            .flat_map(|t| t.access_logging.iter().map(move |e| (*t, e)))
            .filter(|(_, e)| mode(e.match_.as_ref(), "").unwrap_or(false))
            .collect();
        if logs.is_empty() && self.mesh.default_access_logging.is_empty() {
            if !self.mesh.access_log_file {
                return Ok((None, Vec::new()));
            }
            return Ok(match &self.mesh.access_log_format {
                None => (Some(LogPlan { filter: None }), Vec::new()),
                Some(format) => (
                    None,
                    vec![FormattedLog {
                        filter: None,
                        format: format.clone(),
                        sink: LogSink::Stdout,
                    }],
                ),
            });
        }
        let names = |e: &spec::AccessLoggingSpec| -> Vec<String> {
            e.providers
                .iter()
                .map(|p| p.name.to_ascii_lowercase())
                .collect()
        };
        let mut in_scope: Vec<String> = self
            .mesh
            .default_access_logging
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let mut filters: HashMap<String, Option<Expr>> = HashMap::new();
        // Per Telemetry: the providers its applicable entries name replace the set.
        for t in applied {
            let mut named = Vec::new();
            for e in &t.access_logging {
                if !mode(e.match_.as_ref(), "")? {
                    continue;
                }
                for n in names(e) {
                    let f = match &e.filter {
                        Some(f) => Some(
                            Expr::compile(&f.expression)
                                .map_err(|m| err("accessLogging.filter.expression", m))?,
                        ),
                        None => None,
                    };
                    filters.insert(n.clone(), f);
                    named.push(n);
                }
            }
            if !named.is_empty() {
                in_scope = named;
            }
        }
        let mut state: BTreeMap<String, Option<Option<Expr>>> = BTreeMap::new();
        let mut parent: Vec<String> = self
            .mesh
            .default_access_logging
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        for (_, e) in &logs {
            let mut ns = names(e);
            if ns.is_empty() {
                ns = parent.clone();
            }
            parent = ns.clone();
            if !mode(e.match_.as_ref(), "")? {
                continue;
            }
            for n in ns {
                if !in_scope.contains(&n) {
                    continue;
                }
                if e.disabled == Some(true) {
                    state.insert(n, None);
                } else {
                    state.insert(n.clone(), Some(filters.get(&n).cloned().flatten()));
                }
            }
        }
        if logs.is_empty() {
            for n in &in_scope {
                state.insert(n.clone(), Some(None));
            }
        }
        // The waypoint's own line: written once when any enabled provider without a format
        // would; a provider without a filter takes every request. A provider with a format
        // writes its own lines.
        let mut plan: Option<LogPlan> = None;
        let mut formatted = Vec::new();
        for (n, s) in state {
            let Some(filter) = s else { continue };
            let who = "accessLogging";
            match self.provider(&n, who, "access logging") {
                Some(Provider::StdoutLog(None)) => {}
                Some(Provider::StdoutLog(Some(format))) => {
                    formatted.push(FormattedLog {
                        filter,
                        format,
                        sink: LogSink::Stdout,
                    });
                    continue;
                }
                Some(Provider::OtelLog(o)) => {
                    let export = self
                        .exporters
                        .log_exporter(&o.exporter, &o.log_name)
                        .map_err(|m| err(format!("extensionProviders[{n}]"), m))?;
                    formatted.push(FormattedLog {
                        filter,
                        format: o.format.clone(),
                        sink: LogSink::Otel(export),
                    });
                    continue;
                }
                Some(_) => {
                    self.warnings.push(format!(
                        "{who}: provider {n:?} is not a log to standard output; skipped"
                    ));
                    continue;
                }
                None => continue,
            }
            plan = Some(match (plan, filter) {
                (None, f) => LogPlan { filter: f },
                (Some(LogPlan { filter: None }), _) | (Some(_), None) => LogPlan { filter: None },
                (Some(LogPlan { filter: Some(a) }), Some(b)) => {
                    let either = format!("({}) || ({})", a.source(), b.source());
                    LogPlan {
                        filter: Some(
                            Expr::compile(&either)
                                .map_err(|m| err("accessLogging.filter.expression", m))?,
                        ),
                    }
                }
            });
        }
        Ok((plan, formatted))
    }

    /// Istio's merge of metrics: a provider list overrides its parent's; overrides merge
    /// in order, per metric.
    fn metrics(&mut self, applied: &[&TelemetrySpec]) -> Result<MetricsPlan, RouteError> {
        let entries: Vec<(&TelemetrySpec, &spec::MetricsSpec)> = applied
            .iter()
            .flat_map(|t| t.metrics.iter().map(move |e| (*t, e)))
            .collect();
        let mut names: Vec<String> = self.mesh.default_metrics.clone();
        for (_, e) in &entries {
            if !e.providers.is_empty() {
                names = e.providers.iter().map(|p| p.name.clone()).collect();
            }
        }
        let mut prometheus = false;
        for n in &names {
            if let Some(Provider::Prometheus) = self.provider(n, "metrics", "metrics") {
                prometheus = true;
            }
        }
        if !prometheus {
            return Ok(MetricsPlan::default());
        }
        #[derive(Default, Clone)]
        struct State {
            disabled: bool,
            tags: BTreeMap<String, Option<Expr>>,
        }
        let mut state: [State; Metric::ALL.len()] = Default::default();
        for (t, e) in &entries {
            // Overrides for a provider other than Prometheus are not the waypoint's.
            let for_prometheus = e.providers.is_empty()
                || e.providers
                    .iter()
                    .any(|p| matches!(self.mesh.provider(&p.name), Some(Provider::Prometheus)));
            if !for_prometheus {
                continue;
            }
            for (j, o) in e.overrides.iter().enumerate() {
                let at = format!(
                    "telemetries[{}/{}].metrics.overrides[{j}]",
                    t.namespace, t.name
                );
                let (metrics, applies) =
                    metric_selector(o.match_.as_ref(), &format!("{at}.match"))?;
                if !applies {
                    continue;
                }
                for m in metrics {
                    let s = &mut state[m as usize];
                    if let Some(d) = o.disabled {
                        s.disabled = d;
                    }
                    for (name, tag) in &o.tag_overrides {
                        let expr = tag_override(name, tag, &format!("{at}.tagOverrides.{name}"))?;
                        s.tags.insert(name.clone(), expr);
                    }
                }
            }
        }
        let mut plan = MetricsPlan::default();
        for (i, s) in state.into_iter().enumerate() {
            if s.disabled {
                continue;
            }
            let mut labels = Labels::default();
            for (name, expr) in s.tags {
                match expr {
                    None => labels.removed.push(name),
                    Some(e) => {
                        if let Some(prev) = self.upserts.get(&name)
                            && prev != &e
                        {
                            return Err(err(
                                format!("metrics.tagOverrides.{name}"),
                                format!(
                                    "two values for one tag ({:?} and {:?}): the waypoint takes one expression per tag name",
                                    prev.source(),
                                    e.source()
                                ),
                            ));
                        }
                        self.upserts.insert(name.clone(), e);
                        labels.upserted.push(name);
                    }
                }
            }
            plan.metrics[i] = Some(labels);
        }
        Ok(plan)
    }
}
