//! Outbound: what a virtual node's workloads reach — its backends' virtual hosts per port (with
//! TLS origination by client policy), TCP targets, and the passthrough of ALLOW_ALL egress.
use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use mesh_model::types::{
    ClientPolicy, CreateVirtualNodeInput, EgressFilterType, VirtualServiceBackend,
};
use mesh_xds::names;

use super::{
    AutoMtls, Issues,
    hosts::{Hosts, hosts_of},
    index::{Lookup, MeshIndex},
    listener::{self, PortTraffic},
    reuse::{Compiled, Inputs, Reuse},
    tls,
    variant::ClusterVariant,
};

/// Where the node proxy takes outbound traffic in (the redirect's target).
pub const OUTBOUND_ADDRESS: (&str, u32) = ("0.0.0.0", 15001);

/// A node's outbound listener, its route configurations and the clusters they reach; each
/// backend's part compiled again only when what it depends on changed (`reuse`).
pub(super) fn outbound_for(
    index: &MeshIndex,
    node: &CreateVirtualNodeInput,
    mtls: Option<&Arc<AutoMtls>>,
    reuse: &Reuse,
    issues: &mut Issues,
) -> Outbound {
    let mesh = &node.mesh_name;
    let caller = &node.virtual_node_name;
    let what = format!("VirtualNode {caller}");
    let defaults = node
        .spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref());
    let mut hosts = Hosts::<Bytes>::default();
    let mut variants = Vec::new();
    let mut parts = reuse.caller(index, mesh, caller);
    for (position, backend) in node.spec.backends.iter().flatten().enumerate() {
        let mesh_model::types::Backend::VirtualService(backend) = backend;
        let inputs = Inputs {
            backend,
            defaults,
            mtls,
        };
        let part = parts.backend(index, position, inputs, |lookup, issues| {
            backend_hosts(lookup, node, backend, defaults, mtls, issues)
        });
        issues.extend(part.issues.iter().cloned());
        variants.extend(part.variants.iter().cloned());
        if let Some(service) = &part.hosts {
            hosts.merge(service, &what, issues);
        }
    }
    parts.done();
    let Hosts {
        http: http_hosts,
        tcp,
        mut clusters,
    } = hosts;
    // One route configuration per HTTP port, which that port's traffic goes by.
    let mut routes = Vec::new();
    let mut ports: Vec<(i32, PortTraffic)> = Vec::new();
    for (port, virtual_hosts) in http_hosts {
        let name = names::outbound_routes(mesh, caller, port);
        let traffic = PortTraffic::Http {
            routes: name.clone(),
        };
        ports.push((port, traffic));
        routes.push((name, virtual_hosts));
    }
    let allow_all = index
        .meshes
        .get(mesh)
        .and_then(|m| m.spec.as_ref())
        .and_then(|s| s.egress_filter.as_ref())
        .is_some_and(|f| f.r#type == EgressFilterType::AllowAll);
    let passthrough = allow_all.then(|| names::passthrough_cluster(mesh));
    clusters.extend(passthrough.clone());
    ports.extend(tcp.into_iter().map(|(port, targets)| {
        let plan = PortTraffic::Tcp {
            service: targets.service,
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
        routes,
        clusters,
        variants,
    }
}

/// A node's outbound side.
pub(super) struct Outbound {
    pub(super) listener: Option<Listener>,
    /// Route configurations by name, with their virtual hosts encoded.
    pub(super) routes: Vec<(String, Vec<Bytes>)>,
    /// Clusters its routes reach.
    pub(super) clusters: HashSet<String>,
    /// (variant, cluster, change): clusters this node reaches through TLS origination, as
    /// copies of the cluster with the client's transport socket.
    pub(super) variants: Vec<(String, String, ClusterVariant)>,
}

/// What one backend of a node routes to: the virtual service's hosts, through copies of its
/// clusters where the caller originates TLS (a client policy, or automatic mTLS); None when
/// the client policy cannot be applied.
fn backend_hosts(
    index: &dyn Lookup,
    node: &CreateVirtualNodeInput,
    backend: &VirtualServiceBackend,
    defaults: Option<&ClientPolicy>,
    mtls: Option<&Arc<AutoMtls>>,
    issues: &mut Issues,
) -> Compiled {
    let mesh = &node.mesh_name;
    let caller = &node.virtual_node_name;
    let what = format!("VirtualNode {caller}");
    let name = backend.virtual_service_name.as_str();
    let mut variants = Vec::new();
    let mut service = hosts_of(index, mesh, std::iter::once(name), &what, issues);
    // The backend's own client policy, else the node's backend defaults; enforce: false
    // turns TLS origination off, automatic mTLS included.
    let explicit = backend
        .client_policy
        .as_ref()
        .or(defaults)
        .and_then(|p| p.tls.as_ref());
    let policy = explicit.filter(|tls| tls.enforce != Some(false));
    if let (None, Some(mtls)) = (explicit, mtls) {
        // Automatic mTLS: each cluster's copy checks its own virtual node's identity.
        let id = names::spiffe_id(mtls.trust_domain(), mesh, caller);
        let change = |cluster: &str| {
            Some(ClusterVariant {
                transport_socket: Some(tls::auto_variant(mtls, index, &id, cluster)?),
                ..Default::default()
            })
        };
        service.through_variants_by(
            |cluster| names::caller_copy(cluster, caller),
            None,
            change,
            &mut variants,
        );
    }
    if let Some(policy) = policy {
        let Some(socket) = tls::client(policy, &format!("{what} backend {name}"), issues) else {
            return Compiled {
                hosts: None,
                variants,
            };
        };
        let change = ClusterVariant {
            transport_socket: Some(socket),
            ..Default::default()
        };
        service.through_variants(
            |cluster| names::caller_copy(cluster, caller),
            policy.ports.as_deref(),
            &change,
            &mut variants,
        );
    }
    Compiled {
        hosts: Some(service),
        variants,
    }
}
