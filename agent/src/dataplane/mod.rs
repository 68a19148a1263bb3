//! The mesh as the proxy applies it right now: the plan of the last accepted xDS state with
//! live clusters. Each accepted state becomes a new [`DataPlane`], swapped in atomically;
//! connections and requests already running keep the one they started with, clusters whose
//! configuration did not change carry over with their endpoints, pools and health.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex, RwLock, atomic::AtomicBool},
};

use mesh_xds::{
    client::XdsState,
    plan::node_pods::NodePod,
    plan::{
        HttpPlan, InboundPlan, InboundPort, NodePlan, OutboundPlan, Planner, RouteTable,
        cluster::Discovery,
    },
    resources::ResourceSet,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub mod dns;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod upstream;
pub mod workloads;

use upstream::{EndpointChanges, Upstream};
use workloads::Workload;

use crate::{
    telemetry::{lock_poisoned, metrics::MeshMetrics},
    tls::TlsStore,
};

#[derive(Default)]
pub struct DataPlane {
    /// By virtual node.
    pub outbound: HashMap<String, OutboundPlan>,
    /// By virtual node.
    pub inbound: HashMap<String, InboundPlan>,
    /// Virtual gateways' listener ports, by gateway (`mesh/gateway/name`).
    pub gateways: HashMap<String, BTreeMap<u16, InboundPort>>,
    /// Internal listeners (a gateway's second table), by name.
    pub internal: HashMap<String, HttpPlan>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    pub clusters: HashMap<String, Arc<Upstream>>,
    /// The pods on this node, when the control plane lists them (Kubernetes): they are
    /// enrolled as the workloads it says (redirect::pods).
    pub node_pods: Option<Arc<Vec<NodePod>>>,
    /// Endpoint address → virtual node, built on first use and again once endpoints moved
    /// (checked per connection: a lookup instead of a scan of every endpoint).
    by_address: Mutex<Option<(u64, Arc<AddressIndex>)>>,
    /// Bumped by this plane's clusters when their endpoints move.
    endpoint_changes: EndpointChanges,
}

/// Endpoint address → the virtual node it is an endpoint of.
type AddressIndex = HashMap<Ipv4Addr, String>;

impl DataPlane {
    /// The virtual node a workload is: as enrolled, else the one whose endpoints include one
    /// of the workload's addresses.
    pub fn virtual_node_of(&self, workload: &Workload) -> Option<String> {
        match &workload.virtual_node {
            Some(pinned) => Some(pinned.clone()),
            None => self.virtual_node_at(&workload.addresses),
        }
    }

    /// The virtual node one of whose endpoints is at one of `addresses`.
    pub fn virtual_node_at(&self, addresses: &[Ipv4Addr]) -> Option<String> {
        let index = self.address_index();
        addresses.iter().find_map(|ip| index.get(ip).cloned())
    }

    fn address_index(&self) -> Arc<AddressIndex> {
        let changes = self.endpoint_changes.get();
        let Ok(mut cached) = self.by_address.lock() else {
            // Only the cache is lost: the index built afresh is the right answer.
            static REPORTED: AtomicBool = AtomicBool::new(false);
            lock_poisoned(&REPORTED, "the address index cache lock");
            return Arc::new(self.virtual_nodes_by_address());
        };
        if let Some((built_at, index)) = cached.as_ref()
            && *built_at == changes
        {
            return Arc::clone(index);
        }
        // Built from endpoints no older than `changes`: a change meanwhile rebuilds next time.
        let index = Arc::new(self.virtual_nodes_by_address());
        *cached = Some((changes, Arc::clone(&index)));
        index
    }

    /// Every IPv4 endpoint address with the virtual node it belongs to.
    fn virtual_nodes_by_address(&self) -> AddressIndex {
        let mut index = HashMap::new();
        for upstream in self.clusters.values() {
            let Some(node) = &upstream.plan.virtual_node else {
                continue;
            };
            // A cluster whose endpoints cannot be read (poisoned, said once) adds none: its
            // workloads are not told apart from outside the mesh while it stays so.
            let Ok(endpoints) = upstream.endpoints() else {
                continue;
            };
            for endpoint in endpoints.iter() {
                if let std::net::IpAddr::V4(ip) = endpoint.addr.ip() {
                    index.insert(ip, node.clone());
                }
            }
        }
        index
    }
}

/// The current data plane, shared by every connection.
#[derive(Clone)]
pub struct MeshState {
    current: Arc<RwLock<Arc<DataPlane>>>,
    /// Counts replacements, for whoever follows changes (inbound port capture).
    applied: Arc<watch::Sender<u64>>,
    /// Shared by every cluster of every plane of this state (clusters carry over).
    endpoint_changes: EndpointChanges,
}

impl Default for MeshState {
    fn default() -> Self {
        Self {
            current: Arc::default(),
            applied: Arc::new(watch::channel(0).0),
            endpoint_changes: EndpointChanges::default(),
        }
    }
}

impl MeshState {
    /// The plane in force; an error (said once) once a thread panicked installing one, and
    /// the caller refuses what needs it rather than take an empty mesh for the real one.
    pub fn current(&self) -> Result<Arc<DataPlane>, StatePoisoned> {
        match self.current.read() {
            Ok(plane) => Ok(Arc::clone(&plane)),
            Err(_) => {
                static REPORTED: AtomicBool = AtomicBool::new(false);
                lock_poisoned(&REPORTED, "the data plane lock");
                Err(StatePoisoned)
            }
        }
    }

    /// Wakes on every new data plane.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Installs `next`; connections already running keep the plane they started with.
    pub fn replace(&self, mut next: DataPlane) -> Result<(), StatePoisoned> {
        next.endpoint_changes = self.endpoint_changes.clone();
        *self.current.write().map_err(|_| StatePoisoned)? = Arc::new(next);
        self.applied.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The counter new clusters of this state bump when their endpoints move.
    pub fn endpoint_changes(&self) -> EndpointChanges {
        self.endpoint_changes.clone()
    }
}

/// A thread panicked while installing a data plane: the state can no longer be trusted.
#[derive(Debug, thiserror::Error)]
#[error("the data plane's lock is poisoned (a thread panicked while installing a plane)")]
pub struct StatePoisoned;

/// What upstream sockets and cluster metrics need.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub mark: Option<u32>,
    pub metrics: MeshMetrics,
    pub resolver: dns::Resolver,
    /// TLS material and configurations of the clusters that originate TLS.
    pub tls: TlsStore,
}

/// Applies every state the xDS client accepts until `stop`.
pub async fn follow(
    mut xds: watch::Receiver<Arc<XdsState>>,
    state: MeshState,
    settings: UpstreamSettings,
    stop: CancellationToken,
) {
    let mut applied: Option<Arc<XdsState>> = None;
    let mut planner = Planner::default();
    loop {
        let accepted = Arc::clone(&xds.borrow_and_update());
        // Connection state and NACK counts change the xDS state too; only resources matter.
        if applied
            .as_ref()
            .is_none_or(|last| last.resources != accepted.resources)
        {
            apply_accepted(&accepted.resources, &mut planner, &state, &settings).await;
            applied = Some(accepted);
        }
        tokio::select! {
            changed = xds.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Plans and applies one accepted state. Planning what changed since the last state, and
/// matching every cluster with the one running, take milliseconds to tens of them in a mesh
/// of thousands of services: both on a blocking thread, so that the requests this runtime
/// proxies do not wait for them.
async fn apply_accepted(
    resources: &ResourceSet,
    planner: &mut Planner,
    state: &MeshState,
    settings: &UpstreamSettings,
) {
    // Each type's resources are shared: the copy is cheap.
    let resources = resources.clone();
    let mut moved = std::mem::take(planner);
    let Ok((plan, errors)) = tokio::task::spawn_blocking(move || {
        let planned = moved.plan(&resources);
        (moved, planned)
    })
    .await
    .map(|(moved, planned)| {
        *planner = moved;
        planned
    }) else {
        // The next state is planned from scratch.
        error!("planning the accepted state panicked; the mesh applied before stays");
        return;
    };
    for error in errors {
        // The client NACKs what does not convert, so this is a bug, not bad input.
        error!(%error, "accepted resource does not convert; skipped");
    }
    // The certificates and keys the state names are read before anything uses them.
    settings
        .tls
        .update(plan.secrets.clone(), crate::tls::files_of(&plan))
        .await;
    let (state, settings) = (state.clone(), settings.clone());
    if tokio::task::spawn_blocking(move || apply(plan, &state, &settings))
        .await
        .is_err()
    {
        error!("applying the accepted state panicked; the mesh applied before stays");
    }
}

fn apply(plan: NodePlan, state: &MeshState, settings: &UpstreamSettings) {
    // The state cannot be replaced either (said once): keep following, apply nothing.
    let Ok(current) = state.current() else {
        return;
    };
    let mut clusters = HashMap::new();
    for (name, cluster) in plan.clusters {
        let upstream = match current.clusters.get(&name) {
            Some(existing) if existing.plan == cluster => Arc::clone(existing),
            _ => start_cluster(cluster, settings, state.endpoint_changes()),
        };
        if let Discovery::Eds(service) = &upstream.plan.discovery {
            upstream.set_endpoints(plan.endpoints.get(service).cloned().unwrap_or_default());
        }
        clusters.insert(name, upstream);
    }
    info!(
        virtual_nodes = plan.outbound.len(),
        route_tables = plan.routes.len(),
        clusters = clusters.len(),
        "mesh applied"
    );
    let next = DataPlane {
        outbound: plan.outbound,
        inbound: plan.inbound,
        gateways: plan.gateways,
        internal: plan.internal,
        routes: plan.routes,
        clusters,
        node_pods: plan.node_pods.map(Arc::new),
        ..DataPlane::default()
    };
    if let Err(error) = state.replace(next) {
        error!(%error, "mesh not applied");
    }
}

/// A new cluster with its endpoint discovery and health checking running.
fn start_cluster(
    plan: Arc<mesh_xds::plan::ClusterPlan>,
    settings: &UpstreamSettings,
    changes: EndpointChanges,
) -> Arc<Upstream> {
    let metrics = settings.metrics.cluster(&plan.name);
    let upstream = Arc::new(
        Upstream::new(plan, settings.mark, metrics)
            .with_tls(&settings.tls)
            .counting_changes(changes),
    );
    match &upstream.plan.discovery {
        Discovery::Static(addrs) => upstream.set_endpoints(addrs.clone()),
        Discovery::Dns { .. } => {
            tokio::spawn(dns::resolve_cluster(
                Arc::downgrade(&upstream),
                settings.resolver.clone(),
            ));
        }
        Discovery::Eds(_) | Discovery::OriginalDestination | Discovery::InternalListener(_) => {}
    }
    if upstream.plan.health_check.is_some() {
        tokio::spawn(health::check_cluster(Arc::downgrade(&upstream)));
    }
    upstream
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_xds::plan::{
        ClusterPlan,
        cluster::{Balancer, Limits},
    };

    use super::*;

    fn cluster(name: &str, node: &str, changes: &EndpointChanges) -> Arc<Upstream> {
        let plan = ClusterPlan {
            name: name.into(),
            virtual_node: Some(node.into()),
            discovery: Discovery::Static(Vec::new()),
            balancer: Balancer::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            http2: false,
            upstream_tls: None,
            outlier: None,
            limits: Limits {
                max_connections: 8,
                max_pending_requests: 8,
                max_requests: 8,
                max_retries: 1,
            },
            health_check: None,
        };
        Arc::new(Upstream::new(plan, None, Default::default()).counting_changes(changes.clone()))
    }

    /// `count` EDS clusters, as a control plane sends them.
    fn eds_clusters(count: usize) -> ResourceSet {
        use envoy_types::pb::{
            envoy::config::cluster::v3::{
                Cluster,
                cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
            },
            google::protobuf::Any,
        };
        use prost::Message;
        let mut resources = ResourceSet::default();
        for i in 0..count {
            let cluster = Cluster {
                name: format!("shop/node{i}/8080"),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
                eds_cluster_config: Some(EdsClusterConfig::default()),
                ..Default::default()
            };
            let any = Any {
                type_url: mesh_xds::resources::CLUSTER.to_owned(),
                value: cluster.encode_to_vec(),
            };
            resources.insert(mesh_xds::resources::CLUSTER, cluster.name, any);
        }
        resources
    }

    #[tokio::test]
    async fn the_runtime_keeps_serving_while_a_large_state_is_planned() {
        // One runtime thread, as a node proxy with one worker: a ticker on it must keep
        // ticking while 20 000 clusters are decoded and planned again (from scratch, as
        // the first state is: a planner that planned the last state would reuse them).
        let state = MeshState::default();
        let settings = UpstreamSettings {
            mark: None,
            metrics: crate::telemetry::metrics::Metrics::default().mesh,
            resolver: dns::Resolver::hosts_only(),
            tls: TlsStore::default(),
        };
        let planner = &mut Planner::default();
        apply_accepted(&eds_clusters(20_000), planner, &state, &settings).await;
        let next = eds_clusters(20_001);
        let ticking = CancellationToken::new();
        let ticker = tokio::spawn({
            let ticking = ticking.clone();
            async move {
                let (mut worst, mut last) = (Duration::ZERO, std::time::Instant::now());
                while !ticking.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    worst = worst.max(last.elapsed());
                    last = std::time::Instant::now();
                }
                worst
            }
        });
        tokio::task::yield_now().await;
        let started = std::time::Instant::now();
        apply_accepted(&next, &mut Planner::default(), &state, &settings).await;
        let took = started.elapsed();
        ticking.cancel();
        let worst = ticker.await.unwrap();
        assert_eq!(state.current().unwrap().clusters.len(), 20_001);
        assert!(
            worst * 2 < took,
            "the runtime stalled {worst:?} of the {took:?} taken to apply the state"
        );
    }

    #[test]
    fn workloads_are_found_by_address_and_follow_their_endpoints() {
        let changes = EndpointChanges::default();
        let web = cluster("shop/web/80", "shop/web", &changes);
        let api = cluster("shop/api/9090", "shop/api", &changes);
        web.set_endpoints(vec!["10.0.0.1:80".parse().unwrap()]);
        api.set_endpoints(vec!["10.0.0.2:9090".parse().unwrap()]);
        let plane = DataPlane {
            clusters: [
                ("web".to_owned(), Arc::clone(&web)),
                ("api".to_owned(), api),
            ]
            .into(),
            endpoint_changes: changes,
            ..DataPlane::default()
        };
        let at = |ip: [u8; 4]| plane.virtual_node_at(&[Ipv4Addr::from(ip)]);
        assert_eq!(at([10, 0, 0, 2]).as_deref(), Some("shop/api"));
        assert_eq!(at([10, 0, 0, 9]), None);
        // The web pod moved: the index is built again.
        web.set_endpoints(vec!["10.0.0.3:80".parse().unwrap()]);
        assert_eq!(at([10, 0, 0, 1]), None);
        assert_eq!(at([10, 0, 0, 3]).as_deref(), Some("shop/web"));
    }
}
