//! Compiles ringmesh's own `.proto` files (proto/) with protox, so no system `protoc` is
//! needed; well-known types (Any, Struct, Duration, Empty, wrappers) come with protox and map
//! to `prost-types`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/discovery.proto",
        "proto/ca.proto",
        "proto/zds.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Servers too: tests and the end-to-end suite play istiod with them.
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
