//! File discovery: which files under the paths given are read, and the name that tells a
//! file's format (an envsubst template `x.yaml.template` is read as the `x.yaml` it produces).
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{report::Diagnostic, resource::Origin};

/// `path` itself if it is a file, else the mesh files under it (recursively, sorted); a
/// directory that cannot be listed is reported.
pub(super) fn files_under(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => {
            let origin = Origin {
                file: path.to_owned(),
                line: None,
            };
            diagnostics.push(Diagnostic::error(format!("cannot read: {error}")).at(&origin));
            return Vec::new();
        }
    };
    let mut children: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    children.sort();
    children
        .into_iter()
        .flat_map(|child| {
            if child.is_dir() {
                files_under(&child, diagnostics)
            } else if is_mesh_file(&child) {
                vec![child]
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// Whether a file found in a directory is read: JSON and YAML files, and their envsubst
/// templates (`manifest.yaml.template`).
pub fn is_mesh_file(path: &Path) -> bool {
    let name = format_name(path);
    [".json", ".yaml", ".yml"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Whether the file is App Mesh API JSON (anything else read is YAML).
pub(super) fn is_json(path: &Path) -> bool {
    format_name(path).ends_with(".json")
}

/// The file name that tells the format: an envsubst template (`x.yaml.template`) is read as
/// the file it produces.
fn format_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".template")
        .map(str::to_owned)
        .unwrap_or(name)
}
