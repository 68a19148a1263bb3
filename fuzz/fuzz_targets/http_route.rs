//! HTTP request routing: a RouteConfiguration (protobuf, as RDS or a listener carries it)
//! converted to the proxy's route table, then requests routed through it as the proxy does:
//! the virtual host by authority, the first matching route (path, method, headers, query
//! parameters, scheme), the weighted cluster pick, the path rewrite, the retry decisions.
#![no_main]
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use libfuzzer_sys::fuzz_target;
use mesh_agent_fuzz::{requests, split_route_input};
use mesh_xds::plan::route::{RequestView, RouteTable};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((config, rest)) = split_route_input(data) else {
        return;
    };
    let Ok(config) = RouteConfiguration::decode(config) else {
        return;
    };
    let Ok(table) = RouteTable::from_proto(&config) else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    for request in requests(&text) {
        let view = RequestView {
            method: &request.method,
            scheme: &request.scheme,
            authority: &request.authority,
            path: &request.path,
            query: request.query.as_deref(),
            headers: &request.headers,
        };
        let Some(host) = table.virtual_host(view.authority) else {
            continue;
        };
        let Some(route) = host.route(&view) else {
            continue;
        };
        let action = &route.action;
        let picked = action.clusters.pick(request.draw);
        assert!(action.clusters.names().any(|name| name == picked));
        let _ = action.rewrite_path(route, view.path);
        if let Some(retry) = &action.retry {
            let _ = retry.retries_status(503, Some(14));
            let _ = retry.retries_failure(true);
            let _ = retry.retries_timeout();
        }
    }
});
