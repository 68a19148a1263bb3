//! What the cluster holds, made a mesh: the App Mesh objects converted as the controller
//! does (namespaces by their labels, names as it derives them), validated and compiled as
//! files are; each object's verdict (accepted, or its problems) for reporting on it; the
//! endpoints Services give virtual nodes; the pods podSelectors make workloads, by node.
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::DynamicObject;
use mesh_model::{
    kubernetes::{self as model, Document},
    report::Diagnostic,
    resource::{Kind, Origin, Resource},
};
use serde_json::{Value, json};

use mesh_xds::names;

use super::{
    Update,
    endpoints::{self, NodeDiscovery},
    kinds::AppMeshKind,
    pods::{self, Selecting},
    snapshot::Snapshot,
};
use crate::load::{InputOptions, compiled, validated};

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
    pub(super) mesh: Result<Update, Vec<Diagnostic>>,
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
    let selecting = selecting(&objects, &resources);
    let mesh = compiled(resources, &diagnostics).map(|index| Update {
        index,
        service_endpoints: endpoints::service_endpoints(snapshot, &discovery),
        placement: pods::placement(snapshot, &selecting),
    });
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
    converted(objects, resources, Kind::VirtualNode)
        .filter_map(|(key, object, resource)| {
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

/// The VirtualNodes and VirtualGateways with a podSelector: which pods they make theirs.
fn selecting(objects: &[(ObjectKey, &DynamicObject)], resources: &[Resource]) -> Vec<Selecting> {
    let of_kind = |kind: Kind| {
        converted(objects, resources, kind).filter_map(move |(key, object, resource)| {
            let selector = object.data.pointer("/spec/podSelector")?.clone();
            let mesh = resource.body.get("meshName")?.as_str()?;
            let name = resource.body.get(kind.name_field())?.as_str()?;
            let workload = match kind {
                Kind::VirtualGateway => names::virtual_gateway(mesh, name),
                _ => names::virtual_node(mesh, name),
            };
            Some(Selecting {
                workload,
                namespace: key.namespace.clone().unwrap_or_default(),
                selector,
            })
        })
    };
    of_kind(Kind::VirtualNode)
        .chain(of_kind(Kind::VirtualGateway))
        .collect()
}

/// Each object of `kind` with the resource it was converted to.
fn converted<'a>(
    objects: &'a [(ObjectKey, &'a DynamicObject)],
    resources: &'a [Resource],
    kind: Kind,
) -> impl Iterator<Item = (&'a ObjectKey, &'a DynamicObject, &'a Resource)> {
    objects
        .iter()
        .filter(move |(key, _)| key.kind.kind == kind.name())
        .filter_map(move |(key, object)| {
            let origin = key.origin();
            let resource = resources
                .iter()
                .find(|r| r.kind == kind && r.origin == origin)?;
            Some((key, *object, resource))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::snapshot::fixtures::{app_mesh, cluster, object};

    #[test]
    fn a_cluster_mesh_is_built_with_the_controllers_names_and_service_endpoints() {
        let built = build(&cluster(), &InputOptions::default());
        let Update {
            index,
            service_endpoints: endpoints,
            placement,
        } = built.mesh.map_err(|d| format!("{d:?}")).unwrap();
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
        // web's podSelector selects pod web-1, on node-a.
        assert_eq!(
            placement
                .pods_on("node-a")
                .iter()
                .map(|p| (p.pod.as_str(), p.workload.as_str()))
                .collect::<Vec<_>>(),
            [("shop/web-1", "m/web_shop")]
        );
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
