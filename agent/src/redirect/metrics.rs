//! The redirect's in-kernel counters at scrape time: node-wide connect outcomes, attached
//! programs and the enrollment count; and per-pod connect counters.
//!
//! Per-pod connect counters: the redirect program counts each enrolled pod's connects by
//! destination address, port and outcome in an LRU per-CPU map; at scrape time the agent
//! names the pod and the destination's virtual node and exports the sums. The kernel map may
//! evict an entry, so the agent keeps what it has seen: a counter here never goes backwards,
//! and a pod's series go when the pod leaves the node.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

use agent_common::{Counter, PodConnectKey};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::RedirectCounters;
use crate::dataplane::{MeshState, workloads::Workloads};

/// Values read at scrape time: the eBPF counters and the enrollment count.
#[derive(Debug)]
pub struct RedirectCollector {
    pub enrolled: Arc<AtomicI64>,
    /// None where no programs are loaded (in-process tests).
    pub counters: Option<Arc<RedirectCounters>>,
}

fn counter_label(counter: Counter) -> &'static str {
    match counter {
        Counter::Redirected => "redirected",
        Counter::Excluded => "excluded",
        Counter::NotEnrolled => "not_enrolled",
        Counter::RecordFailed => "record_failed",
        Counter::InboundNoListener => "no_listener",
        Counter::Ipv6Refused => "refused_ipv6",
        Counter::UdpRefused => "refused_udp",
        Counter::UdpPassed => "passed_udp",
        Counter::InboundIpv6 => "ipv6",
        Counter::ProxyRefused => "refused_proxy",
    }
}

/// Whether a counter counts inbound connections refused by `inbound_lookup` (exported apart
/// from the connects of pods).
fn is_inbound_refusal(counter: Counter) -> bool {
    matches!(counter, Counter::InboundNoListener | Counter::InboundIpv6)
}

impl Collector for RedirectCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let enrolled = ConstGauge::new(self.enrolled.load(Ordering::Relaxed));
        enrolled.encode(encoder.encode_descriptor(
            "mesh_agent_enrolled_netns",
            "Pod network namespaces whose outbound TCP is redirected",
            None,
            enrolled.metric_type(),
        )?)?;
        let Some(counters) = &self.counters else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "mesh_agent_redirect_connects",
            "Connects (TCP; UDP connects and datagrams) seen by the cgroup programs in the node cgroup, by outcome",
            None,
            MetricType::Counter,
        )?;
        let (inbound, connects): (Vec<_>, Vec<_>) = counters
            .read()
            .into_iter()
            .partition(|(counter, _)| is_inbound_refusal(*counter));
        for (counter, value) in connects {
            let labels = [("result", counter_label(counter))];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "mesh_agent_inbound_refused",
            "Connections to captured pod ports refused by the inbound lookup program, by reason",
            None,
            MetricType::Counter,
        )?;
        for (counter, value) in inbound {
            let labels = [("reason", counter_label(counter))];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "mesh_agent_attached_programs",
            "eBPF programs attached, by program (inbound_lookup: once per captured pod)",
            None,
            MetricType::Gauge,
        )?;
        for (program, attached) in counters.attached_programs() {
            ConstGauge::new(attached).encode(family.encode_family(&[("program", program)])?)?;
        }
        Ok(())
    }
}

/// One exported series: the pod, where it connected, what happened.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    pod: String,
    virtual_node: String,
    destination_virtual_node: String,
    port: u16,
    result: &'static str,
}

#[derive(Default)]
struct Seen {
    /// Each kernel entry's value at the last scrape.
    last: HashMap<PodConnectKey, u64>,
    totals: BTreeMap<Series, u64>,
}

pub struct PodConnectCollector {
    counters: Arc<RedirectCounters>,
    workloads: Workloads,
    mesh: MeshState,
    seen: Mutex<Seen>,
}

impl PodConnectCollector {
    pub fn new(counters: Arc<RedirectCounters>, workloads: Workloads, mesh: MeshState) -> Self {
        Self {
            counters,
            workloads,
            mesh,
            seen: Mutex::default(),
        }
    }

    /// Folds the kernel's counts into the totals and returns them; `None` (the scrape fails)
    /// once a scrape panicked holding the totals (they can no longer be trusted) or while
    /// the workload table or the data plane is poisoned.
    fn collect(&self) -> Option<Vec<(Series, u64)>> {
        let mut seen = self.seen.lock().ok()?;
        let kernel = self.counters.read_pods();
        let plane = self.mesh.current().ok()?;
        let workloads: HashMap<u32, _> = self.workloads.all().ok()?.into_iter().collect();
        let pod_nodes: HashMap<u32, String> = workloads
            .iter()
            .map(|(id, workload)| {
                let node = plane.virtual_node_of(workload);
                (*id, node.unwrap_or_else(|| "unknown".into()))
            })
            .collect();
        let mut last = HashMap::with_capacity(kernel.len());
        for (key, value) in kernel {
            let previous = seen.last.get(&key).copied().unwrap_or(0);
            // Smaller than before: evicted and counted again from zero since.
            let delta = if value >= previous {
                value - previous
            } else {
                value
            };
            last.insert(key, value);
            let (Some(workload), Some(result)) =
                (workloads.get(&key.workload_id), result_label(key.result))
            else {
                continue;
            };
            let destination = Ipv4Addr::from(key.dst_ip4.to_ne_bytes());
            let series = Series {
                pod: workload.netns.clone(),
                virtual_node: pod_nodes.get(&key.workload_id).cloned().unwrap_or_default(),
                destination_virtual_node: plane
                    .virtual_node_at(&[destination])
                    .unwrap_or_else(|| "unknown".into()),
                port: key.dst_port,
                result,
            };
            *seen.totals.entry(series).or_default() += delta;
        }
        seen.last = last;
        let enrolled: HashSet<&str> = workloads.values().map(|w| w.netns.as_str()).collect();
        seen.totals
            .retain(|series, _| enrolled.contains(series.pod.as_str()));
        Some(
            seen.totals
                .iter()
                .map(|(series, total)| (series.clone(), *total))
                .collect(),
        )
    }
}

fn result_label(result: u8) -> Option<&'static str> {
    Counter::ALL
        .into_iter()
        .find(|counter| *counter as u32 == u32::from(result))
        .filter(|counter| !is_inbound_refusal(*counter) && *counter != Counter::NotEnrolled)
        .map(counter_label)
}

impl fmt::Debug for PodConnectCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PodConnectCollector")
    }
}

impl Collector for PodConnectCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "mesh_agent_pod_connects",
            "TCP connects, and UDP connects and datagrams, of each enrolled pod, by the destination's virtual node, port and outcome (in-kernel)",
            None,
            MetricType::Counter,
        )?;
        for (series, total) in self.collect().ok_or(fmt::Error)? {
            let port = series.port.to_string();
            let labels = [
                ("pod", series.pod.as_str()),
                ("virtual_node", series.virtual_node.as_str()),
                (
                    "destination_virtual_node",
                    series.destination_virtual_node.as_str(),
                ),
                ("port", port.as_str()),
                ("result", series.result),
            ];
            ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
