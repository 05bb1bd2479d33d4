//! Kapal's wire contract, generated from `proto/`, and the plumbing every service shares.

pub mod proto {
    //! Generated protobuf messages and gRPC clients and servers.

    /// The public API, `kapal.v1`.
    pub mod v1 {
        tonic::include_proto!("kapal.v1");
    }

    /// The service-to-service contract, `kapal.internal.v1`.
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("kapal.internal.v1");
        }
    }

    /// Encoded descriptors of the public API, for gRPC reflection at the gateway.
    pub const PUBLIC_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kapal_public_descriptor.bin"));
    /// Encoded descriptors of every Kapal package, for reflection on internal services.
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kapal_descriptor.bin"));
}

pub mod auth;
pub mod catalog;
pub mod cidr;
pub mod clock;
pub mod config;
pub mod db;
pub mod metrics;
pub mod paging;
pub mod serve;
pub mod telemetry;
pub mod testing;
pub mod webhook;
pub mod wire;
