//! Small hostile definition files: each used to hang, take gigabytes or abort the process
//! reading it (issue 11, finding 7), or was read silently wrong (finding 9). Each must now be
//! refused with a diagnostic naming the file (and the resource and field where there is one)
//! within a bound, in a debug build.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use mesh_model::{
    cloudformation::MAX_EXPANSION_BYTES,
    report::Diagnostic,
    source::{self, LoadOptions, Loaded},
};

/// Generous for a debug build on a loaded CI machine; the inputs took 46 s to minutes.
const BOUND: Duration = Duration::from_secs(2);

/// Loads `text` as the file `name`, in its own directory; fails past [`BOUND`].
fn load(name: &str, text: &str) -> (Loaded, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    let started = Instant::now();
    let loaded = source::load(std::slice::from_ref(&file), &LoadOptions::default());
    let took = started.elapsed();
    assert!(took < BOUND, "{name}: {took:?}");
    // The directory goes with `dir`; the path stays for the assertions.
    (loaded, file)
}

/// The one error, checked to name `file`.
fn only_error(loaded: &Loaded, file: &PathBuf) -> Diagnostic {
    let errors: Vec<&Diagnostic> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    let [error] = errors.as_slice() else {
        panic!("expected one error: {errors:#?}");
    };
    assert_eq!(
        error.origin.as_ref().map(|o| &o.file),
        Some(file),
        "{error}"
    );
    (*error).clone()
}

/// Each mesh's name is its predecessor's name `fan_out` times: `fan_out ^ levels` copies.
fn sub_fan_out(levels: usize, fan_out: usize) -> String {
    let mut text = String::from(
        "AWSTemplateFormatVersion: '2010-09-09'\nResources:\n  N0:\n    Type: AWS::AppMesh::Mesh\n    Properties:\n      MeshName: ab\n",
    );
    for level in 1..=levels {
        let name = format!("${{N{}.MeshName}}", level - 1).repeat(fan_out);
        text.push_str(&format!(
            "  N{level}:\n    Type: AWS::AppMesh::Mesh\n    Properties:\n      MeshName: !Sub \"{name}\"\n"
        ));
    }
    text
}

#[test]
fn nested_sub_fan_out_stops_at_the_expansion_budget() {
    // 1.8 KiB; 12 copies per level took 46 s and 240 MB before, 16 would take hours.
    let text = sub_fan_out(7, 16);
    assert!(text.len() < 3300, "{}", text.len());
    let (loaded, file) = load("fan.yaml", &text);
    let errors: Vec<&Diagnostic> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(!errors.is_empty());
    for error in &errors {
        assert_eq!(error.origin.as_ref().map(|o| &o.file), Some(&file));
    }
    let budget = errors
        .iter()
        .find(|e| e.message.contains("expand to more than"))
        .unwrap_or_else(|| panic!("{errors:#?}"));
    assert_eq!(
        (budget.resource.as_deref(), budget.path.as_deref()),
        (Some("Mesh N5"), Some("MeshName")),
        "{budget}"
    );
    assert!(
        budget
            .message
            .contains(&format!("more than {MAX_EXPANSION_BYTES} bytes")),
        "{budget}"
    );
    // What was within the budget converted.
    assert_eq!(loaded.resources.len(), 5, "N0..N4");
}

#[test]
fn a_parameter_copied_many_times_stops_at_the_expansion_budget() {
    // A 1 MiB default copied 2 000 times: a 2 GB string (an abort, or 6 GB and 46 s).
    let text = format!(
        "AWSTemplateFormatVersion: '2010-09-09'\nParameters:\n  P:\n    Type: String\n    Default: {}\nResources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Properties:\n      MeshName: !Sub \"{}\"\n",
        "x".repeat(1 << 20),
        "${P}".repeat(2000)
    );
    let (loaded, file) = load("bomb.yaml", &text);
    let error = only_error(&loaded, &file);
    assert_eq!(
        (error.resource.as_deref(), error.path.as_deref()),
        (Some("Mesh M"), Some("MeshName"))
    );
    assert!(error.message.contains("expand to more than"), "{error}");
}

#[test]
fn inline_sub_variables_are_expanded_once_and_bounded() {
    // !Sub ["${x}${x}…", {x: !Sub ["${x}${x}…", {x: …}]}]: each level 8 copies of the next.
    let mut value = String::from("ab");
    for _ in 0..12 {
        value = format!("!Sub [\"{}\", {{x: {value}}}]", "${x}".repeat(8));
    }
    let text = format!(
        "AWSTemplateFormatVersion: '2010-09-09'\nResources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Properties:\n      MeshName: {value}\n"
    );
    let (loaded, file) = load("inline.yaml", &text);
    let error = only_error(&loaded, &file);
    assert_eq!(error.resource.as_deref(), Some("Mesh M"), "{error}");
    assert!(error.message.contains("expand to more than"), "{error}");
}

#[test]
fn deep_yaml_flow_nesting_is_refused_before_parsing() {
    // libyaml is quadratic in flow depth: 20 000 levels took 2.9 s, 100 000 over 120 s.
    for (name, open, close) in [("seq.yaml", "[", "]"), ("map.yaml", "{a: ", "}")] {
        let text = format!(
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: Mesh\nspec: {}{}\n",
            open.repeat(100_000),
            close.repeat(100_000)
        );
        let (loaded, file) = load(name, &text);
        let error = only_error(&loaded, &file);
        assert_eq!(
            error.origin.as_ref().and_then(|o| o.line),
            Some(3),
            "{name}"
        );
        assert!(error.message.contains("nest more than 64 levels"), "{name}");
    }
}

#[test]
fn deep_json_nesting_is_refused() {
    let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (loaded, file) = load("deep.json", &text);
    let error = only_error(&loaded, &file);
    assert!(
        error.message.contains("nest more than 64 levels"),
        "{error}"
    );
}

#[test]
fn block_nesting_is_bounded_too() {
    let text = format!("{}x\n", "- ".repeat(100_000));
    let (loaded, file) = load("dashes.yaml", &text);
    let error = only_error(&loaded, &file);
    assert!(
        error.message.contains("nest more than 64 levels"),
        "{error}"
    );
}

#[test]
fn an_oversized_file_is_refused_unread() {
    let text = format!(
        "{{\"meshName\": \"m\", \"spec\": {{}}, \"pad\": \"{}\"}}",
        "x".repeat(5 << 20)
    );
    let (loaded, file) = load("big.json", &text);
    let error = only_error(&loaded, &file);
    assert!(
        error
            .message
            .contains("definition files are limited to 4194304 bytes"),
        "{error}"
    );
}

#[test]
fn a_fifo_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("mesh.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let started = Instant::now();
    let loaded = source::load(&[dir.path().to_owned()], &LoadOptions::default());
    assert!(started.elapsed() < BOUND);
    let error = only_error(&loaded, &fifo);
    assert!(error.message.contains("not a regular file"), "{error}");
}

#[test]
fn json_duplicate_keys_are_named_with_their_path() {
    let text = "{\"meshName\": \"demo\", \"virtualNodeName\": \"a\", \"spec\": {\n  \"listeners\": [{\"portMapping\": {\"port\": 80, \"protocol\": \"http\",\n    \"port\": 8080}}]}}";
    let (loaded, file) = load("node.json", text);
    let error = only_error(&loaded, &file);
    assert_eq!(
        error.path.as_deref(),
        Some("spec.listeners[0].portMapping.port")
    );
    assert_eq!(error.origin.as_ref().and_then(|o| o.line), Some(3));
    assert!(error.message.contains("duplicate key \"port\""), "{error}");
    // With placeholders in the file, the repeat is still what is reported.
    let (loaded, file) = load(
        "node.json",
        "{\"meshName\": \"demo\", \"meshName\": \"$MESH\", \"spec\": {}}",
    );
    let error = only_error(&loaded, &file);
    assert_eq!(error.path.as_deref(), Some("meshName"), "{error}");
}

const JSON_TEMPLATE: &str = r#"{
  "AWSTemplateFormatVersion": "2010-09-09",
  "Parameters": {"Domain": {"Type": "String", "Default": "shop.local"}},
  "Resources": {
    "Mesh": {"Type": "AWS::AppMesh::Mesh", "Properties": {"MeshName": "shop"}},
    "Service": {
      "Type": "AWS::AppMesh::VirtualService",
      "Properties": {
        "MeshName": {"Fn::GetAtt": ["Mesh", "MeshName"]},
        "VirtualServiceName": {"Fn::Sub": "api.${Domain}"},
        "Spec": {}
      }
    }
  }
}"#;

#[test]
fn cloudformation_json_is_read_and_its_duplicate_keys_refused() {
    let (loaded, _) = load("stack.json", JSON_TEMPLATE);
    assert_eq!(loaded.diagnostics, Vec::new());
    let names: Vec<_> = loaded.resources.iter().map(|r| r.name()).collect();
    assert_eq!(names, [Some("shop"), Some("api.shop.local")]);

    let repeated = JSON_TEMPLATE.replace(
        "\"Spec\": {}",
        "\"Spec\": {}, \"VirtualServiceName\": \"other\"",
    );
    let (loaded, file) = load("stack.json", &repeated);
    let error = only_error(&loaded, &file);
    assert_eq!(
        error.path.as_deref(),
        Some("Resources.Service.Properties.VirtualServiceName")
    );
    assert!(
        error
            .message
            .contains("duplicate key \"VirtualServiceName\""),
        "{error}"
    );
}
