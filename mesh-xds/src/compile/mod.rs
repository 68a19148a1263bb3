//! Compiling a validated App Mesh mesh to xDS resources for the virtual nodes of one node.
//! The mapping follows the Envoy configuration App Mesh itself generated; docs/appmesh-xds.md
//! lists it field by field.
mod access_log;
mod cluster;
mod gateway;
mod inbound;
mod listener;
mod route;
mod tls;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::{
    pb::{
        envoy::config::{
            accesslog::v3::AccessLog,
            cluster::v3::Cluster,
            core::v3::{
                self as core, AggregatedConfigSource, ApiVersion, ConfigSource, TransportSocket,
                config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
            },
            listener::v3::Listener,
            route::v3::{Route, RouteConfiguration, VirtualHost},
        },
        google::protobuf::{Duration as PbDuration, UInt32Value},
    },
    util::pack_any,
};
use mesh_model::{
    resource::{Resource, Typed},
    types::{
        CreateGatewayRouteInput, CreateMeshInput, CreateRouteInput, CreateVirtualGatewayInput,
        CreateVirtualNodeInput, CreateVirtualRouterInput, CreateVirtualServiceInput, Duration,
        DurationUnit, EgressFilterType, PortProtocol, VirtualGatewayAccessLog,
        VirtualServiceProvider,
    },
};

use crate::{
    names,
    registry::Registry,
    resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet, SECRET},
    secrets::{self, SecretStore},
};

pub use inbound::INBOUND_ADDRESS;
pub use listener::PortPlan;

/// Things compiled around (a target without listeners, an unsupported retry event), each a
/// sentence naming the resource.
pub type Issues = Vec<String>;

#[derive(Debug, thiserror::Error)]
#[error("{resource} does not fit the App Mesh model: {source}")]
pub struct CompileError {
    resource: String,
    source: serde_json::Error,
}

/// The mesh's resources by kind, typed.
#[derive(Default)]
pub struct MeshIndex {
    meshes: BTreeMap<String, CreateMeshInput>,
    nodes: BTreeMap<(String, String), CreateVirtualNodeInput>,
    services: BTreeMap<(String, String), CreateVirtualServiceInput>,
    routers: BTreeMap<(String, String), CreateVirtualRouterInput>,
    routes: BTreeMap<(String, String), Vec<CreateRouteInput>>,
    gateways: BTreeMap<(String, String), CreateVirtualGatewayInput>,
    gateway_routes: BTreeMap<(String, String), Vec<CreateGatewayRouteInput>>,
}

impl MeshIndex {
    /// Indexes validated resources.
    pub fn new(resources: &[Resource]) -> Result<Self, CompileError> {
        let mut index = Self::default();
        for resource in resources {
            let typed = resource.typed().map_err(|source| CompileError {
                resource: resource.label(),
                source,
            })?;
            match typed {
                Typed::Mesh(m) => {
                    index.meshes.insert(m.mesh_name.clone(), m);
                }
                Typed::VirtualNode(n) => {
                    index
                        .nodes
                        .insert((n.mesh_name.clone(), n.virtual_node_name.clone()), n);
                }
                Typed::VirtualService(s) => {
                    index
                        .services
                        .insert((s.mesh_name.clone(), s.virtual_service_name.clone()), s);
                }
                Typed::VirtualRouter(r) => {
                    index
                        .routers
                        .insert((r.mesh_name.clone(), r.virtual_router_name.clone()), r);
                }
                Typed::Route(r) => {
                    index
                        .routes
                        .entry((r.mesh_name.clone(), r.virtual_router_name.clone()))
                        .or_default()
                        .push(r);
                }
                Typed::VirtualGateway(g) => {
                    index
                        .gateways
                        .insert((g.mesh_name.clone(), g.virtual_gateway_name.clone()), g);
                }
                Typed::GatewayRoute(r) => {
                    index
                        .gateway_routes
                        .entry((r.mesh_name.clone(), r.virtual_gateway_name.clone()))
                        .or_default()
                        .push(r);
                }
            }
        }
        // Lower priority value first, routes without one last (as App Mesh orders them).
        for routes in index.routes.values_mut() {
            routes.sort_by_key(|r| (r.spec.priority.unwrap_or(i32::MAX), r.route_name.clone()));
        }
        for routes in index.gateway_routes.values_mut() {
            routes.sort_by_key(|r| {
                (
                    r.spec.priority.unwrap_or(i32::MAX),
                    r.gateway_route_name.clone(),
                )
            });
        }
        Ok(index)
    }

    pub fn virtual_nodes(&self) -> impl Iterator<Item = &(String, String)> {
        self.nodes.keys()
    }

    /// The cluster a weighted target or a provider reaches: the node's listener on `port`,
    /// or its only listener.
    fn target_cluster(&self, mesh: &str, node: &str, port: Option<i32>) -> Option<String> {
        let target = self.nodes.get(&(mesh.to_owned(), node.to_owned()))?;
        let listeners = target.spec.listeners.as_deref().unwrap_or_default();
        let listener = match port {
            Some(port) => listeners.iter().find(|l| l.port_mapping.port == port)?,
            None => listeners.first()?,
        };
        Some(names::cluster(mesh, node, listener.port_mapping.port))
    }
}

/// Which virtual nodes the compiled resources are for.
#[derive(Clone, Debug, Default)]
pub enum Workloads {
    /// Every virtual node of every mesh.
    #[default]
    All,
    /// These `(mesh, virtual node)` pairs only.
    Only(BTreeSet<(String, String)>),
}

impl Workloads {
    fn contains(&self, key: &(String, String)) -> bool {
        match self {
            Workloads::All => true,
            Workloads::Only(set) => set.contains(key),
        }
    }
}

/// Where the node proxy takes outbound traffic in (the redirect's target).
pub const OUTBOUND_ADDRESS: (&str, u32) = ("0.0.0.0", 15001);

pub struct Compiled {
    pub resources: ResourceSet,
    pub issues: Issues,
}

/// The xDS resources `workloads` need: their inbound listeners and local-application
/// clusters, their outbound listeners and routes, their gateways, and the clusters (and EDS
/// assignments, from `registry`) those reach.
pub fn compile(index: &MeshIndex, registry: &Registry, workloads: &Workloads) -> Compiled {
    compile_with_secrets(index, registry, &SecretStore::default(), workloads)
}

/// [`compile`], serving the SDS secrets the compiled TLS contexts name from `secrets`.
pub fn compile_with_secrets(
    index: &MeshIndex,
    registry: &Registry,
    secrets: &SecretStore,
    workloads: &Workloads,
) -> Compiled {
    let mut out = Output::default();
    for (_, node) in index
        .nodes
        .iter()
        .filter(|(key, _)| workloads.contains(key))
    {
        node_resources(index, node, &mut out);
    }
    for (key, gateway) in index
        .gateways
        .iter()
        .filter(|(key, _)| workloads.contains(key))
    {
        gateway_resources(
            index,
            gateway,
            index.gateway_routes.get(key).map(Vec::as_slice),
            &mut out,
        );
    }
    reached_clusters(index, registry, &mut out);
    for name in std::mem::take(&mut out.secrets) {
        match secrets.get(&name) {
            Some(secret) => out.resources.insert(SECRET, name, pack_any(secret.clone())),
            None => out.issues.push(format!(
                "SDS secret {name:?} is named by a TLS context but not in the secrets file; that TLS cannot start until it is"
            )),
        }
    }
    Compiled {
        resources: out.resources,
        issues: out.issues,
    }
}

/// What compiling accumulates: resources, issues, and the clusters routes reach (emitted last,
/// once each).
#[derive(Default)]
struct Output {
    resources: ResourceSet,
    issues: Issues,
    reached: BTreeSet<String>,
    /// cluster -> its copies for particular callers (name -> what the copy changes).
    variants: BTreeMap<String, BTreeMap<String, ClusterVariant>>,
    /// SDS secrets the emitted TLS contexts name.
    secrets: BTreeSet<String>,
}

impl Output {
    fn add_variants(&mut self, variants: Vec<(String, String, ClusterVariant)>) {
        for (variant, cluster, change) in variants {
            self.variants
                .entry(cluster)
                .or_default()
                .insert(variant, change);
        }
    }

    fn listener(&mut self, listener: Listener) {
        for chain in &listener.filter_chains {
            if let Some(socket) = &chain.transport_socket {
                secrets::referenced_by(socket, &mut self.secrets);
            }
        }
        self.resources
            .insert(LISTENER, listener.name.clone(), pack_any(listener));
    }

    fn routes(&mut self, routes: RouteConfiguration) {
        self.resources
            .insert(ROUTE, routes.name.clone(), pack_any(routes));
    }

    fn cluster(&mut self, cluster: Cluster) {
        if let Some(socket) = &cluster.transport_socket {
            secrets::referenced_by(socket, &mut self.secrets);
        }
        self.resources
            .insert(CLUSTER, cluster.name.clone(), pack_any(cluster));
    }
}

/// A virtual node's inbound side, and its outbound listener and routes.
fn node_resources(index: &MeshIndex, node: &CreateVirtualNodeInput, out: &mut Output) {
    let logs = node_access_logs(node);
    let (inbound, local_clusters) = inbound::inbound(node, &mut out.issues);
    if let Some(mut listener) = inbound {
        access_log::attach(&mut listener, &logs);
        out.listener(listener);
    }
    local_clusters.into_iter().for_each(|c| out.cluster(c));
    // A node's own clusters carry its endpoints: the agent tells which local pods are this
    // virtual node by their addresses.
    out.reached
        .extend(node.spec.listeners.iter().flatten().map(|listener| {
            names::cluster(
                &node.mesh_name,
                &node.virtual_node_name,
                listener.port_mapping.port,
            )
        }));
    let outbound = outbound_for(index, node, &mut out.issues);
    out.reached.extend(outbound.clusters);
    out.add_variants(outbound.variants);
    outbound.routes.into_iter().for_each(|r| out.routes(r));
    if let Some(mut listener) = outbound.listener {
        access_log::attach(&mut listener, &logs);
        out.listener(listener);
    }
}

/// The node's access log (App Mesh logs both directions to it).
fn node_access_logs(node: &CreateVirtualNodeInput) -> Vec<AccessLog> {
    match node
        .spec
        .logging
        .as_ref()
        .and_then(|l| l.access_log.as_ref())
    {
        Some(mesh_model::types::AccessLog::File(file)) => {
            vec![access_log::file(&file.path, file.format.as_ref())]
        }
        None => Vec::new(),
    }
}

/// A virtual gateway's ingress tables and its internal table of target services.
fn gateway_resources(
    index: &MeshIndex,
    virtual_gateway: &CreateVirtualGatewayInput,
    gateway_routes: Option<&[CreateGatewayRouteInput]>,
    out: &mut Output,
) {
    let compiled = gateway::gateway(
        virtual_gateway,
        gateway_routes.unwrap_or_default(),
        &mut out.issues,
    );
    let what = format!("VirtualGateway {}", virtual_gateway.virtual_gateway_name);
    let targets = compiled.targets.iter().map(String::as_str);
    let mut hosts = hosts_of(
        index,
        &virtual_gateway.mesh_name,
        targets,
        &what,
        &mut out.issues,
    );
    let pool = gateway_variant(virtual_gateway, &mut out.issues);
    let tls = gateway_tls(virtual_gateway, &mut out.issues);
    let via = format!("via/{}", virtual_gateway.virtual_gateway_name);
    let mut variants = Vec::new();
    // TLS ports first (with the pool too), then the pool alone on the rest: a copy is not
    // copied again.
    if let Some((socket, ports)) = tls {
        let change = ClusterVariant {
            transport_socket: Some(socket),
            ..pool.clone().unwrap_or_default()
        };
        hosts.through_variants(
            &format!("{via}/tls"),
            ports.as_deref(),
            &change,
            &mut variants,
        );
    }
    if let Some(change) = &pool {
        hosts.through_variants(&via, None, change, &mut variants);
    }
    out.add_variants(variants);
    out.reached.extend(hosts.clusters);
    if !hosts.tcp.is_empty() {
        out.issues.push(format!(
            "{what}: gateway routes cannot reach TCP services; those ports are left out"
        ));
    }
    out.routes(RouteConfiguration {
        name: names::gateway_internal(
            &virtual_gateway.mesh_name,
            &virtual_gateway.virtual_gateway_name,
        ),
        virtual_hosts: hosts.http.into_values().flatten().collect(),
        ..Default::default()
    });
    let logs: Vec<AccessLog> = match virtual_gateway
        .spec
        .logging
        .as_ref()
        .and_then(|l| l.access_log.as_ref())
    {
        Some(VirtualGatewayAccessLog::File(file)) => {
            vec![access_log::file(&file.path, file.format.as_ref())]
        }
        None => Vec::new(),
    };
    for mut listener in compiled.listeners {
        access_log::attach(&mut listener, &logs);
        out.listener(listener);
    }
    compiled.routes.into_iter().for_each(|r| out.routes(r));
    compiled.clusters.into_iter().for_each(|c| out.cluster(c));
}

/// What a gateway's listener connection pool and health check change in the clusters it
/// routes to (App Mesh applies them to the gateway's upstream connections). The gateway's
/// internal table is shared by its listeners, so listeners that disagree get neither, with
/// an issue.
fn gateway_variant(
    gateway: &CreateVirtualGatewayInput,
    issues: &mut Issues,
) -> Option<ClusterVariant> {
    let what = format!("VirtualGateway {}", gateway.virtual_gateway_name);
    let mut policies = gateway
        .spec
        .listeners
        .iter()
        .map(|l| (l.connection_pool.as_ref(), l.health_check.as_ref()))
        .filter(|policy| *policy != (None, None));
    let first = policies.next()?;
    if policies.any(|other| other != first) {
        issues.push(format!(
            "{what}: listeners with different connection pools or health checks share the gateway's routes; neither is applied"
        ));
        return None;
    }
    let (pool, health_check) = first;
    let converted = pool
        .map(gateway::as_node_pool)
        .transpose()
        .and_then(|pool| {
            Ok((
                pool,
                health_check
                    .map(gateway::as_node_health_check)
                    .transpose()?,
            ))
        });
    match converted {
        Ok((pool, health_check)) => Some(ClusterVariant {
            transport_socket: None,
            circuit_breakers: pool.as_ref().map(cluster::circuit_breakers),
            health_checks: health_check.iter().map(cluster::health_check).collect(),
        }),
        Err(error) => {
            issues.push(format!(
                "{what}: listener connection pool / health check: {error}"
            ));
            None
        }
    }
}

/// The TLS a gateway originates to its targets (`backendDefaults.clientPolicy.tls`, unless
/// `enforce: false`), and the ports it is limited to.
fn gateway_tls(
    gateway: &CreateVirtualGatewayInput,
    issues: &mut Issues,
) -> Option<(TransportSocket, Option<Vec<i32>>)> {
    let policy = gateway
        .spec
        .backend_defaults
        .as_ref()?
        .client_policy
        .as_ref()?
        .tls
        .as_ref()
        .filter(|tls| tls.enforce != Some(false))?;
    let what = format!(
        "VirtualGateway {} backend defaults",
        gateway.virtual_gateway_name
    );
    let policy = match gateway::as_client_tls(policy) {
        Ok(policy) => policy,
        Err(error) => {
            issues.push(format!("{what}: client policy TLS: {error}"));
            return None;
        }
    };
    let socket = tls::client(&policy, &what, issues)?;
    Some((socket, policy.ports))
}

/// The clusters routes reach (and their EDS assignments), and the passthrough clusters.
fn reached_clusters(index: &MeshIndex, registry: &Registry, out: &mut Output) {
    for node in index.nodes.values() {
        for listener in node.spec.listeners.iter().flatten() {
            let name = names::cluster(
                &node.mesh_name,
                &node.virtual_node_name,
                listener.port_mapping.port,
            );
            let variants: Vec<(String, ClusterVariant)> = out
                .variants
                .get(&name)
                .into_iter()
                .flatten()
                .filter(|(variant, _)| out.reached.contains(*variant))
                .map(|(variant, change)| (variant.clone(), change.clone()))
                .collect();
            if !out.reached.contains(&name) && variants.is_empty() {
                continue;
            }
            let (cluster, assignment) = cluster::for_listener(node, listener, registry);
            for (variant, change) in variants {
                // Same endpoints: an EDS copy keeps the service name of its original.
                out.cluster(change.apply(variant, &cluster));
            }
            if out.reached.contains(&name) {
                out.cluster(cluster);
            }
            if let Some(assignment) = assignment {
                out.resources.insert(ENDPOINT, name, pack_any(assignment));
            }
        }
    }
    for mesh in index.meshes.values() {
        let name = passthrough_cluster(&mesh.mesh_name);
        if out.reached.contains(&name) {
            out.cluster(cluster::passthrough(name));
        }
    }
}

fn passthrough_cluster(mesh: &str) -> String {
    format!("{mesh}/passthrough")
}

/// A node's outbound listener, its route configurations and the clusters they reach.
fn outbound_for(index: &MeshIndex, node: &CreateVirtualNodeInput, issues: &mut Issues) -> Outbound {
    let mesh = &node.mesh_name;
    let caller = &node.virtual_node_name;
    let what = format!("VirtualNode {caller}");
    let defaults = node
        .spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref());
    let mut hosts = Hosts::default();
    let mut variants = Vec::new();
    for backend in node.spec.backends.iter().flatten() {
        let mesh_model::types::Backend::VirtualService(backend) = backend;
        let name = backend.virtual_service_name.as_str();
        let mut service = hosts_of(index, mesh, std::iter::once(name), &what, issues);
        // The backend's own client policy, else the node's backend defaults; enforce: false
        // turns TLS origination off.
        let policy = backend
            .client_policy
            .as_ref()
            .or(defaults)
            .and_then(|p| p.tls.as_ref())
            .filter(|tls| tls.enforce != Some(false));
        if let Some(policy) = policy {
            let Some(socket) = tls::client(policy, &format!("{what} backend {name}"), issues)
            else {
                continue;
            };
            let change = ClusterVariant {
                transport_socket: Some(socket),
                ..Default::default()
            };
            service.through_variants(
                &format!("from/{caller}"),
                policy.ports.as_deref(),
                &change,
                &mut variants,
            );
        }
        hosts.merge(service, &what, issues);
    }
    let Hosts {
        http: http_hosts,
        tcp,
        mut clusters,
    } = hosts;
    let route_configs: Vec<RouteConfiguration> = http_hosts
        .into_iter()
        .map(|(port, virtual_hosts)| RouteConfiguration {
            name: names::outbound_routes(mesh, &node.virtual_node_name, port),
            virtual_hosts,
            ..Default::default()
        })
        .collect();
    let allow_all = index
        .meshes
        .get(mesh)
        .and_then(|m| m.spec.as_ref())
        .and_then(|s| s.egress_filter.as_ref())
        .is_some_and(|f| f.r#type == EgressFilterType::AllowAll);
    let passthrough = allow_all.then(|| passthrough_cluster(mesh));
    clusters.extend(passthrough.clone());
    let mut ports: Vec<(i32, PortPlan)> = route_configs
        .iter()
        .filter_map(|c| {
            let port = c.name.rsplit('/').next()?.parse().ok()?;
            Some((
                port,
                PortPlan::Http {
                    routes: c.name.clone(),
                },
            ))
        })
        .collect();
    ports.extend(tcp.into_iter().map(|(port, targets)| {
        let plan = PortPlan::Tcp {
            clusters: targets.clusters,
            idle_timeout: targets.idle,
        };
        (port, plan)
    }));
    let listener = (!ports.is_empty() || passthrough.is_some()).then(|| {
        listener::outbound(
            names::outbound_listener(mesh, &node.virtual_node_name),
            OUTBOUND_ADDRESS,
            ports,
            passthrough,
        )
    });
    Outbound {
        listener,
        routes: route_configs,
        clusters,
        variants,
    }
}

/// A node's outbound side.
struct Outbound {
    listener: Option<Listener>,
    routes: Vec<RouteConfiguration>,
    /// Clusters its routes reach.
    clusters: BTreeSet<String>,
    /// (variant, cluster, change): clusters this node reaches through TLS origination, as
    /// copies of the cluster with the client's transport socket.
    variants: Vec<(String, String, ClusterVariant)>,
}

/// A copy of a cluster for some callers: a TLS-originating one (a backend's client policy),
/// or a gateway's, with the gateway listener's connection pool and health check.
#[derive(Clone, Default)]
struct ClusterVariant {
    transport_socket: Option<TransportSocket>,
    circuit_breakers: Option<envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers>,
    health_checks: Vec<core::HealthCheck>,
}

impl ClusterVariant {
    /// The copy of `cluster` named `name`, with this variant's changes.
    fn apply(self, name: String, cluster: &Cluster) -> Cluster {
        let base = cluster.clone();
        Cluster {
            name,
            transport_socket: self.transport_socket.or(base.transport_socket),
            circuit_breakers: self.circuit_breakers.or(base.circuit_breakers),
            health_checks: if self.health_checks.is_empty() {
                base.health_checks
            } else {
                self.health_checks
            },
            ..base
        }
    }
}

/// The virtual hosts (HTTP family) and TCP targets of some virtual services, per port, and
/// the clusters they reach: what a node's backends or a gateway's targets route to.
#[derive(Default)]
struct Hosts {
    http: BTreeMap<i32, Vec<VirtualHost>>,
    tcp: BTreeMap<i32, TcpTargets>,
    clusters: BTreeSet<String>,
}

impl Hosts {
    fn merge(&mut self, other: Hosts, what: &str, issues: &mut Issues) {
        for (port, hosts) in other.http {
            self.http.entry(port).or_default().extend(hosts);
        }
        for (port, targets) in other.tcp {
            if self.tcp.insert(port, targets).is_some() {
                issues.push(format!(
                    "{what}: several TCP services on port {port}; TCP cannot tell them apart, the last one wins"
                ));
            }
        }
        self.clusters.extend(other.clusters);
    }

    /// Sends this caller's traffic on `ports` (all when None) through copies of the clusters,
    /// named `cluster/suffix`, changed by `change`; the copies are recorded in `variants`.
    fn through_variants(
        &mut self,
        suffix: &str,
        ports: Option<&[i32]>,
        change: &ClusterVariant,
        variants: &mut Vec<(String, String, ClusterVariant)>,
    ) {
        let mut rename = |cluster: &mut String| {
            // A copy (its name does not end in a port) stays as it is.
            let Some(port) = cluster
                .rsplit('/')
                .next()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                return;
            };
            if ports.is_some_and(|ports| !ports.contains(&port)) {
                return;
            }
            let variant = format!("{cluster}/{suffix}");
            variants.push((variant.clone(), cluster.clone(), change.clone()));
            *cluster = variant;
        };
        for route in self
            .http
            .values_mut()
            .flatten()
            .flat_map(|h| h.routes.iter_mut())
        {
            use envoy_types::pb::envoy::config::route::v3::{
                route::Action, route_action::ClusterSpecifier,
            };
            if let Some(Action::Route(action)) = &mut route.action {
                match &mut action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(name)) => rename(name),
                    Some(ClusterSpecifier::WeightedClusters(weighted)) => weighted
                        .clusters
                        .iter_mut()
                        .for_each(|c| rename(&mut c.name)),
                    _ => {}
                }
            }
        }
        for (name, _) in self.tcp.values_mut().flat_map(|t| t.clusters.iter_mut()) {
            rename(name);
        }
        self.clusters = self
            .http
            .values()
            .flatten()
            .flat_map(|h| h.routes.iter().flat_map(route_clusters))
            .chain(
                self.tcp
                    .values()
                    .flat_map(|t| t.clusters.iter().map(|(name, _)| name.clone())),
            )
            .collect();
    }
}

fn hosts_of<'a>(
    index: &MeshIndex,
    mesh: &str,
    services: impl Iterator<Item = &'a str>,
    what: &str,
    issues: &mut Issues,
) -> Hosts {
    let mut hosts = Hosts {
        http: BTreeMap::new(),
        tcp: BTreeMap::new(),
        clusters: BTreeSet::new(),
    };
    for service_name in services {
        let Some(service) = index
            .services
            .get(&(mesh.to_owned(), service_name.to_owned()))
        else {
            issues.push(format!("{what}: {service_name} is not defined; skipped"));
            continue;
        };
        for (port, protocol, routes, tcp_targets) in service_ports(index, service, issues) {
            if protocol == PortProtocol::Tcp {
                hosts
                    .clusters
                    .extend(tcp_targets.clusters.iter().map(|(c, _)| c.clone()));
                if hosts.tcp.insert(port, tcp_targets).is_some() {
                    issues.push(format!(
                        "{what}: several TCP services on port {port}; TCP cannot tell them apart, the last one wins"
                    ));
                }
                continue;
            }
            hosts
                .clusters
                .extend(routes.iter().flat_map(route_clusters));
            hosts.http.entry(port).or_default().push(VirtualHost {
                name: format!("{service_name}:{port}"),
                domains: vec![service_name.to_owned(), format!("{service_name}:{port}")],
                routes,
                ..Default::default()
            });
        }
    }
    hosts
}

/// Clusters a route sends to.
fn route_clusters(route: &Route) -> Vec<String> {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier,
    };
    match &route.action {
        Some(Action::Route(action)) => match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => vec![name.clone()],
            Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                weighted.clusters.iter().map(|c| c.name.clone()).collect()
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// A port of a virtual service: its number, protocol, HTTP routes and TCP targets.
type ServicePort = (i32, PortProtocol, Vec<Route>, TcpTargets);

/// Where a TCP port's connections go: weighted clusters, and the route's idle timeout.
#[derive(Clone, Default)]
struct TcpTargets {
    clusters: Vec<(String, u32)>,
    idle: Option<PbDuration>,
}

/// A service's ports, from its provider.
fn service_ports(
    index: &MeshIndex,
    service: &CreateVirtualServiceInput,
    issues: &mut Issues,
) -> Vec<ServicePort> {
    let mesh = &service.mesh_name;
    match &service.spec.provider {
        Some(VirtualServiceProvider::VirtualNode(provider)) => {
            let Some(node) = index
                .nodes
                .get(&(mesh.clone(), provider.virtual_node_name.clone()))
            else {
                return Vec::new();
            };
            node.spec
                .listeners
                .iter()
                .flatten()
                .map(|l| {
                    let port = l.port_mapping.port;
                    let cluster = names::cluster(mesh, &provider.virtual_node_name, port);
                    let route = route::to_cluster(&service.virtual_service_name, cluster.clone());
                    let tcp = TcpTargets {
                        clusters: vec![(cluster, 1)],
                        idle: None,
                    };
                    (port, l.port_mapping.protocol, vec![route], tcp)
                })
                .collect()
        }
        Some(VirtualServiceProvider::VirtualRouter(provider)) => {
            let key = (mesh.clone(), provider.virtual_router_name.clone());
            let Some(router) = index.routers.get(&key) else {
                return Vec::new();
            };
            let app_routes = index
                .routes
                .get(&key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            router
                .spec
                .listeners
                .iter()
                .flatten()
                .map(|l| {
                    let port = l.port_mapping.port;
                    let protocol = l.port_mapping.protocol;
                    let fits = |r: &&CreateRouteInput| match protocol {
                        PortProtocol::Http => r.spec.http_route.is_some(),
                        PortProtocol::Http2 => r.spec.http2_route.is_some(),
                        PortProtocol::Grpc => r.spec.grpc_route.is_some(),
                        PortProtocol::Tcp => r.spec.tcp_route.is_some(),
                    };
                    let fitting: Vec<&CreateRouteInput> = app_routes.iter().filter(fits).collect();
                    let http: Vec<_> = fitting
                        .iter()
                        .filter_map(|r| route::routes(index, r, port, issues))
                        .collect();
                    let tcp_routes: Vec<_> = fitting
                        .iter()
                        .filter_map(|r| r.spec.tcp_route.as_ref().map(|t| (r, t)))
                        .filter(|(_, t)| {
                            t.r#match
                                .as_ref()
                                .and_then(|m| m.port)
                                .is_none_or(|p| p == port)
                        })
                        .collect();
                    let idle = tcp_routes
                        .iter()
                        .find_map(|(_, t)| t.timeout.as_ref()?.idle.as_ref().and_then(duration));
                    let clusters = tcp_routes
                        .iter()
                        .flat_map(|(r, t)| {
                            t.action.weighted_targets.iter().filter_map(|target| {
                                let cluster = index.target_cluster(
                                    &r.mesh_name,
                                    &target.virtual_node,
                                    target.port,
                                )?;
                                Some((cluster, target.weight.max(0) as u32))
                            })
                        })
                        .collect();
                    (port, protocol, http, TcpTargets { clusters, idle })
                })
                .collect()
        }
        None => Vec::new(),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn socket_address(host: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn u32_value(value: i64) -> Option<UInt32Value> {
    u32::try_from(value).ok().map(|value| UInt32Value { value })
}

/// An App Mesh duration (`{"unit": "s", "value": 15}`); none when it has no value.
fn duration(d: &Duration) -> Option<PbDuration> {
    let value = d.value?;
    Some(match d.unit.unwrap_or(DurationUnit::Ms) {
        DurationUnit::S => PbDuration {
            seconds: value,
            nanos: 0,
        },
        DurationUnit::Ms => millis(value),
    })
}

fn millis(value: i64) -> PbDuration {
    PbDuration {
        seconds: value / 1000,
        nanos: ((value % 1000) * 1_000_000) as i32,
    }
}
