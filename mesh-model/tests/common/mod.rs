//! A small valid mesh that exercises every kind, shared by the tests.
use serde_json::{Value, json};

/// The mesh as App Mesh API JSON request bodies.
pub fn mesh() -> Vec<Value> {
    vec![
        json!({"meshName": "demo", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
        json!({"meshName": "demo", "virtualNodeName": "web", "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "web.demo.local"}},
            "backends": [{"virtualService": {"virtualServiceName": "api.demo.local"}}]}}),
        json!({"meshName": "demo", "virtualNodeName": "api-v1", "spec": {
            "listeners": [{"portMapping": {"port": 9090, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "api-v1.demo.local"}}}}),
        json!({"meshName": "demo", "virtualNodeName": "api-v2", "spec": {
            "listeners": [{"portMapping": {"port": 9090, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "api-v2.demo.local"}}}}),
        json!({"meshName": "demo", "virtualRouterName": "api-router", "spec": {
            "listeners": [{"portMapping": {"port": 9090, "protocol": "http"}}]}}),
        json!({"meshName": "demo", "virtualRouterName": "api-router", "routeName": "api-route", "spec": {
            "httpRoute": {
                "match": {"prefix": "/", "headers": [{"name": "x-canary", "match": {"exact": "1"}}]},
                "action": {"weightedTargets": [{"virtualNode": "api-v1", "weight": 90}, {"virtualNode": "api-v2", "weight": 10}]},
                "retryPolicy": {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 500}, "httpRetryEvents": ["server-error"]}}}}),
        json!({"meshName": "demo", "virtualServiceName": "api.demo.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "api-router"}}}}),
        json!({"meshName": "demo", "virtualGatewayName": "ingress", "spec": {
            "listeners": [{"portMapping": {"port": 8088, "protocol": "http"}}]}}),
        json!({"meshName": "demo", "virtualGatewayName": "ingress", "gatewayRouteName": "to-api", "spec": {
            "httpRoute": {"match": {"prefix": "/api"}, "action": {"target": {"virtualService": {"virtualServiceName": "api.demo.local"}}}}}}),
    ]
}
