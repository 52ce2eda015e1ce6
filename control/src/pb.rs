//! Generated wire types and gRPC stubs for ringmesh's own `.proto` files (proto/).
//!
//! Owns nothing but the mapping from Istio's and Envoy's proto packages to Rust paths:
//! `workload` (istio.workload), `security` (istio.security), `discovery`
//! (envoy.service.discovery.v3) and `ca` (istio.v1.auth), `zds` (istio.workload.zds). Both clients and servers are
//! generated; the servers exist for test peers that play istiod.

#[allow(clippy::all, clippy::pedantic, rust_2018_idioms)]
mod istio {
    pub mod workload {
        tonic::include_proto!("istio.workload");
        pub mod zds {
            tonic::include_proto!("istio.workload.zds");
        }
    }
    pub mod security {
        tonic::include_proto!("istio.security");
    }
    pub mod v1 {
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

#[allow(clippy::all, clippy::pedantic, rust_2018_idioms)]
mod envoy {
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

/// `envoy.service.discovery.v3`: the aggregated discovery service (ADS).
pub use envoy::service::discovery::v3 as discovery;
/// `istio.security`: L4 authorization policies.
pub use istio::security;
/// `istio.v1.auth`: the Istio CA's `IstioCertificateService`.
pub use istio::v1::auth as ca;
/// `istio.workload`: workloads and services.
pub use istio::workload;
/// `istio.workload.zds`: istio-cni's node agent handing pods to the node proxy.
pub use istio::workload::zds;
