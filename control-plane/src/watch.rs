//! Watching files by polling: a fingerprint of every file under some paths, compared with the
//! last one. A file replaced by a rename (as editors and Kubernetes ConfigMap updates do) is
//! seen like one written in place.
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

/// How often the watched files are checked for changes.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// (path, modified, length) of every file under some paths: a change in any means reload.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(PathBuf, Option<SystemTime>, u64)>);

impl Fingerprint {
    pub(crate) fn of(paths: &[PathBuf]) -> Self {
        let mut files = Vec::new();
        for path in paths {
            collect(path, &mut files);
        }
        files.sort();
        Self(files)
    }
}

fn collect(path: &Path, files: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            collect(&entry.path(), files);
        }
    } else {
        files.push((path.to_owned(), metadata.modified().ok(), metadata.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_or_changed_file_under_a_directory_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().to_owned()];
        let empty = Fingerprint::of(&paths);
        std::fs::write(dir.path().join("a.json"), "{}").unwrap();
        let one = Fingerprint::of(&paths);
        assert!(one != empty);
        assert!(Fingerprint::of(&paths) == one, "nothing changed");
        std::fs::write(dir.path().join("a.json"), "{\"a\": 1}").unwrap();
        assert!(Fingerprint::of(&paths) != one, "a longer file");
    }
}
