//! Pods as workloads, as App Mesh on EKS made them: a pod is the VirtualNode (or
//! VirtualGateway) of its namespace whose podSelector selects its labels, and runs on the
//! node its `spec.nodeName` names. Each node's pods are listed to that node's agent, which
//! enrolls them. A pod is left out when it shares the node's network (`hostNetwork`),
//! has finished (Succeeded, Failed: its address may be another pod's already), has no node
//! or IPv4 address yet, is opted out by annotation, or is selected by more than one
//! workload (the App Mesh injector refused such a pod too).
use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use mesh_model::kubernetes::label_selector_matches;
use mesh_xds::plan::node_pods::NodePod;
use serde_json::{Map, Value};
use tracing::warn;

use super::snapshot::Snapshot;
use crate::placement::Placement;

/// `mesh-agent.io/enroll: "false"` keeps a pod out of the mesh.
pub(super) const ENROLL_ANNOTATION: &str = "mesh-agent.io/enroll";
/// App Mesh's own opt-out (`disabled`: no sidecar injected), honoured the same way.
pub(super) const APP_MESH_INJECTOR_ANNOTATION: &str = "appmesh.k8s.aws/sidecarInjectorWebhook";

/// A workload that selects pods: its name as the data plane says it (`mesh/node`,
/// `mesh/gateway/name`), the namespace its object is in, its podSelector.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Selecting {
    pub(super) workload: String,
    pub(super) namespace: String,
    pub(super) selector: Value,
}

/// Every node's pods, with the workload each is.
pub(super) fn placement(snapshot: &Snapshot, selecting: &[Selecting]) -> Placement {
    let mut by_node: BTreeMap<String, Vec<NodePod>> = BTreeMap::new();
    for pod in &snapshot.pods {
        let Some(node) = eligible_node(pod) else {
            continue;
        };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let workloads: Vec<&str> = selecting
            .iter()
            .filter(|s| s.namespace == namespace && selects(&s.selector, pod))
            .map(|s| s.workload.as_str())
            .collect();
        let workload = match workloads.as_slice() {
            [] => continue,
            [one] => *one,
            several => {
                warn!(pod = %format!("{namespace}/{name}"), workloads = ?several, "pod selected by several podSelectors; not enrolled");
                continue;
            }
        };
        let pods = by_node.entry(node.to_owned()).or_default();
        pods.extend(ipv4_addresses(pod).into_iter().map(|ip| NodePod {
            ip,
            workload: workload.to_owned(),
            pod: format!("{namespace}/{name}"),
        }));
    }
    for pods in by_node.values_mut() {
        pods.sort();
        pods.dedup();
    }
    Placement::new(by_node)
}

/// Drops what is never read of a pod before it is kept (a node's pods are many, and their
/// specs large): kept are its name, labels, the opt-out annotations, its node, whether it
/// shares the node's network, its phase and addresses.
pub(super) fn trim(pod: &mut Pod) {
    if let Some(annotations) = &mut pod.metadata.annotations {
        annotations
            .retain(|key, _| key == ENROLL_ANNOTATION || key == APP_MESH_INJECTOR_ANNOTATION);
    }
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
}

/// Whether `selector` (a Kubernetes label selector) selects the pod's labels.
pub(super) fn selects(selector: &Value, pod: &Pod) -> bool {
    let labels: Map<String, Value> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    label_selector_matches(Some(selector), Some(&labels))
}

/// The node of a pod that may be enrolled.
fn eligible_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) || opted_out(pod) {
        return None;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    spec.node_name.as_deref().filter(|n| !n.is_empty())
}

fn opted_out(pod: &Pod) -> bool {
    let annotation = |key: &str| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(|v| v.trim().to_ascii_lowercase())
    };
    annotation(ENROLL_ANNOTATION).as_deref() == Some("false")
        || annotation(APP_MESH_INJECTOR_ANNOTATION).as_deref() == Some("disabled")
}

/// The pod's IPv4 addresses (`status.podIPs`, else `status.podIP`).
fn ipv4_addresses(pod: &Pod) -> Vec<Ipv4Addr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed: Vec<&str> = match &status.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.as_str()).collect(),
        _ => status.pod_ip.iter().map(String::as_str).collect(),
    };
    listed
        .into_iter()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kubernetes::snapshot::fixtures::object;

    fn pod(name: &str, node: &str, ip: &str, extra: Value) -> std::sync::Arc<Pod> {
        let mut value = json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        json_patch(&mut value, extra);
        object(value)
    }

    /// Merges `extra` into `value` (objects key by key).
    fn json_patch(value: &mut Value, extra: Value) {
        match (value, extra) {
            (Value::Object(to), Value::Object(from)) => {
                for (key, v) in from {
                    json_patch(to.entry(key).or_insert(Value::Null), v);
                }
            }
            (to, from) => *to = from,
        }
    }

    fn web() -> Selecting {
        Selecting {
            workload: "m/web_shop".into(),
            namespace: "shop".into(),
            selector: json!({"matchLabels": {"app": "web"}}),
        }
    }

    fn listed(snapshot: &Snapshot, selecting: &[Selecting], node: &str) -> Vec<String> {
        placement(snapshot, selecting)
            .pods_on(node)
            .iter()
            .map(|p| format!("{} {} {}", p.pod, p.ip, p.workload))
            .collect()
    }

    #[test]
    fn selected_pods_are_listed_on_their_node() {
        let snapshot = Snapshot {
            pods: vec![
                pod("web-1", "a", "10.1.0.5", json!({})),
                pod("web-2", "b", "10.1.1.5", json!({})),
                pod(
                    "other",
                    "a",
                    "10.1.0.6",
                    json!({"metadata": {"labels": {"app": "x"}}}),
                ),
                pod(
                    "elsewhere",
                    "a",
                    "10.1.0.7",
                    json!({"metadata": {"namespace": "prod"}}),
                ),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            listed(&snapshot, &[web()], "a"),
            ["shop/web-1 10.1.0.5 m/web_shop"]
        );
        assert_eq!(
            listed(&snapshot, &[web()], "b"),
            ["shop/web-2 10.1.1.5 m/web_shop"]
        );
    }

    #[test]
    fn host_network_finished_opted_out_unscheduled_and_ambiguous_pods_are_left_out() {
        let snapshot = Snapshot {
            pods: vec![
                pod(
                    "host",
                    "a",
                    "10.1.0.1",
                    json!({"spec": {"hostNetwork": true}}),
                ),
                pod(
                    "done",
                    "a",
                    "10.1.0.2",
                    json!({"status": {"phase": "Succeeded"}}),
                ),
                pod(
                    "failed",
                    "a",
                    "10.1.0.3",
                    json!({"status": {"phase": "Failed"}}),
                ),
                pod(
                    "out",
                    "a",
                    "10.1.0.4",
                    json!({"metadata": {"annotations": {ENROLL_ANNOTATION: "false"}}}),
                ),
                pod(
                    "appmesh-out",
                    "a",
                    "10.1.0.5",
                    json!({"metadata": {"annotations": {APP_MESH_INJECTOR_ANNOTATION: "disabled"}}}),
                ),
                pod("pending", "", "", json!({})),
                pod("v6", "a", "fd00::1", json!({})),
                pod(
                    "kept",
                    "a",
                    "10.1.0.9",
                    json!({"metadata": {"annotations": {ENROLL_ANNOTATION: "true"}}}),
                ),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            listed(&snapshot, &[web()], "a"),
            ["shop/kept 10.1.0.9 m/web_shop"]
        );
        let both = [
            web(),
            Selecting {
                workload: "m/gateway/in_shop".into(),
                ..web()
            },
        ];
        assert!(listed(&snapshot, &both, "a").is_empty());
    }

    #[test]
    fn a_gateway_selects_its_pods() {
        let snapshot = Snapshot {
            pods: vec![pod("in-1", "a", "10.1.0.8", json!({}))],
            ..Snapshot::default()
        };
        let gateway = Selecting {
            workload: "m/gateway/in_shop".into(),
            ..web()
        };
        assert_eq!(
            listed(&snapshot, &[gateway], "a"),
            ["shop/in-1 10.1.0.8 m/gateway/in_shop"]
        );
    }
}
