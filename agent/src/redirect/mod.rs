//! The transparent redirect: loading the eBPF programs, attaching them to the node's cgroup,
//! and the maps through which the agent steers them (enrollment, exclusions) and reads them
//! (original destinations, counters).
//!
//! The cgroup programs' links, each enrolled pod's inbound lookup link and the shared maps are
//! pinned in bpffs ([`pins`]): they stay attached after the agent exits (SIGTERM or SIGKILL
//! alike), so pods never connect around the proxy, nor are reached around it; while no agent
//! listens, their connects and the connections to their captured ports are refused. A starting agent takes
//! over what it finds pinned; only `mesh-agent uninstall` ([`pins::Pins::remove`]) detaches.
pub mod cgroup;
mod enrollment;
mod exclusions;
pub mod inbound;
pub mod metrics;
pub mod namespaces;
pub mod netns;
pub mod orig_dst;
pub mod pins;
pub mod pod_netns;
pub mod pods;
pub mod preflight;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

use agent_common::{Counter, DnsConfig, PodConnectKey, RedirectConfig, maps};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, SockOps,
        links::FdLink,
    },
};
use ipnet::Ipv4Net;

use crate::config::{Ipv6Policy, UdpPolicy};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

pub use enrollment::{DnsCapturePolicy, Enrollments};
pub use exclusions::ExclusionError;
pub use inbound::{CaptureError, InboundHooks, InboundPod, InboundPorts, PortsPoisoned};
use orig_dst::OrigDstMap;
use pins::{PinError, Pins};

/// The eBPF object built from agent-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// The programs, in attach order: the connect (and sendmsg) programs go last so nothing is
/// redirected before the programs that track and hide the redirect are in place.
const SOCKOPS: &str = "track_orig_dst";
/// Re-keys captured UDP DNS queries by their source address (cgroup_skb egress).
const DNS_QUERY_ORIGIN: &str = "dns_query_origin";
const SOCK_ADDR_PROGRAMS: [&str; 7] = [
    "getpeername4",
    "getpeername6",
    "recvmsg4",
    "sendmsg4",
    "sendmsg6",
    "connect4",
    "connect6",
];

/// Every program attached to the node's cgroup (each through its pinned link).
fn cgroup_programs() -> impl Iterator<Item = &'static str> {
    [SOCKOPS, DNS_QUERY_ORIGIN]
        .into_iter()
        .chain(SOCK_ADDR_PROGRAMS)
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("cannot load the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("pinning the redirect: {0}")]
    Pin(#[from] PinError),
    #[error("cannot take over the pinned link of {program}: {source}")]
    Takeover {
        program: &'static str,
        source: std::io::Error,
    },
    #[error(
        "eBPF program {0} was attached without a bpf_link (Linux 5.7+ has them): it cannot be \
         pinned, and would detach when the agent exits"
    )]
    Unpinnable(&'static str),
    #[error("eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error(
        "the kernel refused eBPF program {program}: {source}; mesh-agent needs Linux 5.7+ with \
         cgroup sock_addr (connect4/getpeername4) and sock_ops programs"
    )]
    Load {
        program: &'static str,
        source: ProgramError,
    },
    #[error("cannot attach eBPF program {program} to cgroup {cgroup}: {source}")]
    Attach {
        program: &'static str,
        cgroup: String,
        source: ProgramError,
    },
    #[error("cannot open cgroup {cgroup}: {source}")]
    OpenCgroup {
        cgroup: String,
        source: std::io::Error,
    },
    #[error("eBPF map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("the eBPF object's lock is poisoned (a thread panicked holding it)")]
    Poisoned,
    #[error("eBPF map {map} holds a key that is not an IPv4 prefix (prefix length {prefix_len})")]
    BadPrefix { map: &'static str, prefix_len: u32 },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> RedirectError {
    move |source| RedirectError::Map { map, source }
}

/// The loaded and attached programs and the maps the agent uses.
pub struct Redirector {
    /// Owns the programs and their links; dropping the last handle detaches them (enrollment
    /// holds one to attach the inbound lookup program to pod namespaces).
    ebpf: Arc<Mutex<Ebpf>>,
    config: Array<MapData, RedirectConfig>,
    excluded_cidrs: LpmTrie<MapData, u32, u8>,
    excluded_ports: HashMap<MapData, u16, u8>,
    orig_dst: Arc<OrigDstMap>,
    dns_config: Array<MapData, DnsConfig>,
    /// The resolver each captured UDP DNS query was sent to, by the query's source.
    dns_origins: Arc<OrigDstMap>,
    counters: Arc<RedirectCounters>,
    enrolled: Option<HashMap<MapData, u64, agent_common::Enrollment>>,
    /// Where redirected connections go: the proxy's listener.
    proxy: SocketAddrV4,
    /// [`RedirectConfig`]'s policy flags (IPv6, UDP).
    policy: u16,
    /// Whether [`Redirector::start`] turned the redirect on.
    started: bool,
}

impl Redirector {
    /// Loads the programs and attaches them to `cgroup` through links pinned in `pins`, or,
    /// where an earlier agent pinned links, swaps the new programs into them; the pinned maps
    /// are reused. Redirecting starts (or goes on, to this agent) with [`Redirector::start`],
    /// once the proxy is listening.
    pub fn load(cgroup: &Path, proxy: SocketAddrV4, pins: &Pins) -> Result<Self, RedirectError> {
        let mut loader = EbpfLoader::new();
        pins.prepare(&mut loader)?;
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        start_ebpf_logger(&mut ebpf);
        let mut redirector = Self {
            config: take_map(&mut ebpf, maps::REDIRECT_CONFIG)?,
            excluded_cidrs: take_map(&mut ebpf, maps::EXCLUDED_CIDRS)?,
            excluded_ports: take_map(&mut ebpf, maps::EXCLUDED_PORTS)?,
            orig_dst: Arc::new(OrigDstMap::connections(take_map(
                &mut ebpf,
                maps::ORIG_DST_BY_PEER,
            )?)),
            dns_config: take_map(&mut ebpf, maps::DNS_CONFIG)?,
            dns_origins: Arc::new(OrigDstMap::datagrams(take_map(
                &mut ebpf,
                maps::DNS_QUERY_ORIGINS,
            )?)),
            counters: Arc::new(RedirectCounters {
                node: take_map(&mut ebpf, maps::COUNTERS)?,
                pods: take_map(&mut ebpf, maps::POD_CONNECTS)?,
                inbound_links: Arc::default(),
            }),
            enrolled: Some(take_map(&mut ebpf, maps::ENROLLED_NETNS)?),
            ebpf: Arc::new(Mutex::new(ebpf)),
            proxy,
            policy: 0,
            started: false,
        };
        redirector.attach(cgroup, pins)?;
        Ok(redirector)
    }

    fn attach(&mut self, cgroup: &Path, pins: &Pins) -> Result<(), RedirectError> {
        let cgroup_name = cgroup.display().to_string();
        let cgroup_dir =
            std::fs::File::open(cgroup).map_err(|source| RedirectError::OpenCgroup {
                cgroup: cgroup_name.clone(),
                source,
            })?;
        let attach_err = |program| {
            let cgroup = cgroup_name.clone();
            move |source| RedirectError::Attach {
                program,
                cgroup,
                source,
            }
        };
        // bpf_link attachments (Linux 5.7+, which aya uses) always coexist with other programs
        // on the cgroup and the kernel rejects any attach flag on them: mode must be the
        // default, flag-less one.
        let mode = CgroupAttachMode::default();
        let mut ebpf = self.ebpf.lock().map_err(|_| RedirectError::Poisoned)?;

        // Each program replaces its predecessor in the pinned link, or gets a link pinned.
        macro_rules! attach_pinned {
            ($prog:expr, $name:expr, $attach:expr) => {{
                let prog = $prog;
                prog.load().map_err(load_err($name))?;
                match pins.existing_link($name)? {
                    Some(link) => {
                        let fd = prog.fd().map_err(load_err($name))?;
                        pins::replace_program(link.as_fd(), fd.as_fd()).map_err(|source| {
                            RedirectError::Takeover {
                                program: $name,
                                source,
                            }
                        })?;
                    }
                    None => {
                        let id = $attach(&mut *prog).map_err(attach_err($name))?;
                        let link = prog.take_link(id).map_err(load_err($name))?;
                        let link =
                            FdLink::try_from(link).map_err(|_| RedirectError::Unpinnable($name))?;
                        pins.pin_link($name, link)?;
                    }
                }
            }};
        }
        let cgroup_fd = cgroup_dir.as_fd();
        attach_pinned!(
            program::<SockOps>(&mut ebpf, SOCKOPS)?,
            SOCKOPS,
            |p: &mut SockOps| p.attach(cgroup_fd, mode)
        );
        attach_pinned!(
            program::<CgroupSkb>(&mut ebpf, DNS_QUERY_ORIGIN)?,
            DNS_QUERY_ORIGIN,
            |p: &mut CgroupSkb| p.attach(cgroup_fd, CgroupSkbAttachType::Egress, mode)
        );
        for name in SOCK_ADDR_PROGRAMS {
            attach_pinned!(
                program::<CgroupSockAddr>(&mut ebpf, name)?,
                name,
                |p: &mut CgroupSockAddr| p.attach(cgroup_fd, mode)
            );
        }
        pins.prune(&cgroup_programs().collect::<Vec<_>>())?;
        info!(cgroup = %cgroup_name, pins = %pins.dir().display(), sockops = SOCKOPS, skb = DNS_QUERY_ORIGIN, programs = ?SOCK_ADDR_PROGRAMS, "eBPF programs attached");
        Ok(())
    }

    /// Turns redirection on: connects from enrolled pods now go to the proxy, and the IPv6
    /// and UDP policies apply.
    pub fn start(&mut self) -> Result<(), RedirectError> {
        self.started = true;
        self.write_config()
    }

    /// Sets what happens to enrolled pods' native IPv6 TCP and their UDP: from
    /// [`Redirector::start`] on, or at once if started (a reload).
    pub fn set_policy(&mut self, ipv6: Ipv6Policy, udp: UdpPolicy) -> Result<(), RedirectError> {
        let mut flags = 0;
        if ipv6 == Ipv6Policy::Allow {
            flags |= RedirectConfig::ALLOW_IPV6;
        }
        if udp == UdpPolicy::Refuse {
            flags |= RedirectConfig::REFUSE_UDP;
        }
        self.policy = flags;
        match self.started {
            true => self.write_config(),
            false => Ok(()),
        }
    }

    fn write_config(&mut self) -> Result<(), RedirectError> {
        let value = RedirectConfig {
            proxy_ip4: u32::from_ne_bytes(self.proxy.ip().octets()),
            proxy_port: self.proxy.port().to_be(),
            flags: self.policy,
        };
        self.config
            .set(0, value, 0)
            .map_err(map_err(maps::REDIRECT_CONFIG))
    }

    /// Sends the DNS queries of enrolled pods that have DNS capture to `server` (UDP and
    /// TCP), once the agent's DNS server listens there.
    pub fn capture_dns(&mut self, server: SocketAddrV4) -> Result<(), RedirectError> {
        let value = DnsConfig {
            server_ip4: u32::from_ne_bytes(server.ip().octets()),
            server_port: server.port().to_be(),
            capture: 1,
        };
        self.dns_config
            .set(0, value, 0)
            .map_err(map_err(maps::DNS_CONFIG))
    }

    /// Where each captured UDP DNS query was going, by its source address and port.
    pub fn dns_origins(&self) -> Arc<OrigDstMap> {
        Arc::clone(&self.dns_origins)
    }

    /// Replaces the exclusion lists (loopback is always added): either both maps hold the
    /// new lists afterwards, or, on an error, the previous ones unless the error says
    /// otherwise ([`ExclusionError::kept_previous`]).
    pub fn set_exclusions(
        &mut self,
        cidrs: &[Ipv4Net],
        ports: &[u16],
    ) -> Result<(), ExclusionError> {
        exclusions::replace(self, cidrs, ports)
    }

    /// The enrollment table, which from now on owns the enrollment map; with `inbound`, it
    /// also captures each enrolled pod's inbound connections.
    pub fn take_enrollments(&mut self, inbound: Option<InboundHooks>) -> Option<Enrollments> {
        self.enrolled
            .take()
            .map(|map| Enrollments::new(map, inbound))
    }

    /// Loads the inbound lookup program and takes its maps: captured pods' listeners go to
    /// `pods`, listening on `listen_port` inside each pod; each pod's lookup link is pinned
    /// in `pins`.
    pub fn inbound_hooks(
        &mut self,
        pins: &Pins,
        listen_port: u16,
        pods: tokio::sync::mpsc::UnboundedSender<InboundPod>,
    ) -> Result<(InboundHooks, InboundPorts), RedirectError> {
        InboundHooks::new(
            Arc::clone(&self.ebpf),
            pins.clone(),
            listen_port,
            pods,
            Arc::clone(&self.counters.inbound_links),
        )
    }

    pub fn orig_dst(&self) -> Arc<OrigDstMap> {
        Arc::clone(&self.orig_dst)
    }

    pub fn counters(&self) -> Arc<RedirectCounters> {
        Arc::clone(&self.counters)
    }
}

impl exclusions::ExclusionMaps for Redirector {
    fn capacity(&self) -> usize {
        // Both maps are declared with this many entries in agent-ebpf.
        agent_common::MAX_EXCLUSIONS as usize
    }

    fn current_cidrs(&self) -> Result<BTreeSet<Ipv4Net>, RedirectError> {
        self.excluded_cidrs
            .keys()
            .map(|key| {
                let key = key.map_err(map_err(maps::EXCLUDED_CIDRS))?;
                let prefix_len = key.prefix_len();
                let addr = Ipv4Addr::from(key.data().to_ne_bytes());
                u8::try_from(prefix_len)
                    .ok()
                    .and_then(|len| Ipv4Net::new(addr, len).ok())
                    .ok_or(RedirectError::BadPrefix {
                        map: maps::EXCLUDED_CIDRS,
                        prefix_len,
                    })
            })
            .collect()
    }

    fn current_ports(&self) -> Result<BTreeSet<u16>, RedirectError> {
        self.excluded_ports
            .keys()
            .map(|port| port.map_err(map_err(maps::EXCLUDED_PORTS)))
            .collect()
    }

    fn apply(&mut self, change: exclusions::Change) -> Result<(), RedirectError> {
        use exclusions::Change;
        // Keys are in the programs' byte orders: the prefix in network order (the octets as
        // they are), the port in host order.
        let cidr_key = |net: Ipv4Net| {
            Key::new(
                u32::from(net.prefix_len()),
                u32::from_ne_bytes(net.network().octets()),
            )
        };
        match change {
            Change::InsertCidr(net) => self.excluded_cidrs.insert(&cidr_key(net), 1, 0),
            Change::RemoveCidr(net) => self.excluded_cidrs.remove(&cidr_key(net)),
            Change::InsertPort(port) => self.excluded_ports.insert(port, 1, 0),
            Change::RemovePort(port) => self.excluded_ports.remove(&port),
        }
        .map_err(map_err(match change {
            Change::InsertCidr(_) | Change::RemoveCidr(_) => maps::EXCLUDED_CIDRS,
            Change::InsertPort(_) | Change::RemovePort(_) => maps::EXCLUDED_PORTS,
        }))
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, RedirectError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(RedirectError::MissingMap(name))?;
    M::try_from(map).map_err(map_err(name))
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, RedirectError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(RedirectError::MissingProgram(name))?;
    prog.try_into().map_err(load_err(name))
}

fn load_err(program: &'static str) -> impl FnOnce(ProgramError) -> RedirectError {
    move |source| RedirectError::Load { program, source }
}

/// Forwards aya-log records from the programs to the agent's log.
fn start_ebpf_logger(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(error) => {
            warn!(%error, "eBPF log records will not be shown");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer fd for as long as it lives, and the AsyncFd owns
    // the logger, so the registered fd stays open and the same for the AsyncFd's lifetime.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match registered {
        Ok(fd) => fd,
        Err(error) => {
            warn!(%error, "eBPF log records will not be shown");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// The programs' per-CPU counters, summed.
/// The redirect programs' counters: node-wide by outcome, and per enrolled pod by
/// destination and outcome.
pub struct RedirectCounters {
    node: PerCpuArray<MapData, u64>,
    pods: PerCpuHashMap<MapData, PodConnectKey, u64>,
    /// Pod namespaces the inbound lookup program is attached to.
    inbound_links: Arc<AtomicI64>,
}

impl RedirectCounters {
    /// Attached programs by name: the cgroup programs once each (attached, or swapped into
    /// their pinned links, at load; they stay after the agent), the inbound lookup once per
    /// captured pod.
    pub fn attached_programs(&self) -> Vec<(&'static str, i64)> {
        let mut attached: Vec<(&'static str, i64)> =
            cgroup_programs().map(|name| (name, 1)).collect();
        attached.push((
            inbound::INBOUND_LOOKUP,
            self.inbound_links.load(Ordering::Relaxed),
        ));
        attached
    }

    pub fn read(&self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .map(|counter| {
                let total = self
                    .node
                    .get(&(*counter as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*counter, total)
            })
            .collect()
    }

    /// Every per-pod counter the kernel holds now, summed over CPUs.
    pub fn read_pods(&self) -> Vec<(PodConnectKey, u64)> {
        self.pods
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect()
    }
}

impl std::fmt::Debug for RedirectCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedirectCounters")
    }
}
