//! Copies of a cluster for particular callers: what a copy changes.
use envoy_types::pb::envoy::config::{
    cluster::v3::{CircuitBreakers, Cluster},
    core::v3::{HealthCheck, TransportSocket},
};

/// A copy of a cluster for some callers: a TLS-originating one (a backend's client policy),
/// or a gateway's, with the gateway listener's connection pool and health check.
#[derive(Clone, Default)]
pub(super) struct ClusterVariant {
    pub(super) transport_socket: Option<TransportSocket>,
    pub(super) circuit_breakers: Option<CircuitBreakers>,
    pub(super) health_checks: Vec<HealthCheck>,
}

impl ClusterVariant {
    /// The copy of `cluster` named `name`, with this variant's changes.
    pub(super) fn apply(self, name: String, cluster: &Cluster) -> Cluster {
        let base = cluster.clone();
        Cluster {
            name,
            transport_socket: self.transport_socket.or(base.transport_socket),
            circuit_breakers: self.circuit_breakers.or(base.circuit_breakers),
            health_checks: if self.health_checks.is_empty() {
                base.health_checks
            } else {
                self.health_checks
            },
            ..base
        }
    }
}
