//! The mesh's resources by kind, typed: what every compiler looks things up in.
use std::{collections::BTreeMap, sync::Arc};

use mesh_model::{
    resource::{Resource, Typed},
    types::{
        CreateGatewayRouteInput, CreateMeshInput, CreateRouteInput, CreateVirtualGatewayInput,
        CreateVirtualNodeInput, CreateVirtualRouterInput, CreateVirtualServiceInput,
        ServiceDiscovery,
    },
};
use mesh_xds::names;

#[derive(Debug, thiserror::Error)]
#[error("{resource} does not fit the App Mesh model: {source}")]
pub struct CompileError {
    resource: String,
    source: serde_json::Error,
}

/// A validated resource as its typed create request.
pub fn typed(resource: &Resource) -> Result<Typed, CompileError> {
    resource.typed().map_err(|source| CompileError {
        resource: resource.label(),
        source,
    })
}

/// A typed resource as indexes hold it: shared, so that the indexes of successive meshes
/// and what keeps the files' resources (`mesh_files`) hold one copy of each.
#[derive(Clone, Debug)]
pub enum Indexed {
    Mesh(Arc<CreateMeshInput>),
    VirtualNode(Arc<CreateVirtualNodeInput>),
    VirtualService(Arc<CreateVirtualServiceInput>),
    VirtualRouter(Arc<CreateVirtualRouterInput>),
    Route(Arc<CreateRouteInput>),
    VirtualGateway(Arc<CreateVirtualGatewayInput>),
    GatewayRoute(Arc<CreateGatewayRouteInput>),
}

impl From<Typed> for Indexed {
    fn from(typed: Typed) -> Self {
        match typed {
            Typed::Mesh(r) => Indexed::Mesh(Arc::new(r)),
            Typed::VirtualNode(r) => Indexed::VirtualNode(Arc::new(r)),
            Typed::VirtualService(r) => Indexed::VirtualService(Arc::new(r)),
            Typed::VirtualRouter(r) => Indexed::VirtualRouter(Arc::new(r)),
            Typed::Route(r) => Indexed::Route(Arc::new(r)),
            Typed::VirtualGateway(r) => Indexed::VirtualGateway(Arc::new(r)),
            Typed::GatewayRoute(r) => Indexed::GatewayRoute(Arc::new(r)),
        }
    }
}

/// The mesh's resources by kind, typed.
#[derive(Default)]
pub struct MeshIndex {
    pub(super) meshes: BTreeMap<String, Arc<CreateMeshInput>>,
    pub(super) nodes: BTreeMap<(String, String), Arc<CreateVirtualNodeInput>>,
    pub(super) services: BTreeMap<(String, String), Arc<CreateVirtualServiceInput>>,
    pub(super) routers: BTreeMap<(String, String), Arc<CreateVirtualRouterInput>>,
    pub(super) routes: BTreeMap<(String, String), Vec<Arc<CreateRouteInput>>>,
    pub(super) gateways: BTreeMap<(String, String), Arc<CreateVirtualGatewayInput>>,
    pub(super) gateway_routes: BTreeMap<(String, String), Vec<Arc<CreateGatewayRouteInput>>>,
}

impl MeshIndex {
    /// Indexes validated resources.
    pub fn new(resources: &[Resource]) -> Result<Self, CompileError> {
        let typed = resources
            .iter()
            .map(|r| typed(r).map(Indexed::from))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_typed(typed))
    }

    /// Indexes validated resources, typed.
    pub fn from_typed(resources: impl IntoIterator<Item = Indexed>) -> Self {
        let mut index = Self::default();
        for typed in resources {
            match typed {
                Indexed::Mesh(m) => {
                    index.meshes.insert(m.mesh_name.clone(), m);
                }
                Indexed::VirtualNode(n) => {
                    index
                        .nodes
                        .insert((n.mesh_name.clone(), n.virtual_node_name.clone()), n);
                }
                Indexed::VirtualService(s) => {
                    index
                        .services
                        .insert((s.mesh_name.clone(), s.virtual_service_name.clone()), s);
                }
                Indexed::VirtualRouter(r) => {
                    index
                        .routers
                        .insert((r.mesh_name.clone(), r.virtual_router_name.clone()), r);
                }
                Indexed::Route(r) => {
                    index
                        .routes
                        .entry((r.mesh_name.clone(), r.virtual_router_name.clone()))
                        .or_default()
                        .push(r);
                }
                Indexed::VirtualGateway(g) => {
                    index
                        .gateways
                        .insert((g.mesh_name.clone(), g.virtual_gateway_name.clone()), g);
                }
                Indexed::GatewayRoute(r) => {
                    index
                        .gateway_routes
                        .entry((r.mesh_name.clone(), r.virtual_gateway_name.clone()))
                        .or_default()
                        .push(r);
                }
            }
        }
        index.inherit_ip_preference();
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
        index
    }

    /// App Mesh applies the mesh's `serviceDiscovery.ipPreference` to every virtual node
    /// whose service discovery does not set its own: done once here, so every compiler
    /// reads the node's effective preference.
    fn inherit_ip_preference(&mut self) {
        for ((mesh, _), node) in &mut self.nodes {
            let Some(preference) = self
                .meshes
                .get(mesh)
                .and_then(|m| m.spec.as_ref())
                .and_then(|s| s.service_discovery.as_ref())
                .and_then(|d| d.ip_preference)
            else {
                continue;
            };
            let own = |node: &CreateVirtualNodeInput| match &node.spec.service_discovery {
                Some(ServiceDiscovery::Dns(dns)) => Some(dns.ip_preference),
                Some(ServiceDiscovery::AwsCloudMap(cloud_map)) => Some(cloud_map.ip_preference),
                None => None,
            };
            // Copied only when it inherits (the shared copy stays as its file says).
            if own(node) != Some(None) {
                continue;
            }
            match &mut Arc::make_mut(node).spec.service_discovery {
                Some(ServiceDiscovery::Dns(dns)) => dns.ip_preference = Some(preference),
                Some(ServiceDiscovery::AwsCloudMap(cloud_map)) => {
                    cloud_map.ip_preference = Some(preference)
                }
                None => {}
            }
        }
    }

    /// Whether `mesh` has a virtual node or a virtual gateway called `name`.
    pub fn has_node_or_gateway(&self, mesh: &str, name: &str) -> bool {
        let key = (mesh.to_owned(), name.to_owned());
        self.nodes.contains_key(&key) || self.gateways.contains_key(&key)
    }

    pub fn virtual_nodes(&self) -> impl Iterator<Item = &(String, String)> {
        self.nodes.keys()
    }

    /// Whether a workload as the data plane names it (`mesh/node`, `mesh/gateway/name`) is a
    /// virtual node or gateway of this mesh.
    pub fn has_workload(&self, workload: &str) -> bool {
        match workload.split('/').collect::<Vec<_>>().as_slice() {
            [mesh, node] => self.nodes.contains_key(&((*mesh).into(), (*node).into())),
            [mesh, "gateway", name] => self
                .gateways
                .contains_key(&((*mesh).into(), (*name).into())),
            _ => false,
        }
    }
}

/// What compiling a virtual service's hosts reads of the mesh: one resource at a time, so
/// that a compile can be recorded (`reads::Recording`) and its result reused while what it read
/// is unchanged.
pub trait Lookup {
    fn node(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualNodeInput>>;
    fn service(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualServiceInput>>;
    fn router(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualRouterInput>>;
    /// A router's routes, in the order they are matched.
    fn routes(&self, mesh: &str, router: &str) -> &[Arc<CreateRouteInput>];

    /// Whether virtual node `node`'s listener on `port` has TLS settings of its own; None
    /// when there is no such listener.
    fn listener_tls(&self, mesh: &str, node: &str, port: i32) -> Option<bool> {
        let node = self.node(mesh, node)?;
        let listener = node
            .spec
            .listeners
            .iter()
            .flatten()
            .find(|l| l.port_mapping.port == port)?;
        Some(listener.tls.is_some())
    }

    /// The cluster a weighted target or a provider reaches: the node's listener on `port`,
    /// or its only listener.
    fn target_cluster(&self, mesh: &str, node: &str, port: Option<i32>) -> Option<String> {
        let target = self.node(mesh, node)?;
        let listeners = target.spec.listeners.as_deref().unwrap_or_default();
        let listener = match port {
            Some(port) => listeners.iter().find(|l| l.port_mapping.port == port)?,
            None => listeners.first()?,
        };
        Some(names::cluster(mesh, node, listener.port_mapping.port))
    }
}

fn key(mesh: &str, name: &str) -> (String, String) {
    (mesh.to_owned(), name.to_owned())
}

impl Lookup for MeshIndex {
    fn node(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualNodeInput>> {
        self.nodes.get(&key(mesh, name))
    }

    fn service(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualServiceInput>> {
        self.services.get(&key(mesh, name))
    }

    fn router(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualRouterInput>> {
        self.routers.get(&key(mesh, name))
    }

    fn routes(&self, mesh: &str, router: &str) -> &[Arc<CreateRouteInput>] {
        self.routes
            .get(&key(mesh, router))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use mesh_model::{
        resource::{Format, Kind, Origin, Resource},
        types::IpPreference,
    };
    use serde_json::json;

    use super::*;

    fn resource(kind: Kind, body: serde_json::Value) -> Resource {
        Resource {
            kind,
            body: body.as_object().unwrap().clone(),
            origin: Origin {
                file: "m.json".into(),
                line: None,
            },
            format: Format::ApiJson,
        }
    }

    fn node(name: &str, discovery: serde_json::Value) -> Resource {
        resource(
            Kind::VirtualNode,
            json!({"meshName": "m", "virtualNodeName": name, "spec": {"serviceDiscovery": discovery}}),
        )
    }

    fn preference(index: &MeshIndex, name: &str) -> Option<IpPreference> {
        match &index.nodes[&("m".to_owned(), name.to_owned())]
            .spec
            .service_discovery
        {
            Some(ServiceDiscovery::Dns(dns)) => dns.ip_preference,
            Some(ServiceDiscovery::AwsCloudMap(cloud_map)) => cloud_map.ip_preference,
            None => None,
        }
    }

    #[test]
    fn nodes_inherit_the_mesh_ip_preference_unless_they_set_their_own() {
        let index = MeshIndex::new(&[
            resource(
                Kind::Mesh,
                json!({"meshName": "m", "spec": {"serviceDiscovery": {"ipPreference": "IPv6_ONLY"}}}),
            ),
            node("dns", json!({"dns": {"hostname": "a.local"}})),
            node(
                "map",
                json!({"awsCloudMap": {"namespaceName": "ns", "serviceName": "s"}}),
            ),
            node(
                "own",
                json!({"dns": {"hostname": "b.local", "ipPreference": "IPv4_ONLY"}}),
            ),
        ])
        .unwrap();
        assert_eq!(preference(&index, "dns"), Some(IpPreference::Ipv6Only));
        assert_eq!(preference(&index, "map"), Some(IpPreference::Ipv6Only));
        assert_eq!(preference(&index, "own"), Some(IpPreference::Ipv4Only));
    }
}
