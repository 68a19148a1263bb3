//! Converting resources between formats: to Kubernetes `appmesh.k8s.aws/v1beta2` manifests
//! (the reverse of [`crate::kubernetes`]) and to App Mesh API JSON request files.
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::{
    kubernetes::{API_GROUP, rename_members},
    resource::{Kind, Resource},
};

/// The label that puts a namespace in a mesh and a gateway route under its gateway.
const MESH_LABEL: &str = "appmesh.k8s.aws/mesh";
const GATEWAY_LABEL: &str = "appmesh.k8s.aws/gateway";

/// A Kubernetes object name (RFC 1123: lower-case alphanumerics, `-` and `.`) for an App Mesh
/// name; `spec.awsName` keeps the exact App Mesh name.
pub fn object_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches(|c| c == '-' || c == '.');
    if trimmed.is_empty() {
        "unnamed".into()
    } else {
        trimmed.chars().take(253).collect()
    }
}

/// Why resources cannot be written as one Kubernetes manifest.
#[derive(Debug, thiserror::Error)]
pub enum ToKubernetesError {
    #[error("a Kubernetes namespace belongs to one mesh: convert one mesh at a time")]
    SeveralMeshes,
    #[error("routes refer to VirtualRouter {router}, which is not among the inputs")]
    UnknownRouter { router: String },
    #[error(transparent)]
    Yaml(#[from] serde_saphyr::SerializeError),
}

/// The resources as one multi-document manifest in `namespace`: a Namespace labelled into
/// each mesh, Mesh objects selecting it, routes embedded in their VirtualRouter, references by
/// object, gateway routes selected by their gateway's label.
pub fn to_kubernetes(resources: &[Resource], namespace: &str) -> Result<String, ToKubernetesError> {
    let meshes: Vec<&Resource> = resources.iter().filter(|r| r.kind == Kind::Mesh).collect();
    if meshes.len() > 1 {
        return Err(ToKubernetesError::SeveralMeshes);
    }
    let mesh_name = meshes
        .first()
        .and_then(|m| m.name())
        .or_else(|| resources.iter().find_map(Resource::mesh))
        .unwrap_or("mesh");
    let mut documents = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {MESH_LABEL: object_name(mesh_name)}}
    })];
    let mut routes = routes_by_router(resources);
    let targets = Targets {
        mesh: mesh_name,
        names: resources
            .iter()
            .filter_map(|r| Some((r.kind, r.name()?)))
            .collect(),
    };
    for resource in resources.iter().filter(|r| r.kind != Kind::Route) {
        documents.push(crd_document(resource, &targets, namespace, &mut routes));
    }
    if let Some(router) = routes.keys().next() {
        return Err(ToKubernetesError::UnknownRouter {
            router: (*router).to_owned(),
        });
    }
    let mut manifest = String::new();
    for document in documents {
        manifest.push_str("---\n");
        // serde-saphyr quotes strings a YAML 1.1 reader (kubectl, PyYAML) would take for
        // another type: `exact: "yes"` stays a string.
        manifest.push_str(&serde_saphyr::to_string(&document)?);
    }
    Ok(manifest)
}

/// The route specs (named) by the name of their VirtualRouter, to embed in it.
fn routes_by_router(resources: &[Resource]) -> BTreeMap<&str, Vec<Value>> {
    let mut routes: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for route in resources.iter().filter(|r| r.kind == Kind::Route) {
        let mut spec = api_spec(route);
        match_everything_explicitly(Kind::Route, &mut spec);
        spec.insert("name".into(), json!(route.name().unwrap_or_default()));
        routes
            .entry(route.parent().unwrap_or_default())
            .or_default()
            .push(Value::Object(spec));
    }
    routes
}

/// The custom resource for `resource` (not a route: those are taken from `routes` into their
/// VirtualRouter).
fn crd_document(
    resource: &Resource,
    targets: &Targets<'_>,
    namespace: &str,
    routes: &mut BTreeMap<&str, Vec<Value>>,
) -> Value {
    let name = resource.name().unwrap_or_default();
    let mesh_name = targets.mesh;
    let mut spec = api_spec(resource);
    let mut metadata = json!({"name": object_name(name)});
    match resource.kind {
        Kind::Mesh => {
            if let Some(discovery) = spec.remove("serviceDiscovery") {
                spec.insert("meshServiceDiscovery".into(), discovery);
            }
            spec.insert(
                "namespaceSelector".into(),
                json!({"matchLabels": {MESH_LABEL: object_name(mesh_name)}}),
            );
        }
        Kind::VirtualRouter => {
            if let Some(embedded) = routes.remove(name) {
                spec.insert("routes".into(), Value::Array(embedded));
            }
            metadata["namespace"] = json!(namespace);
        }
        Kind::VirtualGateway => {
            spec.insert(
                "namespaceSelector".into(),
                json!({"matchLabels": {MESH_LABEL: object_name(mesh_name)}}),
            );
            spec.insert(
                "gatewayRouteSelector".into(),
                json!({"matchLabels": {GATEWAY_LABEL: object_name(name)}}),
            );
            metadata["namespace"] = json!(namespace);
        }
        Kind::GatewayRoute => {
            match_everything_explicitly(Kind::GatewayRoute, &mut spec);
            metadata["namespace"] = json!(namespace);
            metadata["labels"] =
                json!({GATEWAY_LABEL: object_name(resource.parent().unwrap_or_default())});
        }
        _ => metadata["namespace"] = json!(namespace),
    }
    spec.insert("awsName".into(), json!(name));
    let mut spec = Value::Object(spec);
    to_crd_spelling(&mut spec, targets);
    json!({
        "apiVersion": format!("{API_GROUP}/v1beta2"),
        "kind": resource.kind.name(),
        "metadata": metadata,
        "spec": spec,
    })
}

/// The controller's webhooks require an HTTP match to name a path (`prefix` or `path`; a
/// gateway route may name a `hostname` instead), where the API does not: a match on `port`
/// or headers alone gets `prefix: /`, which matches every path, as the API's match did.
fn match_everything_explicitly(kind: Kind, spec: &mut Map<String, Value>) {
    for route_type in ["httpRoute", "http2Route"] {
        let Some(Value::Object(matching)) = spec
            .get_mut(route_type)
            .and_then(|route| route.get_mut("match"))
        else {
            continue;
        };
        let names_path = matching.contains_key("prefix")
            || matching.contains_key("path")
            || (kind == Kind::GatewayRoute && matching.contains_key("hostname"));
        if !names_path {
            matching.insert("prefix".into(), json!("/"));
        }
    }
}

fn api_spec(resource: &Resource) -> Map<String, Value> {
    resource
        .spec()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// What references can name: the mesh, and the resources among the inputs (kind, name).
struct Targets<'a> {
    mesh: &'a str,
    names: std::collections::HashSet<(Kind, &'a str)>,
}

/// API names to CRD references, in place: `virtualServiceName: x` → `virtualServiceRef:
/// {name: x'}` for a resource among the inputs (its object carries the exact name as
/// `awsName`), `virtualServiceARN` for one defined elsewhere (an object reference would
/// name it by the controller's default instead); ARN spellings.
fn to_crd_spelling(value: &mut Value, targets: &Targets<'_>) {
    rename_members(value, false, &mut |key, child, in_weighted_target| {
        let name = child.as_str().unwrap_or_default();
        let reference = |kind: Kind, ref_key: &str, arn_key: &str| {
            if targets.names.contains(&(kind, name)) {
                (ref_key.to_owned(), Some(json!({"name": object_name(name)})))
            } else {
                let arn = format!(
                    "arn:aws:appmesh:us-east-1:123456789012:mesh/{}/{}/{name}",
                    targets.mesh,
                    kind.describe_key()
                );
                (arn_key.to_owned(), Some(json!(arn)))
            }
        };
        match key {
            "certificateArn" => ("certificateARN".to_owned(), None),
            "certificateAuthorityArns" => ("certificateAuthorityARNs".to_owned(), None),
            "virtualServiceName" => reference(
                Kind::VirtualService,
                "virtualServiceRef",
                "virtualServiceARN",
            ),
            "virtualRouterName" => {
                reference(Kind::VirtualRouter, "virtualRouterRef", "virtualRouterARN")
            }
            "virtualNodeName" => reference(Kind::VirtualNode, "virtualNodeRef", "virtualNodeARN"),
            "virtualNode" if in_weighted_target => {
                reference(Kind::VirtualNode, "virtualNodeRef", "virtualNodeARN")
            }
            _ => (key.to_owned(), None),
        }
    });
}

/// The resources as App Mesh API request files: (file name, JSON), one per resource, as
/// `aws appmesh create-<kind> --cli-input-json file://<name>` takes them.
pub fn to_api_json(resources: &[Resource]) -> Vec<(String, String)> {
    resources
        .iter()
        .map(|resource| {
            let mut name = format!(
                "{}-{}",
                resource.kind.cli_name(),
                object_name(resource.name().unwrap_or_default())
            );
            if let Some(parent) = resource.parent() {
                name = format!(
                    "{}-{}-{}",
                    resource.kind.cli_name(),
                    object_name(parent),
                    object_name(resource.name().unwrap_or_default())
                );
            }
            let text = serde_json::to_string_pretty(&Value::Object(resource.body.clone()))
                .unwrap_or_default();
            (format!("{name}.json"), text + "\n")
        })
        .collect()
}
