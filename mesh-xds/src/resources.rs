//! A set of xDS resources by type, as the server serves and the client holds them.
use std::{collections::BTreeMap, sync::Arc};

use envoy_types::pb::google::protobuf::Any;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Resource type URLs in the order a client should apply them (secrets and clusters before
/// the listeners that use them, as Envoy's ADS ordering advice has it).
pub const TYPES: [&str; 5] = [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Named, encoded resources per type URL. Each type's resources are shared: a node's
/// client makes its next state from the last one with one type replaced, without copying
/// the others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet {
    pub by_type: BTreeMap<String, Arc<BTreeMap<String, Any>>>,
}

impl ResourceSet {
    pub fn insert(&mut self, type_url: &str, name: String, resource: Any) {
        // The type's map looked up by the borrowed URL: compiles insert thousands of
        // resources of a few types, and only the first of a type needs the URL owned.
        match self.by_type.get_mut(type_url) {
            Some(resources) => {
                Arc::make_mut(resources).insert(name, resource);
            }
            None => {
                let resources = BTreeMap::from([(name, resource)]);
                self.by_type
                    .insert(type_url.to_owned(), Arc::new(resources));
            }
        }
    }

    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        self.by_type.get(type_url).map(|resources| &**resources)
    }

    pub fn count(&self) -> usize {
        self.by_type.values().map(|resources| resources.len()).sum()
    }
}
