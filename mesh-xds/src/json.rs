//! xDS resources as proto3 JSON — the form Envoy's own config dump uses — for people to read
//! (`mesh-agent compile`). Decoding uses the descriptor set envoy-types ships.
use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorError, DescriptorPool, DynamicMessage};
use serde_json::{Map, Value};

use crate::resources::ResourceSet;

static DESCRIPTORS: &[u8] = include_bytes!(env!("ENVOY_DESCRIPTORS"));

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("envoy descriptors: {0}")]
    Descriptors(&'static DescriptorError),
    #[error("unknown message type {0}")]
    UnknownType(String),
    #[error("{name}: {source}")]
    Decode {
        name: String,
        source: prost::DecodeError,
    },
    #[error("{name}: {source}")]
    Serialize {
        name: String,
        source: serde_json::Error,
    },
}

fn pool() -> Result<&'static DescriptorPool, JsonError> {
    static POOL: OnceLock<Result<DescriptorPool, DescriptorError>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS))
        .as_ref()
        .map_err(JsonError::Descriptors)
}

/// One resource as JSON, with its `@type`.
pub fn resource(any: &Any) -> Result<Value, JsonError> {
    let pool = pool()?;
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(any.type_url.clone()))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice()).map_err(|source| {
        JsonError::Decode {
            name: name.to_owned(),
            source,
        }
    })?;
    let mut value = serde_json::to_value(&message).map_err(|source| JsonError::Serialize {
        name: name.to_owned(),
        source,
    })?;
    if let Value::Object(object) = &mut value {
        object.insert("@type".into(), Value::String(any.type_url.clone()));
    }
    Ok(value)
}

/// Every resource of a set, grouped by type (short name), as JSON.
pub fn resources(set: &ResourceSet) -> Result<Value, JsonError> {
    let mut out = Map::new();
    for (type_url, resources) in &set.by_type {
        let short = type_url.rsplit('.').next().unwrap_or(type_url);
        let list = resources
            .values()
            .map(resource)
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(short.to_owned(), Value::Array(list));
    }
    Ok(Value::Object(out))
}
