//! The DNS proxy's decisions for in-pod mode, without I/O: given one query's bytes, the
//! querying pod's namespace and the mesh snapshot, either the reply to send or "forward the
//! query upstream unchanged". The sockets live in `node::dns_serve`; this module owns the
//! answers (ztunnel's `dns/server.rs` and `handler.rs`), the TCP framing (RFC 1035 §4.2.2),
//! and reading upstream resolvers from `resolv.conf`.
//!
//! Invariants:
//! - no input panics: bytes are decoded by hickory-proto (no hand-written parser here) and
//!   every failure becomes a FORMERR reply or a forward;
//! - the work per query is bounded: one decode, at most [`MAX_ALIASES`] names each tried
//!   with at most 127 wildcard forms (a name has at most 127 labels) as hash lookups, and at
//!   most [`MAX_ANSWERS`] records in a reply;
//! - answers come only from the snapshot: A and AAAA for service hostnames the client may
//!   see. Everything else (other names, other types, other classes) is forwarded, so the
//!   proxy never invents NXDOMAIN for a name the upstream might know;
//! - the hostname index is rebuilt per thread when the snapshot's services change, and only
//!   then (see `names_for`); nothing is shared between threads.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::snapshot::Visibility;
use crate::config::{HealthStatus, Service, Snapshot};

/// Where istio-cni's in-pod rules redirect a pod's port-53 traffic (istio
/// `cni/pkg/config/config.go`, `DNSCapturePort`).
pub const DNS_PORT: u16 = 15053;
/// TTL of every record made here (ztunnel's `DEFAULT_TTL_SECONDS`): short enough that a
/// VIP change reaches clients quickly, long enough to spare the proxy repeat lookups.
pub const TTL_SECS: u32 = 30;
/// The largest UDP query read. 4096 is the EDNS payload size most stub resolvers
/// advertise (RFC 6891 §6.2.5 suggests it as the starting point); a real query is far
/// smaller, so a longer datagram is cut and then fails to decode (FORMERR).
pub const MAX_UDP_QUERY: usize = 4096;
/// Records in one reply, at most. 1024 AAAA records are ~29 KiB, inside one DNS-over-TCP
/// message (64 KiB, RFC 1035 §4.2.2) with room for the question and a CNAME; a headless
/// service with more members answers with its first 1024 (rotated, see [`decide`]).
pub const MAX_ANSWERS: usize = 1024;
/// Names tried per query: the name, at most one Kubernetes expansion, one per search domain.
pub const MAX_ALIASES: usize = 5;
/// UDP reply size without EDNS (RFC 1035 §4.2.1).
const UDP_MIN_PAYLOAD: u16 = 512;
/// resolv.conf's `MAXNS` (resolv.conf(5)): glibc reads at most three nameservers.
const MAX_NAMESERVERS: usize = 3;
/// Used when a client names no cluster domain (Kubernetes' default).
const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Who asks: the querying pod's namespace and the cluster domain (`cluster.local`).
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub namespace: &'a str,
    pub cluster_domain: &'a str,
}

/// What to do with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Not ours: send the original query bytes upstream unchanged.
    Forward,
}

/// Decides one query (the bytes as received, without TCP framing).
///
/// - Undecodable bytes, a response (QR=1) or a query without a question: FORMERR, with the
///   query's id when the header can be read (else id 0). Another opcode than QUERY: NOTIMP.
/// - A or AAAA (class IN, one question) for a service hostname the client may see, after
///   ztunnel's alias expansion (see [`aliases`]): an authoritative reply with the service's
///   VIPs of that family, or for a headless service (no VIP, hostname under
///   `.svc.<cluster domain>`) the first address of that family of each healthy member;
///   TTL [`TTL_SECS`], recursion available. A service with no address of the family gets
///   an empty NOERROR reply (not NXDOMAIN: the name exists). When the match came from
///   stripping a search domain, the answer starts with a CNAME from the asked name to the
///   service's hostname. Addresses are rotated by the query id, so successive queries
///   spread over them as ztunnel's shuffle does.
/// - Anything else: [`Answer::Forward`].
///
/// The reply is not fitted to a UDP payload size; see [`fit_udp`].
pub fn decide(snapshot: &Snapshot, query: &[u8], client: &Client<'_>) -> Answer {
    let Some(id) = header_id(query) else {
        return error_reply(0, OpCode::Query, ResponseCode::FormErr, None);
    };
    let Ok(req) = Message::from_vec(query) else {
        return error_reply(id, OpCode::Query, ResponseCode::FormErr, None);
    };
    if req.message_type() != MessageType::Query {
        return error_reply(id, req.op_code(), ResponseCode::FormErr, Some(&req));
    }
    if req.op_code() != OpCode::Query {
        return error_reply(id, req.op_code(), ResponseCode::NotImp, Some(&req));
    }
    let question = match req.queries() {
        [] => return error_reply(id, req.op_code(), ResponseCode::FormErr, Some(&req)),
        [q] => q,
        // Several questions in one message is undefined in practice (RFC 9619); the
        // upstream decides what to make of it.
        _ => return Answer::Forward,
    };
    let qtype = question.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) || question.query_class() != DNSClass::IN
    {
        return Answer::Forward;
    }
    let Some(labels) = labels(question.name()) else {
        return Answer::Forward;
    };
    let cluster_domain = normalize_domain(client.cluster_domain);
    let names = names_for(snapshot);
    let Some(found) = find(&names, &labels, client.namespace, &cluster_domain) else {
        return Answer::Forward;
    };
    let want_v4 = qtype == RecordType::A;
    let mut addrs = addresses(&found.service, want_v4, &cluster_domain);
    if !addrs.is_empty() {
        let turn = usize::from(id) % addrs.len();
        addrs.rotate_left(turn);
    }
    addrs.truncate(MAX_ANSWERS);

    let mut resp = response_to(&req, ResponseCode::NoError);
    resp.set_authoritative(true);
    resp.add_query(question.clone());
    let mut owner = question.name().clone();
    if found.stripped {
        // The client asked `<svc>.<search domain>`; say which name the records belong to,
        // as ztunnel does. A hostname that is not a valid name keeps the asked one.
        if let Ok(target) = Name::from_ascii(format!("{}.", found.hostname)) {
            resp.add_answer(Record::from_rdata(
                owner.clone(),
                TTL_SECS,
                RData::CNAME(CNAME(target.clone())),
            ));
            owner = target;
        }
    }
    resp.add_answers(addrs.into_iter().map(|ip| {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(owner.clone(), TTL_SECS, rdata)
    }));
    match resp.to_vec() {
        Ok(bytes) => Answer::Reply(bytes),
        // Cannot happen for names that decoded; the upstream still answers.
        Err(_) => Answer::Forward,
    }
}

/// A SERVFAIL reply to `query` (the upstream failed or timed out), echoing its id, question
/// and EDNS; `None` if the query cannot be decoded.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut resp = response_to(&req, ResponseCode::ServFail);
    resp.add_queries(req.queries().iter().cloned());
    resp.to_vec().ok()
}

/// The query type label for metrics (Istio's `request_query_type`): the first question's
/// type in lower case (`a`, `aaaa`, `srv`, ...), or `unknown`.
pub fn query_type(query: &[u8]) -> String {
    Message::from_vec(query)
        .ok()
        .and_then(|m| m.queries().first().map(Query::query_type))
        .map_or("unknown", <&'static str>::from)
        .to_ascii_lowercase()
}

/// Fits a reply to the UDP payload the query allows (512 bytes, or its EDNS size if larger):
/// a longer reply is cut to its header, question and EDNS with TC set (RFC 1035 §4.2.1,
/// RFC 6891 §7), so the client retries over TCP. Replies that fit, and bytes that do not
/// decode, are returned unchanged.
pub fn fit_udp(query: &[u8], reply: Vec<u8>) -> Vec<u8> {
    let limit = Message::from_vec(query)
        .map(|m| m.max_payload())
        .unwrap_or(UDP_MIN_PAYLOAD);
    if reply.len() <= usize::from(limit) {
        return reply;
    }
    match Message::from_vec(&reply).and_then(|m| m.truncate().to_vec()) {
        Ok(cut) => cut,
        Err(_) => reply,
    }
}

/// Upstream resolvers from `resolv.conf` text: each `nameserver <IPv4 or IPv6>` line, port 53,
/// at most three (glibc's `MAXNS`). Comments, other keywords and unreadable addresses are
/// skipped; so are IPv6 addresses with a zone (`%eth0`), which name an interface of the
/// host's namespace, not the pod's.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .take(MAX_NAMESERVERS)
        .collect()
}

/// One message framed for DNS over TCP: a two-byte big-endian length, then the message
/// (RFC 1035 §4.2.2). A message longer than 65,535 bytes cannot be framed: the result is
/// empty (write nothing; the client times out and retries).
pub fn tcp_frame(msg: &[u8]) -> Vec<u8> {
    let Ok(len) = u16::try_from(msg.len()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The first framed message in `buf`: the bytes consumed (length prefix included) and the
/// message; `None` until the whole message has arrived.
pub fn tcp_unframe(buf: &[u8]) -> Option<(usize, &[u8])> {
    let (len, rest) = buf.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let msg = rest.get(..len)?;
    Some((len + 2, msg))
}

/// The id in a message header, if it has one (RFC 1035 §4.1.1: the first two bytes of the
/// twelve-byte header).
fn header_id(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 12 {
        return None;
    }
    let (id, _) = bytes.split_first_chunk::<2>()?;
    Some(u16::from_be_bytes(*id))
}

/// A reply to `req` with its id, opcode, RD flag and EDNS (payload at least 512, as ztunnel
/// echoes it); recursion available, as the proxy forwards what it does not answer.
fn response_to(req: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(req.checking_disabled())
        .set_response_code(code);
    if let Some(edns) = req.extensions() {
        let mut out = Edns::new();
        out.set_max_payload(edns.max_payload().max(UDP_MIN_PAYLOAD))
            .set_version(0)
            .set_dnssec_ok(edns.flags().dnssec_ok);
        resp.set_edns(out);
    }
    resp
}

/// A FORMERR or NOTIMP reply: the id, and the question when the query decoded.
fn error_reply(id: u16, op: OpCode, code: ResponseCode, req: Option<&Message>) -> Answer {
    let mut resp = match req {
        Some(req) => {
            let mut r = response_to(req, code);
            r.add_queries(req.queries().iter().cloned());
            r
        }
        None => Message::error_msg(id, op, code),
    };
    resp.set_id(id);
    match resp.to_vec() {
        Ok(bytes) => Answer::Reply(bytes),
        Err(_) => Answer::Forward,
    }
}

/// The name's labels in lower case, or `None` for a name that cannot be a service
/// hostname (a label with a dot or a byte that is not printable ASCII): those are forwarded.
fn labels(name: &Name) -> Option<Vec<String>> {
    name.iter()
        .map(|label| {
            let ok = !label.is_empty() && label.iter().all(|b| b.is_ascii_graphic() && *b != b'.');
            ok.then(|| String::from_utf8_lossy(label).to_ascii_lowercase())
        })
        .collect()
}

/// The cluster domain in lower case without dots at the ends (`cluster.local` if empty).
fn normalize_domain(domain: &str) -> String {
    let d = domain.trim_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        DEFAULT_CLUSTER_DOMAIN.to_string()
    } else {
        d
    }
}

/// A name to try, and whether it came from stripping a search domain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alias {
    name: String,
    stripped: bool,
}

/// The names ztunnel tries for a query name (`server.rs`, `get_aliases`), in order:
/// 1. the name as given;
/// 2. its Kubernetes FQDN: 1 label → `<name>.<ns>.svc.<cd>`; 2 labels → `+ .svc.<cd>`;
///    3 labels → `+ .<cd>` if the last is `svc`, else `+ .svc.<cd>`; 4 labels ending in
///    `svc` → `+ .<cd>`;
/// 3. the name with each of the pod's search domains stripped (`<ns>.svc.<cd>`,
///    `svc.<cd>`, `<cd>`: ztunnel's in-pod list; the pod's own resolv.conf is not read).
fn aliases(labels: &[String], namespace: &str, cd: &str) -> Vec<Alias> {
    let name = labels.join(".");
    let mut out = Vec::with_capacity(MAX_ALIASES);
    let mut push = |name: String, stripped: bool| {
        if !name.is_empty() && !out.iter().any(|a: &Alias| a.name == name) {
            out.push(Alias { name, stripped });
        }
    };
    push(name.clone(), false);
    let last_is_svc = labels.last().is_some_and(|l| l == "svc");
    let expanded = match labels.len() {
        1 => Some(format!("{name}.{namespace}.svc.{cd}")),
        2 => Some(format!("{name}.svc.{cd}")),
        3 if last_is_svc => Some(format!("{name}.{cd}")),
        3 => Some(format!("{name}.svc.{cd}")),
        4 if last_is_svc => Some(format!("{name}.{cd}")),
        _ => None,
    };
    if let Some(expanded) = expanded {
        push(expanded, false);
    }
    for domain in [
        format!("{namespace}.svc.{cd}"),
        format!("svc.{cd}"),
        cd.to_string(),
    ] {
        if let Some(rest) = name.strip_suffix(domain.as_str())
            && let Some(rest) = rest.strip_suffix('.')
        {
            push(rest.to_string(), true);
        }
    }
    out
}

/// A service matched by a query, and how.
#[derive(Debug)]
struct Found {
    service: Arc<Service>,
    /// The service's hostname (lower case) as matched.
    hostname: String,
    /// The match came from stripping a search domain (and is not a wildcard).
    stripped: bool,
}

/// The first service, over [`aliases`] in order and for each the name then its wildcard
/// forms from most to least specific (`*.b.c`, `*.c`), that the client may see and that
/// can be answered locally.
fn find(names: &Names, labels: &[String], namespace: &str, cd: &str) -> Option<Found> {
    for alias in aliases(labels, namespace, cd) {
        if let Some(service) = names.pick(&alias.name, namespace, cd) {
            return Some(Found {
                service: service.clone(),
                hostname: alias.name,
                stripped: alias.stripped,
            });
        }
        let mut rest = alias.name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            let wildcard = format!("*.{parent}");
            if let Some(service) = names.pick(&wildcard, namespace, cd) {
                return Some(Found {
                    service: service.clone(),
                    hostname: wildcard,
                    stripped: false,
                });
            }
            rest = parent;
        }
    }
    None
}

/// The addresses of `service` of one family: its VIPs, or for a headless service the first
/// address of the family of each healthy member (Kubernetes answers for ready endpoints
/// only), without repeats.
fn addresses(service: &Service, want_v4: bool, cd: &str) -> Vec<IpAddr> {
    let family = |ip: &IpAddr| ip.is_ipv4() == want_v4;
    if !service.vips.is_empty() {
        return service.vips.iter().map(|v| v.ip).filter(family).collect();
    }
    if !is_headless_host(&service.hostname, cd) {
        return Vec::new();
    }
    let mut out: Vec<IpAddr> = Vec::new();
    let mut seen = HashSet::new();
    for member in &service.members {
        if out.len() == MAX_ANSWERS {
            break;
        }
        if member.status == HealthStatus::Healthy
            && let Some(ip) = member.ips.iter().copied().find(family)
            && seen.insert(ip)
        {
            out.push(ip);
        }
    }
    out
}

/// A service without VIPs is answered only under `.svc.<cd>` (ztunnel: headless Kubernetes
/// services); other VIP-less hostnames (DNS-resolved ServiceEntries) are forwarded.
fn is_headless_host(hostname: &str, cd: &str) -> bool {
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    host.strip_suffix(&format!(".svc.{cd}"))
        .is_some_and(|h| !h.is_empty() && !h.ends_with('.'))
}

/// The snapshot's services by lower-case hostname (ztunnel's `get_by_host`).
#[derive(Debug, Default)]
struct Names {
    /// The services indexed, held so that comparing pointers proves the index current.
    services: Vec<Arc<Service>>,
    by_host: HashMap<Box<str>, Vec<Arc<Service>>>,
}

impl Names {
    fn new(services: &[Arc<Service>]) -> Names {
        let mut by_host: HashMap<Box<str>, Vec<Arc<Service>>> = HashMap::new();
        for svc in services {
            let host = svc.hostname.trim_end_matches('.').to_ascii_lowercase();
            by_host.entry(host.into()).or_default().push(svc.clone());
        }
        Names {
            services: services.to_vec(),
            by_host,
        }
    }

    /// Whether this index was built from exactly these services. The index holds them, so
    /// none can be freed and its address reused: equal pointers mean the same objects.
    fn is_for(&self, services: &[Arc<Service>]) -> bool {
        self.services.len() == services.len()
            && self
                .services
                .iter()
                .zip(services)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// The service with this hostname that the client may see and that has addresses to
    /// give (VIPs, or headless under `.svc.<cd>`); the client's namespace first.
    fn pick(&self, host: &str, namespace: &str, cd: &str) -> Option<&Arc<Service>> {
        let candidates = self.by_host.get(host)?;
        let usable = |s: &&Arc<Service>| {
            let visible = match s.visibility {
                Visibility::Public => true,
                Visibility::Namespace => &*s.namespace == namespace,
            };
            let answerable = !s.vips.is_empty() || is_headless_host(&s.hostname, cd);
            visible && answerable
        };
        candidates
            .iter()
            .filter(usable)
            .find(|s| &*s.namespace == namespace)
            .or_else(|| candidates.iter().find(usable))
    }
}

thread_local! {
    /// This thread's hostname index, for the last snapshot it answered from. Per thread
    /// (one core each), so no lock; a new snapshot costs one rebuild per core.
    static NAMES: RefCell<Option<Rc<Names>>> = const { RefCell::new(None) };
}

/// The hostname index of `snapshot`: this thread's copy, rebuilt if the snapshot's services
/// are not the ones it was built from. Checking is a pointer compare per service, far
/// cheaper than a rebuild (a hash and an allocation per service).
fn names_for(snapshot: &Snapshot) -> Rc<Names> {
    let services = snapshot.services();
    NAMES
        .try_with(|cell| {
            let mut slot = cell.try_borrow_mut().ok()?;
            if let Some(names) = slot.as_ref().filter(|n| n.is_for(services)) {
                return Some(names.clone());
            }
            let names = Rc::new(Names::new(services));
            *slot = Some(names.clone());
            Some(names)
        })
        .ok()
        .flatten()
        // The thread is exiting: a throwaway index.
        .unwrap_or_else(|| Rc::new(Names::new(services)))
}

#[cfg(test)]
mod tests;
