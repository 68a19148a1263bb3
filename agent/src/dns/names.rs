//! Which names are mesh names for a pod, and their VIPs: the virtual services its virtual
//! node may reach (its outbound listener's HTTP virtual hosts, by their exact domains, and
//! the services of its TCP ports, by the filter chains' names), read
//! from the current data plane. The names of each virtual node are worked out once per data
//! plane; a new plane drops them all, so a removed service stops resolving with the plane that
//! removes it, and its VIP is freed.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use mesh_xds::plan::{OutboundPlan, PortPlan};

use super::vip::{RangeFull, Vips};
use crate::dataplane::{DataPlane, MeshState, workloads::Workloads};

/// What a name is to the pod asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A virtual service the pod may reach, at this VIP.
    Mesh(Ipv4Addr),
    /// Not a mesh name (for this pod): the pod's resolver answers it.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    RangeFull(#[from] RangeFull),
    #[error("the mesh state cannot be read (a lock is poisoned)")]
    Poisoned,
}

pub struct MeshNames {
    state: MeshState,
    workloads: Workloads,
    cache: Mutex<Cache>,
}

struct Cache {
    /// The plane the names below were read from.
    plane: Option<Arc<DataPlane>>,
    /// Mesh names by virtual node; bounded by the plane's virtual nodes.
    by_node: HashMap<String, Arc<HashSet<String>>>,
    vips: Vips,
}

impl MeshNames {
    pub fn new(state: MeshState, workloads: Workloads, vips: Vips) -> Self {
        Self {
            state,
            workloads,
            cache: Mutex::new(Cache {
                plane: None,
                by_node: HashMap::new(),
                vips,
            }),
        }
    }

    /// What `name` (a query name, any case, with or without the final dot) is to workload
    /// `workload_id`.
    pub fn lookup(&self, workload_id: u32, name: &str) -> Result<Lookup, LookupError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let plane = self.state.current().map_err(|_| LookupError::Poisoned)?;
        let workload = self
            .workloads
            .get(workload_id)
            .map_err(|_| LookupError::Poisoned)?;
        let Some(node) = workload.and_then(|w| plane.virtual_node_of(&w)) else {
            return Ok(Lookup::Other);
        };
        let mut cache = self.cache.lock().map_err(|_| LookupError::Poisoned)?;
        cache.follow(&plane);
        let names = match cache.by_node.get(&node) {
            Some(names) => Arc::clone(names),
            None => {
                let names = Arc::new(
                    plane
                        .outbound
                        .get(&node)
                        .map(|plan| names_of(&plane, plan))
                        .unwrap_or_default(),
                );
                cache.by_node.insert(node, Arc::clone(&names));
                names
            }
        };
        if !names.contains(&name) {
            return Ok(Lookup::Other);
        }
        Ok(Lookup::Mesh(cache.vips.get_or_assign(&name)?))
    }
}

impl Cache {
    /// Starts over when the plane changed: names are read again, VIPs of names no virtual
    /// node reaches any more are freed.
    fn follow(&mut self, plane: &Arc<DataPlane>) {
        if self.plane.as_ref().is_some_and(|p| Arc::ptr_eq(p, plane)) {
            return;
        }
        let live: HashSet<String> = plane
            .outbound
            .values()
            .flat_map(|plan| names_of(plane, plan))
            .collect();
        self.vips.retain(|name| live.contains(name));
        self.by_node.clear();
        self.plane = Some(Arc::clone(plane));
    }
}

/// The names of a virtual node's backends: the exact host names of its HTTP ports' virtual
/// hosts, and the services of its TCP ports.
fn names_of(plane: &DataPlane, plan: &OutboundPlan) -> HashSet<String> {
    let mut names = HashSet::new();
    for port in plan.ports.values() {
        match port {
            PortPlan::Http(http) => {
                let hosts = plane.routes.get(&http.routes).into_iter();
                let exact = hosts.flat_map(|table| &table.virtual_hosts);
                names.extend(exact.flat_map(|host| host.exact_names()).map(str::to_owned));
            }
            PortPlan::Tcp { service, .. } => {
                names.extend(service.as_deref().map(str::to_ascii_lowercase));
            }
        }
    }
    names
}
