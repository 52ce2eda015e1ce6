//! Addresses in policies: `ipBlocks` and `remoteIpBlocks` (and their `not` forms), the
//! `source.ip` and `remote.ip` conditions, against the client's address the node proxy
//! forwarded; `destination.ip` against the address it called; prefixes of both families,
//! an unknown address, and bad values by field. `connection.sni`, which a waypoint never has.
use super::*;

/// [`client`] calling from `addr`.
fn from(addr: &str) -> Peer {
    Peer {
        addr: Some(addr.parse().unwrap()),
        ..client()
    }
}

#[test]
fn ip_blocks_match_the_clients_address() {
    let t =
        allow_one(r#"{from: [{source: {ipBlocks: ["10.1.0.0/16", "192.168.1.7", "fd00::/8"]}}]}"#);
    for (addr, allowed) in [
        ("10.1.2.3:40000", true),
        ("10.2.0.1:40000", false),
        ("192.168.1.7:1", true),
        ("192.168.1.8:1", false),
        ("[fd00::1]:1", true),
        ("[fe80::1]:1", false),
        // An IPv4 client written as IPv6 is the IPv4 client.
        ("[::ffff:10.1.0.9]:1", true),
    ] {
        assert_eq!(allows(&t, 80, &from(addr), get("/")), allowed, "{addr}");
    }
    // No address known: a block never holds.
    assert!(!allows(&t, 80, &client(), get("/")));
}

#[test]
fn not_ip_blocks_and_remote_ip_blocks() {
    let t = allow_one(r#"{from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]}"#);
    assert!(!allows(&t, 80, &from("10.9.9.9:1"), get("/")));
    assert!(allows(&t, 80, &from("172.16.0.1:1"), get("/")));
    // `not` alone holds when the address is unknown, as for other absent attributes.
    assert!(allows(&t, 80, &client(), get("/")));

    let t = allow_one(
        r#"{from: [{source: {remoteIpBlocks: ["0.0.0.0/0"], notRemoteIpBlocks: ["10.6.0.0/16"]}}]}"#,
    );
    assert!(allows(&t, 80, &from("10.5.0.1:1"), get("/")));
    assert!(!allows(&t, 80, &from("10.6.0.1:1"), get("/")));
    // A DENY on an address range.
    let t = authz(&policy_yaml(
        "DENY",
        r#"[{from: [{source: {ipBlocks: ["203.0.113.0/24"]}}], to: [{operation: {methods: [POST]}}]}]"#,
    ));
    assert!(!allows(
        &t,
        80,
        &from("203.0.113.5:1"),
        parts("POST", "/", &[("host", HOST)])
    ));
    assert!(allows(&t, 80, &from("203.0.113.5:1"), get("/")));
    assert!(allows(
        &t,
        80,
        &from("198.51.100.5:1"),
        parts("POST", "/", &[("host", HOST)])
    ));
}

#[test]
fn source_ip_and_remote_ip_conditions() {
    let t = allow_one(r#"{when: [{key: source.ip, values: ["10.1.0.0/16"]}]}"#);
    assert!(allows(&t, 80, &from("10.1.0.1:1"), get("/")));
    assert!(!allows(&t, 80, &from("10.3.0.1:1"), get("/")));
    assert!(!allows(&t, 80, &client(), get("/")));
    let t = allow_one(r#"{when: [{key: remote.ip, notValues: ["10.1.0.0/16"]}]}"#);
    assert!(!allows(&t, 80, &from("10.1.0.1:1"), get("/")));
    assert!(allows(&t, 80, &from("10.3.0.1:1"), get("/")));
}

#[test]
fn remote_ip_is_the_last_forwarded_address_as_envoys() {
    let xff = |v: &str| parts("GET", "/", &[("host", HOST), ("x-forwarded-for", v)]);
    let t = allow_one(r#"{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}"#);
    // The last address of the header, not the client's.
    assert!(allows(
        &t,
        80,
        &from("10.1.0.1:1"),
        xff("198.51.100.1, 203.0.113.9")
    ));
    assert!(!allows(
        &t,
        80,
        &from("10.1.0.1:1"),
        xff("203.0.113.9, 198.51.100.1")
    ));
    // Not an address: the client's, as Envoy falls back to the connection's.
    assert!(!allows(&t, 80, &from("10.1.0.1:1"), xff("unknown")));
    assert!(allows(&t, 80, &from("203.0.113.7:1"), xff("unknown")));
    // `ipBlocks` never reads the header.
    let t = allow_one(r#"{from: [{source: {ipBlocks: ["203.0.113.0/24"]}}]}"#);
    assert!(!allows(&t, 80, &from("10.1.0.1:1"), xff("203.0.113.9")));
    let t = allow_one(r#"{when: [{key: remote.ip, values: ["203.0.113.9"]}]}"#);
    assert!(allows(&t, 80, &from("10.1.0.1:1"), xff("203.0.113.9")));
}

#[test]
fn bad_addresses_are_refused_by_field() {
    for (rule, path) in [
        (
            r#"{from: [{source: {ipBlocks: ["10.0.0.0/8", "10.0.0.0/33"]}}]}"#,
            "from[0].source.ipBlocks[1]",
        ),
        (
            r#"{from: [{source: {principals: [a]}}, {source: {notRemoteIpBlocks: ["example.com"]}}]}"#,
            "from[1].source.notRemoteIpBlocks[0]",
        ),
        (
            r#"{when: [{key: source.ip, values: ["1.2.3.4/x"]}]}"#,
            "when[0].values[0]",
        ),
        (
            r#"{when: [{key: remote.ip, notValues: ["::1/129"]}]}"#,
            "when[0].notValues[0]",
        ),
    ] {
        let e = one_rule_err(rule);
        assert_eq!(
            e.path,
            format!("authorizationPolicies[demo/p].rules[0].{path}"),
            "{e}"
        );
    }
}

#[test]
fn destination_ip_is_the_address_the_client_called() {
    let t = allow_one(
        r#"{when: [{key: destination.ip, values: ["10.96.0.0/12", "fd00::7"], notValues: ["10.96.0.10"]}]}"#,
    );
    let to = |addr: &str| Peer {
        dest: Some(addr.parse().unwrap()),
        ..client()
    };
    for (addr, allowed) in [
        ("10.96.1.2", true),
        ("10.96.0.10", false),
        ("10.112.0.1", false),
        ("fd00::7", true),
        ("::ffff:10.100.0.1", true),
    ] {
        assert_eq!(allows(&t, 80, &to(addr), get("/")), allowed, "{addr}");
    }
    assert!(!allows(&t, 80, &client(), get("/")));
    let e = one_rule_err(r#"{when: [{key: destination.ip, values: ["10.0.0.0/33"]}]}"#);
    assert_eq!(
        e.path, "authorizationPolicies[demo/p].rules[0].when[0].values[0]",
        "{e}"
    );
}

#[test]
fn a_waypoint_has_no_sni() {
    let only = allow_one(r#"{when: [{key: connection.sni, values: ["*"]}]}"#);
    assert!(!allows(&only, 80, &client(), get("/")));
    let not = allow_one(r#"{when: [{key: connection.sni, notValues: [web.example]}]}"#);
    assert!(allows(&not, 80, &client(), get("/")));
}
