//! Enrolled workloads as the proxy sees them: the eBPF redirect tags each connection with its
//! workload id; this table says which namespace that is, its addresses, and the virtual node
//! it was pinned to (if any).
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, RwLock},
};

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

impl Workloads {
    pub fn get(&self, id: u32) -> Option<Workload> {
        self.0.read().ok()?.get(&id).cloned()
    }

    pub fn all(&self) -> Vec<(u32, Workload)> {
        self.0
            .read()
            .map(|table| table.iter().map(|(id, w)| (*id, w.clone())).collect())
            .unwrap_or_default()
    }

    pub fn insert(&self, id: u32, workload: Workload) {
        if let Ok(mut table) = self.0.write() {
            table.insert(id, workload);
        }
    }

    pub fn remove(&self, id: u32) {
        if let Ok(mut table) = self.0.write() {
            table.remove(&id);
        }
    }
}
