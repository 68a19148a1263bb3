//! Places for work in flight (forwarded queries, TCP connections), bounded node-wide and per
//! pod: a pod can take at most its share, so one pod cannot hold every place.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

#[derive(Clone)]
pub struct Slots {
    /// (node-wide, per workload).
    limits: (usize, usize),
    /// (taken node-wide, taken per workload id).
    taken: Arc<Mutex<(usize, HashMap<u32, usize>)>>,
}

/// A place taken; dropping it frees the place.
pub struct Slot {
    slots: Slots,
    workload_id: u32,
}

impl Slots {
    pub fn new(total: usize, per_pod: usize) -> Self {
        Self {
            limits: (total, per_pod),
            taken: Arc::default(),
        }
    }

    /// A place for `workload_id`, or `None` when it or the node is at its limit.
    pub fn take(&self, workload_id: u32) -> Option<Slot> {
        let mut taken = self.taken.lock().ok()?;
        let (total, per_pod) = &mut *taken;
        let mine = per_pod.entry(workload_id).or_default();
        if *total >= self.limits.0 || *mine >= self.limits.1 {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Slot {
            slots: self.clone(),
            workload_id,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Ok(mut taken) = self.slots.taken.lock() else {
            return;
        };
        let (total, per_pod) = &mut *taken;
        *total = total.saturating_sub(1);
        if let Some(mine) = per_pod.get_mut(&self.workload_id) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                per_pod.remove(&self.workload_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_pod_and_node_wide() {
        let slots = Slots::new(3, 2);
        let a1 = slots.take(1).unwrap();
        let _a2 = slots.take(1).unwrap();
        assert!(slots.take(1).is_none(), "pod 1 at its limit");
        let _b1 = slots.take(2).unwrap();
        assert!(slots.take(3).is_none(), "node at its limit");
        drop(a1);
        assert!(slots.take(3).is_some());
    }
}
