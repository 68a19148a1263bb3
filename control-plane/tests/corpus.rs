//! The real App Mesh inputs of aws/aws-app-mesh-examples (`../shared/appmesh/corpus`, or
//! `$APPMESH_CORPUS`): every file in its format — Kubernetes manifests, CloudFormation
//! templates, CLI JSON — read the way its scripts apply it (`$VAR`s filled as envsubst or
//! `jq --arg` would, CloudFormation parameters and exports given), each with the verdict kept
//! in `tests/corpus/verdicts.json`: accepted, or rejected with the error and why App Mesh
//! would refuse it too. Accepted inputs compile for every virtual node and gateway into what
//! the node's proxy accepts, and round-trip through `convert` (API JSON ⇄ Kubernetes) to the
//! same resources, which validate.
//!
//! Each file is read on its own, as the part of a mesh a script applies with one command:
//! references to resources of other files are not required (`--partial`).
//!
//! `CORPUS_RECORD=1` rewrites the verdicts from what is found (keeping each file's options and
//! reasons), for review.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use control_plane::{
    compile::{MeshIndex, Workloads, compile},
    registry::Registry,
};
use mesh_model::{
    convert::{to_api_json, to_kubernetes},
    report::Diagnostic,
    resource::{Kind, Resource},
    source::{self, LoadOptions},
    validate::{self, Options},
};
use mesh_xds::plan::NodePlan;
use serde::{Deserialize, Serialize};

const VERDICTS: &str = "tests/corpus/verdicts.json";

/// How one input is read, and what is expected of it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// `$VAR` values its script sets (others get a value made from the name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    /// CloudFormation parameters (`--parameter-overrides` of its script).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    parameters: BTreeMap<String, String>,
    /// Other stacks' exports (`!ImportValue`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    imports: BTreeMap<String, String>,
    /// The kind of a spec-only JSON file (`--spec file://` of `create-<kind>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Unknown Kubernetes fields ignored, as the CRDs do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    lenient: bool,
    verdict: Verdict,
    /// The first error found, for a rejected input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Why App Mesh (or its controller, or the tool that would apply it) refuses it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    #[default]
    Accepted,
    Rejected,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct Verdicts {
    inputs: BTreeMap<String, Entry>,
}

include!("corpus/locate.rs");

/// Every file of the corpus a reader takes (JSON, YAML, their envsubst templates), relative.
fn inputs(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .to_string_lossy()
                    .trim_end_matches(".template")
                    .to_owned();
                if [".json", ".yaml", ".yml"].iter().any(|e| name.ends_with(e)) {
                    found.push(
                        path.strip_prefix(dir)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
    }
    found.sort();
    found
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Format {
    Kubernetes,
    CloudFormation,
    Json,
}

fn format_of(file: &str, text: &str) -> Format {
    if text.contains("AWS::AppMesh::") || text.contains("AWSTemplateFormatVersion") {
        Format::CloudFormation
    } else if file.trim_end_matches(".template").ends_with(".json") {
        Format::Json
    } else {
        Format::Kubernetes
    }
}

/// A value for `$NAME` that its scripts would give something of that kind.
fn value_for(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.contains("PORT") {
        "8080".into()
    } else if upper.contains("ACCOUNT") {
        "123456789012".into()
    } else if upper.contains("REGION") {
        "us-west-2".into()
    } else if upper.contains("CA_ARN") || upper.contains("AUTHORITY") {
        "arn:aws:acm-pca:us-west-2:123456789012:certificate-authority/6c3a".into()
    } else if upper.contains("ARN") {
        "arn:aws:acm:us-west-2:123456789012:certificate/0d7c7a9f".into()
    } else {
        // Distinct per variable, and a valid name, hostname and label value.
        name.to_ascii_lowercase().replace('_', "-")
    }
}

/// `$NAME` and `${NAME}` replaced as envsubst (or `jq --arg`, in a JSON template where one
/// stands alone as a value) would.
fn fill(text: &str, env: &BTreeMap<String, String>, json: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push('$');
            rest = after;
            continue;
        }
        let value = env.get(name).cloned().unwrap_or_else(|| value_for(name));
        let bare = json && !out.trim_end().ends_with('"') && !after[len..].starts_with('"');
        if bare && value.parse::<f64>().is_err() {
            out.push_str(&serde_json::to_string(&value).unwrap());
        } else {
            out.push_str(&value);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The template's parameters: those its entry gives, and a value made from the name for
/// each other one without a Default (its script passes every one of those, or the stack
/// would not deploy).
fn parameters(template: &str, given: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let value: serde_yaml::Value = serde_yaml::from_str(template).unwrap_or_default();
    let mut all = given.clone();
    for (name, definition) in value
        .get("Parameters")
        .and_then(serde_yaml::Value::as_mapping)
        .into_iter()
        .flatten()
    {
        if let Some(name) = name.as_str()
            && definition.get("Default").is_none()
        {
            let allowed = definition
                .get("AllowedValues")
                .and_then(|values| values.get(0))
                .and_then(serde_yaml::Value::as_str);
            all.entry(name.to_owned())
                .or_insert_with(|| allowed.map_or_else(|| value_for(name), str::to_owned));
        }
    }
    pairs(&all)
}

/// What reading one input found.
struct Outcome {
    format: Format,
    /// A Kubernetes input's text as applied (placeholders filled).
    manifest: Option<String>,
    resources: Vec<Resource>,
    errors: Vec<Diagnostic>,
}

fn read(corpus: &Path, file: &str, entry: &Entry, scratch: &Path) -> Outcome {
    let original = corpus.join(file);
    let text = std::fs::read_to_string(&original).unwrap();
    let format = format_of(file, &text);
    // Placeholders are filled as the scripts fill them; a template's own `${}` is its Sub.
    let mut manifest = None;
    let path = if format == Format::CloudFormation {
        original
    } else {
        let name = Path::new(file).file_name().unwrap();
        let copy = scratch.join(name);
        let filled = fill(&text, &entry.env, format == Format::Json);
        std::fs::write(&copy, &filled).unwrap();
        if format == Format::Kubernetes {
            manifest = Some(filled);
        }
        copy
    };
    let stem = Path::new(file)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let options = LoadOptions {
        kind: entry.kind.as_deref().and_then(Kind::from_cli_name),
        mesh_name: Some("corpus".into()),
        name: Some(stem),
        parent: Some("parent".into()),
        parameters: if format == Format::CloudFormation {
            parameters(&text, &entry.parameters)
        } else {
            Vec::new()
        },
        imports: pairs(&entry.imports),
        ..LoadOptions::default()
    };
    let loaded = source::load(&[path], &options);
    let mut resources = loaded.resources;
    let mut diagnostics = loaded.diagnostics;
    diagnostics.extend(validate::validate(
        &resources,
        Options {
            check_references: false,
            lenient: entry.lenient,
        },
    ));
    if entry.lenient {
        validate::drop_unknown_kubernetes_fields(&mut resources);
    }
    Outcome {
        format,
        manifest,
        resources,
        errors: diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect(),
    }
}

/// (kind, mesh, parent, name, spec) of each resource, in a stable order; a missing spec is
/// an empty one, and an HTTP match that
/// names no path gets `prefix: /`, which means the same (what `convert` writes for the
/// controller).
fn essence(resources: &[Resource]) -> Vec<String> {
    let mut all: Vec<String> = resources
        .iter()
        .map(|r| {
            // No spec and an empty one are the same.
            let mut spec = r
                .spec()
                .filter(|spec| !spec.is_null())
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            for route_type in ["httpRoute", "http2Route"] {
                if let Some(serde_json::Value::Object(matching)) = spec
                    .get_mut(route_type)
                    .and_then(|route| route.get_mut("match"))
                    && !["prefix", "path", "hostname"]
                        .iter()
                        .any(|k| matching.contains_key(*k))
                {
                    matching.insert("prefix".into(), "/".into());
                }
            }
            format!(
                "{} {:?} {:?} {:?} {spec}",
                r.kind,
                r.mesh(),
                r.parent(),
                r.name(),
            )
        })
        .collect();
    all.sort();
    all
}

/// `path` read back, as a user would (`--mesh-name`, `--parent` naming the mesh and gateway
/// that a part of a mesh leaves to the cluster); it must be valid.
fn load_valid(path: &Path, like: &[Resource]) -> Vec<Resource> {
    let options = LoadOptions {
        mesh_name: like.iter().find_map(Resource::mesh).map(str::to_owned),
        parent: like
            .iter()
            .find(|r| r.kind == Kind::GatewayRoute)
            .and_then(Resource::parent)
            .map(str::to_owned),
        ..LoadOptions::default()
    };
    let loaded = source::load(&[path.to_owned()], &options);
    let mut found: Vec<Diagnostic> = loaded.diagnostics;
    found.extend(validate::validate(
        &loaded.resources,
        Options {
            check_references: false,
            lenient: false,
        },
    ));
    let errors: Vec<String> = found
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    loaded.resources
}

/// Accepted resources compile into what a node accepts, and come back the same through
/// API JSON and through a Kubernetes manifest (when they form one: a manifest embeds routes
/// in their router). Returns whether the Kubernetes leg ran.
/// The Kubernetes round trip's manifest, when there is one (routes whose router is in
/// another file have none).
fn compile_and_round_trip(file: &str, resources: &[Resource], scratch: &Path) -> Option<String> {
    let index = MeshIndex::new(resources).unwrap_or_else(|e| panic!("{file}: {e}"));
    let compiled = compile(&index, &Registry::default(), &Workloads::All);
    let (_plan, errors) = NodePlan::from_resources(&compiled.resources);
    assert!(errors.is_empty(), "{file}: the node refuses: {errors:#?}");

    let json_dir = scratch.join("api-json");
    std::fs::create_dir_all(&json_dir).unwrap();
    for (name, text) in to_api_json(resources) {
        std::fs::write(json_dir.join(name), text).unwrap();
    }
    assert_eq!(
        essence(&load_valid(&json_dir, resources)),
        essence(resources),
        "{file}: API JSON round trip"
    );
    std::fs::remove_dir_all(&json_dir).unwrap();

    let routers_present = resources
        .iter()
        .filter(|r| r.kind == Kind::Route)
        .all(|route| {
            resources
                .iter()
                .any(|r| r.kind == Kind::VirtualRouter && r.name() == route.parent())
        });
    if !routers_present {
        return None;
    }
    let manifest = to_kubernetes(resources, "corpus").unwrap_or_else(|e| panic!("{file}: {e}"));
    let path = scratch.join("converted.yaml");
    std::fs::write(&path, &manifest).unwrap();
    assert_eq!(
        essence(&load_valid(&path, resources)),
        essence(resources),
        "{file}: Kubernetes round trip:\n{manifest}"
    );
    std::fs::remove_file(&path).unwrap();
    Some(manifest)
}

/// The App Mesh objects of a manifest, each with where it came from, for the CRD check.
fn custom_resources(manifest: &str, origin: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(manifest)
        .filter_map(|document| serde_json::Value::deserialize(document).ok())
        .flat_map(|document| match document["kind"].as_str() {
            Some("List") => document["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![document],
        })
        .filter(|object| {
            object["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("appmesh.k8s.aws/"))
        })
        .map(|object| serde_json::json!({"object": object, "origin": origin}))
        .collect()
}

/// Every object against the CRDs of deploy/kubernetes/crds, by jsonschema (Python): what
/// applied to the App Mesh controller's CRDs, and what `convert` writes, applies to ours.
fn check_against_the_crds(objects: &[serde_json::Value]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("objects.json");
    std::fs::write(&file, serde_json::to_string(objects).unwrap()).unwrap();
    let output = std::process::Command::new("python3")
        .arg(root.join("tests/install/validate_manifests.py"))
        .args(["resources", "--crds"])
        .arg(root.join("deploy/kubernetes/crds"))
        .arg(&file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("CRD check: {}", report.lines().last().unwrap_or_default());
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_real_input_gets_its_verdict() {
    let Some(corpus) = corpus() else {
        return;
    };
    let verdicts_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(VERDICTS);
    let mut verdicts: Verdicts =
        serde_json::from_str(&std::fs::read_to_string(&verdicts_path).unwrap_or_default())
            .unwrap_or_default();
    let record = std::env::var_os("CORPUS_RECORD").is_some();
    let files = inputs(&corpus);
    assert_eq!(files.len(), 245, "the corpus holds 245 inputs");
    let mut mismatches = Vec::new();
    let mut counts: BTreeMap<(Format, Verdict), usize> = BTreeMap::new();
    let (mut compiled, mut kubernetes_round_trips) = (0, 0);
    let mut crd_objects = Vec::new();
    for file in &files {
        let scratch = tempfile::tempdir().unwrap();
        let entry = verdicts.inputs.get(file).cloned().unwrap_or_default();
        let outcome = read(&corpus, file, &entry, scratch.path());
        let found = match outcome.errors.first() {
            None if outcome.resources.is_empty() => {
                (Verdict::Rejected, Some("no resources".into()))
            }
            None => (Verdict::Accepted, None),
            // Where the corpus and the scratch copies are is left out of the message.
            Some(first) => (
                Verdict::Rejected,
                Some(
                    first
                        .to_string()
                        .replace(&format!("{}/", corpus.display()), "")
                        .replace(&format!("{}/", scratch.path().display()), ""),
                ),
            ),
        };
        *counts.entry((outcome.format, found.0)).or_default() += 1;
        if found.0 == Verdict::Accepted {
            compiled += 1;
            if let Some(manifest) = &outcome.manifest {
                crd_objects.extend(custom_resources(manifest, file));
            }
            if let Some(converted) =
                compile_and_round_trip(file, &outcome.resources, scratch.path())
            {
                kubernetes_round_trips += 1;
                crd_objects.extend(custom_resources(&converted, &format!("{file} (converted)")));
            }
        }
        if record {
            let kept = verdicts.inputs.entry(file.clone()).or_default();
            if kept.verdict != found.0 || kept.error != found.1 {
                kept.why = None;
            }
            kept.verdict = found.0;
            kept.error = found.1;
            continue;
        }
        let expected = (entry.verdict, entry.error.clone());
        if expected != found {
            mismatches.push(format!("{file}: expected {expected:?}, found {found:?}"));
        }
        if entry.verdict == Verdict::Rejected && entry.why.as_deref().is_none_or(str::is_empty) {
            mismatches.push(format!("{file}: rejected without a reason (why)"));
        }
    }
    eprintln!(
        "corpus: {counts:?}; {compiled} compiled and round-tripped through API JSON, {kubernetes_round_trips} through Kubernetes too"
    );
    if record {
        verdicts.inputs.retain(|file, _| files.contains(file));
        std::fs::write(
            &verdicts_path,
            serde_json::to_string_pretty(&verdicts).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    check_against_the_crds(&crd_objects);
}
