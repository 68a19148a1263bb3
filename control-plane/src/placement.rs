//! Which pods run on which node, when the mesh comes from Kubernetes: each node agent is sent
//! the list of its node's pods (pod IP → workload, [`mesh_xds::plan::node_pods`]) to enroll them,
//! and a node is trusted with the workloads it runs only: it is sent the configuration and
//! secrets of those, and certificates are signed for those only (docs/security.md).
use std::collections::{BTreeMap, BTreeSet};

use mesh_xds::{names, plan::node_pods::NodePod};

/// The pods of every node, by node name (the agent's xDS node id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    by_node: BTreeMap<String, Vec<NodePod>>,
}

impl Placement {
    pub fn new(by_node: BTreeMap<String, Vec<NodePod>>) -> Self {
        Self { by_node }
    }

    /// The pods on node `node` (none for a node the cluster does not know).
    pub fn pods_on(&self, node: &str) -> &[NodePod] {
        self.by_node.get(node).map_or(&[], Vec::as_slice)
    }

    /// The `(mesh, name)` of every virtual node and gateway with a pod on `node`: what the
    /// node is sent configuration for.
    pub fn workloads_on(&self, node: &str) -> BTreeSet<(String, String)> {
        self.pods_on(node)
            .iter()
            .filter_map(|pod| mesh_and_name(&pod.workload))
            .collect()
    }

    /// Whether `workload` (`mesh/node` or `mesh/gateway/name`) has a pod on `node`.
    pub fn runs(&self, node: &str, workload: &str) -> bool {
        self.pods_on(node)
            .iter()
            .any(|pod| pod.workload == workload)
    }

    /// How many pods are listed, on all nodes.
    pub fn pods(&self) -> usize {
        self.by_node.values().map(Vec::len).sum()
    }
}

/// `(mesh, name)` of a workload as the data plane names it (the key compiled resources are
/// chosen by, for virtual nodes and gateways alike).
fn mesh_and_name(workload: &str) -> Option<(String, String)> {
    if !names::is_workload(workload) {
        return None;
    }
    let (mesh, rest) = workload.split_once('/')?;
    let name = rest.strip_prefix("gateway/").unwrap_or(rest);
    Some((mesh.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: [u8; 4], workload: &str) -> NodePod {
        NodePod {
            ip: ip.into(),
            workload: workload.into(),
            pod: "shop/p".into(),
        }
    }

    #[test]
    fn a_node_runs_the_workloads_of_its_pods_only() {
        let placement = Placement::new(BTreeMap::from([
            (
                "node-a".to_owned(),
                vec![
                    pod([10, 0, 0, 1], "m/web"),
                    pod([10, 0, 0, 2], "m/gateway/in"),
                ],
            ),
            ("node-b".to_owned(), vec![pod([10, 0, 1, 1], "m/api")]),
        ]));
        assert_eq!(
            placement.workloads_on("node-a"),
            BTreeSet::from([("m".into(), "web".into()), ("m".into(), "in".into())])
        );
        assert!(placement.runs("node-a", "m/web"));
        assert!(placement.runs("node-a", "m/gateway/in"));
        assert!(!placement.runs("node-a", "m/api"));
        assert!(!placement.runs("node-c", "m/web"));
        assert!(placement.workloads_on("node-c").is_empty());
        assert_eq!(placement.pods(), 3);
    }
}
