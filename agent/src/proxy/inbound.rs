//! Inbound: connections arriving for an enrolled pod on its virtual node's listener ports,
//! handed by sk_lookup to the proxy's listener inside the pod. They pass the inbound listener
//! of the virtual node — HTTP routed to the local application with the listener's timeout,
//! connection pool and per-listener metrics, TCP relayed — and reach the application on the
//! pod's loopback, as App Mesh's sidecar did.
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
};

use mesh_xds::plan::PortPlan;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{
    MeshContext,
    http::{self, Direction, HttpContext},
    outbound::{ConnectionLog, RelayEnds, relay_connection, relay_to_cluster, reset},
    upstream::{Connector, Upstream},
};
use crate::{
    metrics::{FailureReason, ProxyMetrics},
    redirect::{InboundPod, InboundPorts, netns::PodNet},
    state::DataPlane,
    workload::Workloads,
};

/// A captured pod as its connections need it.
pub struct PodContext {
    pub workload_id: u32,
    pub netns: String,
    pub net: Arc<PodNet>,
    /// Clusters toward the application (`<node>/inbound/<port>`), endpoint on loopback.
    locals: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl PodContext {
    /// The cluster `name` of the data plane, with its endpoint the application's `port` on the
    /// pod's loopback; kept while its configuration does not change.
    pub fn local_upstream(
        &self,
        plane: &DataPlane,
        name: &str,
        port: u16,
        shared: &MeshContext,
        mark: u32,
    ) -> Option<Arc<Upstream>> {
        let plan = &plane.clusters.get(name)?.plan;
        let mut locals = self.locals.lock().ok()?;
        if let Some(existing) = locals.get(name)
            && existing.plan == *plan
        {
            return Some(Arc::clone(existing));
        }
        let upstream = Arc::new(Upstream::in_pod(
            plan.clone(),
            Some(mark),
            shared.metrics.cluster(name),
            Arc::clone(&self.net),
        ));
        upstream.set_endpoints(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]);
        locals.insert(name.to_owned(), Arc::clone(&upstream));
        Some(upstream)
    }
}

/// How long the application on the pod's loopback may take to accept.
const APP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const PORTS_RECHECK: std::time::Duration = std::time::Duration::from_millis(500);

pub struct InboundSettings {
    pub mark: u32,
}

struct Shared {
    mesh: MeshContext,
    metrics: ProxyMetrics,
    settings: InboundSettings,
    cut: CancellationToken,
}

/// Serves captured pods as enrollment hands them over, and keeps the captured ports equal to
/// what the pods' virtual nodes listen on, until `stop`.
pub async fn run(
    mut pods: mpsc::UnboundedReceiver<InboundPod>,
    ports: InboundPorts,
    mesh: MeshContext,
    metrics: ProxyMetrics,
    settings: InboundSettings,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let shared = Arc::new(Shared {
        mesh,
        metrics,
        settings,
        cut,
    });
    let mut applied = shared.mesh.state.subscribe();
    // Endpoints (which say what virtual node a pod is) also change between applies, as DNS
    // names resolve: look again every so often.
    let mut recheck = tokio::time::interval(PORTS_RECHECK);
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = recheck.tick() => {}
            pod = pods.recv() => match pod {
                Some(pod) => {
                    tracker.spawn(accept(pod, Arc::clone(&shared), stop.clone()));
                }
                None => break,
            },
            changed = applied.changed() => if changed.is_err() { break },
            () = stop.cancelled() => break,
        }
        ports.sync(&captured_ports(
            &shared.mesh.state.current(),
            &shared.mesh.workloads,
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// (pod address, port) for every listener port of every enrolled pod's virtual node.
fn captured_ports(plane: &DataPlane, workloads: &Workloads) -> HashSet<(Ipv4Addr, u16)> {
    let mut ports = HashSet::new();
    for (_, workload) in workloads.all() {
        let Some(inbound) = plane
            .virtual_node_of(&workload)
            .and_then(|node| plane.inbound.get(&node))
        else {
            continue;
        };
        for port in inbound.ports.keys() {
            ports.extend(workload.addresses.iter().map(|ip| (*ip, *port)));
        }
    }
    ports
}

async fn accept(pod: InboundPod, shared: Arc<Shared>, stop: CancellationToken) {
    let listener = match TcpListener::from_std(pod.listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(netns = %pod.netns, %error, "inbound listener unusable");
            return;
        }
    };
    let context = Arc::new(PodContext {
        workload_id: pod.workload_id,
        netns: pod.netns,
        net: pod.net,
        locals: Mutex::default(),
    });
    info!(netns = %context.netns, "serving inbound connections");
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(handle(stream, peer, Arc::clone(&context), Arc::clone(&shared)));
                }
                Err(error) => warn!(netns = %context.netns, %error, "inbound accept failed"),
            },
            () = pod.stop.cancelled() => break,
            () = stop.cancelled() => break,
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn handle(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    shared: Arc<Shared>,
) {
    let port = match stream.local_addr() {
        Ok(local) => local.port(),
        Err(error) => {
            debug!(%error, "inbound connection without a local address");
            return;
        }
    };
    let plane = shared.mesh.state.current();
    let node = shared
        .mesh
        .workloads
        .get(pod.workload_id)
        .and_then(|workload| plane.virtual_node_of(&workload));
    let plan = node
        .as_ref()
        .and_then(|node| plane.inbound.get(node))
        .and_then(|inbound| inbound.ports.get(&port));
    let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    match (plan, node) {
        (
            Some(Some(PortPlan::Http {
                routes,
                access_logs,
            })),
            Some(node),
        ) => {
            let _ = stream.set_nodelay(true);
            let context = Arc::new(HttpContext {
                state: shared.mesh.state.clone(),
                metrics: shared.mesh.metrics.clone(),
                source: "unknown".into(),
                port,
                routes: routes.clone(),
                peer,
                local: stream
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(local)),
                loggers: shared.mesh.access_logs.loggers(access_logs),
                recorder: Mutex::default(),
                direction: Direction::Inbound {
                    pod: Arc::clone(&pod),
                    virtual_node: node,
                    mesh: Box::new(shared.mesh.clone()),
                    mark: shared.settings.mark,
                },
            });
            http::serve(stream, context, shared.cut.clone()).await;
        }
        (
            Some(Some(PortPlan::Tcp {
                clusters,
                idle_timeout,
                access_logs,
            })),
            node,
        ) => {
            let cluster = clusters.pick(rand::random_range(0..clusters.total()));
            match pod.local_upstream(&plane, cluster, port, &shared.mesh, shared.settings.mark) {
                Some(upstream) => {
                    let log = ConnectionLog::new(
                        shared.mesh.access_logs.loggers(access_logs),
                        peer,
                        stream
                            .local_addr()
                            .unwrap_or_else(|_| SocketAddr::from(local)),
                        node.as_deref().unwrap_or("unknown"),
                    );
                    let ends = RelayEnds {
                        metrics: &shared.metrics,
                        cut: &shared.cut,
                        idle: *idle_timeout,
                        log,
                    };
                    relay_to_cluster(stream, peer_v4(peer), &upstream, ends).await
                }
                None => reset(stream),
            }
        }
        (Some(None), _) => {
            warn!(netns = %pod.netns, port, client = %peer, "the listener requires TLS (STRICT), which this agent does not terminate yet; resetting");
            reset(stream);
        }
        // Not (or no longer) a mesh port of this pod: straight to the application.
        _ => {
            let app = Connector::in_pod(
                local.into(),
                Some(shared.settings.mark),
                APP_CONNECT_TIMEOUT,
                Arc::clone(&pod.net),
            );
            match app.connect().await {
                Ok(app) => {
                    let ends = RelayEnds {
                        metrics: &shared.metrics,
                        cut: &shared.cut,
                        idle: None,
                        log: None,
                    };
                    relay_connection(stream, peer_v4(peer), app, &local.to_string(), ends).await
                }
                Err(error) => {
                    shared
                        .metrics
                        .failed(&local.to_string(), FailureReason::refused);
                    debug!(%error, port, "application refused an inbound connection");
                    reset(stream);
                }
            }
        }
    }
}

fn peer_v4(peer: SocketAddr) -> SocketAddrV4 {
    match peer {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(v6) => SocketAddrV4::new(
            v6.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            v6.port(),
        ),
    }
}
