//! Reading App Mesh resources from files: which files ([`files`]), which format each is in
//! (decided here), and the reader for that format: App Mesh API JSON ([`api_json`]),
//! Kubernetes manifests ([`manifest`], converted by [`crate::kubernetes`]) and
//! CloudFormation templates ([`crate::cloudformation`]); `$VAR` placeholders in JSON and
//! manifests ([`placeholders`]).
mod api_json;
mod files;
mod manifest;
mod placeholders;

use std::{
    fs,
    path::{Path, PathBuf},
};

pub use api_json::api_resource;

pub use crate::load_options::{LoadOptions, Placeholders};
use crate::{
    cloudformation, kubernetes,
    report::Diagnostic,
    resource::{Origin, Resource},
};

/// Everything read from `paths` (files, or directories walked recursively).
#[derive(Debug, Default)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
}

pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Loaded {
    let mut loaded = Loaded::default();
    // Kubernetes objects refer to each other across files (a Mesh here, its nodes there):
    // they are converted together once everything is read.
    let mut manifests = Vec::new();
    for path in paths {
        for file in files::files_under(path, &mut loaded.diagnostics) {
            load_file(&file, options, &mut loaded, &mut manifests);
        }
    }
    let converted = kubernetes::convert(
        &manifests,
        options.mesh_name.as_deref(),
        options.parent.as_deref(),
        &mut loaded.diagnostics,
    );
    loaded.resources.extend(converted);
    loaded
}

/// Reads one file with the reader for its format: JSON by its name; YAML is a
/// CloudFormation template when it parses as one, else a Kubernetes manifest.
fn load_file(
    file: &Path,
    options: &LoadOptions,
    loaded: &mut Loaded,
    manifests: &mut Vec<kubernetes::Document>,
) {
    let origin = Origin {
        file: file.to_owned(),
        line: None,
    };
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            loaded
                .diagnostics
                .push(Diagnostic::error(format!("cannot read: {error}")).at(&origin));
            return;
        }
    };
    if files::is_json(file) {
        match api_json::read(&text, file, options) {
            Ok(resource) => loaded.resources.push(resource),
            Err(found) => loaded.diagnostics.extend(found),
        }
        return;
    }
    // CloudFormation's own ${Name} (in !Sub) is not an envsubst placeholder: templates are
    // recognised before placeholders are looked for.
    if let Some(template) = cloudformation_template(&text) {
        let converted =
            cloudformation::convert(&template, &origin, &text, options, &mut loaded.diagnostics);
        loaded.resources.extend(converted);
        return;
    }
    manifest::read(&text, file, options, &mut loaded.diagnostics, manifests);
}

fn cloudformation_template(text: &str) -> Option<serde_yaml::Value> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    cloudformation::is_template(&value).then_some(value)
}
