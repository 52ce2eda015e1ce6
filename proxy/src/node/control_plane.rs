//! Cluster mode's link to istiod: the xDS client feeding snapshots, and the Istio CA behind
//! the identity manager's signer seam.
//!
//! Owns: starting both on the control runtime (`control::runtime::ControlRuntime`, a tokio
//! thread of its own; no core ever runs gRPC), readiness from xDS, and the control-plane
//! metric families in ztunnel's names (`istio_xds_*`) plus ringmesh's CA counters.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use control::ca::CaClient;
use control::runtime::ControlRuntime;
use control::xds::{Termination, XdsClient, XdsConfig, XdsStats};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::cluster::{ClusterSettings, ProxyMode};
use crate::config::Snapshot;
use crate::config::xds::XdsState;
use crate::identity::{CaCall, IstioCaSigner, Signer};

/// The control runtime's thread.
pub fn runtime() -> Result<ControlRuntime> {
    ControlRuntime::start("ringmesh-control").context("starting the control-plane thread")
}

/// CA calls by outcome, for `/metrics`.
#[derive(Debug, Default)]
struct CaStats {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// The Istio CA as the identity manager's signer: one `CreateCertificate` per certificate,
/// made on the control runtime (the identity thread waits for it, bounded by the call's
/// deadline).
pub fn istio_ca_signer(rt: &ControlRuntime, s: &ClusterSettings) -> Result<Arc<dyn Signer>> {
    istio_ca_signer_with_stats(rt, s, Arc::default())
}

fn istio_ca_signer_with_stats(
    rt: &ControlRuntime,
    s: &ClusterSettings,
    stats: Arc<CaStats>,
) -> Result<Arc<dyn Signer>> {
    let channel =
        s.ca.clone()
            .context("cluster mode needs the Istio CA's address (CA_ADDRESS)")?;
    // Peers are verified with the mounted root until the CA's first answer carries its own.
    let roots = match &channel.root {
        control::grpc::RootCa::File(path) => std::fs::read(path)
            .ok()
            .map(|pem| pem_roots(&pem))
            .unwrap_or_default(),
        control::grpc::RootCa::Pem(pem) => pem_roots(pem.as_bytes()),
        control::grpc::RootCa::System => Vec::new(),
    };
    let address = channel.address.clone();
    let client = Arc::new(CaClient::new(channel, control::ca::DEFAULT_CALL_TIMEOUT));
    let handle = rt.handle().clone();
    let call: CaCall = Arc::new(move |csr: String, secs: i64, who: Option<String>| {
        let client = client.clone();
        let lifetime = std::time::Duration::from_secs(secs.max(0) as u64);
        // Run on the control thread; this (identity) thread waits. The call has its own
        // deadline, so the wait is bounded.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        handle.spawn(async move {
            let r = client
                .create_certificate(&csr, lifetime, who.as_deref())
                .await;
            let _ = tx.send(r);
        });
        match rx.recv() {
            Ok(Ok(chain)) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                Ok(chain)
            }
            Ok(Err(e)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                Err(format!("{address}: {e}"))
            }
            Err(_) => Err("the control-plane thread has stopped".into()),
        }
    });
    let impersonate = s.proxy_mode == ProxyMode::Shared;
    Ok(Arc::new(IstioCaSigner::new(call, impersonate, roots)))
}

fn pem_roots(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(|c| c.ok())
        .collect()
}

/// The xDS client's state, for readiness and metrics.
pub struct ControlPlane {
    handle: tokio::runtime::Handle,
    xds: std::sync::Mutex<Option<Arc<XdsStats>>>,
}

impl ControlPlane {
    pub fn new(rt: &ControlRuntime, _s: &ClusterSettings) -> ControlPlane {
        ControlPlane {
            handle: rt.handle().clone(),
            xds: std::sync::Mutex::new(None),
        }
    }

    /// Starts the Delta ADS client; every applied response publishes a snapshot. It runs
    /// until the node drains.
    pub fn start_xds(
        &self,
        s: &ClusterSettings,
        node: Option<String>,
        shutdown: runtime::Shutdown,
        publish: impl FnMut(Arc<Snapshot>) + Send + 'static,
    ) -> Result<()> {
        let channel = s
            .xds
            .clone()
            .context("cluster mode needs istiod's address (XDS_ADDRESS)")?;
        let mut info = s.node.clone();
        if let Some(n) = &node {
            info.node_name = n.clone();
        }
        let node_name = (!info.node_name.is_empty()).then(|| info.node_name.clone());
        tracing::info!(
            xds = %channel.address,
            node_id = %info.id(),
            node = node_name.as_deref().unwrap_or("-"),
            "connecting to istiod"
        );
        let state = XdsState::new(node_name, publish);
        let client = XdsClient::new(XdsConfig::new(channel, info.node()), state);
        *self.xds.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.stats());
        self.handle.spawn(async move {
            client.run(async move { shutdown.draining().await }).await;
        });
        Ok(())
    }

    /// Whether istiod's first answer for every watched type was applied.
    pub fn xds_ready(&self) -> bool {
        self.xds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|s| s.ready())
    }

    /// ztunnel's `istio_xds_*` families and ringmesh's connection gauge.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let Some(stats) = self.xds.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return out;
        };
        let _ = writeln!(
            out,
            "# HELP istio_xds_connection_terminations_total The total number of completed connections to xds server (unstable)\n# TYPE istio_xds_connection_terminations_total counter"
        );
        for t in [
            Termination::ConnectionError,
            Termination::Error,
            Termination::Reconnect,
            Termination::Complete,
        ] {
            let _ = writeln!(
                out,
                "istio_xds_connection_terminations_total{{reason=\"{}\"}} {}",
                t.label(),
                stats.terminations(t)
            );
        }
        let per_type = stats.per_type();
        let _ = writeln!(
            out,
            "# HELP istio_xds_message_total Total number of messages received (unstable)\n# TYPE istio_xds_message_total counter"
        );
        for (url, messages, _) in &per_type {
            let _ = writeln!(out, "istio_xds_message_total{{url=\"{url}\"}} {messages}");
        }
        let _ = writeln!(
            out,
            "# HELP istio_xds_message_bytes_total Total number of bytes received (unstable)\n# TYPE istio_xds_message_bytes_total counter"
        );
        for (url, _, bytes) in &per_type {
            let _ = writeln!(
                out,
                "istio_xds_message_bytes_total{{url=\"{url}\"}} {bytes}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ringmesh_xds_connected Whether the node holds a stream to istiod.\n# TYPE ringmesh_xds_connected gauge\nringmesh_xds_connected {}",
            u8::from(stats.connected())
        );
        let _ = writeln!(
            out,
            "# HELP ringmesh_xds_responses_total Responses from istiod by answer.\n# TYPE ringmesh_xds_responses_total counter\nringmesh_xds_responses_total{{answer=\"ack\"}} {}\nringmesh_xds_responses_total{{answer=\"nack\"}} {}",
            stats.acks(),
            stats.nacks()
        );
        out
    }
}
