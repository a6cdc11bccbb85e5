//! Audience values are typed: `600` compares as a number, `true` as a
//! boolean, an empty cell is missing (so Liquid's `default` applies).

use serde::{Deserialize, Serialize};
use squall_pipeline_core::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Number,
    Boolean,
}

/// Types one CSV cell: by its declaration if it has one, else by its look.
pub fn type_value(raw: &str, declared: Option<FieldType>) -> Result<Option<Value>, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    match declared {
        Some(FieldType::String) => Ok(Some(Value::Text(raw.to_string()))),
        Some(FieldType::Number) => s
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(|n| Some(Value::Number(n)))
            .ok_or_else(|| format!("`{s}` is not a number")),
        Some(FieldType::Boolean) => parse_bool(s)
            .map(|b| Some(Value::Bool(b)))
            .ok_or_else(|| format!("`{s}` is not a boolean (true or false)")),
        None => Ok(Some(infer(raw, s))),
    }
}

fn infer(raw: &str, s: &str) -> Value {
    if let Some(b) = parse_bool(s) {
        return Value::Bool(b);
    }
    if let Some(n) = looks_numeric(s).then(|| s.parse::<f64>().ok()).flatten() {
        return Value::Number(n);
    }
    Value::Text(raw.to_string())
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Plain decimal numbers only: not `inf`/`nan`, not `+49…` phone numbers,
/// not zero-padded codes like `01234` whose zeros matter.
fn looks_numeric(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let b = digits.as_bytes();
    if b.is_empty() || !b[0].is_ascii_digit() {
        return false;
    }
    if b.len() > 1 && b[0] == b'0' && b[1].is_ascii_digit() {
        return false;
    }
    b.iter()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+'))
}

/// A JSON value already has a type; a declaration may still coerce text.
pub(crate) fn check_declared(
    v: Option<Value>,
    declared: Option<FieldType>,
) -> Result<Option<Value>, String> {
    match (v, declared) {
        (Some(Value::Text(s)), Some(t)) => type_value(&s, Some(t)),
        (Some(Value::Number(n)), Some(FieldType::String)) => Ok(Some(Value::Text(n.to_string()))),
        (Some(Value::Bool(_)), Some(FieldType::Number)) => {
            Err("a boolean where a number is declared".into())
        }
        (Some(Value::Number(_)), Some(FieldType::Boolean)) => {
            Err("a number where a boolean is declared".into())
        }
        (v, _) => Ok(v),
    }
}
