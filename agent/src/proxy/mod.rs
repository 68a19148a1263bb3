//! The node proxy: redirected connections of workloads in the mesh are routed by their
//! virtual node's outbound plan (HTTP routes, TCP routes, egress filter); others are relayed
//! to the destination the application asked for.
mod exchange;
pub mod health;
mod http;
pub mod inbound;
mod outbound;
mod relay;
pub mod upstream;

use std::net::SocketAddrV4;

pub use outbound::{MeshContext, Outbound, OutboundSettings, bind_listener};

/// A redirected connection as the redirect recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirected {
    /// Where the application connected to.
    pub destination: SocketAddrV4,
    /// The enrolled workload that connected.
    pub workload_id: u32,
}

/// Where the original destination of an accepted connection comes from: the redirect's eBPF
/// map in the agent, a fixed table in in-process tests.
pub trait OrigDstSource: Send + Sync + 'static {
    /// What the client at `peer` connected to, or `None` when `peer` was not redirected.
    fn original_destination(
        &self,
        peer: SocketAddrV4,
    ) -> Result<Option<Redirected>, aya::maps::MapError>;
}
