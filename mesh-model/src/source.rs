//! Reading App Mesh resources from files: the App Mesh API's JSON, as
//! `aws appmesh create-* --cli-input-json` takes it and `describe-*` prints it, and YAML:
//! Kubernetes manifests (multi-document) and CloudFormation templates.
use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::{
    cloudformation, kubernetes,
    report::Diagnostic,
    resource::{Format, Kind, Origin, Resource},
    schema,
};

/// What to do with `$VAR` / `${VAR}` placeholders.
#[derive(Clone, Debug, Default)]
pub enum Placeholders {
    /// Report each as an error with its position.
    #[default]
    Report,
    /// Substitute from the process environment (`--env`).
    FromEnv,
    /// Substitute from this table.
    From(std::collections::HashMap<String, String>),
}

impl Placeholders {
    fn lookup(&self, name: &str) -> Option<String> {
        match self {
            Placeholders::Report => None,
            Placeholders::FromEnv => std::env::var(name).ok(),
            Placeholders::From(table) => table.get(name).cloned(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub placeholders: Placeholders,
    /// The kind of spec-only files, as `--kind` on the command line.
    pub kind: Option<Kind>,
    /// Names for files that leave them to the command line, as the AWS CLI's
    /// `--mesh-name`, `--virtual-node-name` (any kind) and `--virtual-router-name` /
    /// `--virtual-gateway-name` (the parent of a route or gateway route).
    pub mesh_name: Option<String>,
    pub name: Option<String>,
    pub parent: Option<String>,
    /// CloudFormation parameter values (`--parameter Name=value`), pseudo parameters such as
    /// `AWS::StackName` included; they override a parameter's Default.
    pub parameters: Vec<(String, String)>,
}

/// Everything read from `paths` (files, or directories walked recursively).
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
}

pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Loaded {
    let mut loaded = Loaded::default();
    // Kubernetes objects refer to each other across files (a Mesh here, its nodes there):
    // they are converted together once everything is read.
    let mut manifests = Vec::new();
    for path in paths {
        for file in files_under(path, &mut loaded.diagnostics) {
            load_file(&file, options, &mut loaded, &mut manifests);
        }
    }
    let converted = kubernetes::convert(
        &manifests,
        options.mesh_name.as_deref(),
        options.parent.as_deref(),
        &mut loaded.diagnostics,
    );
    loaded.resources.extend(converted);
    loaded
}

fn files_under(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let origin = Origin {
        file: path.to_owned(),
        line: None,
    };
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => {
            diagnostics.push(Diagnostic::error(format!("cannot read: {error}")).at(&origin));
            return Vec::new();
        }
    };
    let mut children: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    children.sort();
    children
        .into_iter()
        .flat_map(|child| {
            if child.is_dir() {
                files_under(&child, diagnostics)
            } else if is_mesh_file(&child) {
                vec![child]
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// JSON and YAML files, and their envsubst templates (`manifest.yaml.template`).
fn is_mesh_file(path: &Path) -> bool {
    let name = format_name(path);
    [".json", ".yaml", ".yml"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn is_json(path: &Path) -> bool {
    format_name(path).ends_with(".json")
}

/// The file name that tells the format: an envsubst template (`x.yaml.template`) is read as
/// the file it produces.
fn format_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".template")
        .map(str::to_owned)
        .unwrap_or(name)
}

fn load_file(
    file: &Path,
    options: &LoadOptions,
    loaded: &mut Loaded,
    manifests: &mut Vec<kubernetes::Document>,
) {
    let origin = Origin {
        file: file.to_owned(),
        line: None,
    };
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            loaded
                .diagnostics
                .push(Diagnostic::error(format!("cannot read: {error}")).at(&origin));
            return;
        }
    };
    // CloudFormation's own ${Name} (in !Sub) is not an envsubst placeholder: templates are
    // recognised before placeholders are looked for.
    if !is_json(file)
        && let Some(template) = cloudformation_template(&text)
    {
        let converted =
            cloudformation::convert(&template, &origin, &text, options, &mut loaded.diagnostics);
        loaded.resources.extend(converted);
        return;
    }
    if !is_json(file) {
        return load_manifest(&text, file, options, loaded, manifests);
    }
    let text = match placeholders(&text, 1, options) {
        Ok(text) => text,
        Err(found) => {
            loaded
                .diagnostics
                .extend(found.into_iter().map(|d| d.at(&origin)));
            return;
        }
    };
    let value: Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(error) => {
            let at = Origin {
                line: Some(error.line()),
                ..origin
            };
            loaded
                .diagnostics
                .push(Diagnostic::error(format!("not valid JSON: {error}")).at(&at));
            return;
        }
    };
    match api_resource(value, file, options) {
        Ok(resource) => loaded.resources.push(resource),
        Err(diagnostic) => loaded.diagnostics.push(diagnostic.at(&origin)),
    }
}

fn cloudformation_template(text: &str) -> Option<serde_yaml::Value> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    cloudformation::is_template(&value).then_some(value)
}

/// Substitutes or reports the placeholders of `text`, which starts at line `first_line`.
fn placeholders(
    text: &str,
    first_line: usize,
    options: &LoadOptions,
) -> Result<String, Vec<Diagnostic>> {
    let substitute = !matches!(options.placeholders, Placeholders::Report);
    substitute_with(text, first_line, substitute, |name| {
        options.placeholders.lookup(name)
    })
}

/// Kubernetes objects: documents separated by `---` lines, each remembered with the line it
/// starts on. Placeholders matter only in App Mesh documents: other objects are skipped, and
/// text such as a CRD's descriptions may hold `$name` that is not a placeholder.
fn load_manifest(
    text: &str,
    file: &Path,
    options: &LoadOptions,
    loaded: &mut Loaded,
    manifests: &mut Vec<kubernetes::Document>,
) {
    for (line, raw) in yaml_documents(text) {
        let origin = Origin {
            file: file.to_owned(),
            line: Some(line),
        };
        let substituted = match placeholders(raw, line, options) {
            Ok(text) => text,
            Err(found) if is_app_mesh_document(raw) => {
                loaded
                    .diagnostics
                    .extend(found.into_iter().map(|d| d.at(&origin)));
                continue;
            }
            Err(_) => raw.to_owned(),
        };
        let chunk = substituted.as_str();
        let value: serde_yaml::Value = match serde_yaml::from_str(chunk) {
            Ok(value) => value,
            Err(error) => {
                let at = Origin {
                    line: error.location().map(|l| line + l.line() - 1).or(Some(line)),
                    ..origin
                };
                loaded
                    .diagnostics
                    .push(Diagnostic::error(format!("not valid YAML: {error}")).at(&at));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        match serde_json::to_value(&value) {
            Ok(value) => manifests.push(kubernetes::Document { value, origin }),
            Err(error) => loaded
                .diagnostics
                .push(Diagnostic::error(format!("cannot read this document: {error}")).at(&origin)),
        }
    }
}

fn is_app_mesh_document(raw: &str) -> bool {
    raw.lines().any(|line| {
        line.strip_prefix("apiVersion:")
            .map(|v| v.trim().trim_matches(['"', '\'']))
            .is_some_and(|v| v.starts_with(kubernetes::API_GROUP))
    })
}

/// The documents of a YAML stream with the 1-based line each starts on.
fn yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            documents.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents.retain(|(_, chunk)| !chunk.trim().is_empty());
    documents
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
    let described = Kind::ALL.into_iter().find(|kind| {
        body.len() == 1 && body.get(kind.describe_key()).is_some_and(Value::is_object)
    });
    if let Some(kind) = described
        && let Some(Value::Object(inner)) = body.remove(kind.describe_key())
    {
        body = inner;
        body.remove("metadata");
        body.remove("status");
    }
    let kind = match described.or(options.kind).or_else(|| kind_by_names(&body)) {
        Some(kind) => kind,
        None => kind_by_spec(&body, file)?,
    };
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

/// The kind named by the document's name members (most specific first).
fn kind_by_names(body: &serde_json::Map<String, Value>) -> Option<Kind> {
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
fn kind_by_spec(body: &serde_json::Map<String, Value>, file: &Path) -> Result<Kind, Diagnostic> {
    let Some(spec) = body.get("spec") else {
        return Err(Diagnostic::error(
            "cannot tell the resource kind: no name member (virtualNodeName, routeName, ...) \
             and no spec; give --kind",
        ));
    };
    let model = schema::model();
    let mut scored: Vec<(usize, Kind)> = Kind::ALL
        .into_iter()
        .map(|kind| {
            let violations = model.validate(&kind.spec_shape(), spec, &crate::Path::root("spec"));
            (violations.len(), kind)
        })
        .collect();
    scored.sort();
    let best = scored[0].0;
    let fits: Vec<Kind> = scored
        .iter()
        .filter(|(n, _)| *n == best)
        .map(|(_, k)| *k)
        .collect();
    if let [only] = fits.as_slice() {
        return Ok(*only);
    }
    // A document naming only its mesh is a mesh, unless its spec says otherwise.
    if body.contains_key("meshName") && fits.contains(&Kind::Mesh) {
        return Ok(Kind::Mesh);
    }
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let hinted: Vec<Kind> = fits
        .iter()
        .copied()
        .filter(|kind| file_name_hints(kind).iter().any(|hint| stem.contains(hint)))
        .collect();
    match hinted.as_slice() {
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

/// `$VAR` and `${VAR}` in `text` (as envsubst would replace them): substituted from `lookup`
/// when `substitute`, otherwise each reported with its line and column.
fn substitute_with(
    text: &str,
    first_line: usize,
    substitute: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Diagnostic>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    let mut consumed = 0;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) if is_variable(&braced[..end]) => (&braced[..end], end + 2),
                _ => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if is_variable(&after[..end]) {
                    (&after[..end], end)
                } else {
                    ("", 0)
                }
            }
        };
        if name.is_empty() {
            out.push('$');
        } else {
            let (line, column) = line_column(text, consumed + dollar);
            let line = line + first_line - 1;
            match (substitute, lookup(name)) {
                (true, Some(value)) => out.push_str(&value),
                (true, None) => problems.push(Diagnostic::error(format!(
                    "line {line}, column {column}: environment variable {name} is not set"
                ))),
                (false, _) => problems.push(Diagnostic::error(format!(
                    "line {line}, column {column}: placeholder ${name} (substitute it with --env, as envsubst would)"
                ))),
            }
        }
        let skip = dollar + 1 + len;
        consumed += skip;
        rest = &rest[skip..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn is_variable(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_documents_and_their_lines() {
        let text = "---\na: 1\n---\n\n---\nb: 2\nc: 3\n";
        assert_eq!(
            yaml_documents(text),
            vec![(2, "a: 1\n"), (6, "b: 2\nc: 3\n")]
        );
        assert_eq!(yaml_documents("a: 1\n"), vec![(1, "a: 1\n")]);
    }

    #[test]
    fn placeholders_are_reported_with_position() {
        let errors = substitute_with(
            "{\n  \"a\": $HOST,\n  \"b\": \"${PORT}\"\n}",
            1,
            false,
            |_| None,
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(|d| d.message.clone()).collect();
        assert!(
            text[0].contains("line 2, column 8: placeholder $HOST"),
            "{text:?}"
        );
        assert!(
            text[1].contains("line 3, column 9: placeholder $PORT"),
            "{text:?}"
        );
    }

    #[test]
    fn placeholders_are_substituted() {
        let lookup = |name: &str| (name == "HOST").then(|| "\"h\"".to_owned());
        assert_eq!(
            substitute_with("x $HOST ${HOST} $5 $ end$", 1, true, lookup).unwrap(),
            "x \"h\" \"h\" $5 $ end$"
        );
        let err = substitute_with("${NOPE}", 1, true, lookup).unwrap_err();
        assert!(err[0].message.contains("NOPE is not set"));
    }

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
