//! The convoy.v1 protocol: generated prost messages and tonic clients and servers.
//!
//! The source of truth is `proto/convoy/v1/convoy.proto`. Code is generated at
//! build time with a vendored `protoc`, so builds are reproducible without a
//! system protoc. Convert these types to domain types at the edge; do not pass
//! them through core logic; [`convert`] holds the mappings agent and hub share.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

/// convoy.v1 messages and services.
pub mod v1 {
    tonic::include_proto!("convoy.v1");

    /// The encoded `FileDescriptorSet` for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("convoy_v1_descriptor");
}

pub use v1::*;

pub mod codec;
pub mod convert;
