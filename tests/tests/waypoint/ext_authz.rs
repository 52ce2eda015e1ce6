//! AuthorizationPolicy `CUSTOM` through the waypoint: an external authorization service
//! (HTTP, and Envoy's own generated gRPC `Authorization` service) reached over HBONE as a
//! Service of the mesh, with the request body in the check and a watched MeshConfig.

use super::*;

/// [`mesh_config`] with Service `foo/ext-authz` on `port`, whose one endpoint (.2.9, on
/// node-2) is the external authorization server.
fn with_ext_authz(x: u8, routes: &str, port: u16) -> String {
    mesh_config(x, routes)
        .replacen(
            "workloads:\n",
            &format!(
                "workloads:\n  - {{name: ext-authz, namespace: foo, serviceAccount: ext-authz, workloadIps: [\"{}\"], node: node-2, protocol: HBONE, services: [foo/ext-authz.foo.svc.cluster.local]}}\n",
                ip4(x, 2, 9)
            ),
            1,
        )
        .replacen(
            "services:\n",
            &format!(
                "services:\n  - {{name: ext-authz, namespace: foo, hostname: ext-authz.foo.svc.cluster.local, vips: [\"{}\"], ports: {{{port}: {port}}}}}\n",
                ip4(x, 100, 9)
            ),
            1,
        )
}

/// Routes `echo` to `echo-v1`, with CUSTOM policy `demo/ext` asking `provider` about the
/// requests `operation` (an AuthorizationPolicy operation) matches.
fn custom_on_echo(provider: &str, operation: &str) -> String {
    format!(
        "  - name: echo
    namespace: demo
    parentRefs: [{{name: echo}}]
    rules:
      - backendRefs: [{{name: echo-v1, port: 80}}]
authorizationPolicies:
  - name: ext
    namespace: demo
    targetRefs: [{{name: echo}}]
    action: CUSTOM
    provider: {{name: {provider}}}
    rules: [{{to: [{{operation: {operation}}}]}}]
"
    )
}

/// [`with_ext_authz`]'s mesh, its waypoint reading MeshConfig `mesh` from a file in `dir`,
/// which it watches: the mesh and the file.
fn start_with_mesh_config(
    x: u8,
    routes: &str,
    port: u16,
    dir: &tempfile::TempDir,
    mesh: &str,
) -> Result<(Mesh, std::path::PathBuf)> {
    let mesh_cfg = dir.path().join("mesh.yaml");
    std::fs::write(&mesh_cfg, mesh)?;
    let mesh_arg = mesh_cfg.display().to_string();
    let m = Mesh::start_config(
        x,
        &with_ext_authz(x, routes, port),
        &["--mesh-config", &mesh_arg],
        &[],
    )?;
    Ok((m, mesh_cfg))
}

/// AuthorizationPolicy `CUSTOM`: the requests its rules match are checked by an external
/// authorization service (Istio's `envoyExtAuthzHttp` provider, a Service of the mesh
/// reached over HBONE), which allows them with headers for the backend and the client, or
/// denies them with its own answer; a failing service gets `statusOnError`.
#[test]
fn custom_policies_ask_an_external_authorization_service() -> Result<()> {
    let x = 252;
    let authz = e2e::ext_authz::spawn_ext_authz(SocketAddr::new(ip4(x, 2, 9), 8000))?;
    // A route on the header the provider sets: the route is chosen before its edits
    // (unless `clearRouteCache`); a DENY on it: policies see them.
    let routes = "  - name: echo
    namespace: demo
    parentRefs: [{name: echo}]
    rules:
      - matches: [{headers: [{name: x-ext-authz-check-result, value: allowed}]}]
        backendRefs: [{name: echo-v2, port: 80}]
      - backendRefs: [{name: echo-v1, port: 80}]
authorizationPolicies:
  - name: ext
    namespace: demo
    targetRefs: [{name: echo}]
    action: CUSTOM
    provider: {name: sample-ext-authz}
    rules: [{to: [{operation: {paths: [/headers*, /fail*]}}]}]
  - name: after-ext
    namespace: demo
    targetRefs: [{name: echo}]
    action: DENY
    rules:
      - to: [{operation: {paths: [/headers/deny-when-allowed]}}]
        when: [{key: \"request.headers[x-ext-authz-check-result]\", values: [allowed]}]
";
    let config = with_ext_authz(x, routes, 8000);
    let dir = tempfile::tempdir()?;
    let mesh_cfg = dir.path().join("mesh.yaml");
    let provider = |fail_open: bool, reroute: bool, service: &str| {
        format!(
            "extensionProviders:
- name: sample-ext-authz
  envoyExtAuthzHttp:
    service: {service}
    port: 8000
    pathPrefix: /check
    statusOnError: '500'
    failOpen: {fail_open}
    clearRouteCache: {reroute}
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-ext-authz-check-result]
    headersToDownstreamOnAllow: [set-cookie]
    headersToDownstreamOnDeny: [x-ext-authz-check-result]
"
        )
    };
    const SERVICE: &str = "ext-authz.foo.svc.cluster.local";
    std::fs::write(&mesh_cfg, provider(false, false, SERVICE))?;
    let mesh_arg = mesh_cfg.display().to_string();
    let m = Mesh::start_config(x, &config, &["--mesh-config", &mesh_arg], &[])?;
    let mut c = m.client()?;
    let checks = || authz.checks.lock().unwrap().len();

    // Allowed: the backend gets the provider's header and not the one it removed; the
    // client gets the provider's cookie.
    let r = c.request(
        "GET",
        "/headers?q=1",
        &[
            ("x-ext-authz", "allow"),
            ("x-remove-me", "1"),
            ("x-user", "bob"),
        ],
        b"",
    )?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    ensure!(
        r.body.starts_with("v1 ")
            && r.body.contains("x-ext-authz-check-result: allowed")
            && !r.body.contains("x-remove-me")
            && r.body.contains("x-user: bob"),
        "routed before the provider's edits, which the backend gets: {}",
        r.body
    );
    ensure!(r.header("set-cookie") == Some("authz=1"), "{r:?}");
    ensure!(r.header("x-private").is_none(), "{r:?}");
    // The check: the method, the path behind the prefix, the listed header only, no body.
    {
        let seen = authz.checks.lock().unwrap();
        ensure!(seen.len() == 1, "{seen:?}");
        let (method, path, headers) = &seen[0];
        let h = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        ensure!(method == "GET" && path == "/check/headers?q=1", "{seen:?}");
        ensure!(
            h("x-ext-authz") == Some("allow")
                && h("x-user").is_none()
                && h("content-length") == Some("0")
                && h("host").is_some(),
            "{headers:?}"
        );
    }
    // The DENY policy sees the header the provider set (CUSTOM runs first).
    let r = c.request(
        "GET",
        "/headers/deny-when-allowed",
        &[("x-ext-authz", "allow")],
        b"",
    )?;
    ensure!(
        r.status == 403 && r.body.starts_with("RBAC: access denied"),
        "{r:?}"
    );
    // The provider allowed it: its headers for the client ride on the waypoint's answer too.
    ensure!(r.header("set-cookie") == Some("authz=1"), "{r:?}");
    // Denied: the provider's status, body and listed header; the backend never sees it.
    let before = m.v1.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = c.request("GET", "/headers", &[], b"")?;
    ensure!(
        r.status == 403
            && r.body.starts_with("denied by ext_authz")
            && r.header("x-ext-authz-check-result") == Some("denied")
            && r.header("x-private").is_none(),
        "{r:?}"
    );
    ensure!(m.v1.requests.load(std::sync::atomic::Ordering::SeqCst) == before);
    // Not matched by the policy: no check.
    let n = checks();
    let r = c.request("GET", "/public", &[], b"")?;
    ensure!(r.status == 200 && checks() == n, "{r:?}");
    // The provider fails (a 5xx): `statusOnError`, no body.
    let r = c.request("GET", "/fail", &[("x-ext-authz", "allow")], b"")?;
    ensure!(r.status == 500 && r.body.is_empty(), "{r:?}");
    // Both refusals are Envoy's UAEX.
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &["response_flags=\"UAEX\""]
        ) == 2.0,
        "{metrics}"
    );
    // The MeshConfig is watched: with `clearRouteCache`, the edits route the request.
    std::fs::write(&mesh_cfg, provider(false, true, SERVICE))?;
    e2e::wait_for(Duration::from_secs(10), "clearRouteCache applied", || {
        c.request("GET", "/headers", &[("x-ext-authz", "allow")], b"")
            .is_ok_and(|r| r.status == 200 && r.body.starts_with("v2 "))
    })
    .with_context(|| m.context())?;
    // With `failOpen`, a failing provider lets requests on.
    std::fs::write(&mesh_cfg, provider(true, false, SERVICE))?;
    e2e::wait_for(Duration::from_secs(10), "failOpen applied", || {
        c.request("GET", "/fail", &[], b"")
            .is_ok_and(|r| r.status == 200 && r.body.starts_with("v1 GET /fail"))
    })
    .with_context(|| m.context())?;
    // `failOpen` is for a provider that fails, not one that is not there: a Service the
    // mesh does not know refuses, as does a provider the MeshConfig no longer has (fail
    // closed, as istiod's deny-all for a bad CUSTOM action); the rest goes on.
    for mesh in [
        provider(true, false, "nowhere.foo.svc.cluster.local"),
        "extensionProviders: []\n".to_string(),
    ] {
        std::fs::write(&mesh_cfg, &mesh)?;
        e2e::wait_for(Duration::from_secs(10), "the provider gone", || {
            c.request("GET", "/headers", &[("x-ext-authz", "allow")], b"")
                .is_ok_and(|r| r.status == 403 && r.body.starts_with("RBAC: access denied"))
        })
        .with_context(|| format!("{mesh}\n{}", m.context()))?;
    }
    ensure!(c.request("GET", "/public", &[], b"")?.status == 200);
    Ok(())
}

/// `includeRequestBodyInCheck`: the provider decides on the request body, which the
/// backend still gets whole; a body over `maxRequestBytes` is refused with 413 before the
/// provider is asked, or with `allowPartialMessage` its first bytes go, marked partial.
#[test]
fn custom_policies_check_the_request_body() -> Result<()> {
    let x = 250;
    let authz = e2e::ext_authz::spawn_ext_authz(SocketAddr::new(ip4(x, 2, 9), 8000))?;
    let routes = custom_on_echo("body-authz", "{paths: [/headers*]}");
    let provider = |partial: bool| {
        format!(
            "extensionProviders:
- name: body-authz
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: [x-ext-authz, x-envoy-auth-partial-body]
    includeRequestBodyInCheck: {{maxRequestBytes: 32, allowPartialMessage: {partial}}}
    headersToUpstreamOnAllow: [x-ext-authz-check-result, 'x-ext-authz-body*', x-ext-authz-partial]
"
        )
    };
    let dir = tempfile::tempdir()?;
    let (m, mesh_cfg) = start_with_mesh_config(x, &routes, 8000, &dir, &provider(false))?;
    let allow = [("x-ext-authz", "allow")];
    let mut c = m.client()?;
    // The whole body is in the check, and goes on to the backend.
    let r = c.request("POST", "/headers", &allow, b"hello body")?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    ensure!(
        r.body.contains("x-ext-authz-body: 10")
            && r.body.contains("x-ext-authz-body-text: hello body")
            && r.body.contains("x-ext-authz-partial: false")
            && r.body.contains("len=10"),
        "{}",
        r.body
    );
    // The provider decides on what the body says.
    let r = c.request("POST", "/headers", &allow, b"please deny-by-body")?;
    ensure!(
        r.status == 403 && r.body.starts_with("denied by ext_authz"),
        "{r:?}"
    );
    // No body, no partial-body header; a client's own never reaches the provider.
    let r = c.request(
        "GET",
        "/headers",
        &[
            ("x-ext-authz", "allow"),
            ("x-envoy-auth-partial-body", "false"),
        ],
        b"",
    )?;
    ensure!(
        r.status == 200
            && r.body.contains("x-ext-authz-body: 0")
            && r.body.contains("x-ext-authz-partial: -"),
        "{r:?}"
    );
    // Over the limit without partial messages: 413, and neither the provider nor the
    // backend is asked.
    let checks = authz.checks.lock().unwrap().len();
    let served = m.v1.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = m
        .client()?
        .request("POST", "/headers", &allow, &[b'a'; 100])?;
    ensure!(
        r.status == 413 && r.body.starts_with("Payload Too Large"),
        "{r:?}"
    );
    ensure!(
        authz.checks.lock().unwrap().len() == checks,
        "the provider was asked"
    );
    ensure!(m.v1.requests.load(std::sync::atomic::Ordering::SeqCst) == served);
    // Exactly the limit is not over it.
    let r = m
        .client()?
        .request("POST", "/headers", &allow, &[b'b'; 32])?;
    ensure!(
        r.status == 200 && r.body.contains("x-ext-authz-partial: false"),
        "{r:?}"
    );
    // With `allowPartialMessage`: the first 32 bytes go, marked partial, and a body far
    // larger than that (and than what the waypoint keeps for a retry) streams on whole.
    std::fs::write(&mesh_cfg, provider(true))?;
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    // (A client per try: a 413 may close the connection.)
    e2e::wait_for(
        Duration::from_secs(10),
        "allowPartialMessage applied",
        || {
            m.client()
                .and_then(|mut c| c.request("POST", "/headers", &allow, &[b'a'; 100]))
                .is_ok_and(|r| r.status == 200 && r.body.contains("x-ext-authz-partial: true"))
        },
    )
    .with_context(|| m.context())?;
    let r = m.client()?.request("POST", "/headers", &allow, &big)?;
    ensure!(
        r.body.contains("x-ext-authz-body: 32")
            && r.body
                .contains("x-ext-authz-body-text: abcdefghijklmnopqrstuvwxyzabcdef")
            && r.body.contains("len=300000"),
        "{}",
        r.body
    );
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &["response_code=\"413\"", "response_flags=\"-\""]
        ) >= 1.0,
        "{metrics}"
    );
    Ok(())
}

/// The same over gRPC (`envoyExtAuthzGrpc`), against Envoy's own generated `Authorization`
/// service: the check carries the request and its peers, an OK answer edits the request
/// and the response, a denial is the server's, a failed call is `statusOnError`.
#[test]
fn custom_policies_ask_a_grpc_external_authorization_service() -> Result<()> {
    let x = 253;
    let authz = e2e::ext_authz::spawn_grpc_ext_authz(SocketAddr::new(ip4(x, 2, 9), 9191))?;
    let routes = custom_on_echo("opa", "{notPaths: [/public*]}");
    let dir = tempfile::tempdir()?;
    let (m, _) = start_with_mesh_config(
        x,
        &routes,
        9191,
        &dir,
        "extensionProviders:
- name: opa
  envoyExtAuthzGrpc:
    service: ext-authz.foo.svc.cluster.local
    port: 9191
    timeout: 5s
    includeRequestBodyInCheck: {maxRequestBytes: 16, allowPartialMessage: true, packAsBytes: true}
",
    )?;
    let mut c = m.client()?;
    let r = c.request(
        "GET",
        "/headers?q=1",
        &[("x-ext-authz", "allow"), ("x-remove-me", "1")],
        b"",
    )?;
    ensure!(r.status == 200, "{r:?}\n{}", m.context());
    // The provider's query edits reach the backend.
    ensure!(
        r.body
            .starts_with("v1 GET /headers?q=1&authz=ok%20by%20grpc&next=%2Fhome\n"),
        "{}",
        r.body
    );
    ensure!(
        r.body.contains("x-ext-authz-check-result: allowed") && !r.body.contains("x-remove-me"),
        "{}",
        r.body
    );
    ensure!(r.header("x-ext-authz-checked") == Some("grpc"), "{r:?}");
    {
        let seen = authz.checks.lock().unwrap();
        ensure!(seen.len() == 1, "{seen:?}");
        let check = &seen[0];
        ensure!(
            check.method == "GET"
                && check.path == "/headers?q=1"
                && check.headers.get("x-ext-authz").map(String::as_str) == Some("allow")
                && check.headers.get(":path").map(String::as_str) == Some("/headers?q=1"),
            "{check:?}"
        );
        ensure!(
            check.source_principal == "spiffe://cluster.local/ns/demo/sa/client"
                && check.destination_address == format!("{}:80", ip4(x, 100, 1)),
            "{check:?}"
        );
    }
    // One it removes, one it sets.
    let r = c.request(
        "GET",
        "/headers?secret=s3&page=2",
        &[("x-ext-authz", "allow")],
        b"",
    )?;
    ensure!(
        r.body
            .starts_with("v1 GET /headers?page=2&authz=ok%20by%20grpc&next=%2Fhome\n"),
        "{}",
        r.body
    );
    // The body's first 16 bytes, as raw bytes, marked partial; the backend gets it all.
    let r = c.request(
        "POST",
        "/headers",
        &[("x-ext-authz", "allow")],
        b"0123456789abcdefghijklmnopqrstuvwxyz0123",
    )?;
    ensure!(r.status == 200 && r.body.contains("len=40"), "{r:?}");
    {
        let seen = authz.checks.lock().unwrap();
        let check = seen.last().expect("a check");
        ensure!(
            check.raw_body == b"0123456789abcdef"
                && check.body.is_empty()
                && check
                    .headers
                    .get("x-envoy-auth-partial-body")
                    .map(String::as_str)
                    == Some("true"),
            "{check:?}"
        );
    }
    let r = c.request("GET", "/headers", &[], b"")?;
    ensure!(
        r.status == 401
            && r.body == "denied by the gRPC ext_authz"
            && r.header("x-ext-authz-check-result") == Some("denied"),
        "{r:?}"
    );
    let r = c.request("GET", "/fail", &[("x-ext-authz", "allow")], b"")?;
    ensure!(r.status == 403 && r.body.is_empty(), "{r:?}");
    // The provider failed and said what the client gets.
    let r = c.request("GET", "/error-page", &[("x-ext-authz", "allow")], b"")?;
    ensure!(
        r.status == 503
            && r.body == "the policy engine is warming up"
            && r.header("retry-after") == Some("5"),
        "{r:?}"
    );
    let n = authz.checks.lock().unwrap().len();
    ensure!(c.request("GET", "/public", &[], b"")?.status == 200);
    ensure!(
        authz.checks.lock().unwrap().len() == n,
        "/public is not checked"
    );
    let metrics = m.wp.metrics()?;
    ensure!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &["response_flags=\"UAEX\""]
        ) == 3.0,
        "{metrics}"
    );
    Ok(())
}
