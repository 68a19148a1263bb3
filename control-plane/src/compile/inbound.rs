//! Inbound: what a virtual node's listeners do for its local workloads, as App Mesh's Envoy
//! did on the ingress side — TLS termination per listener TLS mode (STRICT, PERMISSIVE,
//! DISABLED; certificates from files or SDS; client validation by trust and subject
//! alternative names), listener timeouts, and toward the local application the connection
//! pool (circuit breakers) and the health check.
use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster,
            core::v3::TrafficDirection,
            listener::v3::{Filter, Listener},
            route::v3::{RouteConfiguration, VirtualHost, route::Action},
        },
        extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier,
    },
    google::protobuf::Duration as PbDuration,
};
use mesh_model::types::{
    CreateVirtualNodeInput, Listener as AppMeshListener, ListenerTimeout, PortProtocol,
};

use mesh_xds::{metadata, names};

use super::{
    AutoMtls, Issues, cluster,
    listener::{http_connection_manager, tcp_proxy},
    route, tls,
    values::{duration, socket_address},
};

/// Where the node proxy takes inbound traffic for its workloads in.
pub const INBOUND_ADDRESS: (&str, u32) = ("0.0.0.0", 15006);

/// A virtual node's inbound listener and its clusters toward the local application.
pub fn inbound(
    node: &CreateVirtualNodeInput,
    mtls: Option<&AutoMtls>,
    issues: &mut Issues,
) -> (Option<Listener>, Vec<Cluster>) {
    let (mesh, name) = (&node.mesh_name, &node.virtual_node_name);
    let mut chains = Vec::new();
    let mut clusters = Vec::new();
    for listener in node.spec.listeners.iter().flatten() {
        let port = listener.port_mapping.port;
        let local = names::inbound_cluster(mesh, name, port);
        let mut local_cluster = local_cluster(&local, listener);
        local_cluster.metadata = Some(metadata::for_virtual_node(&names::virtual_node(mesh, name)));
        clusters.push(local_cluster);
        let filter = match listener.port_mapping.protocol {
            PortProtocol::Tcp => tcp_filter(&local, listener),
            _ => http_filter_for(&local, listener),
        };
        let what = format!("VirtualNode {name} listener {port}");
        let source = tls::ListenerTlsSource {
            tls: listener.tls.as_ref(),
            auto: mtls.map(|mtls| (mtls, mesh.as_str(), name.as_str())),
        };
        chains.extend(tls::chains(port, &filter, source, &what, issues));
    }
    if chains.is_empty() {
        return (None, clusters);
    }
    let listener_filters = tls::inspector_for(&chains);
    let listener = Listener {
        name: names::inbound_listener(mesh, name),
        address: Some(socket_address(INBOUND_ADDRESS.0, INBOUND_ADDRESS.1)),
        filter_chains: chains,
        listener_filters,
        // The node proxy captures the virtual node's listener ports in its pods for this.
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    (Some(listener), clusters)
}

/// The local application: the connection's original destination (the pod), with the
/// listener's connection pool and health check.
fn local_cluster(name: &str, listener: &AppMeshListener) -> Cluster {
    Cluster {
        circuit_breakers: listener
            .connection_pool
            .as_ref()
            .map(cluster::circuit_breakers),
        health_checks: listener
            .health_check
            .iter()
            .map(cluster::health_check)
            .collect(),
        typed_extension_protocol_options: cluster::upstream_protocol(
            listener.port_mapping.protocol,
        ),
        ..cluster::passthrough(name.to_owned())
    }
}

fn timeouts(listener: &AppMeshListener) -> (Option<PbDuration>, Option<PbDuration>) {
    match &listener.timeout {
        Some(ListenerTimeout::Http(t) | ListenerTimeout::Http2(t)) => (
            t.per_request.as_ref().and_then(duration),
            t.idle.as_ref().and_then(duration),
        ),
        Some(ListenerTimeout::Grpc(t)) => (
            t.per_request.as_ref().and_then(duration),
            t.idle.as_ref().and_then(duration),
        ),
        Some(ListenerTimeout::Tcp(t)) => (None, t.idle.as_ref().and_then(duration)),
        None => (None, None),
    }
}

fn http_filter_for(local: &str, listener: &AppMeshListener) -> Filter {
    let (per_request, idle) = timeouts(listener);
    let mut to_local = route::to_cluster(local, local.to_owned());
    if let Some(Action::Route(action)) = &mut to_local.action {
        action.timeout = per_request;
        action.idle_timeout = idle;
    }
    let routes = RouteConfiguration {
        name: local.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: local.to_owned(),
            domains: vec!["*".into()],
            routes: vec![to_local],
            ..Default::default()
        }],
        ..Default::default()
    };
    http_connection_manager(local.to_owned(), RouteSpecifier::RouteConfig(routes))
}

fn tcp_filter(local: &str, listener: &AppMeshListener) -> Filter {
    tcp_proxy(
        local.to_owned(),
        vec![(local.to_owned(), 1)],
        timeouts(listener).1,
    )
}
