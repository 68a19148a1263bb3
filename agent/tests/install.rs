//! The Kubernetes install (deploy/kubernetes) as a cluster would take it: rendered by kubectl's
//! kustomize, every object validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
//! strict), the CRDs equal to what the model generates, the agent's configuration accepted by
//! the agent, its capabilities the ones it keeps, the alerting rules by promtool.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize as _;
use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn succeed(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `kubectl kustomize deploy/kubernetes/<overlay>`, validated, as objects.
fn render(overlay: &str, scratch: &Path) -> Vec<Value> {
    let text = succeed(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(repo(&format!("deploy/kubernetes/{overlay}"))),
    );
    let file = scratch.join(format!("{overlay}.yaml"));
    std::fs::write(&file, &text).unwrap();
    let report = succeed(
        Command::new("python3")
            .arg(repo("tests/install/validate_manifests.py"))
            .arg("objects")
            .arg(&file),
    );
    assert!(report.contains(" 0 failures"), "{report}");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name))
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_crds_are_the_ones_the_model_generates() {
    let scratch = tempfile::tempdir().unwrap();
    succeed(
        Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
            .args(["crds", "--out"])
            .arg(scratch.path()),
    );
    let committed = repo("deploy/kubernetes/crds");
    for entry in std::fs::read_dir(scratch.path()).unwrap() {
        let entry = entry.unwrap();
        let generated = std::fs::read_to_string(entry.path()).unwrap();
        let in_repo =
            std::fs::read_to_string(committed.join(entry.file_name())).unwrap_or_default();
        assert!(
            generated == in_repo,
            "deploy/kubernetes/crds/{} is not what the model generates: run `mesh-agent crds --out deploy/kubernetes/crds`",
            entry.file_name().to_string_lossy()
        );
    }
}

#[test]
fn each_install_renders_to_objects_a_cluster_accepts() {
    let scratch = tempfile::tempdir().unwrap();
    let mesh_agent_only = render("mesh-agent", scratch.path());
    assert!(
        mesh_agent_only
            .iter()
            .all(|o| o["kind"] != "CustomResourceDefinition"),
        "the install without CRDs has one"
    );
    let install = render("install", scratch.path());
    let crds: BTreeSet<&str> = install
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(crds.len(), 6, "{crds:?}");
    // Uninstalling: the agents replaced by pods that detach the redirect once they are gone.
    let uninstall = render("uninstall", scratch.path());
    let daemonset = find(&uninstall, "DaemonSet", "mesh-agent");
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert!(
        serde_yaml::to_string(&container["args"])
            .unwrap()
            .contains("mesh-agent uninstall --config"),
        "{container:?}"
    );
    assert!(container["readinessProbe"].is_null(), "{container:?}");
    let monitored = render("with-monitoring", scratch.path());
    for kind in ["PodMonitor", "PrometheusRule"] {
        let object = find(&monitored, kind, "mesh-agent");
        assert_eq!(object["metadata"]["namespace"], "mesh-system", "{kind}");
    }
}

#[test]
fn the_daemonset_runs_the_agent_with_its_config_and_only_the_capabilities_it_keeps() {
    let scratch = tempfile::tempdir().unwrap();
    let objects = render("install", scratch.path());
    let daemonset = find(&objects, "DaemonSet", "mesh-agent");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    let container = &pod["containers"][0];
    let added: BTreeSet<String> = container["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    let kept: BTreeSet<String> = mesh_agent::privileges::NODE_AGENT
        .iter()
        .map(|n| n.capability.to_string())
        .collect();
    assert_eq!(added, kept);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert!(container[probe]["httpGet"]["path"].is_string(), "{probe}");
    }
    // The ConfigMap the pods mount is the generated one (its name carries the content's
    // hash, so a config change rolls the agents), and the agent takes its configuration.
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    let name = volume["configMap"]["name"].as_str().unwrap();
    let config_map = find(&objects, "ConfigMap", name);
    assert_ne!(
        name, "mesh-agent",
        "no content hash in the ConfigMap's name"
    );
    let config = scratch.path().join("agent.yaml");
    std::fs::write(&config, config_map["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    let checked = succeed(
        Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
            .args(["check-config", "--config"])
            .arg(&config)
            .env("NODE_IP", "10.0.0.7")
            .env("NODE_NAME", "ip-10-0-0-7.ec2.internal"),
    );
    assert!(
        checked.contains("mesh from http://mesh-control-plane.mesh-system.svc:15010"),
        "{checked}"
    );
    // The agent finds the control plane the install runs.
    let service = find(&objects, "Service", "mesh-control-plane");
    assert_eq!(service["spec"]["ports"][0]["port"], 15010);
    let deployment = find(&objects, "Deployment", "mesh-control-plane");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_sequence()
            .unwrap()
            .iter()
            .any(|a| a == "--kubernetes"),
        "{args:?}"
    );
}

#[test]
fn the_alerting_rules_pass_promtool_and_match_the_podmonitors_job() {
    let scratch = tempfile::tempdir().unwrap();
    let objects = render("with-monitoring", scratch.path());
    let monitor = find(&objects, "PodMonitor", "mesh-agent");
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
    let daemonset = find(&objects, "DaemonSet", "mesh-agent");
    let job = &daemonset["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"];
    let rule = find(&objects, "PrometheusRule", "mesh-agent");
    let rules = serde_yaml::to_string(&rule["spec"]).unwrap();
    assert!(
        rules.contains(&format!("job=\"{}\"", job.as_str().unwrap())),
        "the rules' job is not the PodMonitor's"
    );
    let file = scratch.path().join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    succeed(Command::new("promtool").args(["check", "rules"]).arg(&file));
}

#[test]
fn the_crds_refuse_what_app_mesh_refuses_naming_the_field() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("objects.json");
    let route = serde_json::json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "VirtualRouter",
        "metadata": {"name": "r"}, "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "htp"}}],
            "routes": [{"name": "a", "httpRoute": {"match": {"prefix": "/"}, "action": {
                "weightedTargets": [{"virtualNodeRef": {"name": "v1"}, "weight": 101}]}}}]}});
    std::fs::write(
        &file,
        serde_json::json!([{"origin": "test", "object": route}]).to_string(),
    )
    .unwrap();
    let output = Command::new("python3")
        .arg(repo("tests/install/validate_manifests.py"))
        .args(["resources", "--crds"])
        .arg(repo("deploy/kubernetes/crds"))
        .arg(&file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{report}");
    assert!(
        report.contains("spec/listeners/0/portMapping/protocol: 'htp' is not one of"),
        "{report}"
    );
    assert!(
        report.contains("weightedTargets/0/weight: 101 is greater than the maximum of 100"),
        "{report}"
    );
}
