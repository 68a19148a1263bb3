//! CloudFormation templates: `AWS::AppMesh::*` resources converted to the API's form.
//! Keys are matched to the API's members case-insensitively, guided by the API model (so
//! `AWSCloudMap`, `DNS`, `TLS`, `HTTP2` and `HttpRoute` all find their member); `!Ref` and
//! `!GetAtt` to App Mesh resources of the same template, `!Sub` over them, parameters
//! (their defaults, or values given with `--parameter`), pseudo parameters (defaults below),
//! `Conditions` with `!If` and resources' `Condition`, `!Join`, `!Select`, `AWS::NoValue`,
//! `!ImportValue` of exports given with `--import` ([`functions`]) are resolved; anything
//! else — attributes only known after deployment — is reported as unresolvable.
mod functions;

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    fmt,
};

use serde_json::{Map, Number, Value as Json};
use serde_yaml::Value as Yaml;

use crate::{
    Path,
    load_options::LoadOptions,
    report::Diagnostic,
    resource::{Format, Kind, Origin, Resource},
    schema,
};

/// How deeply references may lead to references (`!GetAtt` of a name that is a `!Sub` of
/// another `!GetAtt`...): a cycle ends here.
const MAX_DEPTH: usize = 16;

/// How many bytes the intrinsic functions of one file may produce in all (each `!Ref`,
/// `!GetAtt` and `!Sub` result counted, plus one per call). Without a bound a few KiB of
/// `!Sub`s referring to each other many times expand exponentially (12 s and 240 MB for
/// 1.8 KiB), and a 1 MiB parameter in a `!Sub` 2 000 times asks for 2 GB. A mesh's names
/// and hostnames are well under 1 KiB each.
pub const MAX_EXPANSION_BYTES: usize = 1024 * 1024;

pub fn is_template(value: &Yaml) -> bool {
    value.get("Resources").is_some_and(Yaml::is_mapping)
        && (value.get("AWSTemplateFormatVersion").is_some()
            || value["Resources"]
                .as_mapping()
                .into_iter()
                .flatten()
                .any(|(_, r)| {
                    r.get("Type")
                        .and_then(Yaml::as_str)
                        .is_some_and(|t| t.starts_with("AWS::"))
                }))
}

fn kind_of(resource_type: &str) -> Option<Kind> {
    let name = resource_type.strip_prefix("AWS::AppMesh::")?;
    Kind::ALL.into_iter().find(|k| k.name() == name)
}

pub fn convert(
    template: &Yaml,
    origin: &Origin,
    text: &str,
    options: &LoadOptions,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Resource> {
    let resolver = Resolver::new(template, options);
    let mut resources = Vec::new();
    for (id, resource) in template["Resources"].as_mapping().into_iter().flatten() {
        let id = id.as_str().unwrap_or_default();
        let resource_type = resource
            .get("Type")
            .and_then(Yaml::as_str)
            .unwrap_or_default();
        let Some(kind) = kind_of(resource_type) else {
            continue;
        };
        let origin = Origin {
            file: origin.file.clone(),
            line: line_of(text, id)
                .map(|l| l + origin.line.unwrap_or(1) - 1)
                .or(origin.line),
        };
        let label = format!("{kind} {id}");
        let created = match resource.get("Condition").and_then(Yaml::as_str) {
            Some(condition) => resolver.condition_named(condition, &Path::root("Condition"), 0),
            None => Ok(true),
        };
        let properties = resource.get("Properties").cloned().unwrap_or(Yaml::Null);
        let resolved = match created.and_then(|created| {
            if created {
                resolver.resolve(&properties, &Path::root(""), 0)
            } else {
                Ok(None)
            }
        }) {
            Ok(Some(value)) => value,
            // Its Condition is false: CloudFormation does not create it.
            Ok(None) if resource.get("Condition").is_some() => continue,
            Ok(None) => Json::Null,
            Err(Unresolved { path, problem }) => {
                diagnostics.push(
                    Diagnostic::error(problem.to_string())
                        .at(&origin)
                        .resource(label)
                        .path(path.to_string()),
                );
                continue;
            }
        };
        let Json::Object(body) = api_keys(resolved, &kind.create_shape()) else {
            diagnostics.push(
                Diagnostic::error("Properties must be a mapping")
                    .at(&origin)
                    .resource(label),
            );
            continue;
        };
        resources.push(Resource {
            kind,
            body,
            origin,
            format: Format::CloudFormation,
        });
    }
    resources
}

/// The line of `  LogicalId:` within the template text (1-based).
fn line_of(text: &str, id: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let trimmed = line.trim_start();
            line.len() > trimmed.len()
                && trimmed
                    .strip_prefix(id)
                    .is_some_and(|rest| rest.trim() == ":")
        })
        .map(|index| index + 1)
}

/// Renames keys to the API's members of `shape` (case-insensitively), recursively, and turns
/// numeric and boolean strings into numbers and booleans where the API wants them.
fn api_keys(value: Json, shape_name: &str) -> Json {
    let model = schema::model();
    let Some(shape) = model.shape(shape_name) else {
        return value;
    };
    match (shape.kind.as_str(), value) {
        ("structure", Json::Object(object)) => Json::Object(
            object
                .into_iter()
                .map(|(key, child)| {
                    match shape
                        .members
                        .iter()
                        .find(|(m, _)| m.eq_ignore_ascii_case(&key))
                    {
                        Some((member, def)) => (member.clone(), api_keys(child, &def.shape)),
                        None => (key, child),
                    }
                })
                .collect(),
        ),
        ("list", Json::Array(items)) => match &shape.member {
            Some(member) => Json::Array(
                items
                    .into_iter()
                    .map(|i| api_keys(i, &member.shape))
                    .collect(),
            ),
            None => Json::Array(items),
        },
        ("integer" | "long", Json::String(text)) => match text.parse::<i64>() {
            Ok(number) => Json::Number(number.into()),
            Err(_) => Json::String(text),
        },
        ("boolean", Json::String(text)) => match text.as_str() {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => Json::String(text),
        },
        (_, value) => value,
    }
}

/// A value that cannot be resolved, at `path` within the resource's Properties.
struct Unresolved {
    path: Path,
    problem: ResolveError,
}

/// Why an intrinsic function or reference cannot be resolved from the template alone.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("references nest too deeply (a cycle?)")]
    TooDeep,
    #[error(
        "intrinsic functions (!Ref, !GetAtt, !Sub) in this file expand to more than {limit} bytes; not expanded further"
    )]
    TooLarge { limit: usize },
    #[error("!Ref takes a name")]
    RefArgument,
    #[error("!GetAtt {text}: expected Resource.Attribute")]
    GetAttNoDot { text: String },
    #[error("!GetAtt takes [Resource, Attribute]")]
    GetAttList,
    #[error("!GetAtt takes Resource.Attribute")]
    GetAttArgument,
    #[error("!Sub takes a string")]
    SubArgument,
    #[error("!Sub {text:?}: unclosed ${{")]
    SubUnclosed { text: String },
    #[error(
        "!{function} cannot be resolved without deploying the template; only !Ref, !GetAtt, !Sub, !If, !Join, !Select and !ImportValue (with --import) over this template's App Mesh resources, parameters and conditions are"
    )]
    Unsupported { function: String },
    #[error("!{function}: {problem}")]
    BadArgument {
        function: &'static str,
        problem: &'static str,
    },
    #[error("condition {name} is not in the template's Conditions")]
    UnknownCondition { name: String },
    #[error("!ImportValue {name}: no export of that name; give it with --import {name}=VALUE")]
    UnknownImport { name: String },
    #[error("!Select index {index} is out of range for a list of {len}")]
    SelectOutOfRange { index: usize, len: usize },
    #[error(
        "!Ref {name} gives the ARN of the {resource_type}, not its name; use !GetAtt {name}.{name_attribute}"
    )]
    RefGivesArn {
        name: String,
        resource_type: String,
        name_attribute: &'static str,
    },
    #[error(
        "!Ref {name} cannot be resolved: not a parameter with a Default, a --parameter, or a resource of this template"
    )]
    UnknownRef { name: String },
    #[error("!GetAtt {target}: no resource {} in this template", target.id)]
    NoSuchResource { target: AttributeRef },
    #[error(
        "!GetAtt {target}: {} is a {resource_type}, not an App Mesh resource; give what deploying it would give with --parameter {target}=VALUE",
        target.id
    )]
    NotAppMesh {
        target: AttributeRef,
        resource_type: String,
    },
    #[error("!GetAtt {target} is {found}, not a name")]
    NotAName { target: AttributeRef, found: String },
    #[error(
        "!GetAtt {target} is only known after deployment (names are: MeshName, VirtualNodeName, ...); give it with --parameter {target}=VALUE"
    )]
    AfterDeployment { target: AttributeRef },
}

/// The `Id.Attribute` of a `!GetAtt`.
#[derive(Debug)]
struct AttributeRef {
    id: String,
    attribute: String,
}

impl fmt::Display for AttributeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.attribute)
    }
}

impl ResolveError {
    fn at(self, path: &Path) -> Unresolved {
        Unresolved {
            path: path.clone(),
            problem: self,
        }
    }
}

/// Pseudo parameters a template may name without declaring, with the values a template is
/// read with unless `--parameter` gives others (an account id and a region AWS's own
/// examples use).
const PSEUDO_PARAMETERS: &[(&str, &str)] = &[
    ("AWS::AccountId", "123456789012"),
    ("AWS::Region", "us-east-1"),
    ("AWS::Partition", "aws"),
    ("AWS::URLSuffix", "amazonaws.com"),
    ("AWS::StackName", "stack"),
];

/// `!Ref AWS::NoValue`: the member or item it stands for is left out.
const NO_VALUE: &str = "AWS::NoValue";

struct Resolver<'a> {
    template: &'a Yaml,
    parameters: HashMap<String, Json>,
    /// Other stacks' exports (`--import Name=value`), for `!ImportValue`.
    imports: HashMap<String, String>,
    /// Bytes the intrinsic functions may still produce (of [`MAX_EXPANSION_BYTES`]).
    budget: Cell<usize>,
    /// Names already resolved (`Id.Attribute`): a name used many times is expanded once.
    attributes: RefCell<HashMap<(String, String), String>>,
}

impl<'a> Resolver<'a> {
    fn new(template: &'a Yaml, options: &LoadOptions) -> Self {
        let mut parameters: HashMap<String, Json> = template
            .get("Parameters")
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(name, definition)| {
                let default = definition.get("Default")?;
                Some((
                    name.as_str()?.to_owned(),
                    serde_json::to_value(default).ok()?,
                ))
            })
            .collect();
        for (name, value) in PSEUDO_PARAMETERS {
            parameters.insert((*name).to_owned(), Json::String((*value).to_owned()));
        }
        for (name, value) in &options.parameters {
            parameters.insert(name.clone(), Json::String(value.clone()));
        }
        Self {
            template,
            parameters,
            imports: options.imports.iter().cloned().collect(),
            budget: Cell::new(MAX_EXPANSION_BYTES),
            attributes: RefCell::default(),
        }
    }

    /// Takes `bytes` produced (and one for the call, so that many calls producing nothing
    /// end too) from the file's budget.
    fn charge(&self, bytes: usize, path: &Path) -> Result<(), Unresolved> {
        let cost = bytes.saturating_add(1);
        match self.budget.get().checked_sub(cost) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => {
                self.budget.set(0);
                Err(ResolveError::TooLarge {
                    limit: MAX_EXPANSION_BYTES,
                }
                .at(path))
            }
        }
    }

    /// The value of `value` with every intrinsic function applied; None for `AWS::NoValue`.
    fn resolve(&self, value: &Yaml, path: &Path, depth: usize) -> Result<Option<Json>, Unresolved> {
        if depth > MAX_DEPTH {
            return Err(ResolveError::TooDeep.at(path));
        }
        match value {
            Yaml::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                self.intrinsic(tag.trim_start_matches('!'), &tagged.value, path, depth)
            }
            Yaml::Mapping(mapping) => {
                if mapping.len() == 1
                    && let Some((Yaml::String(key), argument)) = mapping.iter().next()
                    && (key == "Ref" || key.starts_with("Fn::"))
                {
                    return self.intrinsic(key.trim_start_matches("Fn::"), argument, path, depth);
                }
                let mut object = Map::new();
                for (key, child) in mapping {
                    let key = match key {
                        Yaml::String(key) => key.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    if let Some(child) = self.resolve(child, &path.field(&key), depth)? {
                        object.insert(key, child);
                    }
                }
                Ok(Some(Json::Object(object)))
            }
            Yaml::Sequence(items) => {
                let mut resolved = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    resolved.extend(self.resolve(item, &path.index(i), depth)?);
                }
                Ok(Some(Json::Array(resolved)))
            }
            Yaml::Null => Ok(Some(Json::Null)),
            Yaml::Bool(b) => Ok(Some(Json::Bool(*b))),
            Yaml::Number(n) => Ok(Some(
                n.as_i64()
                    .map(Number::from)
                    .or_else(|| n.as_f64().and_then(Number::from_f64))
                    .map_or(Json::Null, Json::Number),
            )),
            Yaml::String(s) => Ok(Some(Json::String(s.clone()))),
        }
    }

    /// A value that must be there (not `AWS::NoValue`).
    fn resolve_present(&self, value: &Yaml, path: &Path, depth: usize) -> Result<Json, Unresolved> {
        Ok(self.resolve(value, path, depth)?.unwrap_or(Json::Null))
    }

    fn intrinsic(
        &self,
        function: &str,
        argument: &Yaml,
        path: &Path,
        depth: usize,
    ) -> Result<Option<Json>, Unresolved> {
        let fail = |problem: ResolveError| Err(problem.at(path));
        match function {
            "Ref" => {
                let Some(name) = argument.as_str() else {
                    return fail(ResolveError::RefArgument);
                };
                if name == NO_VALUE {
                    return Ok(None);
                }
                self.reference(name, path).map(Some)
            }
            "GetAtt" => {
                let (id, attribute) = match argument {
                    Yaml::String(text) => match text.split_once('.') {
                        Some(parts) => parts,
                        None => {
                            return fail(ResolveError::GetAttNoDot { text: text.clone() });
                        }
                    },
                    Yaml::Sequence(items) if items.len() == 2 => {
                        match (items[0].as_str(), items[1].as_str()) {
                            (Some(id), Some(attribute)) => (id, attribute),
                            _ => return fail(ResolveError::GetAttList),
                        }
                    }
                    _ => return fail(ResolveError::GetAttArgument),
                };
                self.attribute(id, attribute, path, depth)
                    .map(|name| Some(Json::String(name)))
            }
            "Sub" => {
                let (text, variables) = match argument {
                    Yaml::String(text) => (text.as_str(), None),
                    Yaml::Sequence(items) if items.len() == 2 => match items[0].as_str() {
                        Some(text) => (text, items[1].as_mapping()),
                        None => return fail(ResolveError::SubArgument),
                    },
                    _ => return fail(ResolveError::SubArgument),
                };
                self.substitute(text, variables, path, depth)
                    .map(|text| Some(Json::String(text)))
            }
            "If" => self.if_then_else(argument, path, depth),
            "Join" => self.join(argument, path, depth).map(Some),
            "Select" => self.select(argument, path, depth).map(Some),
            "ImportValue" => self.import(argument, path, depth).map(Some),
            other => fail(ResolveError::Unsupported {
                function: other.to_owned(),
            }),
        }
    }

    fn reference(&self, name: &str, path: &Path) -> Result<Json, Unresolved> {
        if let Some(value) = self.parameters.get(name) {
            // Charged before the copy is made.
            self.charge(json_size(value), path)?;
            return Ok(value.clone());
        }
        if let Some(resource_type) = self.resource_type(name) {
            if let Some(value) = self.resource_ref(name, resource_type, path)? {
                return Ok(value);
            }
            return Err(ResolveError::RefGivesArn {
                name: name.to_owned(),
                resource_type: resource_type.to_owned(),
                name_attribute: kind_of(resource_type).map_or("Name", |k| k.name_field_pascal()),
            }
            .at(path));
        }
        Err(ResolveError::UnknownRef {
            name: name.to_owned(),
        }
        .at(path))
    }

    fn resource_type(&self, id: &str) -> Option<&str> {
        self.template
            .get("Resources")?
            .get(id)?
            .get("Type")?
            .as_str()
    }

    /// `!GetAtt Id.VirtualNodeName` and the like: the name property of an App Mesh resource.
    fn attribute(
        &self,
        id: &str,
        attribute: &str,
        path: &Path,
        depth: usize,
    ) -> Result<String, Unresolved> {
        let key = (id.to_owned(), attribute.to_owned());
        if let Some(known) = self.attributes.borrow().get(&key) {
            self.charge(known.len(), path)?;
            return Ok(known.clone());
        }
        let name = self.attribute_uncached(id, attribute, path, depth)?;
        self.charge(name.len(), path)?;
        self.attributes.borrow_mut().insert(key, name.clone());
        Ok(name)
    }

    fn attribute_uncached(
        &self,
        id: &str,
        attribute: &str,
        path: &Path,
        depth: usize,
    ) -> Result<String, Unresolved> {
        let target = || AttributeRef {
            id: id.to_owned(),
            attribute: attribute.to_owned(),
        };
        // What deploying would tell (a load balancer's DNSName), given as
        // `--parameter Id.Attribute=value`.
        if let Some(given) = self.parameters.get(&format!("{id}.{attribute}")) {
            return Ok(match given {
                Json::String(text) => text.clone(),
                other => other.to_string(),
            });
        }
        let Some(resource_type) = self.resource_type(id) else {
            return Err(ResolveError::NoSuchResource { target: target() }.at(path));
        };
        // A Cloud Map service's name is its Name property (`!GetAtt Service.Name`).
        let named_by_property =
            resource_type == "AWS::ServiceDiscovery::Service" && attribute == "Name";
        if kind_of(resource_type).is_none() && !named_by_property {
            return Err(ResolveError::NotAppMesh {
                target: target(),
                resource_type: resource_type.to_owned(),
            }
            .at(path));
        }
        let property = self.template["Resources"][id]
            .get("Properties")
            .and_then(|p| p.get(attribute));
        match property {
            Some(value) => match self.resolve_present(value, path, depth + 1)? {
                Json::String(text) => Ok(text),
                other => Err(ResolveError::NotAName {
                    target: target(),
                    found: schema::describe(&other),
                }
                .at(path)),
            },
            None => Err(ResolveError::AfterDeployment { target: target() }.at(path)),
        }
    }

    fn substitute(
        &self,
        text: &str,
        variables: Option<&serde_yaml::Mapping>,
        path: &Path,
        depth: usize,
    ) -> Result<String, Unresolved> {
        let mut out = String::new();
        let mut rest = text;
        // Each variable is resolved once however often the text names it.
        let mut resolved: HashMap<&str, String> = HashMap::new();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(ResolveError::SubUnclosed {
                    text: text.to_owned(),
                }
                .at(path));
            };
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(value) = variables.and_then(|v| v.get(name)) {
                let text = match resolved.get(name) {
                    Some(text) => text,
                    None => {
                        let text = match self.resolve_present(value, path, depth + 1)? {
                            Json::String(s) => s,
                            other => other.to_string(),
                        };
                        resolved.entry(name).or_insert(text)
                    }
                };
                // Counted again for each use: the copies are what grows.
                self.charge(text.len(), path)?;
                out.push_str(text);
            } else if let Some((id, attribute)) = name.split_once('.') {
                out.push_str(&self.attribute(id, attribute, path, depth + 1)?);
            } else {
                match self.reference(name, path)? {
                    Json::String(s) => out.push_str(&s),
                    other => out.push_str(&other.to_string()),
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        self.charge(out.len(), path)?;
        Ok(out)
    }
}

/// About the bytes `value` takes as text (what a `!Ref` to it copies).
fn json_size(value: &Json) -> usize {
    match value {
        Json::String(text) => text.len(),
        Json::Array(items) => items.iter().map(json_size).sum::<usize>() + items.len() + 2,
        Json::Object(members) => {
            members
                .iter()
                .map(|(key, value)| key.len() + json_size(value) + 4)
                .sum::<usize>()
                + 2
        }
        Json::Null | Json::Bool(_) | Json::Number(_) => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert_text(text: &str, parameters: &[(&str, &str)]) -> (Vec<Resource>, Vec<String>) {
        convert_with_imports(text, parameters, &[])
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn convert_with_imports(
        text: &str,
        parameters: &[(&str, &str)],
        imports: &[(&str, &str)],
    ) -> (Vec<Resource>, Vec<String>) {
        let template: Yaml = serde_yaml::from_str(text).unwrap();
        let options = LoadOptions {
            parameters: pairs(parameters),
            imports: pairs(imports),
            ..Default::default()
        };
        let mut diagnostics = Vec::new();
        let origin = Origin {
            file: "t.yaml".into(),
            line: Some(1),
        };
        let resources = convert(&template, &origin, text, &options, &mut diagnostics);
        (
            resources,
            diagnostics.iter().map(ToString::to_string).collect(),
        )
    }

    const TEMPLATE: &str = r#"
Parameters:
  Domain:
    Type: String
    Default: demo.local
Resources:
  Mesh:
    Type: AWS::AppMesh::Mesh
    Properties:
      MeshName: !Ref AWS::StackName
  Node:
    Type: AWS::AppMesh::VirtualNode
    Properties:
      MeshName: !GetAtt Mesh.MeshName
      VirtualNodeName: node
      Spec:
        Listeners:
          - PortMapping: {Port: "8080", Protocol: http}
            TLS: {Mode: STRICT, Certificate: {ACM: {CertificateArn: arn:x}}}
        ServiceDiscovery:
          DNS:
            Hostname: !Sub "node.${Domain}"
  Service:
    Type: AWS::AppMesh::VirtualService
    Properties:
      MeshName: {"Fn::GetAtt": [Mesh, MeshName]}
      VirtualServiceName: !Sub "${Node.VirtualNodeName}.${Domain}"
      Spec:
        Provider:
          VirtualNode:
            VirtualNodeName: !GetAtt Node.VirtualNodeName
"#;

    #[test]
    fn resolves_and_maps_keys() {
        let (resources, errors) = convert_text(TEMPLATE, &[("AWS::StackName", "shop")]);
        assert_eq!(errors, Vec::<String>::new());
        let node = &resources[1];
        assert_eq!(
            (node.kind, node.mesh(), node.name()),
            (Kind::VirtualNode, Some("shop"), Some("node"))
        );
        assert_eq!(
            node.spec().unwrap(),
            &serde_json::json!({
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                               "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateArn": "arn:x"}}}}],
                "serviceDiscovery": {"dns": {"hostname": "node.demo.local"}}
            })
        );
        assert_eq!(resources[2].name(), Some("node.demo.local"));
        assert_eq!(
            resources[2].spec().unwrap()["provider"]["virtualNode"]["virtualNodeName"],
            "node"
        );
        assert_eq!(resources[1].origin.line, Some(11));
    }

    const STATIC_FUNCTIONS: &str = r#"
Parameters:
  Env: {Type: String, Default: prod}
  TlsMode: {Type: String}
Conditions:
  Prod: !Equals [!Ref Env, prod]
  UseTls: !And [!Not [!Equals [!Ref TlsMode, off]], {Condition: Prod}]
  Never: !Or [!Equals [a, b], !Equals [1, "2"]]
Resources:
  Mesh:
    Type: AWS::AppMesh::Mesh
    Properties:
      MeshName: !Join ["-", [!Ref "AWS::StackName", !Ref "AWS::Region", !Select [1, [x, mesh]]]]
  Cert:
    Type: AWS::CertificateManager::Certificate
    Properties: {DomainName: a.local}
  Authority:
    Type: AWS::ACMPCA::CertificateAuthority
  Record:
    Type: AWS::Route53::RecordSet
    Properties: {Name: node.example.com., Type: A}
  Discovery:
    Type: AWS::ServiceDiscovery::Service
    Properties: {Name: colors}
  Node:
    Type: AWS::AppMesh::VirtualNode
    Properties:
      MeshName: !ImportValue {"Fn::Sub": "${Env}:MeshName"}
      VirtualNodeName: !Sub "${Discovery.Name}-node"
      Spec:
        Listeners:
          - PortMapping: {Port: 8080, Protocol: http}
            TLS: !If
              - UseTls
              - {Mode: STRICT, Certificate: {ACM: {CertificateArn: !Ref Cert}}}
              - !Ref AWS::NoValue
        BackendDefaults:
          ClientPolicy: {TLS: {Validation: {Trust: {ACM: {CertificateAuthorityArns: [!Ref Authority]}}}}}
        ServiceDiscovery:
          DNS: {Hostname: !Ref Record}
  Cloud:
    Type: AWS::AppMesh::VirtualNode
    Condition: Never
    Properties: {MeshName: m, VirtualNodeName: never}
  Other:
    Type: AWS::AppMesh::VirtualNode
    Properties:
      MeshName: m
      VirtualNodeName: !GetAtt Discovery.Name
"#;

    #[test]
    fn resolves_what_is_known_before_deployment() {
        let (resources, errors) = convert_with_imports(
            STATIC_FUNCTIONS,
            &[("TlsMode", "on"), ("AWS::Region", "eu-west-1")],
            &[("prod:MeshName", "imported")],
        );
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(resources.len(), 3, "the Never node is not created");
        assert_eq!(resources[0].name(), Some("stack-eu-west-1-mesh"));
        let node = &resources[1];
        assert_eq!(
            (node.mesh(), node.name()),
            (Some("imported"), Some("colors-node"))
        );
        let spec = node.spec().unwrap();
        assert_eq!(
            spec["listeners"][0]["tls"]["certificate"]["acm"]["certificateArn"],
            "arn:aws:acm:eu-west-1:123456789012:certificate/Cert"
        );
        assert_eq!(
            spec["backendDefaults"]["clientPolicy"]["tls"]["validation"]["trust"]["acm"]["certificateAuthorityArns"]
                [0],
            "arn:aws:acmpca:eu-west-1:123456789012:certificateauthority/Authority"
        );
        assert_eq!(
            spec["serviceDiscovery"]["dns"]["hostname"],
            "node.example.com"
        );
        assert_eq!(resources[2].name(), Some("colors"));

        // What only deploying tells is given as Id.Attribute.
        let text = STATIC_FUNCTIONS.replace(
            "DNS: {Hostname: !Ref Record}",
            "DNS: {Hostname: !GetAtt Balancer.DNSName}",
        );
        let (resources, errors) = convert_with_imports(
            &text,
            &[
                ("TlsMode", "on"),
                ("Balancer.DNSName", "lb-1.elb.amazonaws.com"),
            ],
            &[("prod:MeshName", "imported")],
        );
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(
            resources[1].spec().unwrap()["serviceDiscovery"]["dns"]["hostname"],
            "lb-1.elb.amazonaws.com"
        );

        // A false condition leaves the member out (AWS::NoValue).
        let (resources, errors) = convert_with_imports(
            STATIC_FUNCTIONS,
            &[("TlsMode", "off")],
            &[("prod:MeshName", "imported")],
        );
        assert_eq!(errors, Vec::<String>::new());
        assert!(
            resources[1].spec().unwrap()["listeners"][0]
                .get("tls")
                .is_none()
        );

        // An export not given is named, with the flag that gives it.
        let (_, errors) = convert_with_imports(STATIC_FUNCTIONS, &[("TlsMode", "on")], &[]);
        assert!(
            errors.iter().any(|e| e.contains(
                "MeshName: !ImportValue prod:MeshName: no export of that name; give it with --import prod:MeshName=VALUE"
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn unresolvable_intrinsics_are_named() {
        let (resources, errors) = convert_text(
            &TEMPLATE.replace("!Ref AWS::StackName", "!Ref Missing"),
            &[],
        );
        assert_eq!(resources.len(), 0, "{errors:?}");
        assert!(
            errors[0].contains("Mesh Mesh: MeshName: !Ref Missing cannot be resolved"),
            "{errors:?}"
        );
        let text = TEMPLATE
            .replace("!GetAtt Node.VirtualNodeName", "!Ref Node")
            .replace("!Ref AWS::StackName", "m");
        let (_, errors) = convert_text(&text, &[]);
        assert!(errors.iter().any(|e| e.contains("!Ref Node gives the ARN of the AWS::AppMesh::VirtualNode, not its name; use !GetAtt Node.VirtualNodeName")), "{errors:?}");
        let text = TEMPLATE
            .replace("VirtualNodeName: node", "VirtualNodeName: !GetAZs ''")
            .replace("!Ref AWS::StackName", "m");
        let (_, errors) = convert_text(&text, &[]);
        assert!(
            errors.iter().any(
                |e| e.contains("VirtualNode Node: VirtualNodeName: !GetAZs cannot be resolved")
            ),
            "{errors:?}"
        );
        let text = TEMPLATE
            .replace("VirtualNodeName: node", "VirtualNodeName: !If [c, a, b]")
            .replace("!Ref AWS::StackName", "m");
        let (_, errors) = convert_text(&text, &[]);
        assert!(
            errors.iter().any(|e| e.contains(
                "VirtualNode Node: VirtualNodeName: condition c is not in the template's Conditions"
            )),
            "{errors:?}"
        );
    }
}
