//! The agent's own process at scrape time: memory, CPU, descriptors, and its build.
use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
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
fn encode_process(encoder: &mut DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
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
    {
        let heap = crate::heap::now();
        let mut family = encoder.encode_descriptor(
            "mesh_agent_heap_bytes",
            "The agent's heap: in use, or resident in the allocator beyond that (its bookkeeping and freed pages not yet given back)",
            None,
            MetricType::Gauge,
        )?;
        for (state, bytes) in [("in_use", heap.in_use), ("kept", heap.kept)] {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            ConstGauge::new(bytes).encode(family.encode_family(&[("state", state)])?)?;
        }
    }
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
