//! What compiling accumulates — resources, issues, the clusters routes reach and the copies
//! of clusters particular callers reach them through — and, last, those clusters emitted once
//! each.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;

use envoy_types::{
    pb::envoy::config::{
        cluster::v3::Cluster, listener::v3::Listener, route::v3::RouteConfiguration,
    },
    util::pack_any,
};
use mesh_xds::{
    names,
    resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet},
    sds,
};

use mesh_model::types::{Listener as AppMeshListener, ListenerTlsMode};
use prost::Message;

use super::{
    Issues, ServiceEndpoints, cluster,
    index::MeshIndex,
    reuse::{BuiltCluster, Reuse},
    variant::ClusterVariant,
};
use crate::{
    identity::{AutoMtls, MtlsMode},
    registry::Registry,
};

/// What compiling accumulates: resources, issues, and the clusters routes reach (emitted last,
/// once each).
#[derive(Default)]
pub(super) struct Output {
    pub(super) resources: ResourceSet,
    pub(super) issues: Issues,
    pub(super) reached: HashSet<String>,
    /// cluster -> its copies for particular callers (name -> what the copy changes).
    pub(super) variants: BTreeMap<String, BTreeMap<String, ClusterVariant>>,
    /// SDS secrets the emitted TLS contexts name.
    pub(super) secrets: BTreeSet<String>,
}

impl Output {
    pub(super) fn add_variants(&mut self, variants: Vec<(String, String, ClusterVariant)>) {
        for (variant, cluster, change) in variants {
            self.variants
                .entry(cluster)
                .or_default()
                .insert(variant, change);
        }
    }

    pub(super) fn listener(&mut self, listener: Listener) {
        for chain in &listener.filter_chains {
            if let Some(socket) = &chain.transport_socket {
                sds::referenced_by(socket, &mut self.secrets);
            }
        }
        self.resources
            .insert(LISTENER, listener.name.clone(), pack_any(listener));
    }

    pub(super) fn routes(&mut self, routes: RouteConfiguration) {
        self.resources
            .insert(ROUTE, routes.name.clone(), pack_any(routes));
    }

    /// A route configuration named `name` of virtual hosts already encoded: the bytes
    /// [`Self::routes`] would give for it, without decoding them.
    pub(super) fn encoded_routes(&mut self, name: String, virtual_hosts: Vec<Bytes>) {
        let mut any = pack_any(RouteConfiguration::default());
        any.value = EncodedRouteConfiguration {
            name: name.clone(),
            virtual_hosts,
        }
        .encode_to_vec();
        self.resources.insert(ROUTE, name, any);
    }

    pub(super) fn cluster(&mut self, cluster: Cluster) {
        if let Some(socket) = &cluster.transport_socket {
            sds::referenced_by(socket, &mut self.secrets);
        }
        self.resources
            .insert(CLUSTER, cluster.name.clone(), pack_any(cluster));
    }
}

/// A `RouteConfiguration` with only its name and virtual hosts set, the hosts as the bytes of
/// their encoding: a message field and a bytes field with the same tag are the same on the
/// wire.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedRouteConfiguration {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    virtual_hosts: Vec<Bytes>,
}

/// Whether a virtual node's listener takes plain text: no TLS of its own and no STRICT
/// automatic mTLS, or a PERMISSIVE or DISABLED mode.
fn takes_plain_text(mesh: &str, listener: &AppMeshListener, mtls: Option<&AutoMtls>) -> bool {
    match &listener.tls {
        Some(tls) => tls.mode != ListenerTlsMode::Strict,
        None => mtls.is_none_or(|mtls| mtls.mode(mesh) == MtlsMode::Permissive),
    }
}

/// The clusters routes reach (and their EDS assignments), and the passthrough clusters; the
/// clusters of unchanged virtual nodes taken as `reuse` kept them.
pub(super) fn reached_clusters(
    index: &MeshIndex,
    registry: &Registry,
    service_endpoints: &ServiceEndpoints,
    mtls: Option<&AutoMtls>,
    reuse: &Reuse,
    out: &mut Output,
) {
    let mut clusters = reuse.clusters(index, registry, service_endpoints, mtls);
    let mut name = String::new();
    for node in index.nodes.values() {
        let of = (node.mesh_name.as_str(), node.virtual_node_name.as_str());
        for listener in node.spec.listeners.iter().flatten() {
            names::write_cluster(&mut name, of.0, of.1, listener.port_mapping.port);
            let variants: Vec<(String, ClusterVariant)> = out
                .variants
                .get(name.as_str())
                .into_iter()
                .flatten()
                .filter(|(variant, _)| out.reached.contains(*variant))
                .map(|(variant, change)| (variant.clone(), change.clone()))
                .collect();
            let reached = out.reached.contains(name.as_str());
            if !reached && variants.is_empty() {
                continue;
            }
            let built = clusters.cluster(&name, of, || {
                let (cluster, assignment) =
                    cluster::for_listener(node, listener, registry, service_endpoints);
                let mut as_reached = cluster.clone();
                if !takes_plain_text(&node.mesh_name, listener, mtls) {
                    // Plain-text probes of a port that takes only TLS would fail; the copies
                    // callers reach it through (with TLS) keep the health check.
                    as_reached.health_checks.clear();
                }
                BuiltCluster::new(of, cluster, as_reached, assignment.map(pack_any))
            });
            if !variants.is_empty() {
                match built.cluster() {
                    // Same endpoints: an EDS copy keeps the service name of its original.
                    Ok(cluster) => variants
                        .into_iter()
                        .for_each(|(variant, change)| out.cluster(change.apply(variant, &cluster))),
                    Err(error) => out.issues.push(format!(
                        "cluster {name}: its encoding does not decode ({error}); callers' copies of it left out"
                    )),
                }
            }
            if reached {
                // Built without a transport socket: it names no SDS secret.
                out.resources
                    .insert(CLUSTER, name.clone(), built.reached().clone());
            }
            if let Some(assignment) = &built.assignment {
                out.resources
                    .insert(ENDPOINT, name.clone(), assignment.clone());
            }
        }
    }
    clusters.done();
    for mesh in index.meshes.values() {
        let name = names::passthrough_cluster(&mesh.mesh_name);
        if out.reached.contains(&name) {
            out.cluster(cluster::passthrough(name));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use envoy_types::pb::envoy::config::route::v3::{Route, VirtualHost};

    use super::*;

    #[test]
    fn encoded_routes_are_the_bytes_of_the_whole_configuration() {
        let hosts: Vec<VirtualHost> = (0..3)
            .map(|i| VirtualHost {
                name: format!("svc{i}:80"),
                domains: vec![format!("svc{i}"), format!("svc{i}:80")],
                routes: vec![Route {
                    name: format!("r{i}"),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let whole = RouteConfiguration {
            name: "rc".into(),
            virtual_hosts: hosts.clone(),
            ..Default::default()
        };
        let encoded: Vec<Bytes> = hosts.iter().map(|h| h.encode_to_vec().into()).collect();
        let mut out = Output::default();
        out.encoded_routes("rc".into(), encoded);
        let by_encoding = &out.resources.of_type(ROUTE).unwrap()["rc"];
        assert_eq!(by_encoding.type_url, pack_any(whole.clone()).type_url);
        assert_eq!(by_encoding.value, pack_any(whole).value);
    }
}
