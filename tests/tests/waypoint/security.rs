//! L7 security at the waypoint: JWT (RequestAuthentication) and L7 AuthorizationPolicy.

use super::*;

/// A signing key and its public JWKS.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    jwks: String,
}

fn signer(kid: &str) -> Result<Signer> {
    let pair = rcgen::KeyPair::generate()?;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)?;
    jwk.common.key_id = Some(kid.to_string());
    let jwks = serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] })?;
    Ok(Signer { key, jwks })
}

impl Signer {
    fn token(&self, kid: &str, claims: serde_json::Value) -> Result<String> {
        let mut head = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        head.kid = Some(kid.to_string());
        Ok(jsonwebtoken::encode(&head, &claims, &self.key)?)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn jwt_and_l7_authorization() -> Result<()> {
    let x = 194;
    let good = signer("k1")?;
    let other = signer("k1")?;
    let dir = tempfile::tempdir()?;
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &good.jwks)?;
    let routes = format!(
        "  - name: echo
    namespace: demo
    parentRefs: [{{name: echo}}]
    rules:
      - backendRefs: [{{name: echo-v1, port: 80}}]
requestAuthentications:
  - name: jwt
    namespace: demo
    targetRefs: [{{name: echo}}]
    jwtRules:
      - issuer: https://issuer.test
        audiences: [echo]
        jwksFile: {jwks}
        outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
authorizationPolicies:
  - name: waypoint-no-trace
    namespace: demo
    targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
    action: DENY
    rules: [{{to: [{{operation: {{methods: [TRACE]}}}}]}}]
  - name: deny-admin
    namespace: demo
    targetRefs: [{{name: echo}}]
    action: DENY
    rules:
      - to: [{{operation: {{paths: [\"/admin/*\"]}}}}]
      - to: [{{operation: {{methods: [DELETE]}}}}]
      - from: [{{source: {{ipBlocks: [\"{client_ip}/32\"]}}}}]
        to: [{{operation: {{paths: [/from-client-ip]}}}}]
      - from: [{{source: {{notRemoteIpBlocks: [\"{client_ip}\"]}}}}]
        to: [{{operation: {{paths: [/not-from-client-ip]}}}}]
      - to: [{{operation: {{paths: [/client-net]}}}}]
        when: [{{key: source.ip, values: [\"{client_net}/16\"]}}]
      - to: [{{operation: {{paths: [/to-the-vip]}}}}]
        when: [{{key: destination.ip, values: [\"{vip}\"]}}]
      - to: [{{operation: {{paths: [/to-elsewhere]}}}}]
        when: [{{key: destination.ip, values: [\"10.255.0.0/16\"]}}]
      - to: [{{operation: {{paths: [/with-sni]}}}}]
        when: [{{key: connection.sni, values: [\"*\"]}}]
  - name: secure-needs-admins
    namespace: demo
    targetRefs: [{{name: echo}}]
    rules:
      - to: [{{operation: {{notPaths: [\"/secure/*\"]}}}}]
      - from: [{{source: {{requestPrincipals: [\"https://issuer.test/*\"], principals: [cluster.local/ns/demo/sa/client]}}}}]
        to: [{{operation: {{paths: [\"/secure/*\"]}}}}]
        when: [{{key: \"request.auth.claims[groups]\", values: [admins]}}]
",
        jwks = jwks.display(),
        client_ip = ip4(x, 1, 1),
        client_net = ip4(x, 1, 0),
        vip = ip4(x, 100, 1),
    );
    let m = Mesh::start(x, &routes)?;
    let mut c = m.client()?;
    let claims = |iss: &str, aud: &str, exp: u64, groups: &[&str]| serde_json::json!({"iss": iss, "aud": aud, "sub": "alice", "exp": exp, "groups": groups});
    let bearer = |t: &str| format!("Bearer {t}");
    let valid = good.token(
        "k1",
        claims("https://issuer.test", "echo", now() + 600, &["admins"]),
    )?;

    // L7 deny by path and by method, before any routing.
    let r = c.request("GET", "/public", &[], b"")?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    let r = c.request("GET", "/admin/users", &[], b"")?;
    ensure!(
        r.status == 403 && r.body.contains("RBAC: access denied"),
        "{r:?}"
    );
    let r = c.request("DELETE", "/public", &[], b"")?;
    ensure!(r.status == 403, "{r:?}");
    // By the client's address (the original source the node proxy forwarded).
    for (path, status) in [
        ("/from-client-ip", 403),
        ("/not-from-client-ip", 200),
        ("/client-net", 403),
        // By the address the client called (the Service's VIP), and never by an SNI.
        ("/to-the-vip", 403),
        ("/to-elsewhere", 200),
        ("/with-sni", 200),
    ] {
        let r = c.request("GET", path, &[], b"")?;
        ensure!(r.status == status, "{path}: {r:?}\n{}", m.context());
    }

    // A valid token from the right source with the right claim: allowed; the token is not
    // forwarded and its subject is.
    let r = c.request(
        "GET",
        "/secure/doc",
        &[("authorization", &bearer(&valid))],
        b"",
    )?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    ensure!(
        r.body.contains("x-jwt-sub: alice") && !r.body.contains("authorization"),
        "{r:?}"
    );

    // Each way a token can fail, with Envoy's status and words.
    let expired = good.token(
        "k1",
        claims("https://issuer.test", "echo", now() - 600, &["admins"]),
    )?;
    let wrong_iss = good.token(
        "k1",
        claims("https://other.test", "echo", now() + 600, &["admins"]),
    )?;
    let wrong_aud = good.token(
        "k1",
        claims("https://issuer.test", "other", now() + 600, &["admins"]),
    )?;
    let bad_sig = other.token(
        "k1",
        claims("https://issuer.test", "echo", now() + 600, &["admins"]),
    )?;
    let users = good.token(
        "k1",
        claims("https://issuer.test", "echo", now() + 600, &["users"]),
    )?;
    let cases = [
        ("expired", Some(expired), 401, "Jwt is expired"),
        (
            "wrong issuer",
            Some(wrong_iss),
            401,
            "Jwt issuer is not configured",
        ),
        (
            "wrong audience",
            Some(wrong_aud),
            401,
            "Audiences in Jwt are not allowed",
        ),
        (
            "bad signature",
            Some(bad_sig),
            401,
            "Jwt verification fails",
        ),
        (
            "not a JWT",
            Some("abc.def".to_string()),
            401,
            "Jwt is not in the form",
        ),
        ("missing", None, 403, "RBAC: access denied"),
        (
            "claim not matching",
            Some(users),
            403,
            "RBAC: access denied",
        ),
    ];
    for (what, token, status, words) in cases {
        let auth = token.map(|t| bearer(&t));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = c.request("GET", "/secure/doc", &headers, b"")?;
        ensure!(
            r.status == status && r.body.contains(words),
            "{what}: {r:?}"
        );
    }
    // The waypoint's own Gateway (its workload's name, by default) denies TRACE for
    // every Service it serves.
    let r = c.request("TRACE", "/public", &[], b"")?;
    ensure!(
        r.status == 403 && r.body.contains("RBAC: access denied"),
        "{r:?}\n{}",
        m.context()
    );
    // A bad token is refused on any path, not only where a policy asks for one.
    let r = c.request(
        "GET",
        "/public",
        &[("authorization", "Bearer abc.def.ghi")],
        b"",
    )?;
    ensure!(r.status == 401, "{r:?}");

    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "ringmesh_waypoint_requests_total",
            &["response_code=\"403\"", "response_flags=\"RBAC\""]
        ) >= 4.0,
        "{metrics}"
    );
    ensure!(
        metric_sum(
            &metrics,
            "ringmesh_waypoint_requests_total",
            &["response_code=\"401\""]
        ) >= 6.0,
        "{metrics}"
    );
    Ok(())
}

/// Policies on GatewayClass `istio-waypoint` apply to every waypoint from the MeshConfig's
/// `rootNamespace` (`istio-system` without one), read from `--mesh-config` and followed
/// when the file changes, as istiod re-pushes on a new MeshConfig.
#[test]
fn class_wide_policies_follow_the_mesh_configs_root_namespace() -> Result<()> {
    let x = 166;
    let class = |ns: &str, method: &str| {
        format!(
            "  - name: no-{method}
    namespace: {ns}
    targetRefs: [{{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}}]
    action: DENY
    rules: [{{to: [{{operation: {{methods: [{method}]}}}}]}}]
"
        )
    };
    let routes = format!(
        "  - name: echo
    namespace: demo
    parentRefs: [{{name: echo}}]
    rules:
      - backendRefs: [{{name: echo-v1, port: 80}}]
authorizationPolicies:
{}{}",
        class("istio-system", "TRACE"),
        class("mesh-root", "PUT")
    );
    let dir = tempfile::tempdir()?;
    let mesh_cfg = dir.path().join("mesh.yaml");
    std::fs::write(&mesh_cfg, "defaultProviders: {metrics: [prometheus]}\n")?;
    let mesh_arg = mesh_cfg.display().to_string();
    let m = Mesh::start_config(
        x,
        &mesh_config(x, &routes),
        &["--mesh-config", &mesh_arg],
        &[],
    )?;
    let mut c = m.client()?;
    let status = |c: &mut Client, method: &str| c.request(method, "/x", &[], b"").map(|r| r.status);
    // The default root: istio-system's policy holds, mesh-root's does not.
    ensure!(status(&mut c, "TRACE")? == 403, "{}", m.context());
    ensure!(status(&mut c, "PUT")? == 200, "{}", m.context());
    // A new root: its policy holds from then on, and the old root's no longer does.
    std::fs::write(&mesh_cfg, "rootNamespace: mesh-root\n")?;
    e2e::wait_for(Duration::from_secs(10), "rootNamespace applied", || {
        status(&mut c, "PUT").is_ok_and(|s| s == 403)
    })
    .with_context(|| m.context())?;
    ensure!(status(&mut c, "TRACE")? == 200, "{}", m.context());
    ensure!(status(&mut c, "GET")? == 200, "{}", m.context());
    Ok(())
}

#[test]
fn jwks_from_a_uri_and_by_openid_discovery() -> Result<()> {
    let x = 187;
    // Keys for issuer a.test over plain HTTP; issuer `https://<ip>:<port>` finds its own
    // by OpenID discovery over HTTPS; down.test's keys never arrive.
    let web = e2e::web::WebServer::http(SocketAddr::new(ip4(x, 50, 1), 0))?;
    let tls = e2e::web::WebServer::https(SocketAddr::new(ip4(x, 50, 2), 0))?;
    let (a, b, b2) = (signer("a")?, signer("b")?, signer("b2")?);
    web.set("/keys", &a.jwks);
    tls.set(
        "/.well-known/openid-configuration",
        &serde_json::json!({ "issuer": tls.base, "jwks_uri": format!("{}/jwks", tls.base) })
            .to_string(),
    );
    tls.set("/jwks", &b.jwks);
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("web-ca.pem");
    std::fs::write(&ca, tls.ca_pem.as_deref().unwrap_or_default())?;
    let routes = format!(
        "  - name: echo
    namespace: demo
    parentRefs: [{{name: echo}}]
    rules:
      - backendRefs: [{{name: echo-v1, port: 80}}]
requestAuthentications:
  - name: jwt
    namespace: demo
    targetRefs: [{{name: echo}}]
    jwtRules:
      - {{issuer: https://a.test, jwksUri: \"{web}/keys\"}}
      - {{issuer: \"{tls}\"}}
      - {{issuer: https://down.test, jwksUri: \"http://{down}/keys\", timeout: 500ms}}
",
        web = web.base,
        tls = tls.base,
        down = SocketAddr::new(ip4(x, 50, 3), 9),
    );
    let ca = ca.to_string_lossy();
    let m = Mesh::start_env(
        x,
        &routes,
        &["--jwks-refresh", "1s"],
        &[("SSL_CERT_FILE", &ca)],
    )?;
    let mut c = m.client()?;
    let now = now();
    let token = |s: &Signer, kid: &str, iss: &str| {
        s.token(
            kid,
            serde_json::json!({ "iss": iss, "sub": "alice", "exp": now + 600 }),
        )
    };
    let auth = |t: &str| format!("Bearer {t}");
    // Each issuer's token passes once its keys are in (fetched within about a second).
    for (what, t) in [
        ("jwksUri over HTTP", token(&a, "a", "https://a.test")?),
        ("discovery over HTTPS", token(&b, "b", &tls.base)?),
    ] {
        let mut last = None;
        e2e::wait_for(Duration::from_secs(10), what, || {
            let r = c.request("GET", "/", &[("authorization", &auth(&t))], b"");
            let ok = r.as_ref().is_ok_and(|r| r.status == 200);
            last = Some(r.map(|r| (r.status, r.body)));
            ok
        })
        .with_context(|| format!("{last:?}\n{}", m.context()))?;
    }
    ensure!(tls.hits("/.well-known/openid-configuration") >= 1);
    // Keys that never arrived verify nothing.
    let r = c.request(
        "GET",
        "/",
        &[(
            "authorization",
            &auth(&token(&a, "a", "https://down.test")?),
        )],
        b"",
    )?;
    ensure!(
        r.status == 401 && r.body.contains("Jwks remote fetch is failed"),
        "{r:?}"
    );
    // Rotation: the discovered set is replaced; the new key passes on the next refresh, and
    // the old one stops passing (keys are replaced whole).
    tls.set("/jwks", &b2.jwks);
    let new = token(&b2, "b2", &tls.base)?;
    e2e::wait_for(Duration::from_secs(10), "the rotated key", || {
        c.request("GET", "/", &[("authorization", &auth(&new))], b"")
            .is_ok_and(|r| r.status == 200)
    })
    .with_context(|| m.context())?;
    let old = c.request(
        "GET",
        "/",
        &[("authorization", &auth(&token(&b, "b", &tls.base)?))],
        b"",
    )?;
    ensure!(old.status == 401, "{old:?}");
    // A server that fails a refresh leaves the keys in force.
    tls.set("/jwks", "not a jwks");
    std::thread::sleep(Duration::from_millis(2500));
    let r = c.request("GET", "/", &[("authorization", &auth(&new))], b"")?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    ensure!(
        m.wp.proc.stderr().contains("JWKS fetch failed"),
        "{}",
        m.context()
    );
    Ok(())
}
