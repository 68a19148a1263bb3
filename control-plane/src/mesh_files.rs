//! The mesh read from files incrementally. Each file's resources, parsed and checked on
//! their own (the model's constraints on every field) and typed, are kept with the file's
//! stamp; a reload reads again only the files whose stamp changed, drops the files that are
//! gone, and redoes only what spans files: Kubernetes conversion (objects refer to each
//! other across files), unique names, references, and the index. With 20 000 files, one
//! changed file then costs one parse rather than 20 000; and the checks across files are
//! kept ([`Across`]) and redone only around what changed, the whole pass run only to say
//! what is wrong when something is.
//!
//! What is kept for a file depends on its content only, so a rejected change poisons
//! nothing: the file's problems are kept with it, and reported again until it changes.
use std::{
    collections::{HashMap, HashSet},
    mem,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use mesh_model::{
    kubernetes::Document,
    report::Diagnostic,
    resource::Resource,
    source,
    validate::{self, Across, Links, Options},
};

use crate::{
    compile::{self, Indexed, MeshIndex},
    load::InputOptions,
    watch::Changes,
};

/// A file modified this shortly before it was read may change again within the same tick
/// of the file system's clock, keeping its stamp: it is read again at the next reload
/// (as git treats "racily clean" files).
const RACY: Duration = Duration::from_secs(1);

/// The mesh files last read, by path.
pub(crate) struct MeshFiles {
    input: InputOptions,
    files: HashMap<PathBuf, CachedFile>,
    /// The files modified just before they were read, whose unchanged stamp does not mean
    /// unchanged content: read again at every reload.
    unsettled: HashSet<PathBuf>,
    /// The checks across the files' resources, each file a group (by [`CachedFile::id`]).
    across: Across,
    next_id: u64,
    /// The last listing of the files, if it found no problem: the paths listed and the
    /// files under them, in order.
    listing: Option<(Vec<PathBuf>, Vec<PathBuf>)>,
    /// The index of the files as they were when they last made a mesh with nothing wrong,
    /// updated in place from then on (each mesh compiled is a copy of it).
    indexed: Option<MeshIndex>,
    /// The files read again or gone since [`Self::indexed`] was made, with what it holds of
    /// each (None: nothing, the file is new).
    unindexed: HashMap<PathBuf, Option<Arc<FileContent>>>,
}

/// What a file's content gave, with the stamp the file had when it was read.
struct CachedFile {
    /// Which read of a file this is: the group its resources are in [`MeshFiles::across`].
    id: u64,
    /// None: the file could not be looked at (it is read again every time).
    stamp: Option<Stamp>,
    content: Arc<FileContent>,
}

/// What one file gave: its resources typed, what the checks across files read of them
/// (not the resources themselves: at 10 000 services their JSON would be the largest thing
/// the control plane holds), its Kubernetes objects, and what was found about each
/// resource on its own.
struct FileContent {
    /// What reading the file found.
    read: Vec<Diagnostic>,
    manifests: Vec<Document>,
    /// Each resource's own problems (validation of its fields).
    checked: Vec<Diagnostic>,
    links: Arc<[Links]>,
    /// The resources typed, for the index; why not, if one does not fit the model.
    typed: Result<Vec<Indexed>, String>,
}

impl FileContent {
    /// The resources this file puts in the index: none when one of them does not fit the
    /// model (the mesh is then rejected, not indexed).
    fn indexed(&self) -> &[Indexed] {
        self.typed.as_deref().unwrap_or_default()
    }
}

/// What tells that a file changed: its length, modification and change times, and inode
/// (a file replaced by a rename, as editors and ConfigMap updates do, is a new inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: u64,
}

impl Stamp {
    fn of(file: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(file).ok()?;
        Some(Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            inode: metadata.ino(),
        })
    }
}

impl MeshFiles {
    pub(crate) fn new(input: InputOptions) -> Self {
        let across = Across::new(options(&input));
        Self {
            input,
            files: HashMap::new(),
            unsettled: HashSet::new(),
            across,
            next_id: 0,
            listing: None,
            indexed: None,
            unindexed: HashMap::new(),
        }
    }

    /// The mesh in `paths` (files or directories) compiled, or the validation report;
    /// files unchanged since the last call are not read again.
    pub(crate) fn compile(&mut self, paths: &[PathBuf]) -> Result<MeshIndex, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let listed = source::mesh_files(paths, &mut diagnostics);
        let mut previous = mem::take(&mut self.files);
        let unsettled = mem::take(&mut self.unsettled);
        for path in &listed {
            match previous.remove(path) {
                Some(file) if !unsettled.contains(path) && Stamp::of(path) == file.stamp => {
                    self.files.insert(path.clone(), file);
                }
                stale => {
                    if let Some(stale) = stale {
                        self.across.remove(stale.id);
                        self.note_unindexed(path, Some(stale.content));
                    }
                    self.read(path);
                }
            }
        }
        // What `previous` still holds is of files that went away.
        for (path, gone) in previous {
            self.across.remove(gone.id);
            self.note_unindexed(&path, Some(gone.content));
        }
        let listed_cleanly = diagnostics.is_empty();
        let compiled = self.assemble(&listed, diagnostics);
        self.listing = listed_cleanly.then(|| (paths.to_vec(), listed));
        compiled
    }

    /// [`Self::compile`], told by the watcher which files changed since the last call:
    /// when no file came or went, the others are not looked at (at 20 000 files, looking
    /// costs more than the rest of a reload).
    pub(crate) fn compile_changes(
        &mut self,
        paths: &[PathBuf],
        changes: &Changes,
    ) -> Result<MeshIndex, Vec<Diagnostic>> {
        let listing = match (changes, self.listing.take()) {
            (Changes::Modified(modified), Some((listed_paths, listed)))
                if listed_paths == paths && modified.iter().all(|m| self.files.contains_key(m)) =>
            {
                (modified, listed_paths, listed)
            }
            // Files came or went, or a file that is not a mesh file changed (perhaps one
            // that now is): listed again.
            _ => return self.compile(paths),
        };
        let (modified, listed_paths, listed) = listing;
        let stale: HashSet<PathBuf> = modified
            .iter()
            .cloned()
            .chain(mem::take(&mut self.unsettled))
            .collect();
        for path in &stale {
            self.read(path);
        }
        let compiled = self.assemble(&listed, Vec::new());
        self.listing = Some((listed_paths, listed));
        compiled
    }

    /// Reads a file, stamped as it was before the read (a change during the read makes
    /// the next stamp differ, so it is read again), in place of what was kept of it.
    fn read(&mut self, path: &Path) {
        let stamp = Stamp::of(path);
        let settled = stamp
            .and_then(|stamp| stamp.modified)
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age > RACY);
        let content = self.content_of(path);
        let id = self.next_id;
        self.next_id += 1;
        self.across.insert(id, Arc::clone(&content.links));
        if settled {
            self.unsettled.remove(path);
        } else {
            self.unsettled.insert(path.to_owned());
        }
        let file = CachedFile {
            id,
            stamp,
            content: Arc::new(content),
        };
        let replaced = self.files.insert(path.to_owned(), file);
        if let Some(replaced) = &replaced {
            self.across.remove(replaced.id);
        }
        self.note_unindexed(path, replaced.map(|r| r.content));
    }

    /// Notes that `path` no longer holds `content`: what the index holds of it, if this is
    /// its first change since the index was made.
    fn note_unindexed(&mut self, path: &Path, content: Option<Arc<FileContent>>) {
        if self.indexed.is_some() {
            self.unindexed.entry(path.to_owned()).or_insert(content);
        }
    }

    fn content_of(&self, path: &Path) -> FileContent {
        let read = source::read_file(path, &self.input.source);
        let mut checked = Vec::new();
        for resource in &read.resources {
            validate::validate_resource(resource, options(&self.input), &mut checked);
        }
        FileContent {
            read: read.diagnostics,
            manifests: read.manifests,
            checked,
            links: read.resources.iter().map(Links::of).collect(),
            typed: typed_all(&read.resources),
        }
    }

    /// The files' contents made one mesh: Kubernetes objects converted together, names and
    /// references checked across files, everything indexed. The diagnostics come in the
    /// order a whole read gives them ([`crate::load::load`]).
    fn assemble(
        &mut self,
        listed: &[PathBuf],
        diagnostics: Vec<Diagnostic>,
    ) -> Result<MeshIndex, Vec<Diagnostic>> {
        match self.clean(listed, &diagnostics) {
            true => Ok(self.index()),
            false => self.assemble_whole(listed, diagnostics),
        }
    }

    /// The files' resources indexed, when they make a mesh with nothing wrong: the index
    /// kept, with the resources of the files changed since taken out and their new ones put
    /// in; made anew when there is none, when a mesh resource changed (every node may inherit
    /// from it), or when most files changed (a new index costs less than that many updates).
    fn index(&mut self) -> MeshIndex {
        let unindexed = mem::take(&mut self.unindexed);
        let has_mesh = |content: &FileContent| {
            content
                .indexed()
                .iter()
                .any(|r| matches!(r, Indexed::Mesh(_)))
        };
        let meshes_changed = unindexed.iter().any(|(path, was)| {
            was.as_deref().is_some_and(has_mesh)
                || self
                    .files
                    .get(path)
                    .is_some_and(|now| has_mesh(&now.content))
        });
        let index = match self.indexed.take() {
            Some(mut index) if !meshes_changed && unindexed.len() <= updates(self.files.len()) => {
                for was in unindexed.values().flatten() {
                    was.indexed().iter().for_each(|r| index.remove(r));
                }
                for now in unindexed.keys().filter_map(|path| self.files.get(path)) {
                    now.content
                        .indexed()
                        .iter()
                        .for_each(|r| index.insert(r.clone()));
                }
                index
            }
            _ => MeshIndex::from_typed(
                self.files
                    .values()
                    .flat_map(|file| file.content.indexed())
                    .cloned(),
            ),
        };
        self.indexed = Some(index.clone());
        index
    }

    /// Whether the files make a mesh with nothing wrong (so that what they hold can be
    /// indexed in any order), found without a pass across every resource: every file listed
    /// once, read with no error, of API resources only (Kubernetes objects are converted
    /// together), and no error across them.
    fn clean(&mut self, listed: &[PathBuf], diagnostics: &[Diagnostic]) -> bool {
        // Asked every time, so that what it has to check again does not pile up.
        let across_clean = !self.across.has_errors();
        let files_clean = diagnostics.is_empty()
            && listed.len() == self.files.len()
            && self.files.values().all(|file| {
                let content = &file.content;
                content.manifests.is_empty()
                    && content.typed.is_ok()
                    && !content
                        .read
                        .iter()
                        .chain(&content.checked)
                        .any(Diagnostic::is_error)
            })
            && self
                .files
                .values()
                .any(|file| !file.content.links.is_empty());
        files_clean && across_clean
    }

    /// [`Self::assemble`] by a pass over every resource, in listing order: what says what
    /// is wrong.
    fn assemble_whole(
        &self,
        listed: &[PathBuf],
        mut diagnostics: Vec<Diagnostic>,
    ) -> Result<MeshIndex, Vec<Diagnostic>> {
        let contents: Vec<&FileContent> = listed
            .iter()
            .filter_map(|path| self.files.get(path))
            .map(|file| file.content.as_ref())
            .collect();
        let manifests: Vec<_> = contents
            .iter()
            .flat_map(|c| c.manifests.iter().cloned())
            .collect();
        for content in &contents {
            diagnostics.extend(content.read.iter().cloned());
        }
        let mut converted =
            source::convert_manifests(&manifests, &self.input.source, &mut diagnostics);
        source::require_resources(
            contents.iter().map(|c| c.links.len()).sum::<usize>() + converted.len(),
            &mut diagnostics,
        );
        for content in &contents {
            diagnostics.extend(content.checked.iter().cloned());
        }
        for resource in &converted {
            validate::validate_resource(resource, options(&self.input), &mut diagnostics);
        }
        let converted_links: Vec<Links> = converted.iter().map(Links::of).collect();
        let links: Vec<&Links> = contents
            .iter()
            .flat_map(|c| c.links.iter())
            .chain(&converted_links)
            .collect();
        validate::validate_across(&links, options(&self.input), &mut diagnostics);
        if diagnostics.iter().any(Diagnostic::is_error) {
            return Err(diagnostics);
        }
        if self.input.lenient {
            validate::drop_unknown_kubernetes_fields(&mut converted);
        }
        let mut typed = Vec::new();
        for content in &contents {
            typed.extend(
                content
                    .typed
                    .clone()
                    .map_err(|e| vec![Diagnostic::error(e)])?,
            );
        }
        typed.extend(typed_all(&converted).map_err(|e| vec![Diagnostic::error(e)])?);
        Ok(MeshIndex::from_typed(typed))
    }
}

/// How many changed files, of `files`, update the kept index in place: each update copies
/// the maps' nodes on the path to its key, so when a large part of the files changed (as at
/// the first reload, when every file was written in the second before start-up) a new index
/// costs less.
fn updates(files: usize) -> usize {
    (files / 16).max(64)
}

fn options(input: &InputOptions) -> Options {
    Options {
        check_references: !input.partial,
        lenient: input.lenient,
    }
}

/// `resources` typed, or why one is not (said as compiling says it).
fn typed_all(resources: &[Resource]) -> Result<Vec<Indexed>, String> {
    resources
        .iter()
        .map(|r| {
            compile::typed(r)
                .map(Indexed::from)
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::compile::Lookup;

    const MESH: &str = r#"{"meshName": "m", "spec": {}}"#;

    fn node(name: &str, port: u32) -> String {
        format!(
            r#"{{"meshName": "m", "virtualNodeName": "{name}", "spec": {{"listeners": [{{"portMapping": {{"port": {port}, "protocol": "http"}}}}], "serviceDiscovery": {{"dns": {{"hostname": "{name}.local"}}}}}}}}"#
        )
    }

    /// Writes `text` to `dir/name`, dated a minute ago: older than [`RACY`], so an unchanged
    /// stamp is trusted.
    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    }

    fn content(files: &MeshFiles, dir: &Path, name: &str) -> Arc<FileContent> {
        Arc::clone(&files.files[&dir.join(name)].content)
    }

    /// Whether virtual node `name` has a listener on `port`.
    fn listens(index: &MeshIndex, name: &str, port: i32) -> bool {
        index.listener_tls("m", name, port).is_some()
    }

    fn rejected(files: &mut MeshFiles, paths: &[PathBuf]) -> Vec<Diagnostic> {
        match files.compile(paths) {
            Ok(_) => panic!("accepted"),
            Err(report) => report,
        }
    }

    fn fixture() -> (tempfile::TempDir, MeshFiles) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "mesh.json", MESH);
        write(dir.path(), "a.json", &node("a", 80));
        write(dir.path(), "b.json", &node("b", 80));
        let mut files = MeshFiles::new(InputOptions::default());
        files.compile(&[dir.path().to_owned()]).unwrap();
        (dir, files)
    }

    #[test]
    fn only_a_changed_file_is_read_again() {
        let (dir, mut files) = fixture();
        let paths = [dir.path().to_owned()];
        let (a, b) = (
            content(&files, dir.path(), "a.json"),
            content(&files, dir.path(), "b.json"),
        );
        write(dir.path(), "a.json", &node("a", 9090));
        let index = files.compile(&paths).unwrap();
        assert!(listens(&index, "a", 9090));
        assert!(listens(&index, "b", 80));
        assert!(
            !Arc::ptr_eq(&a, &content(&files, dir.path(), "a.json")),
            "re-read"
        );
        assert!(
            Arc::ptr_eq(&b, &content(&files, dir.path(), "b.json")),
            "kept"
        );
    }

    #[test]
    fn a_change_the_watcher_names_is_read_without_looking_at_the_other_files() {
        let (dir, mut files) = fixture();
        let paths = [dir.path().to_owned()];
        let b = content(&files, dir.path(), "b.json");
        write(dir.path(), "a.json", &node("a", 9090));
        let changes = Changes::Modified(vec![dir.path().join("a.json")]);
        let index = files.compile_changes(&paths, &changes).unwrap();
        assert!(listens(&index, "a", 9090));
        assert!(Arc::ptr_eq(&b, &content(&files, dir.path(), "b.json")));
        // Files that came are found by listing again.
        write(dir.path(), "c.json", &node("c", 80));
        let index = files.compile_changes(&paths, &Changes::Listing).unwrap();
        assert!(listens(&index, "c", 80));
        // So are they when what changed is not a mesh file the last listing found.
        write(dir.path(), "d.json", &node("d", 80));
        let changes = Changes::Modified(vec![dir.path().join("registry.json")]);
        let index = files.compile_changes(&paths, &changes).unwrap();
        assert!(listens(&index, "d", 80));
    }

    #[test]
    fn the_index_shares_the_kept_resources_rather_than_copying_them() {
        let (dir, mut files) = fixture();
        let index = files.compile(&[dir.path().to_owned()]).unwrap();
        let content = content(&files, dir.path(), "b.json");
        let Ok([Indexed::VirtualNode(kept)]) = content.typed.as_deref() else {
            panic!("one virtual node");
        };
        // Held by what is kept for the file and by the index (kept, and shared by the copy
        // returned): one copy.
        assert_eq!(Arc::strong_count(kept), 2);
        drop(index);
        assert_eq!(Arc::strong_count(kept), 2);
        drop(files);
        assert_eq!(Arc::strong_count(kept), 1);
    }

    #[test]
    fn a_file_changed_just_before_it_was_read_is_read_again_even_if_its_stamp_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "mesh.json", MESH);
        // Written now: within RACY of the read.
        std::fs::write(dir.path().join("a.json"), node("a", 80)).unwrap();
        let mut files = MeshFiles::new(InputOptions::default());
        let paths = [dir.path().to_owned()];
        files.compile(&paths).unwrap();
        let before = content(&files, dir.path(), "a.json");
        files.compile(&paths).unwrap();
        assert!(!Arc::ptr_eq(
            &before,
            &content(&files, dir.path(), "a.json")
        ));
    }

    #[test]
    fn a_deleted_file_takes_its_resources_away() {
        let (dir, mut files) = fixture();
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        let index = files.compile(&[dir.path().to_owned()]).unwrap();
        assert!(!index.has_node_or_gateway("m", "b"));
        assert!(index.has_node_or_gateway("m", "a"));
        assert!(!files.files.contains_key(&dir.path().join("b.json")));
    }

    #[test]
    fn a_rejected_change_names_the_field_and_is_reported_until_fixed() {
        let (dir, mut files) = fixture();
        let paths = [dir.path().to_owned()];
        write(dir.path(), "a.json", &node("a", 70_000));
        let report = rejected(&mut files, &paths);
        let text: Vec<String> = report.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|d| d.contains("VirtualNode a")
                    && d.contains("spec.listeners[0].portMapping.port")),
            "{text:?}"
        );
        // Unchanged and still invalid: its kept parse says so again, rather than serving it.
        assert_eq!(rejected(&mut files, &paths), report);
        // A change elsewhere does not make it pass either.
        write(dir.path(), "b.json", &node("b", 81));
        assert!(files.compile(&paths).is_err());
        write(dir.path(), "a.json", &node("a", 8080));
        let index = files.compile(&paths).unwrap();
        assert!(listens(&index, "a", 8080));
        assert!(listens(&index, "b", 81));
    }

    #[test]
    fn a_name_defined_twice_across_files_is_found_when_either_changes() {
        let (dir, mut files) = fixture();
        let paths = [dir.path().to_owned()];
        write(dir.path(), "c.json", &node("a", 81));
        let report = rejected(&mut files, &paths);
        assert!(
            report
                .iter()
                .any(|d| d.to_string().contains("defined twice")),
            "{report:?}"
        );
        std::fs::remove_file(dir.path().join("c.json")).unwrap();
        assert!(listens(&files.compile(&paths).unwrap(), "a", 80));
    }

    #[test]
    fn a_reference_a_change_elsewhere_breaks_is_reported_as_a_whole_read_reports_it() {
        let (dir, mut files) = fixture();
        let paths = [dir.path().to_owned()];
        write(
            dir.path(),
            "s.json",
            r#"{"meshName": "m", "virtualServiceName": "s", "spec": {"provider": {"virtualNode": {"virtualNodeName": "a"}}}}"#,
        );
        files.compile(&paths).unwrap();
        // Node a renamed: only a.json changed, the broken reference is in s.json.
        write(dir.path(), "a.json", &node("z", 80));
        let changes = Changes::Modified(vec![dir.path().join("a.json")]);
        let Err(report) = files.compile_changes(&paths, &changes) else {
            panic!("accepted a reference to a node that is gone");
        };
        let (_, whole) = crate::load::load(&paths, &InputOptions::default());
        assert_eq!(report, whole);
        assert!(
            report
                .iter()
                .any(|d| d.to_string().contains("VirtualService s")
                    && d.to_string()
                        .contains("VirtualNode a, which is not defined")),
            "{report:?}"
        );
        write(dir.path(), "a.json", &node("a", 80));
        assert!(listens(
            &files.compile_changes(&paths, &changes).unwrap(),
            "a",
            80
        ));
    }

    fn route(name: &str, priority: u32, target: &str) -> String {
        format!(
            r#"{{"meshName": "m", "virtualRouterName": "r", "routeName": "{name}", "spec": {{"priority": {priority}, "httpRoute": {{"match": {{"prefix": "/{name}"}}, "action": {{"weightedTargets": [{{"virtualNode": "{target}", "weight": 1}}]}}}}}}}}"#
        )
    }

    #[test]
    fn the_index_updated_in_place_is_the_index_made_anew() {
        let (dir, mut files) = fixture();
        let paths = [dir.path().to_owned()];
        let router = r#"{"meshName": "m", "virtualRouterName": "r", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}"#;
        let v6 =
            r#"{"meshName": "m", "spec": {"serviceDiscovery": {"ipPreference": "IPv6_ONLY"}}}"#;
        // Each step: files written (or removed: None); then whether the mesh is accepted and
        // whether the kept index was updated in place (its untouched maps shared).
        type Edits<'a> = Vec<(&'a str, Option<String>)>;
        let steps: Vec<(Edits<'_>, bool, bool)> = vec![
            (
                vec![
                    ("r.json", Some(router.into())),
                    ("x.json", Some(route("x", 2, "a"))),
                    ("y.json", Some(route("y", 1, "b"))),
                ],
                true,
                true,
            ),
            (vec![("a.json", Some(node("a", 9090)))], true, true),
            // The router's routes in their new order.
            (vec![("y.json", Some(route("y", 3, "b")))], true, true),
            // A route moved to another file.
            (
                vec![("x.json", None), ("z.json", Some(route("x", 2, "a")))],
                true,
                true,
            ),
            // Changes while the mesh is rejected are all applied once it is accepted.
            (vec![("y.json", Some(route("y", 3, "q")))], false, false),
            (vec![("b.json", Some(node("b", 81)))], false, false),
            (vec![("y.json", Some(route("y", 0, "b")))], true, true),
            // Nodes inherit from their mesh: a changed mesh indexes everything anew.
            (vec![("mesh.json", Some(v6.into()))], true, false),
            (vec![("c.json", Some(node("c", 80)))], true, true),
            (vec![("y.json", None), ("b.json", None)], true, true),
        ];
        let mut previous = files.compile(&paths).unwrap();
        for (n, (edits, accepted, in_place)) in steps.into_iter().enumerate() {
            for (name, text) in edits {
                match text {
                    Some(text) => write(dir.path(), name, &text),
                    None => std::fs::remove_file(dir.path().join(name)).unwrap(),
                }
            }
            let compiled = files.compile(&paths);
            assert_eq!(compiled.is_ok(), accepted, "step {n}: {compiled:?}");
            let Ok(index) = compiled else { continue };
            let (resources, diagnostics) = crate::load::load(&paths, &InputOptions::default());
            let whole = crate::load::compiled(resources, &diagnostics).unwrap();
            assert_eq!(index, whole, "step {n}");
            assert_eq!(index.shares_meshes_with(&previous), in_place, "step {n}");
            previous = index;
        }
    }

    #[test]
    fn what_it_compiles_is_what_a_whole_read_compiles() {
        let (dir, mut files) = fixture();
        let paths = [dir.path().to_owned()];
        write(dir.path(), "a.json", &node("a", 9090));
        write(
            dir.path(),
            "k8s.yaml",
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: {name: k, namespace: x}\nspec:\n  meshRef: {name: m}\n  listeners: [{portMapping: {port: 80, protocol: http}}]\n  serviceDiscovery: {dns: {hostname: k.x}}\n",
        );
        let incremental = files.compile(&paths).unwrap();
        let (resources, diagnostics) = crate::load::load(&paths, &InputOptions::default());
        let whole = crate::load::compiled(resources, &diagnostics).unwrap();
        let keys = |index: &MeshIndex| index.virtual_nodes().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&incremental), keys(&whole));
        assert!(listens(&incremental, "a", 9090) && listens(&whole, "a", 9090));
    }
}
