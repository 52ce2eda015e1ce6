//! The DNS proxy's sockets inside each pod (in-pod mode): UDP and TCP on `127.0.0.1:15053`,
//! where istio-cni's rules redirect the pod's port-53 traffic. Answers come from
//! [`crate::dns::decide`]; what is not ours goes to the upstream resolvers from a socket made
//! in the pod's namespace with the exemption mark, so it leaves as the pod's traffic would.
//!
//! Invariants:
//! - every core serves its own sockets (`SO_REUSEPORT`), so a pod's queries stay on one
//!   core each;
//! - work per pod and core is bounded: at most [`MAX_QUERIES`] queries being answered
//!   (past it a datagram is dropped), of them at most [`MAX_INFLIGHT`] forwarded (past it,
//!   SERVFAIL at once), each waiting at most [`UPSTREAM_TIMEOUT`] per resolver with a reply
//!   buffer of [`MAX_UPSTREAM_REPLY`]; at most [`MAX_TCP_CONNS`] TCP clients, each holding at
//!   most [`MAX_TCP_BUFFER`] bytes and cut [`TCP_IDLE`] after its last answer without a
//!   complete query; the UDP socket spends the core's cooperative budget like every socket.
//! - a query is forwarded with the protocol it came with: a truncated UDP answer goes back
//!   truncated, and the client's retry over TCP is forwarded over TCP.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use runtime::Worker;
use runtime::net::{Placement, TcpListener, TcpStream, UdpSocket};

use super::core::{Core, CoreMsg};
use crate::dns::{self, Answer, Client};

/// Forwarded queries in flight per pod and core. A pod resolving faster than its upstream
/// answers gets SERVFAIL past this instead of growing the node's memory.
pub const MAX_INFLIGHT: usize = 256;
/// How long one upstream resolver has to answer (glibc's default per-try timeout is 5 s).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP DNS client's unanswered bytes (a query is at most 64 KiB plus its length).
const MAX_TCP_BUFFER: usize = 66 * 1024;
/// A TCP DNS connection with no complete query for this long is closed (the deadline runs
/// from the end of the last answer, so a trickling client cannot hold it).
const TCP_IDLE: Duration = Duration::from_secs(30);
/// TCP DNS connections per pod and core; past it new ones are closed at once.
const MAX_TCP_CONNS: usize = 32;
/// Queries being answered at once per pod and core (local answers and forwards); past it a
/// datagram is dropped, as an overloaded resolver does (the client retries).
const MAX_QUERIES: usize = 512;
/// The largest reply read from an upstream: the largest UDP query we accept says the
/// client cannot take more (EDNS), and a truncated reply sends it to TCP.
const MAX_UPSTREAM_REPLY: usize = dns::MAX_UDP_QUERY;

/// The node-wide DNS settings.
#[derive(Debug)]
pub struct DnsSettings {
    pub upstreams: Vec<SocketAddr>,
    pub cluster_domain: String,
    pub stats: Arc<DnsStats>,
}

/// ztunnel's `istio_dns_*` counters and upstream latency histogram, by (query type, protocol, source canonical service,
/// source canonical revision). Rare enough (a query per connection at most) that one lock
/// off the relay path costs nothing measurable.
#[derive(Debug, Default)]
pub struct DnsStats {
    requests: Mutex<BTreeMap<Labels, u64>>,
    upstream: Mutex<BTreeMap<Labels, u64>>,
    failures: Mutex<BTreeMap<Labels, u64>>,
    upstream_seconds: Mutex<BTreeMap<Labels, Histogram>>,
}

/// ztunnel's buckets for `istio_dns_upstream_request_duration_seconds`.
const UPSTREAM_BUCKETS: [f64; 6] = [0.0005, 0.001, 0.01, 0.1, 1.0, 5.0];

/// One series of the upstream latency histogram.
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [u64; UPSTREAM_BUCKETS.len() + 1],
    sum: f64,
}

type Labels = (String, &'static str, String, String);

/// At most this many label sets per family; past it, new ones count under `unknown`.
const MAX_SERIES: usize = 1_000;

impl DnsStats {
    fn bump(map: &Mutex<BTreeMap<Labels, u64>>, mut labels: Labels) {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SERIES && !m.contains_key(&labels) {
            labels = (
                "unknown".into(),
                labels.1,
                "unknown".into(),
                "unknown".into(),
            );
        }
        *m.entry(labels).or_default() += 1;
    }

    fn observe(&self, mut labels: Labels, seconds: f64) {
        let mut m = self
            .upstream_seconds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SERIES && !m.contains_key(&labels) {
            labels = (
                "unknown".into(),
                labels.1,
                "unknown".into(),
                "unknown".into(),
            );
        }
        let h = m.entry(labels).or_default();
        let slot = UPSTREAM_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(UPSTREAM_BUCKETS.len());
        h.counts[slot] += 1;
        h.sum += seconds;
    }

    /// The families in Prometheus text.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = self.render_counters();
        let name = "istio_dns_upstream_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Total time in seconds Istio takes to get DNS response from upstream.\n# TYPE {name} histogram"
        );
        let m = self
            .upstream_seconds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for ((qtype, proto, svc, rev), h) in m.iter() {
            let labels = format!(
                "request_query_type=\"{}\",request_protocol=\"{proto}\",source_canonical_service=\"{}\",source_canonical_revision=\"{}\"",
                escape(qtype),
                escape(svc),
                escape(rev)
            );
            let mut cumulative = 0;
            for (i, le) in UPSTREAM_BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            cumulative += h.counts[UPSTREAM_BUCKETS.len()];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
        out
    }

    fn render_counters(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (name, help, map) in [
            (
                "istio_dns_requests_total",
                "Total number of DNS requests.",
                &self.requests,
            ),
            (
                "istio_dns_upstream_requests_total",
                "Total number of DNS requests forwarded to upstream.",
                &self.upstream,
            ),
            (
                "istio_dns_upstream_failures_total",
                "Total number of DNS failures.",
                &self.failures,
            ),
        ] {
            let m = map.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((qtype, proto, svc, rev), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{request_query_type=\"{}\",request_protocol=\"{proto}\",source_canonical_service=\"{}\",source_canonical_revision=\"{}\"}} {n}",
                    escape(qtype),
                    escape(svc),
                    escape(rev)
                );
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One pod's DNS context on this core.
struct PodDns {
    core: Rc<Core>,
    settings: Arc<DnsSettings>,
    place: Placement,
    uid: Arc<str>,
    namespace: Arc<str>,
    inflight: Cell<usize>,
    /// Queries being answered now (UDP tasks and TCP queries).
    queries: Cell<usize>,
    tcp_conns: Cell<usize>,
}

/// Counts one unit of a [`Cell`] for as long as it lives (a dropped future gives it back).
struct Held<'a>(&'a Cell<usize>);

impl<'a> Held<'a> {
    fn take(cell: &'a Cell<usize>, max: usize) -> Option<Held<'a>> {
        (cell.get() < max).then(|| {
            cell.set(cell.get() + 1);
            Held(cell)
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl PodDns {
    fn labels(&self, query: &[u8], proto: &'static str) -> Labels {
        let snapshot = self.core.snapshot();
        let (svc, rev) = snapshot
            .workload_by_uid(&self.uid)
            .map(|w| {
                (
                    w.meta.canonical_name.to_string(),
                    w.meta.canonical_revision.to_string(),
                )
            })
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        (dns::query_type(query), proto, svc, rev)
    }

    /// The answer to one query: ours, or the upstream's (SERVFAIL when none answers).
    async fn answer(&self, query: &[u8], proto: &'static str) -> Option<Vec<u8>> {
        let labels = self.labels(query, proto);
        DnsStats::bump(&self.settings.stats.requests, labels.clone());
        let client = Client {
            namespace: &self.namespace,
            cluster_domain: &self.settings.cluster_domain,
        };
        // The snapshot is a temporary: a forward that waits on the upstream does not pin it.
        let decided = dns::decide(&self.core.snapshot(), query, &client);
        match decided {
            Answer::Reply(r) => Some(r),
            Answer::Forward => {
                DnsStats::bump(&self.settings.stats.upstream, labels.clone());
                let reply = match Held::take(&self.inflight, MAX_INFLIGHT) {
                    None => None,
                    Some(_held) => {
                        let started = Instant::now();
                        let r = match proto {
                            "tcp" => self.forward_tcp(query).await,
                            _ => self.forward(query).await,
                        };
                        self.settings
                            .stats
                            .observe(labels.clone(), started.elapsed().as_secs_f64());
                        r
                    }
                };
                match reply {
                    Some(r) => Some(r),
                    None => {
                        DnsStats::bump(&self.settings.stats.failures, labels);
                        dns::servfail(query)
                    }
                }
            }
        }
    }

    /// Asks each upstream in turn over TCP, from inside the pod: a client that came over
    /// TCP (often after a truncated UDP answer) gets the whole answer.
    async fn forward_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let framed = dns::tcp_frame(query);
        if framed.is_empty() {
            return None;
        }
        for &upstream in &self.settings.upstreams {
            let ask = async {
                let s = TcpStream::connect_placed(&self.place, None, upstream).await?;
                s.write_all(&framed).await?;
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 4096];
                loop {
                    if let Some((_, msg)) = dns::tcp_unframe(&buf) {
                        return Ok::<_, std::io::Error>(Some(msg.to_vec()));
                    }
                    if buf.len() > MAX_TCP_BUFFER {
                        return Ok(None);
                    }
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(None);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            };
            if let Ok(Ok(Some(reply))) = runtime::time::timeout(UPSTREAM_TIMEOUT, ask).await
                && reply.len() >= 2
                && reply[..2] == query[..2]
            {
                return Some(reply);
            }
        }
        None
    }

    /// Asks each upstream in turn over UDP, from inside the pod. A truncated answer is
    /// passed on as it is: the client retries over TCP.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for &upstream in &self.settings.upstreams {
            let Ok(sock) = UdpSocket::connect_placed(&self.place, upstream) else {
                continue;
            };
            if sock.send(query).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; MAX_UPSTREAM_REPLY];
            let deadline = Instant::now() + UPSTREAM_TIMEOUT;
            // Skip datagrams that are not the answer to this query (a late one, a spoof).
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match runtime::time::timeout(left, sock.recv(&mut buf)).await {
                    Ok(Ok(n)) if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] => {
                        buf.truncate(n);
                        return Some(buf);
                    }
                    Ok(Ok(_)) => continue,
                    _ => break,
                }
            }
        }
        None
    }
}

/// Binds one pod's DNS sockets on this core and serves them until a stop sender drops.
pub fn bind(
    worker: &Worker<CoreMsg>,
    core: &Rc<Core>,
    settings: &Arc<DnsSettings>,
    uid: &str,
    namespace: &str,
    place: &Placement,
) -> std::io::Result<Vec<oneshot::Sender<()>>> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), dns::DNS_PORT);
    let udp = UdpSocket::bind_placed(place, addr)?;
    let tcp = TcpListener::bind_placed(place, addr, None)?;
    let pod = Rc::new(PodDns {
        core: core.clone(),
        settings: settings.clone(),
        place: place.clone(),
        uid: Arc::from(uid),
        namespace: Arc::from(namespace),
        inflight: Cell::new(0),
        queries: Cell::new(0),
        tcp_conns: Cell::new(0),
    });

    let (stop_udp, rx_udp) = oneshot::channel::<()>();
    let p = pod.clone();
    let w = worker.clone();
    runtime::spawn(async move {
        let serve = std::pin::pin!(serve_udp(p, Rc::new(udp)));
        let stop = std::pin::pin!(async move {
            let _ = rx_udp.await;
        });
        let drain = std::pin::pin!(w.shutdown().draining());
        let stop_or_drain = futures_util::future::select(stop, drain);
        futures_util::future::select(serve, stop_or_drain).await;
    })
    .detach();

    let (stop_tcp, rx_tcp) = oneshot::channel::<()>();
    let p = pod;
    worker.spawn_accept(
        tcp,
        async move {
            let _ = rx_tcp.await;
        },
        move |s, _peer| serve_tcp(p.clone(), s),
    );
    Ok(vec![stop_udp, stop_tcp])
}

async fn serve_udp(pod: Rc<PodDns>, sock: Rc<UdpSocket>) {
    let mut buf = vec![0u8; dns::MAX_UDP_QUERY];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: receive failed");
                runtime::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // A response sent to us is dropped, not answered: answering it could start a
        // reflection loop between two servers.
        if n >= 3 && buf[2] & 0x80 != 0 {
            continue;
        }
        if pod.queries.get() >= MAX_QUERIES {
            continue;
        }
        let query = buf[..n].to_vec();
        let (pod, sock) = (pod.clone(), sock.clone());
        // Each query in its own task: a slow upstream does not hold the others.
        runtime::spawn(async move {
            let Some(_held) = Held::take(&pod.queries, MAX_QUERIES) else {
                return;
            };
            if let Some(reply) = pod.answer(&query, "udp").await {
                // Too big for the client's UDP size: truncated, so it retries over TCP.
                let reply = dns::fit_udp(&query, reply);
                let _ = sock.send_to(&reply, from).await;
            }
        })
        .detach();
    }
}

async fn serve_tcp(pod: Rc<PodDns>, stream: TcpStream) {
    let Some(_conn) = Held::take(&pod.tcp_conns, MAX_TCP_CONNS) else {
        return;
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut deadline = Instant::now() + TCP_IDLE;
    loop {
        while let Some((used, query)) = dns::tcp_unframe(&buf) {
            let query = query.to_vec();
            buf.drain(..used);
            let Some(reply) = pod.answer(&query, "tcp").await else {
                return;
            };
            if stream.write_all(&dns::tcp_frame(&reply)).await.is_err() {
                return;
            }
            deadline = Instant::now() + TCP_IDLE;
        }
        if buf.len() >= MAX_TCP_BUFFER {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match runtime::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(q: &str) -> Labels {
        (q.into(), "udp", "web".into(), "v1".into())
    }

    #[test]
    fn counters_and_the_latency_histogram_render_in_ztunnels_names() {
        let s = DnsStats::default();
        DnsStats::bump(&s.requests, labels("a"));
        DnsStats::bump(&s.requests, labels("a"));
        DnsStats::bump(&s.upstream, labels("aaaa"));
        s.observe(labels("aaaa"), 0.0004);
        s.observe(labels("aaaa"), 0.05);
        s.observe(labels("aaaa"), 9.0);
        let text = s.render();
        let l = "request_query_type=\"a\",request_protocol=\"udp\",source_canonical_service=\"web\",source_canonical_revision=\"v1\"";
        assert!(
            text.contains(&format!("istio_dns_requests_total{{{l}}} 2")),
            "{text}"
        );
        let h = "istio_dns_upstream_request_duration_seconds";
        let l = l.replace("\"a\"", "\"aaaa\"");
        for (le, n) in [
            ("0.0005", 1),
            ("0.01", 1),
            ("0.1", 2),
            ("5", 2),
            ("+Inf", 3),
        ] {
            assert!(
                text.contains(&format!("{h}_bucket{{{l},le=\"{le}\"}} {n}")),
                "le={le}: {text}"
            );
        }
        assert!(text.contains(&format!("{h}_count{{{l}}} 3")), "{text}");
    }

    #[test]
    fn label_sets_past_the_bound_fold_into_unknown() {
        let s = DnsStats::default();
        for i in 0..MAX_SERIES + 10 {
            DnsStats::bump(&s.requests, labels(&format!("t{i}")));
        }
        let m = s.requests.lock().unwrap();
        assert_eq!(m.len(), MAX_SERIES + 1);
        assert_eq!(
            m[&(
                "unknown".to_string(),
                "udp",
                "unknown".to_string(),
                "unknown".to_string()
            )],
            10
        );
    }
}
