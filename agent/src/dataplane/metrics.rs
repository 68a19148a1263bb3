//! What the data plane shows at scrape time: each cluster's endpoints by state, and the xDS
//! session it is fed by (connected, accepted versions, last update, NACKs).
use std::{
    fmt,
    sync::{Arc, Mutex},
    time::UNIX_EPOCH,
};

use mesh_xds::client::XdsState;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use tokio::sync::watch;

use super::MeshState;

/// Endpoints per cluster and state, read from the data plane at scrape time.
pub struct EndpointCollector(pub MeshState);

impl fmt::Debug for EndpointCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointCollector")
    }
}

impl Collector for EndpointCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        // A poisoned data plane fails the scrape rather than report no endpoints.
        let plane = self.0.current().map_err(|_| fmt::Error)?;
        let mut family = encoder.encode_descriptor(
            "mesh_upstream_endpoints",
            "Endpoints of each cluster: available (healthy, not ejected) or unavailable",
            None,
            MetricType::Gauge,
        )?;
        let mut clusters: Vec<_> = plane.clusters.iter().collect();
        clusters.sort_by_key(|(name, _)| name.as_str());
        for (name, upstream) in clusters {
            // A poisoned endpoint list fails the scrape rather than report no endpoints.
            let (available, total) = upstream.health().map_err(|_| fmt::Error)?;
            for (state, count) in [("available", available), ("unavailable", total - available)] {
                let labels = [("cluster", name.as_str()), ("state", state)];
                ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Where the xDS state is, once the client runs (set after the metrics exist).
pub type XdsWatch = Arc<Mutex<Option<watch::Receiver<Arc<XdsState>>>>>;

/// A thread panicked holding the [`XdsWatch`].
#[derive(Debug, thiserror::Error)]
#[error("the xDS watch lock is poisoned (a thread panicked holding it)")]
pub struct XdsWatchPoisoned;

pub struct XdsCollector(pub XdsWatch);

impl fmt::Debug for XdsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XdsCollector")
    }
}

/// The short name of a resource type URL (`Cluster`, `Listener`, ...).
fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl Collector for XdsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        // A poisoned watch fails the scrape rather than showing a disconnected session.
        let state = self.0.lock().map_err(|_| fmt::Error)?;
        let state = state
            .as_ref()
            .map(|w| Arc::clone(&w.borrow()))
            .unwrap_or_default();
        let connected = ConstGauge::new(i64::from(state.connected));
        connected.encode(encoder.encode_descriptor(
            "mesh_agent_xds_connected",
            "1 while the ADS stream to the control plane is open",
            None,
            MetricType::Gauge,
        )?)?;
        let mut versions = encoder.encode_descriptor(
            "mesh_agent_xds_config_info",
            "The accepted configuration version per resource type (value 1)",
            None,
            MetricType::Gauge,
        )?;
        for (type_url, version) in &state.versions {
            let labels = [("type", short(type_url)), ("version", version.as_str())];
            ConstGauge::new(1).encode(versions.encode_family(&labels)?)?;
        }
        let mut nacks = encoder.encode_descriptor(
            "mesh_agent_xds_nacks",
            "xDS responses rejected (NACKed), by resource type",
            None,
            MetricType::Counter,
        )?;
        for (type_url, count) in &state.nacks {
            let labels = [("type", short(type_url))];
            ConstCounter::new(*count).encode(nacks.encode_family(&labels)?)?;
        }
        let updated = state
            .last_update
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        ConstGauge::new(updated).encode(encoder.encode_descriptor(
            "mesh_agent_xds_last_update_timestamp_seconds",
            "When an xDS response was last accepted (Unix time; 0 before the first)",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
