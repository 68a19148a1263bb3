//! The ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService`): the published
//! mesh, and one `session::Session` per stream — the node's view of the mesh, its
//! subscriptions and what it was sent — spoken as state of the world (`sotw`) or
//! incremental (`delta`).
//!
//! Per stream it follows Envoy's xDS protocol: the first request carries the node; when the
//! mesh changes, each stream recompiles for its node and sends only what changed for it.
mod delta;
mod session;
mod sotw;

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
            aggregated_discovery_service_server::{
                AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
            },
        },
    },
    google::protobuf::value::Kind as ValueKind,
};
use envoy_types::util::pack_any;
use mesh_xds::{
    plan::node_pods,
    resources::{CLUSTER, ResourceSet},
};
use tokio::sync::{mpsc, watch};
use tonic::{
    Request, Response, Status, Streaming,
    codegen::tokio_stream::{Stream, wrappers::ReceiverStream},
};
use tracing::{debug, info};

use crate::{
    caller::Caller,
    compile::{self, Around, MeshIndex, Reuse, Serving, Workloads},
    registry::Registry,
};
use session::{Protocol, Session};

/// The mesh being served, and its version (`v1`, `v2`, ...).
pub struct Published {
    pub version: u64,
    pub mesh: MeshSource,
    /// What the mesh compiles to for each node view, compiled by the first stream that
    /// needs it and shared by every stream with the same view: nodes serving the same
    /// workloads hold one copy, and the mesh is compiled once for them, not once each.
    compiled: Mutex<HashMap<View, Arc<OnceLock<Arc<ResourceSet>>>>>,
    /// What compiles for this mesh keep for the next one (and take from the one before).
    reuse: Reuse,
}

/// What a node's resources depend on besides the mesh: the workloads it serves, and (from a
/// cluster) the node itself, whose pods it is told.
#[derive(Clone, PartialEq, Eq, Hash)]
struct View {
    workloads: Workloads,
    node: Option<String>,
}

/// What a stream serves: a mesh (with the service registry) compiled per node, or (for tests
/// of clients) fixed resources.
pub enum MeshSource {
    Mesh(Arc<MeshIndex>, Arc<Registry>, Serving),
    Fixed(ResourceSet),
}

impl Published {
    pub fn new(version: u64, mesh: MeshSource) -> Self {
        Self {
            version,
            mesh,
            compiled: Mutex::default(),
            reuse: Reuse::default(),
        }
    }

    /// The mesh published after this one, its compiles reusing what this one's made.
    fn next(&self, mesh: MeshSource) -> Self {
        let reuse = match &self.mesh {
            MeshSource::Mesh(index, registry, serving) => {
                let around = Around {
                    registry: Arc::clone(registry),
                    service_endpoints: Arc::clone(&serving.service_endpoints),
                    mtls: serving.mtls.clone(),
                };
                Reuse::after(&self.reuse, Arc::clone(index), around)
            }
            MeshSource::Fixed(_) => Reuse::default(),
        };
        Self {
            reuse,
            ..Self::new(self.version + 1, mesh)
        }
    }

    /// The node's resources, shared with every node of the same view.
    fn resources_for(&self, node: &Node) -> Arc<ResourceSet> {
        let placed =
            matches!(&self.mesh, MeshSource::Mesh(_, _, serving) if serving.placement.is_some());
        let view = View {
            workloads: workloads_of(node),
            node: placed.then(|| node.id.clone()),
        };
        // The map is held only to find the view's slot: streams of other views compile
        // meanwhile, streams of this view wait for the one compiling it.
        let slot = Arc::clone(
            self.compiled
                .lock()
                // A panic while finding a slot leaves the map whole.
                .unwrap_or_else(PoisonError::into_inner)
                .entry(view)
                .or_default(),
        );
        Arc::clone(slot.get_or_init(|| {
            let started = Instant::now();
            let compiled = self.compile_for(node);
            debug!(
                version = self.version,
                resources = compiled.count(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "mesh compiled for a node view"
            );
            Arc::new(compiled)
        }))
    }

    fn compile_for(&self, node: &Node) -> ResourceSet {
        match &self.mesh {
            MeshSource::Mesh(index, registry, serving) => {
                let Some(placement) = &serving.placement else {
                    return compile::compile_served(
                        index,
                        registry,
                        serving,
                        &self.reuse,
                        &workloads_of(node),
                    )
                    .resources;
                };
                // From a cluster: the node is trusted with the workloads of its pods only,
                // and told which pods those are.
                let workloads = workloads_of(node).within(placement.workloads_on(&node.id));
                let mut resources =
                    compile::compile_served(index, registry, serving, &self.reuse, &workloads)
                        .resources;
                let pods = node_pods::to_cluster(placement.pods_on(&node.id));
                resources.insert(CLUSTER, pods.name.clone(), pack_any(pods));
                resources
            }
            MeshSource::Fixed(resources) => resources.clone(),
        }
    }
}

/// The virtual nodes a node agent serves, from its metadata `virtual_nodes: ["mesh/node"]`;
/// without it, every virtual node.
fn workloads_of(node: &Node) -> Workloads {
    let listed = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("virtual_nodes"))
        .and_then(|v| match &v.kind {
            Some(ValueKind::ListValue(list)) => Some(list),
            _ => None,
        });
    match listed {
        Some(list) => Workloads::Only(
            list.values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(ValueKind::StringValue(s)) => {
                        s.split_once('/').map(|(m, n)| (m.to_owned(), n.to_owned()))
                    }
                    _ => None,
                })
                .collect(),
        ),
        None => Workloads::All,
    }
}

/// Counters for operators and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub streams: AtomicU64,
    pub responses: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
}

/// The control plane's publishing side and the gRPC service.
#[derive(Clone)]
pub struct AdsServer {
    published: watch::Receiver<Arc<Published>>,
    stats: Arc<Stats>,
}

/// Publishes new meshes to every stream.
pub struct Publisher {
    sender: watch::Sender<Arc<Published>>,
}

impl Publisher {
    pub fn publish(&mut self, mesh: MeshSource) {
        let next = self.sender.borrow().next(mesh);
        let version = next.version;
        self.sender.send_replace(Arc::new(next));
        info!(version, "mesh published");
    }
}

impl AdsServer {
    pub fn new(initial: MeshSource) -> (Self, Publisher) {
        let (sender, published) = watch::channel(Arc::new(Published::new(1, initial)));
        (
            Self {
                published,
                stats: Arc::default(),
            },
            Publisher { sender },
        )
    }

    /// The mesh as last published.
    pub fn published(&self) -> watch::Receiver<Arc<Published>> {
        self.published.clone()
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            // Large meshes compile to large responses (10k services).
            .max_encoding_message_size(256 * 1024 * 1024)
            .max_decoding_message_size(16 * 1024 * 1024)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let caller = Caller::of(&request);
        let output = self.spawn_session::<sotw::StateOfTheWorld>(caller, request.into_inner());
        Ok(Response::new(Box::pin(output)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let caller = Caller::of(&request);
        let output = self.spawn_session::<delta::Delta>(caller, request.into_inner());
        Ok(Response::new(Box::pin(output)))
    }
}

impl AdsServer {
    /// Runs one stream's session on a task of its own; its responses flow out through a
    /// channel that becomes the gRPC response stream.
    fn spawn_session<P: Protocol>(
        &self,
        caller: Caller,
        requests: Streaming<P::Request>,
    ) -> ReceiverStream<Result<P::Response, Status>> {
        let (sender, receiver) = mpsc::channel(16);
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let session = Session::<P>::new(
            self.published.clone(),
            caller,
            Arc::clone(&self.stats),
            sender.clone(),
        );
        tokio::spawn(async move {
            if let Err(status) = session.run(requests).await {
                debug!(kind = P::NAME, %status, "ADS stream ended");
                // The node hears why (a refused node id, a malformed request) before the
                // stream ends, rather than a bare end of stream.
                let _ = sender.send(Err(status)).await;
            }
        });
        ReceiverStream::new(receiver)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    use mesh_model::source::{self, LoadOptions};

    use super::*;

    fn node(id: &str, virtual_nodes: &[&str]) -> Node {
        let list = virtual_nodes
            .iter()
            .map(|n| Value {
                kind: Some(Kind::StringValue((*n).to_owned())),
            })
            .collect();
        Node {
            id: id.to_owned(),
            metadata: Some(Struct {
                fields: [(
                    "virtual_nodes".to_owned(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue { values: list })),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_serving_the_same_workloads_share_one_compiled_copy() {
        let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
        let loaded = source::load(&[shop], &LoadOptions::default());
        let index = MeshIndex::new(&loaded.resources).unwrap();
        let published = Published::new(
            1,
            MeshSource::Mesh(Arc::new(index), Arc::default(), Serving::default()),
        );
        let one = published.resources_for(&node("node-1", &["shop/web"]));
        let two = published.resources_for(&node("node-2", &["shop/web"]));
        let other = published.resources_for(&node("node-3", &["shop/db"]));
        assert!(one.count() > 0);
        assert!(Arc::ptr_eq(&one, &two), "compiled once, shared");
        assert!(!Arc::ptr_eq(&one, &other));
        assert_ne!(*one, *other);
    }
}
