//! Reusing what a node's backends compiled to when the mesh changes elsewhere. A node with
//! 10 000 backends has 10 000 virtual hosts; a change to one service should not build and
//! encode the other 9 999 again for every node that reaches them.
//!
//! What one backend of one caller compiles to (a [`Part`]) is kept with the mesh resources
//! its compile read (`reads::Recording`), the caller's settings for the backend and the automatic
//! mTLS it used. Each published mesh keeps the parts its compiles made or took, and takes
//! from the mesh published before it only, so parts no node uses any more go with that mesh:
//! a part of the mesh before is taken while none of its reads is among the resources the two
//! meshes hold differently (`reads::Changes`, found once per mesh) and its other inputs are equal.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use bytes::Bytes;
use envoy_types::{
    pb::{envoy::config::cluster::v3::Cluster, google::protobuf::Any},
    util::pack_any,
};
use mesh_model::types::{ClientPolicy, VirtualServiceBackend};
use prost::Message;

use super::{
    AutoMtls, Issues, ServiceEndpoints,
    hosts::Hosts,
    index::MeshIndex,
    reads::{Changes, Read, ReadKind, Recording, same_as},
    variant::ClusterVariant,
};
use crate::registry::Registry;

/// The parts and clusters compiled for one published mesh, and what it may take from the
/// mesh before.
#[derive(Default)]
pub struct Reuse {
    previous: Option<Previous>,
    current: Parts,
    clusters: Clusters,
}

/// The mesh published before: what it was compiled from, its parts and clusters, and (once a
/// compile asks) the resources the two meshes hold differently.
struct Previous {
    index: Arc<MeshIndex>,
    around: Around,
    parts: Arc<Mutex<PartsByCaller>>,
    clusters: Clusters,
    changes: OnceLock<Changes>,
}

/// What a mesh's clusters are built from besides their virtual nodes: the service registry,
/// the Kubernetes Services' endpoints, automatic mTLS.
pub struct Around {
    pub registry: Arc<Registry>,
    pub service_endpoints: Arc<ServiceEndpoints>,
    pub mtls: Option<Arc<AutoMtls>>,
}

impl Around {
    /// Whether clusters built around `self` are built the same around these.
    fn same(
        &self,
        registry: &Registry,
        service_endpoints: &ServiceEndpoints,
        mtls: Option<&AutoMtls>,
    ) -> bool {
        same_mtls(self.mtls.as_ref(), mtls)
            && same_as(&self.registry, registry)
            && same_as(&self.service_endpoints, service_endpoints)
    }
}

/// Whether `now` is the automatic mTLS `kept` was made with: the same one, or none both times
/// (it lives as long as the control plane; equal ones made apart are not the same CA).
fn same_mtls(kept: Option<&Arc<AutoMtls>>, now: Option<&AutoMtls>) -> bool {
    match (kept, now) {
        (Some(kept), Some(now)) => std::ptr::eq(Arc::as_ptr(kept), now),
        (None, None) => true,
        _ => false,
    }
}

/// Clusters of virtual node listeners as built, by name.
type Clusters = Arc<Mutex<HashMap<String, Arc<BuiltCluster>>>>;

/// A virtual node listener's cluster, encoded (kept encoded: a `Cluster` message takes
/// kilobytes as a struct): as built, what copies for callers start from; as routes reach it,
/// when that differs; and its endpoint assignment.
pub(super) struct BuiltCluster {
    /// The virtual node it was built from.
    node: (String, String),
    built: Any,
    reached: Option<Any>,
    pub(super) assignment: Option<Any>,
}

/// The parts of each caller `(mesh, virtual node)`.
type PartsByCaller = HashMap<(String, String), Arc<CallerParts>>;
/// One caller's parts, in the order of its backends.
type CallerParts = Vec<Arc<Part>>;
type Parts = Arc<Mutex<PartsByCaller>>;

impl Reuse {
    /// The reuse of a mesh published after `previous`, which served `index` with `around`.
    pub fn after(previous: &Reuse, index: Arc<MeshIndex>, around: Around) -> Self {
        Self {
            previous: Some(Previous {
                index,
                around,
                parts: Arc::clone(&previous.current),
                clusters: Arc::clone(&previous.clusters),
                changes: OnceLock::new(),
            }),
            current: Parts::default(),
            clusters: Clusters::default(),
        }
    }

    /// The resources `index` holds differently from the mesh before's.
    fn changes(&self, index: &MeshIndex) -> Option<(&Previous, &Changes)> {
        let previous = self.previous.as_ref()?;
        let changes = previous
            .changes
            .get_or_init(|| Changes::between(&previous.index, index));
        Some((previous, changes))
    }

    /// The clusters built for this mesh, and those of the mesh before that can be taken: the
    /// ones of virtual nodes that did not change, when what else clusters are built from is
    /// the same.
    pub(super) fn clusters<'r>(
        &'r self,
        index: &MeshIndex,
        registry: &Registry,
        service_endpoints: &ServiceEndpoints,
        mtls: Option<&AutoMtls>,
    ) -> ClusterReuse<'r> {
        let previous = self.changes(index).and_then(|(previous, changes)| {
            previous
                .around
                .same(registry, service_endpoints, mtls)
                .then_some((&previous.clusters, changes))
        });
        // About as many as the mesh before had: no growing the map cluster by cluster.
        let expected = previous.map_or(0, |(clusters, _)| lock(clusters).len());
        ClusterReuse {
            current: &self.clusters,
            previous,
            built: HashMap::with_capacity(expected),
        }
    }

    /// The parts of virtual node `caller` of `mesh` for compiling it from `index` (the index
    /// every compile with this reuse compiles from).
    pub(super) fn caller<'r>(&'r self, index: &MeshIndex, mesh: &str, caller: &str) -> Caller<'r> {
        let key = (mesh.to_owned(), caller.to_owned());
        let current = lock(&self.current).get(&key).cloned();
        let previous = self.changes(index).and_then(|(previous, changes)| {
            let parts = lock(&previous.parts).get(&key).cloned()?;
            // An unchanged caller has the same backends in the same order: its parts are
            // found by position. A changed one's are found by name.
            let by_name = changes
                .touches(ReadKind::Node, mesh, caller)
                .then(|| by_name(&parts));
            Some(PreviousParts {
                parts,
                by_name,
                changes,
            })
        });
        let expected = previous.as_ref().map_or(0, |previous| previous.parts.len());
        Caller {
            reuse: self,
            key,
            current,
            previous,
            made: Vec::with_capacity(expected),
        }
    }
}

/// The position of each backend's part among `parts`.
fn by_name(parts: &CallerParts) -> HashMap<String, usize> {
    parts
        .iter()
        .enumerate()
        .map(|(at, part)| (part.backend.virtual_service_name.clone(), at))
        .collect()
}

fn lock<T>(map: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while something was inserted leaves the map whole.
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The clusters one compile builds or takes.
pub(super) struct ClusterReuse<'r> {
    current: &'r Clusters,
    previous: Option<(&'r Clusters, &'r Changes)>,
    built: HashMap<String, Arc<BuiltCluster>>,
}

impl ClusterReuse<'_> {
    /// Cluster `name` of virtual node `node` of `mesh`: built for this mesh already, taken
    /// from the mesh before if its node is unchanged, else `build`'s.
    pub(super) fn cluster(
        &mut self,
        name: &str,
        (mesh, node): (&str, &str),
        build: impl FnOnce() -> BuiltCluster,
    ) -> Arc<BuiltCluster> {
        let this_mesh = || lock(self.current).get(name).cloned();
        let mesh_before = || {
            let (clusters, changes) = self.previous?;
            let built = lock(clusters).get(name).cloned()?;
            let same_node = built.node.0 == mesh && built.node.1 == node;
            (same_node && !changes.touches(ReadKind::Node, mesh, node)).then_some(built)
        };
        let built = this_mesh()
            .or_else(mesh_before)
            .unwrap_or_else(|| Arc::new(build()));
        self.built.insert(name.to_owned(), Arc::clone(&built));
        built
    }

    /// Keeps the clusters of this compile for the compiles after it.
    pub(super) fn done(self) {
        let mut current = lock(self.current);
        if current.is_empty() {
            // The first compile for this mesh: its map is taken whole, not inserted again.
            *current = self.built;
        } else {
            current.extend(self.built);
        }
    }
}

impl BuiltCluster {
    /// `cluster` of virtual node `node` of `mesh`, and its assignment; `reached` is the
    /// cluster as routes reach it.
    pub(super) fn new(
        (mesh, node): (&str, &str),
        cluster: Cluster,
        reached: Cluster,
        assignment: Option<Any>,
    ) -> Self {
        Self {
            node: (mesh.to_owned(), node.to_owned()),
            reached: (reached != cluster).then(|| pack_any(reached)),
            built: pack_any(cluster),
            assignment,
        }
    }

    /// The cluster as routes reach it.
    pub(super) fn reached(&self) -> &Any {
        self.reached.as_ref().unwrap_or(&self.built)
    }

    /// The cluster as built, to make copies of.
    pub(super) fn cluster(&self) -> Result<Cluster, prost::DecodeError> {
        Cluster::decode(self.built.value.as_slice())
    }
}

/// One caller's parts while it compiles: those this mesh's compiles made already, those of
/// the mesh before, and those of this compile (kept for the next when it is done).
pub(super) struct Caller<'r> {
    reuse: &'r Reuse,
    key: (String, String),
    /// Of this mesh: the same caller, so the same backends in the same order.
    current: Option<Arc<CallerParts>>,
    previous: Option<PreviousParts<'r>>,
    made: CallerParts,
}

/// A caller's parts of the mesh before, and the resources changed since.
struct PreviousParts<'r> {
    parts: Arc<CallerParts>,
    /// Where each backend's part is, when the caller changed (None: by position).
    by_name: Option<HashMap<String, usize>>,
    changes: &'r Changes,
}

impl PreviousParts<'_> {
    /// The part of backend `name`, the caller's `position`th, unless what it read changed.
    fn unchanged(&self, position: usize, name: &str) -> Option<&Arc<Part>> {
        let at = match &self.by_name {
            None => position,
            Some(by_name) => *by_name.get(name)?,
        };
        let part = self.parts.get(at)?;
        (!part.reads.iter().any(|read| self.changes.touch(read))).then_some(part)
    }
}

impl Caller<'_> {
    /// What `inputs.backend`, the caller's `position`th backend, compiles to in `index`: a
    /// part compiled before when everything it was compiled from is unchanged, else
    /// `compile`'s, run with a recording lookup.
    pub(super) fn backend(
        &mut self,
        index: &MeshIndex,
        position: usize,
        inputs: Inputs<'_>,
        compile: impl FnOnce(&Recording<'_>, &mut Issues) -> Compiled,
    ) -> Arc<Part> {
        let name = inputs.backend.virtual_service_name.as_str();
        let this_mesh = self.current.as_ref().and_then(|parts| parts.get(position));
        let mesh_before = self
            .previous
            .as_ref()
            .and_then(|previous| previous.unchanged(position, name));
        let found = this_mesh
            .or(mesh_before)
            .filter(|part| part.inputs_equal(&inputs))
            .cloned();
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
        self.made.push(Arc::clone(&part));
        part
    }

    /// Keeps this compile's parts for the compiles after it.
    pub(super) fn done(self) {
        lock(&self.reuse.current).insert(self.key, Arc::new(self.made));
    }
}

/// What a backend's compile depends on besides the mesh resources it reads.
pub(super) struct Inputs<'a> {
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
    /// Whether it was compiled from `inputs` (what it read of the mesh aside).
    fn inputs_equal(&self, inputs: &Inputs<'_>) -> bool {
        same_mtls(self.mtls.as_ref(), inputs.mtls.map(Arc::as_ref))
            && self.backend == *inputs.backend
            && self.defaults.as_ref() == inputs.defaults
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

    fn compiled(index: &MeshIndex, reuse: &Reuse) -> Resources {
        let serving = Serving::default();
        compile_served(
            index,
            &Registry::default(),
            &serving,
            reuse,
            &Workloads::All,
        )
    }

    /// The parts the compiles with `reuse` kept for the shop's `web`.
    fn web_parts(reuse: &Reuse) -> Arc<CallerParts> {
        Arc::clone(&lock(&reuse.current)[&("shop".to_owned(), "web".to_owned())])
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
            // A target's cluster, its name the same.
            (
                "vn-api-v2.json",
                "/spec/listeners/0/healthCheck/path",
                json!("/health"),
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
            // The change made, and undone (what was removed comes back).
            let meshes = [shop(), changed(file, pointer, value)];
            for (from, to) in [(&meshes[0], &meshes[1]), (&meshes[1], &meshes[0])] {
                let what = format!("{file} {pointer}");
                let before = Reuse::default();
                let index = Arc::new(MeshIndex::new(from).unwrap());
                compiled(&index, &before);
                let around = Around {
                    registry: Arc::default(),
                    service_endpoints: Arc::default(),
                    mtls: None,
                };
                let after = Reuse::after(&before, index, around);
                let mesh = MeshIndex::new(to).unwrap();
                let reused = compiled(&mesh, &after);
                let fresh = compiled(&mesh, &Reuse::default());
                assert!(reused.resources == fresh.resources, "{what}");
                assert_eq!(reused.issues, fresh.issues, "{what}");
                let (earlier, later) = (web_parts(&before), web_parts(&after));
                assert_eq!(later.len(), earlier.len(), "{what}");
                for (part, was) in later.iter().zip(earlier.iter()) {
                    let backend = &part.backend.virtual_service_name;
                    assert_eq!(*backend, was.backend.virtual_service_name, "{what}");
                    let kept = Arc::ptr_eq(part, was);
                    let expected = !recompiled.contains(&backend.as_str());
                    assert_eq!(kept, expected, "{what}: {backend}");
                }
            }
        }
    }
}
