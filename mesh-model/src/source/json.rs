//! JSON parsed strictly: a key repeated in one object is an error, as YAML makes it.
//! serde_json keeps the last of repeated keys silently, so a file could say one thing to a
//! reader and another to the mesh; the map visitor here refuses the second one and
//! remembers where it was.
use std::{cell::RefCell, fmt};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a JSON text was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JsonError {
    #[error("duplicate key {key:?}")]
    DuplicateKey {
        /// The repeated member, e.g. `spec.listeners[0].portMapping.port`.
        path: String,
        key: String,
        line: usize,
    },
    #[error("not valid JSON: {0}")]
    Syntax(#[source] serde_json::Error),
}

/// `text` as a JSON value, every object's keys distinct.
pub(crate) fn parse(text: &str) -> Result<Value, JsonError> {
    let duplicate = RefCell::new(None);
    let seed = Checked {
        at: At::Root,
        duplicate: &duplicate,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(error), Some((path, key))) => Err(JsonError::DuplicateKey {
            path,
            key,
            line: error.line(),
        }),
        (Err(error), None) => Err(JsonError::Syntax(error)),
    }
}

/// Where a value is, built only when a duplicate is found (paths are not formatted for
/// every value of a large file).
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Field(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root => Ok(()),
            At::Field(At::Root, name) => f.write_str(name),
            At::Field(parent, name) => write!(f, "{parent}.{name}"),
            At::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// Deserializes a [`Value`] at `at`, recording the first duplicate key in `duplicate`.
struct Checked<'a> {
    at: At<'a>,
    duplicate: &'a RefCell<Option<(String, String)>>,
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        // serde_json's recursion limit (128) still applies: it counts in the deserializer.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Checked {
            at: At::Index(&self.at, items.len()),
            duplicate: self.duplicate,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let path = At::Field(&self.at, &key).to_string();
                let message = format!("duplicate key {key:?} at {path}");
                *self.duplicate.borrow_mut() = Some((path, key));
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(Checked {
                at: At::Field(&self.at, &key),
                duplicate: self.duplicate,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a": [1, -2, 2.5, "x", null, true, {"b": {}}], "c": 18446744073709551615}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(parse("[]").unwrap(), json!([]));
        assert!(matches!(parse("{} x"), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn a_repeated_key_is_named_with_its_path_and_line() {
        let text =
            "{\"spec\": {\"listeners\": [{\"portMapping\": {\n\"port\": 80,\n\"port\": 8080}}]}}";
        match parse(text) {
            Err(JsonError::DuplicateKey { path, key, line }) => {
                assert_eq!(
                    (path.as_str(), key.as_str(), line),
                    ("spec.listeners[0].portMapping.port", "port", 3)
                );
            }
            other => panic!("{other:?}"),
        }
        // The same key in different objects is fine.
        assert!(parse(r#"{"a": {"x": 1}, "b": {"x": 1}}"#).is_ok());
    }

    #[test]
    fn deep_nesting_stops_at_serde_jsons_limit() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse(&text), Err(JsonError::Syntax(_))));
    }
}
