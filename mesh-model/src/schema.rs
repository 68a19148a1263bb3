//! The App Mesh API model (botocore's service-2.json) at runtime: every structure, list,
//! string, number and enum of the API, and a validator that walks a JSON document against a
//! shape and reports every violation with its field path.
use std::{
    collections::{BTreeMap, HashMap},
    sync::OnceLock,
};

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::Path;

static MODEL_JSON: &str = include_str!("../appmesh/service-2.json");

#[derive(Debug, Deserialize)]
struct ModelFile {
    shapes: HashMap<String, Shape>,
}

#[derive(Debug, Deserialize)]
pub struct Shape {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
    #[serde(default)]
    pub required: Vec<String>,
    pub member: Option<Member>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub pattern: Option<String>,
    #[serde(rename = "enum")]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub union: bool,
}

#[derive(Debug, Deserialize)]
pub struct Member {
    pub shape: String,
    /// The API reference's text for the member (HTML).
    pub documentation: Option<String>,
}

pub struct Model {
    shapes: HashMap<String, Shape>,
    patterns: HashMap<String, Regex>,
}

/// How an unknown-field violation's message starts.
pub const UNKNOWN_FIELD: &str = "unknown field";

/// One violation of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

/// The API model, parsed once.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        // The model is compiled in; a parse failure is a build defect caught by every test.
        let file: ModelFile = serde_json::from_str(MODEL_JSON)
            .unwrap_or_else(|error| panic!("embedded service-2.json does not parse: {error}"));
        let patterns = file
            .shapes
            .iter()
            .filter_map(|(name, shape)| {
                let regex = Regex::new(shape.pattern.as_deref()?).ok()?;
                Some((name.clone(), regex))
            })
            .collect();
        Model {
            shapes: file.shapes,
            patterns,
        }
    })
}

impl Model {
    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.shapes.get(name)
    }

    /// Every violation of shape `shape` by `value`, paths starting at `path`.
    pub fn validate(&self, shape: &str, value: &Value, path: &Path) -> Vec<Violation> {
        let mut out = Vec::new();
        self.walk(shape, value, path, &mut out);
        out
    }

    fn walk(&self, shape_name: &str, value: &Value, path: &Path, out: &mut Vec<Violation>) {
        let Some(shape) = self.shapes.get(shape_name) else {
            return;
        };
        let mut fail = |message: String| {
            out.push(Violation {
                path: path.to_string(),
                message,
            })
        };
        match shape.kind.as_str() {
            "structure" => match value.as_object() {
                Some(object) => self.walk_structure(shape, object, path, out),
                None => fail(format!("must be an object, found {}", describe(value))),
            },
            "list" => match value.as_array() {
                Some(items) => {
                    check_count(shape, items.len(), "items", &mut fail);
                    if let Some(member) = &shape.member {
                        for (index, item) in items.iter().enumerate() {
                            self.walk(&member.shape, item, &path.index(index), out);
                        }
                    }
                }
                None => fail(format!("must be a list, found {}", describe(value))),
            },
            "string" => match value.as_str() {
                Some(text) => self.check_string(shape_name, shape, text, &mut fail),
                None => fail(format!("must be a string, found {}", describe(value))),
            },
            "integer" | "long" => match value.as_i64() {
                Some(number) => {
                    let n = number as f64;
                    if shape.min.is_some_and(|min| n < min) || shape.max.is_some_and(|max| n > max)
                    {
                        fail(format!("{number} is out of range {}", range(shape)));
                    }
                }
                None => fail(format!("must be an integer, found {}", describe(value))),
            },
            "boolean" if !value.is_boolean() => {
                fail(format!("must be true or false, found {}", describe(value)))
            }
            "timestamp" if !(value.is_number() || value.is_string()) => {
                fail(format!("must be a timestamp, found {}", describe(value)))
            }
            _ => {}
        }
    }

    fn walk_structure(
        &self,
        shape: &Shape,
        object: &serde_json::Map<String, Value>,
        path: &Path,
        out: &mut Vec<Violation>,
    ) {
        for (key, value) in object {
            match shape.members.get(key) {
                Some(member) => self.walk(&member.shape, value, &path.field(key), out),
                None => out.push(Violation {
                    path: path.field(key).to_string(),
                    message: format!(
                        "{UNKNOWN_FIELD}; expected one of: {}",
                        shape.members.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                }),
            }
        }
        for required in &shape.required {
            if object.get(required).is_none_or(Value::is_null) {
                out.push(Violation {
                    path: path.field(required).to_string(),
                    message: "is required".into(),
                });
            }
        }
        if shape.union {
            let set: Vec<&String> = shape
                .members
                .keys()
                .filter(|key| object.get(*key).is_some_and(|v| !v.is_null()))
                .collect();
            if set.len() != 1 {
                let members = shape.members.keys().cloned().collect::<Vec<_>>().join(", ");
                out.push(Violation {
                    path: path.to_string(),
                    message: match set.as_slice() {
                        [] => format!("must set exactly one of: {members}"),
                        many => format!(
                            "sets {}; exactly one of {members} is allowed",
                            many.iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                    },
                });
            }
        }
    }

    /// Removes every member of `value` that shape `shape` does not have, at any depth (what
    /// a CRD that preserves unknown fields hands the controller, which ignores them).
    pub fn remove_unknown(&self, shape_name: &str, value: &mut Value) {
        let Some(shape) = self.shapes.get(shape_name) else {
            return;
        };
        match value {
            Value::Object(object) if shape.kind == "structure" => {
                object.retain(|key, _| shape.members.contains_key(key));
                for (key, child) in object.iter_mut() {
                    if let Some(member) = shape.members.get(key) {
                        self.remove_unknown(&member.shape, child);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(member) = &shape.member {
                    for item in items {
                        self.remove_unknown(&member.shape, item);
                    }
                }
            }
            _ => {}
        }
    }

    fn check_string(&self, name: &str, shape: &Shape, text: &str, fail: &mut impl FnMut(String)) {
        if let Some(values) = &shape.values
            && !values.iter().any(|v| v == text)
        {
            fail(format!("\"{text}\" is not one of: {}", values.join(", ")));
            return;
        }
        check_count(shape, text.chars().count(), "characters", fail);
        if let Some(pattern) = self.patterns.get(name)
            && !pattern.is_match(text)
        {
            fail(format!(
                "\"{text}\" does not match the pattern {}",
                shape.pattern.as_deref().unwrap_or_default()
            ));
        }
    }
}

fn check_count(shape: &Shape, count: usize, unit: &str, fail: &mut impl FnMut(String)) {
    let n = count as f64;
    if shape.min.is_some_and(|min| n < min) || shape.max.is_some_and(|max| n > max) {
        fail(format!("has {count} {unit}; allowed {}", range(shape)));
    }
}

fn range(shape: &Shape) -> String {
    match (shape.min, shape.max) {
        (Some(min), Some(max)) => format!("{min}..{max}"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => "any".into(),
    }
}

pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(shape: &str, value: Value) -> Vec<(String, String)> {
        model()
            .validate(shape, &value, &Path::root("spec"))
            .into_iter()
            .map(|v| (v.path, v.message))
            .collect()
    }

    #[test]
    fn model_loads_every_kind() {
        for shape in [
            "MeshSpec",
            "VirtualNodeSpec",
            "VirtualServiceSpec",
            "VirtualRouterSpec",
            "RouteSpec",
            "VirtualGatewaySpec",
            "GatewayRouteSpec",
        ] {
            assert!(model().shape(shape).is_some(), "{shape}");
        }
    }

    #[test]
    fn valid_virtual_node_has_no_violations() {
        let spec = json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "a.local"}},
            "backends": [{"virtualService": {"virtualServiceName": "b.local"}}]
        });
        assert_eq!(check("VirtualNodeSpec", spec), vec![]);
    }

    #[test]
    fn reports_every_violation_with_its_path() {
        let spec = json!({
            "listeners": [{"portMapping": {"port": 70000, "protocol": "htp"}, "extra": 1}],
            "serviceDiscovery": {"dns": {"hostname": "a"}, "awsCloudMap": {"namespaceName": "n", "serviceName": "s"}},
        });
        let found = check("VirtualNodeSpec", spec);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.listeners[0].extra",
                "spec.listeners[0].portMapping.port",
                "spec.listeners[0].portMapping.protocol",
                "spec.serviceDiscovery",
            ],
            "{found:?}"
        );
        assert!(found[1].1.contains("out of range 1..65535"), "{found:?}");
        assert!(
            found[2]
                .1
                .contains("\"htp\" is not one of: http, tcp, http2, grpc")
        );
        assert!(found[3].1.contains("sets awsCloudMap and dns"));
    }

    #[test]
    fn required_members_and_types() {
        let found = check("RouteSpec", json!({"httpRoute": {"match": {"prefix": 5}}}));
        assert!(
            found.contains(&("spec.httpRoute.action".into(), "is required".into())),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(p, m)| p == "spec.httpRoute.match.prefix" && m.contains("must be a string"))
        );
    }

    #[test]
    fn patterns_are_enforced() {
        let found = check(
            "AwsCloudMapInstanceAttribute",
            json!({"key": "bad key with spaces", "value": "v"}),
        );
        assert!(
            found
                .iter()
                .any(|(p, m)| p == "spec.key" && m.contains("pattern")),
            "{found:?}"
        );
    }
}
