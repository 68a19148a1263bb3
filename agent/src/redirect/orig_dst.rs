//! The original-destination seam: what the proxy asks of the redirect for each accepted
//! connection (where the application connected to, which workload it is), answered from the
//! eBPF map in the agent and from a fixed table in in-process tests.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Mutex, PoisonError},
};

use agent_common::{OrigDst, PeerKey};
use aya::maps::{HashMap, MapData, MapError};
use tracing::debug;

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
    /// Asked once per accepted connection: a connection's record may be taken by the asking.
    fn original_destination(&self, peer: SocketAddrV4) -> Result<Option<Redirected>, OrigDstError>;
}

/// Original destinations recorded by the eBPF programs, keyed by the client's address as the
/// agent sees it: of redirected connections (written by the sock_ops program when the
/// client's connect completes) or of captured DNS queries (written as each query leaves).
pub struct OrigDstMap {
    /// aya asks `&mut` to remove an entry; the kernel needs no lock, the lock is held for
    /// that one system call.
    map: Mutex<HashMap<MapData, PeerKey, OrigDst>>,
    taken: bool,
}

impl OrigDstMap {
    /// Records of connections, each taken (read and removed) by the one accept it is for: a
    /// client that closed before the proxy accepted leaves its record for the proxy (see the
    /// sock_ops program's `on_close`), and nothing else may use it afterwards.
    pub(super) fn connections(map: HashMap<MapData, PeerKey, OrigDst>) -> Self {
        Self {
            map: Mutex::new(map),
            taken: true,
        }
    }

    /// Records of datagrams, read and left: one socket's queries share one record, which
    /// every query rewrites and the LRU map ages out.
    pub(super) fn datagrams(map: HashMap<MapData, PeerKey, OrigDst>) -> Self {
        Self {
            map: Mutex::new(map),
            taken: false,
        }
    }
}

impl OrigDstSource for OrigDstMap {
    fn original_destination(&self, peer: SocketAddrV4) -> Result<Option<Redirected>, OrigDstError> {
        let key = PeerKey {
            ip4: u32::from_ne_bytes(peer.ip().octets()),
            port: u32::from(peer.port()),
        };
        // A poisoned lock still guards a whole map: nothing panics while holding it.
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&key, 0) {
            Ok(orig) => {
                if self.taken {
                    // Gone already: the client's abortive close removed it meanwhile. Any
                    // other failure leaves it to age out of the LRU map; a connect straight
                    // to the proxy, the one way to reuse it, is refused.
                    match map.remove(&key) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(error) => debug!(%peer, %error, "original destination record kept"),
                    }
                }
                Ok(Some(Redirected {
                    destination: SocketAddrV4::new(
                        Ipv4Addr::from(orig.ip4.to_ne_bytes()),
                        u16::from_be(orig.port),
                    ),
                    workload_id: orig.workload_id,
                }))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(OrigDstError {
                peer,
                source: Box::new(error),
            }),
        }
    }
}
