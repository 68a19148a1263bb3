//! The kernel's share of relaying: the proxy's two sockets of one plain TCP connection are
//! joined in two sockhashes, and from then on `relay_to_peer` (an sk_skb stream verdict
//! program) queues what either socket receives straight onto the other's send side. The
//! bytes no longer wake the proxy nor pass through a pipe; the proxy only watches for each
//! side's end (see `proxy::kernel_relay`).
//!
//! The maps and the program belong to this agent alone (nothing is pinned): the sockets in
//! them are this process's, and leave the maps when they close.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    sync::{Arc, Mutex},
};

use agent_common::maps;
use aya::{
    Ebpf,
    maps::{MapData, SockHash},
    programs::SkSkb,
};

use socket2::SockRef;

use super::{RedirectError, load_err, program, take_map};

const RELAY_PROGRAM: &str = "relay_to_peer";

/// Joins socket pairs for the kernel to relay between. Cheap to clone.
#[derive(Clone)]
pub struct Sockmap {
    maps: Arc<Mutex<RelayMaps>>,
    /// Holds the program's attachment to `RELAY_SOCKETS`.
    _ebpf: Arc<Mutex<Ebpf>>,
}

impl std::fmt::Debug for Sockmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sockmap")
    }
}

struct RelayMaps {
    /// cookie of a socket -> the socket its bytes go out of.
    peers: SockHash<MapData, u64>,
    /// cookie -> the socket itself; the verdict program runs on the sockets in this map.
    sockets: SockHash<MapData, u64>,
}

impl Sockmap {
    pub(super) fn load(ebpf: Arc<Mutex<Ebpf>>) -> Result<Self, RedirectError> {
        let maps = {
            let mut guard = ebpf.lock().map_err(|_| RedirectError::Poisoned)?;
            let peers = take_map(&mut guard, maps::RELAY_PEERS)?;
            let sockets: SockHash<MapData, u64> = take_map(&mut guard, maps::RELAY_SOCKETS)?;
            let relay: &mut SkSkb = program(&mut guard, RELAY_PROGRAM)?;
            relay.load().map_err(load_err(RELAY_PROGRAM))?;
            relay
                .attach(sockets.fd())
                .map_err(|source| RedirectError::AttachToMap {
                    program: RELAY_PROGRAM,
                    map: maps::RELAY_SOCKETS,
                    source,
                })?;
            RelayMaps { peers, sockets }
        };
        Ok(Self {
            maps: Arc::new(Mutex::new(maps)),
            _ebpf: ebpf,
        })
    }

    /// From now on the kernel relays between `a` and `b`, each way, including what either has
    /// received and nobody has read yet. Both must be established TCP sockets with nothing
    /// read from them that has not been written to the other. Fails (and leaves both as they
    /// were) when the maps are full or a socket is no longer established (it has had its FIN).
    ///
    /// Each socket's peer is named before either is put where the program sees it, so no
    /// byte can find its way out missing.
    pub fn join(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<()> {
        let (cookie_a, cookie_b) = (SockRef::from(&a).cookie()?, SockRef::from(&b).cookie()?);
        let mut maps = self
            .maps
            .lock()
            .map_err(|_| io::Error::other("the relay maps' lock is poisoned"))?;
        // (in `sockets` rather than `peers`, key, socket), in this order.
        let entries = [
            (false, cookie_a, b),
            (false, cookie_b, a),
            (true, cookie_a, a),
            (true, cookie_b, b),
        ];
        for (done, &(in_sockets, key, socket)) in entries.iter().enumerate() {
            if let Err(error) = maps.map(in_sockets).insert(key, socket.as_raw_fd(), 0) {
                for &(in_sockets, key, _) in &entries[..done] {
                    let _ = maps.map(in_sockets).remove(&key);
                }
                return Err(io::Error::other(error));
            }
        }
        drop(maps);
        // What arrived before the program saw the sockets waits in their receive queues
        // until the next packet; setting the low-water mark has TCP offer it now.
        for socket in [a, b] {
            set_receive_low_water(socket, 1)?;
        }
        Ok(())
    }
}

impl RelayMaps {
    fn map(&mut self, sockets: bool) -> &mut SockHash<MapData, u64> {
        match sockets {
            true => &mut self.sockets,
            false => &mut self.peers,
        }
    }
}

fn set_receive_low_water(socket: BorrowedFd<'_>, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with an int of the size given, on a socket the caller holds.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
