//! Watching files: a fingerprint of every file under some paths, compared with the last
//! one, taken when the kernel says something changed in their directories (inotify) and by
//! polling. A file replaced by a rename (as editors and Kubernetes ConfigMap updates do) is
//! seen like one written in place.
//!
//! A fingerprint looks at every file (20 000 of them at 10 000 services), so it is kept
//! cheap: directory entries are stat'ed relative to their directory (no path walk per
//! file) and sorted as bytes. Where every directory reports its changes, the poll is only
//! a rare safety net: taking a fingerprint each second cost the control plane most of its
//! idle CPU and delayed a change arriving during it.
use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use futures::StreamExt as _;
use imbl::{OrdMap, ordmap::DiffItem};
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};
use mesh_model::source;
use tracing::debug;

/// How often the watched files are checked for changes without change events.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// How often they are checked when change events come but some directory does not report
/// its changes: a watch could not be added (the watch limit), or it is on a network file
/// system (whose events say only what this machine changed).
pub(crate) const UNREPORTED_INTERVAL: Duration = Duration::from_secs(1);

/// How often they are checked when every directory reports its changes: a safety net for
/// the changes inotify cannot see (an overlay's lower layer changed underneath, a link in
/// the middle of a chain of links, in a directory not watched).
pub(crate) const SAFETY_INTERVAL: Duration = Duration::from_secs(30);

/// (path, modified, length) of every file under some paths: a change in any means reload;
/// the directories they are in or link to, to watch for change events; and what the links
/// among them point to.
///
/// The files are a persistent map: a check copies the last fingerprint to update the few
/// files an event named, and compares it with the last, for every change of a mesh of
/// 10 000 files; a copy shares all but the paths to what it updated, and a comparison skips
/// what the two share.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    files: OrdMap<PathBuf, (Option<SystemTime>, u64)>,
    directories: Vec<PathBuf>,
    link_targets: Vec<PathBuf>,
}

/// What a check of the watched files looks at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Look {
    /// Every file (a poll, or an event that does not say which file).
    Everything,
    /// These files, named by change events: the others are as last seen.
    Files(Vec<PathBuf>),
}

impl Look {
    /// What to look at for both `self` and `other`.
    pub(crate) fn and(self, other: Look) -> Look {
        match (self, other) {
            (Look::Files(mut files), Look::Files(more)) => {
                files.extend(more);
                Look::Files(files)
            }
            _ => Look::Everything,
        }
    }
}

/// What differs between two fingerprints.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Changes {
    /// The same files, these of them changed.
    Modified(Vec<PathBuf>),
    /// Files came or went.
    Listing,
}

impl Fingerprint {
    pub(crate) fn of(paths: &[PathBuf]) -> Self {
        let mut found = Self {
            files: OrdMap::new(),
            directories: Vec::new(),
            link_targets: Vec::new(),
        };
        for path in paths {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                found.link(path);
            }
            match std::fs::metadata(path) {
                Ok(metadata) if metadata.is_dir() => found.collect(path, &metadata, true),
                found_or_not => {
                    if let Ok(metadata) = found_or_not {
                        found.collect(path, &metadata, true);
                    }
                    // A file given by path may be replaced by a rename, or not be there
                    // yet: its directory says when.
                    found.directories.extend(path.parent().map(Path::to_owned));
                }
            }
        }
        // Links of a ConfigMap all point into one directory.
        found.directories.sort_unstable();
        found.directories.dedup();
        found.link_targets.sort_unstable();
        found
    }

    /// Whether file `path` is read (and so fingerprinted): a file given by path always, one
    /// found in a directory by the mesh loader's rule.
    fn is_read(path: &Path, named: bool) -> bool {
        named || source::is_mesh_file(path)
    }

    fn collect(&mut self, path: &Path, metadata: &std::fs::Metadata, named: bool) {
        if !metadata.is_dir() {
            if !Self::is_read(path, named) {
                return;
            }
            self.files
                .insert(path.to_owned(), (metadata.modified().ok(), metadata.len()));
            return;
        }
        self.directories.push(path.to_owned());
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            // A link is followed (a ConfigMap's files are links); an entry that is not one
            // is stat'ed relative to its directory: no walk of the whole path.
            let metadata = if file_type.is_symlink() {
                self.link(&path);
                std::fs::metadata(&path)
            } else {
                entry.metadata()
            };
            if let Ok(metadata) = metadata {
                self.collect(&path, &metadata, false);
            }
        }
    }

    /// Notes what link `path` finally points to, and watches its directory: a file changed
    /// there is a change here, and only its own directory's events say so.
    fn link(&mut self, path: &Path) {
        let Ok(target) = std::fs::canonicalize(path) else {
            return;
        };
        self.directories.extend(target.parent().map(Path::to_owned));
        self.link_targets.push(target);
    }

    /// The files as `look` finds them: only the files it names are looked at again, if
    /// each is a file this fingerprint has and still a file; else every file is.
    pub(crate) fn looked_again(&self, paths: &[PathBuf], look: &Look) -> Self {
        let Look::Files(named) = look else {
            return Self::of(paths);
        };
        let mut now = self.clone();
        for path in named {
            let seen = now.files.get_mut(path);
            let linked = self.link_targets.binary_search(path).is_ok();
            match (seen, std::fs::metadata(path).ok()) {
                (Some(seen), Some(metadata)) if !metadata.is_dir() => {
                    *seen = (metadata.modified().ok(), metadata.len());
                }
                // Neither seen, nor linked to, nor there: the temporary file of a write by
                // rename (as editors and `sed -i` write), gone by now. It changed nothing
                // here, and looking at every file for it would cost each such write a full
                // look.
                (None, None) if !linked => {}
                // Not seen, not linked to, and not a file the mesh reads: that temporary
                // file still there (its rename comes as an event of its own).
                (None, Some(metadata))
                    if !linked
                        && !metadata.is_dir()
                        && !Self::is_read(path, paths.contains(path)) => {}
                // A file came or went, or a directory changed.
                _ => return Self::of(paths),
            }
        }
        now
    }

    /// What changed since `before` (what the two share is skipped, not compared).
    pub(crate) fn changes_since(&self, before: &Fingerprint) -> Changes {
        let mut modified = Vec::new();
        for difference in before.files.diff(&self.files) {
            match difference {
                DiffItem::Update { new: (path, _), .. } => modified.push(path.clone()),
                DiffItem::Add(..) | DiffItem::Remove(..) => return Changes::Listing,
            }
        }
        Changes::Modified(modified)
    }
}

/// Change events (inotify) in the directories of the watched files: a change is looked at
/// as it happens, not at the next poll.
pub(crate) struct ChangeEvents {
    stream: EventStream<Vec<u8>>,
    /// The directory each watch is on, by every name it was watched by (a directory reached
    /// through a link, and as the target of another, is one watch).
    directories: HashMap<WatchDescriptor, Vec<PathBuf>>,
}

/// What a change is: written and closed, created or removed, renamed in or out, its
/// attributes (`touch`) changed. A write still going on is not one (its close is): a
/// half-written file is not read.
const CHANGES: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

impl ChangeEvents {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            stream: Inotify::init()?.into_event_stream(vec![0; 64 * 1024])?,
            directories: HashMap::new(),
        })
    }

    /// Watches the directories of `fingerprint` (again: watching a watched directory
    /// changes nothing, and new ones are added). Whether every one of them reports its
    /// changes: else they must be polled often.
    pub(crate) fn watch(&mut self, fingerprint: &Fingerprint) -> bool {
        let mut watches = self.stream.watches();
        let mut all_reported = true;
        for directory in &fingerprint.directories {
            let watch = match watches.add(directory, CHANGES) {
                Ok(watch) => watch,
                Err(error) => {
                    debug!(%error, directory = %directory.display(), "no change events for a directory; polled");
                    all_reported = false;
                    continue;
                }
            };
            if on_network_file_system(directory) {
                debug!(directory = %directory.display(), "a network file system: change events say only what this machine changed; polled");
                all_reported = false;
            }
            let names = self.directories.entry(watch).or_default();
            if !names.contains(directory) {
                names.push(directory.clone());
            }
        }
        all_reported
    }

    /// Waits for the next event that may be a change: what to look at; an error when
    /// events stopped.
    pub(crate) async fn next(&mut self) -> io::Result<Look> {
        loop {
            let event = self
                .stream
                .next()
                .await
                .ok_or_else(|| io::Error::other("inotify stream ended"))??;
            // A file just created is empty: the close after writing it is the change.
            let created_file =
                event.mask.contains(EventMask::CREATE) && !event.mask.contains(EventMask::ISDIR);
            if created_file {
                continue;
            }
            let files = match (self.directories.get(&event.wd), &event.name) {
                (Some(names), Some(name)) if !event.mask.contains(EventMask::ISDIR) => {
                    names.iter().map(|directory| directory.join(name)).collect()
                }
                // A directory changed, events were lost (`Q_OVERFLOW`) or the event is
                // not of a known watch.
                _ => return Ok(Look::Everything),
            };
            return Ok(Look::Files(files));
        }
    }
}

/// Whether `directory` is on a file system shared over a network (or served by a user-space
/// process): inotify sees the changes made through this machine's kernel only.
fn on_network_file_system(directory: &Path) -> bool {
    /// Magic numbers (`linux/magic.h`, `statfs(2)`).
    const NETWORK: [u32; 13] = [
        0x6969,      // NFS
        0x517b,      // SMB
        0xff53_4d42, // CIFS
        0xfe53_4d42, // SMB2
        0x6573_5546, // FUSE (sshfs, s3fs, ...)
        0x0102_1997, // 9P
        0x00c3_6400, // Ceph
        0x5346_414f, // AFS
        0x6b41_4653, // kAFS
        0x7375_7245, // Coda
        0x0116_1970, // GFS2
        0x7461_636f, // OCFS2
        0x0bd0_0bd0, // Lustre
    ];
    // Truncating is right: the magic numbers are 32 bits wide, the field a C long.
    nix::sys::statfs::statfs(directory)
        .is_ok_and(|fs| NETWORK.contains(&(fs.filesystem_type().0 as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next change event's look; the test fails if none comes within 5 s.
    async fn next_look(events: &mut ChangeEvents) -> Look {
        tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_new_or_changed_file_under_a_directory_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().to_owned()];
        let empty = Fingerprint::of(&paths);
        std::fs::write(dir.path().join("a.json"), "{}").unwrap();
        let one = Fingerprint::of(&paths);
        assert!(one != empty);
        assert_eq!(one.changes_since(&empty), Changes::Listing);
        assert!(Fingerprint::of(&paths) == one, "nothing changed");
        std::fs::write(dir.path().join("a.json"), "{\"a\": 1}").unwrap();
        let longer = Fingerprint::of(&paths);
        assert!(longer != one, "a longer file");
        assert_eq!(
            longer.changes_since(&one),
            Changes::Modified(vec![dir.path().join("a.json")])
        );
    }

    #[test]
    fn a_named_file_is_looked_at_again_and_a_new_one_means_everything() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().to_owned()];
        let a = dir.path().join("a.json");
        std::fs::write(&a, "{}").unwrap();
        let before = Fingerprint::of(&paths);
        std::fs::write(&a, "{\"a\": 1}").unwrap();
        let named = Look::Files(vec![a.clone()]);
        let now = before.looked_again(&paths, &named);
        assert!(now == Fingerprint::of(&paths));
        assert_eq!(now.changes_since(&before), Changes::Modified(vec![a]));
        let b = dir.path().join("b.json");
        std::fs::write(&b, "{}").unwrap();
        let now = before.looked_again(&paths, &Look::Files(vec![b]));
        assert_eq!(now.changes_since(&before), Changes::Listing);
    }

    #[test]
    fn a_file_replaced_by_a_rename_is_looked_at_alone() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().to_owned()];
        let a = dir.path().join("a.json");
        std::fs::write(&a, "{}").unwrap();
        let before = Fingerprint::of(&paths);
        // Not named by any look: seen only if every file is looked at.
        std::fs::write(dir.path().join("unnamed.json"), "{}").unwrap();
        let temporary = dir.path().join(".a.json.tmp");
        std::fs::write(&temporary, "{\"a\": 1}").unwrap();
        std::fs::rename(&temporary, &a).unwrap();
        // The events of the write: the temporary file closed, renamed from, renamed to.
        let look =
            Look::Files(vec![temporary.clone()]).and(Look::Files(vec![temporary, a.clone()]));
        let now = before.looked_again(&paths, &look);
        assert_eq!(now.changes_since(&before), Changes::Modified(vec![a]));
    }

    #[test]
    fn a_temporary_file_still_there_when_looked_at_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().to_owned()];
        let a = dir.path().join("a.json");
        std::fs::write(&a, "{}").unwrap();
        let before = Fingerprint::of(&paths);
        // `sed -i` writes `sedXXXXXX` and renames it over the file: the close of the
        // temporary file is an event before the rename, and the look may come between.
        let temporary = dir.path().join("sedAb12Cd");
        std::fs::write(&temporary, "{\"a\": 1}").unwrap();
        let look = Look::Files(vec![temporary.clone()]);
        let now = before.looked_again(&paths, &look);
        assert!(now == before, "the temporary file is no file of the mesh");
        assert!(
            Fingerprint::of(&paths) == before,
            "a full look does not see it either"
        );
        std::fs::rename(&temporary, &a).unwrap();
        let now = now.looked_again(&paths, &Look::Files(vec![temporary, a.clone()]));
        assert_eq!(now.changes_since(&before), Changes::Modified(vec![a]));
        // A file given by path is watched whatever its name.
        let registry = dir.path().join("registry");
        std::fs::write(&registry, "{}").unwrap();
        let named = [dir.path().to_owned(), registry.clone()];
        let with_registry = Fingerprint::of(&named);
        std::fs::write(&registry, "{\"services\": []}").unwrap();
        let now = with_registry.looked_again(&named, &Look::Files(vec![registry.clone()]));
        assert_eq!(
            now.changes_since(&with_registry),
            Changes::Modified(vec![registry])
        );
    }

    #[tokio::test]
    async fn a_file_written_is_named_by_a_change_event() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().to_owned()];
        let mut events = ChangeEvents::new().unwrap();
        events.watch(&Fingerprint::of(&paths));
        let file = dir.path().join("a.json");
        std::fs::write(&file, "{}").unwrap();
        // Its creation is skipped (empty yet): its close after writing names it.
        let look = next_look(&mut events).await;
        assert_eq!(look, Look::Files(vec![file]));
        std::fs::create_dir(dir.path().join("more")).unwrap();
        let look = next_look(&mut events).await;
        assert_eq!(look, Look::Everything, "a directory came");
    }

    #[tokio::test]
    async fn a_linked_file_changed_where_it_lives_is_seen_by_its_change_event() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("mesh.json"), "{}").unwrap();
        let watched = dir.path().join("watched");
        std::fs::create_dir(&watched).unwrap();
        std::os::unix::fs::symlink(target.join("mesh.json"), watched.join("mesh.json")).unwrap();
        let paths = [watched];
        let before = Fingerprint::of(&paths);
        let mut events = ChangeEvents::new().unwrap();
        assert!(
            events.watch(&before),
            "both directories report their changes"
        );
        std::fs::write(target.join("mesh.json"), "{\"a\": 1}").unwrap();
        let look = next_look(&mut events).await;
        assert_eq!(look, Look::Files(vec![target.join("mesh.json")]));
        let now = before.looked_again(&paths, &look);
        assert_eq!(
            now.changes_since(&before),
            Changes::Modified(vec![paths[0].join("mesh.json")])
        );
        // Gone where it lives: so is the linked file.
        std::fs::remove_file(target.join("mesh.json")).unwrap();
        let look = next_look(&mut events).await;
        assert_eq!(look, Look::Files(vec![target.join("mesh.json")]));
        assert_eq!(
            now.looked_again(&paths, &look).changes_since(&now),
            Changes::Listing
        );
    }

    #[tokio::test]
    async fn a_directory_watched_by_two_names_has_its_files_named_by_both() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("watched");
        std::fs::create_dir(&watched).unwrap();
        std::fs::write(watched.join("a.json"), "{}").unwrap();
        std::fs::write(watched.join("c.json"), "{}").unwrap();
        std::os::unix::fs::symlink("a.json", watched.join("b.json")).unwrap();
        // Walked as `alias`; the target of `b.json` is in it as `watched`.
        std::os::unix::fs::symlink(&watched, dir.path().join("alias")).unwrap();
        let paths = [dir.path().join("alias")];
        let before = Fingerprint::of(&paths);
        let mut events = ChangeEvents::new().unwrap();
        events.watch(&before);
        std::fs::remove_file(watched.join("c.json")).unwrap();
        let look = next_look(&mut events).await;
        assert_eq!(
            before.looked_again(&paths, &look).changes_since(&before),
            Changes::Listing,
            "{look:?}"
        );
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_watched_does_not_report_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = ChangeEvents::new().unwrap();
        assert!(events.watch(&Fingerprint::of(&[dir.path().to_owned()])));
        let missing = dir.path().join("not-yet").join("registry.json");
        assert!(
            !events.watch(&Fingerprint::of(&[missing])),
            "the directory of a file named by path is not there yet"
        );
    }
}
