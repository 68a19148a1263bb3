//! Constraints the App Mesh API Reference states in words rather than in the model's shapes
//! (service-2.json's documentation strings), which App Mesh enforces all the same.
use serde_json::Value;

use super::get;
use crate::{Path, resource::Kind};

/// `HttpRetryPolicy.httpRetryEvents` / `GrpcRetryPolicy.httpRetryEvents`: "Specify at least
/// one of the following values": a string list in the model.
const HTTP_RETRY_EVENTS: [&str; 4] = [
    "server-error",
    "gateway-error",
    "client-error",
    "stream-error",
];

/// Every documented constraint `spec` of a `kind` resource breaks, each reported by `error`
/// with its field.
pub(super) fn check(kind: Kind, spec: &Value, error: &mut impl FnMut(&Path, String)) {
    let spec_path = Path::root("spec");
    match kind {
        Kind::VirtualNode | Kind::VirtualGateway => {
            for (index, listener) in get(spec, &["listeners"])
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                listener_rules(listener, &spec_path.field("listeners").index(index), error);
            }
        }
        Kind::Route | Kind::GatewayRoute => {
            for route_type in ["httpRoute", "http2Route", "grpcRoute"] {
                let Some(route) = spec.get(route_type) else {
                    continue;
                };
                let path = spec_path.field(route_type);
                if let Some(policy) = route.get("retryPolicy") {
                    retry_policy(route_type, policy, &path.field("retryPolicy"), error);
                }
                if route_type == "grpcRoute"
                    && let Some(matching) = route.get("match")
                    && matching.get("methodName").is_some()
                    && matching.get("serviceName").is_none()
                {
                    error(
                        &path.field("match").field("serviceName"),
                        "is required when methodName is set (App Mesh: \"If you specify a name, you must also specify a serviceName\")".into(),
                    );
                }
            }
            for route_type in ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"] {
                let targets =
                    get(spec, &[route_type, "action", "weightedTargets"]).and_then(Value::as_array);
                let total: i64 = targets
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.get("weight").and_then(Value::as_i64))
                    .sum();
                if total > 100 {
                    error(
                        &spec_path
                            .field(route_type)
                            .field("action")
                            .field("weightedTargets"),
                        format!("weights add up to {total}; App Mesh allows at most 100 in all"),
                    );
                }
            }
        }
        _ => {}
    }
}

/// A listener's health check runs on its own port, and its connection pool is of its
/// protocol.
fn listener_rules(listener: &Value, path: &Path, error: &mut impl FnMut(&Path, String)) {
    let port = get(listener, &["portMapping", "port"]).and_then(Value::as_i64);
    if let (Some(port), Some(checked)) = (
        port,
        get(listener, &["healthCheck", "port"]).and_then(Value::as_i64),
    ) && checked != port
    {
        error(
            &path.field("healthCheck").field("port"),
            format!(
                "{checked} must be the listener's port {port} (App Mesh: \"This port must match the port defined in the PortMapping for the listener\")"
            ),
        );
    }
    let protocol = get(listener, &["portMapping", "protocol"]).and_then(Value::as_str);
    if let (Some(protocol), Some(Value::Object(pool))) = (protocol, listener.get("connectionPool"))
    {
        for pool_protocol in pool.keys().filter(|p| p.as_str() != protocol) {
            error(
                &path.field("connectionPool").field(pool_protocol),
                format!(
                    "is for {pool_protocol}, but the listener's protocol is {protocol} (App Mesh: the connection pool's protocol is the one chosen under portMapping)"
                ),
            );
        }
    }
}

/// "Specify at least one value for at least one of the types of RetryEvents", and only the
/// documented HTTP retry events.
fn retry_policy(
    route_type: &str,
    policy: &Value,
    path: &Path,
    error: &mut impl FnMut(&Path, String),
) {
    let kinds: &[&str] = if route_type == "grpcRoute" {
        &["grpcRetryEvents", "httpRetryEvents", "tcpRetryEvents"]
    } else {
        &["httpRetryEvents", "tcpRetryEvents"]
    };
    let any_event = kinds.iter().any(|kind| {
        policy
            .get(*kind)
            .and_then(Value::as_array)
            .is_some_and(|events| !events.is_empty())
    });
    if !any_event {
        error(
            path,
            format!(
                "must list at least one retry event in one of: {}",
                kinds.join(", ")
            ),
        );
    }
    for (index, event) in policy
        .get("httpRetryEvents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(event) = event.as_str()
            && !HTTP_RETRY_EVENTS.contains(&event)
        {
            error(
                &path.field("httpRetryEvents").index(index),
                format!(
                    "\"{event}\" is not one of: {}",
                    HTTP_RETRY_EVENTS.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(kind: Kind, spec: Value) -> Vec<String> {
        let mut found = Vec::new();
        check(kind, &spec, &mut |path, message| {
            found.push(format!("{path}: {message}"))
        });
        found
    }

    #[test]
    fn retry_events_are_the_documented_ones_and_at_least_one_is_given() {
        let found = errors(
            Kind::Route,
            json!({"httpRoute": {"retryPolicy": {"maxRetries": 1, "perRetryTimeout": {"unit": "s", "value": 1},
                                                  "httpRetryEvents": ["server-error", "5xx"]}}}),
        );
        assert_eq!(
            found,
            [
                "spec.httpRoute.retryPolicy.httpRetryEvents[1]: \"5xx\" is not one of: server-error, gateway-error, client-error, stream-error"
            ]
        );
        let found = errors(
            Kind::Route,
            json!({"grpcRoute": {"retryPolicy": {"maxRetries": 1, "perRetryTimeout": {"unit": "s", "value": 1}}}}),
        );
        assert_eq!(
            found,
            [
                "spec.grpcRoute.retryPolicy: must list at least one retry event in one of: grpcRetryEvents, httpRetryEvents, tcpRetryEvents"
            ]
        );
    }

    #[test]
    fn members_that_require_or_exclude_others() {
        let found = errors(
            Kind::Route,
            json!({"grpcRoute": {"match": {"methodName": "Get"}}}),
        );
        assert!(
            found[0].starts_with(
                "spec.grpcRoute.match.serviceName: is required when methodName is set"
            ),
            "{found:?}"
        );
        let found = errors(
            Kind::VirtualNode,
            json!({"listeners": [{"portMapping": {"port": 80, "protocol": "http"},
                                  "healthCheck": {"port": 81},
                                  "connectionPool": {"tcp": {"maxConnections": 1}}}]}),
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with(
                "spec.listeners[0].healthCheck.port: 81 must be the listener's port 80"
            )
        );
        assert!(found[1].starts_with(
            "spec.listeners[0].connectionPool.tcp: is for tcp, but the listener's protocol is http"
        ));
        let found = errors(
            Kind::Route,
            json!({"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "a", "weight": 60}, {"virtualNode": "b", "weight": 50}]}}}),
        );
        assert_eq!(
            found,
            [
                "spec.tcpRoute.action.weightedTargets: weights add up to 110; App Mesh allows at most 100 in all"
            ]
        );
    }
}
