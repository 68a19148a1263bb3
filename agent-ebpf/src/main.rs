//! mesh-agent's eBPF programs: transparent redirect of enrolled pods' TCP connects into the
//! node proxy, capture of what arrives for them, and the IPv6 and UDP policies.
//!
//! * `connect4` (cgroup/connect4): an enrolled pod's connect to a non-excluded IPv4
//!   destination is rewritten to the proxy; the original destination is kept by socket cookie.
//! * `connect6` (cgroup/connect6): the same for IPv6 sockets connecting to IPv4-mapped
//!   addresses (`::ffff:a.b.c.d`, what Java and other dual-stack runtimes do for IPv4 peers).
//!   An enrolled pod's TCP connect to a native IPv6 destination cannot go through the proxy
//!   (it listens on IPv4), so it is refused (EPERM) unless the node allows IPv6
//!   (`RedirectConfig::ALLOW_IPV6`); the pod's own `::1`/`::` and excluded ports pass.
//! * UDP other than captured DNS (`connect4`/`connect6` for connected sockets,
//!   `sendmsg4`/`sendmsg6` for unconnected datagrams): passes, counted per pod, or with
//!   `RedirectConfig::REFUSE_UDP` is refused (EPERM); DNS (port 53), the pod's own host and
//!   excluded destinations always pass.
//! * `track_orig_dst` (sock_ops): once that connection is established, the original destination is
//!   re-keyed by the client's (address, port) — the peer address the proxy sees on accept,
//!   and takes the record by when it accepts — and a state callback removes the entries when
//!   the socket closes, except a record the proxy has yet to take after a graceful close.
//!   A connect straight to the proxy's address is refused: only redirected ones reach it.
//! * `getpeername4` / `getpeername6`: the application still sees its original peer.
//! * `inbound_lookup` (sk_lookup, attached to each enrolled pod's network namespace through a
//!   link pinned in bpffs, so it outlives the agent): a TCP connection arriving for one of the
//!   pod's mesh listener ports is handed to the proxy's inbound listener inside that
//!   namespace; the connection keeps its addresses, so the proxy reads the original
//!   destination from its local address. With no listener there (no agent runs) it is
//!   dropped — refused — never passed to the application. Loopback is never taken: the proxy
//!   reaches the application there. An IPv6 connection to a port the node captures is
//!   dropped too, unless the node allows IPv6: it would reach a dual-stack application
//!   around the proxy.
//! * DNS capture, for enrolled pods that have it (`Enrollment::CAPTURE_DNS`): `connect4` sends
//!   TCP and connected-UDP connects to port 53, and `sendmsg4` unconnected UDP datagrams to
//!   port 53, to the agent's DNS server instead, keeping the resolver asked by socket cookie;
//!   `recvmsg4` makes the replies come from that resolver again; `dns_query_origin`
//!   (cgroup_skb egress) re-keys the resolver by the query's source address and port, which
//!   is all the agent's server sees of a UDP query.
#![no_std]
#![no_main]

use agent_common::{
    Counter, DNS_PORT, DnsConfig, Enrollment, InboundKey, MAX_ENROLLED_NETNS, MAX_EXCLUSIONS,
    MAX_POD_CONNECT_KEYS, MAX_TRACKED_CONNECTIONS, OrigDst, PeerKey, PodConnectKey, RedirectConfig,
};
use aya_ebpf::{
    bindings::{
        BPF_SK_LOOKUP_F_NO_REUSEPORT, BPF_SK_LOOKUP_F_REPLACE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, BPF_TCP_CLOSING,
        BPF_TCP_FIN_WAIT2, BPF_TCP_LAST_ACK, bpf_sock_addr,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_skb, cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, SockHash, lpm_trie::Key,
    },
    programs::{SkBuffContext, SkLookupContext, SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// cgroup/connect4 and getpeername4 return 1 to let the call proceed.
const ALLOW: i32 = 1;
/// ...and 0 to fail it with EPERM.
const DENY: i32 = 0;

#[map]
static ENROLLED_NETNS: HashMap<u64, Enrollment> = HashMap::with_max_entries(MAX_ENROLLED_NETNS, 0);

// LRU so that entries of connections that never reached the close callback (connect failed,
// agent restarted) age out instead of filling the map.
#[map]
static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_TRACKED_CONNECTIONS, 0);

#[map]
static ORIG_DST_BY_PEER: LruHashMap<PeerKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_TRACKED_CONNECTIONS, 0);

#[map]
static EXCLUDED_CIDRS: LpmTrie<u32, u8> = LpmTrie::with_max_entries(MAX_EXCLUSIONS, 0);

#[map]
static EXCLUDED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_EXCLUSIONS, 0);

#[map]
static REDIRECT_CONFIG: Array<RedirectConfig> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static POD_CONNECTS: LruPerCpuHashMap<PodConnectKey, u64> =
    LruPerCpuHashMap::with_max_entries(MAX_POD_CONNECT_KEYS, 0);

#[map]
static INBOUND_SOCKETS: SockHash<u32> = SockHash::with_max_entries(MAX_ENROLLED_NETNS, 0);

#[map]
static INBOUND_PORTS: HashMap<InboundKey, u8> = HashMap::with_max_entries(MAX_INBOUND_PORTS, 0);

#[map]
static DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);

#[map]
static DNS_QUERY_ORIGINS: LruHashMap<PeerKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_TRACKED_CONNECTIONS, 0);

const MAX_INBOUND_PORTS: u32 = MAX_ENROLLED_NETNS * 8;
/// cgroup_skb programs return 1 to let the packet pass.
const SKB_PASS: i32 = 1;
/// ETH_P_IP as `__sk_buff.protocol` holds it (network order).
const ETH_P_IP_BE: u32 = (0x0800_u16).to_be() as u32;
const IPPROTO_UDP: u8 = 17;
/// 127.0.0.0/8, network order: the proxy's own way to the application.
const LOOPBACK_NET: u32 = u32::from_be_bytes([127, 0, 0, 0]);
const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;
const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer can race this increment.
        unsafe { *slot += 1 };
    }
}

/// Counts one connect of an enrolled pod by destination and outcome, beside the node-wide
/// counter.
#[inline(always)]
fn count_pod(counter: Counter, workload_id: u32, dst_ip4: u32, dst_port: u16) {
    count(counter);
    let key = PodConnectKey {
        workload_id,
        dst_ip4,
        dst_port: u16::from_be(dst_port),
        result: counter as u8,
        _pad: 0,
    };
    match POD_CONNECTS.get_ptr_mut(key) {
        // Per-CPU slot: no other writer can race this increment.
        Some(slot) => unsafe { *slot += 1 },
        None => {
            let _ = POD_CONNECTS.insert(key, 1, 0);
        }
    }
}

#[inline(always)]
fn redirect_config() -> Option<&'static RedirectConfig> {
    REDIRECT_CONFIG.get(0).filter(|cfg| cfg.proxy_port != 0)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let addr: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let (dst_ip4, dst_port) = (addr.user_ip4, addr.user_port as u16);
    // A captured DNS query goes to the agent's DNS server, other UDP is up to the UDP
    // policy, TCP goes to the proxy.
    if let Some(dns) = dns_target(&ctx, dst_ip4, dst_port) {
        addr.user_ip4 = dns.server_ip4;
        addr.user_port = u32::from(dns.server_port);
        return ALLOW;
    }
    if addr.type_ == SOCK_DGRAM {
        return udp_verdict(&ctx, dst_ip4, dst_port, is_own_host(dst_ip4));
    }
    if is_proxy(dst_ip4, dst_port) {
        count(Counter::ProxyRefused);
        return DENY;
    }
    if let Some(proxy) = redirect_target(&ctx, dst_ip4, dst_port) {
        addr.user_ip4 = proxy.proxy_ip4;
        addr.user_port = u32::from(proxy.proxy_port);
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let addr: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let (dst_ip4, dst_port) = (addr.user_ip4, addr.user_port as u16);
    if let Some(dns) = dns_target(&ctx, dst_ip4, dst_port) {
        addr.user_ip4 = dns.server_ip4;
        addr.user_port = u32::from(dns.server_port);
        return ALLOW;
    }
    udp_verdict(&ctx, dst_ip4, dst_port, is_own_host(dst_ip4))
}

/// Unconnected UDP datagrams of IPv6 sockets (native or to IPv4-mapped addresses): the UDP
/// policy.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let addr: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let ip6 = addr.user_ip6;
    let port = addr.user_port as u16;
    match is_v4_mapped(ip6) {
        true => udp_verdict(&ctx, ip6[3], port, is_own_host(ip6[3])),
        false => udp_verdict(&ctx, 0, port, is_own_host6(ip6)),
    }
}

/// The UDP policy, for an enrolled pod's UDP that DNS capture did not take: to `dst_ip4`
/// (network order; 0 for a native IPv6 destination) and `dst_port` (network order). The
/// pod's own host (`local`), DNS and excluded destinations always pass, uncounted; the rest
/// passes counted, or with [`RedirectConfig::REFUSE_UDP`] is refused (EPERM).
#[inline(always)]
fn udp_verdict(ctx: &SockAddrContext, dst_ip4: u32, dst_port: u16, local: bool) -> i32 {
    if local || dst_port == DNS_PORT.to_be() {
        return ALLOW;
    }
    let Some(cfg) = redirect_config() else {
        return ALLOW;
    };
    let Some(enrollment) = enrollment_of(ctx) else {
        return ALLOW;
    };
    if is_excluded(dst_ip4, dst_port) {
        return ALLOW;
    }
    let refuse = cfg.flags & RedirectConfig::REFUSE_UDP != 0;
    let (counter, verdict) = match refuse {
        true => (Counter::UdpRefused, DENY),
        false => (Counter::UdpPassed, ALLOW),
    };
    count_pod(counter, enrollment.workload_id, dst_ip4, dst_port);
    verdict
}

/// Whether the redirect is on and IPv6 is not allowed around it.
#[inline(always)]
fn refuses_ipv6() -> bool {
    redirect_config().is_some_and(|cfg| cfg.flags & RedirectConfig::ALLOW_IPV6 == 0)
}

/// Whether a destination is excluded from the redirect (its port, or its IPv4 address when it
/// has one: `dst_ip4` 0 stands for a native IPv6 destination). Both in network order.
#[inline(always)]
fn is_excluded(dst_ip4: u32, dst_port: u16) -> bool {
    unsafe { EXCLUDED_PORTS.get(u16::from_be(dst_port)) }.is_some()
        || (dst_ip4 != 0 && EXCLUDED_CIDRS.get(Key::new(32, dst_ip4)).is_some())
}

#[inline(always)]
fn enrollment_of(ctx: &SockAddrContext) -> Option<&'static Enrollment> {
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    unsafe { ENROLLED_NETNS.get(netns) }
}

/// 0.0.0.0/8 ("this host") or 127.0.0.0/8 (network order): the pod's own namespace.
#[inline(always)]
fn is_own_host(ip4: u32) -> bool {
    let first = u32::from_be(ip4) >> 24;
    first == 0 || first == 127
}

/// `::` or `::1`: the pod's own namespace.
#[inline(always)]
fn is_own_host6(ip6: [u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && (ip6[3] == 0 || ip6[3] == 1_u32.to_be())
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let addr: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if is_dns_server(addr.user_ip4, addr.user_port as u16)
        && let Some(orig) = redirected_from(&ctx)
    {
        addr.user_ip4 = orig.ip4;
        addr.user_port = u32::from(orig.port);
    }
    ALLOW
}

/// Whether `ip4:port` (network order) is the agent's DNS server.
#[inline(always)]
fn is_dns_server(ip4: u32, port: u16) -> bool {
    DNS_CONFIG
        .get(0)
        .is_some_and(|dns| dns.server_port != 0 && dns.server_ip4 == ip4 && dns.server_port == port)
}

/// Whether a UDP datagram or a TCP/UDP connect to `dst_ip4:dst_port` (network order) is a DNS
/// query the agent takes; if so, records the resolver asked by socket cookie and returns
/// where the query goes instead.
#[inline(always)]
fn dns_target(ctx: &SockAddrContext, dst_ip4: u32, dst_port: u16) -> Option<&'static DnsConfig> {
    if dst_port != DNS_PORT.to_be() {
        return None;
    }
    let addr: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    if addr.type_ != SOCK_STREAM && addr.type_ != SOCK_DGRAM {
        return None;
    }
    let dns = DNS_CONFIG
        .get(0)
        .filter(|dns| dns.capture != 0 && dns.server_port != 0)?;
    let enrollment = enrollment_of(ctx)?;
    if enrollment.flags & Enrollment::CAPTURE_DNS == 0 {
        return None;
    }
    // The pod's own loopback (a local resolver such as systemd-resolved's 127.0.0.53) and
    // "this host" stay the pod's; so does whatever the node excludes from redirect.
    let this_host = u32::from_be(dst_ip4) >> 24 == 0;
    if this_host || EXCLUDED_CIDRS.get(Key::new(32, dst_ip4)).is_some() {
        return None;
    }
    // Without a record the agent would not know where to forward: leave the query alone.
    record_orig_dst(ctx, dst_ip4, dst_port, enrollment.workload_id).then_some(dns)
}

/// Records where the socket of `ctx` was going (both network order), by socket cookie;
/// false when the map refused it.
#[inline(always)]
fn record_orig_dst(ctx: &SockAddrContext, dst_ip4: u32, dst_port: u16, workload_id: u32) -> bool {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let orig = OrigDst {
        ip4: dst_ip4,
        port: dst_port,
        _pad: 0,
        workload_id,
    };
    ORIG_DST_BY_COOKIE.insert(cookie, orig, 0).is_ok()
}

/// The agent's DNS server sees a UDP query's source address and port only; the capture
/// recorded the resolver by socket cookie. A query leaving for the server carries both, so
/// here the record is re-keyed by what the server sees. Every other packet passes untouched
/// after a header read.
#[cgroup_skb(egress)]
pub fn dns_query_origin(ctx: SkBuffContext) -> i32 {
    if ctx.skb.protocol() == ETH_P_IP_BE {
        note_dns_query(&ctx);
    }
    SKB_PASS
}

#[inline(always)]
fn note_dns_query(ctx: &SkBuffContext) -> Option<()> {
    let dns = DNS_CONFIG.get(0).filter(|dns| dns.server_port != 0)?;
    // IPv4 header: byte 0 version and length, 9 protocol, 12 source, 16 destination.
    let daddr: u32 = ctx.load(16).ok()?;
    if daddr != dns.server_ip4 || ctx.load::<u8>(9).ok()? != IPPROTO_UDP {
        return None;
    }
    let header_len = usize::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4;
    let dport: u16 = ctx.load(header_len + 2).ok()?;
    if dport != dns.server_port {
        return None;
    }
    let sport: u16 = ctx.load(header_len).ok()?;
    let saddr: u32 = ctx.load(12).ok()?;
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let orig = unsafe { ORIG_DST_BY_COOKIE.get(cookie) }?;
    let peer = PeerKey {
        ip4: saddr,
        port: u32::from(u16::from_be(sport)),
    };
    DNS_QUERY_ORIGINS.insert(peer, *orig, 0).ok()
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let addr: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    let ip6 = addr.user_ip6;
    let port = addr.user_port as u16;
    if !is_v4_mapped(ip6) {
        return native_ipv6_verdict(&ctx, ip6, port);
    }
    if addr.type_ == SOCK_DGRAM {
        return udp_verdict(&ctx, ip6[3], port, is_own_host(ip6[3]));
    }
    if is_proxy(ip6[3], port) {
        count(Counter::ProxyRefused);
        return DENY;
    }
    if let Some(proxy) = redirect_target(&ctx, ip6[3], port) {
        addr.user_ip6[3] = proxy.proxy_ip4;
        addr.user_port = u32::from(proxy.proxy_port);
    }
    ALLOW
}

/// A connect to a native IPv6 destination: the proxy listens on IPv4, so an enrolled pod's
/// TCP cannot go through the mesh, and going around it is refused (EPERM) unless the node
/// allows IPv6 ([`RedirectConfig::ALLOW_IPV6`]); the pod's own host and excluded ports
/// pass. UDP follows the UDP policy.
#[inline(always)]
fn native_ipv6_verdict(ctx: &SockAddrContext, ip6: [u32; 4], port: u16) -> i32 {
    let addr: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let local = is_own_host6(ip6);
    if addr.type_ == SOCK_DGRAM {
        return udp_verdict(ctx, 0, port, local);
    }
    if addr.type_ != SOCK_STREAM || local || is_excluded(0, port) {
        return ALLOW;
    }
    if !refuses_ipv6() {
        return ALLOW;
    }
    let Some(enrollment) = enrollment_of(ctx) else {
        return ALLOW;
    };
    count_pod(Counter::Ipv6Refused, enrollment.workload_id, 0, port);
    DENY
}

/// `::ffff:a.b.c.d`, words in network order as the kernel stores them.
#[inline(always)]
fn is_v4_mapped(ip6: [u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffff_u32.to_be()
}

/// Whether a TCP connect goes straight to the proxy's redirect address. Such a connect is
/// refused, from any pod under the attach point, enrolled or not: only a redirected connect
/// may reach the proxy, each with the record of where it was going. (A connect that came
/// from a source port whose record outlived its connection, see `on_close`, would
/// otherwise be forwarded as that connection.)
#[inline(always)]
fn is_proxy(dst_ip4: u32, dst_port: u16) -> bool {
    redirect_config().is_some_and(|cfg| dst_ip4 == cfg.proxy_ip4 && dst_port == cfg.proxy_port)
}

/// Decides whether a TCP connect to `dst_ip4:dst_port` (both network order) is redirected;
/// if so, records the original destination and returns where to send it instead.
#[inline(always)]
fn redirect_target(
    ctx: &SockAddrContext,
    dst_ip4: u32,
    dst_port: u16,
) -> Option<&'static RedirectConfig> {
    let addr: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    if addr.type_ != SOCK_STREAM {
        return None;
    }
    let cfg = redirect_config()?;
    let Some(enrollment) = enrollment_of(ctx) else {
        count(Counter::NotEnrolled);
        return None;
    };
    // No socket mark exempts a connect: the agent's own sockets live in its namespace, which
    // is never enrolled, and in an enrolled one a mark proves nothing (a pod with NET_ADMIN
    // sets any mark it likes).
    // 0.0.0.0/8 means "this host" (RFC 1122 3.2.1.3): to the pod, its own namespace. Through
    // the proxy it would mean the node — its loopback, the agent's admin endpoint — so it is
    // always left alone, whatever the exclusion maps say.
    let this_host = u32::from_be(dst_ip4) >> 24 == 0;
    if this_host || is_excluded(dst_ip4, dst_port) {
        count_pod(Counter::Excluded, enrollment.workload_id, dst_ip4, dst_port);
        return None;
    }
    if !record_orig_dst(ctx, dst_ip4, dst_port, enrollment.workload_id) {
        // Without a record the proxy could not forward: leave this connect alone.
        count_pod(
            Counter::RecordFailed,
            enrollment.workload_id,
            dst_ip4,
            dst_port,
        );
        warn!(
            ctx,
            "mesh-agent: cannot record original destination, not redirecting"
        );
        return None;
    }
    count_pod(
        Counter::Redirected,
        enrollment.workload_id,
        dst_ip4,
        dst_port,
    );
    Some(cfg)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let addr: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    // A UDP socket's record outlives its DNS query (UDP has no close callback): it only
    // speaks for the socket while the socket's peer is the DNS server.
    let stale = addr.type_ == SOCK_DGRAM && !is_dns_server(addr.user_ip4, addr.user_port as u16);
    if !stale && let Some(orig) = redirected_from(&ctx) {
        let addr: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
        addr.user_ip4 = orig.ip4;
        addr.user_port = u32::from(orig.port);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    // Only sockets connect6 redirected have a record, and it redirects v4-mapped peers only.
    if let Some(orig) = redirected_from(&ctx) {
        let addr: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
        addr.user_ip6[3] = orig.ip4;
        addr.user_port = u32::from(orig.port);
    }
    ALLOW
}

#[inline(always)]
fn redirected_from(ctx: &SockAddrContext) -> Option<OrigDst> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    unsafe { ORIG_DST_BY_COOKIE.get(cookie) }.copied()
}

#[sock_ops]
pub fn track_orig_dst(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    1
}

/// The client's address as the proxy sees it on accept. `local_ip4` reads the socket's IPv4
/// receive address, which v4-mapped IPv6 sockets (connect6 redirects) carry as well.
#[inline(always)]
fn peer_key(ctx: &SockOpsContext) -> PeerKey {
    PeerKey {
        ip4: ctx.local_ip4(),
        port: ctx.local_port(),
    }
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(orig) = (unsafe { ORIG_DST_BY_COOKIE.get(cookie) }) else {
        return;
    };
    let orig = *orig;
    if ORIG_DST_BY_PEER.insert(peer_key(ctx), orig, 0).is_ok() {
        // Ask for state callbacks so both records go when this socket closes.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// The proxy takes a connection's record when it accepts it, so a record still here at close
/// belongs to a connection the proxy has not accepted yet. After a graceful close (the
/// proxy's side acknowledged the FIN: the connection, with what the client sent, waits in
/// the proxy's accept queue) the record stays for the proxy to take; a client that sends a
/// request and closes at once (HTTP/1.0, a load generator at its end) is still forwarded.
/// After an abortive close (a reset, a connect that never completed) there is nothing left
/// to forward and the record goes. The source port cannot be bound again before this
/// callback has run, so it never removes a later connection's record.
#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let _ = ORIG_DST_BY_COOKIE.remove(cookie);
    let graceful = matches!(
        ctx.arg(0),
        BPF_TCP_FIN_WAIT2 | BPF_TCP_LAST_ACK | BPF_TCP_CLOSING
    );
    if !graceful {
        let _ = ORIG_DST_BY_PEER.remove(peer_key(ctx));
    }
}

#[sk_lookup]
pub fn inbound_lookup(ctx: SkLookupContext) -> u32 {
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    if lookup.family == AF_INET6 {
        return inbound_ipv6(lookup.local_ip6, lookup.local_port);
    }
    if lookup.family != AF_INET {
        return SK_PASS;
    }
    let local_ip4 = lookup.local_ip4;
    if u32::from_be(local_ip4) & 0xff00_0000 == LOOPBACK_NET {
        return SK_PASS;
    }
    let key = InboundKey {
        ip4: local_ip4,
        port: lookup.local_port,
    };
    if unsafe { INBOUND_PORTS.get(key) }.is_none() {
        return SK_PASS;
    }
    // The agent's own socket, not its SO_REUSEPORT group (which the next agent's listener
    // joins); and over what an earlier program chose (one of an older agent that did not
    // share its links).
    let assigned = INBOUND_SOCKETS.redirect_sk_lookup(
        &ctx,
        local_ip4,
        u64::from(BPF_SK_LOOKUP_F_NO_REUSEPORT | BPF_SK_LOOKUP_F_REPLACE),
    );
    if assigned.is_err() {
        // The port is captured but no proxy listener is there: no agent runs (the kernel
        // removed the listener from the map as the agent's process ended). The connection
        // is refused rather than delivered to the application around the proxy.
        count(Counter::InboundNoListener);
        return SK_DROP;
    }
    SK_PASS
}

/// An IPv6 connection arriving at an enrolled pod (IPv4 ones to an IPv6 socket are looked
/// up as IPv4): the proxy's inbound listener is IPv4, so on a port the mesh captures it would
/// reach the application around the proxy's TLS and policy — a dual-stack application would
/// take it. Dropped, unless the node allows IPv6. Which pod it is for is not known here (no
/// IPv4 address to look up), so any port the node captures for some pod counts
/// ([`InboundKey::ANY_POD`]). The pod's loopback passes.
#[inline(always)]
fn inbound_ipv6(local_ip6: [u32; 4], local_port: u32) -> u32 {
    if is_own_host6(local_ip6) {
        return SK_PASS;
    }
    let key = InboundKey {
        ip4: InboundKey::ANY_POD,
        port: local_port,
    };
    if !refuses_ipv6() || unsafe { INBOUND_PORTS.get(key) }.is_none() {
        return SK_PASS;
    }
    count(Counter::InboundIpv6);
    SK_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
