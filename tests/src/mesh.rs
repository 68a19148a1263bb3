//! The test mesh both test tiers use (the in-process L7 tests in agent/tests/l7 and the
//! end-to-end tests here): mesh `m`, router `api` behind `api.m.local`, virtual nodes `v1` and
//! `v2`. These build its routes as App Mesh API JSON.
use serde_json::{Value, json};

/// The virtual service every test client calls, and its port.
pub const SERVICE: &str = "api.m.local";
pub const PORT: u16 = 8080;

/// An httpRoute of router `api` named `name` with `matching` to weighted targets, with
/// `extra` fields (retryPolicy, timeout) merged into the httpRoute.
pub fn route(
    name: &str,
    priority: Option<i64>,
    matching: Value,
    targets: &[(&str, i64)],
    extra: Value,
) -> Value {
    route_of_kind("httpRoute", name, priority, matching, targets, extra)
}

/// A route of `kind` (httpRoute, http2Route, grpcRoute, tcpRoute); `matching` null for none.
pub fn route_of_kind(
    kind: &str,
    name: &str,
    priority: Option<i64>,
    matching: Value,
    targets: &[(&str, i64)],
    extra: Value,
) -> Value {
    let mut spec = json!({
        "action": {"weightedTargets": targets.iter().map(|(node, weight)| json!({"virtualNode": node, "weight": weight})).collect::<Vec<_>>()},
    });
    if !matching.is_null() {
        spec["match"] = matching;
    }
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let mut spec = json!({ kind: spec });
    if let Some(priority) = priority {
        spec["priority"] = json!(priority);
    }
    json!({"meshName": "m", "virtualRouterName": "api", "routeName": name, "spec": spec})
}

/// One route, `all`, sending everything to v1.
pub fn all_to_v1() -> Vec<Value> {
    vec![route(
        "all",
        None,
        json!({"prefix": "/"}),
        &[("v1", 1)],
        json!({}),
    )]
}

/// One http2Route, `all`, sending everything to v1.
pub fn all_to_v1_over_http2() -> Vec<Value> {
    vec![route_of_kind(
        "http2Route",
        "all",
        None,
        json!({"prefix": "/"}),
        &[("v1", 1)],
        json!({}),
    )]
}
