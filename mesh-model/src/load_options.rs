//! What the caller tells the readers of [`crate::source`] and [`crate::cloudformation`]:
//! how to treat `$VAR` placeholders, the kind and names a spec-only file leaves to the
//! command line, and CloudFormation parameter values. Shared by both readers, so it lives
//! apart from either and depends on neither.
use std::collections::HashMap;

use crate::resource::Kind;

/// What to do with `$VAR` / `${VAR}` placeholders.
#[derive(Clone, Debug, Default)]
pub enum Placeholders {
    /// Report each as an error with its position.
    #[default]
    Report,
    /// Substitute from the process environment (`--env`).
    FromEnv,
    /// Substitute from this table.
    From(HashMap<String, String>),
}

impl Placeholders {
    /// Whether placeholders are replaced (rather than reported).
    pub(crate) fn substitutes(&self) -> bool {
        !matches!(self, Placeholders::Report)
    }

    /// The value of placeholder `name`, if it has one.
    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        match self {
            Placeholders::Report => None,
            Placeholders::FromEnv => std::env::var(name).ok(),
            Placeholders::From(table) => table.get(name).cloned(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub placeholders: Placeholders,
    /// The kind of spec-only files, as `--kind` on the command line.
    pub kind: Option<Kind>,
    /// Names for files that leave them to the command line, as the AWS CLI's
    /// `--mesh-name`, `--virtual-node-name` (any kind) and `--virtual-router-name` /
    /// `--virtual-gateway-name` (the parent of a route or gateway route).
    pub mesh_name: Option<String>,
    pub name: Option<String>,
    pub parent: Option<String>,
    /// CloudFormation parameter values (`--parameter Name=value`), pseudo parameters such as
    /// `AWS::StackName` included; they override a parameter's Default.
    pub parameters: Vec<(String, String)>,
    /// Other stacks' exports for CloudFormation's `!ImportValue` (`--import Name=value`).
    pub imports: Vec<(String, String)>,
}
