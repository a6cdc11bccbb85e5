//! One SQLite connection shared by async code: calls run on the blocking
//! pool, one at a time (SQLite serialises writers anyway). WAL mode keeps
//! every committed transaction across a `kill -9`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
}

/// Opens a connection that waits up to 10 s for another process's lock.
/// Every SQLite file of Squall is opened here.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

impl Db {
    pub(crate) fn open(path: &Path, schema: &str) -> rusqlite::Result<Db> {
        let conn = connect(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a transaction survives a process crash; only
        // an OS crash or power loss may lose the last few.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -32_000)?;
        // Checkpoint every ~40 MB of WAL instead of ~4 MB: queue rows are
        // written and deleted within seconds, so fewer checkpoints copy
        // fewer pages that are already dead. Durability is the WAL's either
        // way.
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        conn.execute_batch(schema)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<R, F>(&self, f: F) -> rusqlite::Result<R>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .unwrap_or_else(|e| {
            Err(rusqlite::Error::ToSqlConversionFailure(
                format!("database task failed: {e}").into(),
            ))
        })
    }
}

/// Whether `e` is SQLite giving up on a lock another process held past the
/// busy timeout: an outage to wait out (the caller retries with backoff),
/// not a failure of what was asked.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lock_held_past_the_timeout_is_busy_and_other_errors_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .busy_timeout(std::time::Duration::from_millis(10))
            .unwrap();
        let locked = other.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
        assert!(super::is_busy(&locked), "{locked}");
        let wrong = other
            .execute("INSERT INTO nowhere VALUES (2)", [])
            .unwrap_err();
        assert!(!super::is_busy(&wrong), "{wrong}");
    }
}
