//! Kubernetes `appmesh.k8s.aws/v1beta2` manifests: the input is one YAML stream, split into
//! documents as mesh-model's manifest reader does, converted the controller's way, and the
//! resources go the control plane's way (validated, compiled, planned).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mesh_agent_fuzz::{definitions, origin};
use mesh_model::{kubernetes, report::Diagnostic, source::yaml_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut documents = Vec::new();
    let mut diagnostics = Vec::new();
    for (line, chunk) in yaml_documents(text) {
        let at = origin("manifest.yaml", Some(line));
        let value: serde_yaml::Value = match serde_yaml::from_str(chunk) {
            Ok(value) => value,
            Err(error) => {
                diagnostics.push(Diagnostic::error(format!("not valid YAML: {error}")).at(&at));
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        match serde_json::to_value(&value) {
            Ok(value) => documents.push(kubernetes::Document { value, origin: at }),
            Err(error) => diagnostics.push(Diagnostic::error(error.to_string()).at(&at)),
        }
    }
    let resources = kubernetes::convert(&documents, None, None, &mut diagnostics);
    definitions(&resources, diagnostics, true);
});
