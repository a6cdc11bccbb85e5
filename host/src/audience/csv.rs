//! CSV audiences (RFC 4180, header row), via the `csv` crate.

use std::fs::File;
use std::io::BufReader;

use super::{AudienceError, AudienceSpec, RawValue, Reject, Row, RowBuilder};

pub(crate) struct CsvRows {
    reader: csv::Reader<BufReader<File>>,
    columns: Vec<String>,
    builder: RowBuilder,
    record: csv::StringRecord,
    index: u64,
}

impl CsvRows {
    pub(crate) fn new(
        spec: &AudienceSpec,
        reader: BufReader<File>,
    ) -> Result<CsvRows, AudienceError> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(reader);
        let headers = reader
            .headers()
            .map_err(|_| AudienceError::NoHeader {
                path: spec.path.clone(),
            })?
            .clone();
        let columns: Vec<String> = headers
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
            .collect();
        if columns.is_empty() || columns.iter().all(String::is_empty) {
            return Err(AudienceError::NoHeader {
                path: spec.path.clone(),
            });
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].contains(c) {
                return Err(AudienceError::DuplicateColumn {
                    path: spec.path.clone(),
                    column: c.clone(),
                });
            }
        }
        let builder = RowBuilder::new(spec, &columns);
        Ok(CsvRows {
            reader,
            columns,
            builder,
            record: csv::StringRecord::new(),
            index: 0,
        })
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    pub(crate) fn next(&mut self) -> Option<Result<Row, AudienceError>> {
        let index = self.index;
        match self.reader.read_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                self.index += 1;
                let line = self.record.position().map_or(0, |p| p.line());
                let rec = &self.record;
                let original = || rec.iter().collect::<Vec<_>>().join(",");
                if rec.len() != self.columns.len() {
                    let reason = format!(
                        "has {} fields, the header has {}",
                        rec.len(),
                        self.columns.len()
                    );
                    return Some(Ok(Row::Rejected {
                        index,
                        reject: Reject {
                            line,
                            reason,
                            raw: original(),
                        },
                    }));
                }
                Some(Ok(self.builder.build(
                    index,
                    line,
                    rec.iter().map(RawValue::Text),
                    original,
                )))
            }
            Err(e) => {
                self.index += 1;
                let line = e.position().map_or(0, |p| p.line());
                let reason = match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8 text".to_string(),
                    _ => format!("cannot be parsed as CSV: {e}"),
                };
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Some(Err(AudienceError::Io {
                        path: Default::default(),
                        source: std::io::Error::other(e.to_string()),
                    }));
                }
                Some(Ok(Row::Rejected {
                    index,
                    reject: Reject {
                        line,
                        reason,
                        raw: String::new(),
                    },
                }))
            }
        }
    }
}
