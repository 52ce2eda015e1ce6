use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::*;
use crate::config::{self, LoadOptions};

const MESH: &str = r#"
workloads:
  - name: client-0
    namespace: demo
    workloadIps: ["10.0.0.1"]
  - name: echo-0
    namespace: demo
    workloadIps: ["10.0.1.1"]
    services: ["demo/echo.demo.svc.cluster.local"]
  - name: db-0
    namespace: data
    workloadIps: ["10.0.2.1", "fd00::2:1"]
    services: ["data/db.data.svc.cluster.local"]
  - name: db-1
    namespace: data
    workloadIps: ["fd00::2:2", "10.0.2.2"]
    services: ["data/db.data.svc.cluster.local"]
  - name: db-2
    namespace: data
    workloadIps: ["10.0.2.3"]
    status: Unhealthy
    services: ["data/db.data.svc.cluster.local"]
services:
  - name: echo
    namespace: demo
    hostname: echo.demo.svc.cluster.local
    vips: ["10.96.0.1"]
    ports: {80: 8080}
  - name: db
    namespace: data
    hostname: db.data.svc.cluster.local
    vips: []
    ports: {5432: 5432}
  - name: dual
    namespace: demo
    hostname: dual.demo.svc.cluster.local
    vips: ["10.96.0.2", "fd00::96:2", "10.96.0.3"]
    ports: {80: 80}
  - name: private
    namespace: secret
    hostname: private.secret.svc.cluster.local
    vips: ["10.96.0.9"]
    ports: {80: 80}
    visibility: Namespace
  - name: external
    namespace: demo
    hostname: api.example.com
    vips: []
    ports: {443: 443}
  - name: wild
    namespace: demo
    hostname: "*.wild.example.com"
    vips: ["10.96.0.7"]
    ports: {443: 443}
"#;

fn mesh() -> Snapshot {
    config::parse(MESH, &LoadOptions::default()).expect("test mesh parses")
}

const DEMO: Client<'static> = Client {
    namespace: "demo",
    cluster_domain: "cluster.local",
};

fn query(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

fn reply(answer: Answer) -> Message {
    match answer {
        Answer::Reply(bytes) => Message::from_vec(&bytes).expect("reply decodes"),
        Answer::Forward => panic!("expected a reply, got Forward"),
    }
}

fn ask(snap: &Snapshot, name: &str, rtype: RecordType, client: &Client<'_>) -> Message {
    reply(decide(snap, &query(name, rtype, 7), client))
}

/// The answer's addresses, sorted (replies are rotated by id).
fn ips(m: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn assert_authoritative(m: &Message, id: u16) {
    assert_eq!(m.id(), id);
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert!(m.recursion_available());
    assert!(m.recursion_desired(), "RD is echoed");
    assert_eq!(m.queries().len(), 1, "the question is echoed");
}

#[test]
fn fqdn_a_is_answered_with_the_vip() {
    let m = ask(
        &mesh(),
        "echo.demo.svc.cluster.local.",
        RecordType::A,
        &DEMO,
    );
    assert_authoritative(&m, 7);
    assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))]);
    let rec = &m.answers()[0];
    assert_eq!(rec.ttl(), TTL_SECS);
    assert_eq!(rec.name(), m.queries()[0].name());
}

#[test]
fn names_are_case_insensitive() {
    let m = ask(
        &mesh(),
        "Echo.DEMO.svc.Cluster.Local.",
        RecordType::A,
        &DEMO,
    );
    assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))]);
}

#[test]
fn short_name_uses_the_clients_namespace() {
    let snap = mesh();
    let m = ask(&snap, "echo.", RecordType::A, &DEMO);
    assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))]);
    // From another namespace, `echo` is not that service.
    let other = Client {
        namespace: "data",
        cluster_domain: "cluster.local",
    };
    assert_eq!(
        decide(&snap, &query("echo.", RecordType::A, 1), &other),
        Answer::Forward
    );
}

#[test]
fn name_dot_namespace_and_svc_forms() {
    let snap = mesh();
    let other = Client {
        namespace: "data",
        cluster_domain: "cluster.local",
    };
    for name in ["echo.demo.", "echo.demo.svc."] {
        let m = ask(&snap, name, RecordType::A, &other);
        assert_eq!(
            ips(&m),
            vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))],
            "{name}"
        );
    }
}

#[test]
fn aaaa_for_an_ipv4_only_service_is_empty_noerror() {
    let m = ask(
        &mesh(),
        "echo.demo.svc.cluster.local.",
        RecordType::AAAA,
        &DEMO,
    );
    assert_authoritative(&m, 7);
    assert!(m.answers().is_empty());
}

#[test]
fn each_family_gets_its_vips() {
    let snap = mesh();
    let a = ask(&snap, "dual.demo.svc.cluster.local.", RecordType::A, &DEMO);
    assert_eq!(
        ips(&a),
        vec![
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 3))
        ]
    );
    let aaaa = ask(
        &snap,
        "dual.demo.svc.cluster.local.",
        RecordType::AAAA,
        &DEMO,
    );
    assert_eq!(
        ips(&aaaa),
        vec![IpAddr::V6("fd00::96:2".parse::<Ipv6Addr>().unwrap())]
    );
}

#[test]
fn answers_rotate_with_the_query_id() {
    let snap = mesh();
    let first = |id| {
        let m = reply(decide(
            &snap,
            &query("dual.demo.", RecordType::A, id),
            &DEMO,
        ));
        m.answers()[0].data().clone()
    };
    assert_ne!(first(0), first(1));
}

#[test]
fn headless_service_answers_healthy_member_ips() {
    let snap = mesh();
    let a = ask(&snap, "db.data.svc.cluster.local.", RecordType::A, &DEMO);
    assert_authoritative(&a, 7);
    // db-2 is unhealthy; db-1's first IPv4 is its second address.
    assert_eq!(
        ips(&a),
        vec![
            IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))
        ]
    );
    let aaaa = ask(&snap, "db.data.svc.cluster.local.", RecordType::AAAA, &DEMO);
    assert_eq!(ips(&aaaa).len(), 2);
}

#[test]
fn vip_less_service_outside_svc_domain_is_forwarded() {
    let q = query("api.example.com.", RecordType::A, 3);
    assert_eq!(decide(&mesh(), &q, &DEMO), Answer::Forward);
}

#[test]
fn wildcard_hostname_matches_without_cname() {
    let m = ask(&mesh(), "x.y.wild.example.com.", RecordType::A, &DEMO);
    assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 7))]);
    assert_eq!(m.answers().len(), 1);
}

#[test]
fn namespace_visibility_hides_from_other_namespaces() {
    let snap = mesh();
    let q = query("private.secret.svc.cluster.local.", RecordType::A, 3);
    assert_eq!(decide(&snap, &q, &DEMO), Answer::Forward);
    let inside = Client {
        namespace: "secret",
        cluster_domain: "cluster.local",
    };
    assert!(matches!(decide(&snap, &q, &inside), Answer::Reply(_)));
}

#[test]
fn stripped_search_domain_answers_with_a_cname() {
    let name = "echo.demo.svc.cluster.local.demo.svc.cluster.local.";
    let m = ask(&mesh(), name, RecordType::A, &DEMO);
    assert_authoritative(&m, 7);
    let answers = m.answers();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].name().to_ascii(), name);
    let target = Name::from_ascii("echo.demo.svc.cluster.local.").unwrap();
    match answers[0].data() {
        RData::CNAME(c) => assert_eq!(c.0, target),
        other => panic!("expected a CNAME, got {other:?}"),
    }
    assert_eq!(answers[1].name(), &target);
    assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))]);
}

#[test]
fn unknown_name_is_forwarded() {
    for name in ["example.com.", "nope.demo.svc.cluster.local.", "nope."] {
        let q = query(name, RecordType::A, 9);
        assert_eq!(decide(&mesh(), &q, &DEMO), Answer::Forward, "{name}");
    }
}

#[test]
fn other_types_are_forwarded() {
    let snap = mesh();
    for rtype in [
        RecordType::MX,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::PTR,
    ] {
        let q = query("echo.demo.svc.cluster.local.", rtype, 9);
        assert_eq!(decide(&snap, &q, &DEMO), Answer::Forward, "{rtype}");
    }
}

fn rcode(answer: Answer) -> (u16, ResponseCode) {
    let m = reply(answer);
    assert_eq!(m.message_type(), MessageType::Response);
    (m.id(), m.response_code())
}

#[test]
fn garbage_gets_formerr_with_its_id() {
    let mut bytes = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    bytes.extend_from_slice(&[0x3f, b'a', b'b']); // a label longer than what follows
    assert_eq!(
        rcode(decide(&mesh(), &bytes, &DEMO)),
        (0x1234, ResponseCode::FormErr)
    );
}

#[test]
fn truncated_header_gets_formerr_with_id_zero() {
    for bytes in [&[][..], &[0xab][..], &[0xab, 0xcd, 1, 0, 0][..]] {
        assert_eq!(
            rcode(decide(&mesh(), bytes, &DEMO)),
            (0, ResponseCode::FormErr)
        );
    }
}

#[test]
fn a_response_sent_as_query_gets_formerr() {
    let mut m = Message::from_vec(&query("echo.", RecordType::A, 77)).unwrap();
    m.set_message_type(MessageType::Response);
    let bytes = m.to_vec().unwrap();
    assert_eq!(
        rcode(decide(&mesh(), &bytes, &DEMO)),
        (77, ResponseCode::FormErr)
    );
}

#[test]
fn no_question_gets_formerr() {
    let mut m = Message::new();
    m.set_id(5);
    let bytes = m.to_vec().unwrap();
    assert_eq!(
        rcode(decide(&mesh(), &bytes, &DEMO)),
        (5, ResponseCode::FormErr)
    );
}

#[test]
fn other_opcodes_get_notimp() {
    let mut m = Message::from_vec(&query("echo.", RecordType::A, 6)).unwrap();
    m.set_op_code(OpCode::Status);
    let bytes = m.to_vec().unwrap();
    assert_eq!(
        rcode(decide(&mesh(), &bytes, &DEMO)),
        (6, ResponseCode::NotImp)
    );
}

#[test]
fn edns_is_echoed_with_at_least_512() {
    let mut m = Message::from_vec(&query("echo.", RecordType::A, 6)).unwrap();
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(100);
    m.set_edns(edns);
    let r = reply(decide(&mesh(), &m.to_vec().unwrap(), &DEMO));
    assert_eq!(r.extensions().as_ref().map(|e| e.max_payload()), Some(512));
}

#[test]
fn servfail_keeps_the_id_and_question() {
    let q = query("example.com.", RecordType::MX, 0xbeef);
    let m = Message::from_vec(&servfail(&q).unwrap()).unwrap();
    assert_eq!(m.id(), 0xbeef);
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert_eq!(m.message_type(), MessageType::Response);
    assert_eq!(m.queries(), Message::from_vec(&q).unwrap().queries());
    assert_eq!(servfail(&[1, 2, 3]), None);
}

#[test]
fn query_type_labels() {
    assert_eq!(query_type(&query("a.", RecordType::A, 1)), "a");
    assert_eq!(query_type(&query("a.", RecordType::AAAA, 1)), "aaaa");
    assert_eq!(query_type(&query("a.", RecordType::SRV, 1)), "srv");
    assert_eq!(
        query_type(&query("a.", RecordType::Unknown(65_280), 1)),
        "unknown"
    );
    assert_eq!(query_type(b"junk"), "unknown");
}

#[test]
fn nameservers_from_resolv_conf() {
    let text = "# generated\nsearch demo.svc.cluster.local svc.cluster.local\n\
        nameserver 10.96.0.10\nnameserver   fd00::10  # v6\n nameserver\n\
        nameserver not-an-ip\nnameserver fe80::1%eth0\n;nameserver 1.1.1.1\n\
        options ndots:5\nnameserver 8.8.8.8\nnameserver 9.9.9.9\n";
    assert_eq!(
        nameservers(text),
        vec![
            "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
            "[fd00::10]:53".parse().unwrap(),
            "8.8.8.8:53".parse().unwrap(),
        ]
    );
    assert!(nameservers("").is_empty());
}

#[test]
fn tcp_framing_round_trips() {
    let a = query("echo.", RecordType::A, 1);
    let b = query("db.data.", RecordType::AAAA, 2);
    let mut stream = tcp_frame(&a);
    stream.extend_from_slice(&tcp_frame(&b));
    let (used, msg) = tcp_unframe(&stream).unwrap();
    assert_eq!(msg, &a[..]);
    let (used2, msg2) = tcp_unframe(&stream[used..]).unwrap();
    assert_eq!(msg2, &b[..]);
    assert_eq!(used + used2, stream.len());
    // Incomplete: no length, half a length, a short body.
    assert_eq!(tcp_unframe(&[]), None);
    assert_eq!(tcp_unframe(&[0]), None);
    assert_eq!(tcp_unframe(&stream[..used - 1]), None);
    assert_eq!(tcp_unframe(&[0, 0]), Some((2, &[][..])));
    assert!(tcp_frame(&vec![0; 70_000]).is_empty());
}

#[test]
fn fit_udp_truncates_long_replies() {
    let q = query("echo.", RecordType::A, 1);
    let short = vec![0u8; 100];
    assert_eq!(fit_udp(&q, short.clone()), short);
    // A reply of 200 AAAA records is past 512 bytes.
    let mut big = Message::from_vec(&q).unwrap();
    big.set_message_type(MessageType::Response);
    for i in 0..200u16 {
        big.add_answer(Record::from_rdata(
            Name::from_ascii("echo.").unwrap(),
            TTL_SECS,
            RData::AAAA(AAAA(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))),
        ));
    }
    let bytes = big.to_vec().unwrap();
    assert!(bytes.len() > 512);
    let cut = Message::from_vec(&fit_udp(&q, bytes)).unwrap();
    assert!(cut.truncated());
    assert!(cut.answers().is_empty());
    assert_eq!(cut.id(), 1);
}

#[test]
fn aliases_follow_ztunnel() {
    let names = |q: &str| -> Vec<(String, bool)> {
        let labels: Vec<String> = q.split('.').map(str::to_string).collect();
        aliases(&labels, "ns", "cluster.local")
            .into_iter()
            .map(|a| (a.name, a.stripped))
            .collect()
    };
    let s = |n: &str, b| (n.to_string(), b);
    assert_eq!(
        names("a"),
        [s("a", false), s("a.ns.svc.cluster.local", false)]
    );
    assert_eq!(
        names("a.b"),
        [s("a.b", false), s("a.b.svc.cluster.local", false)]
    );
    assert_eq!(
        names("a.b.svc"),
        [s("a.b.svc", false), s("a.b.svc.cluster.local", false)]
    );
    assert_eq!(
        names("a.b.c"),
        [s("a.b.c", false), s("a.b.c.svc.cluster.local", false)]
    );
    assert_eq!(
        names("a.b.c.svc"),
        [s("a.b.c.svc", false), s("a.b.c.svc.cluster.local", false)]
    );
    assert_eq!(
        names("a.ns.svc.cluster.local"),
        [
            s("a.ns.svc.cluster.local", false),
            s("a", true),
            s("a.ns", true),
            s("a.ns.svc", true)
        ]
    );
}

#[test]
fn index_follows_a_new_snapshot() {
    let first = mesh();
    assert!(matches!(
        decide(&first, &query("echo.demo.", RecordType::A, 1), &DEMO),
        Answer::Reply(_)
    ));
    let second = config::parse(
        "workloads: []\nservices:\n  - name: other\n    namespace: demo\n    hostname: other.demo.svc.cluster.local\n    vips: [\"10.96.1.1\"]\n    ports: {80: 80}\n",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        decide(&second, &query("echo.demo.", RecordType::A, 1), &DEMO),
        Answer::Forward
    );
    let m = reply(decide(&second, &query("other.", RecordType::A, 1), &DEMO));
    assert_eq!(ips(&m), vec![IpAddr::V4(Ipv4Addr::new(10, 96, 1, 1))]);
}

/// xorshift64 (Marsaglia 2003): a seeded, dependency-free byte source.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn random_bytes_never_panic() {
    let snap = mesh();
    let valid = query("echo.demo.svc.cluster.local.", RecordType::A, 1);
    let mut state = 0x9e37_79b9_7f4a_7c15;
    for i in 0..10_000 {
        let len = (xorshift(&mut state) % 96) as usize;
        let mut bytes: Vec<u8> = if i % 2 == 0 {
            (0..len).map(|_| xorshift(&mut state) as u8).collect()
        } else {
            // Mutate a valid query: flips keep the header plausible and reach deeper code.
            let mut b = valid.clone();
            for _ in 0..1 + len % 4 {
                let at = (xorshift(&mut state) as usize) % b.len();
                b[at] = xorshift(&mut state) as u8;
            }
            b
        };
        if i % 7 == 0 {
            bytes.truncate(len);
        }
        let answer = decide(&snap, &bytes, &DEMO);
        if let Answer::Reply(r) = &answer {
            assert!(Message::from_vec(r).is_ok(), "our reply decodes");
        }
        let _ = servfail(&bytes);
        let _ = query_type(&bytes);
        let _ = tcp_unframe(&bytes);
        let _ = fit_udp(&bytes, bytes.clone());
    }
}
