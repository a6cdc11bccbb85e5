use serde::{Deserialize, Serialize};

/// A typed audience value; a missing value is `None` where it is held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Number(f64),
    Text(String),
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub campaign: String,
    pub columns: Vec<String>,
    pub recipients: Vec<Record>,
}
