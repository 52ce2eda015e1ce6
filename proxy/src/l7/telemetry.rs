//! The waypoint's Telemetry API on the control side: the MeshConfig's providers
//! (`--mesh-config`, watched), the Telemetry objects of the current L7 config, and the
//! exporters their providers need, merged into the [`TelemetryTable`] the cores use.
//!
//! Invariants:
//! - a table is built whole, then published; a MeshConfig or a Telemetry set that does not
//!   build is logged and the table in force stays (only at start is it an error);
//! - an exporter is started once per distinct provider definition and shared by every
//!   table that uses it; one no table uses any more is dropped (its last spans flushed by
//!   the SDK's shutdown on drop).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use waypoint::route::ServiceRef;
use waypoint::telemetry::{
    Exporter, Exporters, Mesh, MeshSpec, Scope, TelemetrySpec, TelemetryTable,
};
use waypoint::trace::logs::LogExport;
use waypoint::trace::{OtlpProtocol, TraceConfig, Tracing};

/// The exporters in use, by the provider definition they serve.
#[derive(Default)]
struct ExporterCache {
    started: HashMap<Exporter, Arc<Tracing>>,
    /// Access log exporters (`envoyOtelAls`), by collector and log name.
    logs: HashMap<(Exporter, String), Arc<LogExport>>,
    /// Roots for `https://` providers (`--otlp-ca`), else the system's.
    roots: Option<PathBuf>,
    /// What the build in progress asked for.
    used: Vec<Exporter>,
    used_logs: Vec<(Exporter, String)>,
}

impl Exporters for ExporterCache {
    fn exporter(&mut self, e: &Exporter) -> Result<Arc<Tracing>, String> {
        self.used.push(e.clone());
        if let Some(t) = self.started.get(e) {
            return Ok(t.clone());
        }
        let cfg = TraceConfig {
            service_name: e.service_name.clone(),
            roots: self.roots.clone(),
            protocol: match &e.http_path {
                Some(p) => OtlpProtocol::Http {
                    path: Some(p.clone()),
                },
                None => OtlpProtocol::Grpc,
            },
            headers: e.headers.clone(),
            timeout: e.timeout,
            ..TraceConfig::new(e.endpoint.clone())
        };
        let t = Tracing::start(&cfg).map_err(|m| format!("{}: {m}", e.endpoint))?;
        tracing::info!(endpoint = %e.endpoint, grpc = e.http_path.is_none(), "trace exporter started");
        self.started.insert(e.clone(), t.clone());
        Ok(t)
    }

    fn log_exporter(&mut self, e: &Exporter, log_name: &str) -> Result<Arc<LogExport>, String> {
        let key = (e.clone(), log_name.to_string());
        self.used_logs.push(key.clone());
        if let Some(l) = self.logs.get(&key) {
            return Ok(l.clone());
        }
        let cfg = TraceConfig {
            service_name: e.service_name.clone(),
            roots: self.roots.clone(),
            protocol: OtlpProtocol::Grpc,
            timeout: e.timeout,
            ..TraceConfig::new(e.endpoint.clone())
        };
        let l = LogExport::start(&cfg, log_name).map_err(|m| format!("{}: {m}", e.endpoint))?;
        tracing::info!(endpoint = %e.endpoint, log_name, "access log exporter started");
        self.logs.insert(key, l.clone());
        Ok(l)
    }
}

struct State {
    mesh: Mesh,
    /// The newest MeshConfig read, when it parsed but no table built with it (a Telemetry
    /// it does not fit): tried again with the next Telemetry objects, so the file need not
    /// change again for it to apply once they fit.
    pending: Option<Mesh>,
    mesh_text: Option<String>,
    telemetries: Arc<Vec<TelemetrySpec>>,
    exporters: ExporterCache,
    current: Arc<TelemetryTable>,
}

/// Where a new table goes.
type Publisher = Box<dyn Fn(Arc<TelemetryTable>) + Send>;

/// The table in force, and what rebuilds it.
pub(super) struct TelemetrySource {
    mesh_path: Option<PathBuf>,
    scope: Scope,
    service_name: String,
    state: Mutex<State>,
    publish: Mutex<Option<Publisher>>,
}

impl TelemetrySource {
    /// Reads the MeshConfig (if any) and builds the first table from `telemetries`; any
    /// error is the caller's to report (the waypoint does not start).
    pub(super) fn start(
        mesh_path: Option<PathBuf>,
        gateway: &ServiceRef,
        fallback: Option<(Arc<Tracing>, f64)>,
        roots: Option<PathBuf>,
        telemetries: Arc<Vec<TelemetrySpec>>,
    ) -> Result<Arc<TelemetrySource>> {
        let service_name = format!("{}.{}", gateway.name, gateway.namespace);
        let (mesh, mesh_text) = match &mesh_path {
            Some(p) => {
                let text = read(p)?;
                (parse_mesh(p, &text, &service_name)?, Some(text))
            }
            None => (Mesh::default(), None),
        };
        let scope = Scope {
            gateway: gateway.clone(),
            fallback,
        };
        let mut exporters = ExporterCache {
            roots,
            ..ExporterCache::default()
        };
        let (table, warnings) = TelemetryTable::build(&telemetries, &mesh, &scope, &mut exporters)
            .map_err(|e| anyhow!("Telemetry: {e}"))?;
        log_warnings(&warnings);
        exporters.keep_used();
        Ok(Arc::new(TelemetrySource {
            mesh_path,
            scope,
            service_name,
            state: Mutex::new(State {
                mesh,
                pending: None,
                mesh_text,
                telemetries,
                exporters,
                current: Arc::new(table),
            }),
            publish: Mutex::new(None),
        }))
    }

    /// Where new tables go (the cores), from now on.
    pub(super) fn set_publisher(&self, f: impl Fn(Arc<TelemetryTable>) + Send + 'static) {
        *self.publish.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    /// The table in force.
    pub(super) fn current(&self) -> Arc<TelemetryTable> {
        self.lock().current.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New Telemetry objects (a new L7 config).
    pub(super) fn set_telemetries(&self, telemetries: Arc<Vec<TelemetrySpec>>) {
        let mut st = self.lock();
        if Arc::ptr_eq(&st.telemetries, &telemetries) {
            return;
        }
        if let Some(pending) = st.pending.clone()
            && self.rebuild(&mut st, &telemetries, &pending)
        {
            tracing::info!("mesh config applied, with the new Telemetry objects");
            st.mesh = pending;
            st.pending = None;
            st.telemetries = telemetries;
            return;
        }
        let mesh = st.mesh.clone();
        if self.rebuild(&mut st, &telemetries, &mesh) {
            st.telemetries = telemetries;
        }
    }

    /// Reads the MeshConfig again; a changed one that checks rebuilds the table.
    pub(super) fn reload_mesh(&self) {
        let Some(path) = &self.mesh_path else { return };
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "--mesh-config: cannot read it; the telemetry in force stays");
                return;
            }
        };
        let mut st = self.lock();
        if st.mesh_text.as_deref() == Some(text.as_str()) {
            return;
        }
        st.mesh_text = Some(text.clone());
        let mesh = match parse_mesh(path, &text, &self.service_name) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "--mesh-config rejected; the telemetry in force stays");
                st.pending = None;
                return;
            }
        };
        let telemetries = st.telemetries.clone();
        if self.rebuild(&mut st, &telemetries, &mesh) {
            tracing::info!(config = %path.display(), "mesh config applied");
            st.mesh = mesh;
            st.pending = None;
        } else {
            st.pending = Some(mesh);
        }
    }

    /// Builds and publishes; `false` (and a warning) when it does not build.
    fn rebuild(&self, st: &mut State, telemetries: &[TelemetrySpec], mesh: &Mesh) -> bool {
        st.exporters.used.clear();
        st.exporters.used_logs.clear();
        match TelemetryTable::build(telemetries, mesh, &self.scope, &mut st.exporters) {
            Ok((table, warnings)) => {
                log_warnings(&warnings);
                st.exporters.keep_used();
                let table = Arc::new(table);
                st.current = table.clone();
                if let Some(p) = self
                    .publish
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    p(table);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Telemetry rejected; the telemetry in force stays");
                false
            }
        }
    }

    /// Flushes every exporter's last spans (at shutdown).
    pub(super) fn shutdown(&self) {
        let (started, logs): (Vec<Arc<Tracing>>, Vec<Arc<LogExport>>) = {
            let st = self.lock();
            (
                st.exporters.started.values().cloned().collect(),
                st.exporters.logs.values().cloned().collect(),
            )
        };
        for t in started {
            t.shutdown();
        }
        for l in logs {
            l.shutdown();
        }
    }

    /// Re-reads `--mesh-config` every `interval` on the control runtime.
    pub(super) fn watch(
        self: &Arc<Self>,
        rt: &control::runtime::ControlRuntime,
        interval: Duration,
    ) {
        if self.mesh_path.is_none() || interval.is_zero() {
            return;
        }
        let me = self.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let m = me.clone();
                // File reads off the runtime's async threads.
                let _ = tokio::task::spawn_blocking(move || m.reload_mesh()).await;
            }
        });
    }
}

impl ExporterCache {
    /// Drops the exporters the last build did not use, on a thread of their own: dropping
    /// one flushes its last spans, which may wait for a slow collector.
    fn keep_used(&mut self) {
        let used = std::mem::take(&mut self.used);
        let (keep, gone): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.started)
            .into_iter()
            .partition(|(e, _)| used.contains(e));
        self.started = keep;
        let used_logs = std::mem::take(&mut self.used_logs);
        let (keep_logs, gone_logs): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.logs)
            .into_iter()
            .partition(|(k, _)| used_logs.contains(k));
        self.logs = keep_logs;
        if !gone.is_empty() || !gone_logs.is_empty() {
            let _ = std::thread::Builder::new()
                .name("otlp-retire".into())
                .spawn(move || drop((gone, gone_logs)));
        }
    }
}

/// Longest MeshConfig read (Istio's are a few KiB).
const MESH_MAX: u64 = 1 << 20;

fn read(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let f =
        std::fs::File::open(path).map_err(|e| anyhow!("--mesh-config {}: {e}", path.display()))?;
    let mut text = String::new();
    f.take(MESH_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow!("--mesh-config {}: {e}", path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= MESH_MAX,
        "--mesh-config {}: larger than {MESH_MAX} bytes",
        path.display()
    );
    Ok(text)
}

/// Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap, YAML).
fn parse_mesh(path: &Path, text: &str, service_name: &str) -> Result<Mesh> {
    let value: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text).map_err(|e| anyhow!("--mesh-config {}: {e}", path.display()))?
    };
    let mut spec: MeshSpec = serde_yaml::from_value(value.clone())
        .map_err(|e| anyhow!("--mesh-config {}: {e}", path.display()))?;
    // istiod lays the ConfigMap over its defaults, whose metrics provider is Prometheus.
    if value
        .get("defaultProviders")
        .and_then(|d| d.get("metrics"))
        .is_none()
    {
        spec.default_providers.metrics = vec!["prometheus".into()];
    }
    Mesh::build(&spec, service_name).map_err(|e| anyhow!("--mesh-config {}: {e}", path.display()))
}

fn log_warnings(warnings: &[String]) {
    for w in warnings {
        tracing::warn!("Telemetry: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MeshConfig whose table does not build with the Telemetry in force (its provider's
    /// exporter cannot start) is rejected whole, its root namespace too; it applies once
    /// the Telemetry objects change so that it builds, without the file changing again.
    #[test]
    fn a_mesh_config_that_does_not_fit_the_telemetry_applies_once_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        let mesh = |metadata: &str, root: &str| {
            format!(
                "rootNamespace: {root}
extensionProviders:
- name: otel
  opentelemetry: {{service: otel.istio-system.svc.cluster.local, port: 4317, grpc: {{initialMetadata: [{metadata}]}}}}
"
            )
        };
        std::fs::write(&path, mesh("", "istio-system")).unwrap();
        let uses: Vec<TelemetrySpec> = serde_yaml::from_str(
            "- {name: t, namespace: demo, tracing: [{providers: [{name: otel}]}]}",
        )
        .unwrap();
        let gateway = ServiceRef::new("demo", "waypoint");
        let src = TelemetrySource::start(Some(path.clone()), &gateway, None, None, Arc::new(uses))
            .unwrap();
        assert_eq!(src.current().root_namespace(), "istio-system");
        // The new provider's exporter cannot start (gRPC's own metadata name): nothing
        // changes.
        std::fs::write(&path, mesh("{name: grpc-x, value: v}", "mesh-root")).unwrap();
        src.reload_mesh();
        assert!(src.lock().pending.is_some(), "the MeshConfig parses");
        assert_eq!(src.current().root_namespace(), "istio-system");
        // Telemetry that no longer uses the provider: the MeshConfig read last applies.
        src.set_telemetries(Arc::new(Vec::new()));
        assert_eq!(src.current().root_namespace(), "mesh-root");
        src.shutdown();
    }
}
