//! Virtual nodes whose DNS hostname names a Kubernetes Service get that Service's pods as
//! endpoints: the ready addresses of its EndpointSlices, on the port the Service maps the
//! listener's port to (kube-proxy's rule: the slice port named as the Service port). A node
//! with a podSelector gets only the pods it selects. A hostname naming no Service keeps DNS.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::Value;

use super::{pods, snapshot::Snapshot};
use crate::compile::ServiceEndpoints;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What endpoint discovery needs of one VirtualNode object.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct NodeDiscovery {
    pub(super) mesh: String,
    pub(super) node: String,
    /// The object's namespace: a bare Service name is looked for there.
    pub(super) namespace: String,
    pub(super) hostname: String,
    pub(super) pod_selector: Option<Value>,
    /// Listener ports.
    pub(super) ports: Vec<i32>,
}

/// The Service a DNS hostname names, as (namespace, name), when it has the form of one:
/// `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.<cluster domain>`.
fn service_named(hostname: &str, namespace: &str) -> Option<(String, String)> {
    let labels: Vec<&str> = hostname.trim_end_matches('.').split('.').collect();
    match labels.as_slice() {
        [name] => Some((namespace.to_owned(), (*name).to_owned())),
        [name, ns] | [name, ns, "svc", ..] => Some(((*ns).to_owned(), (*name).to_owned())),
        _ => None,
    }
}

/// Every node's endpoints that a Service gives.
pub(super) fn service_endpoints(snapshot: &Snapshot, nodes: &[NodeDiscovery]) -> ServiceEndpoints {
    let mut found = ServiceEndpoints::default();
    for node in nodes {
        let Some((namespace, name)) = service_named(&node.hostname, &node.namespace) else {
            continue;
        };
        let Some(service) = snapshot.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace.as_str())
                && s.metadata.name.as_deref() == Some(name.as_str())
        }) else {
            continue;
        };
        let slices: Vec<&EndpointSlice> = snapshot
            .endpoint_slices
            .iter()
            .filter(|slice| {
                slice.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        == Some(&name)
            })
            .map(AsRef::as_ref)
            .collect();
        for port in &node.ports {
            let endpoints = match service_port_name(service, *port) {
                Some(port_name) => ready_endpoints(snapshot, node, &slices, &port_name),
                // The Service does not serve the listener's port: nothing to connect to.
                None => Vec::new(),
            };
            found.insert(&node.mesh, &node.node, *port, endpoints);
        }
    }
    found
}

/// The name of the Service port numbered `port` ("" for an unnamed one).
fn service_port_name(service: &Service, port: i32) -> Option<String> {
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    let found = ports.iter().find(|p| p.port == port)?;
    Some(found.name.clone().unwrap_or_default())
}

/// The ready IPv4 endpoints of `slices` on the slice port named `port_name`, of the pods
/// the node's podSelector selects (all when it has none).
fn ready_endpoints(
    snapshot: &Snapshot,
    node: &NodeDiscovery,
    slices: &[&EndpointSlice],
    port_name: &str,
) -> Vec<SocketAddr> {
    let mut endpoints = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Ready unless said otherwise (the API's rule for an absent condition).
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            if !ready || !selected(snapshot, node, endpoint.target_ref.as_ref()) {
                continue;
            }
            endpoints.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    .map(|ip| SocketAddr::new(IpAddr::V4(ip), port)),
            );
        }
    }
    endpoints.into_iter().collect()
}

/// Whether the endpoint's pod is one the node selects: any endpoint without a podSelector;
/// with one, only a pod whose labels it matches.
fn selected(
    snapshot: &Snapshot,
    node: &NodeDiscovery,
    target: Option<&k8s_openapi::api::core::v1::ObjectReference>,
) -> bool {
    let Some(selector) = &node.pod_selector else {
        return true;
    };
    let Some(target) = target.filter(|t| t.kind.as_deref() == Some("Pod")) else {
        return false;
    };
    let namespace = target.namespace.as_deref().unwrap_or(&node.namespace);
    let Some(pod) = snapshot.pods.iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(namespace) && p.metadata.name == target.name
    }) else {
        return false;
    };
    pods::selects(selector, pod)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kubernetes::snapshot::fixtures::{cluster, object};

    fn web(hostname: &str, pod_selector: Option<Value>) -> NodeDiscovery {
        NodeDiscovery {
            mesh: "m".into(),
            node: "web_shop".into(),
            namespace: "shop".into(),
            hostname: hostname.into(),
            pod_selector,
            ports: vec![80],
        }
    }

    fn found(snapshot: &Snapshot, node: &NodeDiscovery) -> Option<Vec<String>> {
        let endpoints = service_endpoints(snapshot, std::slice::from_ref(node));
        let found = endpoints.get("m", "web_shop", 80)?;
        Some(found.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn every_form_of_a_service_name_finds_the_service() {
        let snapshot = cluster();
        for hostname in [
            "web.shop.svc.cluster.local",
            "web.shop.svc.cluster.local.",
            "web.shop.svc",
            "web.shop",
            "web",
        ] {
            assert!(
                found(&snapshot, &web(hostname, None)).is_some(),
                "{hostname}"
            );
        }
        // Names of no Service keep DNS.
        for hostname in ["api.shop", "web.other.svc.cluster.local", "www.example.com"] {
            assert_eq!(found(&snapshot, &web(hostname, None)), None, "{hostname}");
        }
    }

    #[test]
    fn ready_endpoints_on_the_target_port_of_the_selected_pods() {
        let snapshot = cluster();
        // Without a podSelector: every ready endpoint (not the unready 10.1.0.7).
        assert_eq!(
            found(&snapshot, &web("web", None)).unwrap(),
            ["10.1.0.5:8080", "10.1.0.6:8080"]
        );
        let selector =
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]});
        assert_eq!(
            found(&snapshot, &web("web", Some(selector))).unwrap(),
            ["10.1.0.5:8080"]
        );
    }

    #[test]
    fn a_listener_port_the_service_does_not_serve_has_no_endpoints() {
        let mut snapshot = cluster();
        snapshot.services = vec![object(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 8000}]}}))];
        assert_eq!(found(&snapshot, &web("web", None)), Some(Vec::new()));
    }
}
