//! The `mpctl.v1` wire contract, generated from `proto/mpctl/v1/mpctl.proto`.
//!
//! `ProcessManager` is what clients call on the coordinator; `AgentService` is
//! the one long-lived stream each node agent keeps to the coordinator.
//! [`bootstrap`] is the node-local contract between an agent and the
//! function-target processes it starts; [`worker_frame`] frames the messages
//! between a pool worker and its agent.

#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic)]

pub mod bootstrap;
pub mod worker_frame;

pub mod v1 {
    tonic::include_proto!("mpctl.v1");

    /// Encoded `FileDescriptorSet` of the package, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mpctl_descriptor.bin"));
}
