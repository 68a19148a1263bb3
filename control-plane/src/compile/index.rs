//! The mesh's resources by kind, typed: what every compiler looks things up in.
use std::{cmp::Ordering, sync::Arc};

use equivalent::{Comparable, Equivalent};
use imbl::OrdMap;

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

/// Resources keyed by `(mesh, name)` (routes by their router's or gateway's). Persistent
/// maps: a copy shares every node with the original, and an update copies only the path to
/// what it changes, so the control plane keeps one index and updates it as files change, each
/// published mesh is a copy of it, and two meshes' differences are found without walking what
/// they share ([`super::reads::Changes`]).
pub(super) type ByName<V> = OrdMap<(String, String), V>;

/// The mesh's resources by kind, typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshIndex {
    pub(super) meshes: OrdMap<String, Arc<CreateMeshInput>>,
    pub(super) nodes: ByName<Arc<CreateVirtualNodeInput>>,
    pub(super) services: ByName<Arc<CreateVirtualServiceInput>>,
    pub(super) routers: ByName<Arc<CreateVirtualRouterInput>>,
    pub(super) routes: ByName<Vec<Arc<CreateRouteInput>>>,
    pub(super) gateways: ByName<Arc<CreateVirtualGatewayInput>>,
    pub(super) gateway_routes: ByName<Vec<Arc<CreateGatewayRouteInput>>>,
}

/// A `(mesh, name)` key borrowed: looks an index up without building its owned key.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Name<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for Name<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl Comparable<(String, String)> for Name<'_> {
    fn compare(&self, key: &(String, String)) -> Ordering {
        (self.0, self.1).cmp(&(key.0.as_str(), key.1.as_str()))
    }
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
        // Meshes first: a node inherits its mesh's settings as it is put in.
        let (meshes, others): (Vec<_>, Vec<_>) = resources
            .into_iter()
            .partition(|r| matches!(r, Indexed::Mesh(_)));
        for resource in meshes.into_iter().chain(others) {
            index.insert(resource);
        }
        index
    }

    /// Puts a validated resource in: in place of the one of the same name, except a route or
    /// gateway route, which joins its router's or gateway's list (a changed one is taken out
    /// first, [`Self::remove`]). A virtual node inherits what its mesh (already in) sets for
    /// it: a mesh put in or taken out after its nodes is not applied to them, so a change of
    /// meshes indexes everything again.
    pub fn insert(&mut self, resource: Indexed) {
        match resource {
            Indexed::Mesh(m) => {
                self.meshes.insert(m.mesh_name.clone(), m);
            }
            Indexed::VirtualNode(mut n) => {
                self.inherit_ip_preference(&mut n);
                self.nodes
                    .insert((n.mesh_name.clone(), n.virtual_node_name.clone()), n);
            }
            Indexed::VirtualService(s) => {
                self.services
                    .insert((s.mesh_name.clone(), s.virtual_service_name.clone()), s);
            }
            Indexed::VirtualRouter(r) => {
                self.routers
                    .insert((r.mesh_name.clone(), r.virtual_router_name.clone()), r);
            }
            Indexed::Route(r) => {
                let key = (r.mesh_name.clone(), r.virtual_router_name.clone());
                insert_ordered(self.routes.entry(key).or_default(), r, route_order);
            }
            Indexed::VirtualGateway(g) => {
                self.gateways
                    .insert((g.mesh_name.clone(), g.virtual_gateway_name.clone()), g);
            }
            Indexed::GatewayRoute(r) => {
                let key = (r.mesh_name.clone(), r.virtual_gateway_name.clone());
                insert_ordered(
                    self.gateway_routes.entry(key).or_default(),
                    r,
                    gateway_route_order,
                );
            }
        }
    }

    /// Takes the resource of `resource`'s kind and name out.
    pub fn remove(&mut self, resource: &Indexed) {
        match resource {
            Indexed::Mesh(m) => {
                self.meshes.remove(m.mesh_name.as_str());
            }
            Indexed::VirtualNode(n) => {
                self.nodes.remove(&Name(&n.mesh_name, &n.virtual_node_name));
            }
            Indexed::VirtualService(s) => {
                self.services
                    .remove(&Name(&s.mesh_name, &s.virtual_service_name));
            }
            Indexed::VirtualRouter(r) => {
                self.routers
                    .remove(&Name(&r.mesh_name, &r.virtual_router_name));
            }
            Indexed::Route(r) => remove_named(
                &mut self.routes,
                Name(&r.mesh_name, &r.virtual_router_name),
                |kept| kept.route_name == r.route_name,
            ),
            Indexed::VirtualGateway(g) => {
                self.gateways
                    .remove(&Name(&g.mesh_name, &g.virtual_gateway_name));
            }
            Indexed::GatewayRoute(r) => remove_named(
                &mut self.gateway_routes,
                Name(&r.mesh_name, &r.virtual_gateway_name),
                |kept| kept.gateway_route_name == r.gateway_route_name,
            ),
        }
    }

    /// App Mesh applies the mesh's `serviceDiscovery.ipPreference` to every virtual node
    /// whose service discovery does not set its own: done as a node is indexed, so every
    /// compiler reads the node's effective preference.
    fn inherit_ip_preference(&self, node: &mut Arc<CreateVirtualNodeInput>) {
        let Some(preference) = self
            .meshes
            .get(node.mesh_name.as_str())
            .and_then(|m| m.spec.as_ref())
            .and_then(|s| s.service_discovery.as_ref())
            .and_then(|d| d.ip_preference)
        else {
            return;
        };
        let own = match &node.spec.service_discovery {
            Some(ServiceDiscovery::Dns(dns)) => Some(dns.ip_preference),
            Some(ServiceDiscovery::AwsCloudMap(cloud_map)) => Some(cloud_map.ip_preference),
            None => None,
        };
        // Copied only when it inherits (the shared copy stays as its file says).
        if own != Some(None) {
            return;
        }
        match &mut Arc::make_mut(node).spec.service_discovery {
            Some(ServiceDiscovery::Dns(dns)) => dns.ip_preference = Some(preference),
            Some(ServiceDiscovery::AwsCloudMap(cloud_map)) => {
                cloud_map.ip_preference = Some(preference)
            }
            None => {}
        }
    }

    /// Whether this index's meshes are `other`'s, shared rather than equal: one was copied
    /// from the other and neither changed its meshes since.
    #[cfg(test)]
    pub(crate) fn shares_meshes_with(&self, other: &Self) -> bool {
        self.meshes.ptr_eq(&other.meshes)
    }

    /// Whether `mesh` has a virtual node or a virtual gateway called `name`.
    pub fn has_node_or_gateway(&self, mesh: &str, name: &str) -> bool {
        self.nodes.contains_key(&Name(mesh, name)) || self.gateways.contains_key(&Name(mesh, name))
    }

    pub fn virtual_nodes(&self) -> impl Iterator<Item = &(String, String)> {
        self.nodes.keys()
    }

    /// Whether a workload as the data plane names it (`mesh/node`, `mesh/gateway/name`) is a
    /// virtual node or gateway of this mesh.
    pub fn has_workload(&self, workload: &str) -> bool {
        match workload.split('/').collect::<Vec<_>>().as_slice() {
            [mesh, node] => self.nodes.contains_key(&Name(mesh, node)),
            [mesh, "gateway", name] => self.gateways.contains_key(&Name(mesh, name)),
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

/// Lower priority value first, routes without one last (as App Mesh orders them).
fn route_order(route: &CreateRouteInput) -> (i32, &str) {
    (route.spec.priority.unwrap_or(i32::MAX), &route.route_name)
}

fn gateway_route_order(route: &CreateGatewayRouteInput) -> (i32, &str) {
    (
        route.spec.priority.unwrap_or(i32::MAX),
        &route.gateway_route_name,
    )
}

/// `resource` put in `resources`, kept in the order `order` gives.
fn insert_ordered<T>(resources: &mut Vec<Arc<T>>, resource: Arc<T>, order: fn(&T) -> (i32, &str)) {
    let at = resources.partition_point(|kept| order(kept) <= order(&resource));
    resources.insert(at, resource);
}

/// The resource `named` picks taken out of `key`'s list, and the list with it when empty.
fn remove_named<T>(lists: &mut ByName<Vec<Arc<T>>>, key: Name<'_>, named: impl Fn(&T) -> bool) {
    let Some(list) = lists.get_mut(&key) else {
        return;
    };
    list.retain(|kept| !named(kept));
    if list.is_empty() {
        lists.remove(&key);
    }
}

impl Lookup for MeshIndex {
    fn node(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualNodeInput>> {
        self.nodes.get(&Name(mesh, name))
    }

    fn service(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualServiceInput>> {
        self.services.get(&Name(mesh, name))
    }

    fn router(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualRouterInput>> {
        self.routers.get(&Name(mesh, name))
    }

    fn routes(&self, mesh: &str, router: &str) -> &[Arc<CreateRouteInput>] {
        self.routes
            .get(&Name(mesh, router))
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
