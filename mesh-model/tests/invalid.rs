//! One invalid input per validation rule, each asserting the exact field path of its error,
//! against a small valid mesh that exercises every kind.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;

use mesh_model::{
    report::Diagnostic,
    resource::Resource,
    source::{LoadOptions, api_resource},
    validate::{Options, validate},
};
use serde_json::{Value, json};

mod common;
use common::mesh;

fn check(documents: Vec<Value>) -> Vec<Diagnostic> {
    let resources: Vec<Resource> = documents
        .into_iter()
        .enumerate()
        .map(|(i, doc)| {
            api_resource(
                doc,
                Path::new(&format!("doc{i}.json")),
                &LoadOptions::default(),
            )
            .unwrap()
        })
        .collect();
    validate(
        &resources,
        Options {
            check_references: true,
            lenient: false,
        },
    )
}

/// `mesh()` with the last document whose member `field` is `name` changed by `change`.
fn mutated(field: &str, name: &str, change: impl Fn(&mut Value)) -> Vec<Value> {
    let mut docs = mesh();
    let doc = docs
        .iter_mut()
        .rev()
        .find(|d| d.get(field).and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no {field} {name}"));
    change(doc);
    docs
}

#[test]
fn the_base_mesh_is_valid() {
    let found = check(mesh());
    assert!(found.is_empty(), "{:#?}", found);
}

/// App Mesh creates a virtual node whose backend's service does not exist yet (the
/// timeout-policy walkthrough's script does, in that order): a note, not an error.
#[test]
fn a_backend_not_yet_defined_is_a_note() {
    let docs = mutated("virtualNodeName", "web", |d| {
        d["spec"]["backends"][0]["virtualService"]["virtualServiceName"] = json!("nope.local")
    });
    let found = check(docs);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(!found[0].is_error(), "{:?}", found[0]);
    assert!(
        found[0].to_string().contains(
            "spec.backends[0].virtualService.virtualServiceName: refers to VirtualService nope.local, which is not defined in mesh demo: not routed until it is"
        ),
        "{}",
        found[0]
    );
}

#[test]
fn each_rule_names_its_field() {
    let web = |change: fn(&mut Value)| mutated("virtualNodeName", "web", change);
    let route = |change: fn(&mut Value)| mutated("routeName", "api-route", change);
    let cases: Vec<(&str, Vec<Value>, &str, &str)> = vec![
        (
            "port range",
            web(|d| d["spec"]["listeners"][0]["portMapping"]["port"] = json!(70000)),
            "spec.listeners[0].portMapping.port",
            "out of range 1..65535",
        ),
        (
            "enum",
            web(|d| d["spec"]["listeners"][0]["portMapping"]["protocol"] = json!("htp")),
            "spec.listeners[0].portMapping.protocol",
            "is not one of: http, tcp, http2, grpc",
        ),
        (
            "unknown field",
            web(|d| d["spec"]["listenrs"] = json!([])),
            "spec.listenrs",
            "unknown field",
        ),
        (
            "union",
            web(|d| {
                d["spec"]["serviceDiscovery"]["awsCloudMap"] =
                    json!({"namespaceName": "n", "serviceName": "s"})
            }),
            "spec.serviceDiscovery",
            "sets awsCloudMap and dns",
        ),
        (
            "listener needs discovery",
            web(|d| {
                d["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("serviceDiscovery");
            }),
            "spec.serviceDiscovery",
            "is required when the virtual node has listeners",
        ),
        (
            "duplicate listener port",
            web(|d| {
                let l = d["spec"]["listeners"][0].clone();
                d["spec"]["listeners"].as_array_mut().unwrap().push(l);
            }),
            "spec.listeners[1].portMapping.port",
            "port 8080 is already used by listeners[0]",
        ),
        (
            "name length",
            web(|d| d["virtualNodeName"] = json!("x".repeat(256))),
            "virtualNodeName",
            "has 256 characters; allowed 1..255",
        ),
        (
            "one route type",
            route(|d| {
                d["spec"]["tcpRoute"] =
                    json!({"action": {"weightedTargets": [{"virtualNode": "api-v1", "weight": 1}]}})
            }),
            "spec",
            "sets httpRoute and tcpRoute; exactly one route type is allowed",
        ),
        (
            "weight range",
            route(|d| {
                d["spec"]["httpRoute"]["action"]["weightedTargets"][0]["weight"] = json!(101)
            }),
            "spec.httpRoute.action.weightedTargets[0].weight",
            "out of range 0..100",
        ),
        (
            "zero weights",
            route(|d| {
                for t in d["spec"]["httpRoute"]["action"]["weightedTargets"]
                    .as_array_mut()
                    .unwrap()
                {
                    t["weight"] = json!(0);
                }
            }),
            "spec.httpRoute.action.weightedTargets",
            "every weight is 0",
        ),
        (
            "target reference",
            route(|d| {
                d["spec"]["httpRoute"]["action"]["weightedTargets"][0]["virtualNode"] =
                    json!("api-v9")
            }),
            "spec.httpRoute.action.weightedTargets[0].virtualNode",
            "refers to VirtualNode api-v9, which is not defined",
        ),
        (
            "prefix",
            route(|d| d["spec"]["httpRoute"]["match"]["prefix"] = json!("api")),
            "spec.httpRoute.match.prefix",
            "\"api\" must start with /",
        ),
        (
            "regex",
            route(|d| {
                d["spec"]["httpRoute"]["match"]["headers"][0]["match"] =
                    json!({"regex": "(unclosed"})
            }),
            "spec.httpRoute.match.headers[0].match.regex",
            "regex does not compile",
        ),
        (
            "access log text format",
            web(|d| {
                d["spec"]["logging"] = json!({"accessLog": {"file": {"path": "/dev/stdout",
                    "format": {"text": "%START_TIME% %NOT_AN_OPERATOR%"}}}})
            }),
            "spec.logging.accessLog.file.format.text",
            "at offset 13: unknown command operator %NOT_AN_OPERATOR%",
        ),
        (
            "access log json format",
            web(|d| {
                d["spec"]["logging"] = json!({"accessLog": {"file": {"path": "/dev/stdout",
                    "format": {"json": [{"key": "ok", "value": "%DURATION%"},
                                        {"key": "bad", "value": "%REQ(x"}]}}}})
            }),
            "spec.logging.accessLog.file.format.json[1].value",
            "no closing parenthesis",
        ),
        (
            "range",
            route(|d| {
                d["spec"]["httpRoute"]["match"]["headers"][0]["match"] =
                    json!({"range": {"start": 10, "end": 5}})
            }),
            "spec.httpRoute.match.headers[0].match.range",
            "end (5) must be greater than start (10)",
        ),
        (
            "route type vs listener",
            route(|d| {
                let action = d["spec"]["httpRoute"]["action"].clone();
                d["spec"] = json!({"tcpRoute": {"action": action}});
            }),
            "spec.tcpRoute",
            "tcpRoute needs a tcp listener on VirtualRouter api-router, which listens on 9090/http",
        ),
        (
            "target port",
            route(|d| d["spec"]["httpRoute"]["action"]["weightedTargets"][0]["port"] = json!(1234)),
            "spec.httpRoute.action.weightedTargets[0].port",
            "VirtualNode api-v1 has no listener on port 1234",
        ),
        (
            "required member",
            route(|d| {
                d["spec"]["httpRoute"]["retryPolicy"]
                    .as_object_mut()
                    .unwrap()
                    .remove("maxRetries");
            }),
            "spec.httpRoute.retryPolicy.maxRetries",
            "is required",
        ),
        (
            "parent reference",
            route(|d| d["virtualRouterName"] = json!("no-router")),
            "virtualRouterName",
            "refers to VirtualRouter no-router, which is not defined in mesh demo",
        ),
        (
            "provider reference",
            mutated("virtualServiceName", "api.demo.local", |d| {
                d["spec"]["provider"] = json!({"virtualNode": {"virtualNodeName": "ghost"}})
            }),
            "spec.provider.virtualNode.virtualNodeName",
            "refers to VirtualNode ghost, which is not defined in mesh demo",
        ),
        (
            "mesh reference",
            mutated("virtualNodeName", "api-v2", |d| {
                d["meshName"] = json!("other")
            }),
            "meshName",
            "refers to Mesh other, which is not defined",
        ),
        (
            "duplicate name",
            {
                let mut docs = mesh();
                docs.push(docs[2].clone());
                docs
            },
            "virtualNodeName",
            "defined twice; first at doc2.json",
        ),
        (
            "gateway listeners",
            {
                let mut docs = mesh();
                docs[7]["spec"].as_object_mut().unwrap().remove("listeners");
                docs
            },
            "spec.listeners",
            "is required",
        ),
        (
            "gateway route target",
            mutated("gatewayRouteName", "to-api", |d| {
                d["spec"]["httpRoute"]["action"]["target"]["virtualService"]["virtualServiceName"] =
                    json!("none.local")
            }),
            "spec.httpRoute.action.target.virtualService.virtualServiceName",
            "refers to VirtualService none.local, which is not defined",
        ),
        (
            "mesh enum",
            {
                let mut docs = mesh();
                docs[0]["spec"]["egressFilter"]["type"] = json!("DENY");
                docs
            },
            "spec.egressFilter.type",
            "\"DENY\" is not one of: ALLOW_ALL, DROP_ALL",
        ),
    ];
    for (rule, documents, path, message) in cases {
        let found = check(documents);
        assert!(
            found
                .iter()
                .any(|d| d.path.as_deref() == Some(path) && d.message.contains(message)),
            "rule {rule}: expected {path}: {message}, got:\n{}",
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            found.iter().all(|d| d.resource.is_some()),
            "rule {rule}: error without its resource"
        );
    }
}

#[test]
fn all_errors_in_one_run() {
    let mut docs = mutated("virtualNodeName", "web", |d| {
        d["spec"]["listeners"][0]["portMapping"]["port"] = json!(0)
    });
    docs[5]["spec"]["httpRoute"]["match"]["prefix"] = json!("nope");
    let found = check(docs);
    assert_eq!(found.len(), 2, "{found:#?}");
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(text[0].starts_with("doc1.json: error: VirtualNode web: spec.listeners[0].portMapping.port: 0 is out of range"), "{text:?}");
    assert!(
        text[1].starts_with("doc5.json: error: Route api-route: spec.httpRoute.match.prefix"),
        "{text:?}"
    );
}

/// Rules of the App Mesh controller's webhooks, applied to Kubernetes inputs only.
#[test]
fn controller_rules_apply_to_kubernetes_routes() {
    let dir = std::env::temp_dir().join(format!("mesh-model-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("router.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualRouter\nmetadata: {name: r, namespace: ns}\nspec:\n  listeners: [{portMapping: {port: 80, protocol: http}}]\n  routes:\n    - name: port-only\n      httpRoute:\n        match: {port: 80}\n        action: {weightedTargets: [{virtualNodeRef: {name: n}, weight: 1}]}\n",
    )
    .unwrap();
    let options = mesh_model::source::LoadOptions {
        mesh_name: Some("m".into()),
        ..Default::default()
    };
    let loaded = mesh_model::source::load(&[manifest], &options);
    let found = validate(
        &loaded.resources,
        Options {
            check_references: false,
            lenient: false,
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].path.as_deref(), Some("spec.httpRoute.match"));
    assert!(
        found[0]
            .message
            .contains("must set exactly one of prefix, path")
    );
    assert_eq!(found[0].origin.as_ref().and_then(|o| o.line), Some(1));
}
