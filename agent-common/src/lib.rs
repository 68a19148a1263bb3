//! Types shared by the eBPF programs (agent-ebpf) and the agent's userspace.
//!
//! Every type here is `#[repr(C)]`, plain old data, and used as a key or value of one of the
//! maps named in [`maps`]. Byte orders are spelled out per field because the kernel mixes them.
#![no_std]

/// Names of the eBPF maps, as the agent looks them up in the loaded object.
pub mod maps {
    /// netns cookie (u64) -> [`crate::Enrollment`]: pods whose outbound TCP goes to the proxy.
    pub const ENROLLED_NETNS: &str = "ENROLLED_NETNS";
    /// socket cookie (u64) -> [`crate::OrigDst`]: written at connect, read by getpeername.
    pub const ORIG_DST_BY_COOKIE: &str = "ORIG_DST_BY_COOKIE";
    /// [`crate::PeerKey`] -> [`crate::OrigDst`]: what the proxy reads for an accepted socket.
    pub const ORIG_DST_BY_PEER: &str = "ORIG_DST_BY_PEER";
    /// LPM trie of IPv4 prefixes (network order) never redirected.
    pub const EXCLUDED_CIDRS: &str = "EXCLUDED_CIDRS";
    /// Destination ports (host order u16) never redirected.
    pub const EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
    /// Single-entry array holding the [`crate::RedirectConfig`].
    pub const REDIRECT_CONFIG: &str = "REDIRECT_CONFIG";
    /// Per-CPU array of u64, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Sockhash: pod IPv4 (network order u32) -> the proxy's inbound listener inside that
    /// pod's network namespace, where `inbound_lookup` hands captured connections.
    pub const INBOUND_SOCKETS: &str = "INBOUND_SOCKETS";
    /// [`crate::InboundKey`] -> 1: the pod ports whose inbound connections go to the proxy.
    pub const INBOUND_PORTS: &str = "INBOUND_PORTS";
    /// LRU per-CPU hash [`crate::PodConnectKey`] -> u64: connects of enrolled pods by
    /// destination and outcome.
    pub const POD_CONNECTS: &str = "POD_CONNECTS";
    /// Single-entry array holding the [`crate::DnsConfig`]: where captured DNS queries go.
    pub const DNS_CONFIG: &str = "DNS_CONFIG";
    /// LRU hash [`crate::PeerKey`] (the querying socket's address as the agent's DNS server
    /// sees it) -> [`crate::OrigDst`] (the resolver the pod sent the UDP query to).
    pub const DNS_QUERY_ORIGINS: &str = "DNS_QUERY_ORIGINS";
}

/// The DNS port whose queries enrolled pods send to the agent instead (UDP and TCP).
pub const DNS_PORT: u16 = 53;

/// Capacity of the maps that hold one entry per live redirected connection.
pub const MAX_TRACKED_CONNECTIONS: u32 = 65_536;
/// Capacity of the enrollment map (pods per node).
pub const MAX_ENROLLED_NETNS: u32 = 4_096;
/// Capacity of each exclusion map.
pub const MAX_EXCLUSIONS: u32 = 1_024;
/// Capacity of the per-pod connect counters (pod, destination, outcome); the least recently
/// used go first, the agent keeps their counts.
pub const MAX_POD_CONNECT_KEYS: u32 = 16_384;

/// An enrolled pod network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enrollment {
    /// Agent-assigned workload id, for counters and logs.
    pub workload_id: u32,
    /// [`Enrollment::CAPTURE_DNS`] and future per-pod switches.
    pub flags: u32,
}

impl Enrollment {
    /// The pod's DNS queries (port 53, UDP and TCP) go to the agent's DNS server.
    pub const CAPTURE_DNS: u32 = 1;
}

/// Where the agent's DNS server listens, for the capture programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Server IPv4 address, network byte order.
    pub server_ip4: u32,
    /// Server port (UDP and TCP), network byte order.
    pub server_port: u16,
    /// 1: new queries are captured; 0: not (replies to captured ones are still restored).
    pub capture: u16,
}

/// The destination an application asked for before the connect was rewritten.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv4 address, network byte order (as in `bpf_sock_addr.user_ip4`).
    pub ip4: u32,
    /// Port, network byte order.
    pub port: u16,
    pub _pad: u16,
    /// The connecting pod's [`Enrollment::workload_id`]: which workload's policy applies.
    pub workload_id: u32,
}

/// The client end of a redirected connection as the proxy sees it on accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Client IPv4 address, network byte order.
    pub ip4: u32,
    /// Client port, host byte order (as in `bpf_sock_ops.local_port`).
    pub port: u32,
}

/// A pod port whose inbound connections the proxy takes (its virtual node listens there).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InboundKey {
    /// Pod IPv4 address, network byte order (as in `bpf_sk_lookup.local_ip4`);
    /// [`InboundKey::ANY_POD`] in the entry that says some pod's port is captured, which is
    /// what IPv6 connections (with no pod IPv4 address to look up) are checked against.
    pub ip4: u32,
    /// Port, host byte order (as in `bpf_sk_lookup.local_port`).
    pub port: u32,
}

impl InboundKey {
    /// 0.0.0.0 is never a pod's address.
    pub const ANY_POD: u32 = 0;
}

/// What one enrolled pod's connect counter counts: the destination and the outcome.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodConnectKey {
    /// The pod's [`Enrollment::workload_id`].
    pub workload_id: u32,
    /// Destination IPv4, network byte order (0 for a native IPv6 destination).
    pub dst_ip4: u32,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// A [`Counter`]: `Redirected`, `Excluded`, `RecordFailed`, `Ipv6Refused`,
    /// `UdpRefused` or `UdpPassed`.
    pub result: u8,
    pub _pad: u8,
}

/// Where redirected connections go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Proxy listen IPv4 address, network byte order. 0 = redirect disabled.
    pub proxy_ip4: u32,
    /// Proxy listen port, network byte order.
    pub proxy_port: u16,
    /// [`RedirectConfig::ALLOW_IPV6`], [`RedirectConfig::REFUSE_UDP`].
    pub flags: u16,
}

impl RedirectConfig {
    /// Enrolled pods' native IPv6 TCP goes around the mesh, both ways (else: connects are
    /// refused, connections to captured ports dropped).
    pub const ALLOW_IPV6: u16 = 1;
    /// Enrolled pods' UDP (but DNS, loopback and excluded destinations) is refused (else it
    /// passes, counted).
    pub const REFUSE_UDP: u16 = 2;
}

/// Indexes into the [`maps::COUNTERS`] per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP connects from enrolled pods rewritten to the proxy.
    Redirected = 0,
    /// Connects from enrolled pods left alone because the destination is excluded.
    Excluded = 1,
    /// Connects from namespaces that are not enrolled.
    NotEnrolled = 2,
    /// Redirects whose original destination could not be recorded (map full).
    RecordFailed = 3,
    /// Inbound connections to a captured pod port dropped by `inbound_lookup` because no
    /// proxy listener is there for the pod (no agent runs): they fail instead of reaching
    /// the application around the proxy.
    InboundNoListener = 4,
    /// Native IPv6 TCP connects of enrolled pods refused (EPERM).
    Ipv6Refused = 5,
    /// UDP connects and unconnected datagrams of enrolled pods refused (EPERM).
    UdpRefused = 6,
    /// UDP connects and unconnected datagrams of enrolled pods let through, around the mesh
    /// (DNS capture, loopback and excluded destinations not counted).
    UdpPassed = 7,
    /// IPv6 connections to a captured port of an enrolled pod dropped by `inbound_lookup`.
    InboundIpv6 = 8,
    /// TCP connects straight to the proxy's redirect address refused (EPERM).
    ProxyRefused = 9,
}

impl Counter {
    pub const ALL: [Counter; 10] = [
        Counter::Redirected,
        Counter::Excluded,
        Counter::NotEnrolled,
        Counter::RecordFailed,
        Counter::InboundNoListener,
        Counter::Ipv6Refused,
        Counter::UdpRefused,
        Counter::UdpPassed,
        Counter::InboundIpv6,
        Counter::ProxyRefused,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] integers with explicit padding fields, so every bit
    // pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::Enrollment {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::InboundKey {}
    unsafe impl aya::Pod for super::PodConnectKey {}
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::DnsConfig {}
}
