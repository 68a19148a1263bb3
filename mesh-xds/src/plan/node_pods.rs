//! The pods of one node, as a control plane that reads Kubernetes lists them to that node's
//! agent: each pod's IPv4 address, the workload its podSelector makes it (a virtual node
//! `mesh/node` or a virtual gateway `mesh/gateway/name`) and its name (`namespace/name`).
//!
//! The list travels as a Cluster named [`NODE_PODS`] (static, its endpoints the pods, each
//! with the workload in its metadata and the pod's name as its hostname): Clusters are a
//! wildcard subscription, so an agent receives the list without asking for it by name, and a
//! control plane that lists no pods (files, another xDS server) simply sends none. The
//! agent never treats it as an upstream. Written and read only here.
use std::net::Ipv4Addr;

use envoy_types::pb::envoy::config::{
    cluster::v3::{
        Cluster,
        cluster::{ClusterDiscoveryType, DiscoveryType},
    },
    core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
    endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint},
};

use super::PlanError;
use crate::{metadata, names};

/// The name of the Cluster that lists a node's pods.
pub const NODE_PODS: &str = "mesh-agent/node-pods";

/// More pods than this on one node is not a list to act on (the kernel's enrollment map
/// holds 4 096 namespaces; a node runs about a hundred pods).
pub const MAX_NODE_PODS: usize = 4_096;

/// One pod on the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodePod {
    pub ip: Ipv4Addr,
    /// `mesh/node` or `mesh/gateway/name`.
    pub workload: String,
    /// `namespace/name`.
    pub pod: String,
}

/// The Cluster listing `pods`.
pub fn to_cluster(pods: &[NodePod]) -> Cluster {
    let lb_endpoints = pods
        .iter()
        .map(|pod| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: pod.ip.to_string(),
                        port_specifier: Some(PortSpecifier::PortValue(0)),
                        ..Default::default()
                    })),
                }),
                hostname: pod.pod.clone(),
                ..Default::default()
            })),
            metadata: Some(metadata::for_virtual_node(&pod.workload)),
            ..Default::default()
        })
        .collect();
    Cluster {
        name: NODE_PODS.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: NODE_PODS.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pods a [`NODE_PODS`] Cluster lists, or the first thing wrong with it (the client
/// NACKs it, naming the field).
pub fn from_cluster(cluster: &Cluster) -> Result<Vec<NodePod>, PlanError> {
    let endpoints: Vec<&LbEndpoint> = cluster
        .load_assignment
        .iter()
        .flat_map(|a| &a.endpoints)
        .flat_map(|l| &l.lb_endpoints)
        .collect();
    if endpoints.len() > MAX_NODE_PODS {
        return Err(PlanError::new(
            "load_assignment",
            format!(
                "lists {} pods; at most {MAX_NODE_PODS} are taken",
                endpoints.len()
            ),
        ));
    }
    endpoints
        .into_iter()
        .enumerate()
        .map(|(i, endpoint)| {
            pod(endpoint).map_err(|reason| {
                PlanError::new(format!("load_assignment.lb_endpoints[{i}]"), reason)
            })
        })
        .collect()
}

fn pod(endpoint: &LbEndpoint) -> Result<NodePod, String> {
    let Some(lb_endpoint::HostIdentifier::Endpoint(found)) = &endpoint.host_identifier else {
        return Err("not an endpoint with an address".into());
    };
    let Some(address::Address::SocketAddress(socket)) =
        found.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err("not a socket address".into());
    };
    let ip: Ipv4Addr = socket
        .address
        .parse()
        .map_err(|_| format!("{:?} is not an IPv4 address", socket.address))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!("{ip} cannot be a pod's address"));
    }
    let workload =
        metadata::virtual_node(endpoint.metadata.as_ref()).ok_or("metadata names no workload")?;
    if !names::is_workload(workload) {
        return Err(format!(
            "{workload:?} is neither mesh/node nor mesh/gateway/name"
        ));
    }
    Ok(NodePod {
        ip,
        workload: workload.to_owned(),
        pod: found.hostname.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: [u8; 4], workload: &str) -> NodePod {
        NodePod {
            ip: Ipv4Addr::from(ip),
            workload: workload.into(),
            pod: "shop/web-1".into(),
        }
    }

    #[test]
    fn a_list_written_is_read_back() {
        let pods = vec![
            pod([10, 1, 0, 5], "m/web_shop"),
            pod([10, 1, 0, 6], "m/gateway/ingress_shop"),
        ];
        assert_eq!(from_cluster(&to_cluster(&pods)).unwrap(), pods);
        assert_eq!(from_cluster(&to_cluster(&[])).unwrap(), []);
    }

    #[test]
    fn a_bad_pod_is_named_by_its_place_in_the_list() {
        for (bad, reason) in [
            (pod([127, 0, 0, 1], "m/web"), "cannot be a pod's address"),
            (pod([0, 0, 0, 0], "m/web"), "cannot be a pod's address"),
            (pod([10, 1, 0, 5], "web"), "neither mesh/node"),
            (pod([10, 1, 0, 5], "m/x/y"), "neither mesh/node"),
        ] {
            let cluster = to_cluster(&[pod([10, 1, 0, 4], "m/web"), bad]);
            let error = from_cluster(&cluster).unwrap_err();
            assert_eq!(error.field, "load_assignment.lb_endpoints[1]");
            assert!(error.reason.contains(reason), "{error}");
        }
        let too_many: Vec<NodePod> = (0..=MAX_NODE_PODS as u32)
            .map(|i| pod((0x0a00_0000 + i + 1).to_be_bytes(), "m/web"))
            .collect();
        assert!(
            from_cluster(&to_cluster(&too_many))
                .unwrap_err()
                .reason
                .contains("at most 4096")
        );
    }
}
