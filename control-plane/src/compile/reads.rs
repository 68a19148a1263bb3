//! What a compile read of the mesh, and what changed between two meshes: a compile run
//! through a [`Recording`] lookup notes each resource it read, and a result is reused while
//! none of them is among the [`Changes`].
use std::{
    cell::RefCell,
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use mesh_model::types::{
    CreateRouteInput, CreateVirtualNodeInput, CreateVirtualRouterInput, CreateVirtualServiceInput,
};

use imbl::ordmap::DiffItem;

use super::index::{ByName, Lookup, MeshIndex};

/// One resource a compile read (found or not), by kind and `(mesh, name)`; a router's routes
/// are one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum ReadKind {
    Node,
    Service,
    Router,
    Routes,
}

/// One read, kept as a hash of its kind and `(mesh, name)`: all a read is needed for is
/// whether it is among the [`Changes`], and a collision only makes a compile run again.
/// (Each of 10 000 kept parts holds a few: hashed once when read, not at every change.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Read(u64);

impl Read {
    fn of(kind: ReadKind, mesh: &str, name: &str) -> Self {
        let mut hasher = DefaultHasher::new();
        (kind, mesh, name).hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// The resources two indexes hold differently (added, removed, or not equal), as reads of
/// them.
pub(super) struct Changes(HashSet<Read>);

/// Whether `now` is what `kept` holds: the same shared copy, or an equal one (a node
/// inheriting the mesh's IP preference is a fresh copy in each index; a file read again is
/// parsed again; the registry is copied for each publish).
pub(super) fn same_as<T: PartialEq>(kept: &Arc<T>, now: &T) -> bool {
    std::ptr::eq(Arc::as_ptr(kept), now) || **kept == *now
}

impl Changes {
    pub(super) fn between(before: &MeshIndex, after: &MeshIndex) -> Self {
        let mut changed = HashSet::new();
        let same_routes = |before: &Vec<Arc<CreateRouteInput>>,
                           after: &Vec<Arc<CreateRouteInput>>| {
            before.len() == after.len() && before.iter().zip(after).all(|(b, a)| same_as(b, a))
        };
        changed_keys(
            ReadKind::Node,
            &before.nodes,
            &after.nodes,
            |b, a| same_as(b, a),
            &mut changed,
        );
        changed_keys(
            ReadKind::Service,
            &before.services,
            &after.services,
            |b, a| same_as(b, a),
            &mut changed,
        );
        changed_keys(
            ReadKind::Router,
            &before.routers,
            &after.routers,
            |b, a| same_as(b, a),
            &mut changed,
        );
        changed_keys(
            ReadKind::Routes,
            &before.routes,
            &after.routes,
            same_routes,
            &mut changed,
        );
        Self(changed)
    }

    /// Whether the resource `read` read is held differently.
    pub(super) fn touch(&self, read: &Read) -> bool {
        !self.0.is_empty() && self.0.contains(read)
    }

    /// Whether resource `name` of `mesh` of `kind` is held differently.
    pub(super) fn touches(&self, kind: ReadKind, mesh: &str, name: &str) -> bool {
        !self.0.is_empty() && self.0.contains(&Read::of(kind, mesh, name))
    }
}

/// Notes in `changed` the resources of one kind that `before` and `after` hold differently:
/// the maps' nodes that both share (all but the paths to what an update changed, when one
/// index was copied from the other) are skipped, not walked.
fn changed_keys<V: PartialEq + Clone>(
    kind: ReadKind,
    before: &ByName<V>,
    after: &ByName<V>,
    same: impl Fn(&V, &V) -> bool,
    changed: &mut HashSet<Read>,
) {
    let mut note = |(mesh, name): &(String, String)| changed.insert(Read::of(kind, mesh, name));
    for difference in before.diff(after) {
        match difference {
            DiffItem::Add(key, _) | DiffItem::Remove(key, _) => {
                note(key);
            }
            DiffItem::Update {
                old: (key, was),
                new: (_, is),
            } => {
                if !same(was, is) {
                    note(key);
                }
            }
        }
    }
}

/// A [`Lookup`] of an index that notes every read, so that what was compiled from them can
/// be reused while none of them changed ([`Changes`]).
pub(super) struct Recording<'a> {
    index: &'a MeshIndex,
    reads: RefCell<Vec<Read>>,
}

impl<'a> Recording<'a> {
    pub(super) fn new(index: &'a MeshIndex) -> Self {
        Self {
            index,
            reads: RefCell::default(),
        }
    }

    pub(super) fn into_reads(self) -> Vec<Read> {
        self.reads.into_inner()
    }

    /// `found`, the resource `name` of `mesh` of `kind`, noted as read.
    fn noted<T>(&self, kind: ReadKind, (mesh, name): (&str, &str), found: T) -> T {
        self.reads.borrow_mut().push(Read::of(kind, mesh, name));
        found
    }
}

impl Lookup for Recording<'_> {
    fn node(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualNodeInput>> {
        self.noted(ReadKind::Node, (mesh, name), self.index.node(mesh, name))
    }

    fn service(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualServiceInput>> {
        self.noted(
            ReadKind::Service,
            (mesh, name),
            self.index.service(mesh, name),
        )
    }

    fn router(&self, mesh: &str, name: &str) -> Option<&Arc<CreateVirtualRouterInput>> {
        self.noted(
            ReadKind::Router,
            (mesh, name),
            self.index.router(mesh, name),
        )
    }

    fn routes(&self, mesh: &str, router: &str) -> &[Arc<CreateRouteInput>] {
        self.noted(
            ReadKind::Routes,
            (mesh, router),
            self.index.routes(mesh, router),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::compile::Indexed;

    #[test]
    fn changes_are_what_was_added_removed_or_changed() {
        let service = |name: &str, node: &str| {
            let body = json!({"meshName": "m", "virtualServiceName": name,
                "spec": {"provider": {"virtualNode": {"virtualNodeName": node}}}});
            Indexed::VirtualService(Arc::new(serde_json::from_value(body).unwrap()))
        };
        let before = MeshIndex::from_typed([
            service("a", "n"),
            service("c", "n"),
            service("e", "n"),
            service("g", "n"),
        ]);
        let after = MeshIndex::from_typed([
            service("b", "n"),
            service("c", "n"),
            service("e", "other"),
            service("f", "n"),
            service("g", "n"),
        ]);
        let changes = Changes::between(&before, &after);
        let touched = |name: &str| changes.touch(&Read::of(ReadKind::Service, "m", name));
        for name in ["a", "b", "e", "f"] {
            assert!(touched(name), "{name}");
        }
        for name in ["c", "g", "h"] {
            assert!(!touched(name), "{name}");
        }
    }
}
