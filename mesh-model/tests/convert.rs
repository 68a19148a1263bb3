//! Round trips between formats: API JSON → Kubernetes manifest → API JSON gives back the same
//! resources, and Kubernetes examples → API JSON → Kubernetes likewise.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::{Path, PathBuf};

use mesh_model::{
    convert::{to_api_json, to_kubernetes},
    resource::Resource,
    source::{self, LoadOptions, Placeholders, api_resource},
};
use serde_json::Value;

mod common;

/// (kind, mesh, parent, name, spec) of a resource.
type Essence = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Value>,
);

/// What identifies and defines each resource, format aside, in a stable order.
fn essence(resources: &[Resource]) -> Vec<Essence> {
    let mut all: Vec<_> = resources
        .iter()
        .map(|r| {
            (
                r.kind.name().to_owned(),
                r.mesh().map(str::to_owned),
                r.parent().map(str::to_owned),
                r.name().map(str::to_owned),
                r.spec().cloned(),
            )
        })
        .collect();
    all.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    all
}

fn scratch(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("mesh-model-convert-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load(path: &Path) -> Vec<Resource> {
    let loaded = source::load(&[path.to_owned()], &LoadOptions::default());
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    loaded.resources
}

#[test]
fn api_json_to_kubernetes_and_back() {
    let original: Vec<Resource> = common::mesh()
        .into_iter()
        .map(|doc| api_resource(doc, Path::new("doc.json"), &LoadOptions::default()).unwrap())
        .collect();
    let dir = scratch("api");
    let manifest = to_kubernetes(&original, "shop").unwrap();
    std::fs::write(dir.join("mesh.yaml"), &manifest).unwrap();
    let from_kubernetes = load(&dir.join("mesh.yaml"));
    assert_eq!(
        essence(&from_kubernetes),
        essence(&original),
        "manifest:\n{manifest}"
    );

    for (name, text) in to_api_json(&from_kubernetes) {
        std::fs::write(dir.join(name), text).unwrap();
    }
    std::fs::remove_file(dir.join("mesh.yaml")).unwrap();
    assert_eq!(essence(&load(&dir)), essence(&original));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kubernetes_example_to_api_json_and_back() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/appmesh-examples/aws-app-mesh-examples/walkthroughs/howto-k8s-multiple-listeners/manifest.yaml");
    let original = load(&example);
    assert_eq!(original.len(), 9);
    let dir = scratch("k8s");
    for (name, text) in to_api_json(&original) {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let from_json = load(&dir);
    assert_eq!(essence(&from_json), essence(&original));
    std::fs::write(
        dir.join("../again.yaml"),
        to_kubernetes(&from_json, "other").unwrap(),
    )
    .unwrap();
    let again = source::load(
        &[dir.join("../again.yaml")],
        &LoadOptions {
            placeholders: Placeholders::Report,
            ..Default::default()
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.join("../again.yaml"));
    assert_eq!(essence(&again.resources), essence(&original));
}

/// A manifest as a YAML 1.1 reader (PyYAML, as kubectl's YAML reads it) sees it, as JSON.
fn read_as_yaml_1_1(manifest: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut python = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (scripts/install-prereqs.sh)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "PyYAML could not read:\n{manifest}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn converted_manifests_say_what_the_api_says_to_the_controller_and_yaml_1_1() {
    // At most 10 header matches: the API's limit.
    let ambiguous = [
        "yes",
        "on",
        "No",
        "~",
        "null",
        "1e3",
        "0x1F",
        "1_000",
        "2001-12-14",
        "y",
    ];
    let headers: Vec<Value> = ambiguous
        .iter()
        .enumerate()
        .map(|(i, text)| serde_json::json!({"name": format!("x-{i}"), "match": {"exact": text}}))
        .collect();
    let mut documents = common::mesh();
    // A route and a gateway route matching on the port alone (valid API, the
    // multiple-listeners walkthrough): the controller wants a path.
    documents[5]["spec"]["httpRoute"]["match"] =
        serde_json::json!({"port": 9090, "headers": headers});
    documents[8]["spec"]["httpRoute"]["match"] = serde_json::json!({"port": 8088});
    let original: Vec<Resource> = documents
        .into_iter()
        .map(|doc| api_resource(doc, Path::new("doc.json"), &LoadOptions::default()).unwrap())
        .collect();
    let manifest = to_kubernetes(&original, "shop").unwrap();

    let seen = read_as_yaml_1_1(&manifest);
    let router = seen.iter().find(|d| d["kind"] == "VirtualRouter").unwrap();
    let route_match = &router["spec"]["routes"][0]["httpRoute"]["match"];
    assert_eq!(route_match["prefix"], "/", "{manifest}");
    for (i, text) in ambiguous.iter().enumerate() {
        assert_eq!(
            route_match["headers"][i]["match"]["exact"], *text,
            "{manifest}"
        );
    }
    let gateway_route = seen.iter().find(|d| d["kind"] == "GatewayRoute").unwrap();
    assert_eq!(gateway_route["spec"]["httpRoute"]["match"]["prefix"], "/");

    // And mesh-agent's own validation (with the controller's rules) takes it.
    let dir = scratch("controller");
    std::fs::write(dir.join("mesh.yaml"), &manifest).unwrap();
    let loaded = load(&dir.join("mesh.yaml"));
    let found = mesh_model::validate::validate(
        &loaded,
        mesh_model::validate::Options {
            check_references: true,
            lenient: false,
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !found.iter().any(|d| d.is_error()),
        "{found:#?}\n{manifest}"
    );
}
