//! The original-destination seam: what the proxy asks of the redirect for each accepted
//! connection (where the application connected to, which workload it is), answered from the
//! eBPF map in the agent and from a fixed table in in-process tests.
use std::net::{Ipv4Addr, SocketAddrV4};

use agent_common::{OrigDst, PeerKey};
use aya::maps::{HashMap, MapData, MapError};

/// A redirected connection as the redirect recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirected {
    /// Where the application connected to.
    pub destination: SocketAddrV4,
    /// The enrolled workload that connected.
    pub workload_id: u32,
}

/// The record of a redirected connection could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the original destination of {peer}: {source}")]
pub struct OrigDstError {
    pub peer: SocketAddrV4,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where the original destination of an accepted connection comes from.
pub trait OrigDstSource: Send + Sync + 'static {
    /// What the client at `peer` connected to, or `None` when `peer` was not redirected.
    fn original_destination(&self, peer: SocketAddrV4) -> Result<Option<Redirected>, OrigDstError>;
}

/// Original destinations of redirected connections, keyed by the client's address as the
/// proxy sees it on accept (written by the sock_ops program when the client's connect
/// completes, removed when the client socket closes).
pub struct OrigDstMap(pub(super) HashMap<MapData, PeerKey, OrigDst>);

impl OrigDstSource for OrigDstMap {
    fn original_destination(&self, peer: SocketAddrV4) -> Result<Option<Redirected>, OrigDstError> {
        let key = PeerKey {
            ip4: u32::from_ne_bytes(peer.ip().octets()),
            port: u32::from(peer.port()),
        };
        match self.0.get(&key, 0) {
            Ok(orig) => Ok(Some(Redirected {
                destination: SocketAddrV4::new(
                    Ipv4Addr::from(orig.ip4.to_ne_bytes()),
                    u16::from_be(orig.port),
                ),
                workload_id: orig.workload_id,
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(OrigDstError {
                peer,
                source: Box::new(error),
            }),
        }
    }
}
