//! CloudFormation templates with `AWS::AppMesh::*` resources: the input is one template
//! (YAML or JSON), recognised and converted as mesh-model's reader does (`!Ref`, `!GetAtt`,
//! `!Sub`, parameters), and the resources go the control plane's way (validated, compiled,
//! planned).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mesh_agent_fuzz::{definitions, origin};
use mesh_model::{cloudformation, source::LoadOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return;
    };
    if !cloudformation::is_template(&template) {
        return;
    }
    let options = LoadOptions {
        parameters: vec![("AWS::StackName".into(), "fuzz".into())],
        ..LoadOptions::default()
    };
    let mut diagnostics = Vec::new();
    let resources = cloudformation::convert(
        &template,
        &origin("template.yaml", None),
        text,
        &options,
        &mut diagnostics,
    );
    definitions(&resources, diagnostics, false);
});
