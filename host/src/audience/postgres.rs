//! PostgreSQL audiences: the rows of a query, streamed in constant memory.
//!
//! A thread of its own runs the client on a runtime of its own, so that the
//! reader is a plain iterator from any context, like the file readers; rows
//! cross a small bounded channel, and the server's rows wait in the socket
//! while the pipeline is busy (backpressure, no buffering without end).
//!
//! The query is wrapped so that rows come in the order of the id field and
//! only the audience's fields are read, each as a type the pipeline has:
//! booleans, integers and floats as they are, `numeric` as a float,
//! everything else (dates, uuids, json…) as its text.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use futures::StreamExt;
use squall_pipeline_core::Value;
use tokio_postgres::types::Type;

use super::{AudienceError, AudienceSpec, PostgresSource, RawValue, Row, RowBuilder};

/// Rows in flight between the client thread and the reader.
const IN_FLIGHT: usize = 1024;

type Values = Vec<Option<Value>>;

/// A running query: its rows' values, in the audience's column order.
pub(crate) struct RowStream {
    columns: Vec<String>,
    rx: Receiver<Result<Values, String>>,
}

impl RowStream {
    pub(crate) fn open(
        spec: &AudienceSpec,
        source: &PostgresSource,
    ) -> Result<RowStream, AudienceError> {
        let url = std::env::var(&source.url_env).map_err(|_| {
            AudienceError::Postgres(format!(
                "the environment variable `{}` (`url_env`) is not set; set it to the audience database's URL, e.g. postgres://user:password@host:5432/crm",
                source.url_env
            ))
        })?;
        let columns = super::postgres_columns(spec);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
        let (tx, rx) = sync_channel::<Result<Values, String>>(IN_FLIGHT);
        let (query, wanted, id) = (source.query.clone(), columns.clone(), spec.id_field.clone());
        std::thread::Builder::new()
            .name("squall-audience-pg".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start its client: {e}")));
                        return;
                    }
                };
                runtime.block_on(stream(&url, &query, &wanted, &id, ready_tx, tx));
            })
            .map_err(|e| AudienceError::Postgres(format!("cannot start its reader: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(RowStream { columns, rx }),
            Ok(Err(e)) => Err(AudienceError::Postgres(e)),
            Err(_) => Err(AudienceError::Postgres(
                "its reader stopped before the query ran".into(),
            )),
        }
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The next row's values; `None` at the end.
    pub(crate) fn next_values(&mut self) -> Option<Result<Values, AudienceError>> {
        match self.rx.recv() {
            Ok(r) => Some(r.map_err(AudienceError::Postgres)),
            Err(_) => None,
        }
    }
}

/// `"name"`, quoted for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn stream(
    url: &str,
    query: &str,
    wanted: &[String],
    id: &str,
    ready: SyncSender<Result<(), String>>,
    tx: SyncSender<Result<Values, String>>,
) {
    let fail = |e: String| {
        let _ = ready.send(Err(e));
    };
    let client = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => return fail(format!("cannot connect (check `url_env`'s URL): {e}")),
    };
    let query = query.trim().trim_end_matches(';');
    // The query's own columns and types, without running it.
    let probe = match client
        .prepare(&format!("SELECT * FROM ({query}) AS audience"))
        .await
    {
        Ok(s) => s,
        Err(e) => return fail(format!("the query does not run: {}", db_message(&e))),
    };
    let types: BTreeMap<&str, &Type> = probe
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_()))
        .collect();
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|w| !types.contains_key(w))
        .collect();
    if !missing.is_empty() {
        return fail(format!(
            "the query returns no column {}; it returns: {}",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            types.keys().copied().collect::<Vec<_>>().join(", ")
        ));
    }
    let select: Vec<String> = wanted
        .iter()
        .map(|w| {
            let t = types[w.as_str()];
            match *t {
                Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME => ident(w),
                Type::NUMERIC => format!("{}::float8", ident(w)),
                _ => format!("{}::text", ident(w)),
            }
        })
        .collect();
    // Ordered by id: a re-run reads the same rows in the same order.
    let sql = format!(
        "SELECT {} FROM ({query}) AS audience ORDER BY {}",
        select.join(", "),
        ident(id)
    );
    let statement = match client.prepare(&sql).await {
        Ok(s) => s,
        Err(e) => return fail(format!("the query does not run: {}", db_message(&e))),
    };
    let rows = match client
        .query_raw(&statement, std::iter::empty::<&str>())
        .await
    {
        Ok(rows) => rows,
        Err(e) => return fail(format!("the query failed: {}", db_message(&e))),
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.next().await {
        let values = row
            .map_err(|e| format!("reading the query's rows failed: {}", db_message(&e)))
            .map(|row| (0..row.len()).map(|i| value(&row, i)).collect::<Values>());
        let failed = values.is_err();
        // The reader is gone (the run stopped): stop reading.
        if tx.send(values).is_err() || failed {
            return;
        }
    }
}

fn value(row: &tokio_postgres::Row, i: usize) -> Option<Value> {
    let number = |n: Option<f64>| n.map(Value::Number);
    match *row.columns()[i].type_() {
        Type::BOOL => row.get::<_, Option<bool>>(i).map(Value::Bool),
        Type::INT2 => number(row.get::<_, Option<i16>>(i).map(f64::from)),
        Type::INT4 => number(row.get::<_, Option<i32>>(i).map(f64::from)),
        Type::INT8 => number(row.get::<_, Option<i64>>(i).map(|n| n as f64)),
        Type::FLOAT4 => number(row.get::<_, Option<f32>>(i).map(f64::from)),
        Type::FLOAT8 => number(row.get::<_, Option<f64>>(i)),
        // Everything else was cast to text above; blank text is missing,
        // as an empty CSV cell is.
        _ => row
            .get::<_, Option<String>>(i)
            .filter(|s| !s.trim().is_empty())
            .map(Value::Text),
    }
}

/// The server's own words for what is wrong, which say more than the
/// driver's summary.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// The rows of a PostgreSQL audience, typed and checked like a file's.
/// Lines are row numbers, from 1, in id order.
pub(crate) struct PostgresRows {
    rows: RowStream,
    builder: RowBuilder,
    index: u64,
}

impl PostgresRows {
    pub(crate) fn open(
        spec: &AudienceSpec,
        source: &PostgresSource,
    ) -> Result<PostgresRows, AudienceError> {
        let rows = RowStream::open(spec, source)?;
        let builder = RowBuilder::new(spec, rows.columns());
        Ok(PostgresRows {
            rows,
            builder,
            index: 0,
        })
    }

    pub(crate) fn columns(&self) -> &[String] {
        self.rows.columns()
    }

    pub(crate) fn next(&mut self) -> Option<Result<Row, AudienceError>> {
        let values = match self.rows.next_values()? {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let index = self.index;
        self.index += 1;
        let raw = || as_json(self.rows.columns(), &values);
        let row = self.builder.build(
            index,
            index + 1,
            values.iter().cloned().map(RawValue::Typed),
            raw,
        );
        Some(Ok(row))
    }
}

/// One row as a JSON object, fields in column order (a reject's raw text,
/// a snapshot's line).
pub(crate) fn as_json(columns: &[String], values: &[Option<Value>]) -> String {
    let mut out = String::from("{");
    for (i, (c, v)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(c).unwrap_or_default());
        out.push(':');
        out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into()));
    }
    out.push('}');
    out
}
