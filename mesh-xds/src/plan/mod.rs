//! The node proxy's plan: xDS resources decoded once into what the data plane evaluates per
//! connection and request — outbound listeners per virtual node, route tables, clusters and
//! their endpoints. Building a plan is also how the xDS client checks a resource: whatever
//! does not convert is NACKed with the reason, naming the resource and field.
pub mod access_log;
pub mod cluster;
pub mod listener;
pub mod node_pods;
pub mod reuse;
pub mod route;
pub mod tls;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        },
        extensions::transport_sockets::tls::v3::Secret,
    },
    google::protobuf::{Any, Duration as PbDuration},
};
use prost::Message;

pub use access_log::AccessLogPlan;
pub use cluster::ClusterPlan;
pub use listener::{
    AccessLogs, HttpPlan, InboundPlan, InboundPort, OutboundPlan, PortPlan, TlsChain,
};
pub use reuse::Planner;
pub use route::RouteTable;

use crate::resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet, SECRET};
use node_pods::{NODE_PODS, NodePod};

/// Why a resource cannot be applied: the field path inside the resource and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub field: String,
    pub reason: String,
}

impl PlanError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, one level further out (`outer.field`).
    pub fn within(mut self, outer: impl fmt::Display) -> Self {
        self.field = format!("{outer}.{}", self.field);
        self
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for PlanError {}

pub(crate) fn duration(d: &PbDuration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}

/// Everything the proxy applies, from one accepted xDS state.
#[derive(Debug, Default)]
pub struct NodePlan {
    /// By virtual node (`mesh/name`).
    pub outbound: HashMap<String, OutboundPlan>,
    /// By virtual node.
    pub inbound: HashMap<String, InboundPlan>,
    /// Virtual gateways' listener ports, by gateway (`mesh/gateway/name`) and port.
    pub gateways: HashMap<String, BTreeMap<u16, InboundPort>>,
    /// Internal listeners (a gateway's second table), by name.
    pub internal: HashMap<String, HttpPlan>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    pub clusters: HashMap<String, Arc<ClusterPlan>>,
    /// EDS assignments by service name: IP endpoints.
    pub endpoints: HashMap<String, Vec<SocketAddr>>,
    /// SDS secrets by name.
    pub secrets: HashMap<String, tls::SecretPlan>,
    /// The pods on this node, when the control plane lists them (Kubernetes).
    pub node_pods: Option<Vec<NodePod>>,
}

/// One decoded resource.
pub enum Planned {
    Cluster(Arc<ClusterPlan>),
    Listener(Box<listener::ListenerPlan>),
    Routes(Arc<RouteTable>),
    Endpoints(String, Vec<SocketAddr>),
    /// An SDS secret: a certificate with its key, or trusted CAs.
    Secret(tls::SecretPlan),
    /// The pods on the node ([`node_pods`]).
    NodePods(Vec<NodePod>),
}

impl Planned {
    /// Decodes and converts one resource; its name, or why it cannot be applied
    /// (`kind name: field: reason`).
    pub fn from_any(any: &Any) -> Result<(String, Self), ResourceError> {
        fn decode<M: Message + Default>(any: &Any) -> Result<M, ResourceError> {
            M::decode(any.value.as_slice()).map_err(|source| ResourceError::Decode {
                type_url: any.type_url.clone(),
                source,
            })
        }
        match any.type_url.as_str() {
            CLUSTER => {
                let cluster: Cluster = decode(any)?;
                if cluster.name.is_empty() {
                    return Err(ResourceError::UnnamedCluster);
                }
                if cluster.name == NODE_PODS {
                    let pods = node_pods::from_cluster(&cluster).map_err(|source| {
                        ResourceError::Cluster {
                            name: cluster.name.clone(),
                            source,
                        }
                    })?;
                    return Ok((cluster.name, Self::NodePods(pods)));
                }
                let plan =
                    ClusterPlan::from_proto(&cluster).map_err(|source| ResourceError::Cluster {
                        name: cluster.name.clone(),
                        source,
                    })?;
                Ok((cluster.name, Self::Cluster(Arc::new(plan))))
            }
            LISTENER => {
                let listener: Listener = decode(any)?;
                let plan = listener::ListenerPlan::from_proto(&listener).map_err(|source| {
                    ResourceError::Listener {
                        name: listener.name.clone(),
                        source,
                    }
                })?;
                Ok((listener.name, Self::Listener(Box::new(plan))))
            }
            ROUTE => {
                let table = reuse::route_table(any, None)?;
                Ok((table.name.clone(), Self::Routes(Arc::new(table))))
            }
            ENDPOINT => {
                let assignment: ClusterLoadAssignment = decode(any)?;
                if assignment.cluster_name.is_empty() {
                    return Err(ResourceError::UnnamedAssignment);
                }
                let endpoints = cluster::ip_endpoints(Some(&assignment)).map_err(|source| {
                    ResourceError::Assignment {
                        cluster: assignment.cluster_name.clone(),
                        source,
                    }
                })?;
                Ok((
                    assignment.cluster_name.clone(),
                    Self::Endpoints(assignment.cluster_name, endpoints),
                ))
            }
            SECRET => {
                let secret: Secret = decode(any)?;
                if secret.name.is_empty() {
                    return Err(ResourceError::UnnamedSecret);
                }
                let plan = tls::SecretPlan::from_secret(&secret).map_err(|source| {
                    ResourceError::Secret {
                        name: secret.name.clone(),
                        source,
                    }
                })?;
                Ok((secret.name, Self::Secret(plan)))
            }
            other => Err(ResourceError::UnsupportedType(other.to_owned())),
        }
    }
}

/// Why one resource cannot be applied (`kind name: field: reason`); the xDS client NACKs
/// with this text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResourceError {
    #[error("does not decode as {type_url}: {source}")]
    Decode {
        type_url: String,
        source: prost::DecodeError,
    },
    #[error("cluster without a name")]
    UnnamedCluster,
    #[error("cluster {name}: {source}")]
    Cluster { name: String, source: PlanError },
    #[error("listener {name}: {source}")]
    Listener { name: String, source: PlanError },
    #[error("route configuration {name}: {source}")]
    Routes { name: String, source: PlanError },
    #[error("cluster load assignment without cluster_name")]
    UnnamedAssignment,
    #[error("cluster load assignment {cluster}: {source}")]
    Assignment { cluster: String, source: PlanError },
    #[error("secret without a name")]
    UnnamedSecret,
    #[error("secret {name}: {source}")]
    Secret { name: String, source: PlanError },
    #[error("resource type {0} is not supported")]
    UnsupportedType(String),
}

impl NodePlan {
    /// The plan of an accepted state, planned from scratch ([`Planner`] plans one from the
    /// last); resources that do not convert are skipped with their error returned.
    pub fn from_resources(resources: &ResourceSet) -> (Self, Vec<ResourceError>) {
        Planner::default().plan(resources)
    }

    /// Adds one planned resource.
    fn add(&mut self, name: String, planned: Planned) {
        match planned {
            Planned::Cluster(cluster) => {
                self.clusters.insert(name, cluster);
            }
            Planned::Listener(listener) => {
                let listener = *listener;
                for table in listener.inline_routes {
                    self.routes.insert(table.name.clone(), Arc::new(table));
                }
                if let Some(outbound) = listener.outbound {
                    self.outbound
                        .insert(outbound.virtual_node.clone(), outbound);
                }
                if let Some(inbound) = listener.inbound {
                    self.inbound.insert(inbound.virtual_node.clone(), inbound);
                }
                if let Some(port) = listener.gateway {
                    self.gateways
                        .entry(port.gateway)
                        .or_default()
                        .insert(port.port, port.chains);
                }
                if let Some((name, internal)) = listener.internal {
                    self.internal.insert(name, internal);
                }
            }
            Planned::Routes(table) => {
                self.routes.insert(name, table);
            }
            Planned::Endpoints(_, endpoints) => {
                self.endpoints.insert(name, endpoints);
            }
            Planned::Secret(secret) => {
                self.secrets.insert(name, secret);
            }
            Planned::NodePods(pods) => self.node_pods = Some(pods),
        }
    }
}
