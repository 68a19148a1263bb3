//! App Mesh definitions read from files and validated: what the control plane serves, and
//! what the command line validates, converts and compiles.
use std::path::PathBuf;

use crate::compile::MeshIndex;
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
    validated(loaded.resources, loaded.diagnostics, options)
}

/// Validates resources read from any source (files, the Kubernetes API), adding to what
/// reading them found.
pub fn validated(
    mut resources: Vec<Resource>,
    mut diagnostics: Vec<Diagnostic>,
    options: &InputOptions,
) -> (Vec<Resource>, Vec<Diagnostic>) {
    diagnostics.extend(validate::validate(
        &resources,
        Options {
            check_references: !options.partial,
            lenient: options.lenient,
        },
    ));
    if options.lenient {
        validate::drop_unknown_kubernetes_fields(&mut resources);
    }
    (resources, diagnostics)
}

/// The mesh `resources` make, compiled; the report instead when it has an error.
pub fn compiled(
    resources: Vec<Resource>,
    diagnostics: &[Diagnostic],
) -> Result<MeshIndex, Vec<Diagnostic>> {
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(diagnostics.to_vec());
    }
    MeshIndex::new(&resources).map_err(|e| vec![Diagnostic::error(e.to_string())])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MANIFEST: &str = "\
apiVersion: appmesh.k8s.aws/v1beta2
kind: Mesh
metadata: {name: m}
spec:
  egressFilter: {type: ALLOW_ALL, surprise: 1}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: {name: n, namespace: x}
spec:
  listeners: [{portMapping: {port: 80, protocol: http}}]
  serviceDiscovery: {dns: {hostname: n.x}}
  backendDefaults:
    clientPolicy: {tls: {mode: STRICT, validation: {trust: {file: {certificateChain: /ca.pem}}}}}
";

    #[test]
    fn lenient_drops_unknown_kubernetes_fields_for_everything_after_validation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, MANIFEST).unwrap();
        let strict = InputOptions::default();
        let (_, diagnostics) = load(std::slice::from_ref(&file), &strict);
        assert_eq!(diagnostics.iter().filter(|d| d.is_error()).count(), 2);

        let lenient = InputOptions {
            lenient: true,
            ..InputOptions::default()
        };
        let (resources, diagnostics) = load(&[file], &lenient);
        assert!(
            !diagnostics.iter().any(Diagnostic::is_error),
            "{diagnostics:?}"
        );
        let notes: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("spec.egressFilter.surprise")),
            "{notes:?}"
        );
        assert_eq!(
            resources[0].spec().unwrap()["egressFilter"],
            serde_json::json!({"type": "ALLOW_ALL"})
        );
        let policy = &resources[1].spec().unwrap()["backendDefaults"]["clientPolicy"]["tls"];
        assert!(policy.get("mode").is_none(), "{policy}");
        // What is compiled is what is valid.
        MeshIndex::new(&resources).unwrap();
    }
}
