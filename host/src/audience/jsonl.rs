//! JSONL audiences: one JSON object per line.

use std::fs::File;
use std::io::BufReader;

use serde_json::{Map, Value as Json};
use squall_pipeline_core::Value;

use super::{
    AudienceError, AudienceSpec, JSONL_SAMPLE_LINES, RawValue, Reject, Row, RowBuilder, read_line,
};

/// The fields of a JSONL audience: the declared ones, then every key seen in
/// its first lines, in order of appearance. Keys that first appear later must
/// be declared in `[audience.fields]` (and are then kept).
pub(crate) fn sample_columns(spec: &AudienceSpec) -> Result<Vec<String>, AudienceError> {
    let io = |source| AudienceError::Io {
        path: spec.path.clone(),
        source,
    };
    let mut reader = BufReader::new(File::open(&spec.path).map_err(io)?);
    let mut columns: Vec<String> = spec.declared.keys().cloned().collect();
    let mut buf = Vec::new();
    for _ in 0..JSONL_SAMPLE_LINES {
        if read_line(&mut reader, &mut buf).map_err(io)? == 0 {
            break;
        }
        if let Ok(Json::Object(map)) = serde_json::from_slice::<Json>(&buf) {
            for key in map.keys() {
                if !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
    }
    Ok(columns)
}

pub(crate) struct JsonlRows {
    reader: BufReader<File>,
    columns: Vec<String>,
    builder: RowBuilder,
    buf: Vec<u8>,
    line: u64,
    index: u64,
    path: std::path::PathBuf,
}

impl JsonlRows {
    pub(crate) fn new(
        spec: &AudienceSpec,
        columns: Vec<String>,
        reader: BufReader<File>,
    ) -> Result<JsonlRows, AudienceError> {
        let builder = RowBuilder::new(spec, &columns);
        Ok(JsonlRows {
            reader,
            columns,
            builder,
            buf: Vec::new(),
            line: 0,
            index: 0,
            path: spec.path.clone(),
        })
    }

    pub(crate) fn next(&mut self) -> Option<Result<Row, AudienceError>> {
        loop {
            match read_line(&mut self.reader, &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => {
                    return Some(Err(AudienceError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
            self.line += 1;
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines carry no recipient
            }
            let (index, line) = (self.index, self.line);
            self.index += 1;
            let raw = || String::from_utf8_lossy(&self.buf).trim_end().to_string();
            let map = match serde_json::from_slice::<Json>(&self.buf) {
                Ok(Json::Object(map)) => map,
                other => {
                    let reason = match other {
                        Err(e) => format!("is not valid JSON: {e}"),
                        Ok(_) => "is not a JSON object".to_string(),
                    };
                    let reject = Reject {
                        line,
                        reason,
                        raw: raw(),
                    };
                    return Some(Ok(Row::Rejected { index, reject }));
                }
            };
            let values: Vec<Option<Value>> =
                self.columns.iter().map(|c| to_value(&map, c)).collect();
            return Some(Ok(self.builder.build(
                index,
                line,
                values.into_iter().map(RawValue::Typed),
                raw,
            )));
        }
    }
}

fn to_value(map: &Map<String, Json>, key: &str) -> Option<Value> {
    match map.get(key)? {
        Json::Null => None,
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Number(n) => n.as_f64().map(Value::Number),
        Json::String(s) if s.trim().is_empty() => None,
        Json::String(s) => Some(Value::Text(s.clone())),
        // Nested data is kept as its JSON text; segment rules and templates
        // work on flat fields.
        other => Some(Value::Text(other.to_string())),
    }
}
