//! Mesh nodes on loopback (`ringmesh run`): a CA and config in a temporary directory, node
//! processes with their endpoints on their own 127.X.0.N, echo backends on workload IPs,
//! SOCKS5 clients bound to a workload IP, access-log and metrics readers.
//!
//! Each test picks its own 127.X.0.0/16 (X distinct per test) so tests can run in parallel;
//! node N listens on 127.X.0.N (admin 15000, metrics 15020, ready 15021, SOCKS5 15080) and
//! its workloads' HBONE listeners on their own IPs.

use super::*;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How long a node gets to become ready (it signs certificates and binds listeners).
pub const NODE_START: Duration = Duration::from_secs(20);

/// One HTTP/1.1 request with an empty body; returns the status code and the body, whatever
/// the status (unlike `proxy::demo::http_get`, which fails on anything but 200).
pub fn http_request(addr: SocketAddr, method: &str, target: &str) -> Result<(u16, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {target}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Unix seconds of an RFC 3339 timestamp (`2026-01-02T03:04:05Z`), parsed as Go's
/// `time.RFC3339` layout accepts it (what istioctl does with a certificate's validity).
pub fn rfc3339_unix(text: &str) -> Result<i64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{text:?} is not an RFC 3339 time"))?;
    Ok(t.unix_timestamp())
}

/// `127.x.c.d`.
pub fn ip4(x: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, x, c, d))
}

/// A temporary directory holding a built-in CA (`ca/`) and the mesh config (`mesh.yaml`),
/// removed on drop.
pub struct MeshDir {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub config: PathBuf,
}

impl MeshDir {
    /// Creates the CA with `ringmesh ca init` (the real CLI) and writes `config`.
    pub fn new(config: &str) -> Result<MeshDir> {
        let dir = tempfile::Builder::new().prefix("ringmesh-e2e-").tempdir()?;
        let ca = dir.path().join("ca");
        let out = Command::new(bin("ringmesh"))
            .args(["ca", "init", "--dir"])
            .arg(&ca)
            .output()
            .context("run ringmesh ca init")?;
        if !out.status.success() {
            bail!(
                "ringmesh ca init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let config_path = dir.path().join("mesh.yaml");
        let mesh = MeshDir {
            dir,
            ca,
            config: config_path,
        };
        mesh.write_config(config)?;
        Ok(mesh)
    }

    /// Replaces the config file atomically (write a sibling, then rename), so a watcher
    /// never reads half a file.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let tmp = self.dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }
}

/// A running `ringmesh run` node whose endpoints listen on `ip`.
pub struct Node {
    pub proc: Proc,
    pub name: String,
    pub ip: IpAddr,
}

impl Node {
    /// Starts node `name` on `ip` (`--capture none`, SOCKS5/admin/metrics/ready on `ip`,
    /// `--cores 1`; any of these given in `extra` wins) and waits until `/healthz/ready`
    /// answers "ready".
    pub fn start(mesh: &MeshDir, name: &str, ip: IpAddr, extra: &[&str]) -> Result<Node> {
        Node::spawn(mesh, name, ip, extra)?.wait_ready()
    }

    /// [`Node::start`] without waiting for readiness (a node whose readiness needs a peer
    /// the test plays, e.g. istio-cni's snapshot; then call [`Node::wait_ready`]). Call it
    /// on the test's own thread: the node exits with the thread that started it.
    pub fn spawn(mesh: &MeshDir, name: &str, ip: IpAddr, extra: &[&str]) -> Result<Node> {
        Node::spawn_with_config(mesh, &mesh.config, name, ip, extra)
    }

    fn spawn_with_config(
        mesh: &MeshDir,
        config: &std::path::Path,
        name: &str,
        ip: IpAddr,
        extra: &[&str],
    ) -> Result<Node> {
        let (config, ca) = (config.to_string_lossy(), mesh.ca.to_string_lossy());
        let args = Node::args(Some((&config, &ca)), name, ip, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(Node {
            proc: Proc::spawn(&bin("ringmesh"), &args)?,
            name: name.to_string(),
            ip,
        })
    }

    /// Starts node `name` on `ip` in cluster mode: no config file and no CA directory, only
    /// `env` (ztunnel's variables: XDS_ADDRESS, XDS_ROOT_CA, ...); waits until it is ready
    /// (istiod's state and every local certificate in).
    pub fn start_cluster(
        name: &str,
        ip: IpAddr,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Node> {
        let node = Node::spawn_cluster(name, ip, env, extra)?;
        node.wait_ready()
    }

    /// [`Node::start_cluster`] without waiting for readiness.
    pub fn spawn_cluster(
        name: &str,
        ip: IpAddr,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Node> {
        let args = Node::args(None, name, ip, extra);
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("NODE_NAME", name));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(Node {
            proc: Proc::spawn_env(&bin("ringmesh"), &args, &env)?,
            name: name.to_string(),
            ip,
        })
    }

    /// `run` arguments: the files (embedded mode), then the endpoints on `ip`, then `extra`.
    fn args(files: Option<(&str, &str)>, name: &str, ip: IpAddr, extra: &[&str]) -> Vec<String> {
        let addr = |port: u16| SocketAddr::new(ip, port).to_string();
        let mut args: Vec<String> = vec!["run".into()];
        if let Some((config, ca)) = files {
            args.extend([
                "--config".into(),
                config.into(),
                "--ca-dir".into(),
                ca.into(),
            ]);
            args.extend(["--node".into(), name.into()]);
        }
        let defaults = [
            ("--log", "info".to_string()),
            ("--capture", "none".to_string()),
            ("--socks5", addr(15080)),
            ("--admin", addr(15000)),
            ("--metrics", addr(15020)),
            ("--ready", addr(15021)),
            ("--cores", "1".to_string()),
        ];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The readiness endpoint's answer (status and body).
    pub fn readiness(&self) -> Result<(u16, String)> {
        http_request(SocketAddr::new(self.ip, 15021), "GET", "/healthz/ready")
    }

    /// Waits until the node answers "ready" (or fails at once if it exits).
    pub fn wait_ready(mut self) -> Result<Node> {
        let name = self.name.clone();
        let ready_addr = SocketAddr::new(self.ip, 15021);
        let mut exited = None;
        let waited = wait_for(NODE_START, &format!("{name} ready"), || {
            // A node that exits (bad flag, port in use) fails the start at once.
            if let Ok(code) = self.proc.wait_exit(Duration::ZERO) {
                exited = Some(code);
                return true;
            }
            proxy::demo::http_get(ready_addr, "/healthz/ready")
                .map(|b| b.starts_with("ready"))
                .unwrap_or(false)
        });
        if let Some(code) = exited {
            // The stderr reader may trail the exit; its last line is the reason.
            let _ = wait_for(Duration::from_secs(1), "the exit reason on stderr", || {
                self.proc.stderr().contains("error")
            });
            bail!(
                "{name} exited with {code:?} while starting:\n{}",
                self.proc.stderr()
            );
        }
        waited.with_context(|| {
            let said = match http_request(ready_addr, "GET", "/healthz/ready") {
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => format!("(no answer: {e:#})"),
            };
            format!(
                "{name} readiness said: {said}\n{name} log:\n{}",
                self.proc.stderr()
            )
        })?;
        Ok(self)
    }

    pub fn socks(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15080)
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15000)
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        proxy::demo::http_get(SocketAddr::new(self.ip, 15020), "/metrics")
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let body = proxy::demo::http_get(self.admin(), "/config_dump")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// The access-log entries ("connection closed" lines) written so far.
    pub fn access_logs(&self) -> Vec<AccessLog> {
        self.proc
            .stderr()
            .lines()
            .filter_map(AccessLog::parse)
            .collect()
    }

    /// Waits until an access-log entry matching `pred` appears; returns it.
    pub fn wait_access(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&AccessLog) -> bool,
    ) -> Result<AccessLog> {
        let mut found = None;
        wait_for(timeout, what, || {
            found = self.access_logs().into_iter().find(|l| pred(l));
            found.is_some()
        })
        .with_context(|| format!("{} log:\n{}", self.name, self.proc.stderr()))?;
        Ok(found.unwrap())
    }
}

/// One access-log line of a node, in ztunnel's schema: `connection complete` (an opened
/// connection) or `connection failed` (refused before it was opened), target `access`.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub fields: HashMap<String, String>,
    /// `connection complete` or `connection failed`.
    pub message: String,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub line: String,
}

impl AccessLog {
    pub fn parse(line: &str) -> Option<AccessLog> {
        let parsed = proxy::telemetry::format::parse_text_line(line)?;
        if parsed.target != "access" {
            return None;
        }
        Some(AccessLog {
            fields: parsed.fields.into_iter().collect(),
            message: parsed.message,
            level: parsed.level,
            line: line.to_string(),
        })
    }

    /// A field's value ("" when absent).
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }

    /// A numeric field (`bytes_sent`, `bytes_recv`); 0 when absent or not a number.
    pub fn num(&self, key: &str) -> u64 {
        self.get(key).parse().unwrap_or(0)
    }

    /// How the connection ended, in ringmesh's words: a complete line's `outcome`
    /// (`complete`, `denied`, `unreachable`, `reset`, `drained`, ...) or a failed line's
    /// `reason` (`bad_request`, `loop`, `no_endpoint`, ...).
    pub fn outcome(&self) -> &str {
        match self.message.as_str() {
            "connection failed" => self.get("reason"),
            _ => self.get("outcome"),
        }
    }

    /// Whether this is a `connection complete` line (the connection was opened).
    pub fn complete(&self) -> bool {
        self.message == "connection complete"
    }

    /// The hop the connection took: `hbone` (it has an HBONE authority), `tcp` (to a mesh
    /// workload) or `passthrough` (out of the mesh).
    pub fn carrier(&self) -> &'static str {
        if !self.get("dst.hbone_addr").is_empty() {
            "hbone"
        } else if !self.get("dst.workload").is_empty() {
            "tcp"
        } else {
            "passthrough"
        }
    }
}

/// Sum of every sample of metric `name` whose labels contain all of `labels`
/// (e.g. `direction="inbound"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An echo backend on `addr` (thread per connection) that counts accepted connections.
pub fn spawn_echo(addr: SocketAddr) -> Result<Arc<AtomicUsize>> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding backend {addr}"))?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let _ = std::io::copy(&mut s, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(accepted)
}

/// Connects from workload IP `source` through the SOCKS5 entry at `socks` to `target`.
pub fn socks_connect(source: IpAddr, socks: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    proxy::demo::socks_connect(source, socks, target)
}

/// One round trip on a connection kept open through an echo: writes `msg` and reads the
/// same bytes back.
pub fn ping(conn: &mut TcpStream, msg: &[u8]) -> Result<()> {
    use std::io::Write;
    conn.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back)?;
    anyhow::ensure!(back == msg, "echoed {back:?} for {msg:?}");
    Ok(())
}

/// One request/response through an echo: writes `msg`, half-closes, reads everything back.
/// Returns what came back.
pub fn echo_once(mut s: TcpStream, msg: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    s.write_all(msg)?;
    s.shutdown(Shutdown::Write)?;
    Ok(read_all(&s)?)
}

/// Sends `total` pseudo-random bytes through an echo connection on one thread while reading
/// them back on this one; returns (checksum sent, checksum received, bytes received).
pub fn bulk_echo(s: TcpStream, total: usize) -> Result<(u64, u64, usize)> {
    use std::io::Write;
    let mut w = s.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut buf = vec![0u8; 256 * 1024];
        let mut sums = Vec::new();
        let mut sent = 0;
        while sent < total {
            let n = (total - sent).min(buf.len());
            for chunk in buf[..n].chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            sums.push(checksum(&buf[..n]));
            w.write_all(&buf[..n])?;
            sent += n;
        }
        w.shutdown(Shutdown::Write)?;
        Ok(checksum(
            &sums
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        ))
    });
    // Read back in the same chunk boundaries the sender hashed.
    let mut r = s;
    let mut sums = Vec::new();
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while got < total {
        let n = (total - got).min(buf.len());
        if let Err(e) = std::io::Read::read_exact(&mut r, &mut buf[..n]) {
            let _ = r.shutdown(Shutdown::Both);
            let _ = sender.join();
            bail!("echo stream ended after {got} of {total} bytes: {e}");
        }
        sums.push(checksum(&buf[..n]));
        got += n;
    }
    let extra = read_all(&r)?;
    let sent_sum = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    let got_sum = checksum(
        &sums
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    Ok((sent_sum, got_sum, got + extra.len()))
}

/// The SPIFFE identity `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn spiffe(ns: &str, sa: &str) -> hbone::Identity {
    hbone::Identity::new("cluster.local", ns, sa).expect("valid identity")
}

/// One HBONE tunnel opened by the test itself, as a peer node proxy would: a leaf for
/// `client` signed by the CA in `ca_dir`, mTLS to `addr` expecting `server`, CONNECT to
/// `authority`, then `payload` sent and the stream read to its end.
///
/// The outer `Result` is the test's own setup (CA files, runtime); the inner one is what
/// the HBONE server did: the bytes it relayed back, or the error (for a rejected CONNECT,
/// [`hbone::Error::status`] gives the status).
pub fn hbone_request(
    ca_dir: &std::path::Path,
    client: &hbone::Identity,
    server: &hbone::Identity,
    addr: SocketAddr,
    authority: SocketAddr,
    payload: &[u8],
) -> Result<std::result::Result<Vec<u8>, hbone::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = proxy::identity::ca::load(ca_dir)?;
    let leaf = ca.sign_leaf(client, Duration::from_secs(3600))?;
    let tls = hbone::tls::client_config(
        leaf.chain(),
        leaf.key(),
        &[ca.root_der().clone()],
        vec![server.clone()],
    )?;
    let payload = payload.to_vec();
    let run = async move {
        let conn = hbone::client::connect(addr, tls, &hbone::h2conn::H2Settings::default()).await?;
        let req = hbone::wire::ConnectRequest::new(authority);
        let mut stream = conn.send_connect(&req).await?;
        stream.write_all(&payload).await?;
        stream.shutdown().await?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await?;
        Ok::<_, hbone::Error>(back)
    };
    let deadline = async move {
        // Generous: a loaded CI machine running debug builds can take seconds per handshake.
        match runtime::time::timeout(Duration::from_secs(20), run).await {
            Ok(r) => r,
            Err(_) => Err(hbone::Error::Timeout {
                what: "test HBONE request",
                after: Duration::from_secs(20),
            }),
        }
    };
    Ok(runtime::block_on(runtime::DriverChoice::Auto, deadline)?)
}

/// Runs a SOCKS5 CONNECT from `source` through `socks` to `target` and returns the reply
/// code (0 = succeeded; RFC 1928 §6), closing the connection either way.
pub fn socks_reply_code(source: IpAddr, socks: SocketAddr, target: SocketAddr) -> Result<u8> {
    Ok(proxy::demo::socks_handshake(source, socks, target)?.1)
}

impl Node {
    /// Like [`Node::start`], but with its own config file `config` (for meshes whose nodes
    /// disagree, e.g. about who a workload is).
    pub fn start_with_config(
        mesh: &MeshDir,
        config: &std::path::Path,
        name: &str,
        ip: IpAddr,
        extra: &[&str],
    ) -> Result<Node> {
        Node::spawn_with_config(mesh, config, name, ip, extra)?.wait_ready()
    }
}

/// True when the tests run as root (iptables, namespaces); those tests skip otherwise.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A `-t nat OUTPUT` DNAT rule, deleted on drop.
pub struct Dnat(Vec<String>);

impl Dnat {
    pub fn add(src: IpAddr, dst: SocketAddr, to: SocketAddr) -> Result<Dnat> {
        let rule: Vec<String> = [
            "-p",
            "tcp",
            "-s",
            &src.to_string(),
            "-d",
            &dst.ip().to_string(),
            "--dport",
            &dst.port().to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &to.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let out = Command::new("iptables")
            .args(["-w", "5", "-t", "nat", "-A", "OUTPUT"])
            .args(&rule)
            .output()?;
        if !out.status.success() {
            bail!("iptables -A: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Dnat(rule))
    }
}

impl Drop for Dnat {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "5", "-t", "nat", "-D", "OUTPUT"])
            .args(&self.0)
            .status();
    }
}

/// A plain TCP connection from `source` to `target` (what a captured pod does).
pub fn connect_from(source: IpAddr, target: SocketAddr) -> Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect_timeout(&target.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}
