//! Reusing what a node's backends compiled to when the mesh changes elsewhere. A node with
//! 10 000 backends has 10 000 virtual hosts; a change to one service should not build and
//! encode the other 9 999 again for every node that reaches them.
//!
//! What one backend of one caller compiles to (a [`Part`]) is kept with every mesh resource
//! its compile read ([`Recording`]), the caller's settings for the backend and the automatic
//! mTLS it used. The next mesh's compile takes the part as it is while all of those hold, and
//! compiles it again otherwise. Each published mesh keeps the parts its compiles made or took
//! and takes from the mesh published before it only, so parts no node uses any more go with
//! that mesh.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use mesh_model::types::{ClientPolicy, VirtualServiceBackend};

use super::{
    AutoMtls, Issues,
    hosts::Hosts,
    index::{MeshIndex, Read, Recording},
    output::ClusterVariant,
};

/// The parts compiled for one published mesh, and those of the mesh before it.
#[derive(Default)]
pub struct Reuse {
    previous: Arc<Parts>,
    current: Arc<Parts>,
}

/// Parts by (mesh, caller virtual node, backend virtual service).
type Parts = Mutex<HashMap<(String, String, String), Arc<Part>>>;

impl Reuse {
    /// The reuse of a mesh published after the one `previous` served.
    pub fn after(previous: &Reuse) -> Self {
        Self {
            previous: Arc::clone(&previous.current),
            current: Arc::default(),
        }
    }

    /// What `backend` of `inputs.caller` compiles to in `index`: a part compiled before when
    /// everything it was compiled from holds, else `compile`'s, run with a recording lookup.
    pub(super) fn backend(
        &self,
        index: &MeshIndex,
        inputs: Inputs<'_>,
        compile: impl FnOnce(&Recording<'_>, &mut Issues) -> Compiled,
    ) -> Arc<Part> {
        let key = (
            inputs.mesh.to_owned(),
            inputs.caller.to_owned(),
            inputs.backend.virtual_service_name.clone(),
        );
        let found = [&self.current, &self.previous]
            .into_iter()
            .find_map(|parts| lock(parts).get(&key).cloned())
            .filter(|part| part.holds(index, &inputs));
        let part = found.unwrap_or_else(|| {
            let recording = Recording::new(index);
            let mut issues = Issues::new();
            let compiled = compile(&recording, &mut issues);
            Arc::new(Part {
                reads: recording.into_reads(),
                backend: inputs.backend.clone(),
                defaults: inputs.defaults.cloned(),
                mtls: inputs.mtls.cloned(),
                hosts: compiled.hosts.map(Hosts::encoded),
                variants: compiled.variants,
                issues,
            })
        });
        lock(&self.current).insert(key, Arc::clone(&part));
        part
    }
}

fn lock(parts: &Parts) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), Arc<Part>>> {
    // A panic while a part was inserted leaves the map whole.
    parts.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a backend's compile depends on besides the mesh resources it reads.
pub(super) struct Inputs<'a> {
    pub(super) mesh: &'a str,
    pub(super) caller: &'a str,
    pub(super) backend: &'a VirtualServiceBackend,
    /// The caller's backend defaults.
    pub(super) defaults: Option<&'a ClientPolicy>,
    pub(super) mtls: Option<&'a Arc<AutoMtls>>,
}

/// What a backend compiles to: its hosts (None when the backend is left out) and the cluster
/// copies they reach.
pub(super) struct Compiled {
    pub(super) hosts: Option<Hosts>,
    pub(super) variants: Vec<(String, String, ClusterVariant)>,
}

/// One backend of one caller, compiled, with what it was compiled from.
pub(super) struct Part {
    reads: Vec<Read>,
    backend: VirtualServiceBackend,
    defaults: Option<ClientPolicy>,
    mtls: Option<Arc<AutoMtls>>,
    /// Its virtual hosts encoded, its TCP targets and the clusters they reach.
    pub(super) hosts: Option<Hosts<Bytes>>,
    pub(super) variants: Vec<(String, String, ClusterVariant)>,
    /// What its compile reported.
    pub(super) issues: Issues,
}

impl Part {
    /// Whether compiling it again from `index` and `inputs` would give the same part.
    fn holds(&self, index: &MeshIndex, inputs: &Inputs<'_>) -> bool {
        let same_mtls = match (&self.mtls, inputs.mtls) {
            (Some(was), Some(is)) => Arc::ptr_eq(was, is),
            (None, None) => true,
            _ => false,
        };
        same_mtls
            && self.backend == *inputs.backend
            && self.defaults.as_ref() == inputs.defaults
            && self.reads.iter().all(|read| read.holds(index))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use mesh_model::{
        resource::Resource,
        source::{self, LoadOptions},
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        compile::{Compiled as Resources, Serving, Workloads, compile_served},
        registry::Registry,
    };

    fn shop() -> Vec<Resource> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
        source::load(&[dir], &LoadOptions::default()).resources
    }

    fn compiled(resources: &[Resource], reuse: &Reuse) -> Resources {
        let index = MeshIndex::new(resources).unwrap();
        let serving = Serving::default();
        compile_served(
            &index,
            &Registry::default(),
            &serving,
            reuse,
            &Workloads::All,
        )
    }

    /// The shop mesh with the value at `pointer` of the resource from `file` set to `value`
    /// (the resource dropped when `value` is null).
    fn changed(file: &str, pointer: &str, value: Value) -> Vec<Resource> {
        let mut resources = shop();
        let at = resources
            .iter()
            .position(|r| r.origin.file.ends_with(file))
            .unwrap();
        if value.is_null() {
            resources.remove(at);
            return resources;
        }
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        let mut body = Value::Object(std::mem::take(&mut resources[at].body));
        body.pointer_mut(parent).unwrap()[field] = value;
        resources[at].body = body.as_object().unwrap().clone();
        resources
    }

    #[test]
    fn a_change_recompiles_the_backends_that_read_it_and_reuses_the_rest() {
        let policy =
            json!({"tls": {"validation": {"trust": {"file": {"certificateChain": "/ca.pem"}}}}});
        let cases = [
            // A route of the router providing api: its weights.
            (
                "route-api.json",
                "/spec/httpRoute/action/weightedTargets/0/weight",
                json!(50),
                &["api.shop.local"][..],
            ),
            // A target of that route: the cluster of its only listener.
            (
                "vn-api-v2.json",
                "/spec/listeners/0/portMapping/port",
                json!(9091),
                &["api.shop.local"],
            ),
            // The node providing db.
            (
                "vn-db.json",
                "/spec/listeners/0/portMapping/port",
                json!(5433),
                &["db.shop.local"],
            ),
            // The caller's client policy for one backend.
            (
                "vn-web.json",
                "/spec/backends/1/virtualService/clientPolicy",
                policy,
                &["db.shop.local"],
            ),
            // A backend's service gone.
            ("vs-db.json", "", Value::Null, &["db.shop.local"]),
            // The caller's own listener, and the gateway: no backend reads them.
            (
                "vn-web.json",
                "/spec/listeners/0/portMapping/port",
                json!(8081),
                &[],
            ),
            ("gr-api.json", "", Value::Null, &[]),
        ];
        for (file, pointer, value, recompiled) in cases {
            let before = Reuse::default();
            compiled(&shop(), &before);
            let after = Reuse::after(&before);
            let mesh = changed(file, pointer, value);
            let reused = compiled(&mesh, &after);
            let fresh = compiled(&mesh, &Reuse::default());
            assert!(reused.resources == fresh.resources, "{file} {pointer}");
            assert_eq!(reused.issues, fresh.issues, "{file} {pointer}");
            let earlier = lock(&before.current);
            let later = lock(&after.current);
            assert_eq!(later.len(), earlier.len(), "{file} {pointer}");
            for (key, part) in later.iter() {
                let kept = Arc::ptr_eq(part, &earlier[key]);
                let backend = key.2.as_str();
                assert_eq!(
                    kept,
                    !recompiled.contains(&backend),
                    "{file} {pointer}: {key:?}"
                );
            }
        }
    }
}
