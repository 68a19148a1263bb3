//! App Mesh API JSON, as `aws appmesh create-* --cli-input-json` takes it and `describe-*`
//! prints it: one resource per file, its kind told by the describe wrapper, `--kind`, its
//! name members, or (for a spec-only file) the spec's shape and the file name.
use std::path::Path;

use serde_json::{Map, Value};

use super::{
    json::{self, JsonError},
    placeholders,
};
use crate::{
    load_options::LoadOptions,
    report::Diagnostic,
    resource::{Format, Kind, Origin, Resource},
    schema,
};

/// The resource in `text` (the file `file`), or what is wrong with it.
pub(super) fn read(
    text: &str,
    file: &Path,
    options: &LoadOptions,
) -> Result<Resource, Vec<Diagnostic>> {
    let origin = Origin {
        file: file.to_owned(),
        line: None,
    };
    let text = placeholders::substitute(text, 1, &options.placeholders)
        .map_err(|found| found.into_iter().map(|d| d.at(&origin)).collect::<Vec<_>>())?;
    let value = json::parse(&text).map_err(|error| vec![json_diagnostic(&error, &origin)])?;
    api_resource(value, file, options).map_err(|diagnostic| vec![diagnostic.at(&origin)])
}

/// What is wrong with a JSON text, at its line (and, for a repeated key, its path).
pub(super) fn json_diagnostic(error: &JsonError, origin: &Origin) -> Diagnostic {
    let (line, path) = match error {
        JsonError::DuplicateKey { path, line, .. } => (*line, Some(path.clone())),
        JsonError::Syntax(error) => (error.line(), None),
    };
    let at = Origin {
        line: Some(line),
        ..origin.clone()
    };
    let diagnostic = Diagnostic::error(error.to_string()).at(&at);
    match path {
        Some(path) => diagnostic.path(path),
        None => diagnostic,
    }
}

/// One API JSON document as a resource: a create/update request body, or a `describe-*`
/// answer (`{"virtualNode": {...}}`, whose read-only `metadata` and `status` are dropped).
/// `file` names the document in diagnostics and hints at its kind.
pub fn api_resource(
    value: Value,
    file: &Path,
    options: &LoadOptions,
) -> Result<Resource, Diagnostic> {
    let Value::Object(mut body) = value else {
        return Err(Diagnostic::error(format!(
            "expected an App Mesh resource object, found {}",
            schema::describe(&value)
        )));
    };
    let described = unwrap_described(&mut body);
    let kind = match described.or(options.kind).or_else(|| kind_by_names(&body)) {
        Some(kind) => kind,
        None => kind_by_spec(&body, file)?,
    };
    fill_names(&mut body, kind, options);
    Ok(Resource {
        kind,
        body,
        origin: Origin {
            file: file.to_owned(),
            line: None,
        },
        format: Format::ApiJson,
    })
}

/// A `describe-*` answer (`{"virtualNode": {...}}`) replaced by its resource, without the
/// read-only `metadata` and `status`; the kind it names.
fn unwrap_described(body: &mut Map<String, Value>) -> Option<Kind> {
    let described = Kind::ALL.into_iter().find(|kind| {
        body.len() == 1 && body.get(kind.describe_key()).is_some_and(Value::is_object)
    });
    if let Some(kind) = described
        && let Some(Value::Object(inner)) = body.remove(kind.describe_key())
    {
        *body = inner;
        body.remove("metadata");
        body.remove("status");
    }
    described
}

/// The names the command line gives (mesh, own, parent) where the document has none.
fn fill_names(body: &mut Map<String, Value>, kind: Kind, options: &LoadOptions) {
    let given = [
        ("meshName", options.mesh_name.as_ref()),
        (kind.name_field(), options.name.as_ref()),
        (
            kind.parent().map_or("", Kind::name_field),
            options.parent.as_ref(),
        ),
    ];
    for (member, value) in given {
        if let Some(value) = value
            && !member.is_empty()
        {
            body.entry(member)
                .or_insert_with(|| Value::String(value.clone()));
        }
    }
}

/// The kind named by the document's name members (most specific first).
fn kind_by_names(body: &Map<String, Value>) -> Option<Kind> {
    [
        Kind::GatewayRoute,
        Kind::Route,
        Kind::VirtualNode,
        Kind::VirtualService,
        Kind::VirtualGateway,
        Kind::VirtualRouter,
    ]
    .into_iter()
    .find(|kind| body.contains_key(kind.name_field()))
    .or_else(|| (body.contains_key("meshName") && !body.contains_key("spec")).then_some(Kind::Mesh))
}

/// A spec-only file (names given on the command line): the kind whose spec shape the spec
/// fits; a file name mentioning the kind breaks ties (`-vn-`, `-vg-`, `gateway-route`).
fn kind_by_spec(body: &Map<String, Value>, file: &Path) -> Result<Kind, Diagnostic> {
    let Some(spec) = body.get("spec") else {
        return Err(Diagnostic::error(
            "cannot tell the resource kind: no name member (virtualNodeName, routeName, ...) \
             and no spec; give --kind",
        ));
    };
    let fits = best_fits(spec);
    if let [only] = fits.as_slice() {
        return Ok(*only);
    }
    // A document naming only its mesh is a mesh, unless its spec says otherwise.
    if body.contains_key("meshName") && fits.contains(&Kind::Mesh) {
        return Ok(Kind::Mesh);
    }
    match hinted_by_file_name(&fits, file).as_slice() {
        [only] => Ok(*only),
        _ => Err(Diagnostic::error(format!(
            "cannot tell the resource kind: the spec fits {}; give --kind",
            fits.iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}

/// The kinds whose spec shape `spec` violates least (in [`Kind::ALL`]'s order).
fn best_fits(spec: &Value) -> Vec<Kind> {
    let model = schema::model();
    let mut scored: Vec<(usize, Kind)> = Kind::ALL
        .into_iter()
        .map(|kind| {
            let violations = model.validate(&kind.spec_shape(), spec, &crate::Path::root("spec"));
            (violations.len(), kind)
        })
        .collect();
    scored.sort();
    let best = scored.first().map_or(0, |(n, _)| *n);
    scored
        .iter()
        .filter(|(n, _)| *n == best)
        .map(|(_, k)| *k)
        .collect()
}

/// Those of `fits` that the file's name mentions.
fn hinted_by_file_name(fits: &[Kind], file: &Path) -> Vec<Kind> {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    fits.iter()
        .copied()
        .filter(|kind| file_name_hints(kind).iter().any(|hint| stem.contains(hint)))
        .collect()
}

fn file_name_hints(kind: &Kind) -> &'static [&'static str] {
    match kind {
        Kind::Mesh => &["mesh"],
        Kind::VirtualNode => &["-vn", "vn-", "node"],
        Kind::VirtualService => &["-vs", "vs-", "service"],
        Kind::VirtualRouter => &["-vr", "vr-", "router"],
        Kind::Route => &["route"],
        Kind::VirtualGateway => &["-vg", "vg-", "vgw", "gateway"],
        Kind::GatewayRoute => &["gateway-route", "gatewayroute", "-gr"],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resource(value: Value, options: &LoadOptions) -> Result<Resource, Diagnostic> {
        api_resource(value, Path::new("f.json"), options)
    }

    #[test]
    fn kind_from_names_and_describe_form() {
        let options = LoadOptions::default();
        let route = resource(
            json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x", "spec": {}}),
            &options,
        )
        .unwrap();
        assert_eq!((route.kind, route.parent()), (Kind::Route, Some("r")));
        let described = resource(
            json!({"virtualNode": {"meshName": "m", "virtualNodeName": "n", "spec": {}, "metadata": {}, "status": {}}}),
            &options,
        )
        .unwrap();
        assert_eq!(described.kind, Kind::VirtualNode);
        assert!(!described.body.contains_key("metadata"));
    }

    #[test]
    fn kind_from_spec_and_file_name() {
        let options = LoadOptions::default();
        let route = resource(json!({"spec": {"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}}}), &options).unwrap();
        assert_eq!(route.kind, Kind::Route);
        let both =
            json!({"spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}});
        let err = resource(both.clone(), &options).unwrap_err();
        assert!(
            err.message
                .contains("VirtualNode and VirtualRouter and VirtualGateway"),
            "{err}"
        );
        let gateway = api_resource(both, Path::new("colorgateway-vg-x.json"), &options).unwrap();
        assert_eq!(gateway.kind, Kind::VirtualGateway);
    }

    #[test]
    fn command_line_names_fill_gaps() {
        let options = LoadOptions {
            mesh_name: Some("demo".into()),
            name: Some("n".into()),
            parent: Some("p".into()),
            ..Default::default()
        };
        let spec = json!({"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}});
        let route = resource(json!({"spec": spec}), &options).unwrap();
        assert_eq!(
            (route.mesh(), route.name(), route.parent()),
            (Some("demo"), Some("n"), Some("p"))
        );
        let node = resource(json!({"virtualNodeName": "own", "spec": {}}), &options).unwrap();
        assert_eq!(
            (node.name(), node.body.contains_key("virtualRouterName")),
            (Some("own"), false)
        );
    }
}
