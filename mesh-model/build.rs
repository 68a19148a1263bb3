//! Generates the Rust types of the App Mesh resource model from the official API model
//! (appmesh/service-2.json): a struct per structure shape, an externally tagged enum per
//! union (App Mesh's `{"dns": {...}}` is serde's default enum form), an enum per string
//! enumeration; lists, strings and numbers inline as Vec, String, i32/i64.
// A build script's panic is a build error that says what failed.
#![allow(clippy::expect_used, clippy::unwrap_used)]
use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use serde_json::Value;

const ROOTS: [&str; 7] = [
    "CreateMeshInput",
    "CreateVirtualNodeInput",
    "CreateVirtualServiceInput",
    "CreateVirtualRouterInput",
    "CreateRouteInput",
    "CreateVirtualGatewayInput",
    "CreateGatewayRouteInput",
];

fn main() {
    let model_path = Path::new("appmesh/service-2.json");
    println!("cargo:rerun-if-changed={}", model_path.display());
    let text = std::fs::read_to_string(model_path).expect("read appmesh/service-2.json");
    let model: Value = serde_json::from_str(&text).expect("service-2.json is JSON");
    let shapes = model["shapes"].as_object().expect("shapes");

    let mut reachable = BTreeSet::new();
    let mut stack: Vec<String> = ROOTS.iter().map(|s| s.to_string()).collect();
    while let Some(name) = stack.pop() {
        if !reachable.insert(name.clone()) {
            continue;
        }
        let shape = &shapes[&name];
        for member in shape["members"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, m)| m)
        {
            stack.push(member["shape"].as_str().expect("member shape").to_owned());
        }
        if let Some(member) = shape["member"]["shape"].as_str() {
            stack.push(member.to_owned());
        }
    }

    let mut out = String::new();
    for name in &reachable {
        let shape = &shapes[name];
        match shape["type"].as_str() {
            Some("structure") if shape["union"].as_bool() == Some(true) => {
                union(&mut out, name, shape, shapes)
            }
            Some("structure") => structure(&mut out, name, shape, shapes),
            Some("string") if shape["enum"].is_array() => enumeration(&mut out, name, shape),
            _ => {}
        }
    }
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("types.rs");
    std::fs::write(dest, out).expect("write types.rs");
}

/// The Rust type a member of shape `name` has.
fn rust_type(name: &str, shapes: &serde_json::Map<String, Value>) -> String {
    let shape = &shapes[name];
    match shape["type"].as_str() {
        Some("structure") => name.to_owned(),
        Some("string") if shape["enum"].is_array() => name.to_owned(),
        Some("string") => "::std::string::String".into(),
        Some("integer") => "i32".into(),
        Some("long") => "i64".into(),
        Some("boolean") => "bool".into(),
        Some("timestamp") => "f64".into(),
        Some("list") => format!(
            "::std::vec::Vec<{}>",
            rust_type(
                shape["member"]["shape"].as_str().unwrap_or_default(),
                shapes
            )
        ),
        other => panic!("shape {name}: unexpected type {other:?}"),
    }
}

fn doc(out: &mut String, shape: &Value, indent: &str) {
    let text = shape["documentation"].as_str().unwrap_or_default();
    let plain = strip_tags(text);
    let first = plain.split(". ").next().unwrap_or_default().trim();
    if !first.is_empty() {
        let _ = writeln!(
            out,
            "{indent}/// {}",
            first.trim_end_matches('.').to_owned() + "."
        );
    }
}

fn strip_tags(text: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace('\n', " ").replace('[', "(").replace(']', ")")
}

fn field_name(member: &str) -> String {
    let mut snake = String::new();
    for (i, c) in member.char_indices() {
        if c.is_ascii_uppercase() {
            if i > 0 && !member[..i].ends_with(|p: char| p.is_ascii_uppercase()) {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    match snake.as_str() {
        "type" | "match" => format!("r#{snake}"),
        _ => snake,
    }
}

/// `awsCloudMap` -> `AwsCloudMap`.
fn pascal(member: &str) -> String {
    let mut chars = member.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// `IPv6_PREFERRED` -> `Ipv6Preferred`, `server-error` -> `ServerError`.
fn variant_name(value: &str) -> String {
    value
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn structure(out: &mut String, name: &str, shape: &Value, shapes: &serde_json::Map<String, Value>) {
    let required: BTreeSet<&str> = shape["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    doc(out, shape, "");
    let _ = writeln!(
        out,
        "#[derive(Clone, Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]"
    );
    let _ = writeln!(out, "#[serde(deny_unknown_fields)]\npub struct {name} {{");
    for (member, definition) in shape["members"].as_object().into_iter().flatten() {
        let ty = rust_type(definition["shape"].as_str().unwrap_or_default(), shapes);
        doc(out, definition, "    ");
        if required.contains(member.as_str()) {
            let _ = writeln!(
                out,
                "    #[serde(rename = \"{member}\")]\n    pub {}: {ty},",
                field_name(member)
            );
        } else {
            let _ = writeln!(
                out,
                "    #[serde(rename = \"{member}\", default, skip_serializing_if = \"::std::option::Option::is_none\")]\n    pub {}: ::std::option::Option<{ty}>,",
                field_name(member)
            );
        }
    }
    let _ = writeln!(out, "}}\n");
}

fn union(out: &mut String, name: &str, shape: &Value, shapes: &serde_json::Map<String, Value>) {
    doc(out, shape, "");
    let _ = writeln!(
        out,
        "#[derive(Clone, Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]"
    );
    let _ = writeln!(out, "pub enum {name} {{");
    for (member, definition) in shape["members"].as_object().into_iter().flatten() {
        let ty = rust_type(definition["shape"].as_str().unwrap_or_default(), shapes);
        let _ = writeln!(
            out,
            "    #[serde(rename = \"{member}\")]\n    {}({ty}),",
            pascal(member)
        );
    }
    let _ = writeln!(out, "}}\n");
}

fn enumeration(out: &mut String, name: &str, shape: &Value) {
    doc(out, shape, "");
    let _ = writeln!(
        out,
        "#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]"
    );
    let _ = writeln!(out, "pub enum {name} {{");
    for value in shape["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let _ = writeln!(
            out,
            "    #[serde(rename = \"{value}\")]\n    {},",
            variant_name(value)
        );
    }
    let _ = writeln!(out, "}}\n");
}
