//! Gateway API GRPCRoute through the waypoint: calls routed by service and method (exact
//! and regular expression) and by metadata, in istiod's precedence, with its filters; a
//! call no rule takes gets gRPC's UNIMPLEMENTED.

use super::protocols::{GrpcAnswer, grpc_call_with, grpc_client, grpc_message};
use super::*;

#[test]
fn grpc_routes_pick_backends_by_service_method_and_metadata() -> Result<()> {
    let x = 179;
    // v1 and v2 are the endpoints of echo-v1 and echo-v2; both speak gRPC.
    let _v1 = e2e::l7::spawn_grpc_backend(SocketAddr::new(ip4(x, 2, 1), 8080), "v1")?;
    let _v2 = e2e::l7::spawn_grpc_backend(SocketAddr::new(ip4(x, 2, 2), 8080), "v2")?;
    let mirror =
        e2e::l7::spawn_recording_grpc_backend(SocketAddr::new(ip4(x, 2, 3), 8080), "mirror")?;
    let rule = |name: &str| {
        format!(
            "filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-rule, value: {name}}}]}}}}]"
        )
    };
    // The rules in an order that differs from their precedence: istiod's order (an exact
    // method, a whole service, a method of any service, metadata alone) picks, not the
    // file's.
    let routes = format!(
        "  []
grpcRoutes:
  - name: echo
    namespace: demo
    parentRefs: [{{name: echo}}]
    rules:
      - matches: [{{headers: [{{name: x-canary, value: \"yes\"}}]}}]
        backendRefs: [{{name: echo-v1, port: 80}}]
        {canary}
      - matches: [{{method: {{method: Ping}}}}]
        backendRefs: [{{name: echo-v2, port: 80}}]
        {ping}
      - matches: [{{method: {{service: pkg.Echo}}}}]
        backendRefs: [{{name: echo-v1, port: 80}}]
        {service}
      - matches: [{{method: {{service: pkg.Echo, method: Say}}}}]
        backendRefs: [{{name: echo-v2, port: 80}}]
        {say}
      - matches: [{{method: {{type: RegularExpression, service: 'pkg\\.Admin(V[0-9]+)?', method: 'Get.*'}}}}]
        backendRefs: [{{name: echo-v2, port: 80}}]
        filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: mirror, port: 80}}}}}}]
",
        canary = rule("canary"),
        ping = rule("ping"),
        service = rule("service"),
        say = rule("say"),
    );
    let mesh = MeshDir::new(&mesh_config(x, &routes))?;
    let n1 = Node::start(&mesh, "node-1", ip4(x, 0, 1), &[])?;
    let _n2 = Node::start(&mesh, "node-2", ip4(x, 0, 2), &[])?;
    let wp = Waypoint::start(&mesh, "demo/waypoint", ip4(x, 3, 1))?;
    let context = || format!("waypoint log:\n{}", wp.proc.stderr());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = grpc_client(&rt, &n1, x)?;
    let call = |path: &str, headers: &[(&str, &str)]| -> Result<GrpcAnswer> {
        rt.block_on(grpc_call_with(&client, path, headers, grpc_message(b"hi")))
            .with_context(context)
    };
    let header = |a: &GrpcAnswer, name: &str| {
        a.head
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    // (path, metadata, backend, rule).
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case<'_>; 6] = [
        // Service and method beat the service alone.
        ("/pkg.Echo/Say", &[], "v2", "say"),
        ("/pkg.Echo/Other", &[], "v1", "service"),
        // A service beats a method of any service.
        ("/pkg.Echo/Ping", &[], "v1", "service"),
        ("/pkg.Health/Ping", &[], "v2", "ping"),
        // A method beats metadata (an HTTPRoute's order would put the match on `/` first).
        ("/pkg.Health/Ping", &[("x-canary", "yes")], "v2", "ping"),
        ("/pkg.Health/Check", &[("x-canary", "yes")], "v1", "canary"),
    ];
    for (path, headers, backend, rule) in cases {
        let a = call(path, headers)?;
        let want = backend;
        ensure!(
            header(&a, "x-backend") == want && header(&a, "x-rule") == rule,
            "{path} {headers:?}: backend {} rule {}, wanted {want} and {rule}",
            header(&a, "x-backend"),
            header(&a, "x-rule")
        );
        ensure!(
            a.trailers.get("grpc-status").is_some_and(|v| v == "0"),
            "{path}: {:?}",
            a.trailers
        );
    }
    // The regular expressions match whole names: `pkg.AdminV2` and `GetUser`, mirrored.
    let a = call("/pkg.AdminV2/GetUser", &[])?;
    ensure!(header(&a, "x-backend") == "v2", "{:?}", a.head);
    e2e::wait_for(Duration::from_secs(10), "the mirrored call", || {
        mirror
            .bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get("/pkg.AdminV2/GetUser")
            == Some(&(grpc_message(b"hi").len() as u64))
    })
    .with_context(context)?;
    // Neither `pkg.AdministratorX` nor a method that only contains `Get` is taken, so no
    // rule matches: gRPC's UNIMPLEMENTED (Envoy's answer to a 404), in trailers-only form.
    for path in ["/pkg.AdministratorX/GetUser", "/pkg.Admin/ForgetUser"] {
        let a = call(path, &[])?;
        let status = a
            .head
            .headers
            .get("grpc-status")
            .or(a.trailers.get("grpc-status"));
        ensure!(
            a.head.status == 200 && status.is_some_and(|v| v == "12"),
            "{path}: {:?} {:?}",
            a.head,
            a.trailers
        );
    }
    Ok(())
}
