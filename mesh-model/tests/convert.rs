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
