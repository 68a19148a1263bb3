//! Outbound listeners as the node proxy applies them: per destination port, HTTP routed by a
//! route table or TCP to weighted clusters; a default for every other port (ALLOW_ALL) or
//! none (DROP_ALL).
//!
//! The proxy has one outbound socket for the whole node (redirected connects), so a
//! listener's address is not where it listens: a listener with `traffic_direction: OUTBOUND`
//! named `<mesh>/<virtual node>/outbound` applies to the connections of that virtual node's
//! workloads, one with `INBOUND` named `<mesh>/<virtual node>/inbound` to the connections its
//! pods receive on the listed ports. Other listeners (gateways) are accepted and kept, not
//! applied here.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    config::{
        core::v3::TrafficDirection,
        listener::v3::{FilterChain, Listener, filter::ConfigType},
    },
    extensions::filters::network::{
        http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
        tcp_proxy::v3::{TcpProxy, tcp_proxy::ClusterSpecifier},
    },
};
use prost::Message;

use super::{
    PlanError,
    access_log::AccessLogPlan,
    duration,
    route::{RouteTable, WeightedClusters},
    tls::ServerTlsPlan,
};
use crate::names;

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Envoy's TCP proxy idle timeout when none is given.
const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(3600);

/// What one virtual node's workloads may reach, by destination port.
#[derive(Debug)]
pub struct OutboundPlan {
    pub listener: String,
    pub virtual_node: String,
    pub ports: BTreeMap<u16, PortPlan>,
    /// Every other port (ALLOW_ALL egress); `None`: refused (DROP_ALL).
    pub other_ports: Option<PortPlan>,
}

#[derive(Debug)]
pub enum PortPlan {
    /// HTTP, HTTP/2 or gRPC, routed by the named route table.
    Http(HttpPlan),
    Tcp {
        clusters: WeightedClusters,
        idle_timeout: Option<Duration>,
        access_logs: AccessLogs,
        /// The virtual service behind an outbound TCP port (the filter chain's name), whose
        /// name the node's DNS answers.
        service: Option<String>,
    },
}

/// An HTTP connection manager as the proxy applies it.
#[derive(Debug)]
pub struct HttpPlan {
    /// The route table's name.
    pub routes: String,
    pub access_logs: AccessLogs,
    /// HTTP/1.1 `Upgrade: websocket` requests may pass (the manager's `upgrade_configs` name
    /// it); without it they are refused, as Envoy refuses them.
    pub websocket: bool,
}

/// The access logs of one filter, shared by every connection it takes.
pub type AccessLogs = Arc<[AccessLogPlan]>;

/// What a virtual node's pods take in, by port.
#[derive(Debug)]
pub struct InboundPlan {
    pub listener: String,
    pub virtual_node: String,
    pub ports: BTreeMap<u16, InboundPort>,
}

/// One listener port under its TLS mode: plain text only (DISABLED), TLS only (STRICT), or
/// both, told apart by the first bytes (PERMISSIVE).
#[derive(Debug, Default)]
pub struct InboundPort {
    pub plain: Option<PortPlan>,
    pub tls: Option<TlsChain>,
}

/// A filter chain behind TLS termination.
#[derive(Debug)]
pub struct TlsChain {
    pub tls: Arc<ServerTlsPlan>,
    pub plan: PortPlan,
}

/// One listener port of a virtual gateway (`mesh/gateway/ingress/port`): HTTP through the
/// gateway routes, behind the port's TLS.
#[derive(Debug)]
pub struct GatewayPortPlan {
    /// The gateway as [`names::virtual_gateway`] names it.
    pub gateway: String,
    pub port: u16,
    pub chains: InboundPort,
}

/// A listener decoded and checked; `outbound` / `inbound` / `gateway` / `internal` when the
/// proxy applies it, and any inline route tables it carries (applied by name like RDS ones).
pub struct ListenerPlan {
    pub outbound: Option<OutboundPlan>,
    pub inbound: Option<InboundPlan>,
    pub gateway: Option<GatewayPortPlan>,
    /// An internal listener (no socket; a gateway's second table), by name.
    pub internal: Option<(String, HttpPlan)>,
    pub inline_routes: Vec<RouteTable>,
}

impl ListenerPlan {
    pub fn from_proto(listener: &Listener) -> Result<Self, PlanError> {
        let mut inline_routes = Vec::new();
        let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
        for (index, chain) in listener.filter_chains.iter().enumerate() {
            let within = |e: PlanError| e.within(format!("filter_chains[{index}]"));
            let plan = chain_plan(chain, &mut inline_routes).map_err(within)?;
            let tls =
                ServerTlsPlan::from_socket(chain.transport_socket.as_ref()).map_err(within)?;
            let transport = chain
                .filter_chain_match
                .as_ref()
                .map(|m| m.transport_protocol.as_str())
                .unwrap_or_default();
            if tls.is_none() && transport == "tls" {
                return Err(within(PlanError::new(
                    "filter_chain_match.transport_protocol",
                    "TLS without a transport socket (passthrough) is not supported",
                )));
            }
            let port = chain
                .filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port)
                .map(|p| u16::try_from(p.value))
                .transpose()
                .map_err(|_| {
                    PlanError::new(
                        format!("filter_chains[{index}].filter_chain_match.destination_port"),
                        "out of range",
                    )
                })?;
            let Some(port) = port else { continue };
            let entry = ports.entry(port).or_default();
            let taken = match tls {
                Some(tls) => entry
                    .tls
                    .replace(TlsChain {
                        tls: Arc::new(tls),
                        plan,
                    })
                    .is_some(),
                None => entry.plain.replace(plan).is_some(),
            };
            if taken {
                return Err(within(PlanError::new(
                    "filter_chain_match",
                    format!("a second chain for port {port} and the same transport"),
                )));
            }
        }
        let other_ports = listener
            .default_filter_chain
            .as_ref()
            .map(|chain| chain_plan(chain, &mut inline_routes))
            .transpose()
            .map_err(|e| e.within("default_filter_chain"))?;
        let direction = listener.traffic_direction;
        // `form` shows the name the parser takes, for the error.
        let named = |parse: fn(&str) -> Option<&str>, form: &str| {
            parse(&listener.name).map(str::to_owned).ok_or_else(|| {
                PlanError::new(
                    "name",
                    format!("a listener of this direction is named {form}"),
                )
            })
        };
        let mut outbound = None;
        let mut inbound = None;
        let mut gateway = None;
        let mut internal = None;
        if listener.listener_specifier.is_some() {
            internal = Some((
                listener.name.clone(),
                internal_plan(listener, &mut inline_routes)?,
            ));
        } else if let Some((name, port)) = names::gateway_of_ingress(&listener.name) {
            gateway = Some(gateway_port(name, port, ports)?);
        } else if direction == TrafficDirection::Outbound as i32 {
            let mut plain = BTreeMap::new();
            for (port, chains) in ports {
                if chains.tls.is_some() {
                    return Err(PlanError::new(
                        "filter_chains",
                        format!("port {port}: an outbound listener does not terminate TLS"),
                    ));
                }
                plain.extend(chains.plain.map(|plan| (port, plan)));
            }
            outbound = Some(OutboundPlan {
                listener: listener.name.clone(),
                virtual_node: named(
                    names::virtual_node_of_outbound_listener,
                    "<virtual node>/outbound",
                )?,
                ports: plain,
                other_ports,
            });
        } else if direction == TrafficDirection::Inbound as i32 {
            inbound = Some(InboundPlan {
                listener: listener.name.clone(),
                virtual_node: named(
                    names::virtual_node_of_inbound_listener,
                    "<virtual node>/inbound",
                )?,
                ports,
            });
        }
        Ok(Self {
            outbound,
            inbound,
            gateway,
            internal,
            inline_routes,
        })
    }
}

/// A gateway ingress listener's one port: HTTP only (gateway routes are HTTP, HTTP/2, gRPC).
fn gateway_port(
    gateway: String,
    port: u16,
    mut ports: BTreeMap<u16, InboundPort>,
) -> Result<GatewayPortPlan, PlanError> {
    let chains = ports.remove(&port).unwrap_or_default();
    if !ports.is_empty() {
        return Err(PlanError::new(
            "filter_chains",
            format!("a gateway ingress listener serves its own port {port} only"),
        ));
    }
    let tcp = |plan: Option<&PortPlan>| matches!(plan, Some(PortPlan::Tcp { .. }));
    if tcp(chains.plain.as_ref()) || tcp(chains.tls.as_ref().map(|chain| &chain.plan)) {
        return Err(PlanError::new(
            "filter_chains",
            "a gateway listener routes HTTP; a TCP proxy is not supported there",
        ));
    }
    Ok(GatewayPortPlan {
        gateway,
        port,
        chains,
    })
}

/// An internal listener: one filter chain with an HTTP connection manager, no TLS.
fn internal_plan(
    listener: &Listener,
    inline_routes: &mut Vec<RouteTable>,
) -> Result<HttpPlan, PlanError> {
    use envoy_types::pb::envoy::config::listener::v3::listener::ListenerSpecifier;
    if !matches!(
        listener.listener_specifier,
        Some(ListenerSpecifier::InternalListener(_))
    ) {
        return Err(PlanError::new(
            "listener_specifier",
            "only internal listeners are supported",
        ));
    }
    let [chain] = listener.filter_chains.as_slice() else {
        return Err(PlanError::new(
            "filter_chains",
            "an internal listener has exactly one filter chain",
        ));
    };
    if chain.transport_socket.is_some() {
        return Err(PlanError::new(
            "filter_chains[0].transport_socket",
            "an internal listener carries no TLS",
        ));
    }
    match chain_plan(chain, inline_routes).map_err(|e| e.within("filter_chains[0]"))? {
        PortPlan::Http(plan) => Ok(plan),
        PortPlan::Tcp { .. } => Err(PlanError::new(
            "filter_chains[0]",
            "an internal listener routes HTTP",
        )),
    }
}

/// Whether the manager's `upgrade_configs` let WebSocket upgrades through; other upgrade
/// types (and upgrade filters) are not something the proxy does, so they are refused.
fn websocket_upgrades(manager: &HttpConnectionManager) -> Result<bool, PlanError> {
    let mut websocket = false;
    for (index, upgrade) in manager.upgrade_configs.iter().enumerate() {
        let field = || format!("upgrade_configs[{index}]");
        if !upgrade.upgrade_type.eq_ignore_ascii_case("websocket") {
            return Err(PlanError::new(
                field(),
                format!(
                    "upgrade type {:?} is not supported (only websocket)",
                    upgrade.upgrade_type
                ),
            ));
        }
        if !upgrade.filters.is_empty() {
            return Err(PlanError::new(field(), "upgrade filters are not supported"));
        }
        websocket = upgrade.enabled.is_none_or(|enabled| enabled.value);
    }
    Ok(websocket)
}

fn chain_plan(
    chain: &FilterChain,
    inline_routes: &mut Vec<RouteTable>,
) -> Result<PortPlan, PlanError> {
    let [filter] = chain.filters.as_slice() else {
        return Err(PlanError::new(
            "filters",
            "exactly one network filter is supported",
        ));
    };
    let Some(ConfigType::TypedConfig(config)) = &filter.config_type else {
        return Err(PlanError::new(
            "filters",
            format!("filter {} has no typed config", filter.name),
        ));
    };
    match config.type_url.as_str() {
        HCM => {
            let manager = HttpConnectionManager::decode(config.value.as_slice())
                .map_err(|e| PlanError::new("http_connection_manager", e.to_string()))?;
            let websocket =
                websocket_upgrades(&manager).map_err(|e| e.within("http_connection_manager"))?;
            let routes = match manager.route_specifier {
                Some(RouteSpecifier::Rds(rds)) => rds.route_config_name,
                Some(RouteSpecifier::RouteConfig(routes)) => {
                    let table = RouteTable::from_proto(&routes)
                        .map_err(|e| e.within("http_connection_manager.route_config"))?;
                    let name = table.name.clone();
                    inline_routes.push(table);
                    name
                }
                _ => {
                    return Err(PlanError::new(
                        "http_connection_manager",
                        "routes must come by RDS or inline",
                    ));
                }
            };
            let access_logs = AccessLogPlan::from_protos(&manager.access_log)
                .map_err(|e| e.within("http_connection_manager"))?;
            Ok(PortPlan::Http(HttpPlan {
                routes,
                access_logs: access_logs.into(),
                websocket,
            }))
        }
        TCP_PROXY => {
            let proxy = TcpProxy::decode(config.value.as_slice())
                .map_err(|e| PlanError::new("tcp_proxy", e.to_string()))?;
            let clusters = match proxy.cluster_specifier {
                Some(ClusterSpecifier::Cluster(name)) => WeightedClusters::single(name),
                Some(ClusterSpecifier::WeightedClusters(weighted)) => WeightedClusters::new(
                    weighted
                        .clusters
                        .into_iter()
                        .map(|c| (c.name, c.weight))
                        .collect(),
                )
                .map_err(|e| e.within("tcp_proxy"))?,
                None => return Err(PlanError::new("tcp_proxy", "no cluster")),
            };
            let idle_timeout = match &proxy.idle_timeout {
                None => Some(DEFAULT_TCP_IDLE),
                Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
            };
            let access_logs =
                AccessLogPlan::from_protos(&proxy.access_log).map_err(|e| e.within("tcp_proxy"))?;
            Ok(PortPlan::Tcp {
                clusters,
                idle_timeout,
                access_logs: access_logs.into(),
                service: Some(chain.name.clone()).filter(|name| !name.is_empty()),
            })
        }
        other => Err(PlanError::new(
            "filters",
            format!("network filter {other} is not supported"),
        )),
    }
}
