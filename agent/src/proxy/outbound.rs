//! Outbound: connections the redirect moved into the proxy, relayed to their original
//! destination.
use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use mesh_xds::plan::{PortPlan, cluster::Discovery};

use super::{
    OrigDstSource,
    http::{self, HttpContext},
    relay::{self, RelayError, Transferred},
    upstream::{Outcome, PickError, Upstream},
};
use crate::{
    access_log::{AccessLogWriters, Entry, Loggers, ResponseFlags},
    metrics::{FailureReason, MeshMetrics, ProxyMetrics},
    state::MeshState,
    workload::Workloads,
};

#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// SO_MARK for upstream sockets, so the redirect leaves them alone.
    pub mark: Option<u32>,
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{what} {addr} is already in use by another process")]
    InUse {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("{what} {addr} is not an address of this node")]
    NotLocal {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot listen on {what} {addr}: {source}")]
    Other {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// Binds a listener, turning the common failures into errors that name the setting.
pub fn bind_listener(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        TcpListener::from_std(socket.into())
    };
    bind().map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse { what, addr },
        io::ErrorKind::AddrNotAvailable => ListenError::NotLocal { what, addr },
        _ => ListenError::Other { what, addr, source },
    })
}

pub struct Outbound {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What the proxy needs of the mesh: the data plane, who the workloads are, the per-service
/// metrics. Empty (the default): every connection is plain TCP to its destination.
#[derive(Clone, Default)]
pub struct MeshContext {
    pub state: MeshState,
    pub workloads: Workloads,
    pub metrics: MeshMetrics,
    pub access_logs: AccessLogWriters,
}

struct Shared {
    orig_dst: Arc<dyn OrigDstSource>,
    metrics: ProxyMetrics,
    mesh: MeshContext,
    settings: OutboundSettings,
    /// Fired when the drain period ends: live relays reset both sides.
    cut: CancellationToken,
}

/// How the drain went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open at the end of the drain period, reset.
    pub cut: usize,
}

impl Outbound {
    pub fn new(
        listener: TcpListener,
        orig_dst: Arc<dyn OrigDstSource>,
        metrics: ProxyMetrics,
        mesh: MeshContext,
        settings: OutboundSettings,
    ) -> Self {
        Self {
            listener,
            shared: Arc::new(Shared {
                orig_dst,
                metrics,
                mesh,
                settings,
                cut: CancellationToken::new(),
            }),
        }
    }

    /// Accepts until `stop` fires, then takes what is already queued, then waits up to
    /// `drain_timeout` for live connections before cutting them.
    pub async fn run(self, stop: CancellationToken, drain_timeout: Duration) -> DrainReport {
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => self.spawn(&tracker, accepted),
                () = stop.cancelled() => break,
            }
        }
        // Connections redirected before the redirect stopped may still sit in the accept
        // queue; a zero timeout polls accept once before giving up.
        while let Ok(accepted) = tokio::time::timeout(Duration::ZERO, self.listener.accept()).await
        {
            self.spawn(&tracker, accepted);
        }
        drop(self.listener);
        tracker.close();
        info!(
            live = tracker.len(),
            ?drain_timeout,
            "outbound proxy draining"
        );
        if tokio::time::timeout(drain_timeout, tracker.wait())
            .await
            .is_ok()
        {
            return DrainReport { cut: 0 };
        }
        let cut = tracker.len();
        warn!(
            connections = cut,
            "drain period over, resetting remaining connections"
        );
        self.shared.cut.cancel();
        tracker.wait().await;
        DrainReport { cut }
    }

    fn spawn(&self, tracker: &TaskTracker, accepted: io::Result<(TcpStream, SocketAddr)>) {
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(handle(stream, peer, Arc::clone(&self.shared)));
            }
            // EMFILE and friends: log and keep accepting; the kernel keeps the queue.
            Err(error) => warn!(%error, "accept failed"),
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let SocketAddr::V4(peer) = peer else {
        warn!(%peer, "IPv6 client on the outbound proxy; closing");
        return reset(client);
    };
    let redirected = match shared.orig_dst.original_destination(peer) {
        Ok(Some(redirected)) => redirected,
        Ok(None) => {
            shared
                .metrics
                .failed("unknown", FailureReason::no_original_destination);
            warn!(client = %peer, "connection was not redirected (no original destination); resetting");
            return reset(client);
        }
        Err(error) => {
            shared.metrics.failed("unknown", FailureReason::other);
            warn!(client = %peer, %error, "original destination lookup failed; resetting");
            return reset(client);
        }
    };
    let destination = redirected.destination;
    let plane = shared.mesh.state.current();
    let source = shared
        .mesh
        .workloads
        .get(redirected.workload_id)
        .and_then(|workload| plane.virtual_node_of(&workload));
    // A workload outside the mesh (or no mesh at all) keeps plain TCP to its destination.
    let Some((source, outbound)) =
        source.and_then(|node| plane.outbound.get(&node).map(|plan| (node, plan)))
    else {
        return relay_to(client, peer, destination, &shared, None, None).await;
    };
    let port = destination.port();
    match outbound.ports.get(&port).or(outbound.other_ports.as_ref()) {
        Some(PortPlan::Http {
            routes,
            access_logs,
        }) => {
            let _ = client.set_nodelay(true);
            let context = Arc::new(HttpContext {
                state: shared.mesh.state.clone(),
                metrics: shared.mesh.metrics.clone(),
                source,
                port,
                routes: routes.clone(),
                direction: http::Direction::Outbound,
                peer: peer.into(),
                local: destination.into(),
                loggers: shared.mesh.access_logs.loggers(access_logs),
                recorder: Mutex::default(),
            });
            http::serve(client, context, shared.cut.clone()).await;
        }
        Some(PortPlan::Tcp {
            clusters,
            idle_timeout,
            access_logs,
        }) => {
            let cluster = clusters.pick(rand::random_range(0..clusters.total()));
            let log = ConnectionLog::new(
                shared.mesh.access_logs.loggers(access_logs),
                peer.into(),
                destination.into(),
                &source,
            );
            match plane.clusters.get(cluster) {
                Some(upstream) if upstream.plan.discovery == Discovery::OriginalDestination => {
                    relay_to(client, peer, destination, &shared, *idle_timeout, log).await;
                }
                Some(upstream) => {
                    let ends = RelayEnds {
                        metrics: &shared.metrics,
                        cut: &shared.cut,
                        idle: *idle_timeout,
                        log,
                    };
                    relay_to_cluster(client, peer, upstream, ends).await
                }
                None => {
                    shared.metrics.failed(cluster, FailureReason::other);
                    warn!(client = %peer, %source, cluster, "TCP route targets a cluster that is not loaded; resetting");
                    reset(client);
                }
            }
        }
        None => {
            shared.mesh.metrics.denied(&source, port);
            info!(client = %peer, %source, %destination, "egress denied: not a backend of the virtual node and the mesh is DROP_ALL; resetting");
            reset(client);
        }
    }
}

/// Plain TCP to where the application connected.
async fn relay_to(
    client: TcpStream,
    peer: SocketAddrV4,
    destination: SocketAddrV4,
    shared: &Shared,
    idle: Option<Duration>,
    log: Option<ConnectionLog>,
) {
    let label = destination.to_string();
    match connect_upstream(destination, &shared.settings).await {
        Ok(upstream) => {
            let ends = RelayEnds {
                metrics: &shared.metrics,
                cut: &shared.cut,
                idle,
                log,
            };
            relay_connection(client, peer, upstream, &label, ends).await
        }
        Err(error) => {
            let reason = failure_reason(&error);
            shared.metrics.failed(&label, reason);
            warn!(client = %peer, %destination, ?reason, %error, "cannot connect to destination; resetting client");
            if let Some(log) = log {
                log.finish(
                    Some(destination.into()),
                    &label,
                    &Transferred::default(),
                    ResponseFlags::UPSTREAM_CONNECT_FAILURE,
                );
            }
            reset(client);
        }
    }
}

/// TCP to an endpoint of a mesh cluster (a TCP route's target).
/// (Also the inbound side's TCP listeners, toward the application.)
pub(super) async fn relay_to_cluster(
    client: TcpStream,
    peer: SocketAddrV4,
    upstream: &Upstream,
    ends: RelayEnds<'_>,
) {
    let cluster = upstream.name();
    let in_flight = match upstream.pick().await {
        Ok(in_flight) => in_flight,
        Err(error) => {
            ends.metrics.failed(cluster, FailureReason::other);
            warn!(client = %peer, %error, "no endpoint for TCP connection; resetting");
            let flag = match error {
                PickError::Overflow(_) => ResponseFlags::UPSTREAM_OVERFLOW,
                _ => ResponseFlags::NO_HEALTHY_UPSTREAM,
            };
            if let Some(log) = ends.log {
                log.finish(None, cluster, &Transferred::default(), flag);
            }
            return reset(client);
        }
    };
    match in_flight.endpoint.connector.connect().await {
        Ok(stream) => {
            upstream.record(&in_flight.endpoint, Outcome::Success);
            relay_connection(client, peer, stream, cluster, ends).await;
        }
        Err(error) => {
            upstream.record(&in_flight.endpoint, Outcome::Error);
            let reason = failure_reason(&error);
            ends.metrics.failed(cluster, reason);
            warn!(client = %peer, cluster, endpoint = %in_flight.endpoint.addr, ?reason, %error, "cannot connect to endpoint; resetting client");
            if let Some(log) = ends.log {
                log.finish(
                    Some(in_flight.endpoint.addr),
                    cluster,
                    &Transferred::default(),
                    ResponseFlags::UPSTREAM_CONNECT_FAILURE,
                );
            }
            reset(client);
        }
    }
}

/// The access log line of a TCP connection: what is known when it is accepted, completed
/// when it ends.
pub(super) struct ConnectionLog {
    pub loggers: Loggers,
    pub entry: Entry,
}

impl ConnectionLog {
    pub fn new(
        loggers: Option<Loggers>,
        peer: SocketAddr,
        local: SocketAddr,
        virtual_node: &str,
    ) -> Option<Self> {
        loggers.map(|loggers| Self {
            loggers,
            entry: Entry::new(peer, local, virtual_node),
        })
    }

    fn finish(
        mut self,
        upstream: Option<SocketAddr>,
        cluster: &str,
        transferred: &Transferred,
        flags: ResponseFlags,
    ) {
        let entry = &mut self.entry;
        entry.duration = entry.start.elapsed().unwrap_or_default();
        entry.upstream_host = upstream;
        entry.upstream_cluster = Some(cluster.to_owned());
        entry.bytes_received = transferred.sent.load(Ordering::Relaxed);
        entry.bytes_sent = transferred.received.load(Ordering::Relaxed);
        entry.flags = flags;
        entry.attempts = 1;
        self.loggers.log(entry);
    }
}

/// What a relay is counted in, cut by, how long it may sit idle, and its access log.
pub(super) struct RelayEnds<'a> {
    pub metrics: &'a ProxyMetrics,
    pub cut: &'a CancellationToken,
    pub idle: Option<Duration>,
    pub log: Option<ConnectionLog>,
}

/// Relays until both sides are done (or cut, or idle too long), counting under `label`.
pub(super) async fn relay_connection(
    client: TcpStream,
    peer: SocketAddrV4,
    upstream: TcpStream,
    label: &str,
    ends: RelayEnds<'_>,
) {
    let _ = client.set_nodelay(true);
    let metrics = ends.metrics.opened(label);
    let transferred = Transferred::default();
    let upstream_addr = upstream.peer_addr().ok();
    debug!(client = %peer, destination = label, "relaying");
    let result = relay::relay(
        &client,
        &upstream,
        &metrics,
        &transferred,
        ends.cut,
        ends.idle,
    )
    .await;
    let flags = match &result {
        Err(RelayError::Destination(_)) => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        Err(RelayError::Client(_)) => ResponseFlags::DOWNSTREAM_TERMINATION,
        _ => ResponseFlags::default(),
    };
    if let Err(error) = result {
        debug!(client = %peer, destination = label, %error, "connection ended with an error; resetting both sides");
        reset(client);
        reset(upstream);
    }
    if let Some(log) = ends.log {
        log.finish(upstream_addr, label, &transferred, flags);
    }
}

async fn connect_upstream(
    destination: SocketAddrV4,
    settings: &OutboundSettings,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(mark) = settings.mark {
        socket.set_mark(mark)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(settings.connect_timeout, socket.connect(destination.into()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

fn failure_reason(error: &io::Error) -> FailureReason {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => FailureReason::refused,
        io::ErrorKind::TimedOut => FailureReason::timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            FailureReason::unreachable
        }
        _ => FailureReason::other,
    }
}

/// Closes with RST rather than FIN, so the client learns at once that the connection failed.
pub(super) fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    //! In-process tests: real sockets on loopback, a fixed original-destination table instead
    //! of the eBPF map, no privileges.
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::metrics::Metrics;

    /// Every client was "redirected" from `destination` (or from nowhere, when `None`).
    struct FixedOrigDst(Option<SocketAddrV4>);

    impl OrigDstSource for FixedOrigDst {
        fn original_destination(
            &self,
            _peer: SocketAddrV4,
        ) -> Result<Option<super::super::Redirected>, aya::maps::MapError> {
            Ok(self.0.map(|destination| super::super::Redirected {
                destination,
                workload_id: 1,
            }))
        }
    }

    struct Harness {
        proxy: SocketAddr,
        metrics: Metrics,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<DrainReport>,
    }

    async fn start(destination: Option<SocketAddrV4>, drain: Duration) -> Harness {
        let listener = bind_listener("test", "127.0.0.1:0".parse().unwrap()).unwrap();
        let proxy = listener.local_addr().unwrap();
        let metrics = Metrics::new(Default::default(), None);
        let outbound = Outbound::new(
            listener,
            Arc::new(FixedOrigDst(destination)),
            metrics.proxy.clone(),
            MeshContext::default(),
            OutboundSettings {
                mark: None,
                connect_timeout: Duration::from_secs(2),
            },
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(outbound.run(stop.clone(), drain));
        Harness {
            proxy,
            metrics,
            stop,
            task,
        }
    }

    fn v4(addr: SocketAddr) -> SocketAddrV4 {
        match addr {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => panic!("expected IPv4"),
        }
    }

    /// How a client learns the proxy reset it: on its first read, or — when the reset beats
    /// the end of its connect — as the connect's error.
    async fn reset_seen_by_client(proxy: SocketAddr) -> io::ErrorKind {
        let outcome = match TcpStream::connect(proxy).await {
            Ok(mut client) => client.read(&mut [0u8; 16]).await.map(drop),
            Err(error) => Err(error),
        };
        outcome
            .expect_err("the proxy should reset the client")
            .kind()
    }

    /// Reads until EOF, then answers with the byte count and a 1 MiB reply, then closes.
    async fn counting_server() -> SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = v4(listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    stream.read_to_end(&mut received).await.unwrap();
                    let header = format!("{}\n", received.len());
                    stream.write_all(header.as_bytes()).await.unwrap();
                    stream.write_all(&vec![7u8; 1 << 20]).await.unwrap();
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let server = counting_server().await;
        let harness = start(Some(server), Duration::from_secs(1)).await;
        let mut client = TcpStream::connect(harness.proxy).await.unwrap();
        client.write_all(&vec![1u8; 3 << 20]).await.unwrap();
        // Half-close: the server only answers after it has seen our FIN through the proxy.
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        let header = format!("{}\n", 3 << 20);
        assert!(reply.starts_with(header.as_bytes()));
        assert_eq!(reply.len(), header.len() + (1 << 20));
        drop(client);

        harness.stop.cancel();
        assert_eq!(harness.task.await.unwrap(), DrainReport { cut: 0 });
        let text = harness.metrics.encode().unwrap();
        let dest = server.to_string();
        for line in [
            format!("mesh_agent_proxy_connections_opened_total{{destination=\"{dest}\"}} 1"),
            format!("mesh_agent_proxy_connections_closed_total{{destination=\"{dest}\"}} 1"),
            format!(
                "mesh_agent_proxy_bytes_total{{destination=\"{dest}\",direction=\"sent\"}} {}",
                3 << 20
            ),
            format!(
                "mesh_agent_proxy_bytes_total{{destination=\"{dest}\",direction=\"received\"}} {}",
                header.len() + (1 << 20)
            ),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn refused_destination_resets_client_quickly() {
        // A port nobody listens on: bind, note the port, close.
        let closed = v4(std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap());
        let harness = start(Some(closed), Duration::from_secs(1)).await;
        let started = Instant::now();
        assert_eq!(
            reset_seen_by_client(harness.proxy).await,
            io::ErrorKind::ConnectionReset
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let text = harness.metrics.encode().unwrap();
        assert!(
            text.contains(&format!(
                "mesh_agent_proxy_connections_failed_total{{destination=\"{closed}\",reason=\"refused\"}} 1"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn connection_without_original_destination_is_reset() {
        let harness = start(None, Duration::from_secs(1)).await;
        assert_eq!(
            reset_seen_by_client(harness.proxy).await,
            io::ErrorKind::ConnectionReset
        );
        let text = harness.metrics.encode().unwrap();
        assert!(
            text.contains("reason=\"no_original_destination\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn destination_reset_reaches_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = v4(listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            reset(stream);
        });
        let harness = start(Some(server), Duration::from_secs(1)).await;
        assert_eq!(
            reset_seen_by_client(harness.proxy).await,
            io::ErrorKind::ConnectionReset
        );
    }

    #[tokio::test]
    async fn drain_waits_for_live_connections_then_cuts_them() {
        let server = counting_server().await;
        let harness = start(Some(server), Duration::from_millis(300)).await;
        let mut client = TcpStream::connect(harness.proxy).await.unwrap();
        client.write_all(b"still talking").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        harness.stop.cancel();
        // New connections are refused once the listener is closed...
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(harness.proxy).await.is_err());
        // ...and the live one is cut when the drain period ends.
        assert_eq!(harness.task.await.unwrap(), DrainReport { cut: 1 });
        assert!(started.elapsed() >= Duration::from_millis(300));
        let err = client.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
