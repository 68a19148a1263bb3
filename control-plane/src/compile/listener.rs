//! Outbound listeners: one per virtual node, a filter chain per destination port of its
//! backends — HTTP, HTTP/2 and gRPC ports through an HTTP connection manager with that
//! node's routes (RDS), TCP ports through a TCP proxy — and, when the mesh's egress filter is
//! ALLOW_ALL, a default chain passing everything else through.
use envoy_types::{
    pb::{
        envoy::{
            config::core::v3::TrafficDirection,
            config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, filter},
            extensions::filters::{
                http::router::v3::Router,
                network::{
                    http_connection_manager::v3::{
                        HttpConnectionManager, HttpFilter, Rds,
                        http_connection_manager::{RouteSpecifier, UpgradeConfig},
                        http_filter,
                    },
                    tcp_proxy::v3::{TcpProxy, tcp_proxy},
                },
            },
        },
        google::protobuf::Duration as PbDuration,
    },
    util::pack_any,
};

use super::values::{ads, socket_address, u32_value};

/// What a destination port of a node's backends carries.
pub enum PortTraffic {
    /// HTTP-family traffic, routed by the named RouteConfiguration.
    Http { routes: String },
    /// TCP to weighted clusters, cut after the idle timeout; the chain is named after the
    /// virtual service (the node's DNS answers that name).
    Tcp {
        service: String,
        clusters: Vec<(String, u32)>,
        idle_timeout: Option<PbDuration>,
    },
}

pub fn outbound(
    name: String,
    address: (&str, u32),
    ports: Vec<(i32, PortTraffic)>,
    passthrough: Option<String>,
) -> Listener {
    let mut filter_chains: Vec<FilterChain> = ports
        .into_iter()
        .map(|(port, plan)| {
            let (chain_name, filter) = match plan {
                PortTraffic::Http { routes } => (
                    String::new(),
                    http_connection_manager(format!("{name}/{port}"), rds(routes)),
                ),
                PortTraffic::Tcp {
                    service,
                    clusters,
                    idle_timeout,
                } => (
                    service,
                    tcp_proxy(format!("{name}/{port}"), clusters, idle_timeout),
                ),
            };
            FilterChain {
                name: chain_name,
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: u32_value(i64::from(port)),
                    ..Default::default()
                }),
                filters: vec![filter],
                ..Default::default()
            }
        })
        .collect();
    let default_filter_chain = passthrough.map(|cluster| FilterChain {
        filters: vec![tcp_proxy(format!("{name}/0"), vec![(cluster, 1)], None)],
        ..Default::default()
    });
    filter_chains.sort_by_key(|c| {
        c.filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port.map(|p| p.value))
    });
    Listener {
        name,
        address: Some(socket_address(address.0, address.1)),
        filter_chains,
        default_filter_chain,
        // The node proxy applies outbound listeners to the virtual node's workloads.
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// An HTTP connection manager (router filter only) taking its routes from `routes`.
pub(super) fn http_connection_manager(stat_prefix: String, routes: RouteSpecifier) -> Filter {
    let manager = HttpConnectionManager {
        stat_prefix,
        route_specifier: Some(routes),
        // App Mesh's Envoy let WebSocket upgrades through its HTTP listeners; so does ours.
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(manager))),
    }
}

/// Routes loaded by name over ADS.
pub(super) fn rds(route_config_name: String) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name,
    })
}

/// A TCP proxy to one cluster, or weighted clusters.
pub(super) fn tcp_proxy(
    stat_prefix: String,
    clusters: Vec<(String, u32)>,
    idle_timeout: Option<PbDuration>,
) -> Filter {
    let cluster_specifier = match clusters.as_slice() {
        [(single, _)] => tcp_proxy::ClusterSpecifier::Cluster(single.clone()),
        _ => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: clusters
                .into_iter()
                .map(
                    |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name,
                        weight,
                        ..Default::default()
                    },
                )
                .collect(),
        }),
    };
    let proxy = TcpProxy {
        stat_prefix,
        cluster_specifier: Some(cluster_specifier),
        idle_timeout,
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
    }
}
