//! Kubernetes `appmesh.k8s.aws/v1beta2` manifests, converted to the API's form the way the
//! App Mesh controller does (API.md §11): names from `spec.awsName` or the controller's
//! defaults, references by object resolved to App Mesh names, routes embedded in a
//! VirtualRouter split into Route resources, the CRD's spellings (`certificateARN`,
//! `meshServiceDiscovery`) mapped to the API's, controller-only fields dropped.
use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::{
    report::Diagnostic,
    resource::{Format, Kind, Origin, Resource},
};

pub const API_GROUP: &str = "appmesh.k8s.aws";
const API_VERSION: &str = "appmesh.k8s.aws/v1beta2";

/// API members whose CRD spelling differs only in case: (API, CRD).
pub const ARN_SPELLINGS: [(&str, &str); 2] = [
    ("certificateArn", "certificateARN"),
    ("certificateAuthorityArns", "certificateAuthorityARNs"),
];

/// One document of a manifest.
#[derive(Clone, Debug)]
pub struct Document {
    pub value: Value,
    pub origin: Origin,
}

impl Document {
    fn text(&self, path: &[&str]) -> Option<&str> {
        path.iter()
            .try_fold(&self.value, |v, key| v.get(key))
            .and_then(Value::as_str)
    }

    fn kind(&self) -> &str {
        self.text(&["kind"]).unwrap_or("")
    }

    fn name(&self) -> &str {
        self.text(&["metadata", "name"]).unwrap_or("")
    }

    /// Namespaced objects applied without one land in `default`.
    fn namespace(&self) -> &str {
        self.text(&["metadata", "namespace"]).unwrap_or("default")
    }

    fn labels(&self) -> Option<&Map<String, Value>> {
        self.value.get("metadata")?.get("labels")?.as_object()
    }

    fn spec(&self) -> Option<&Map<String, Value>> {
        self.value.get("spec")?.as_object()
    }
}

fn kind_of(name: &str) -> Option<Kind> {
    match name {
        "Mesh" => Some(Kind::Mesh),
        "VirtualNode" => Some(Kind::VirtualNode),
        "VirtualService" => Some(Kind::VirtualService),
        "VirtualRouter" => Some(Kind::VirtualRouter),
        "VirtualGateway" => Some(Kind::VirtualGateway),
        "GatewayRoute" => Some(Kind::GatewayRoute),
        _ => None,
    }
}

/// The App Mesh name of a custom resource: `spec.awsName`, else the controller's default.
fn aws_name(kind: Kind, name: &str, namespace: &str, spec: Option<&Map<String, Value>>) -> String {
    if let Some(aws) = spec.and_then(|s| s.get("awsName")).and_then(Value::as_str) {
        return aws.to_owned();
    }
    match kind {
        Kind::Mesh => name.to_owned(),
        Kind::VirtualService => format!("{name}.{namespace}"),
        _ => format!("{name}_{namespace}"),
    }
}

/// Converts every App Mesh custom resource among `documents`; other objects get a note.
/// `mesh` and `gateway` stand in for a Mesh and VirtualGateway defined outside the input
/// (`--mesh-name`, `--parent`), as the controller would find them in the cluster.
pub fn convert(
    documents: &[Document],
    mesh: Option<&str>,
    gateway: Option<&str>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Resource> {
    let mut context = Context::new(documents);
    context.outside_mesh = mesh.map(str::to_owned);
    context.outside_gateway = gateway.map(str::to_owned);
    convert_in(&context, documents, diagnostics)
}

/// Converts the App Mesh custom resources of a cluster, as the controller does there: a
/// resource's Mesh (without `meshRef`) is the one whose namespaceSelector selects its
/// namespace, and a GatewayRoute's gateway the one whose selectors select it, even when the
/// cluster holds only one (files get that one, as a convenience).
pub fn convert_cluster(documents: &[Document], diagnostics: &mut Vec<Diagnostic>) -> Vec<Resource> {
    let mut context = Context::new(documents);
    context.by_selectors_only = true;
    convert_in(&context, documents, diagnostics)
}

fn convert_in(
    context: &Context<'_>,
    documents: &[Document],
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Resource> {
    let mut resources = Vec::new();
    for document in documents {
        match context.convert_document(document) {
            Ok(mut converted) => resources.append(&mut converted),
            Err(Some(diagnostic)) => diagnostics.push(diagnostic),
            Err(None) => {}
        }
    }
    resources
}

/// The note for a document that is not an App Mesh resource at all.
fn not_app_mesh(document: &Document, api_version: &str) -> Diagnostic {
    Diagnostic::note(format!(
        "skipped {} {} ({}): not an App Mesh resource",
        if document.kind().is_empty() {
            "document"
        } else {
            document.kind()
        },
        document.name(),
        if api_version.is_empty() {
            "no apiVersion"
        } else {
            api_version
        }
    ))
    .at(&document.origin)
}

/// Why an App Mesh custom resource cannot be converted (as the controller would refuse it).
#[derive(Debug, thiserror::Error)]
enum ConvertError {
    #[error(
        "spec.backendGroups is not supported (an experimental controller feature): \
         list the backends instead"
    )]
    BackendGroups,
    #[error("spec.routes: each route must be an object")]
    RouteNotObject,
    #[error(
        "no Mesh in the input selects namespace {namespace} (spec.namespaceSelector); set spec.meshRef, include the Mesh or give --mesh-name"
    )]
    NoMesh { namespace: String },
    #[error("several Meshes select namespace {namespace}; set spec.meshRef")]
    SeveralMeshes { namespace: String },
    #[error(
        "no VirtualGateway in the input selects this GatewayRoute (namespaceSelector, \
         gatewayRouteSelector); include it or give --parent"
    )]
    NoGateway,
    #[error("several VirtualGateways select this GatewayRoute; the controller rejects that")]
    SeveralGateways,
    #[error(
        "{field}: {arn:?} is not an App Mesh {kind} ARN (arn:aws:appmesh:REGION:ACCOUNT:mesh/MESH/{segment}/NAME)"
    )]
    NotAnArn {
        field: String,
        arn: String,
        kind: Kind,
        segment: &'static str,
    },
}

/// The name an App Mesh ARN gives a resource of `kind`: the last segment of
/// `arn:PARTITION:appmesh:REGION:ACCOUNT:mesh/MESH[@OWNER]/SEGMENT/NAME`, as the controller
/// parses it (`^mesh/([^/]+)/([^/]+)/([^/]+)$` on the resource part).
fn name_from_arn(field: &str, arn: &str, kind: Kind) -> Result<String, ConvertError> {
    // An ARN names the kind as `describe-*` does (`mesh/m/virtualNode/n`).
    let segment = kind.describe_key();
    let not_an_arn = || ConvertError::NotAnArn {
        field: field.to_owned(),
        arn: arn.to_owned(),
        kind,
        segment,
    };
    let mut parts = arn.splitn(6, ':');
    let (
        Some("arn"),
        Some(_partition),
        Some("appmesh"),
        Some(_region),
        Some(_account),
        Some(resource),
    ) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    )
    else {
        return Err(not_an_arn());
    };
    match resource.split('/').collect::<Vec<_>>().as_slice() {
        ["mesh", mesh, found, name]
            if !mesh.is_empty() && *found == segment && !name.is_empty() =>
        {
            Ok((*name).to_owned())
        }
        _ => Err(not_an_arn()),
    }
}

/// The CRD's spec members made the API's, in place: controller-only members dropped, a
/// Mesh's `meshServiceDiscovery` renamed. A VirtualRouter's embedded `routes` are taken out
/// and returned.
fn to_api_members(
    kind: Kind,
    spec: &mut Map<String, Value>,
) -> Result<Option<Value>, ConvertError> {
    for controller_only in [
        "awsName",
        "meshRef",
        "podSelector",
        "namespaceSelector",
        "gatewayRouteSelector",
        "virtualGatewayRef",
        "meshOwner",
    ] {
        spec.remove(controller_only);
    }
    if let Some(groups) = spec.remove("backendGroups")
        && groups.as_array().is_some_and(|g| !g.is_empty())
    {
        return Err(ConvertError::BackendGroups);
    }
    if kind == Kind::Mesh
        && let Some(discovery) = spec.remove("meshServiceDiscovery")
    {
        spec.insert("serviceDiscovery".into(), discovery);
    }
    Ok(if kind == Kind::VirtualRouter {
        spec.remove("routes")
    } else {
        None
    })
}

struct Context<'a> {
    meshes: Vec<&'a Document>,
    gateways: Vec<&'a Document>,
    namespace_labels: HashMap<&'a str, &'a Map<String, Value>>,
    /// (kind, namespace, metadata.name) -> App Mesh name, for references.
    names: HashMap<(Kind, &'a str, &'a str), String>,
    outside_mesh: Option<String>,
    outside_gateway: Option<String>,
    /// Meshes and gateways are found by their selectors only (in a cluster).
    by_selectors_only: bool,
}

impl<'a> Context<'a> {
    fn new(documents: &'a [Document]) -> Self {
        let mut context = Self {
            meshes: Vec::new(),
            gateways: Vec::new(),
            namespace_labels: HashMap::new(),
            names: HashMap::new(),
            outside_mesh: None,
            outside_gateway: None,
            by_selectors_only: false,
        };
        for document in documents {
            if document.kind() == "Namespace" {
                if let Some(labels) = document.labels() {
                    context.namespace_labels.insert(document.name(), labels);
                }
                continue;
            }
            let Some(kind) = kind_of(document.kind()) else {
                continue;
            };
            if document.text(&["apiVersion"]) != Some(API_VERSION) {
                continue;
            }
            match kind {
                Kind::Mesh => context.meshes.push(document),
                Kind::VirtualGateway => context.gateways.push(document),
                _ => {}
            }
            let name = aws_name(kind, document.name(), document.namespace(), document.spec());
            context
                .names
                .insert((kind, document.namespace(), document.name()), name);
        }
        context
    }

    /// One document's resources; a diagnostic (or nothing, for a Namespace) when it gives
    /// none.
    fn convert_document(&self, document: &Document) -> Result<Vec<Resource>, Option<Diagnostic>> {
        let api_version = document.text(&["apiVersion"]).unwrap_or("");
        let group = api_version.split('/').next().unwrap_or("");
        if group != API_GROUP {
            if document.kind() == "Namespace" {
                return Err(None); // read for mesh membership
            }
            return Err(Some(not_app_mesh(document, api_version)));
        }
        let resource = |message: String| {
            Diagnostic::error(message)
                .at(&document.origin)
                .resource(format!("{} {}", document.kind(), document.name()))
        };
        if api_version != API_VERSION {
            return Err(Some(resource(format!(
                "{api_version} is not supported: only {API_VERSION} (the controller serves no other version)"
            ))));
        }
        let Some(kind) = kind_of(document.kind()) else {
            return Err(Some(
                Diagnostic::note(format!(
                    "skipped {} {}: not an App Mesh API resource (controller-only)",
                    document.kind(),
                    document.name()
                ))
                .at(&document.origin),
            ));
        };
        self.convert(kind, document)
            .map_err(|error| Some(resource(error.to_string())))
    }

    fn convert(&self, kind: Kind, document: &Document) -> Result<Vec<Resource>, ConvertError> {
        let namespace = document.namespace();
        let mut spec = document.spec().cloned().unwrap_or_default();
        let name = aws_name(kind, document.name(), namespace, Some(&spec));
        let mesh = match kind {
            Kind::Mesh => name.clone(),
            _ => self.mesh_of(document)?,
        };
        let routes = to_api_members(kind, &mut spec)?;
        let mut spec = Value::Object(spec);
        self.to_api_spelling(&mut spec, namespace)?;
        let mut body = Map::new();
        body.insert("meshName".into(), Value::String(mesh.clone()));
        body.insert(kind.name_field().into(), Value::String(name.clone()));
        if kind == Kind::GatewayRoute {
            body.insert(
                "virtualGatewayName".into(),
                Value::String(self.gateway_of(document)?),
            );
        }
        body.insert("spec".into(), spec);
        let resource = |kind, body| Resource {
            kind,
            body,
            origin: document.origin.clone(),
            format: Format::Kubernetes,
        };
        let mut resources = vec![resource(kind, body)];
        for route in routes
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let body = self.route_body(route, &mesh, &name, namespace)?;
            resources.push(resource(Kind::Route, body));
        }
        Ok(resources)
    }

    /// A route embedded in VirtualRouter `router` as the body of a Route.
    fn route_body(
        &self,
        route: &Value,
        mesh: &str,
        router: &str,
        namespace: &str,
    ) -> Result<Map<String, Value>, ConvertError> {
        let mut route = route.clone();
        self.to_api_spelling(&mut route, namespace)?;
        let Value::Object(mut route) = route else {
            return Err(ConvertError::RouteNotObject);
        };
        let route_name = route.remove("name").unwrap_or(Value::Null);
        let mut body = Map::new();
        body.insert("meshName".into(), Value::String(mesh.to_owned()));
        body.insert("virtualRouterName".into(), Value::String(router.to_owned()));
        body.insert("routeName".into(), route_name);
        body.insert("spec".into(), Value::Object(route));
        Ok(body)
    }

    /// The controller sets `meshRef` from the Mesh whose namespaceSelector matches the
    /// object's namespace; with a single Mesh in the input that is the one.
    fn mesh_of(&self, document: &Document) -> Result<String, ConvertError> {
        if let Some(mesh) = document.text(&["spec", "meshRef", "name"]) {
            return Ok(self
                .meshes
                .iter()
                .find(|m| m.name() == mesh)
                .map(|m| aws_name(Kind::Mesh, m.name(), "", m.spec()))
                .unwrap_or_else(|| mesh.to_owned()));
        }
        let candidates: Vec<&&Document> = match self.meshes.as_slice() {
            [single] if !self.by_selectors_only => vec![single],
            meshes => meshes
                .iter()
                .filter(|m| self.selects(m, "namespaceSelector", document.namespace()))
                .collect(),
        };
        match candidates.as_slice() {
            [mesh] => Ok(aws_name(Kind::Mesh, mesh.name(), "", mesh.spec())),
            [] if self.outside_mesh.is_some() => Ok(self.outside_mesh.clone().unwrap_or_default()),
            [] => Err(ConvertError::NoMesh {
                namespace: document.namespace().to_owned(),
            }),
            _ => Err(ConvertError::SeveralMeshes {
                namespace: document.namespace().to_owned(),
            }),
        }
    }

    /// The gateway of a GatewayRoute: `virtualGatewayRef`, or the single VirtualGateway whose
    /// namespaceSelector (and gatewayRouteSelector) matches, as the controller chooses it.
    fn gateway_of(&self, document: &Document) -> Result<String, ConvertError> {
        if let Some(name) = document.text(&["spec", "virtualGatewayRef", "name"]) {
            let namespace = document
                .text(&["spec", "virtualGatewayRef", "namespace"])
                .unwrap_or(document.namespace());
            return Ok(self.reference(Kind::VirtualGateway, namespace, name));
        }
        let matching: Vec<&&Document> = self
            .gateways
            .iter()
            .filter(|g| {
                ((self.gateways.len() == 1 && !self.by_selectors_only)
                    || self.selects(g, "namespaceSelector", document.namespace()))
                    && label_selector_matches(
                        g.spec().and_then(|s| s.get("gatewayRouteSelector")),
                        document.labels(),
                    )
            })
            .collect();
        match matching.as_slice() {
            [gateway] => Ok(aws_name(
                Kind::VirtualGateway,
                gateway.name(),
                gateway.namespace(),
                gateway.spec(),
            )),
            [] => self.outside_gateway.clone().ok_or(ConvertError::NoGateway),
            _ => Err(ConvertError::SeveralGateways),
        }
    }

    fn selects(&self, owner: &Document, selector: &str, namespace: &str) -> bool {
        let selector = owner.spec().and_then(|s| s.get(selector));
        selector.is_some()
            && label_selector_matches(selector, self.namespace_labels.get(namespace).copied())
    }

    fn reference(&self, kind: Kind, namespace: &str, name: &str) -> String {
        self.names
            .get(&(kind, namespace, name))
            .cloned()
            .unwrap_or_else(|| aws_name(kind, name, namespace, None))
    }

    /// Renames the CRD's spellings to the API's and resolves references in place; the first
    /// reference that cannot be resolved (an ARN that is not one) is the error.
    fn to_api_spelling(&self, value: &mut Value, namespace: &str) -> Result<(), ConvertError> {
        let mut first_error = None;
        rename_members(
            value,
            false,
            &mut |key, child, in_weighted_target| match self.rename(
                key,
                child,
                namespace,
                in_weighted_target,
            ) {
                Ok((key, resolved)) => (key, resolved.map(Value::String)),
                Err(error) => {
                    first_error.get_or_insert(error);
                    (key.to_owned(), None)
                }
            },
        );
        first_error.map_or(Ok(()), Err)
    }

    /// The API key for a CRD key, and the resolved name when the key is a reference.
    fn rename(
        &self,
        key: &str,
        value: &Value,
        namespace: &str,
        in_weighted_target: bool,
    ) -> Result<(String, Option<String>), ConvertError> {
        let reference = |kind: Kind| -> Option<String> {
            let name = value.get("name")?.as_str()?;
            let ns = value
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            Some(self.reference(kind, ns, name))
        };
        let from_arn = |kind: Kind| match value {
            Value::String(arn) => name_from_arn(key, arn, kind).map(Some),
            // Not a string: left for validation to report with the field's path.
            _ => Ok(None),
        };
        if let Some((api, _)) = ARN_SPELLINGS.iter().find(|(_, crd)| *crd == key) {
            return Ok(((*api).to_owned(), None));
        }
        Ok(match key {
            "virtualServiceRef" => ("virtualServiceName".into(), reference(Kind::VirtualService)),
            "virtualServiceARN" => ("virtualServiceName".into(), from_arn(Kind::VirtualService)?),
            "virtualRouterRef" => ("virtualRouterName".into(), reference(Kind::VirtualRouter)),
            "virtualRouterARN" => ("virtualRouterName".into(), from_arn(Kind::VirtualRouter)?),
            "virtualNodeRef" | "virtualNodeARN" => {
                // A weighted target names its node `virtualNode`; providers `virtualNodeName`.
                let api = if in_weighted_target {
                    "virtualNode"
                } else {
                    "virtualNodeName"
                };
                let resolved = if key == "virtualNodeRef" {
                    reference(Kind::VirtualNode)
                } else {
                    from_arn(Kind::VirtualNode)?
                };
                (api.into(), resolved)
            }
            _ => (key.to_owned(), None),
        })
    }
}

/// `(key, value, in_weighted_target)` -> (new key, new value for a reference).
pub(crate) type Rename<'a> = dyn FnMut(&str, &Value, bool) -> (String, Option<Value>) + 'a;

/// Walks a JSON tree renaming object members: `rename(key, value, in_weighted_target)` gives
/// the new key and, for a reference, the new value; members keeping their value are walked
/// into (items of `weightedTargets` with the flag set, since a weighted target names its node
/// differently from everything else).
pub(crate) fn rename_members(value: &mut Value, in_weighted_target: bool, rename: &mut Rename<'_>) {
    match value {
        Value::Object(object) => {
            let keys: Vec<String> = object.keys().cloned().collect();
            for key in keys {
                let Some(mut child) = object.remove(&key) else {
                    continue;
                };
                let (new_key, replaced) = rename(&key, &child, in_weighted_target);
                match replaced {
                    Some(value) => child = value,
                    None => rename_members(&mut child, key == "weightedTargets", rename),
                }
                object.insert(new_key, child);
            }
        }
        Value::Array(items) => {
            for item in items {
                rename_members(item, in_weighted_target, rename);
            }
        }
        _ => {}
    }
}

/// A Kubernetes label selector (`matchLabels`, `matchExpressions` with In/NotIn/Exists/
/// DoesNotExist) against a label set; an absent selector matches everything.
pub fn label_selector_matches(
    selector: Option<&Value>,
    labels: Option<&Map<String, Value>>,
) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(key, value)| label(key) == value.as_str());
    let expressions_ok = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|expression| {
            let key = expression.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = expression
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match expression.get("operator").and_then(Value::as_str) {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(value: Value) -> Document {
        Document {
            value,
            origin: Origin {
                file: "m.yaml".into(),
                line: Some(1),
            },
        }
    }

    fn convert_all(values: Vec<Value>) -> (Vec<Resource>, Vec<Diagnostic>) {
        let documents: Vec<Document> = values.into_iter().map(doc).collect();
        let mut diagnostics = Vec::new();
        (
            convert(&documents, None, None, &mut diagnostics),
            diagnostics,
        )
    }

    #[test]
    fn in_a_cluster_the_only_mesh_must_still_select_the_namespace() {
        let documents: Vec<Document> = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"mesh": "m"}}}),
            json!({"apiVersion": API_VERSION, "kind": "Mesh", "metadata": {"name": "m"}, "spec": {"namespaceSelector": {"matchLabels": {"mesh": "m"}}}}),
            json!({"apiVersion": API_VERSION, "kind": "VirtualNode", "metadata": {"name": "in", "namespace": "shop"}, "spec": {}}),
            json!({"apiVersion": API_VERSION, "kind": "VirtualNode", "metadata": {"name": "out", "namespace": "other"}, "spec": {}}),
        ]
        .into_iter()
        .map(doc)
        .collect();
        let mut diagnostics = Vec::new();
        let resources = convert_cluster(&documents, &mut diagnostics);
        assert_eq!(resources.len(), 2, "{resources:?}");
        assert_eq!(resources[1].name(), Some("in_shop"));
        let errors: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("VirtualNode out: no Mesh in the input selects namespace other"),
            "{errors:?}"
        );
        // Files keep the convenience: the only Mesh is everyone's.
        let mut diagnostics = Vec::new();
        assert_eq!(convert(&documents, None, None, &mut diagnostics).len(), 3);
    }

    #[test]
    fn converts_names_references_and_embedded_routes() {
        let (resources, diagnostics) = convert_all(vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"mesh": "m"}}}),
            json!({"apiVersion": API_VERSION, "kind": "Mesh", "metadata": {"name": "m"}, "spec": {"namespaceSelector": {"matchLabels": {"mesh": "m"}}}}),
            json!({"apiVersion": API_VERSION, "kind": "VirtualRouter", "metadata": {"name": "r", "namespace": "shop"}, "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                "routes": [{"name": "main", "httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNodeRef": {"name": "n"}, "weight": 1}]}}}]}}),
            json!({"apiVersion": API_VERSION, "kind": "VirtualService", "metadata": {"name": "s", "namespace": "shop"}, "spec": {
                "awsName": "s.shop.svc.cluster.local", "provider": {"virtualRouter": {"virtualRouterRef": {"name": "r"}}}}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
        ]);
        let notes: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            notes,
            vec!["m.yaml:1: note: skipped Deployment web (apps/v1): not an App Mesh resource"]
        );
        let names: Vec<(Kind, Option<&str>, Option<&str>)> = resources
            .iter()
            .map(|r| (r.kind, r.mesh(), r.name()))
            .collect();
        assert_eq!(
            names,
            vec![
                (Kind::Mesh, Some("m"), Some("m")),
                (Kind::VirtualRouter, Some("m"), Some("r_shop")),
                (Kind::Route, Some("m"), Some("main")),
                (
                    Kind::VirtualService,
                    Some("m"),
                    Some("s.shop.svc.cluster.local")
                ),
            ]
        );
        assert_eq!(resources[2].parent(), Some("r_shop"));
        assert_eq!(
            resources[2].spec().unwrap()["httpRoute"]["action"]["weightedTargets"][0],
            json!({"virtualNode": "n_shop", "weight": 1})
        );
        assert_eq!(
            resources[3].spec().unwrap(),
            &json!({"provider": {"virtualRouter": {"virtualRouterName": "r_shop"}}})
        );
        assert!(
            resources[0]
                .spec()
                .unwrap()
                .get("namespaceSelector")
                .is_none()
        );
    }

    #[test]
    fn arn_spellings_and_arn_references() {
        let (resources, _) = convert_all(vec![
            json!({"apiVersion": API_VERSION, "kind": "Mesh", "metadata": {"name": "m"}, "spec": {"meshServiceDiscovery": {"ipPreference": "IPv4_ONLY"}}}),
            json!({"apiVersion": API_VERSION, "kind": "VirtualNode", "metadata": {"name": "n", "namespace": "x"}, "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}, "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateARN": "arn:c"}}}}],
                "backends": [{"virtualService": {"virtualServiceARN": "arn:aws:appmesh:r:1:mesh/m/virtualService/other.local"}}]}}),
        ]);
        assert_eq!(
            resources[0].spec().unwrap(),
            &json!({"serviceDiscovery": {"ipPreference": "IPv4_ONLY"}})
        );
        let node = resources[1].spec().unwrap();
        assert_eq!(
            node["listeners"][0]["tls"]["certificate"]["acm"],
            json!({"certificateArn": "arn:c"})
        );
        assert_eq!(
            node["backends"][0]["virtualService"],
            json!({"virtualServiceName": "other.local"})
        );
    }

    #[test]
    fn arn_references_are_parsed_as_arns() {
        let node = |arn: &str| {
            json!({"apiVersion": API_VERSION, "kind": "VirtualNode", "metadata": {"name": "n"}, "spec": {
                "backends": [{"virtualService": {"virtualServiceARN": arn}}]}})
        };
        let mesh = json!({"apiVersion": API_VERSION, "kind": "Mesh", "metadata": {"name": "m"}});
        let (resources, diagnostics) = convert_all(vec![
            mesh.clone(),
            node(
                "arn:aws:appmesh:us-west-2:123456789012:mesh/m@210987654321/virtualService/s.local",
            ),
        ]);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(
            resources[1].spec().unwrap()["backends"][0]["virtualService"],
            json!({"virtualServiceName": "s.local"})
        );
        for wrong in [
            "colorapp-service-ARN",
            "arn:aws:appmesh:us-west-2:123456789012:mesh/m/virtualNode/s.local",
            "arn:aws:s3:::bucket/virtualService/s.local",
            "arn:aws:appmesh:us-west-2:123456789012:mesh/m/virtualService/",
        ] {
            let (_, diagnostics) = convert_all(vec![mesh.clone(), node(wrong)]);
            let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
            assert!(
                text.len() == 1
                    && text[0].contains(&format!(
                        "VirtualNode n: virtualServiceARN: \"{wrong}\" is not an App Mesh VirtualService ARN"
                    )),
                "{text:?}"
            );
        }
    }

    #[test]
    fn old_versions_and_unowned_objects_are_errors() {
        let (_, diagnostics) = convert_all(vec![
            json!({"apiVersion": "appmesh.k8s.aws/v1beta1", "kind": "VirtualNode", "metadata": {"name": "n"}}),
            json!({"apiVersion": API_VERSION, "kind": "VirtualNode", "metadata": {"name": "lost"}, "spec": {}}),
        ]);
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("VirtualNode n: appmesh.k8s.aws/v1beta1 is not supported"),
            "{text:?}"
        );
        assert!(
            text[1].contains("VirtualNode lost: no Mesh in the input selects namespace default"),
            "{text:?}"
        );
    }

    #[test]
    fn selectors() {
        let labels = json!({"a": "1", "b": "2"});
        let labels = labels.as_object();
        assert!(label_selector_matches(
            Some(&json!({"matchLabels": {"a": "1"}})),
            labels
        ));
        assert!(!label_selector_matches(
            Some(&json!({"matchLabels": {"a": "2"}})),
            labels
        ));
        assert!(label_selector_matches(
            Some(
                &json!({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]})
            ),
            labels
        ));
        assert!(!label_selector_matches(
            Some(&json!({"matchExpressions": [{"key": "c", "operator": "Exists"}]})),
            labels
        ));
        assert!(label_selector_matches(None, None));
    }
}
