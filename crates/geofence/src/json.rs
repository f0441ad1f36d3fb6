//! Walking a JSON object with field paths for the errors.
//!
//! The Feature is read from a `serde_json::Value` by hand rather than by
//! derived `Deserialize` with `deny_unknown_fields`: serde's messages name
//! neither the path of the field nor the limit that was broken, and the
//! client of a 400 needs both.

use crate::error::{FenceError, Problem};
use serde_json::{Map, Value};

/// An object whose keys were checked against the allowed ones.
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Obj<'a> {
    /// `v` as an object at `path`, refusing any key outside `allowed`.
    pub(crate) fn new(v: &'a Value, path: &'a str, allowed: &[&str]) -> Result<Self, FenceError> {
        let map = v
            .as_object()
            .ok_or_else(|| FenceError::new(path, Problem::Type("an object")))?;
        let obj = Obj { map, path };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(obj.err(k, Problem::Unknown));
        }
        Ok(obj)
    }

    /// The value of `key`; JSON `null` counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn require(&self, key: &str) -> Result<&'a Value, FenceError> {
        self.get(key).ok_or_else(|| self.err(key, Problem::Missing))
    }

    /// The path of `key` inside this object.
    pub(crate) fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn err(&self, key: &str, problem: Problem) -> FenceError {
        FenceError::new(self.path(key), problem)
    }
}
