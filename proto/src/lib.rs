//! The `mpctl.v1` wire contract, generated from `proto/mpctl/v1/mpctl.proto`.
//!
//! `ProcessManager` is what clients call on the coordinator; `AgentService` is
//! the one long-lived stream each node agent keeps to the coordinator. The
//! node-local contract (preparation data, descriptors, forkserver and
//! adoption messages, pool-worker frames) is the `mpctl-node` crate beside
//! this one (`proto/node/`).

#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("mpctl.v1");

    /// Encoded `FileDescriptorSet` of the package, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mpctl_descriptor.bin"));
}
