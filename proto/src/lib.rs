//! The `coffer.v1` gRPC API: generated message types, clients and servers, and
//! the encoded file-descriptor set served through reflection.

/// The `coffer.v1` package.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("coffer.v1");
}

/// Encoded `FileDescriptorSet` of every `coffer.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptor");
