//! Streaming audience readers. Rows are read one at a time and never
//! collected: memory does not grow with the audience.
//!
//! A bad row (wrong column count, invalid address for the channel, a value
//! that does not fit its declared type, undecodable text) becomes a `Reject`
//! with its line number and reason; reading goes on. Duplicate ids are
//! caught later, against the store, since catching them needs memory of
//! every id seen.

mod address;
mod address_list;
mod csv;
mod jsonl;
mod postgres;
mod typing;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use squall_pipeline_core::Record;
use squall_pipeline_core::message::Channel;

pub use address::validate_address;
pub use address_list::{AddressListError, read_address_list};
pub use typing::{FieldType, type_value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson") => Format::Jsonl,
            _ => Format::Csv,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AudienceSpec {
    /// The file; for a PostgreSQL audience, a name for messages.
    pub path: PathBuf,
    pub format: Format,
    /// Set for `source = "postgres"`: rows come from this query.
    pub postgres: Option<PostgresSource>,
    /// The fields, in order, when they are known rather than read from the
    /// file (a snapshot of a PostgreSQL audience).
    pub columns: Option<Vec<String>>,
    pub id_field: String,
    pub address_field: String,
    pub declared: BTreeMap<String, FieldType>,
    pub channel: Channel,
}

/// Where a PostgreSQL audience comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSource {
    pub query: String,
    /// The environment variable that holds the database URL.
    pub url_env: String,
}

/// A valid audience row.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// 0-based index among data rows, valid or not: batches are cut by it,
    /// so a re-read of the same file yields the same batches.
    pub index: u64,
    /// 1-based line in the file, for people.
    pub line: u64,
    pub record: Record,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub line: u64,
    pub reason: String,
    pub raw: String,
}

#[derive(Debug, Clone)]
pub enum Row {
    Valid(Recipient),
    Rejected { index: u64, reject: Reject },
}

impl Row {
    pub fn index(&self) -> u64 {
        match self {
            Row::Valid(r) => r.index,
            Row::Rejected { index, .. } => *index,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error("cannot read audience {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audience {path} has no header row; the first line must name the columns")]
    NoHeader { path: PathBuf },
    #[error("audience {path}: column `{column}` appears twice in the header")]
    DuplicateColumn { path: PathBuf, column: String },
    #[error("PostgreSQL audience: {0}")]
    Postgres(String),
    #[error("audience {path} has no `{field}` field ({role}); its fields are: {fields}")]
    MissingField {
        path: PathBuf,
        field: String,
        role: &'static str,
        fields: String,
    },
}

/// How many fields a JSONL audience is sampled for when its fields are not
/// all declared.
pub const JSONL_SAMPLE_LINES: usize = 1000;

enum Inner {
    Csv(csv::CsvRows),
    Jsonl(jsonl::JsonlRows),
    Postgres(postgres::PostgresRows),
}

pub struct AudienceReader {
    columns: Vec<String>,
    inner: Inner,
}

impl AudienceReader {
    pub fn open(spec: &AudienceSpec) -> Result<AudienceReader, AudienceError> {
        if let Some(source) = &spec.postgres {
            let rows = postgres::PostgresRows::open(spec, source)?;
            return Ok(AudienceReader {
                columns: rows.columns().to_vec(),
                inner: Inner::Postgres(rows),
            });
        }
        let io = |source| AudienceError::Io {
            path: spec.path.clone(),
            source,
        };
        let file = std::fs::File::open(&spec.path).map_err(io)?;
        let reader = BufReader::with_capacity(256 * 1024, file);
        let (columns, inner) = match spec.format {
            Format::Csv => {
                let rows = csv::CsvRows::new(spec, reader)?;
                (rows.columns().to_vec(), Inner::Csv(rows))
            }
            Format::Jsonl => {
                let columns = match &spec.columns {
                    Some(c) => c.clone(),
                    None => jsonl::sample_columns(spec)?,
                };
                (
                    columns.clone(),
                    Inner::Jsonl(jsonl::JsonlRows::new(spec, columns, reader)?),
                )
            }
        };
        for (field, role) in [
            (&spec.id_field, "the recipient id"),
            (&spec.address_field, "the address"),
        ] {
            if !columns.contains(field) {
                return Err(AudienceError::MissingField {
                    path: spec.path.clone(),
                    field: field.clone(),
                    role,
                    fields: columns.join(", "),
                });
            }
        }
        Ok(AudienceReader { columns, inner })
    }

    /// The fields every record carries, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }
}

impl Iterator for AudienceReader {
    type Item = Result<Row, AudienceError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Csv(r) => r.next(),
            Inner::Jsonl(r) => r.next(),
            Inner::Postgres(r) => r.next(),
        }
    }
}

/// A PostgreSQL audience's fields: the id and address fields, then the
/// declared ones (it declares them all).
pub fn postgres_columns(spec: &AudienceSpec) -> Vec<String> {
    let mut columns = vec![spec.id_field.clone()];
    if spec.address_field != spec.id_field {
        columns.push(spec.address_field.clone());
    }
    for name in spec.declared.keys() {
        if !columns.contains(name) {
            columns.push(name.clone());
        }
    }
    columns
}

/// The audience a run reads. A file is read as it is. A PostgreSQL
/// audience is a live table: before a run starts it is read once, whole,
/// into `path` (JSONL, one row a line, in id order) and the run reads that,
/// so a restart resumes on exactly the rows it started with, whatever the
/// table has become since. An existing snapshot is reused; one is written
/// to a temporary file and renamed, so a half-written one is never read.
pub fn snapshot(spec: &AudienceSpec, path: &Path) -> Result<AudienceSpec, AudienceError> {
    let Some(source) = &spec.postgres else {
        return Ok(spec.clone());
    };
    let columns = postgres_columns(spec);
    if !path.exists() {
        let io = |source| AudienceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut rows = postgres::RowStream::open(spec, source)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("jsonl.partial");
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        while let Some(values) = rows.next_values() {
            let line = postgres::as_json(&columns, &values?);
            std::io::Write::write_all(&mut out, line.as_bytes()).map_err(io)?;
            std::io::Write::write_all(&mut out, b"\n").map_err(io)?;
        }
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
    }
    Ok(AudienceSpec {
        path: path.to_path_buf(),
        format: Format::Jsonl,
        postgres: None,
        columns: Some(columns),
        ..spec.clone()
    })
}

/// Counts data rows cheaply (newlines), for a progress bar's total. CSV
/// fields with embedded newlines make it an estimate; it is never a limit.
pub fn estimate_rows(spec: &AudienceSpec) -> u64 {
    if spec.postgres.is_some() {
        return 0; // unknown until the query has run
    }
    let Ok(file) = std::fs::File::open(&spec.path) else {
        return 0;
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut lines = 0u64;
    let mut buf = [0u8; 1 << 16];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    match spec.format {
        Format::Csv => lines.saturating_sub(1),
        Format::Jsonl => lines,
    }
}

/// Turns one row's raw fields into a record: typing, id and address checks.
pub(crate) struct RowBuilder {
    id_index: usize,
    address_index: usize,
    types: Vec<Option<FieldType>>,
    columns: Vec<String>,
    channel: Channel,
}

impl RowBuilder {
    pub(crate) fn new(spec: &AudienceSpec, columns: &[String]) -> RowBuilder {
        let find = |name: &String| columns.iter().position(|c| c == name).unwrap_or(usize::MAX);
        RowBuilder {
            id_index: find(&spec.id_field),
            address_index: find(&spec.address_field),
            types: columns
                .iter()
                .map(|c| spec.declared.get(c).copied())
                .collect(),
            columns: columns.to_vec(),
            channel: spec.channel,
        }
    }

    /// `raw[i]` is column i's text, or `None` when absent.
    pub(crate) fn build<'a>(
        &self,
        index: u64,
        line: u64,
        raw: impl Iterator<Item = RawValue<'a>>,
        original: impl FnOnce() -> String,
    ) -> Row {
        let mut values = Vec::with_capacity(self.columns.len());
        let mut problem = None;
        for (i, v) in raw.enumerate() {
            let typed = match v {
                RawValue::Text(s) if i == self.id_index || i == self.address_index => {
                    let s = s.trim();
                    Ok((!s.is_empty()).then(|| squall_pipeline_core::Value::Text(s.to_string())))
                }
                RawValue::Text(s) => type_value(s, self.types[i]),
                RawValue::Typed(v) if i == self.id_index || i == self.address_index => {
                    Ok(v.map(as_text))
                }
                RawValue::Typed(v) => typing::check_declared(v, self.types[i]),
            };
            match typed {
                Ok(v) => values.push(v),
                Err(e) => {
                    problem.get_or_insert(format!("field `{}`: {e}", self.columns[i]));
                    values.push(None);
                }
            }
        }
        let text = |i: usize| match values.get(i) {
            Some(Some(squall_pipeline_core::Value::Text(s))) => Some(s.clone()),
            _ => None,
        };
        let id = text(self.id_index);
        let address = text(self.address_index);
        let problem = problem
            .or_else(|| {
                id.is_none()
                    .then(|| format!("missing recipient id (`{}`)", self.columns[self.id_index]))
            })
            .or_else(|| {
                let field = &self.columns[self.address_index];
                match &address {
                    None => Some(format!("missing address (`{field}`)")),
                    Some(a) => validate_address(self.channel, a)
                        .err()
                        .map(|e| format!("`{field}`: {e}")),
                }
            });
        match problem {
            Some(reason) => Row::Rejected {
                index,
                reject: Reject {
                    line,
                    reason,
                    raw: original(),
                },
            },
            None => Row::Valid(Recipient {
                index,
                line,
                record: Record {
                    id: id.unwrap_or_default(),
                    address: address.unwrap_or_default(),
                    values,
                    line,
                },
            }),
        }
    }
}

/// Ids and addresses are text, even when a JSON audience writes `"id": 42`.
fn as_text(v: squall_pipeline_core::Value) -> squall_pipeline_core::Value {
    use squall_pipeline_core::Value;
    match v {
        Value::Number(n) => Value::Text(
            Value::Number(n)
                .as_integer()
                .map_or_else(|| n.to_string(), |i| i.to_string()),
        ),
        Value::Bool(b) => Value::Text(b.to_string()),
        text => text,
    }
}

pub(crate) enum RawValue<'a> {
    Text(&'a str),
    Typed(Option<squall_pipeline_core::Value>),
}

pub(crate) fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    reader.read_until(b'\n', buf)
}

#[cfg(test)]
mod tests;
