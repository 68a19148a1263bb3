//! Clusters: one per listener port of a virtual node, as App Mesh configured Envoy —
//! service discovery → cluster type and endpoints, outlier detection → OutlierDetection,
//! HTTP/2 and gRPC listeners → HTTP/2 upstreams, connection pool → CircuitBreakers, health
//! check → active HealthCheck.
use std::collections::HashMap;

use envoy_types::{
    pb::{
        envoy::{
            config::{
                cluster::v3::{self as cluster, circuit_breakers::Thresholds},
                core::v3::{self as core, health_check},
                endpoint::v3 as endpoint,
            },
            extensions::upstreams::http::v3::{
                HttpProtocolOptions,
                http_protocol_options::{
                    ExplicitHttpConfig, UpstreamProtocolOptions,
                    explicit_http_config::ProtocolConfig,
                },
            },
        },
        google::protobuf::Any,
    },
    util::pack_any,
};
use mesh_model::types::{
    AwsCloudMapServiceDiscovery, CreateVirtualNodeInput, DnsResponseType, HealthCheckPolicy,
    IpPreference, Listener, OutlierDetection, PortProtocol, ServiceDiscovery,
    VirtualNodeConnectionPool,
};

use mesh_xds::{metadata, names};

use super::{
    endpoints::ServiceEndpoints,
    values::{ads, duration, millis, u32_value},
};
use crate::registry::{self, Registry};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The cluster of `listener` on virtual node `node`, and its endpoints when they come by EDS
/// (from the service registry, or a Kubernetes Service's EndpointSlices).
pub fn for_listener(
    node: &CreateVirtualNodeInput,
    listener: &Listener,
    registry: &Registry,
    service_endpoints: &ServiceEndpoints,
) -> (cluster::Cluster, Option<endpoint::ClusterLoadAssignment>) {
    let port = listener.port_mapping.port;
    let name = names::cluster(&node.mesh_name, &node.virtual_node_name, port);
    let mut result = cluster::Cluster {
        name: name.clone(),
        // Copies of this cluster (per caller, per gateway) are clones: they keep it.
        metadata: Some(metadata::for_virtual_node(&names::virtual_node(
            &node.mesh_name,
            &node.virtual_node_name,
        ))),
        // The node proxy is every caller's proxy on its node: the node's outlier detection,
        // connection pool and health check apply toward its endpoints (and, for an Envoy
        // sidecar, also toward the local application: see inbound).
        outlier_detection: listener.outlier_detection.as_ref().map(outlier_detection),
        circuit_breakers: listener.connection_pool.as_ref().map(circuit_breakers),
        health_checks: listener.health_check.iter().map(health_check).collect(),
        typed_extension_protocol_options: upstream_protocol(listener.port_mapping.protocol),
        ..Default::default()
    };
    let mut eds = None;
    let from_service = service_endpoints.get(&node.mesh_name, &node.virtual_node_name, port);
    match &node.spec.service_discovery {
        // The hostname names a Kubernetes Service: its ready pods are the endpoints.
        Some(ServiceDiscovery::Dns(_)) if from_service.is_some() => {
            let lb_endpoints = from_service
                .into_iter()
                .flatten()
                .map(|addr| {
                    lb_endpoint(
                        &addr.ip().to_string(),
                        u32::from(addr.port()),
                        String::new(),
                    )
                })
                .collect();
            result.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Eds as i32,
            ));
            result.eds_cluster_config = Some(eds_config(&name));
            eds = Some(assignment(name, lb_endpoints));
        }
        Some(ServiceDiscovery::Dns(dns)) => {
            // ENDPOINTS: every address the name resolves to is an endpoint (STRICT_DNS);
            // LOADBALANCER: one connection target behind a load balancer (LOGICAL_DNS).
            let discovery = match dns.response_type {
                Some(DnsResponseType::Loadbalancer) => cluster::cluster::DiscoveryType::LogicalDns,
                _ => cluster::cluster::DiscoveryType::StrictDns,
            };
            result.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                discovery as i32,
            ));
            result.dns_lookup_family = lookup_family(dns.ip_preference) as i32;
            // Answers expire with their TTL (moved into the DNS cluster extension in newer
            // Envoy; the field still works).
            #[allow(deprecated)]
            {
                result.respect_dns_ttl = true;
            }
            result.load_assignment = Some(load_assignment(&name, &dns.hostname, port));
        }
        Some(ServiceDiscovery::AwsCloudMap(cloud_map)) => {
            result.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Eds as i32,
            ));
            result.eds_cluster_config = Some(eds_config(&name));
            eds = Some(registry_assignment(name, cloud_map, registry, port));
        }
        None => {
            result.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Static as i32,
            ));
        }
    }
    (result, eds)
}

/// The cluster for traffic to destinations outside the mesh when the egress filter is
/// ALLOW_ALL: the connection's original destination.
pub fn passthrough(name: String) -> cluster::Cluster {
    cluster::Cluster {
        name,
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    }
}

fn lookup_family(preference: Option<IpPreference>) -> cluster::cluster::DnsLookupFamily {
    use cluster::cluster::DnsLookupFamily as Family;
    match preference {
        Some(IpPreference::Ipv4Only) => Family::V4Only,
        Some(IpPreference::Ipv6Only) => Family::V6Only,
        Some(IpPreference::Ipv4Preferred) => Family::V4Preferred,
        // IPv6 first, IPv4 if there is no IPv6 address: Envoy's AUTO.
        Some(IpPreference::Ipv6Preferred) => Family::Auto,
        // App Mesh resolved IPv4 only unless told otherwise.
        None => Family::V4Only,
    }
}

fn load_assignment(cluster_name: &str, host: &str, port: i32) -> endpoint::ClusterLoadAssignment {
    assignment(
        cluster_name.to_owned(),
        vec![lb_endpoint(host, port as u32, String::new())],
    )
}

/// The registry's instances of the node's Cloud Map service, filtered by its attributes:
/// each at the address its IP preference picks, on its AWS_INSTANCE_PORT or the listener port.
fn registry_assignment(
    cluster_name: String,
    cloud_map: &AwsCloudMapServiceDiscovery,
    registry: &Registry,
    listener_port: i32,
) -> endpoint::ClusterLoadAssignment {
    let filter: registry::Attributes = cloud_map
        .attributes
        .iter()
        .flatten()
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect();
    let lb_endpoints = registry
        .discover(&cloud_map.namespace_name, &cloud_map.service_name, &filter)
        .into_iter()
        .filter_map(|instance| {
            let (v4, v6) = (
                instance.attributes.get(registry::IPV4),
                instance.attributes.get(registry::IPV6),
            );
            let address = match cloud_map.ip_preference {
                Some(IpPreference::Ipv6Only) => v6,
                Some(IpPreference::Ipv6Preferred) => v6.or(v4),
                Some(IpPreference::Ipv4Preferred) => v4.or(v6),
                Some(IpPreference::Ipv4Only) | None => v4,
            }?;
            let port = instance
                .attributes
                .get(registry::PORT)
                .and_then(|p| p.parse().ok())
                .unwrap_or(listener_port as u32);
            Some(lb_endpoint(address, port, instance.instance_id))
        })
        .collect();
    assignment(cluster_name, lb_endpoints)
}

/// The EDS source of a cluster whose endpoints the control plane sends.
fn eds_config(cluster_name: &str) -> cluster::cluster::EdsClusterConfig {
    cluster::cluster::EdsClusterConfig {
        eds_config: Some(ads()),
        service_name: cluster_name.to_owned(),
    }
}

/// One endpoint at `address:port`, named `hostname` (the registry's instance id; empty for
/// none).
fn lb_endpoint(address: &str, port: u32, hostname: String) -> endpoint::LbEndpoint {
    endpoint::LbEndpoint {
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(super::values::socket_address(address, port)),
                hostname,
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The EDS assignment of `cluster_name`: `lb_endpoints` in one locality.
fn assignment(
    cluster_name: String,
    lb_endpoints: Vec<endpoint::LbEndpoint>,
) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name,
        endpoints: vec![endpoint::LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection(policy: &OutlierDetection) -> cluster::OutlierDetection {
    cluster::OutlierDetection {
        consecutive_5xx: u32_value(policy.max_server_errors),
        interval: duration(&policy.interval),
        base_ejection_time: duration(&policy.base_ejection_duration),
        max_ejection_percent: u32_value(i64::from(policy.max_ejection_percent)),
        enforcing_consecutive_5xx: u32_value(100),
        ..Default::default()
    }
}

pub(super) fn circuit_breakers(pool: &VirtualNodeConnectionPool) -> cluster::CircuitBreakers {
    let thresholds = match pool {
        VirtualNodeConnectionPool::Http(http) => Thresholds {
            max_connections: u32_value(i64::from(http.max_connections)),
            max_pending_requests: http
                .max_pending_requests
                .and_then(|n| u32_value(i64::from(n))),
            ..Default::default()
        },
        VirtualNodeConnectionPool::Http2(http2) => Thresholds {
            max_requests: u32_value(i64::from(http2.max_requests)),
            ..Default::default()
        },
        VirtualNodeConnectionPool::Grpc(grpc) => Thresholds {
            max_requests: u32_value(i64::from(grpc.max_requests)),
            ..Default::default()
        },
        VirtualNodeConnectionPool::Tcp(tcp) => Thresholds {
            max_connections: u32_value(i64::from(tcp.max_connections)),
            ..Default::default()
        },
    };
    cluster::CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    }
}

pub(super) fn health_check(policy: &HealthCheckPolicy) -> core::HealthCheck {
    let checker = match policy.protocol {
        PortProtocol::Http | PortProtocol::Http2 => {
            health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                path: policy.path.clone().unwrap_or_else(|| "/".into()),
                codec_client_type: if policy.protocol == PortProtocol::Http2 {
                    envoy_types::pb::envoy::r#type::v3::CodecClientType::Http2 as i32
                } else {
                    envoy_types::pb::envoy::r#type::v3::CodecClientType::Http1 as i32
                },
                ..Default::default()
            })
        }
        PortProtocol::Grpc => health_check::HealthChecker::GrpcHealthCheck(Default::default()),
        PortProtocol::Tcp => health_check::HealthChecker::TcpHealthCheck(Default::default()),
    };
    core::HealthCheck {
        timeout: Some(millis(policy.timeout_millis)),
        interval: Some(millis(policy.interval_millis)),
        healthy_threshold: u32_value(i64::from(policy.healthy_threshold)),
        unhealthy_threshold: u32_value(i64::from(policy.unhealthy_threshold)),
        alt_port: policy.port.and_then(|p| u32_value(i64::from(p))),
        health_checker: Some(checker),
        ..Default::default()
    }
}

/// HTTP/2 and gRPC listeners take HTTP/2 from their callers.
pub(super) fn upstream_protocol(protocol: PortProtocol) -> HashMap<String, Any> {
    if !matches!(protocol, PortProtocol::Http2 | PortProtocol::Grpc) {
        return HashMap::new();
    }
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            },
        )),
        ..Default::default()
    };
    HashMap::from([(HTTP_PROTOCOL_OPTIONS.to_owned(), pack_any(options))])
}
