//! Enrolled workloads as the proxy sees them: the eBPF redirect tags each connection with its
//! workload id; this table says which namespace that is, its addresses, and the virtual node
//! it was pinned to (if any).
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, RwLock, atomic::AtomicBool},
};

use crate::telemetry::lock_poisoned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The enrolled namespace, as configured.
    pub netns: String,
    /// Set by `NAME=mesh/node` enrollment; otherwise the mesh's endpoints decide.
    pub virtual_node: Option<String>,
    pub addresses: Vec<Ipv4Addr>,
}

/// Shared between enrollment (writes) and the proxy (reads once per connection).
#[derive(Debug, Clone, Default)]
pub struct Workloads(Arc<RwLock<HashMap<u32, Workload>>>);

/// The workload table's lock is poisoned (a thread panicked holding it): which workload a
/// connection comes from can no longer be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the workload table lock is poisoned (a thread panicked holding it)")]
pub struct WorkloadsPoisoned;

impl Workloads {
    /// Workload `id`; an error (said once) when the table is poisoned, and the caller
    /// refuses the connection rather than take it for no workload.
    pub fn get(&self, id: u32) -> Result<Option<Workload>, WorkloadsPoisoned> {
        let table = self.0.read().map_err(|_| poisoned())?;
        Ok(table.get(&id).cloned())
    }

    pub fn all(&self) -> Result<Vec<(u32, Workload)>, WorkloadsPoisoned> {
        let table = self.0.read().map_err(|_| poisoned())?;
        Ok(table.iter().map(|(id, w)| (*id, w.clone())).collect())
    }

    /// Adds or replaces workload `id`. A poisoned table is left alone (said once): readers
    /// fail on it too, so no connection is taken for the wrong workload.
    pub fn insert(&self, id: u32, workload: Workload) {
        match self.0.write() {
            Ok(mut table) => {
                table.insert(id, workload);
            }
            Err(_) => {
                poisoned();
            }
        }
    }

    pub fn remove(&self, id: u32) {
        match self.0.write() {
            Ok(mut table) => {
                table.remove(&id);
            }
            Err(_) => {
                poisoned();
            }
        }
    }
}

fn poisoned() -> WorkloadsPoisoned {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    lock_poisoned(&REPORTED, "the workload table lock");
    WorkloadsPoisoned
}
