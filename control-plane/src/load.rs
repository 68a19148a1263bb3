//! App Mesh definitions read from files and validated: what the control plane serves, and
//! what the command line validates, converts and compiles.
use std::path::PathBuf;

use mesh_model::{
    load_options::LoadOptions,
    report::Diagnostic,
    resource::Resource,
    source,
    validate::{self, Options},
};

/// How to read App Mesh definitions.
#[derive(Clone, Debug, Default)]
pub struct InputOptions {
    /// Placeholders, and what files that hold only a spec leave to the caller.
    pub source: LoadOptions,
    /// The input is part of a mesh defined elsewhere: referenced meshes, nodes, services,
    /// routers and gateways need not be among it.
    pub partial: bool,
    /// Unknown fields in Kubernetes resources are notes, not errors (the CRDs accept and
    /// ignore them).
    pub lenient: bool,
}

/// Reads and validates `paths` (files or directories): the resources and everything found
/// about them.
pub fn load(paths: &[PathBuf], options: &InputOptions) -> (Vec<Resource>, Vec<Diagnostic>) {
    let loaded = source::load(paths, &options.source);
    let mut diagnostics = loaded.diagnostics;
    diagnostics.extend(validate::validate(
        &loaded.resources,
        Options {
            check_references: !options.partial,
            lenient: options.lenient,
        },
    ));
    (loaded.resources, diagnostics)
}
