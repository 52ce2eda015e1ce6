//! Command-line interface: parsing and turning arguments into run specs. Kept in the library
//! so tests can check the help text and argument handling without spawning the binary.
//!
//! Invariant: nothing here touches the network; bad arguments become an [`Error::Invalid`]
//! naming the flag, which the binary turns into exit code 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::Error;
use crate::client::{ClientConfig, HttpSpec, Mode};
use crate::http1::Method;
use crate::run::{LoadSpec, resolve_target};
use crate::schedule::Arrival;
use crate::serve::{ServeConfig, ServeMode};
use crate::sweep::{SweepAxis, SweepPlan};

mod tls;
pub use tls::{ClientTlsArgs, DevCertsArgs};

/// The JSON report fields, shown in `--help` of every load command.
pub const JSON_FIELDS: &str = "\
JSON report (--json FILE), one object:
  mode             client mode: tcp | http1 | http2 | connect-churn | hbone
  load             \"closed\" or \"open\"; arrival: \"uniform\" | \"poisson\" | null
  target           target as given
  target_rps       open-loop target rate (null in closed loop)
  achieved_rps     completed requests (ok + failed) per second of the measured window
  connections      connections across all workers; streams: per connection (http2, hbone)
  cores, driver    worker threads and their I/O driver (io_uring | epoll)
  duration_s       measured window in seconds (warm-up excluded); warmup_s
  requests         completed requests = responses + errors_total
  responses        requests answered as expected (status/bytes checked)
  errors           object by kind: connect_refused, connect_timeout, timeout, reset,
                   bad_status, short_read, other; errors_total = their sum
  latency_us       {p50, p90, p99, p999, p9999, max, mean, min, stdev, samples} in
                   microseconds, successful requests only; open loop measures from the
                   intended send time (coordinated-omission corrected)
  late_sends       open loop: requests sent more than late_threshold_us (1000) after
                   their intended time
  bytes            bytes_sent + bytes_received (payload incl. HTTP headers); bytes_per_s
  connects         TCP connections opened; latency_saturated: samples clamped at 60 s
Exit status: 0 clean run, 1 the run had request errors, 2 usage or setup error.";

const ROOT_AFTER: &str = "\
Examples:
  loadgen serve --mode http1 --listen 127.0.0.1:8080 --cores 1
  loadgen http1 http://127.0.0.1:8080/ --closed --connections 64 --duration 10s --json out.json
  loadgen http1 http://127.0.0.1:8080/ --rate 20000 --poisson --duration 30s --hdr-log h.hlog
  loadgen sweep --slo-p99 2ms --start 5000 --step 5000 --svg curve.svg http1 http://127.0.0.1:8080/

Targets must be loopback unless --allow-remote is given.";

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = "Thread-per-core load generator: closed and open loop, HDR latency, rate sweeps, and its own backends", after_long_help = format!("{ROOT_AFTER}\n\n{JSON_FIELDS}"))]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a backend server (echo, sink, source, http1, http2, hbone), thread-per-core.
    Serve(ServeArgs),
    /// Step the load up until p99 exceeds the SLO or errors appear; report the curve.
    #[command(after_long_help = SWEEP_AFTER)]
    Sweep(SweepArgs),
    /// Write a development CA and HBONE client/server certificates (PEM) into a directory.
    DevCerts(DevCertsArgs),
    /// Re-draw the SVG plot of a sweep from its JSON (`sweep --json`).
    Plot {
        /// Sweep JSON written by `loadgen sweep --json`.
        #[arg(long)]
        json: PathBuf,
        /// SVG file to write.
        #[arg(long)]
        svg: PathBuf,
        /// Plot title.
        #[arg(long, default_value = "latency vs rate")]
        title: String,
    },
    #[command(flatten)]
    Client(ClientCmd),
}

const SWEEP_AFTER: &str = "\
Sweep JSON (--json FILE): {axis, slo_p99_us, max_sustainable_rps, max_sustainable_load,
stopped_because, points: [{load, achieved_rps, latency_us{...}, errors_total, late_sends,
sustainable, reason}]}. A step is sustainable when p99 <= SLO, no errors, and (rate axis)
achieved >= 95% of the target. --svg FILE plots p50/p90/p99/p99.9 against achieved rate.";

/// Load commands (also used inside `sweep`).
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCmd {
    /// TCP request/response of --size bytes against an echo server (bytes checked).
    #[command(after_long_help = JSON_FIELDS)]
    Tcp {
        /// Target host:port.
        addr: String,
        /// Bytes per request (echoed back and compared); with --bulk, bytes per write
        /// (rounded to whole 26-byte pattern cycles).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Stream for throughput instead of request/response: write --size chunks as fast
        /// as the peer takes them (against sink or echo; echoed bytes are checked). Closed
        /// loop only; "requests" then counts writes.
        #[arg(long)]
        bulk: bool,
        /// With --bulk: only read (against `serve --mode source`); "requests" counts reads.
        #[arg(long, requires = "bulk")]
        download: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// HTTP/1.1 keep-alive requests (one in flight per connection).
    #[command(after_long_help = JSON_FIELDS)]
    Http1 {
        /// http://host:port/path
        url: String,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// HTTP/2 (prior knowledge): --connections x --streams concurrent requests.
    #[command(after_long_help = JSON_FIELDS)]
    Http2 {
        /// http://host:port/path
        url: String,
        /// Concurrent streams per connection.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// A new TCP connection per request: a TCP echo of --size bytes (0 = connect and close),
    /// or with --http one HTTP/1.1 request.
    #[command(name = "connect-churn", after_long_help = JSON_FIELDS)]
    ConnectChurn {
        /// host:port, or http://host:port/path with --http
        target: String,
        /// Bytes echoed per connection (TCP).
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// Send one HTTP/1.1 request per connection instead of a TCP echo.
        #[arg(long)]
        http: bool,
        #[command(flatten)]
        http_args: HttpArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// TCP request/response of --size bytes through HBONE tunnels (mTLS with a workload
    /// certificate + HTTP/2 CONNECT) to a node proxy's inbound port; the destination echoes.
    #[command(after_long_help = JSON_FIELDS)]
    Hbone {
        /// The node proxy's HBONE address (its port 15008).
        node: String,
        /// Destination ip:port inside the tunnel (the CONNECT :authority).
        #[arg(long)]
        dest: String,
        /// Bytes per request (echoed by the destination and compared).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Concurrent tunnels per connection.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Open a new CONNECT for every request (loads the CONNECT path) instead of keeping
        /// each slot's tunnel open.
        #[arg(long)]
        tunnel_per_request: bool,
        #[command(flatten)]
        tls: ClientTlsArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// HTTP request options.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Request method.
    #[arg(long, default_value = "GET", value_parser = ["GET", "POST"])]
    pub method: String,
    /// Request body bytes (POST).
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Expected response status (default: any 2xx).
    #[arg(long)]
    pub expect_status: Option<u16>,
    /// Largest accepted response body.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_body: u64,
}

/// Load model, bounds and output options shared by every load command.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Connections (across all cores).
    #[arg(short = 'c', long, default_value_t = 8)]
    pub connections: usize,
    /// Open loop at this many requests/s (latency from intended send times).
    #[arg(long, conflicts_with = "closed")]
    pub rate: Option<f64>,
    /// Closed loop: every connection sends its next request as soon as the last completes
    /// (the default when --rate is absent).
    #[arg(long)]
    pub closed: bool,
    /// Poisson arrivals in open loop (default uniform).
    #[arg(long, requires = "rate")]
    pub poisson: bool,
    /// Measured duration, e.g. 10s, 500ms, 2m (default 10s unless --requests is given).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many measured requests.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Warm-up excluded from every figure.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Connect timeout.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the merged latency histogram here (HdrHistogram interval log, µs).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Allow targets outside loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Seed for Poisson arrivals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Worker threads and I/O driver.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Worker threads, one per core: a count ("2", pinned to the first cores), a core list
    /// ("0,1"; "1," for core 1 alone) or "all".
    #[arg(long, default_value = "all")]
    pub cores: String,
    /// I/O driver: auto (io_uring when available, else epoll) | io-uring | epoll. epoll
    /// measured cheaper per request for HTTP/1.1 clients but showed rare 5 s loop stalls in
    /// open loop (see loadgen/README.md), so auto stays the default.
    #[arg(long)]
    pub driver: Option<String>,
}

impl RuntimeArgs {
    /// The runtime config; `default_driver` applies when --driver is absent.
    pub fn config(
        &self,
        default_driver: runtime::DriverChoice,
    ) -> Result<runtime::RuntimeConfig, Error> {
        let driver = match &self.driver {
            None => default_driver,
            Some(d) => d.parse().map_err(|e: String| Error::Invalid {
                what: "--driver",
                detail: e,
            })?,
        };
        Ok(runtime::RuntimeConfig {
            cores: parse_cores(&self.cores)?,
            driver,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// echo | sink | source | http1 | http2 | hbone (HBONE terminator that echoes inside
    /// each tunnel)
    #[arg(long)]
    pub mode: ServeMode,
    /// Address to listen on (port 0 picks one; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// HTTP response body bytes.
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Testing aid: HTTP response status.
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// Testing aid: after N responses (http1) or N echoed reads (echo) on a connection,
    /// send half of the next one and reset the connection.
    #[arg(long)]
    pub reset_after: Option<u64>,
    /// Testing aid (http1): stall one core for this many ms, once, on the --stall-after-th
    /// request.
    #[arg(long)]
    pub stall_once_ms: Option<u64>,
    /// Server-wide request count that triggers --stall-once-ms.
    #[arg(long, default_value_t = 1000)]
    pub stall_after: u64,
    /// Allow listening outside loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// HBONE mode: server certificate chain (its URI SAN is the server's SPIFFE identity).
    #[arg(long, required_if_eq("mode", "hbone"))]
    pub cert: Option<PathBuf>,
    /// HBONE mode: private key of --cert.
    #[arg(long, required_if_eq("mode", "hbone"))]
    pub key: Option<PathBuf>,
    /// HBONE mode: trust roots for client certificates.
    #[arg(long, required_if_eq("mode", "hbone"))]
    pub roots: Option<PathBuf>,
    /// HBONE mode: trust domain clients must belong to.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

impl ServeArgs {
    fn hbone_tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, Error> {
        if self.mode != ServeMode::Hbone {
            return Ok(None);
        }
        let tls = |e: hbone::Error| Error::Invalid {
            what: "HBONE TLS settings",
            detail: e.to_string(),
        };
        let need = |p: &Option<PathBuf>, flag: &'static str| {
            p.clone().ok_or(Error::Invalid {
                what: flag,
                detail: "required with --mode hbone".into(),
            })
        };
        let chain = hbone::certs::read_certs(need(&self.cert, "--cert")?).map_err(tls)?;
        let key = hbone::certs::read_key(need(&self.key, "--key")?).map_err(tls)?;
        let roots = hbone::certs::read_certs(need(&self.roots, "--roots")?).map_err(tls)?;
        hbone::tls::server_config(chain, key, &roots, &self.trust_domain)
            .map(Some)
            .map_err(tls)
    }

    pub fn config(&self) -> Result<ServeConfig, Error> {
        if !self.allow_remote && !self.listen.ip().is_loopback() {
            return Err(Error::RemoteTarget(self.listen.to_string()));
        }
        if !(100..=999).contains(&self.status) {
            return Err(Error::Invalid {
                what: "--status",
                detail: format!("{} is not an HTTP status", self.status),
            });
        }
        Ok(ServeConfig {
            mode: self.mode,
            listen: self.listen,
            runtime: self.rt.config(runtime::DriverChoice::Auto)?,
            body_size: self.body_size,
            status: self.status,
            reset_after: self.reset_after,
            stall_once: self.stall_once_ms.map(Duration::from_millis),
            stall_after: self.stall_after.max(1),
            hbone_tls: self.hbone_tls()?,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// p99 latency objective, e.g. 2ms.
    #[arg(long, value_parser = parse_duration, default_value = "2ms")]
    pub slo_p99: Duration,
    /// What to step: rate (open loop) or connections (closed loop).
    #[arg(long, default_value = "rate", value_parser = ["rate", "connections"])]
    pub axis: String,
    /// First load (req/s or connections).
    #[arg(long, default_value_t = 1000.0)]
    pub start: f64,
    /// Added per step (used when --factor is 1).
    #[arg(long, default_value_t = 1000.0)]
    pub step: f64,
    /// Multiplied per step when > 1 (geometric ramp).
    #[arg(long, default_value_t = 1.0)]
    pub factor: f64,
    /// Highest load to try.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max: f64,
    /// Bisection steps between the last good and first bad load.
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    /// Duration of each step (overrides the client's --duration).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub step_duration: Duration,
    /// Write the sweep JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency-vs-rate SVG plot here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The load command to sweep.
    #[command(subcommand)]
    pub client: ClientCmd,
}

impl SweepArgs {
    pub fn plan(&self) -> Result<SweepPlan, Error> {
        let axis = if self.axis == "connections" {
            SweepAxis::Connections
        } else {
            SweepAxis::Rate
        };
        if !(self.start > 0.0 && self.max >= self.start) {
            return Err(Error::Invalid {
                what: "--start/--max",
                detail: "need 0 < start <= max".into(),
            });
        }
        if self.factor <= 1.0 && self.step <= 0.0 {
            return Err(Error::Invalid {
                what: "--step",
                detail: "need --step > 0 or --factor > 1".into(),
            });
        }
        Ok(SweepPlan {
            axis,
            start: self.start,
            step: self.step,
            factor: self.factor,
            max: self.max,
            slo_p99_us: self.slo_p99.as_micros() as u64,
            refine: self.refine,
        })
    }
}

impl ClientCmd {
    /// The load options of this command.
    pub fn load(&self) -> &LoadArgs {
        match self {
            ClientCmd::Tcp { load, .. }
            | ClientCmd::Http1 { load, .. }
            | ClientCmd::Http2 { load, .. }
            | ClientCmd::ConnectChurn { load, .. }
            | ClientCmd::Hbone { load, .. } => load,
        }
    }

    /// Builds the run spec.
    pub fn spec(&self) -> Result<LoadSpec, Error> {
        let load = self.load();
        let (mode, label, target, streams) = match self {
            ClientCmd::Tcp {
                addr,
                size,
                bulk,
                download,
                ..
            } => {
                let mode = if *bulk {
                    if load.rate.is_some() {
                        return Err(Error::Invalid {
                            what: "--bulk",
                            detail: "bulk streaming is closed loop only (drop --rate)".into(),
                        });
                    }
                    Mode::TcpBulk {
                        chunk: *size,
                        download: *download,
                    }
                } else {
                    Mode::TcpEcho { size: *size }
                };
                (
                    mode,
                    addr.clone(),
                    resolve_target(addr, load.allow_remote)?,
                    1,
                )
            }
            ClientCmd::Http1 { url, http, .. } => {
                let (spec, hostport) = http_spec(url, http)?;
                (
                    Mode::Http1(spec),
                    url.clone(),
                    resolve_target(&hostport, load.allow_remote)?,
                    1,
                )
            }
            ClientCmd::Http2 {
                url, http, streams, ..
            } => {
                let (spec, hostport) = http_spec(url, http)?;
                (
                    Mode::Http2(spec),
                    url.clone(),
                    resolve_target(&hostport, load.allow_remote)?,
                    *streams,
                )
            }
            ClientCmd::ConnectChurn {
                target,
                size,
                http,
                http_args,
                ..
            } => {
                if *http {
                    let (spec, hostport) = http_spec(target, http_args)?;
                    (
                        Mode::ChurnHttp1(spec),
                        target.clone(),
                        resolve_target(&hostport, load.allow_remote)?,
                        1,
                    )
                } else {
                    (
                        Mode::ChurnTcp { size: *size },
                        target.clone(),
                        resolve_target(target, load.allow_remote)?,
                        1,
                    )
                }
            }
            ClientCmd::Hbone {
                node,
                dest,
                size,
                streams,
                tunnel_per_request,
                tls,
                ..
            } => {
                let dest_addr = resolve_target(dest, load.allow_remote)?;
                let spec = crate::client::hbone::HboneSpec {
                    tls: tls.config()?,
                    dest: dest_addr,
                    size: *size,
                    tunnel_per_request: *tunnel_per_request,
                };
                (
                    Mode::Hbone(spec),
                    format!("{node} -> {dest}"),
                    resolve_target(node, load.allow_remote)?,
                    *streams,
                )
            }
        };
        if let Some(r) = load.rate
            && !(r > 0.0 && r.is_finite())
        {
            return Err(Error::Invalid {
                what: "--rate",
                detail: format!("{r} is not a positive rate"),
            });
        }
        let duration = match (load.duration, load.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        };
        Ok(LoadSpec {
            client: ClientConfig {
                mode,
                target,
                connect_timeout: load.connect_timeout,
            },
            target_label: label,
            connections: load.connections,
            streams,
            rate: load.rate,
            arrival: if load.poisson {
                Arrival::Poisson
            } else {
                Arrival::Uniform
            },
            duration,
            requests: load.requests,
            warmup: load.warmup,
            timeout: load.timeout,
            runtime: load.rt.config(runtime::DriverChoice::Auto)?,
            progress: !load.quiet,
            seed: load.seed,
        })
    }
}

/// The runtime's core syntax, plus a trailing comma for a one-core list ("1,").
fn parse_cores(s: &str) -> Result<runtime::Cores, Error> {
    let bad = |detail: String| Error::Invalid {
        what: "--cores",
        detail,
    };
    match s.trim().strip_suffix(',') {
        Some(one) if !one.contains(',') => {
            let id = one
                .trim()
                .parse()
                .map_err(|_| bad(format!("{one:?} is not a core id")))?;
            Ok(runtime::Cores::List(vec![id]))
        }
        _ => s.parse().map_err(bad),
    }
}

fn http_spec(url: &str, a: &HttpArgs) -> Result<(HttpSpec, String), Error> {
    let (authority, path) = parse_url(url)?;
    let hostport = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.clone()
    } else {
        format!("{authority}:80")
    };
    let spec = HttpSpec {
        method: if a.method == "POST" {
            Method::Post
        } else {
            Method::Get
        },
        authority,
        path,
        body_size: a.body_size,
        expect_status: a.expect_status,
        max_body: a.max_body,
    };
    Ok((spec, hostport))
}

/// Splits `http://authority/path` into authority and path (default `/`).
pub fn parse_url(url: &str) -> Result<(String, String), Error> {
    let bad = |detail: &str| Error::Invalid {
        what: "URL",
        detail: format!("{url:?}: {detail}"),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("missing or unsupported authority"));
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("path contains spaces or control characters"));
    }
    Ok((authority.to_string(), path.to_string()))
}

/// Parses `500us`, `2ms`, `1.5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 2s, 1m"))?;
    let secs = match unit {
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "" | "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?}: use us, ms, s, m or h"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests;
