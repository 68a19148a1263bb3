//! The agent's own health at scrape time: its xDS session (connected, configuration versions,
//! last update, NACKs), its process (memory, CPU, descriptors) and its build.
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

/// Where the xDS state is, once the client runs (set after the metrics exist).
pub type XdsWatch = Arc<Mutex<Option<watch::Receiver<Arc<XdsState>>>>>;

pub struct SelfCollector {
    pub xds: XdsWatch,
}

impl fmt::Debug for SelfCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SelfCollector")
    }
}

/// The short name of a resource type URL (`Cluster`, `Listener`, ...).
fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl Collector for SelfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let state = self
            .xds
            .lock()
            .ok()
            .and_then(|w| w.as_ref().map(|w| Arc::clone(&w.borrow())));
        let state = state.unwrap_or_default();
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
        encode_process(&mut encoder)?;
        let mut build = encoder.encode_descriptor(
            "mesh_agent_build_info",
            "The agent's version (value 1)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1)
            .encode(build.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

/// Memory, CPU and open descriptors of this process, from /proc/self.
fn encode_process(encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    ConstGauge::new(rss_kib * 1024).encode(encoder.encode_descriptor(
        "mesh_agent_process_resident_memory_bytes",
        "Resident memory of the agent",
        None,
        MetricType::Gauge,
    )?)?;
    ConstCounter::new(cpu_seconds()).encode(encoder.encode_descriptor(
        "mesh_agent_process_cpu_seconds",
        "User and system CPU time the agent used",
        None,
        MetricType::Counter,
    )?)?;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    ConstGauge::new(fds).encode(encoder.encode_descriptor(
        "mesh_agent_process_open_fds",
        "Open file descriptors of the agent (each relayed connection holds six)",
        None,
        MetricType::Gauge,
    )?)?;
    Ok(())
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // utime and stime are the 12th and 13th fields after the parenthesised command name.
    let ticks: f64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
        .into_iter()
        .flatten()
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    if hz > 0.0 { ticks / hz } else { 0.0 }
}
