//! xDS resources as proto3 JSON — the form Envoy's own config dump uses — for people to read
//! (`mesh-agent compile`). Decoding uses the descriptor set envoy-types ships.
use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Map, Value};

use crate::resources::ResourceSet;

static DESCRIPTORS: &[u8] = include_bytes!(env!("ENVOY_DESCRIPTORS"));

fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).map_err(|e| format!("envoy descriptors: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// One resource as JSON, with its `@type`.
pub fn resource(any: &Any) -> Result<Value, String> {
    let pool = pool()?;
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("unknown message type {}", any.type_url))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice())
        .map_err(|e| format!("{name}: {e}"))?;
    let mut value = serde_json::to_value(&message).map_err(|e| format!("{name}: {e}"))?;
    if let Value::Object(object) = &mut value {
        object.insert("@type".into(), Value::String(any.type_url.clone()));
    }
    Ok(value)
}

/// Every resource of a set, grouped by type (short name), as JSON.
pub fn resources(set: &ResourceSet) -> Result<Value, String> {
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
