//! `/config_dump` decoded as `istioctl ztunnel-config` decodes it (`e2e::istioctl`, mirrors
//! of istioctl's Go types): the values its summaries print (workloads, services and their
//! endpoints, policies, certificates) are right, the certificates' PEM, serial number and
//! validity are in the forms istioctl parses and match the certificates themselves, and a
//! dump whose types differ from Go's would be refused (so passing means something).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use e2e::istioctl::{self, Cert, ZtunnelDump};
use e2e::{MeshDir, Node, ip4, rfc3339_unix};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const X: u8 = 239;

fn config() -> String {
    format!(
        r#"workloads:
  - uid: Kubernetes//Pod/shop/sleep-7d8f9c-xyz12
    name: sleep-7d8f9c-xyz12
    namespace: shop
    serviceAccount: sleep
    workloadIps: ["{sleep}"]
    node: node-1
    protocol: HBONE
    workloadName: sleep
    canonicalName: sleeper
    canonicalRevision: v2
    clusterId: east
    locality: {{region: us-east1, zone: us-east1-b, subzone: rack-1}}
  - name: cron-1
    namespace: shop
    serviceAccount: cron
    workloadIps: ["{cron}"]
    node: node-1
    protocol: HBONE
  - uid: Kubernetes//Pod/store/httpbin-a
    name: httpbin-a
    namespace: store
    serviceAccount: httpbin
    workloadIps: ["{a}"]
    node: node-2
    protocol: HBONE
    services: ["store/httpbin.store.svc.cluster.local"]
  - uid: Kubernetes//Pod/store/httpbin-b
    name: httpbin-b
    namespace: store
    serviceAccount: httpbin
    workloadIps: ["{b}"]
    node: node-2
    protocol: TCP
    status: Unhealthy
    services: ["store/httpbin.store.svc.cluster.local"]
services:
  - name: httpbin
    namespace: store
    hostname: httpbin.store.svc.cluster.local
    vips: ["{vip1}", "net1/{vip2}"]
    ports: {{8000: 8080, 9000: 9090}}
policies:
  - name: no-cron
    action: Deny
    destination: {{workloads: ["Kubernetes//Pod/store/httpbin-a"]}}
    from:
      - principals: ["cluster.local/ns/shop/sa/cron"]
    ports: [8080]
"#,
        sleep = ip4(X, 1, 1),
        cron = ip4(X, 1, 2),
        a = ip4(X, 2, 1),
        b = ip4(X, 2, 2),
        vip1 = ip4(X, 100, 1),
        vip2 = ip4(X, 100, 2),
    )
}

/// `s` as big-endian bytes with no leading zero, if it is a base-10 number as Go's
/// `big.Int.SetString(s, 10)` reads it (digits only here: ztunnel writes no sign).
fn decimal_to_bytes(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut out: Vec<u8> = Vec::new(); // little-endian while building
    for d in s.bytes().map(|b| u32::from(b - b'0')) {
        let mut carry = d;
        for byte in out.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            out.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    out.reverse();
    Some(out)
}

/// The DER inside a dump entry's `pem`: base64 (standard alphabet) of one PEM block.
fn der_of(cert: &Cert) -> Result<Vec<u8>> {
    let text = base64::engine::general_purpose::STANDARD
        .decode(&cert.pem)
        .context("pem is not standard base64")?;
    ensure!(
        text.starts_with(b"-----BEGIN CERTIFICATE-----\n")
            && text.ends_with(b"-----END CERTIFICATE-----\n"),
        "pem does not decode to one PEM certificate: {}",
        String::from_utf8_lossy(&text)
    );
    let (rest, pem) = x509_parser::pem::parse_x509_pem(&text)
        .map_err(|e| anyhow::anyhow!("PEM block does not parse: {e}"))?;
    ensure!(
        pem.label == "CERTIFICATE" && rest.is_empty(),
        "PEM label {:?}, {} bytes after it",
        pem.label,
        rest.len()
    );
    Ok(pem.contents)
}

/// Checks one certificate entry against the certificate it holds; returns the DER.
fn check_cert(cert: &Cert, what: &str) -> Result<Vec<u8>> {
    let der = der_of(cert).with_context(|| what.to_string())?;
    let (_, x) = X509Certificate::from_der(&der)
        .map_err(|e| anyhow::anyhow!("{what}: not a certificate: {e}"))?;
    // istioctl parses the serial as base 10 (and prints it in hex).
    let mut serial = x.raw_serial().to_vec();
    while serial.first() == Some(&0) {
        serial.remove(0);
    }
    ensure!(
        decimal_to_bytes(&cert.serial_number) == Some(serial),
        "{what}: serialNumber {:?} is not the certificate's serial {}",
        cert.serial_number,
        x.raw_serial_as_string()
    );
    // RFC 3339 to the second, in UTC, as ztunnel writes them; the certificate's own times.
    let validity = x.validity();
    for (key, text, secs) in [
        (
            "validFrom",
            &cert.valid_from,
            validity.not_before.timestamp(),
        ),
        (
            "expirationTime",
            &cert.expiration_time,
            validity.not_after.timestamp(),
        ),
    ] {
        ensure!(
            text.len() == 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
            "{what}: {key} {text:?} is not RFC 3339 seconds in UTC"
        );
        ensure!(
            rfc3339_unix(text)? == secs,
            "{what}: {key} {text:?} is not the certificate's ({secs})"
        );
    }
    Ok(der)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn config_dump_decodes_as_istioctl_reads_it() -> Result<()> {
    let mesh = MeshDir::new(&config())?;
    let n1 = Node::start(&mesh, "node-1", ip4(X, 0, 1), &[])?;
    let body = proxy::demo::http_get(n1.admin(), "/config_dump")?;
    let dump: ZtunnelDump = istioctl::prime(&body)
        .with_context(|| format!("istioctl would refuse this dump:\n{body}"))?;

    // Workloads, as `istioctl ztunnel-config workloads` lists and filters them.
    ensure!(dump.workloads.len() == 4, "{:?}", dump.workloads);
    let by_uid: HashMap<&str, &istioctl::ZtunnelWorkload> =
        dump.workloads.iter().map(|w| (w.uid.as_str(), w)).collect();
    let sleep = by_uid
        .get("Kubernetes//Pod/shop/sleep-7d8f9c-xyz12")
        .context("sleep by uid")?;
    let sleep_ip = ip4(X, 1, 1).to_string();
    ensure!(
        sleep.name == "sleep-7d8f9c-xyz12"
            && sleep.namespace == "shop"
            && sleep.workload_ips == [sleep_ip]
            && sleep.node == "node-1"
            && sleep.protocol == "HBONE"
            && sleep.status == "Healthy"
            && sleep.service_account == "sleep"
            && sleep.trust_domain == "cluster.local"
            && sleep.workload_name == "sleep"
            && sleep.workload_type == "pod"
            && sleep.canonical_name == "sleeper"
            && sleep.canonical_revision == "v2"
            && sleep.cluster_id == "east"
            && sleep.capacity == 1
            && sleep.waypoint.is_none(),
        "{sleep:?}"
    );
    ensure!(
        sleep.locality
            == istioctl::Locality {
                region: "us-east1".into(),
                zone: "us-east1-b".into(),
                subzone: "rack-1".into(),
            },
        "{:?}",
        sleep.locality
    );
    // Defaults: uid namespace/name, the workload name, istiod's revision and cluster.
    let cron = by_uid
        .get("shop/cron-1")
        .context("cron-1 by its default uid")?;
    ensure!(
        cron.workload_name == "cron-1"
            && cron.canonical_name == "cron-1"
            && cron.canonical_revision == "latest"
            && cron.cluster_id == "Kubernetes"
            && cron.locality == istioctl::Locality::default(),
        "{cron:?}"
    );
    let a = by_uid
        .get("Kubernetes//Pod/store/httpbin-a")
        .context("httpbin-a")?;
    let b = by_uid
        .get("Kubernetes//Pod/store/httpbin-b")
        .context("httpbin-b")?;
    ensure!(
        a.node == "node-2"
            && a.status == "Healthy"
            && a.authorization_policies
                .iter()
                .any(|p| p.contains("no-cron")),
        "{a:?}"
    );
    ensure!(
        b.protocol == "TCP" && b.status == "Unhealthy" && b.authorization_policies.is_empty(),
        "{b:?}"
    );

    // The service, as `istioctl ztunnel-config services` prints it: VIPs split on the first
    // `/`, ENDPOINTS = healthy/total by the workloads' status.
    ensure!(dump.services.len() == 1, "{:?}", dump.services);
    let svc = &dump.services[0];
    let ips: Vec<&str> = svc
        .addresses
        .iter()
        .map(|a| a.split_once('/').map_or("", |(_, ip)| ip))
        .collect();
    let (vip1, vip2) = (ip4(X, 100, 1).to_string(), ip4(X, 100, 2).to_string());
    ensure!(
        svc.name == "httpbin"
            && svc.namespace == "store"
            && svc.hostname == "httpbin.store.svc.cluster.local"
            && ips == [vip1.as_str(), vip2.as_str()]
            && svc.addresses[1] == format!("net1/{vip2}"),
        "{svc:?}"
    );
    ensure!(
        svc.ports == HashMap::from([("8000".to_string(), 8080), ("9000".to_string(), 9090)]),
        "{:?}",
        svc.ports
    );
    let mut healthy = 0;
    for (uid, ep) in &svc.endpoints {
        let ep = ep
            .as_ref()
            .with_context(|| format!("endpoint {uid} is null"))?;
        ensure!(ep.workload_uid == *uid, "endpoint {uid}: {ep:?}");
        ensure!(
            ep.port == HashMap::from([(8000, 8080), (9000, 9090)]),
            "endpoint {uid}: {:?}",
            ep.port
        );
        if by_uid
            .get(uid.as_str())
            .is_some_and(|w| w.status == "Healthy")
        {
            healthy += 1;
        }
    }
    ensure!(
        (healthy, svc.endpoints.len()) == (1, 2),
        "ENDPOINTS would read {healthy}/{}",
        svc.endpoints.len()
    );

    // The policy, as `istioctl ztunnel-config policies` reads it.
    ensure!(dump.policies.len() == 1, "{:?}", dump.policies);
    let p = &dump.policies[0];
    ensure!(
        p.name.contains("no-cron") && p.action == "Deny" && !p.scope.is_empty(),
        "{p:?}"
    );
    let matches: Vec<&istioctl::PolicyMatch> =
        p.rules.iter().flatten().flatten().flatten().collect();
    ensure!(
        matches.iter().any(|m| m
            .principals
            .iter()
            .any(|s| s.exact == "cluster.local/ns/shop/sa/cron"))
            && matches.iter().any(|m| m.destination_ports == [8080]),
        "{:?}",
        p.rules
    );

    // Certificates: one per local identity, the leaf first, then the mesh's root apart.
    let root_pem = std::fs::read(mesh.ca.join("root-cert.pem"))?;
    let (_, root_file) = x509_parser::pem::parse_x509_pem(&root_pem)
        .map_err(|e| anyhow::anyhow!("the CA's root-cert.pem: {e}"))?;
    let mut identities: Vec<&str> = dump
        .certificates
        .iter()
        .map(|c| c.identity.as_str())
        .collect();
    identities.sort();
    ensure!(
        identities
            == [
                "spiffe://cluster.local/ns/shop/sa/cron",
                "spiffe://cluster.local/ns/shop/sa/sleep",
            ],
        "{identities:?}"
    );
    for c in &dump.certificates {
        let what = &c.identity;
        ensure!(c.state == "Available", "{what}: state {:?}", c.state);
        ensure!(
            !c.cert_chain.is_empty() && c.root_cert.len() == 1,
            "{what}: {} in the chain, {} roots",
            c.cert_chain.len(),
            c.root_cert.len()
        );
        let leaf_der = check_cert(&c.cert_chain[0], &format!("{what} leaf"))?;
        let (_, leaf) = X509Certificate::from_der(&leaf_der)
            .map_err(|e| anyhow::anyhow!("{what}: leaf: {e}"))?;
        ensure!(!leaf.is_ca(), "{what}: the chain's first entry is a CA");
        let uris: Vec<&str> = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ensure!(uris == [what.as_str()], "{what}: leaf URI SANs {uris:?}");
        // istioctl's VALID CERT: now is within the leaf's validity.
        let (from, until) = (
            rfc3339_unix(&c.cert_chain[0].valid_from)?,
            rfc3339_unix(&c.cert_chain[0].expiration_time)?,
        );
        ensure!(
            from <= now() && now() < until,
            "{what}: valid {from}..{until}, now {}",
            now()
        );
        for (i, inter) in c.cert_chain.iter().enumerate().skip(1) {
            check_cert(inter, &format!("{what} chain[{i}]"))?;
        }
        let root_der = check_cert(&c.root_cert[0], &format!("{what} root"))?;
        ensure!(
            root_der == root_file.contents,
            "{what}: rootCerts is not the CA's root-cert.pem"
        );
        let (_, root) = X509Certificate::from_der(&root_der)
            .map_err(|e| anyhow::anyhow!("{what}: root: {e}"))?;
        ensure!(
            root.is_ca() && leaf.issuer() == root.subject(),
            "{what}: leaf issued by {}, root is {}",
            leaf.issuer(),
            root.subject()
        );
    }

    // The decoder refuses what istioctl refuses: the same dump with one field of another type.
    let value: Value = serde_json::from_str(&body)?;
    let uid = "Kubernetes//Pod/store/httpbin-a";
    type Tamper = fn(&mut Value);
    let tampered: [(&str, Tamper); 6] = [
        ("capacity as a string", |v| {
            v["workloads"][0]["capacity"] = json!("1")
        }),
        ("workloadIps as a string", |v| {
            v["workloads"][0]["workloadIps"] = json!("10.0.0.1")
        }),
        ("locality as a list", |v| {
            v["workloads"][0]["locality"] = json!([])
        }),
        ("a service port as a string", |v| {
            v["services"][0]["ports"]["8000"] = json!("8080")
        }),
        ("an endpoint port keyed by name", |v| {
            v["services"][0]["endpoints"]["Kubernetes//Pod/store/httpbin-a"]["port"] =
                json!({"http": 8080})
        }),
        ("serialNumber as a number", |v| {
            v["certificates"][0]["certChain"][0]["serialNumber"] = json!(12345)
        }),
    ];
    ensure!(
        value["services"][0]["endpoints"].get(uid).is_some(),
        "endpoint {uid} missing from {value}"
    );
    for (what, tamper) in tampered {
        let mut v = value.clone();
        tamper(&mut v);
        if istioctl::prime(&v.to_string()).is_ok() {
            bail!("a dump with {what} decoded, istioctl would refuse it");
        }
    }
    Ok(())
}
