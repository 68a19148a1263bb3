//! Inbound: connections arriving for an enrolled pod on its virtual node's listener ports,
//! handed by sk_lookup to the proxy's listener inside the pod. They pass the inbound listener
//! of the virtual node — HTTP routed to the local application with the listener's timeout,
//! connection pool and per-listener metrics, TCP relayed — and reach the application on the
//! pod's loopback, as App Mesh's sidecar did.
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_xds::plan::{InboundPort, PortPlan};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, warn};

use super::{
    ProxyInputs, chains,
    http::{self, HttpContext, MeshClusters, Side, Upstreams},
    tcp::{ConnectionLog, RelayEnds, relay_connection, relay_to_cluster, reset},
};
use crate::{
    dataplane::{
        DataPlane,
        upstream::{Connector, Upstream},
        workloads::{Workloads, WorkloadsPoisoned},
    },
    listen::Acceptor,
    redirect::{InboundPod, InboundPorts, netns::PodNet},
    telemetry::metrics::{FailureReason, MeshMetrics},
    tls::stream::MaybeTls,
};

/// A captured pod as its connections need it.
pub struct PodContext {
    workload_id: u32,
    netns: String,
    /// The port of the proxy's listener in the pod.
    own_port: u16,
    net: Arc<PodNet>,
    mark: Option<u32>,
    metrics: MeshMetrics,
    /// Clusters toward the application (`<node>/inbound/<port>`), endpoint on loopback.
    locals: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl PodContext {
    /// The cluster `name` of the data plane, with its endpoint the application's `port` on the
    /// pod's loopback; kept while its configuration does not change.
    fn local_upstream(&self, plane: &DataPlane, name: &str, port: u16) -> Option<Arc<Upstream>> {
        let plan = &plane.clusters.get(name)?.plan;
        let Ok(mut locals) = self.locals.lock() else {
            error!(netns = %self.netns, "the pod's cluster table is poisoned; refusing");
            return None;
        };
        if let Some(existing) = locals.get(name)
            && existing.plan == *plan
        {
            return Some(Arc::clone(existing));
        }
        let upstream = Upstream::new(plan.clone(), self.mark, self.metrics.cluster(name))
            .with_sockets(Arc::clone(&self.net) as _);
        let upstream = Arc::new(upstream);
        upstream.set_endpoints(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]);
        locals.insert(name.to_owned(), Arc::clone(&upstream));
        Some(upstream)
    }
}

/// A pod's clusters toward its application on one port, as the HTTP engine reaches them.
struct PodUpstreams {
    pod: Arc<PodContext>,
    port: u16,
}

impl Upstreams for PodUpstreams {
    fn upstream(&self, plane: &DataPlane, cluster: &str) -> Option<Arc<Upstream>> {
        self.pod.local_upstream(plane, cluster, self.port)
    }
}

/// How long the application on the pod's loopback may take to accept.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PORTS_RECHECK: Duration = Duration::from_millis(500);

/// Serves captured pods as enrollment hands them over, and keeps the captured ports equal to
/// what the pods' virtual nodes listen on, until the drain begins (`inputs.drain`); live
/// connections end when `inputs.cut` fires.
pub async fn run(
    mut pods: mpsc::UnboundedReceiver<InboundPod>,
    ports: InboundPorts,
    inputs: ProxyInputs,
) {
    let stop = inputs.drain.clone();
    let inputs = Arc::new(inputs);
    let mut applied = inputs.state.subscribe();
    // Endpoints (which say what virtual node a pod is) also change between applies, as DNS
    // names resolve: look again every so often.
    let mut recheck = tokio::time::interval(PORTS_RECHECK);
    let tracker = TaskTracker::new();
    // A poisoned port table stays poisoned: said once, then pods are still served but their
    // ports no longer follow the mesh.
    let mut ports_poisoned = false;
    loop {
        tokio::select! {
            _ = recheck.tick() => {}
            pod = pods.recv() => match pod {
                Some(pod) => {
                    tracker.spawn(accept(pod, Arc::clone(&inputs), stop.clone()));
                }
                None => break,
            },
            changed = applied.changed() => if changed.is_err() { break },
            () = stop.cancelled() => break,
        }
        if ports_poisoned {
            continue;
        }
        // An unreadable plane or workload table (said once) leaves the ports as they are;
        // connections on them are refused while either cannot be read.
        let Ok(plane) = inputs.state.current() else {
            continue;
        };
        let Ok(desired) = captured_ports(&plane, &inputs.workloads) else {
            continue;
        };
        match ports.sync(&desired) {
            Ok(captured) => inputs.metrics.inbound_ports_captured(captured),
            Err(error) => {
                error!(%error, "captured inbound ports no longer follow the mesh");
                ports_poisoned = true;
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// (pod address, port) for every listener port of every enrolled pod's virtual node (or
/// virtual gateway).
fn captured_ports(
    plane: &DataPlane,
    workloads: &Workloads,
) -> Result<HashSet<(Ipv4Addr, u16)>, WorkloadsPoisoned> {
    let mut ports = HashSet::new();
    for (_, workload) in workloads.all()? {
        let Some(node) = plane.virtual_node_of(&workload) else {
            continue;
        };
        let listening = match (plane.inbound.get(&node), plane.gateways.get(&node)) {
            (Some(inbound), _) => inbound.ports.keys().copied().collect(),
            (None, Some(gateway)) => gateway.keys().copied().collect(),
            (None, None) => Vec::new(),
        };
        for port in listening {
            ports.extend(workload.addresses.iter().map(|ip| (*ip, port)));
        }
    }
    Ok(ports)
}

async fn accept(pod: InboundPod, inputs: Arc<ProxyInputs>, stop: CancellationToken) {
    let listener = match TcpListener::from_std(pod.listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(netns = %pod.netns, %error, "inbound listener unusable");
            return;
        }
    };
    // The listener's own port: sk_lookup hands it connections for other ports, so one that
    // arrives on this port was addressed to the listener itself.
    let own_port = listener.local_addr().map_or(0, |a| a.port());
    let context = Arc::new(PodContext {
        workload_id: pod.workload_id,
        netns: pod.netns,
        own_port,
        net: pod.net,
        mark: inputs.settings.mark,
        metrics: inputs.mesh_metrics.clone(),
        locals: Mutex::default(),
    });
    info!(netns = %context.netns, "serving inbound connections");
    let tracker = TaskTracker::new();
    let errors = inputs.metrics.accept_errors("inbound");
    let mut acceptor = Acceptor::new(listener, format!("inbound {}", context.netns), errors);
    loop {
        tokio::select! {
            (stream, peer) = acceptor.accept() => {
                tracker.spawn(handle(stream, peer, Arc::clone(&context), Arc::clone(&inputs)));
            }
            () = pod.stop.cancelled() => break,
            () = stop.cancelled() => break,
        }
    }
    drop(acceptor);
    tracker.close();
    tracker.wait().await;
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let port = match stream.local_addr() {
        Ok(local) => local.port(),
        Err(error) => {
            debug!(%error, "inbound connection without a local address");
            return;
        }
    };
    if port == pod.own_port {
        // Not the application's: relaying it "to the application" on the pod's loopback
        // would reach this listener again, and again (a self-loop any pod could start).
        debug!(netns = %pod.netns, client = %peer, port, "connection addressed to the proxy's own inbound port; resetting");
        inputs
            .metrics
            .failed(&format!("127.0.0.1:{port}"), FailureReason::refused);
        return reset(stream);
    }
    let Ok(plane) = inputs.state.current() else {
        inputs
            .metrics
            .failed(&format!("127.0.0.1:{port}"), FailureReason::other);
        return reset(stream);
    };
    // A workload table that cannot be read (poisoned, said once) refuses the connection.
    let Ok(workload) = inputs.workloads.get(pod.workload_id) else {
        inputs
            .metrics
            .failed(&format!("127.0.0.1:{port}"), FailureReason::other);
        return reset(stream);
    };
    let node = workload.and_then(|workload| plane.virtual_node_of(&workload));
    let listener_port = node.as_ref().and_then(|node| {
        let of_node = plane.inbound.get(node).and_then(|i| i.ports.get(&port));
        let of_gateway = plane.gateways.get(node).and_then(|g| g.get(&port));
        of_node
            .map(|chains| (Listening::VirtualNode, chains))
            .or(of_gateway.map(|chains| (Listening::Gateway, chains)))
    });
    match (listener_port, node) {
        (Some((listening, chains)), Some(node)) => {
            let accepted = AcceptedOn {
                peer,
                port,
                node,
                listening,
            };
            let http = serve_listener_port(stream, accepted, chains, &plane, &pod, &inputs).await;
            if let Some((client, context)) = http {
                // Each request takes the data plane current when it arrives; a connection
                // that lives long (idle keep-alive) must not keep this one's snapshot alive.
                drop(plane);
                http::serve(client, Arc::new(context)).await;
            }
        }
        // Not (or no longer) a mesh port of this pod: straight to the application.
        _ => to_application(stream, peer, port, &pod, &inputs).await,
    }
}

/// Who connected, on which listener port, of which virtual node or gateway.
struct AcceptedOn {
    peer: SocketAddr,
    port: u16,
    node: String,
    listening: Listening,
}

/// Whose listener a captured port is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listening {
    /// A virtual node's: toward the pod's application.
    VirtualNode,
    /// A virtual gateway's (the pod is enrolled as one): through its gateway routes into
    /// the mesh.
    Gateway,
}

/// A connection on a listener port: through its TLS chain or its plain one, as the
/// listener's TLS mode has it, then TCP toward the application, or HTTP: that connection and
/// its context are returned, for the caller to serve.
async fn serve_listener_port(
    stream: TcpStream,
    accepted: AcceptedOn,
    listener_port: &InboundPort,
    plane: &DataPlane,
    pod: &Arc<PodContext>,
    inputs: &Arc<ProxyInputs>,
) -> Option<(MaybeTls, HttpContext)> {
    let AcceptedOn {
        peer,
        port,
        node,
        listening,
    } = accepted;
    let accepted_on = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    // Boxed, as the relay below: a connection's task is as large as its largest branch (a
    // TLS handshake's is large), and an idle HTTP connection keeps its task while it lives.
    let (client, plan) = Box::pin(chains::accept(stream, peer, listener_port, inputs)).await?;
    // The caller as its certificate names it; plain text says nothing about who it is.
    // Through a gateway, the gateway is the mesh's caller.
    let source = match listening {
        Listening::Gateway => node.clone(),
        Listening::VirtualNode => client.peer_identity().unwrap_or_else(|| "unknown".into()),
    };
    match plan {
        PortPlan::Http(plan) => {
            let _ = client.tcp().set_nodelay(true);
            let side = match listening {
                Listening::Gateway => Side::gateway(node, Arc::new(MeshClusters)),
                Listening::VirtualNode => Side::inbound(
                    node,
                    Arc::new(PodUpstreams {
                        pod: Arc::clone(pod),
                        port,
                    }),
                ),
            };
            let context =
                HttpContext::new(inputs, side, source, port, plan).between(peer, accepted_on);
            Some((client, context))
        }
        PortPlan::Tcp {
            clusters,
            idle_timeout,
            access_logs,
            ..
        } => {
            let cluster = clusters.pick(rand::random_range(0..clusters.total()));
            let Some(upstream) = pod.local_upstream(plane, cluster, port) else {
                reset(client);
                return None;
            };
            let log = ConnectionLog::new(
                inputs.access_logs.loggers(access_logs),
                peer,
                accepted_on,
                &node,
            )
            .map(|log| log.with_source(&source));
            let ends = RelayEnds::new(inputs, *idle_timeout, log);
            Box::pin(relay_to_cluster(client, peer_v4(peer), &upstream, ends)).await;
            None
        }
    }
}

/// A connection to a port that is not a listener port of the pod's virtual node.
async fn to_application(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    pod: &PodContext,
    inputs: &ProxyInputs,
) {
    let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let app = Connector::with_sockets(
        local.into(),
        inputs.settings.mark,
        APP_CONNECT_TIMEOUT,
        Arc::clone(&pod.net) as _,
    );
    match app.connect_tcp().await {
        Ok(app) => {
            let ends = RelayEnds::new(inputs, None, None);
            relay_connection(
                stream.into(),
                peer_v4(peer),
                app.into(),
                &local.to_string(),
                ends,
            )
            .await
        }
        Err(error) => {
            inputs
                .metrics
                .failed(&local.to_string(), FailureReason::refused);
            debug!(%error, port, "application refused an inbound connection");
            reset(stream);
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
