//! Findings about a set of resources: every error with its file, line, resource and field.
use std::fmt;

use crate::resource::{Origin, Resource};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    /// Something skipped or assumed, e.g. a Deployment in a manifest.
    Note,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Option<Origin>,
    /// `VirtualNode colorteller`.
    pub resource: Option<String>,
    /// `spec.listeners[0].portMapping.port`.
    pub path: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            origin: None,
            resource: None,
            path: None,
            message: message.into(),
        }
    }

    pub fn note(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Note,
            ..Self::error(message)
        }
    }

    pub fn at(mut self, origin: &Origin) -> Self {
        self.origin = Some(origin.clone());
        self
    }

    pub fn on(mut self, resource: &Resource) -> Self {
        self.origin = Some(resource.origin.clone());
        self.resource = Some(resource.label());
        self
    }

    /// Names the resource when there is no [`Resource`] yet (a document being converted).
    pub fn resource(mut self, label: impl Into<String>) -> Self {
        self.resource = Some(label.into());
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The diagnostic as a JSON object (for `--output json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "severity": match self.severity { Severity::Error => "error", Severity::Note => "note" },
            "file": self.origin.as_ref().map(|o| o.file.display().to_string()),
            "line": self.origin.as_ref().and_then(|o| o.line),
            "resource": self.resource,
            "path": self.path,
            "message": self.message,
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        f.write_str(match self.severity {
            Severity::Error => "error: ",
            Severity::Note => "note: ",
        })?;
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}
