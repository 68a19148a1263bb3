//! Which pod network namespaces are enrolled: the agent's table and the eBPF map it mirrors.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use agent_common::Enrollment;
use aya::maps::{HashMap, MapData, MapError};
use tracing::{info, warn};

use super::{
    inbound::{Captured, InboundHooks},
    netns,
};
use crate::{
    config::NetnsRef,
    dataplane::workloads::{Workload, Workloads},
};

#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    #[error("cannot enroll network namespace {spec} ({path}): {source}")]
    Namespace {
        spec: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network namespace {spec} is the same namespace as the already enrolled {existing}")]
    Duplicate { spec: String, existing: String },
    #[error("network namespace {0} is not enrolled")]
    NotEnrolled(String),
    #[error("eBPF map ENROLLED_NETNS: {0}")]
    Map(#[from] MapError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledNetns {
    pub path: PathBuf,
    pub cookie: u64,
    pub workload_id: u32,
    /// The workload it is pinned to (`mesh/node`, `mesh/gateway/name`), if any.
    pub virtual_node: Option<String>,
}

pub struct Enrollments {
    map: HashMap<MapData, u64, Enrollment>,
    by_spec: BTreeMap<String, EnrolledNetns>,
    next_workload_id: u32,
    /// The number of enrolled namespaces, for the metrics endpoint.
    gauge: Arc<AtomicI64>,
    workloads: Workloads,
    /// Inbound capture of enrolled pods, when the proxy takes inbound traffic.
    inbound: Option<InboundHooks>,
    captured: BTreeMap<String, (u64, Captured)>,
    /// Enrolled by discovery (the mesh's endpoints), not by configuration: a reload keeps them.
    discovered: BTreeSet<String>,
    /// Enrolled from the control plane's list of the node's pods: a reload keeps them too.
    listed: BTreeSet<String>,
    /// Which pods' DNS queries the agent answers.
    dns: DnsCapturePolicy,
}

/// Which enrolled pods get DNS capture: all of them while it is on, except those opted out
/// (by the namespace as enrolled: a name under the netns directory, or a path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsCapturePolicy {
    pub enabled: bool,
    pub opt_out: BTreeSet<String>,
}

impl DnsCapturePolicy {
    fn flags(&self, spec: &str) -> u32 {
        if self.enabled && !self.opt_out.contains(spec) {
            Enrollment::CAPTURE_DNS
        } else {
            0
        }
    }
}

impl Enrollments {
    /// The table over `map`, which an earlier agent may have filled (it is pinned): new ids
    /// start above the ids in it.
    pub(super) fn new(
        map: HashMap<MapData, u64, Enrollment>,
        inbound: Option<InboundHooks>,
    ) -> Self {
        let highest = map
            .iter()
            .filter_map(Result::ok)
            .map(|(_, e)| e.workload_id)
            .max()
            .unwrap_or(0);
        Self {
            map,
            by_spec: BTreeMap::new(),
            next_workload_id: highest + 1,
            gauge: Arc::new(AtomicI64::new(0)),
            workloads: Workloads::default(),
            inbound,
            captured: BTreeMap::new(),
            discovered: BTreeSet::new(),
            listed: BTreeSet::new(),
            dns: DnsCapturePolicy::default(),
        }
    }

    /// Sets which pods get DNS capture; enrolled pods get it (or lose it) at their next
    /// enrollment, which [`Enrollments::sync`] redoes for every configured one.
    pub fn set_dns_capture(&mut self, policy: DnsCapturePolicy) {
        self.dns = policy;
    }

    /// The enrolled workloads by id, kept current, for the proxy.
    pub fn workloads(&self) -> Workloads {
        self.workloads.clone()
    }

    pub fn gauge(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.gauge)
    }

    fn update_gauge(&self) {
        self.gauge
            .store(self.by_spec.len() as i64, Ordering::Relaxed);
    }

    pub fn enroll(&mut self, ns: &NetnsRef) -> Result<EnrolledNetns, EnrollmentError> {
        let netns::NetnsInfo { cookie, addresses } =
            netns::inspect(&ns.path).map_err(|source| EnrollmentError::Namespace {
                spec: ns.spec.clone(),
                path: ns.path.clone(),
                source,
            })?;
        if let Some((existing, _)) = self
            .by_spec
            .iter()
            .find(|(spec, e)| e.cookie == cookie && **spec != ns.spec)
        {
            return Err(EnrollmentError::Duplicate {
                spec: ns.spec.clone(),
                existing: existing.clone(),
            });
        }
        let workload_id = match self.by_spec.get(&ns.spec) {
            Some(existing) => existing.workload_id,
            None => self.adopted_id(cookie).unwrap_or_else(|| {
                self.next_workload_id += 1;
                self.next_workload_id - 1
            }),
        };
        let flags = self.dns.flags(&ns.spec);
        self.map
            .insert(cookie, Enrollment { workload_id, flags }, 0)?;
        // A namespace re-created under the same name has a new cookie: drop the old one.
        if let Some(old) = self.by_spec.get(&ns.spec)
            && old.cookie != cookie
        {
            let _ = self.map.remove(&old.cookie);
        }
        let dns = flags & Enrollment::CAPTURE_DNS != 0;
        info!(netns = %ns.spec, path = %ns.path.display(), cookie, workload_id, ?addresses, virtual_node = ?ns.virtual_node, dns, "enrolled");
        self.capture_inbound(ns, cookie, workload_id, &addresses);
        self.workloads.insert(
            workload_id,
            Workload {
                netns: ns.spec.clone(),
                virtual_node: ns.virtual_node.clone(),
                addresses,
            },
        );
        let entry = EnrolledNetns {
            path: ns.path.clone(),
            cookie,
            workload_id,
            virtual_node: ns.virtual_node.clone(),
        };
        self.by_spec.insert(ns.spec.clone(), entry.clone());
        self.update_gauge();
        Ok(entry)
    }

    /// The id an earlier agent enrolled this namespace with (the pinned map holds it), unless
    /// this agent gave it to another one: connections that agent redirected carry it in
    /// their original-destination records, and this one may accept them.
    fn adopted_id(&self, cookie: u64) -> Option<u32> {
        let id = self.map.get(&cookie, 0).ok()?.workload_id;
        let taken = self.by_spec.values().any(|e| e.workload_id == id);
        (!taken).then_some(id)
    }

    /// Enrolls a namespace discovery found to be in the mesh.
    pub fn enroll_discovered(&mut self, ns: &NetnsRef) -> Result<EnrolledNetns, EnrollmentError> {
        let entry = self.enroll(ns)?;
        self.discovered.insert(ns.spec.clone());
        Ok(entry)
    }

    /// Enrolls a pod of the control plane's list of the node's pods.
    pub fn enroll_listed(&mut self, ns: &NetnsRef) -> Result<EnrolledNetns, EnrollmentError> {
        let entry = self.enroll(ns)?;
        self.listed.insert(ns.spec.clone());
        Ok(entry)
    }

    pub fn is_enrolled(&self, spec: &str) -> bool {
        self.by_spec.contains_key(spec)
    }

    /// Namespaces enrolled by discovery.
    pub fn discovered(&self) -> Vec<String> {
        self.discovered.iter().cloned().collect()
    }

    /// Pods enrolled from the control plane's list.
    pub fn listed(&self) -> Vec<String> {
        self.listed.iter().cloned().collect()
    }

    pub fn unenroll(&mut self, spec: &str) -> Result<EnrolledNetns, EnrollmentError> {
        self.discovered.remove(spec);
        self.listed.remove(spec);
        let entry = self
            .by_spec
            .remove(spec)
            .ok_or_else(|| EnrollmentError::NotEnrolled(spec.to_owned()))?;
        match self.map.remove(&entry.cookie) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => {
                self.by_spec.insert(spec.to_owned(), entry);
                return Err(error.into());
            }
        }
        self.workloads.remove(entry.workload_id);
        if let (Some(hooks), Some((_, captured))) = (&mut self.inbound, self.captured.remove(spec))
        {
            hooks.release(captured);
        }
        self.update_gauge();
        info!(netns = spec, cookie = entry.cookie, "unenrolled");
        Ok(entry)
    }

    /// Makes the enrolled set equal to `desired`; returns one error per namespace that could
    /// not be enrolled (the others are applied regardless).
    pub fn sync(&mut self, desired: &[NetnsRef]) -> Vec<EnrollmentError> {
        let mut errors = Vec::new();
        let stale: Vec<String> = self
            .by_spec
            .keys()
            .filter(|spec| !self.discovered.contains(*spec) && !self.listed.contains(*spec))
            .filter(|spec| !desired.iter().any(|ns| &ns.spec == *spec))
            .cloned()
            .collect();
        for spec in stale {
            if let Err(error) = self.unenroll(&spec) {
                errors.push(error);
            }
        }
        for ns in desired {
            if let Err(error) = self.enroll(ns) {
                errors.push(error);
            }
        }
        errors
    }

    /// Captures the pod's inbound connections (once per namespace instance). A failure is
    /// logged: the pod stays enrolled for its outbound traffic.
    fn capture_inbound(
        &mut self,
        ns: &NetnsRef,
        cookie: u64,
        workload_id: u32,
        addresses: &[Ipv4Addr],
    ) {
        let Some(hooks) = &mut self.inbound else {
            return;
        };
        if self
            .captured
            .get(&ns.spec)
            .is_some_and(|(c, _)| *c == cookie)
        {
            return;
        }
        if let Some((_, stale)) = self.captured.remove(&ns.spec) {
            hooks.release(stale);
        }
        match hooks.capture(ns, cookie, workload_id, addresses) {
            Ok(captured) => {
                self.captured.insert(ns.spec.clone(), (cookie, captured));
            }
            Err(reason) => {
                warn!(netns = %ns.spec, %reason, "inbound traffic of this pod is not captured")
            }
        }
    }

    pub fn list(&self) -> impl Iterator<Item = (&str, &EnrolledNetns)> {
        self.by_spec.iter().map(|(spec, e)| (spec.as_str(), e))
    }
}
