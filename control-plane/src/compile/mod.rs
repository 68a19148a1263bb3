//! Compiling a validated App Mesh mesh to xDS resources for the virtual nodes of one node.
//! The mapping follows the Envoy configuration App Mesh itself generated; docs/appmesh-xds.md
//! lists it field by field.
//!
//! `index` holds the mesh; per virtual node, `inbound` and `outbound` (through the
//! virtual services' `hosts`); per virtual gateway, `gateway`; `output` collects the
//! resources and emits the clusters they reach last.
mod access_log;
mod cluster;
mod endpoints;
mod gateway;
mod hosts;
mod inbound;
mod index;
mod listener;
mod outbound;
mod output;
mod reads;
mod reuse;
mod route;
mod tls;
mod values;
mod variant;

use std::{collections::BTreeSet, sync::Arc};

use envoy_types::{pb::envoy::config::accesslog::v3::AccessLog, util::pack_any};
use mesh_model::types::CreateVirtualNodeInput;
use mesh_xds::{
    names,
    resources::{ResourceSet, SECRET},
};

use crate::{identity::AutoMtls, placement::Placement, registry::Registry, secrets::SecretStore};
use output::Output;

pub use endpoints::ServiceEndpoints;
pub use inbound::INBOUND_ADDRESS;
pub use index::{CompileError, Indexed, Lookup, MeshIndex, typed};
pub use listener::PortTraffic;
pub use outbound::OUTBOUND_ADDRESS;
pub use reuse::{Around, Reuse};

/// Things compiled around (a target without listeners, an unsupported retry event), each a
/// sentence naming the resource.
pub type Issues = Vec<String>;

/// Which virtual nodes the compiled resources are for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
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

    /// These workloads, of `allowed` only.
    pub fn within(self, allowed: BTreeSet<(String, String)>) -> Self {
        match self {
            Workloads::All => Workloads::Only(allowed),
            Workloads::Only(set) => Workloads::Only(set.intersection(&allowed).cloned().collect()),
        }
    }
}

pub struct Compiled {
    pub resources: ResourceSet,
    pub issues: Issues,
}

/// What compiled resources rely on beyond the mesh: the SDS secrets served with them,
/// automatic mTLS when it is on, the endpoints Kubernetes Services give virtual nodes, and,
/// from Kubernetes, which pods run on which node (`None`: every node may run every workload).
#[derive(Clone, Default)]
pub struct Serving {
    pub secrets: Arc<SecretStore>,
    pub mtls: Option<Arc<AutoMtls>>,
    pub service_endpoints: Arc<ServiceEndpoints>,
    pub placement: Option<Arc<Placement>>,
}

/// The xDS resources `workloads` need: their inbound listeners and local-application
/// clusters, their outbound listeners and routes, their gateways, and the clusters (and EDS
/// assignments, from `registry`) those reach.
pub fn compile(index: &MeshIndex, registry: &Registry, workloads: &Workloads) -> Compiled {
    compile_served(
        index,
        registry,
        &Serving::default(),
        &Reuse::default(),
        workloads,
    )
}

/// [`compile`] with what `serving` adds (the SDS secrets the TLS contexts name, automatic
/// mTLS), reusing what `reuse` kept of compiles of the mesh before.
pub fn compile_served(
    index: &MeshIndex,
    registry: &Registry,
    serving: &Serving,
    reuse: &Reuse,
    workloads: &Workloads,
) -> Compiled {
    let mut out = Output::default();
    for (_, node) in index
        .nodes
        .iter()
        .filter(|(key, _)| workloads.contains(key))
    {
        node_resources(index, node, serving.mtls.as_ref(), reuse, &mut out);
    }
    let mtls = serving.mtls.as_deref();
    for (key, gateway) in index
        .gateways
        .iter()
        .filter(|(key, _)| workloads.contains(key))
    {
        gateway::resources(
            index,
            gateway,
            index.gateway_routes.get(key).map(Vec::as_slice),
            mtls,
            &mut out,
        );
    }
    output::reached_clusters(
        index,
        registry,
        &serving.service_endpoints,
        mtls,
        reuse,
        &mut out,
    );
    for name in std::mem::take(&mut out.secrets) {
        // Workload certificates of automatic mTLS are made by the agents, never sent; an
        // unavailable certificate never exists.
        if names::spiffe_id_of_identity_secret(&name).is_some()
            || names::unavailable_secret_reason(&name).is_some()
        {
            continue;
        }
        let bundle = mtls
            .map(AutoMtls::trust_bundle)
            .filter(|bundle| bundle.name == name);
        match bundle.as_ref().or_else(|| serving.secrets.get(&name)) {
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

/// A virtual node's inbound side, and its outbound listener and routes.
fn node_resources(
    index: &MeshIndex,
    node: &CreateVirtualNodeInput,
    mtls: Option<&Arc<AutoMtls>>,
    reuse: &Reuse,
    out: &mut Output,
) {
    let logs = node_access_logs(node);
    let (inbound, local_clusters) = inbound::inbound(node, mtls.map(Arc::as_ref), &mut out.issues);
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
    let outbound = outbound::outbound_for(index, node, mtls, reuse, &mut out.issues);
    out.reached.extend(outbound.clusters);
    out.add_variants(outbound.variants);
    for (name, hosts) in outbound.routes {
        out.encoded_routes(name, hosts);
    }
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
