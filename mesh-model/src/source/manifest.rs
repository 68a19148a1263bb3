//! Kubernetes manifests: a YAML stream split into its documents, each remembered with the
//! line it starts on, placeholders handled, and parsed into a [`kubernetes::Document`] for
//! [`kubernetes::convert`] (which needs every file's documents at once).
use std::path::Path;

use super::placeholders;
use crate::{kubernetes, load_options::LoadOptions, report::Diagnostic, resource::Origin};

/// The documents of `text` (the file `file`) appended to `manifests`. Placeholders matter
/// only in App Mesh documents: other objects are skipped, and text such as a CRD's
/// descriptions may hold `$name` that is not a placeholder.
pub(super) fn read(
    text: &str,
    file: &Path,
    options: &LoadOptions,
    diagnostics: &mut Vec<Diagnostic>,
    manifests: &mut Vec<kubernetes::Document>,
) {
    for (line, raw) in yaml_documents(text) {
        let origin = Origin {
            file: file.to_owned(),
            line: Some(line),
        };
        let substituted = match placeholders::substitute(raw, line, &options.placeholders) {
            Ok(text) => text,
            Err(found) if is_app_mesh_document(raw) => {
                diagnostics.extend(found.into_iter().map(|d| d.at(&origin)));
                continue;
            }
            Err(_) => raw.to_owned(),
        };
        match parse_document(&substituted, origin) {
            Ok(documents) => manifests.extend(documents),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
}

/// The objects of one document, which starts at `origin`: none for an empty one, the items
/// of a `kind: List` (what `kubectl get ... -o yaml` prints), else the document itself.
fn parse_document(chunk: &str, origin: Origin) -> Result<Vec<kubernetes::Document>, Diagnostic> {
    let value: serde_yaml::Value = match serde_yaml::from_str(chunk) {
        Ok(value) => value,
        Err(error) => {
            let line = origin.line.unwrap_or(1);
            let at = Origin {
                line: error.location().map(|l| line + l.line() - 1).or(Some(line)),
                ..origin
            };
            return Err(Diagnostic::error(format!("not valid YAML: {error}")).at(&at));
        }
    };
    if value.is_null() {
        return Ok(Vec::new());
    }
    let value = serde_json::to_value(&value).map_err(|error| {
        Diagnostic::error(format!("cannot read this document: {error}")).at(&origin)
    })?;
    let is_list = value.get("kind").and_then(serde_json::Value::as_str) == Some("List")
        && value.get("apiVersion").and_then(serde_json::Value::as_str) == Some("v1");
    match value {
        serde_json::Value::Object(mut list) if is_list => match list.remove("items") {
            Some(serde_json::Value::Array(items)) => Ok(items
                .into_iter()
                .map(|value| kubernetes::Document {
                    value,
                    origin: origin.clone(),
                })
                .collect()),
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(_) => Err(Diagnostic::error("a List's items must be a list").at(&origin)),
        },
        value => Ok(vec![kubernetes::Document { value, origin }]),
    }
}

fn is_app_mesh_document(raw: &str) -> bool {
    raw.lines().any(|line| {
        // `- apiVersion:` starts an item of a List.
        let line = line.trim_start();
        line.strip_prefix("- ")
            .unwrap_or(line)
            .trim_start()
            .strip_prefix("apiVersion:")
            .map(|v| v.trim().trim_matches(['"', '\'']))
            .is_some_and(|v| v.starts_with(kubernetes::API_GROUP))
    })
}

/// The documents of a YAML stream with the 1-based line each starts on.
pub fn yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            documents.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents.retain(|(_, chunk)| !chunk.trim().is_empty());
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_and_their_lines() {
        let text = "---\na: 1\n---\n\n---\nb: 2\nc: 3\n";
        assert_eq!(
            yaml_documents(text),
            vec![(2, "a: 1\n"), (6, "b: 2\nc: 3\n")]
        );
        assert_eq!(yaml_documents("a: 1\n"), vec![(1, "a: 1\n")]);
    }
}
