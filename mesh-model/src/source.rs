//! Reading App Mesh resources from files: which files ([`files`]), which format each is in
//! (decided here), and the reader for that format: App Mesh API JSON ([`api_json`]),
//! Kubernetes manifests ([`manifest`], converted by [`crate::kubernetes`]) and
//! CloudFormation templates ([`crate::cloudformation`]); `$VAR` placeholders in JSON and
//! manifests ([`placeholders`]).
mod api_json;
mod files;
mod json;
pub mod limits;
mod manifest;
mod placeholders;

pub use files::is_mesh_file;
/// How a Kubernetes manifest is split into documents (the fuzz targets split it the same way).
pub use manifest::yaml_documents;

use std::{
    fs,
    io::Read as _,
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
    for file in mesh_files(paths, &mut loaded.diagnostics) {
        let read = read_file(&file, options);
        loaded.resources.extend(read.resources);
        loaded.diagnostics.extend(read.diagnostics);
        manifests.extend(read.manifests);
    }
    let converted = convert_manifests(&manifests, options, &mut loaded.diagnostics);
    loaded.resources.extend(converted);
    require_resources(loaded.resources.len(), &mut loaded.diagnostics);
    loaded
}

/// The files under `paths` that are read (files, or directories walked recursively), in the
/// order they are read; a directory that cannot be listed is reported.
pub fn mesh_files(paths: &[PathBuf], diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    paths
        .iter()
        .flat_map(|path| files::files_under(path, diagnostics))
        .collect()
}

/// What one file holds: its resources, its Kubernetes objects (converted with every file's,
/// [`convert_manifests`]), and what reading it found.
#[derive(Debug, Default)]
pub struct FileRead {
    pub resources: Vec<Resource>,
    pub manifests: Vec<kubernetes::Document>,
    pub diagnostics: Vec<Diagnostic>,
}

/// The Kubernetes objects of every file read, converted together.
pub fn convert_manifests(
    manifests: &[kubernetes::Document],
    options: &LoadOptions,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Resource> {
    kubernetes::convert(
        manifests,
        options.mesh_name.as_deref(),
        options.parent.as_deref(),
        diagnostics,
    )
}

/// An input of no resource is an error, unless it has one already.
pub fn require_resources(resources: usize, diagnostics: &mut Vec<Diagnostic>) {
    if resources == 0 && !diagnostics.iter().any(Diagnostic::is_error) {
        diagnostics.push(Diagnostic::error(
            "no App Mesh resource in the input: nothing to validate, convert or serve",
        ));
    }
}

/// Reads one file with the reader for its format: JSON by its name (a CloudFormation
/// template when it is one, else API JSON); YAML is a CloudFormation template when it parses
/// as one, else a Kubernetes manifest.
pub fn read_file(file: &Path, options: &LoadOptions) -> FileRead {
    let mut read = FileRead::default();
    let origin = Origin {
        file: file.to_owned(),
        line: None,
    };
    let text = match read_bounded(file) {
        Ok(text) => text,
        Err(diagnostic) => {
            read.diagnostics.push(diagnostic.at(&origin));
            return read;
        }
    };
    // Before any parser: libyaml is quadratic in flow nesting (see `limits`).
    if let Err(error) = limits::check_nesting(&text, limits::MAX_NESTING) {
        let at = match error {
            limits::LimitError::TooDeep { line, .. } => Origin {
                line: Some(line),
                ..origin
            },
            limits::LimitError::TooLarge { .. } => origin,
        };
        read.diagnostics
            .push(Diagnostic::error(error.to_string()).at(&at));
        return read;
    }
    if files::is_json(file) {
        // A template's `${Name}` (in Fn::Sub) is not an envsubst placeholder: templates are
        // recognised before placeholders are looked for, as in YAML.
        match json::parse(&text) {
            Ok(value) => {
                if let Some(template) = json_template(&value) {
                    read.resources = cloudformation::convert(
                        &template,
                        &origin,
                        &text,
                        options,
                        &mut read.diagnostics,
                    );
                    return read;
                }
            }
            // Placeholders do not make a key repeat: reported as found.
            Err(error @ json::JsonError::DuplicateKey { .. }) => {
                read.diagnostics
                    .push(api_json::json_diagnostic(&error, &origin));
                return read;
            }
            // Perhaps a placeholder (`"port": $PORT`): read as API JSON, which says.
            Err(json::JsonError::Syntax(_)) => {}
        }
        match api_json::read(&text, file, options) {
            Ok(resource) => read.resources.push(resource),
            Err(found) => read.diagnostics.extend(found),
        }
        return read;
    }
    // CloudFormation's own ${Name} (in !Sub) is not an envsubst placeholder: templates are
    // recognised before placeholders are looked for.
    if let Some(template) = cloudformation_template(&text) {
        read.resources =
            cloudformation::convert(&template, &origin, &text, options, &mut read.diagnostics);
        return read;
    }
    manifest::read(
        &text,
        file,
        options,
        &mut read.diagnostics,
        &mut read.manifests,
    );
    read
}

/// The file's text, if it is a regular file of at most [`limits::MAX_FILE_BYTES`]. Only
/// that many bytes (and one more) are read, whatever the file claims; a FIFO or device
/// is not opened (opening a FIFO waits for a writer).
fn read_bounded(file: &Path) -> Result<String, Diagnostic> {
    let cannot = |error: std::io::Error| Diagnostic::error(format!("cannot read: {error}"));
    let metadata = fs::metadata(file).map_err(cannot)?;
    if !metadata.is_file() {
        return Err(Diagnostic::error(
            "not a regular file (a FIFO, socket or device is not read)",
        ));
    }
    let too_large = |size: u64| {
        Diagnostic::error(
            limits::LimitError::TooLarge {
                size,
                max: limits::MAX_FILE_BYTES,
            }
            .to_string(),
        )
    };
    if metadata.len() > limits::MAX_FILE_BYTES {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::new();
    fs::File::open(file)
        .and_then(|f| f.take(limits::MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    // The file grew between the check and the read.
    if bytes.len() as u64 > limits::MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|error| {
        Diagnostic::error(format!(
            "cannot read: stream did not contain valid UTF-8 ({error})"
        ))
    })
}

fn cloudformation_template(text: &str) -> Option<serde_yaml::Value> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    cloudformation::is_template(&value).then_some(value)
}

/// A JSON document that is a CloudFormation template, in the form the converter reads.
fn json_template(value: &serde_json::Value) -> Option<serde_yaml::Value> {
    let template = serde_yaml::to_value(value).ok()?;
    cloudformation::is_template(&template).then_some(template)
}
