//! Outbound: the accept loop of connections the redirect moved into the proxy. Each is
//! routed by its workload's virtual node — HTTP to the HTTP engine, TCP routes to a cluster,
//! no backend on a DROP_ALL mesh reset — or, outside the mesh, relayed to its original
//! destination.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use mesh_xds::plan::{PortPlan, cluster::Discovery};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{
    ProxyInputs,
    http::{self, HttpContext, MeshClusters, Side},
    tcp::{ConnectionLog, RelayEnds, relay_to, relay_to_cluster, reset},
};
use crate::{
    listen::Acceptor, redirect::orig_dst::OrigDstSource, telemetry::metrics::FailureReason,
};

pub struct Outbound {
    acceptor: Acceptor,
    shared: Arc<Shared>,
}

struct Shared {
    orig_dst: Arc<dyn OrigDstSource>,
    inputs: ProxyInputs,
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
        inputs: ProxyInputs,
    ) -> Self {
        let errors = inputs.metrics.accept_errors("outbound");
        Self {
            acceptor: Acceptor::new(listener, "outbound", errors),
            shared: Arc::new(Shared { orig_dst, inputs }),
        }
    }

    /// Accepts until the drain begins (`inputs.drain`), then takes what is already queued,
    /// then waits up to `drain_timeout` for live connections before cutting them (and,
    /// through the shared cut, the inbound side's).
    pub async fn run(mut self, drain_timeout: Duration) -> DrainReport {
        let tracker = TaskTracker::new();
        let drain = self.shared.inputs.drain.clone();
        loop {
            tokio::select! {
                (stream, peer) = self.acceptor.accept() => self.spawn(&tracker, stream, peer),
                () = drain.cancelled() => break,
            }
        }
        // Connections redirected before the redirect stopped may still sit in the accept
        // queue.
        while let Some((stream, peer)) = self.acceptor.queued().await {
            self.spawn(&tracker, stream, peer);
        }
        drop(self.acceptor);
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
        self.shared.inputs.cut.cancel();
        tracker.wait().await;
        DrainReport { cut }
    }

    fn spawn(&self, tracker: &TaskTracker, stream: TcpStream, peer: SocketAddr) {
        tracker.spawn(handle(stream, peer, Arc::clone(&self.shared)));
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let SocketAddr::V4(peer) = peer else {
        warn!(%peer, "IPv6 client on the outbound proxy; closing");
        return reset(client);
    };
    let inputs = &shared.inputs;
    let redirected = match shared.orig_dst.original_destination(peer) {
        Ok(Some(redirected)) => redirected,
        Ok(None) => {
            inputs
                .metrics
                .failed("unknown", FailureReason::no_original_destination);
            warn!(client = %peer, "connection was not redirected (no original destination); resetting");
            return reset(client);
        }
        Err(error) => {
            inputs.metrics.failed("unknown", FailureReason::other);
            warn!(client = %peer, %error, "original destination lookup failed; resetting");
            return reset(client);
        }
    };
    let destination = redirected.destination;
    let Ok(plane) = inputs.state.current() else {
        inputs
            .metrics
            .failed(&destination.to_string(), FailureReason::other);
        return reset(client);
    };
    // A workload table that cannot be read (poisoned, said once) refuses the connection:
    // taking it for a workload outside the mesh would bypass the mesh.
    let Ok(workload) = inputs.workloads.get(redirected.workload_id) else {
        inputs
            .metrics
            .failed(&destination.to_string(), FailureReason::other);
        return reset(client);
    };
    let source = workload.and_then(|workload| plane.virtual_node_of(&workload));
    // A workload outside the mesh (or no mesh at all) keeps plain TCP to its destination.
    let Some((source, outbound)) =
        source.and_then(|node| plane.outbound.get(&node).map(|plan| (node, plan)))
    else {
        // Boxed, as every relay below: a connection's task is as large as its largest branch,
        // and an idle HTTP connection keeps its task for as long as it lives.
        return Box::pin(relay_to(client, peer, destination, inputs, None, None)).await;
    };
    let port = destination.port();
    match outbound.ports.get(&port).or(outbound.other_ports.as_ref()) {
        Some(PortPlan::Http(plan)) => {
            let _ = client.set_nodelay(true);
            let side = Side::outbound(source.clone(), Arc::new(MeshClusters));
            let context = HttpContext::new(inputs, side, source, port, plan)
                .between(peer.into(), destination.into());
            // Each request takes the data plane current when it arrives; a connection that
            // lives long (idle keep-alive) must not keep this one's snapshot alive.
            drop(plane);
            http::serve(client.into(), Arc::new(context)).await;
        }
        Some(PortPlan::Tcp {
            clusters,
            idle_timeout,
            access_logs,
            ..
        }) => {
            let cluster = clusters.pick(rand::random_range(0..clusters.total()));
            let log = ConnectionLog::new(
                inputs.access_logs.loggers(access_logs),
                peer.into(),
                destination.into(),
                &source,
            );
            match plane.clusters.get(cluster) {
                Some(upstream) if upstream.plan.discovery == Discovery::OriginalDestination => {
                    Box::pin(relay_to(
                        client,
                        peer,
                        destination,
                        inputs,
                        *idle_timeout,
                        log,
                    ))
                    .await;
                }
                Some(upstream) => {
                    let ends = RelayEnds::new(inputs, *idle_timeout, log);
                    Box::pin(relay_to_cluster(client.into(), peer, upstream, ends)).await
                }
                None => {
                    inputs.metrics.failed(cluster, FailureReason::other);
                    warn!(client = %peer, %source, cluster, "TCP route targets a cluster that is not loaded; resetting");
                    reset(client);
                }
            }
        }
        None => {
            inputs.mesh_metrics.denied(&source, port);
            info!(client = %peer, %source, %destination, "egress denied: not a backend of the virtual node and the mesh is DROP_ALL; resetting");
            reset(client);
        }
    }
}

#[cfg(test)]
mod tests {
    //! In-process tests: real sockets on loopback, a fixed original-destination table instead
    //! of the eBPF map, no privileges.
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use std::{io, net::SocketAddrV4};

    use super::*;
    use crate::{
        listen::bind_listener,
        proxy::ProxySettings,
        redirect::orig_dst::{OrigDstError, Redirected},
        telemetry::metrics::Metrics,
    };

    /// Every client was "redirected" from `destination` (or from nowhere, when `None`).
    struct FixedOrigDst(Option<SocketAddrV4>);

    impl OrigDstSource for FixedOrigDst {
        fn original_destination(
            &self,
            _peer: SocketAddrV4,
        ) -> Result<Option<Redirected>, OrigDstError> {
            Ok(self.0.map(|destination| Redirected {
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
        let metrics = Metrics::default();
        let settings = ProxySettings {
            mark: None,
            connect_timeout: Duration::from_secs(2),
        };
        let inputs = ProxyInputs::new(settings, metrics.proxy.clone());
        let stop = inputs.drain.clone();
        let outbound = Outbound::new(listener, Arc::new(FixedOrigDst(destination)), inputs);
        let task = tokio::spawn(outbound.run(drain));
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
