//! What the source has seen of the cluster: every object of every kind it watches.
use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::api::DynamicObject;

use super::kinds::AppMeshKind;

/// Everything the source watches, as last seen.
#[derive(Clone, Default)]
pub(super) struct Snapshot {
    pub(super) app_mesh: Vec<(AppMeshKind, Arc<DynamicObject>)>,
    pub(super) namespaces: Vec<Arc<Namespace>>,
    pub(super) pods: Vec<Arc<Pod>>,
    pub(super) services: Vec<Arc<Service>>,
    pub(super) endpoint_slices: Vec<Arc<EndpointSlice>>,
}

/// A small cluster for the tests of the modules that read snapshots.
#[cfg(test)]
pub(super) mod fixtures {
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;
    use crate::kubernetes::kinds::KINDS;

    pub(in crate::kubernetes) fn object<K: DeserializeOwned>(value: Value) -> Arc<K> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    pub(in crate::kubernetes) fn app_mesh(
        kind: &str,
        value: Value,
    ) -> (AppMeshKind, Arc<DynamicObject>) {
        let kind = *KINDS.iter().find(|k| k.kind == kind).unwrap();
        (kind, object(value))
    }

    /// Mesh `m` selecting namespaces labelled `mesh: m`; namespace `shop` is, `other` is
    /// not; VirtualNode `web` in `shop` behind Service `web`, whose slice lists pod web-1
    /// (selected, on node-a) and pod stray-1 (not).
    pub(in crate::kubernetes) fn cluster() -> Snapshot {
        let ready = |name: &str, ip: &str| {
            json!({"addresses": [ip], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "name": name, "namespace": "shop"}})
        };
        Snapshot {
            app_mesh: vec![
                app_mesh(
                    "Mesh",
                    json!({"metadata": {"name": "m", "uid": "u-m"},
                           "spec": {"namespaceSelector": {"matchLabels": {"mesh": "m"}}}}),
                ),
                app_mesh(
                    "VirtualNode",
                    json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u-web"},
                           "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                                    "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                                    "serviceDiscovery": {"dns": {"hostname": "web.shop.svc.cluster.local"}}}}),
                ),
            ],
            namespaces: vec![
                object(json!({"metadata": {"name": "shop", "labels": {"mesh": "m"}}})),
                object(json!({"metadata": {"name": "other"}})),
            ],
            pods: vec![
                object(json!({
                    "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
                    "spec": {"nodeName": "node-a", "containers": []},
                    "status": {"podIP": "10.1.0.5"}})),
                object(
                    json!({"metadata": {"name": "stray-1", "namespace": "shop", "labels": {"app": "other"}}}),
                ),
            ],
            services: vec![object(json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))],
            endpoint_slices: vec![object(json!({
                "metadata": {"name": "web-x", "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [ready("web-1", "10.1.0.5"), ready("stray-1", "10.1.0.6"),
                              {"addresses": ["10.1.0.7"], "conditions": {"ready": false},
                               "targetRef": {"kind": "Pod", "name": "web-2", "namespace": "shop"}}],
                "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9901}]}))],
        }
    }
}
