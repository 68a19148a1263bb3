//! App Mesh API JSON (`aws appmesh create-* --cli-input-json` bodies and `describe-*`
//! answers): the input is one or more JSON documents, each read as one file would be, and
//! the resources go the control plane's way (validated, compiled, planned).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mesh_agent_fuzz::{definitions, origin};
use mesh_model::{
    report::Diagnostic,
    source::{LoadOptions, api_resource},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = LoadOptions::default();
    let mut resources = Vec::new();
    let mut diagnostics = Vec::new();
    for (index, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .enumerate()
    {
        let file = format!("resource-{index}.json");
        match value {
            Ok(value) => match api_resource(value, Path::new(&file), &options) {
                Ok(resource) => resources.push(resource),
                Err(diagnostic) => diagnostics.push(diagnostic.at(&origin(&file, None))),
            },
            Err(error) => {
                diagnostics.push(Diagnostic::error(format!("not valid JSON: {error}")));
                break;
            }
        }
    }
    definitions(&resources, diagnostics, false);
});
