//! Endpoints found for virtual nodes outside their service discovery's own mechanism: the
//! Kubernetes source gives a node whose DNS hostname names a Service the ready addresses of
//! that Service's EndpointSlices, so the node proxy balances over pods, not a ClusterIP.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

/// (mesh, virtual node) -> listener port -> endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEndpoints(BTreeMap<(String, String), BTreeMap<i32, Vec<SocketAddr>>>);

impl ServiceEndpoints {
    /// Records the endpoints of listener `port` of virtual node `node` in `mesh`.
    pub fn insert(&mut self, mesh: &str, node: &str, port: i32, endpoints: Vec<SocketAddr>) {
        self.0
            .entry((mesh.to_owned(), node.to_owned()))
            .or_default()
            .insert(port, endpoints);
    }

    /// The endpoints of listener `port` of `node` in `mesh`, if they are known this way.
    pub fn get(&self, mesh: &str, node: &str, port: i32) -> Option<&[SocketAddr]> {
        self.0
            .get(&(mesh.to_owned(), node.to_owned()))?
            .get(&port)
            .map(Vec::as_slice)
    }

    /// Every endpoint address, for logs and tests.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0
            .values()
            .flat_map(BTreeMap::values)
            .flatten()
            .map(SocketAddr::ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_found_by_mesh_node_and_port() {
        let mut endpoints = ServiceEndpoints::default();
        let pod: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        endpoints.insert("m", "n_ns", 80, vec![pod]);
        assert_eq!(endpoints.get("m", "n_ns", 80), Some(&[pod][..]));
        assert_eq!(endpoints.get("m", "n_ns", 81), None);
        assert_eq!(endpoints.get("other", "n_ns", 80), None);
        assert_eq!(endpoints.addresses().collect::<Vec<_>>(), vec![pod.ip()]);
    }
}
