//! The virtual hosts and TCP targets of virtual services, per port — what a node's backends
//! or a gateway's targets route to — and the clusters they reach.
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use bytes::Bytes;
use envoy_types::pb::{
    envoy::config::route::v3::{Route, VirtualHost},
    google::protobuf::Duration as PbDuration,
};
use mesh_model::types::{
    CreateRouteInput, CreateVirtualServiceInput, PortProtocol, VirtualServiceProvider,
};
use mesh_xds::names;
use prost::Message;

use super::{Issues, index::Lookup, route, values::duration, variant::ClusterVariant};

/// The virtual hosts (HTTP family) and TCP targets of some virtual services, per port, and
/// the clusters they reach: what a node's backends or a gateway's targets route to. The
/// virtual hosts are built (`VirtualHost`) or already encoded (`Bytes`, as compiles reused
/// keep them).
#[derive(Clone)]
pub(super) struct Hosts<H = VirtualHost> {
    pub(super) http: BTreeMap<i32, Vec<H>>,
    pub(super) tcp: BTreeMap<i32, TcpTargets>,
    pub(super) clusters: HashSet<String>,
}

impl<H> Default for Hosts<H> {
    fn default() -> Self {
        Self {
            http: BTreeMap::new(),
            tcp: BTreeMap::new(),
            clusters: HashSet::new(),
        }
    }
}

impl<H: Clone> Hosts<H> {
    /// Adds `other`'s hosts, TCP targets and clusters (encoded hosts are shared, not copied).
    pub(super) fn merge(&mut self, other: &Hosts<H>, what: &str, issues: &mut Issues) {
        for (port, hosts) in &other.http {
            self.http
                .entry(*port)
                .or_default()
                .extend(hosts.iter().cloned());
        }
        for (port, targets) in &other.tcp {
            if self.tcp.insert(*port, targets.clone()).is_some() {
                issues.push(format!(
                    "{what}: several TCP services on port {port}; TCP cannot tell them apart, the last one wins"
                ));
            }
        }
        self.clusters.extend(other.clusters.iter().cloned());
    }
}

impl Hosts {
    /// These hosts with each virtual host encoded.
    pub(super) fn encoded(self) -> Hosts<Bytes> {
        let http = self
            .http
            .into_iter()
            .map(|(port, hosts)| {
                let hosts = hosts
                    .iter()
                    .map(|h| Bytes::from(h.encode_to_vec()))
                    .collect();
                (port, hosts)
            })
            .collect();
        Hosts {
            http,
            tcp: self.tcp,
            clusters: self.clusters,
        }
    }

    /// Sends this caller's traffic on `ports` (all when None) through copies of the clusters,
    /// named by `copy_name` (one of the copy forms of [`names`]), changed by `change`; the
    /// copies are recorded in `variants`.
    pub(super) fn through_variants(
        &mut self,
        copy_name: impl Fn(&str) -> String,
        ports: Option<&[i32]>,
        change: &ClusterVariant,
        variants: &mut Vec<(String, String, ClusterVariant)>,
    ) {
        self.through_variants_by(copy_name, ports, |_| Some(change.clone()), variants);
    }

    /// [`Self::through_variants`] with a change per cluster; a cluster `change` gives none
    /// for stays as it is.
    pub(super) fn through_variants_by(
        &mut self,
        copy_name: impl Fn(&str) -> String,
        ports: Option<&[i32]>,
        change: impl Fn(&str) -> Option<ClusterVariant>,
        variants: &mut Vec<(String, String, ClusterVariant)>,
    ) {
        let mut rename = |cluster: &mut String| {
            // A copy (its name does not end in a port) stays as it is.
            let Some(port) = names::cluster_port(cluster) else {
                return;
            };
            if ports.is_some_and(|ports| !ports.contains(&port)) {
                return;
            }
            let Some(change) = change(cluster) else {
                return;
            };
            let variant = copy_name(cluster);
            variants.push((variant.clone(), cluster.clone(), change));
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

pub(super) fn hosts_of<'a>(
    index: &dyn Lookup,
    mesh: &str,
    services: impl Iterator<Item = &'a str>,
    what: &str,
    issues: &mut Issues,
) -> Hosts {
    let mut hosts = Hosts::default();
    for service_name in services {
        let Some(service) = index.service(mesh, service_name) else {
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
pub(super) struct TcpTargets {
    /// The virtual service these targets serve (its name is what its clients resolve).
    pub(super) service: String,
    pub(super) clusters: Vec<(String, u32)>,
    pub(super) idle: Option<PbDuration>,
}

/// A service's ports, from its provider.
fn service_ports(
    index: &dyn Lookup,
    service: &CreateVirtualServiceInput,
    issues: &mut Issues,
) -> Vec<ServicePort> {
    let mesh = &service.mesh_name;
    match &service.spec.provider {
        Some(VirtualServiceProvider::VirtualNode(provider)) => {
            let Some(node) = index.node(mesh, &provider.virtual_node_name) else {
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
                        service: service.virtual_service_name.clone(),
                        clusters: vec![(cluster, 1)],
                        idle: None,
                    };
                    (port, l.port_mapping.protocol, vec![route], tcp)
                })
                .collect()
        }
        Some(VirtualServiceProvider::VirtualRouter(provider)) => {
            let router_name = &provider.virtual_router_name;
            let Some(router) = index.router(mesh, router_name) else {
                return Vec::new();
            };
            let app_routes = index.routes(mesh, router_name);
            router
                .spec
                .listeners
                .iter()
                .flatten()
                .map(|l| {
                    let port = l.port_mapping.port;
                    let protocol = l.port_mapping.protocol;
                    let fits = |r: &&Arc<CreateRouteInput>| match protocol {
                        PortProtocol::Http => r.spec.http_route.is_some(),
                        PortProtocol::Http2 => r.spec.http2_route.is_some(),
                        PortProtocol::Grpc => r.spec.grpc_route.is_some(),
                        PortProtocol::Tcp => r.spec.tcp_route.is_some(),
                    };
                    let fitting: Vec<&Arc<CreateRouteInput>> =
                        app_routes.iter().filter(fits).collect();
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
                    let tcp = TcpTargets {
                        service: service.virtual_service_name.clone(),
                        clusters,
                        idle,
                    };
                    (port, protocol, http, tcp)
                })
                .collect()
        }
        None => Vec::new(),
    }
}
