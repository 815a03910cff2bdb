// SPDX-License-Identifier: GPL-2.0-only
//! The guest's half of the result protocol: one `CANOPY-RESULT {json}` line per result, written
//! with a single `write` so lines from concurrent processes do not interleave.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

pub const RESULT_PREFIX: &str = "CANOPY-RESULT ";

/// Prints `value` (an object) with `"kind": kind` inserted first.
pub fn emit(kind: &str, value: Value) -> Result<()> {
    let mut object = Map::new();
    object.insert("kind".into(), Value::String(kind.into()));
    match value {
        Value::Object(fields) => object.extend(fields),
        Value::Null => {}
        other => {
            object.insert("value".into(), other);
        }
    }
    let line = format!("{RESULT_PREFIX}{}\n", Value::Object(object));
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// `report KIND key=value...`; a value `@PATH` is that file's content (JSON if it parses).
pub fn report_fields(kind: &str, fields: &[String]) -> Result<()> {
    let mut object = Map::new();
    for field in fields {
        let Some((key, raw)) = field.split_once('=') else {
            bail!("report field `{field}` is not key=value");
        };
        let raw = match raw.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("report field `{key}`: reading {path}"))?,
            None => raw.to_string(),
        };
        let value = serde_json::from_str(raw.trim()).unwrap_or(Value::String(raw));
        object.insert(key.into(), value);
    }
    emit(kind, Value::Object(object))
}
