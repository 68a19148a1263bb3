//! What a Cluster says about the mesh beyond Envoy's fields: the virtual node it reaches
//! (or, on an endpoint of the node's pod list, [`crate::plan::node_pods`], the workload a pod is),
//! carried in its metadata (`filter_metadata["mesh-agent"]["virtual_node"]`), so the node
//! reads it as data instead of taking cluster names apart. Written and read only here.
use std::collections::HashMap;

use envoy_types::pb::{
    envoy::config::core::v3::Metadata,
    google::protobuf::{Struct, Value, value::Kind},
};

/// The metadata namespace of the mesh's own keys.
const NAMESPACE: &str = "mesh-agent";
const VIRTUAL_NODE: &str = "virtual_node";

/// Metadata naming the virtual node (`mesh/node`) a cluster reaches.
pub fn for_virtual_node(virtual_node: &str) -> Metadata {
    let value = Value {
        kind: Some(Kind::StringValue(virtual_node.to_owned())),
    };
    let fields = HashMap::from([(VIRTUAL_NODE.to_owned(), value)]);
    Metadata {
        filter_metadata: HashMap::from([(NAMESPACE.to_owned(), Struct { fields })]),
        ..Default::default()
    }
}

/// The virtual node a cluster's metadata names, if it names one (a cluster from another
/// control plane may not).
pub fn virtual_node(metadata: Option<&Metadata>) -> Option<&str> {
    let value = metadata?
        .filter_metadata
        .get(NAMESPACE)?
        .fields
        .get(VIRTUAL_NODE)?;
    match &value.kind {
        Some(Kind::StringValue(node)) => Some(node),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_node_written_is_read_back() {
        let metadata = for_virtual_node("shop/api");
        assert_eq!(virtual_node(Some(&metadata)), Some("shop/api"));
        assert_eq!(virtual_node(None), None);
        assert_eq!(virtual_node(Some(&Metadata::default())), None);
    }
}
