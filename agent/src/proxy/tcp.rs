//! TCP through the proxy, shared by both peers: plain TCP to where the application
//! connected, TCP to an endpoint of a mesh cluster, and the relay between the two sockets
//! with its counters, its access log line and its failure handling.
use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::atomic::Ordering,
    time::Duration,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    ProxyInputs, ProxySettings,
    relay::{self, RelayError, Transferred},
};
use crate::{
    dataplane::upstream::{Outcome, PickError, Upstream},
    telemetry::{
        access_log::{Entry, Loggers, ResponseFlags},
        metrics::{FailureReason, ProxyMetrics},
    },
    tls::{HandshakeFailed, stream::MaybeTls},
};

/// Plain TCP to where the application connected.
pub async fn relay_to(
    client: TcpStream,
    peer: SocketAddrV4,
    destination: SocketAddrV4,
    inputs: &ProxyInputs,
    idle: Option<Duration>,
    log: Option<ConnectionLog>,
) {
    let label = destination.to_string();
    match connect_upstream(destination, &inputs.settings).await {
        Ok(upstream) => {
            let ends = RelayEnds::new(inputs, idle, log);
            relay_connection(client.into(), peer, upstream.into(), &label, ends).await
        }
        Err(error) => {
            let reason = failure_reason(&error);
            inputs.metrics.failed(&label, reason);
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

/// TCP to an endpoint of a mesh cluster (a TCP route's target, or an inbound TCP
/// listener's application).
pub async fn relay_to_cluster(
    client: MaybeTls,
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
pub struct ConnectionLog {
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

    /// The caller as its certificate names it (`unknown`: not known).
    pub fn with_source(mut self, source: &str) -> Self {
        if source != "unknown" {
            self.entry.source_virtual_node = Some(source.to_owned());
        }
        self
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
pub struct RelayEnds<'a> {
    metrics: &'a ProxyMetrics,
    cut: &'a CancellationToken,
    idle: Option<Duration>,
    log: Option<ConnectionLog>,
}

impl<'a> RelayEnds<'a> {
    pub fn new(
        inputs: &'a ProxyInputs,
        idle: Option<Duration>,
        log: Option<ConnectionLog>,
    ) -> Self {
        Self {
            metrics: &inputs.metrics,
            cut: &inputs.cut,
            idle,
            log,
        }
    }
}

/// Relays until both sides are done (or cut, or idle too long), counting under `label`.
pub async fn relay_connection(
    mut client: MaybeTls,
    peer: SocketAddrV4,
    mut upstream: MaybeTls,
    label: &str,
    ends: RelayEnds<'_>,
) {
    let _ = client.tcp().set_nodelay(true);
    let metrics = ends.metrics.opened(label);
    let transferred = Transferred::default();
    let upstream_addr = upstream.tcp().peer_addr().ok();
    debug!(client = %peer, destination = label, "relaying");
    let result = relay::relay(
        &mut client,
        &mut upstream,
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
    settings: &ProxySettings,
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

pub fn failure_reason(error: &io::Error) -> FailureReason {
    if HandshakeFailed::find(error).is_some() {
        return FailureReason::tls;
    }
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
pub fn reset(stream: impl Into<MaybeTls>) {
    let stream = stream.into();
    let _ = SockRef::from(stream.tcp()).set_linger(Some(Duration::ZERO));
    drop(stream);
}
