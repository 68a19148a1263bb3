//! Inbound capture: for each enrolled pod, the proxy listens inside the pod's network
//! namespace and an sk_lookup program attached to that namespace hands it the connections
//! that arrive for the pod's mesh listener ports (ztunnel's in-pod idea, with sk_lookup
//! instead of iptables). The connection keeps its addresses: the application's port is the
//! accepted socket's local port, and the proxy reaches the application on loopback, which the
//! program never takes.
//!
//! Each namespace's lookup link is pinned ([`Pins`]), as are the ports and listener maps, so
//! the capture outlives the agent: while no agent runs, a captured port finds no listener
//! and its connections are refused instead of reaching the application around the proxy. A
//! new agent swaps its program into the pinned link and its listener into the map.
use std::{
    collections::HashSet,
    io,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

use agent_common::{InboundKey, maps};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, SockHash},
    programs::{ProgramError, SkLookup, links::FdLink},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    RedirectError,
    netns::PodNet,
    pins::{self, PinError, Pins},
    program,
};
use crate::config::NetnsRef;

pub const INBOUND_LOOKUP: &str = "inbound_lookup";

/// A pod whose inbound connections the proxy now receives on `listener`.
pub struct InboundPod {
    pub workload_id: u32,
    pub netns: String,
    pub net: Arc<PodNet>,
    pub listener: std::net::TcpListener,
    /// Fired when the pod is unenrolled: its accept loop ends.
    pub stop: CancellationToken,
}

/// Why a pod's inbound traffic cannot be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("entering the namespace: {0}")]
    EnterNamespace(#[source] io::Error),
    #[error("listening on {addr} in the pod: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    OpenNamespace(#[source] io::Error),
    #[error("eBPF object poisoned")]
    Poisoned,
    #[error("{0}")]
    Program(#[source] RedirectError),
    #[error("attaching {program}: {source}")]
    Attach {
        program: &'static str,
        source: ProgramError,
    },
    #[error("{map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("{0}")]
    Pin(#[source] PinError),
    #[error("taking over the pinned link of {program}: {source}")]
    Takeover {
        program: &'static str,
        source: io::Error,
    },
    #[error("the inbound proxy is not running")]
    ProxyGone,
}

/// The captured-ports lock is poisoned (a thread panicked holding it): the ports can no
/// longer be kept in step with the mesh.
#[derive(Debug, thiserror::Error)]
#[error("the inbound ports lock is poisoned (a thread panicked holding it)")]
pub struct PortsPoisoned;

/// What capturing a pod set up, undone on release.
pub struct Captured {
    /// The pod's namespace, whose pinned lookup link this is.
    netns_cookie: u64,
    addresses: Vec<Ipv4Addr>,
    stop: CancellationToken,
}

/// The pod ports whose connections are captured, shared by enrollment and the mesh state.
#[derive(Clone)]
pub struct InboundPorts(Arc<Mutex<HashMap<MapData, InboundKey, u8>>>);

impl InboundPorts {
    /// Makes the captured ports exactly `desired` (pod address, port), each port also for
    /// any pod ([`InboundKey::ANY_POD`], what IPv6 connections are checked against); how many
    /// pod ports are captured now (fewer than desired if the map refused some).
    pub fn sync(&self, desired: &HashSet<(Ipv4Addr, u16)>) -> Result<usize, PortsPoisoned> {
        let mut map = self.0.lock().map_err(|_| PortsPoisoned)?;
        let want: HashSet<InboundKey> = desired
            .iter()
            .flat_map(|(ip, port)| [key(*ip, *port), key(Ipv4Addr::UNSPECIFIED, *port)])
            .collect();
        let have: HashSet<InboundKey> = map.keys().filter_map(Result::ok).collect();
        for stale in have.difference(&want) {
            let _ = map.remove(stale);
        }
        for new in want.difference(&have) {
            if let Err(error) = map.insert(new, 1, 0) {
                warn!(%error, port = new.port, "cannot capture an inbound port");
            }
        }
        Ok(map
            .keys()
            .filter(|k| k.as_ref().is_ok_and(|k| k.ip4 != InboundKey::ANY_POD))
            .count())
    }

    fn forget(&self, addresses: &[Ipv4Addr]) -> Result<(), PortsPoisoned> {
        let mut map = self.0.lock().map_err(|_| PortsPoisoned)?;
        let stale: Vec<InboundKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| addresses.contains(&Ipv4Addr::from(k.ip4.to_ne_bytes())))
            .collect();
        for key in stale {
            let _ = map.remove(&key);
        }
        Ok(())
    }
}

fn key(ip: Ipv4Addr, port: u16) -> InboundKey {
    InboundKey {
        ip4: u32::from_ne_bytes(ip.octets()),
        port: u32::from(port),
    }
}

/// What enrollment needs to capture a pod's inbound traffic.
pub struct InboundHooks {
    ebpf: Arc<Mutex<Ebpf>>,
    /// Where each namespace's lookup link is pinned.
    pins: Pins,
    sockets: SockHash<MapData, u32>,
    ports: InboundPorts,
    /// Where the proxy listens inside each pod.
    listen: SocketAddr,
    pods: mpsc::UnboundedSender<InboundPod>,
    /// Namespaces the lookup program is attached to, for the metrics.
    attached: Arc<AtomicI64>,
}

impl InboundHooks {
    pub(super) fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        pins: Pins,
        listen_port: u16,
        pods: mpsc::UnboundedSender<InboundPod>,
        attached: Arc<AtomicI64>,
    ) -> Result<(Self, InboundPorts), RedirectError> {
        let (sockets, ports) = {
            let mut guard = ebpf.lock().map_err(|_| RedirectError::Poisoned)?;
            let lookup: &mut SkLookup = program(&mut guard, INBOUND_LOOKUP)?;
            lookup.load().map_err(super::load_err(INBOUND_LOOKUP))?;
            let sockets = super::take_map(&mut guard, maps::INBOUND_SOCKETS)?;
            let ports: HashMap<MapData, InboundKey, u8> =
                super::take_map(&mut guard, maps::INBOUND_PORTS)?;
            (sockets, ports)
        };
        match pins.prune_detached_inbound_links() {
            Ok(0) => {}
            Ok(pruned) => info!(
                pruned,
                "unpinned the inbound lookups of namespaces that are gone"
            ),
            Err(error) => warn!(%error, "inbound lookup pins of namespaces that are gone stay"),
        }
        let ports = InboundPorts(Arc::new(Mutex::new(ports)));
        Ok((
            Self {
                ebpf,
                pins,
                sockets,
                ports: ports.clone(),
                listen: SocketAddr::from(([0, 0, 0, 0], listen_port)),
                pods,
                attached,
            },
            ports,
        ))
    }

    /// Listens in the pod, attaches the lookup program to its namespace (or takes over the
    /// link an earlier agent pinned) and registers the listener for the pod's addresses;
    /// the proxy gets the listener.
    pub fn capture(
        &mut self,
        ns: &NetnsRef,
        netns_cookie: u64,
        workload_id: u32,
        addresses: &[Ipv4Addr],
    ) -> Result<Captured, CaptureError> {
        let net = PodNet::enter(&ns.path).map_err(CaptureError::EnterNamespace)?;
        let listener = net
            .listener(self.listen)
            .map_err(|source| CaptureError::Listen {
                addr: self.listen,
                source,
            })?;
        let netns = super::netns::open(&ns.path).map_err(CaptureError::OpenNamespace)?;
        let pinned = self
            .pins
            .existing_inbound_link(netns_cookie)
            .map_err(CaptureError::Pin)?;
        self.attach(netns.as_fd(), netns_cookie, pinned)?;
        for ip in addresses {
            self.sockets
                .insert(u32::from_ne_bytes(ip.octets()), listener.as_raw_fd(), 0)
                .map_err(|source| CaptureError::Map {
                    map: maps::INBOUND_SOCKETS,
                    source,
                })?;
        }
        let stop = CancellationToken::new();
        let pod = InboundPod {
            workload_id,
            netns: ns.spec.clone(),
            net: Arc::new(net),
            listener,
            stop: stop.clone(),
        };
        if self.pods.send(pod).is_err() {
            return Err(CaptureError::ProxyGone);
        }
        info!(netns = %ns.spec, ?addresses, listen = %self.listen, "inbound capture ready");
        self.attached.fetch_add(1, Ordering::Relaxed);
        Ok(Captured {
            netns_cookie,
            addresses: addresses.to_vec(),
            stop,
        })
    }

    /// Swaps this agent's lookup program into the namespace's `pinned` link, or attaches it
    /// and pins the link.
    fn attach(
        &mut self,
        netns: std::os::fd::BorrowedFd<'_>,
        netns_cookie: u64,
        pinned: Option<OwnedFd>,
    ) -> Result<(), CaptureError> {
        let mut ebpf = self.ebpf.lock().map_err(|_| CaptureError::Poisoned)?;
        let lookup: &mut SkLookup =
            program(&mut ebpf, INBOUND_LOOKUP).map_err(CaptureError::Program)?;
        let attach_err = |source| CaptureError::Attach {
            program: INBOUND_LOOKUP,
            source,
        };
        if let Some(link) = pinned {
            let program = lookup.fd().map_err(attach_err)?;
            return pins::replace_program(link.as_fd(), program.as_fd()).map_err(|source| {
                CaptureError::Takeover {
                    program: INBOUND_LOOKUP,
                    source,
                }
            });
        }
        let id = lookup.attach(netns).map_err(attach_err)?;
        // An sk_lookup link is always a bpf_link: it can be pinned.
        let link = FdLink::from(lookup.take_link(id).map_err(attach_err)?);
        self.pins
            .pin_inbound_link(INBOUND_LOOKUP, netns_cookie, link)
            .map_err(CaptureError::Pin)
    }

    /// Ends the pod's capture: its ports and listener leave the maps and its lookup link is
    /// unpinned, which detaches it.
    pub fn release(&mut self, captured: Captured) {
        captured.stop.cancel();
        if let Err(error) = self.ports.forget(&captured.addresses) {
            error!(%error, "the released pod's ports stay captured");
        }
        for ip in &captured.addresses {
            let _ = self.sockets.remove(&u32::from_ne_bytes(ip.octets()));
        }
        match self.pins.unpin_inbound_link(captured.netns_cookie) {
            Ok(()) => {
                self.attached.fetch_sub(1, Ordering::Relaxed);
            }
            // The link stays attached (and counted) until the namespace goes away.
            Err(error) => warn!(%error, "detaching the inbound lookup program"),
        }
    }
}
