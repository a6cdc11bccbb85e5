use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A typed audience value; a missing value is `None` where it is held.
/// Serialised as the plain JSON value (`true`, `1.5`, `"text"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Number(f64),
    Text(String),
}

/// By hand rather than `#[serde(untagged)]`: untagged enums buffer every
/// value and try each variant in turn, which made decoding batch envelopes
/// the pipeline's hottest path. A visitor takes each JSON type directly.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl Visitor<'_> for ValueVisitor {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean, a number or a string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Number(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Text(v))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

impl Value {
    /// Integral numbers that fit an f64 mantissa are integers, so `x > 500`
    /// and `{{ x }}` behave as a marketer expects (`600`, not `600.0`).
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 => {
                Some(*n as i64)
            }
            _ => None,
        }
    }
}

/// One audience member; `values` line up with the batch's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub address: String,
    pub values: Vec<Option<Value>>,
    /// The audience line this recipient was read from: part of their
    /// message ids (see `ids::message_id`). Host-side only; stages never
    /// see it.
    #[serde(default)]
    pub line: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub campaign: String,
    pub columns: Vec<String>,
    pub recipients: Vec<Record>,
}

impl Batch {
    /// The same batch with only the `fields` named (in that order; a name
    /// not among the columns is left out): what a stage that reads just
    /// those fields is sent.
    pub fn project(&self, fields: &[String]) -> Batch {
        let keep: Vec<usize> = fields
            .iter()
            .filter_map(|f| self.columns.iter().position(|c| c == f))
            .collect();
        Batch {
            campaign: self.campaign.clone(),
            columns: keep.iter().map(|&i| self.columns[i].clone()).collect(),
            recipients: self
                .recipients
                .iter()
                .map(|r| Record {
                    values: keep.iter().map(|&i| r.values[i].clone()).collect(),
                    ..r.clone()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        let values = vec![
            Some(Value::Bool(true)),
            Some(Value::Number(600.5)),
            Some(Value::Text("DE".into())),
            None,
        ];
        let json = serde_json::to_string(&values).unwrap();
        assert_eq!(json, r#"[true,600.5,"DE",null]"#);
        assert_eq!(
            serde_json::from_str::<Vec<Option<Value>>>(&json).unwrap(),
            values
        );
        assert_eq!(
            serde_json::from_str::<Value>("7").unwrap(),
            Value::Number(7.0)
        );
        assert!(serde_json::from_str::<Value>("[1]").is_err());
    }
}
