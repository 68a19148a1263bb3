//! The AWS App Mesh resource model.
//!
//! * [`schema`]: the official API model (botocore's service-2.json, vendored) and a validator
//!   that checks a resource against it field by field, collecting every violation.
//! * [`resource`]: the seven kinds and a resource in the API's own JSON form, whatever
//!   format it was read from.
//! * [`source`]: reading files — App Mesh API JSON, Kubernetes manifests ([`kubernetes`]),
//!   CloudFormation templates ([`cloudformation`]) — and `$VAR` placeholders, as
//!   [`load_options`] says.
//! * [`convert`]: resources written out as Kubernetes manifests or API JSON request files.
//! * [`report`]: diagnostics (errors and notes with file, line, resource and field).
//! * [`types`]: the API's request types, generated from the model at build time.
//! * [`access_log`]: Envoy-style access log format strings, parsed.
//! * [`validate`]: the API model's checks plus the rules App Mesh and its Kubernetes
//!   controller enforce beyond it (references, duplicates, exactly-one-of, regexes).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod cloudformation;
pub mod convert;
pub mod crd;
pub mod kubernetes;
pub mod load_options;
pub mod report;
pub mod resource;
pub mod schema;
pub mod source;
pub mod types;
pub mod validate;

use std::fmt;

/// A field path such as `spec.listeners[0].portMapping.port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    pub fn root(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
