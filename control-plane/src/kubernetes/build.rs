//! What the cluster holds, made a mesh: the App Mesh objects converted as the controller
//! does (namespaces by their labels, names as it derives them), validated and compiled as
//! files are; each object's verdict (accepted, or its problems) for reporting on it; the
//! endpoints Services give virtual nodes.
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::DynamicObject;
use mesh_model::{
    kubernetes::{self as model, Document},
    report::Diagnostic,
    resource::{Kind, Origin, Resource},
};
use serde_json::{Value, json};

use super::{
    endpoints::{self, NodeDiscovery},
    kinds::AppMeshKind,
    snapshot::Snapshot,
};
use crate::{
    compile::{MeshIndex, ServiceEndpoints},
    load::{InputOptions, compiled, validated},
};

/// An App Mesh object, as events and status patches name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ObjectKey {
    pub(super) kind: AppMeshKind,
    pub(super) namespace: Option<String>,
    pub(super) name: String,
    pub(super) uid: Option<String>,
}

impl ObjectKey {
    fn of(kind: AppMeshKind, object: &DynamicObject) -> Self {
        Self {
            kind,
            namespace: object
                .metadata
                .namespace
                .clone()
                .filter(|_| kind.namespaced),
            name: object.metadata.name.clone().unwrap_or_default(),
            uid: object.metadata.uid.clone(),
        }
    }

    /// Where diagnostics about the object say they are (`VirtualNode/ns/name`).
    fn origin(&self) -> Origin {
        let path = match &self.namespace {
            Some(namespace) => format!("{}/{namespace}/{}", self.kind.kind, self.name),
            None => format!("{}/{}", self.kind.kind, self.name),
        };
        Origin {
            file: PathBuf::from(path),
            line: None,
        }
    }
}

/// An object's verdict: the problems validation found in it (none: accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) object: ObjectKey,
    pub(super) problems: Vec<String>,
}

/// The mesh the cluster makes, or why not; each App Mesh object's verdict.
pub(super) struct Built {
    pub(super) mesh: Result<(MeshIndex, ServiceEndpoints), Vec<Diagnostic>>,
    pub(super) verdicts: Vec<Verdict>,
}

/// Converts, validates and compiles what `snapshot` holds (blocking: run off the runtime).
pub(super) fn build(snapshot: &Snapshot, input: &InputOptions) -> Built {
    let objects: Vec<(ObjectKey, &DynamicObject)> = snapshot
        .app_mesh
        .iter()
        .map(|(kind, object)| (ObjectKey::of(*kind, object), object.as_ref()))
        .collect();
    let mut documents: Vec<Document> = objects
        .iter()
        .map(|(key, object)| app_mesh_document(key, object))
        .collect();
    documents.extend(snapshot.namespaces.iter().map(|n| namespace_document(n)));
    let mut diagnostics = Vec::new();
    let resources = model::convert_cluster(&documents, &mut diagnostics);
    let (resources, diagnostics) = validated(resources, diagnostics, input);
    let verdicts = objects
        .iter()
        .map(|(key, _)| verdict(key, &diagnostics))
        .collect();
    let discovery = node_discovery(&objects, &resources);
    let mesh = compiled(resources, &diagnostics)
        .map(|index| (index, endpoints::service_endpoints(snapshot, &discovery)));
    Built { mesh, verdicts }
}

/// The object as a manifest document: what the converter reads of it (type, name,
/// namespace, labels, spec), at an origin naming it.
fn app_mesh_document(key: &ObjectKey, object: &DynamicObject) -> Document {
    let mut metadata = json!({"name": key.name, "labels": object.metadata.labels});
    if let Some(namespace) = &key.namespace {
        metadata["namespace"] = json!(namespace);
    }
    Document {
        value: json!({
            "apiVersion": key.kind.api_version(),
            "kind": key.kind.kind,
            "metadata": metadata,
            "spec": object.data.get("spec").cloned().unwrap_or(Value::Null),
        }),
        origin: key.origin(),
    }
}

/// A Namespace as a document: its labels decide which Mesh selects it.
fn namespace_document(namespace: &Namespace) -> Document {
    let name = namespace.metadata.name.clone().unwrap_or_default();
    Document {
        value: json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": namespace.metadata.labels},
        }),
        origin: Origin {
            file: PathBuf::from(format!("Namespace/{name}")),
            line: None,
        },
    }
}

/// The errors said about `key`'s object, each without the origin that names it.
fn verdict(key: &ObjectKey, diagnostics: &[Diagnostic]) -> Verdict {
    let origin = key.origin();
    let problems = diagnostics
        .iter()
        .filter(|d| d.is_error() && d.origin.as_ref() == Some(&origin))
        .map(|d| {
            let mut d = d.clone();
            d.origin = None;
            d.to_string()
        })
        .collect();
    Verdict {
        object: key.clone(),
        problems,
    }
}

/// What endpoint discovery needs of each VirtualNode object: its App Mesh names (from the
/// converted resource at its origin), namespace, DNS hostname, podSelector, listener ports.
fn node_discovery(
    objects: &[(ObjectKey, &DynamicObject)],
    resources: &[Resource],
) -> Vec<NodeDiscovery> {
    objects
        .iter()
        .filter(|(key, _)| key.kind.kind == "VirtualNode")
        .filter_map(|(key, object)| {
            let origin = key.origin();
            let resource = resources
                .iter()
                .find(|r| r.kind == Kind::VirtualNode && r.origin == origin)?;
            let spec = resource.spec()?;
            let hostname = spec
                .pointer("/serviceDiscovery/dns/hostname")
                .and_then(Value::as_str)?;
            let ports = spec
                .get("listeners")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|l| l.pointer("/portMapping/port")?.as_i64())
                .filter_map(|p| i32::try_from(p).ok())
                .collect();
            Some(NodeDiscovery {
                mesh: resource.body.get("meshName")?.as_str()?.to_owned(),
                node: resource.body.get("virtualNodeName")?.as_str()?.to_owned(),
                namespace: key.namespace.clone().unwrap_or_default(),
                hostname: hostname.to_owned(),
                pod_selector: object.data.pointer("/spec/podSelector").cloned(),
                ports,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::snapshot::fixtures::{app_mesh, cluster, object};

    #[test]
    fn a_cluster_mesh_is_built_with_the_controllers_names_and_service_endpoints() {
        let built = build(&cluster(), &InputOptions::default());
        let (index, endpoints) = built.mesh.map_err(|d| format!("{d:?}")).unwrap();
        assert!(
            index
                .virtual_nodes()
                .any(|key| *key == ("m".to_owned(), "web_shop".to_owned()))
        );
        // The selected, ready pod on the Service port's target port.
        assert_eq!(
            endpoints.get("m", "web_shop", 80),
            Some(&["10.1.0.5:8080".parse().unwrap()][..])
        );
        assert!(built.verdicts.iter().all(|v| v.problems.is_empty()));
    }

    #[test]
    fn an_object_in_a_namespace_no_mesh_selects_is_refused_on_that_object() {
        let mut snapshot = cluster();
        snapshot.app_mesh.push(app_mesh(
            "VirtualNode",
            json!({"metadata": {"name": "lost", "namespace": "other"}, "spec": {}}),
        ));
        let built = build(&snapshot, &InputOptions::default());
        assert!(built.mesh.is_err());
        let lost = built
            .verdicts
            .iter()
            .find(|v| v.object.name == "lost")
            .unwrap();
        assert_eq!(lost.object.namespace.as_deref(), Some("other"));
        assert!(
            lost.problems[0].contains("no Mesh in the input selects namespace other"),
            "{:?}",
            lost.problems
        );
        let web = built
            .verdicts
            .iter()
            .find(|v| v.object.name == "web")
            .unwrap();
        assert!(web.problems.is_empty(), "{:?}", web.problems);
    }

    #[test]
    fn a_field_the_model_refuses_is_named_on_the_object() {
        let mut snapshot = cluster();
        let (kind, web) = snapshot.app_mesh.remove(1);
        let mut value = serde_json::to_value(web.as_ref()).unwrap();
        value["spec"]["listeners"][0]["portMapping"]["port"] = json!(70000);
        snapshot.app_mesh.push((kind, object(value)));
        let built = build(&snapshot, &InputOptions::default());
        assert!(built.mesh.is_err());
        let web = built
            .verdicts
            .iter()
            .find(|v| v.object.name == "web")
            .unwrap();
        assert!(
            web.problems
                .iter()
                .any(|p| p.contains("spec.listeners[0].portMapping.port")),
            "{:?}",
            web.problems
        );
        assert_eq!(web.object.uid.as_deref(), Some("u-web"));
    }
}
