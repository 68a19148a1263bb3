//! `mesh-agent validate` as a user runs it: real files, the real binary, exit codes and output.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

fn validate(args: &[&str], files: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .arg("validate")
        .args(args)
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout =
        String::from_utf8_lossy(&output.stdout).replace(&dir.path().display().to_string(), "DIR");
    (output.status.code().unwrap_or(-1), stdout)
}

const MESH: (&str, &str) = ("mesh.json", r#"{"meshName": "demo", "spec": {}}"#);
const SERVICE: (&str, &str) = (
    "service.json",
    r#"{"meshName": "demo", "virtualServiceName": "a.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "a"}}}}"#,
);
const NODE: (&str, &str) = (
    "node.json",
    r#"{"meshName": "demo", "virtualNodeName": "a", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}], "serviceDiscovery": {"dns": {"hostname": "a.local"}}}}"#,
);

#[test]
fn a_valid_mesh_exits_0() {
    let (code, out) = validate(&[], &[MESH, SERVICE, NODE]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 resources, 0 errors"), "{out}");
}

#[test]
fn every_error_is_reported_with_file_resource_and_path() {
    let bad_node = (
        "node.json",
        r#"{"meshName": "demo", "virtualNodeName": "a", "spec": {"listeners": [{"portMapping": {"port": 0, "protocol": "udp"}}]}}"#,
    );
    let (code, out) = validate(&[], &[MESH, SERVICE, bad_node]);
    assert_eq!(code, 1, "{out}");
    for line in [
        "DIR/node.json: error: VirtualNode a: spec.listeners[0].portMapping.port: 0 is out of range 1..65535",
        "DIR/node.json: error: VirtualNode a: spec.listeners[0].portMapping.protocol: \"udp\" is not one of: http, tcp, http2, grpc",
        "DIR/node.json: error: VirtualNode a: spec.serviceDiscovery: is required when the virtual node has listeners",
        "3 resources, 3 errors",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
}

#[test]
fn json_output_and_partial_inputs() {
    let (code, out) = validate(&["--output", "json"], &[SERVICE]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["diagnostics"][0]["path"], "meshName");
    assert_eq!(report["resources"][0]["kind"], "VirtualService");
    // The same file as an update to a mesh defined elsewhere.
    let (code, out) = validate(&["--partial"], &[SERVICE]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn placeholders_need_env() {
    let templated = (
        "node.json",
        r#"{"meshName": "demo", "virtualNodeName": "a", "spec": {"serviceDiscovery": {"dns": {"hostname": "${HOST}"}}}}"#,
    );
    let (code, out) = validate(&["--partial"], &[templated]);
    assert_eq!(code, 1);
    assert!(
        out.contains("line 1, column 97: placeholder $HOST (substitute it with --env"),
        "{out}"
    );
}

#[test]
fn convert_writes_a_manifest_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [MESH, SERVICE, NODE] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["convert", "--to", "kubernetes", "--namespace", "shop"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest = String::from_utf8_lossy(&output.stdout);
    assert!(manifest.contains("kind: VirtualService"), "{manifest}");
    assert!(manifest.contains("virtualNodeRef:"), "{manifest}");
    let (code, out) = validate(&[], &[("mesh.yaml", &manifest)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 resources, 0 errors"), "{out}");

    // Invalid input converts to nothing.
    std::fs::write(
        dir.path().join("node.json"),
        r#"{"meshName": "demo", "virtualNodeName": "a", "spec": {"listenrs": []}}"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["convert", "--to", "api-json"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("spec.listenrs: unknown field"));
}

#[test]
fn compile_prints_the_xds_resources_as_json() {
    let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["compile", "--node", "shop/web"])
        .arg(&shop)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let listeners: Vec<&str> = json["Listener"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(listeners, ["shop/web/inbound", "shop/web/outbound"]);
    assert_eq!(
        json["RouteConfiguration"][0]["virtualHosts"][0]["domains"][0],
        "api.shop.local"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["compile", "--node", "web"])
        .arg(&shop)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--node \"web\" is not mesh/name"));

    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["compile", "--node", "shop/missing"])
        .arg(&shop)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(
            "--node shop/missing: mesh \"shop\" has no virtual node or virtual gateway \"missing\""
        ),
        "{err}"
    );
}

/// An input with no App Mesh resource (an empty directory, unrelated YAML, an empty List)
/// is an error, not "0 resources, 0 errors"; a `kind: List` (as `kubectl get -o yaml`
/// prints) is read item by item.
#[test]
fn inputs_without_app_mesh_resources_are_errors_and_lists_are_read() {
    let none = "error: no App Mesh resource in the input";
    let (code, out) = validate(&[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(none), "{out}");
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
    let (code, out) = validate(&[], &[("app.yaml", deployment)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(none) && out.contains("skipped Deployment web"),
        "{out}"
    );
    let (code, out) = validate(
        &[],
        &[("list.yaml", "apiVersion: v1\nkind: List\nitems: []\n")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(none), "{out}");

    let exported = r#"apiVersion: v1
kind: List
metadata: {resourceVersion: ""}
items:
- apiVersion: appmesh.k8s.aws/v1beta2
  kind: Mesh
  metadata: {name: demo, uid: 0b0c}
  spec:
    namespaceSelector: {matchLabels: {mesh: demo}}
- apiVersion: appmesh.k8s.aws/v1beta2
  kind: VirtualNode
  metadata: {name: a, namespace: shop}
  spec:
    listeners: [{portMapping: {port: 80, protocol: http}}]
    serviceDiscovery: {dns: {hostname: a.shop}}
"#;
    let (code, out) = validate(&[], &[("export.yaml", exported)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 resources, 0 errors"), "{out}");
}

/// `mesh-agent check-config` on `config`: exit code and stderr.
fn check_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What a reload would fail on (finding 6 of issue 11) is refused by check-config first,
/// naming the key.
#[test]
fn check_config_rejects_what_start_up_or_reload_would() {
    const PROXY: &str = "proxy:\n  outbound_addr: 10.0.0.1:15001\n";
    let (code, err) = check_config(PROXY);
    assert_eq!(code, 0, "{err}");

    // One more than the kernel's exclusion map holds, with loopback: 1 025 CIDRs.
    let cidrs: Vec<String> = (0..1025u32)
        .map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    let cases = [
        (
            format!(
                "{PROXY}redirect:\n  exclude_cidrs: [{}]\n",
                cidrs.join(", ")
            ),
            "`redirect.exclude_cidrs` has 1026 distinct prefixes",
        ),
        (
            "proxy:\n  outbound_addr: 127.0.0.1:15001\n".to_owned(),
            "`proxy.outbound_addr` is 127.0.0.1:15001",
        ),
        (
            format!("{PROXY}xds:\n  address: \"http://[::1:15010\"\n"),
            "`xds.address` \"http://[::1:15010\" is not a URL",
        ),
        (
            format!("{PROXY}cgroup_path: {}\n", file.path().display()),
            "is not a directory",
        ),
        (
            format!("{PROXY}xds:\n  address: \"https://cp:15010\"\n"),
            "no TLS settings name the CA",
        ),
        (
            format!("{PROXY}bpffs_path: sys/fs/bpf\n"),
            "sys/fs/bpf is not an absolute path",
        ),
        (
            format!("{PROXY}redirect:\n  ipv6: redirect\n"),
            "redirect.ipv6: unknown variant `redirect`, expected `refuse` or `allow`",
        ),
        (
            format!("{PROXY}redirect:\n  udp: drop\n"),
            "redirect.udp: unknown variant `drop`, expected `allow` or `refuse`",
        ),
    ];
    for (config, expected) in cases {
        let (code, err) = check_config(&config);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
    // `run --control-plane` takes the same rule, before anything is loaded or attached.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, PROXY).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--control-plane", "https://cp:15010"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("no TLS settings name the CA"), "{err}");
}

/// `mesh-agent compile … | head -c 10` (issue 11, finding 9): the reader leaving early ends
/// the command quietly, as a writer killed by SIGPIPE would (status 141), with no panic.
#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    // A mesh whose xDS is larger than a pipe's buffer (64 KiB), so that writing blocks
    // until `head` has gone.
    let mesh = dir.path().join("mesh");
    std::fs::create_dir(&mesh).unwrap();
    std::fs::write(mesh.join(MESH.0), MESH.1).unwrap();
    for n in 0..200 {
        std::fs::write(
            mesh.join(format!("node{n}.json")),
            NODE.1
                .replace("\"a\"", &format!("\"n{n}\""))
                .replace("a.local", &format!("n{n}.local")),
        )
        .unwrap();
    }
    // As a user runs it: `head` exits after 10 bytes, then the rest is written.
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" compile "$1" 2>"$2" | head -c 10"#)
        .arg(env!("CARGO_BIN_EXE_mesh-agent"))
        .arg(&mesh)
        .arg(&stderr)
        .output()
        .unwrap();
    assert_eq!(output.stdout.len(), 10);
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");

    // Deterministically: standard output closed before anything is written, for each
    // command that prints.
    for args in [
        vec!["compile"],
        vec!["validate"],
        vec!["validate", "--output", "json"],
        vec!["convert", "--to", "kubernetes"],
        vec!["convert", "--to", "api-json"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
            .args(&args)
            .arg(&shop)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(output.status.code(), Some(141), "{args:?}: {err}");
    }
}

/// Errors the command line reports are said once, durations read as humantime writes them,
/// and an xds-dump address without a scheme is refused at once instead of retried forever.
#[test]
fn command_line_errors_are_said_once_and_early() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["check-config", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "said once: {err}"
    );

    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "proxy:\n  outbound_addr: 10.0.0.1:15001\n  connect_timeout: 1m30s\n  drain_timeout: 1h\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args([
            "xds-dump",
            "--control-plane",
            "127.0.0.1:15010",
            "--timeout",
            "30",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--control-plane \"127.0.0.1:15010\" must be an http:// or https:// URL"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
