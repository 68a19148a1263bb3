//! The node proxy. This proxy is L4: it relays each redirected connection to the
//! destination the application asked for.
mod outbound;
mod relay;

use std::net::SocketAddrV4;

pub use outbound::{Outbound, OutboundSettings, bind_listener};

/// Where the original destination of an accepted connection comes from: the redirect's eBPF
/// map in the agent, a fixed table in in-process tests.
pub trait OrigDstSource: Send + Sync + 'static {
    /// The destination the client at `peer` connected to, or `None` when `peer` was not
    /// redirected.
    fn original_destination(
        &self,
        peer: SocketAddrV4,
    ) -> Result<Option<SocketAddrV4>, aya::maps::MapError>;
}
