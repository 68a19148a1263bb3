//! Clusters as the node proxy applies them: how endpoints are found, how they are balanced,
//! limited, health-checked and ejected, and which protocol speaks to them.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::{
            Cluster,
            cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbPolicy},
        },
        core::v3::{
            address, envoy_internal_address, health_check::HealthChecker,
            socket_address::PortSpecifier,
        },
        endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier},
    },
    extensions::upstreams::http::v3::{
        HttpProtocolOptions,
        http_protocol_options::{UpstreamProtocolOptions, explicit_http_config::ProtocolConfig},
    },
    r#type::v3::CodecClientType,
};
use prost::Message;

use super::{PlanError, duration, tls::ClientTlsPlan};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Envoy's defaults, which App Mesh kept.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
const DEFAULT_LIMIT: u32 = 1024;
const DEFAULT_MAX_RETRIES: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPlan {
    pub name: String,
    /// The virtual node (`mesh/node`) the cluster reaches, from its metadata; for metrics
    /// and for knowing a workload by its address. `None` for clusters that name none.
    pub virtual_node: Option<String>,
    pub discovery: Discovery,
    pub balancer: Balancer,
    pub connect_timeout: Duration,
    /// Upstream speaks HTTP/2 (prior knowledge); else HTTP/1.1.
    pub http2: bool,
    /// TLS toward its endpoints (an UpstreamTlsContext).
    pub upstream_tls: Option<Arc<ClientTlsPlan>>,
    pub outlier: Option<OutlierPlan>,
    pub limits: Limits,
    pub health_check: Option<HealthCheckPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    Static(Vec<SocketAddr>),
    /// Names resolved by the agent, re-resolved every `refresh`. `every_address`: each
    /// address is an endpoint (STRICT_DNS); else the first one only (LOGICAL_DNS).
    Dns {
        hosts: Vec<(String, u16)>,
        every_address: bool,
        family: AddressFamily,
        refresh: Duration,
    },
    /// Endpoints from the ClusterLoadAssignment named here.
    Eds(String),
    /// The connection's original destination.
    OriginalDestination,
    /// An internal listener of this proxy (a virtual gateway's second hop), by name.
    InternalListener(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    V4Only,
    V6Only,
    V4Preferred,
    /// IPv6 when there is any, else IPv4 (Envoy's AUTO).
    V6Preferred,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    /// Power of two choices by outstanding requests (Envoy's LEAST_REQUEST).
    LeastRequest,
    RoundRobin,
    Random,
}

/// Envoy outlier detection by consecutive 5xx (what App Mesh configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPlan {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Circuit breakers of the default priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckPlan {
    pub kind: HealthCheckKind,
    pub timeout: Duration,
    pub interval: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Check this port instead of the endpoint's.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    Http { path: String, http2: bool },
    Grpc,
    Tcp,
}

impl ClusterPlan {
    pub fn from_proto(cluster: &Cluster) -> Result<Self, PlanError> {
        let discovery_type = match &cluster.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
                .map_err(|_| PlanError::new("type", format!("unknown discovery type {t}")))?,
            Some(ClusterDiscoveryType::ClusterType(custom)) => {
                return Err(PlanError::new(
                    "cluster_type",
                    format!("custom cluster type {} is not supported", custom.name),
                ));
            }
            None => DiscoveryType::Static,
        };
        #[allow(deprecated)] // dns_refresh_rate moved into the DNS cluster extension; still sent
        let discovery = match discovery_type {
            DiscoveryType::Static => match internal_listener(cluster.load_assignment.as_ref()) {
                Some(listener) => Discovery::InternalListener(listener),
                None => Discovery::Static(ip_endpoints(cluster.load_assignment.as_ref())?),
            },
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns => Discovery::Dns {
                hosts: dns_hosts(cluster.load_assignment.as_ref())?,
                every_address: discovery_type == DiscoveryType::StrictDns,
                family: family(cluster.dns_lookup_family)?,
                refresh: cluster
                    .dns_refresh_rate
                    .as_ref()
                    .map(duration)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_DNS_REFRESH),
            },
            DiscoveryType::Eds => Discovery::Eds(
                cluster
                    .eds_cluster_config
                    .as_ref()
                    .map(|c| c.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| cluster.name.clone()),
            ),
            DiscoveryType::OriginalDst => Discovery::OriginalDestination,
        };
        let balancer = match LbPolicy::try_from(cluster.lb_policy) {
            Ok(LbPolicy::LeastRequest | LbPolicy::ClusterProvided) => Balancer::LeastRequest,
            Ok(LbPolicy::RoundRobin) => Balancer::RoundRobin,
            Ok(LbPolicy::Random) => Balancer::Random,
            _ => {
                return Err(PlanError::new(
                    "lb_policy",
                    format!(
                        "load-balancing policy {} is not supported",
                        cluster.lb_policy
                    ),
                ));
            }
        };
        Ok(Self {
            name: cluster.name.clone(),
            virtual_node: crate::metadata::virtual_node(cluster.metadata.as_ref())
                .map(str::to_owned),
            discovery,
            balancer,
            connect_timeout: cluster
                .connect_timeout
                .as_ref()
                .map(duration)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            http2: http2(cluster)?,
            upstream_tls: ClientTlsPlan::from_socket(cluster.transport_socket.as_ref())?
                .map(Arc::new),
            outlier: cluster.outlier_detection.as_ref().map(|o| OutlierPlan {
                consecutive_5xx: o.consecutive_5xx.map_or(5, |v| v.value),
                interval: o
                    .interval
                    .as_ref()
                    .map(duration)
                    .unwrap_or(Duration::from_secs(10)),
                base_ejection: o
                    .base_ejection_time
                    .as_ref()
                    .map(duration)
                    .unwrap_or(Duration::from_secs(30)),
                max_ejection_percent: o.max_ejection_percent.map_or(10, |v| v.value.min(100)),
            }),
            limits: limits(cluster),
            health_check: cluster
                .health_checks
                .first()
                .map(health_check)
                .transpose()?,
        })
    }
}

fn family(value: i32) -> Result<AddressFamily, PlanError> {
    Ok(match DnsLookupFamily::try_from(value) {
        Ok(DnsLookupFamily::V4Only) => AddressFamily::V4Only,
        Ok(DnsLookupFamily::V6Only) => AddressFamily::V6Only,
        Ok(DnsLookupFamily::V4Preferred) => AddressFamily::V4Preferred,
        Ok(DnsLookupFamily::Auto) => AddressFamily::V6Preferred,
        Ok(DnsLookupFamily::All) => AddressFamily::All,
        Err(_) => {
            return Err(PlanError::new(
                "dns_lookup_family",
                format!("unknown value {value}"),
            ));
        }
    })
}

/// The internal listener a cluster's first endpoint names, if it names one.
fn internal_listener(assignment: Option<&ClusterLoadAssignment>) -> Option<String> {
    let endpoint = assignment?.endpoints.first()?.lb_endpoints.first()?;
    let Some(HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier else {
        return None;
    };
    let address::Address::EnvoyInternalAddress(internal) =
        endpoint.address.as_ref()?.address.as_ref()?
    else {
        return None;
    };
    let envoy_internal_address::AddressNameSpecifier::ServerListenerName(name) =
        internal.address_name_specifier.as_ref()?;
    Some(name.clone())
}

/// `(address, port)` of every endpoint of an assignment, as written.
pub fn assignment_addresses(
    assignment: Option<&ClusterLoadAssignment>,
) -> Result<Vec<(String, u16)>, PlanError> {
    let mut out = Vec::new();
    for locality in assignment
        .map(|a| a.endpoints.as_slice())
        .unwrap_or_default()
    {
        for lb_endpoint in &locality.lb_endpoints {
            let Some(HostIdentifier::Endpoint(endpoint)) = &lb_endpoint.host_identifier else {
                return Err(PlanError::new(
                    "load_assignment",
                    "named endpoints are not supported",
                ));
            };
            let Some(address::Address::SocketAddress(socket)) =
                endpoint.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(PlanError::new(
                    "load_assignment",
                    "only socket addresses are supported",
                ));
            };
            let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
                return Err(PlanError::new(
                    "load_assignment",
                    format!("endpoint {} has no port value", socket.address),
                ));
            };
            let port = u16::try_from(port).map_err(|_| {
                PlanError::new(
                    "load_assignment",
                    format!("port {port} of {} is out of range", socket.address),
                )
            })?;
            out.push((socket.address.clone(), port));
        }
    }
    Ok(out)
}

/// Endpoints that must be IP addresses (STATIC clusters, EDS assignments).
pub fn ip_endpoints(
    assignment: Option<&ClusterLoadAssignment>,
) -> Result<Vec<SocketAddr>, PlanError> {
    assignment_addresses(assignment)?
        .into_iter()
        .map(|(host, port)| {
            host.parse()
                .map(|ip| SocketAddr::new(ip, port))
                .map_err(|_| {
                    PlanError::new("load_assignment", format!("{host} is not an IP address"))
                })
        })
        .collect()
}

fn dns_hosts(assignment: Option<&ClusterLoadAssignment>) -> Result<Vec<(String, u16)>, PlanError> {
    let hosts = assignment_addresses(assignment)?;
    if hosts.is_empty() {
        return Err(PlanError::new(
            "load_assignment",
            "a DNS cluster needs at least one host name",
        ));
    }
    Ok(hosts)
}

fn http2(cluster: &Cluster) -> Result<bool, PlanError> {
    #[allow(deprecated)] // the cluster-level field older control planes still send
    if cluster.http2_protocol_options.is_some() {
        return Ok(true);
    }
    let Some(any) = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    else {
        return Ok(false);
    };
    let options = HttpProtocolOptions::decode(any.value.as_slice()).map_err(|e| {
        PlanError::new(
            "typed_extension_protocol_options",
            format!("{HTTP_PROTOCOL_OPTIONS} does not decode: {e}"),
        )
    })?;
    Ok(match options.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
            matches!(
                explicit.protocol_config,
                Some(ProtocolConfig::Http2ProtocolOptions(_))
            )
        }
        Some(_) => {
            return Err(PlanError::new(
                "typed_extension_protocol_options",
                "only explicit HTTP/1.1 or HTTP/2 upstream protocols are supported",
            ));
        }
        None => false,
    })
}

fn limits(cluster: &Cluster) -> Limits {
    let thresholds = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|c| c.thresholds.iter().find(|t| t.priority == 0));
    let get = |pick: fn(
        &envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds,
    ) -> Option<u32>,
               default| { thresholds.and_then(pick).unwrap_or(default) };
    Limits {
        max_connections: get(|t| t.max_connections.map(|v| v.value), DEFAULT_LIMIT),
        max_pending_requests: get(|t| t.max_pending_requests.map(|v| v.value), DEFAULT_LIMIT),
        max_requests: get(|t| t.max_requests.map(|v| v.value), DEFAULT_LIMIT),
        max_retries: get(|t| t.max_retries.map(|v| v.value), DEFAULT_MAX_RETRIES),
    }
}

fn health_check(
    check: &envoy_types::pb::envoy::config::core::v3::HealthCheck,
) -> Result<HealthCheckPlan, PlanError> {
    let kind = match &check.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => HealthCheckKind::Http {
            path: http.path.clone(),
            http2: http.codec_client_type == CodecClientType::Http2 as i32,
        },
        Some(HealthChecker::GrpcHealthCheck(_)) => HealthCheckKind::Grpc,
        Some(HealthChecker::TcpHealthCheck(_)) => HealthCheckKind::Tcp,
        _ => {
            return Err(PlanError::new(
                "health_checks",
                "only HTTP, gRPC and TCP health checks are supported",
            ));
        }
    };
    let required = |d: Option<&envoy_types::pb::google::protobuf::Duration>, field: &str| {
        d.map(duration)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| PlanError::new("health_checks", format!("{field} is required")))
    };
    Ok(HealthCheckPlan {
        kind,
        timeout: required(check.timeout.as_ref(), "timeout")?,
        interval: required(check.interval.as_ref(), "interval")?,
        unhealthy_threshold: check.unhealthy_threshold.map_or(1, |v| v.value.max(1)),
        healthy_threshold: check.healthy_threshold.map_or(1, |v| v.value.max(1)),
        port: check
            .alt_port
            .map(|p| {
                u16::try_from(p.value)
                    .map_err(|_| PlanError::new("health_checks.alt_port", "out of range"))
            })
            .transpose()?,
    })
}
