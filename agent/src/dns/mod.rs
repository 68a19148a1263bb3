//! The DNS server for enrolled pods: the eBPF capture sends their queries (UDP and TCP port
//! 53) here; names of the virtual services a pod's virtual node may reach are answered with a
//! VIP from `dns.vip_cidr` (connects to it are redirected into the proxy, which routes by
//! Host and port); every other query goes to the resolver the pod asked, unchanged.
//!
//! * [`config`]: the `dns` section of the configuration file;
//! * [`names`] and [`vip`]: which names are mesh names for a pod, and their addresses;
//! * [`handler`] and [`answer`]: answering or forwarding one query;
//! * [`forward`]: the exchange with the pod's resolver, bounded; [`limits`]: what is in
//!   flight, node-wide and per pod;
//! * [`server`]: the sockets and their limits; [`metrics`]: counters and the failure log.
pub mod answer;
pub mod forward;
pub mod handler;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod server;
pub mod vip;

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

pub use crate::config::dns::DnsConfig;

impl DnsConfig {
    /// The enrollment policy this configuration gives.
    pub fn capture_policy(&self) -> crate::redirect::DnsCapturePolicy {
        crate::redirect::DnsCapturePolicy {
            enabled: self.enabled,
            opt_out: self.opt_out.clone(),
        }
    }
}
pub use metrics::DnsMetrics;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, UdpSocket};
use tracing::info;

use crate::{
    dataplane::{MeshState, workloads::Workloads},
    listen::{Acceptor, ListenError, bind_listener},
    redirect::orig_dst::OrigDstSource,
};

/// The server's sockets, bound before the eBPF programs load (a port in use fails start-up
/// before anything is captured).
pub struct DnsSockets {
    pub addr: SocketAddrV4,
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsSockets {
    pub async fn bind(addr: SocketAddrV4) -> Result<Self, ListenError> {
        let tcp = bind_listener("dns.port", addr.into())?;
        let udp = bind_udp(addr).map_err(|source| ListenError::Other {
            what: "dns.port (UDP)",
            addr: addr.into(),
            source,
        })?;
        Ok(Self { addr, udp, tcp })
    }
}

/// The UDP socket, shared with the next agent during an upgrade as the TCP listeners are
/// (SO_REUSEPORT).
fn bind_udp(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&std::net::SocketAddr::from(addr).into())?;
    UdpSocket::from_std(socket.into())
}

/// Where the capture says each query was going: UDP by the query's source (cgroup_skb
/// re-keying), TCP by the connection's client address (sock_ops re-keying).
pub struct Origins {
    pub udp: Arc<dyn OrigDstSource>,
    pub tcp: Arc<dyn OrigDstSource>,
}

/// Starts serving on `sockets` (until the runtime ends).
pub fn start(
    sockets: DnsSockets,
    config: &DnsConfig,
    origins: Origins,
    state: MeshState,
    workloads: Workloads,
    metrics: DnsMetrics,
    accept_errors: Counter,
) {
    let handler = Arc::new(handler::Handler {
        names: names::MeshNames::new(state, workloads, vip::Vips::new(config.vip_cidr)),
        forwarder: forward::Forwarder::new(
            config.forward_timeout,
            config.max_in_flight,
            config.max_in_flight_per_pod,
        ),
        metrics,
        ttl: config.ttl,
    });
    info!(addr = %SocketAddr::V4(sockets.addr), vips = %config.vip_cidr, "DNS server for enrolled pods running");
    tokio::spawn(server::serve_udp(
        sockets.udp,
        origins.udp,
        Arc::clone(&handler),
    ));
    tokio::spawn(server::serve_tcp(
        Acceptor::new(sockets.tcp, "dns", accept_errors),
        origins.tcp,
        handler,
        limits::Slots::new(
            config.max_tcp_connections,
            config.max_tcp_connections_per_pod,
        ),
    ));
}
