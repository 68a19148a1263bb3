//! The intrinsic functions a template can resolve without being deployed, beyond `!Ref`,
//! `!GetAtt` and `!Sub`: `Conditions` (`!Equals`, `!Not`, `!And`, `!Or`, `Condition`) with
//! `!If`, `!Join`, `!Select`, `!ImportValue` of the exports given on the command line, and
//! `!Ref` of the resources whose reference is known before deployment.
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::{ResolveError, Resolver, Unresolved};
use crate::Path;

impl Resolver<'_> {
    /// Whether the template's condition `name` holds.
    pub(super) fn condition_named(
        &self,
        name: &str,
        path: &Path,
        depth: usize,
    ) -> Result<bool, Unresolved> {
        let Some(definition) = self
            .template
            .get("Conditions")
            .and_then(|conditions| conditions.get(name))
        else {
            return Err(ResolveError::UnknownCondition {
                name: name.to_owned(),
            }
            .at(path));
        };
        self.condition(definition, path, depth + 1)
    }

    /// A condition function: `!Equals [a, b]`, `!Not [c]`, `!And [...]`, `!Or [...]`, or
    /// `{Condition: name}`.
    fn condition(&self, value: &Yaml, path: &Path, depth: usize) -> Result<bool, Unresolved> {
        if depth > super::MAX_DEPTH {
            return Err(ResolveError::TooDeep.at(path));
        }
        let bad = |problem| {
            Err(ResolveError::BadArgument {
                function: "Condition",
                problem,
            }
            .at(path))
        };
        let (function, argument) = match value {
            Yaml::Tagged(tagged) => (tagged.tag.to_string(), &tagged.value),
            Yaml::Mapping(mapping) if mapping.len() == 1 => match mapping.iter().next() {
                Some((Yaml::String(key), argument)) => (key.clone(), argument),
                _ => return bad("expected a condition function"),
            },
            _ => return bad("expected a condition function"),
        };
        let function = function.trim_start_matches('!').trim_start_matches("Fn::");
        let items = argument.as_sequence();
        match (function, items) {
            ("Condition", _) => match argument.as_str() {
                Some(name) => self.condition_named(name, path, depth),
                None => bad("Condition takes a condition's name"),
            },
            ("Equals", Some(items)) if items.len() == 2 => {
                let left = self.resolve_present(&items[0], path, depth + 1)?;
                let right = self.resolve_present(&items[1], path, depth + 1)?;
                Ok(scalar_text(&left) == scalar_text(&right))
            }
            ("Not", Some(items)) if items.len() == 1 => {
                Ok(!self.condition(&items[0], path, depth + 1)?)
            }
            ("And", Some(items)) => {
                for item in items {
                    if !self.condition(item, path, depth + 1)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            ("Or", Some(items)) => {
                for item in items {
                    if self.condition(item, path, depth + 1)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => bad("expected !Equals [a, b], !Not [c], !And [...], !Or [...] or Condition"),
        }
    }

    /// `!If [condition, then, else]`.
    pub(super) fn if_then_else(
        &self,
        argument: &Yaml,
        path: &Path,
        depth: usize,
    ) -> Result<Option<Json>, Unresolved> {
        let Some([condition, then, otherwise]) = argument.as_sequence().map(Vec::as_slice) else {
            return Err(bad_argument(
                "If",
                "takes [condition, value if true, value if false]",
                path,
            ));
        };
        let Some(condition) = condition.as_str() else {
            return Err(bad_argument("If", "the first item names a condition", path));
        };
        let chosen = if self.condition_named(condition, path, depth)? {
            then
        } else {
            otherwise
        };
        self.resolve(chosen, path, depth + 1)
    }

    /// `!Join [delimiter, [items]]`.
    pub(super) fn join(
        &self,
        argument: &Yaml,
        path: &Path,
        depth: usize,
    ) -> Result<Json, Unresolved> {
        let Some([delimiter, items]) = argument.as_sequence().map(Vec::as_slice) else {
            return Err(bad_argument("Join", "takes [delimiter, [items]]", path));
        };
        let Some(delimiter) = delimiter.as_str() else {
            return Err(bad_argument("Join", "the delimiter is a string", path));
        };
        let Json::Array(items) = self.resolve_present(items, path, depth + 1)? else {
            return Err(bad_argument("Join", "the second item is a list", path));
        };
        let texts: Vec<String> = items.iter().map(scalar_text).collect();
        let joined = texts.join(delimiter);
        self.charge(joined.len(), path)?;
        Ok(Json::String(joined))
    }

    /// `!Select [index, [items]]`.
    pub(super) fn select(
        &self,
        argument: &Yaml,
        path: &Path,
        depth: usize,
    ) -> Result<Json, Unresolved> {
        let Some([index, items]) = argument.as_sequence().map(Vec::as_slice) else {
            return Err(bad_argument("Select", "takes [index, [items]]", path));
        };
        let index = self.resolve_present(index, path, depth + 1)?;
        let Ok(index) = scalar_text(&index).parse::<usize>() else {
            return Err(bad_argument("Select", "the index is a number", path));
        };
        let Json::Array(items) = self.resolve_present(items, path, depth + 1)? else {
            return Err(bad_argument("Select", "the second item is a list", path));
        };
        let len = items.len();
        items
            .into_iter()
            .nth(index)
            .ok_or_else(|| ResolveError::SelectOutOfRange { index, len }.at(path))
    }

    /// `!ImportValue name`: another stack's export, as given with `--import`.
    pub(super) fn import(
        &self,
        argument: &Yaml,
        path: &Path,
        depth: usize,
    ) -> Result<Json, Unresolved> {
        let name = scalar_text(&self.resolve_present(argument, path, depth + 1)?);
        let Some(value) = self.imports.get(&name) else {
            return Err(ResolveError::UnknownImport { name }.at(path));
        };
        self.charge(value.len(), path)?;
        Ok(Json::String(value.clone()))
    }

    /// `!Ref` of a resource, where what it gives is known before deployment: a Route 53
    /// record's name, or, in a member that takes an ARN (`CertificateArn`,
    /// `CertificateAuthorityArns`), the resource's ARN as CloudFormation would form it with
    /// this read's region and account. None where a reference gives something else.
    pub(super) fn resource_ref(
        &self,
        id: &str,
        resource_type: &str,
        path: &Path,
    ) -> Result<Option<Json>, Unresolved> {
        if resource_type == "AWS::Route53::RecordSet" {
            let name = self.template["Resources"][id]
                .get("Properties")
                .and_then(|p| p.get("Name"))
                .map(|name| self.resolve_present(name, path, 1))
                .transpose()?;
            return Ok(
                name.map(|name| Json::String(scalar_text(&name).trim_end_matches('.').to_owned()))
            );
        }
        if !wants_arn(path) {
            return Ok(None);
        }
        let parameter = |name: &str| {
            self.parameters
                .get(name)
                .map(scalar_text)
                .unwrap_or_default()
        };
        let mut segments = resource_type.split("::").skip(1);
        let service = match segments.next().unwrap_or_default() {
            "CertificateManager" => "acm".to_owned(),
            other => other.to_ascii_lowercase(),
        };
        let resource = segments.next().unwrap_or_default().to_ascii_lowercase();
        let arn = format!(
            "arn:{}:{service}:{}:{}:{resource}/{id}",
            parameter("AWS::Partition"),
            parameter("AWS::Region"),
            parameter("AWS::AccountId"),
        );
        self.charge(arn.len(), path)?;
        Ok(Some(Json::String(arn)))
    }
}

/// Whether the member at `path` takes an ARN (`...Arn`, or an item of `...Arns`).
fn wants_arn(path: &Path) -> bool {
    let text = path.to_string();
    let member = text
        .trim_end_matches(|c: char| c == ']' || c.is_ascii_digit() || c == '[')
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    member.ends_with("arn") || member.ends_with("arns")
}

/// A scalar as CloudFormation compares and joins it: strings as they are, numbers and
/// booleans as written.
fn scalar_text(value: &Json) -> String {
    match value {
        Json::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn bad_argument(function: &'static str, problem: &'static str, path: &Path) -> Unresolved {
    ResolveError::BadArgument { function, problem }.at(path)
}
