//! The `appmesh.k8s.aws/v1beta2` CustomResourceDefinitions, generated from the API model: each
//! kind's spec is the API's spec shape in the CRD's spelling (references by object or ARN,
//! `…ARN` spelled upper-case, a Mesh's `meshServiceDiscovery`) plus the controller-only members
//! (`awsName`, `meshRef`, selectors, a router's embedded `routes`) — the inverse of what
//! [`crate::kubernetes`] converts. A cluster that ran the App Mesh controller already has
//! these; the install applies them only where they are missing.
use serde_json::{Map, Value, json};

use crate::{
    kubernetes::{API_GROUP, ARN_SPELLINGS},
    resource::Kind,
    schema::{Shape, model},
};

pub const VERSION: &str = "v1beta2";

/// The status condition mesh-agent's control plane sets on each object: True when it serves
/// it, False with the problems when it refuses it.
pub const ACCEPTED_CONDITION: &str = "MeshAgentAccepted";

/// The kinds with a CRD (routes live inside their VirtualRouter).
pub const KINDS: [Kind; 6] = [
    Kind::Mesh,
    Kind::VirtualNode,
    Kind::VirtualService,
    Kind::VirtualRouter,
    Kind::VirtualGateway,
    Kind::GatewayRoute,
];

/// API members naming another resource, which the CRD gives as `…Ref` (an object) or `…ARN`.
const REFERENCES: [(&str, &str, &str); 5] = [
    (
        "VirtualServiceBackend",
        "virtualServiceName",
        "virtualService",
    ),
    (
        "GatewayRouteVirtualService",
        "virtualServiceName",
        "virtualService",
    ),
    (
        "VirtualNodeServiceProvider",
        "virtualNodeName",
        "virtualNode",
    ),
    (
        "VirtualRouterServiceProvider",
        "virtualRouterName",
        "virtualRouter",
    ),
    ("WeightedTarget", "virtualNode", "virtualNode"),
];

/// The App Mesh API has no shape deeper than this; a deeper walk is a model defect.
const MAX_DEPTH: usize = 32;

/// `virtualnodes`, the CRD's plural.
pub fn plural(kind: Kind) -> String {
    match kind {
        Kind::Mesh => "meshes".into(),
        _ => format!("{}s", kind.name().to_ascii_lowercase()),
    }
}

/// The CustomResourceDefinition of `kind`, as a Kubernetes object.
pub fn definition(kind: Kind) -> Value {
    let singular = kind.name().to_ascii_lowercase();
    let plural = plural(kind);
    let scope = if kind == Kind::Mesh {
        "Cluster"
    } else {
        "Namespaced"
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{API_GROUP}"),
            "labels": {"app.kubernetes.io/part-of": "mesh-agent"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": scope,
            "names": {
                "kind": kind.name(),
                "listKind": format!("{}List", kind.name()),
                "plural": plural,
                "singular": singular,
                "categories": ["appmesh"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Accepted", "type": "string", "jsonPath": format!(".status.conditions[?(@.type==\"{ACCEPTED_CONDITION}\")].status")},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": object_schema(kind)},
            }],
        },
    })
}

/// The whole object: unknown top-level members are kept (as the controller's CRDs did, so
/// manifests that applied there apply here); inside `spec` the schema is exact.
fn object_schema(kind: Kind) -> Value {
    json!({
        "type": "object",
        "description": format!("An App Mesh {} (appmesh.k8s.aws/{VERSION}), served by mesh-agent's control plane.", kind.name()),
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(kind),
            "status": status_schema(),
        },
    })
}

fn spec_schema(kind: Kind) -> Value {
    let mut spec = shape_schema(&kind.spec_shape(), 0);
    let properties = properties_of(&mut spec);
    if kind == Kind::Mesh
        && let Some(discovery) = properties.remove("serviceDiscovery")
    {
        properties.insert("meshServiceDiscovery".into(), discovery);
    }
    for (name, schema) in controller_members(kind) {
        properties.insert(name.into(), schema);
    }
    spec
}

/// The members the controller reads and the API does not have.
fn controller_members(kind: Kind) -> Vec<(&'static str, Value)> {
    let aws_name = (
        "awsName",
        text(
            "The resource's App Mesh name (default: derived from the object's name and namespace).",
        ),
    );
    let mesh_ref = (
        "meshRef",
        json!({
            "type": "object",
            "description": "The mesh the resource belongs to (set from its namespace's mesh when absent).",
            "required": ["name", "uid"],
            "properties": {"name": {"type": "string"}, "uid": {"type": "string"}},
        }),
    );
    let mut members = vec![aws_name];
    match kind {
        Kind::Mesh => {
            members.push((
                "namespaceSelector",
                label_selector("Namespaces whose resources belong to this mesh."),
            ));
            members.push(("meshOwner", text("The account that owns the mesh.")));
        }
        Kind::VirtualNode => members.extend([
            mesh_ref,
            (
                "podSelector",
                label_selector("The pods that are this virtual node."),
            ),
            (
                "backendGroups",
                json!({"type": "array", "description": "Not supported by mesh-agent.", "items": object_reference("A BackendGroup.")}),
            ),
        ]),
        Kind::VirtualRouter => members.extend([
            mesh_ref,
            ("routes", embedded_routes()),
        ]),
        Kind::VirtualGateway => members.extend([
            mesh_ref,
            (
                "podSelector",
                label_selector("The pods that are this virtual gateway."),
            ),
            (
                "namespaceSelector",
                label_selector("Namespaces whose gateway routes attach to this gateway."),
            ),
            (
                "gatewayRouteSelector",
                label_selector("The gateway routes that attach to this gateway."),
            ),
        ]),
        Kind::GatewayRoute => members.extend([
            mesh_ref,
            (
                "virtualGatewayRef",
                object_reference("The virtual gateway (set by the controller from selectors)."),
            ),
        ]),
        Kind::VirtualService | Kind::Route => members.push(mesh_ref),
    }
    members
}

/// A VirtualRouter's `routes`: each a RouteSpec with its name.
fn embedded_routes() -> Value {
    let mut route = shape_schema(&Kind::Route.spec_shape(), 0);
    properties_of(&mut route).insert("name".into(), text("The route's App Mesh name."));
    route["required"] = json!(["name"]);
    json!({"type": "array", "description": "The router's routes, each becoming an App Mesh Route.", "items": route})
}

fn status_schema() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    })
}

fn label_selector(description: &str) -> Value {
    json!({
        "type": "object",
        "description": description,
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    })
}

fn object_reference(description: &str) -> Value {
    json!({
        "type": "object",
        "description": description,
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
    })
}

fn text(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn properties_of(schema: &mut Value) -> &mut Map<String, Value> {
    let object = schema
        .as_object_mut()
        .unwrap_or_else(|| unreachable!("a spec shape is a structure"));
    object
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .unwrap_or_else(|| unreachable!("properties is an object"))
}

/// The model's shape `name` as an OpenAPI v3 schema in the CRD's spelling.
fn shape_schema(name: &str, depth: usize) -> Value {
    assert!(
        depth < MAX_DEPTH,
        "shape {name} nests deeper than {MAX_DEPTH}"
    );
    let shape = model()
        .shape(name)
        .unwrap_or_else(|| panic!("the API model has no shape {name}"));
    match shape.kind.as_str() {
        "structure" => structure_schema(name, shape, depth),
        "list" => {
            let item = shape
                .member
                .as_ref()
                .unwrap_or_else(|| panic!("list shape {name} has no member"));
            let mut schema =
                json!({"type": "array", "items": shape_schema(&item.shape, depth + 1)});
            bound(&mut schema, shape, "minItems", "maxItems");
            schema
        }
        "string" => {
            let mut schema = json!({"type": "string"});
            if let Some(values) = &shape.values {
                schema["enum"] = json!(values);
            }
            bound(&mut schema, shape, "minLength", "maxLength");
            schema
        }
        "integer" | "long" => {
            let mut schema = json!({"type": "integer", "format": if shape.kind == "long" { "int64" } else { "int32" }});
            bound(&mut schema, shape, "minimum", "maximum");
            schema
        }
        "boolean" => json!({"type": "boolean"}),
        "timestamp" => json!({"type": "string", "format": "date-time"}),
        other => panic!("shape {name} has type {other}, which the CRDs do not map"),
    }
}

fn structure_schema(name: &str, shape: &Shape, depth: usize) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (member, spec) in &shape.members {
        let mut schema = shape_schema(&spec.shape, depth + 1);
        if let Some(doc) = spec.documentation.as_deref().and_then(first_sentence) {
            schema["description"] = Value::String(doc);
        }
        if let Some(target) = reference_target(name, member) {
            // By object or by ARN: neither is required on its own.
            properties.insert(
                format!("{target}Ref"),
                object_reference(&format!("The {target} by Kubernetes object.")),
            );
            properties.insert(
                format!("{target}ARN"),
                text(&format!("The {target} by ARN.")),
            );
            continue;
        }
        let crd_name = crd_spelling(member);
        if shape.required.contains(member) {
            required.push(crd_name.clone());
        }
        properties.insert(crd_name, schema);
    }
    let mut schema = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    if shape.union {
        schema["maxProperties"] = json!(1);
    }
    schema
}

fn reference_target(shape: &str, member: &str) -> Option<&'static str> {
    REFERENCES
        .iter()
        .find(|(s, m, _)| *s == shape && *m == member)
        .map(|(_, _, target)| *target)
}

fn crd_spelling(member: &str) -> String {
    ARN_SPELLINGS
        .iter()
        .find(|(api, _)| *api == member)
        .map_or(member, |(_, crd)| crd)
        .to_owned()
}

fn bound(schema: &mut Value, shape: &Shape, min_key: &str, max_key: &str) {
    for (key, value) in [(min_key, shape.min), (max_key, shape.max)] {
        if let Some(value) = value {
            // The model's bounds are whole numbers.
            schema[key] = json!(value as i64);
        }
    }
}

/// The first sentence of the API reference's HTML, as plain text.
fn first_sentence(html: &str) -> Option<String> {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let sentence = match text.find(". ") {
        Some(end) => &text[..=end],
        None => text.as_str(),
    };
    (!sentence.is_empty()).then(|| sentence.trim_end().to_owned())
}

/// Every definition as one multi-document YAML manifest file each: (file name, text).
pub fn manifests() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    KINDS
        .iter()
        .map(|kind| {
            let file = format!("{API_GROUP}_{}.yaml", plural(*kind));
            let text = format!(
                "# Generated by `mesh-agent crds` from the App Mesh API model: do not edit.\n{}",
                serde_saphyr::to_string(&definition(*kind))?
            );
            Ok((file, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_arns_take_the_crds_spelling() {
        let node = definition(Kind::VirtualNode);
        let spec = &node["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let backend = &spec["properties"]["backends"]["items"]["properties"]["virtualService"];
        assert!(
            backend["properties"]["virtualServiceRef"].is_object(),
            "{backend:#}"
        );
        assert!(backend["properties"]["virtualServiceARN"].is_object());
        assert!(backend["properties"]["virtualServiceName"].is_null());
        assert!(
            backend["required"].is_null(),
            "neither Ref nor ARN is required alone"
        );
        assert!(spec["properties"]["podSelector"]["properties"]["matchLabels"].is_object());
        let text = serde_json::to_string(&node).unwrap();
        assert!(text.contains("certificateARN") && !text.contains("certificateArn"));
    }

    #[test]
    fn a_router_embeds_named_routes_and_a_mesh_its_service_discovery() {
        let router = definition(Kind::VirtualRouter);
        let spec =
            &router["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let route = &spec["properties"]["routes"]["items"];
        assert_eq!(route["required"], json!(["name"]));
        let target = &route["properties"]["httpRoute"]["properties"]["action"]["properties"]["weightedTargets"]
            ["items"]["properties"];
        assert!(target["virtualNodeRef"].is_object(), "{target:#}");
        assert_eq!(target["weight"]["maximum"], 100);
        let mesh = definition(Kind::Mesh);
        assert_eq!(mesh["spec"]["scope"], "Cluster");
        let spec = &mesh["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert!(spec["properties"]["meshServiceDiscovery"].is_object());
        assert!(spec["properties"]["serviceDiscovery"].is_null());
    }

    #[test]
    fn descriptions_are_plain_first_sentences() {
        assert_eq!(
            first_sentence("<p>The targeted port of the weighted object.</p> <p>More.</p>")
                .as_deref(),
            Some("The targeted port of the weighted object.")
        );
        assert_eq!(first_sentence("<p></p>"), None);
    }
}
