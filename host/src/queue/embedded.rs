//! The embedded queue: durable, in one SQLite file, for one machine.
//! Semantics follow SQS (visibility timeout, receive count, receipts that go
//! stale on redelivery) so that stage workers cannot tell the two apart.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;

use super::{DeadLetter, Delivery, Depth, Queue, QueueError, Receipt};
use crate::sqlite::{Db, now_ms};

// A message's body lives apart from the row that says where it is
// (`messages`): receiving, extending and retrying rewrite that small row
// many times, and SQLite rewrites a whole record, overflow pages and all,
// when any column changes. A body of a few hundred KiB is so written once
// and deleted once.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, id);
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    failed_at INTEGER NOT NULL
);
";

/// SQS's default maximum; keeping it here too means a campaign that runs
/// embedded also fits SQS.
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024;

pub struct EmbeddedQueue {
    db: Db,
    arrived: Notify,
}

impl EmbeddedQueue {
    pub fn open(path: &Path) -> Result<EmbeddedQueue, QueueError> {
        let unavailable =
            |e: rusqlite::Error| QueueError::Unavailable(format!("{}: {e}", path.display()));
        split_bodies_of_an_older_queue(path).map_err(unavailable)?;
        let db = Db::open(path, SCHEMA).map_err(unavailable)?;
        Ok(EmbeddedQueue {
            db,
            arrived: Notify::new(),
        })
    }

    /// Makes every in-flight message visible now. Only for a process that
    /// owns the queue file alone (the data-dir lock), at start-up: whoever
    /// held those messages is gone.
    pub async fn recover_abandoned(&self) -> Result<u64, QueueError> {
        self.db
            .call(|c| c.execute("UPDATE messages SET visible_at = 0, receipt = receipt + 1 WHERE receive_count > 0", []))
            .await
            .map(|n| n as u64)
            .map_err(err)
    }
}

/// A queue file written before bodies had a table of their own keeps its
/// messages: they move to the current layout, ids and receipts unchanged.
fn split_bodies_of_an_older_queue(path: &Path) -> rusqlite::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let conn = crate::sqlite::connect(path)?;
    let older: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('messages') WHERE name = 'body'",
        [],
        |r| r.get(0),
    )?;
    if older {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE messages RENAME TO messages_with_bodies;
             DROP INDEX IF EXISTS messages_ready;",
        )?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(
            "INSERT INTO messages (id, queue, visible_at, receive_count, receipt)
               SELECT id, queue, visible_at, receive_count, receipt FROM messages_with_bodies;
             INSERT INTO bodies (id, body) SELECT id, body FROM messages_with_bodies;
             DROP TABLE messages_with_bodies;
             COMMIT;",
        )?;
    }
    Ok(())
}

fn err(e: rusqlite::Error) -> QueueError {
    if crate::sqlite::is_busy(&e) {
        QueueError::Unavailable(format!(
            "the queue database is locked by another process: {e}"
        ))
    } else {
        QueueError::Other(e.to_string())
    }
}

fn parse_receipt(r: &Receipt) -> Option<(i64, i64)> {
    let (id, nonce) = r.0.split_once(':')?;
    Some((id.parse().ok()?, nonce.parse().ok()?))
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn max_message_size(&self) -> usize {
        MAX_MESSAGE_SIZE
    }

    async fn send(&self, queue: &str, bodies: Vec<Vec<u8>>) -> Result<(), QueueError> {
        if let Some(b) = bodies.iter().find(|b| b.len() > MAX_MESSAGE_SIZE) {
            return Err(QueueError::TooLarge {
                size: b.len(),
                limit: MAX_MESSAGE_SIZE,
            });
        }
        let queue = queue.to_string();
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                {
                    let mut message = tx.prepare_cached(
                        "INSERT INTO messages (queue, visible_at) VALUES (?1, 0)",
                    )?;
                    let mut stored =
                        tx.prepare_cached("INSERT INTO bodies (id, body) VALUES (?1, ?2)")?;
                    for body in &bodies {
                        let id = message.insert(params![queue])?;
                        stored.execute(params![id, body])?;
                    }
                }
                tx.commit()
            })
            .await
            .map_err(err)?;
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a send in between wakes us.
            let notified = self.arrived.notified();
            let (q, vis) = (queue.to_string(), visibility.as_millis() as i64);
            let got = self
                .db
                .call(move |c| {
                    let now = now_ms();
                    let tx = c.transaction()?;
                    let mut out = Vec::new();
                    {
                        let mut stmt = tx.prepare_cached(
                            "UPDATE messages SET visible_at = ?1, receive_count = receive_count + 1, receipt = receipt + 1
                             WHERE id IN (SELECT id FROM messages WHERE queue = ?2 AND visible_at <= ?3 ORDER BY id LIMIT ?4)
                             RETURNING id, receive_count, receipt",
                        )?;
                        let taken = stmt
                            .query_map(params![now + vis, q, now, max as i64], |r| {
                                Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?, r.get::<_, i64>(2)?))
                            })?
                            .collect::<rusqlite::Result<Vec<_>>>()?;
                        let mut body = tx.prepare_cached("SELECT body FROM bodies WHERE id = ?1")?;
                        for (id, receive_count, nonce) in taken {
                            let body: Vec<u8> = body.query_row(params![id], |r| r.get(0))?;
                            out.push(Delivery { receipt: Receipt(format!("{id}:{nonce}")), body, receive_count });
                        }
                    }
                    tx.commit()?;
                    out.sort_by_key(|d| parse_receipt(&d.receipt).map(|(id, _)| id));
                    Ok(out)
                })
                .await
                .map_err(err)?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            // Woken by a send, or re-check periodically for messages whose
            // visibility timeout ran out.
            let nap = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn ack(&self, _queue: &str, receipts: &[Receipt]) -> Result<(), QueueError> {
        let ids: Vec<(i64, i64)> = receipts.iter().filter_map(parse_receipt).collect();
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                {
                    let mut message =
                        tx.prepare_cached("DELETE FROM messages WHERE id = ?1 AND receipt = ?2")?;
                    let mut body = tx.prepare_cached("DELETE FROM bodies WHERE id = ?1")?;
                    for (id, nonce) in &ids {
                        if message.execute(params![id, nonce])? > 0 {
                            body.execute(params![id])?;
                        }
                    }
                }
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn retry_later(
        &self,
        _queue: &str,
        receipt: &Receipt,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let Some((id, nonce)) = parse_receipt(receipt) else {
            return Ok(());
        };
        let at = now_ms() + delay.as_millis() as i64;
        self.db
            .call(move |c| {
                c.execute("UPDATE messages SET visible_at = ?1, receipt = receipt + 1 WHERE id = ?2 AND receipt = ?3", params![
                    at, id, nonce
                ])
            })
            .await
            .map_err(err)?;
        if delay.is_zero() {
            self.arrived.notify_waiters();
        }
        Ok(())
    }

    async fn extend(
        &self,
        _queue: &str,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        let Some((id, nonce)) = parse_receipt(receipt) else {
            return Ok(());
        };
        let at = now_ms() + visibility.as_millis() as i64;
        self.db
            .call(move |c| {
                c.execute(
                    "UPDATE messages SET visible_at = ?1 WHERE id = ?2 AND receipt = ?3",
                    params![at, id, nonce],
                )
            })
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn dead_letter(
        &self,
        queue: &str,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), QueueError> {
        let Some((id, nonce)) = parse_receipt(&delivery.receipt) else {
            return Ok(());
        };
        let (queue, reason, count) = (
            queue.to_string(),
            reason.to_string(),
            delivery.receive_count,
        );
        self.db
            .call(move |c| {
                let tx = c.transaction()?;
                let body: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT b.body FROM messages AS m JOIN bodies AS b ON b.id = m.id WHERE m.id = ?1 AND m.receipt = ?2",
                        params![id, nonce],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(body) = body {
                    tx.execute(
                        "INSERT INTO dead_letters (queue, body, reason, receive_count, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![queue, body, reason, count, now_ms()],
                    )?;
                    tx.execute("DELETE FROM messages WHERE id = ?1", params![id])?;
                    tx.execute("DELETE FROM bodies WHERE id = ?1", params![id])?;
                }
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn depth(&self, queue: &str) -> Result<Depth, QueueError> {
        let q = queue.to_string();
        self.db
            .call(move |c| {
                c.query_row(
                    "SELECT COALESCE(SUM(visible_at <= ?2), 0), COALESCE(SUM(visible_at > ?2), 0) FROM messages WHERE queue = ?1",
                    params![q, now_ms()],
                    |r| Ok(Depth { visible: r.get::<_, i64>(0)? as u64, in_flight: r.get::<_, i64>(1)? as u64 }),
                )
            })
            .await
            .map_err(err)
    }

    async fn dead_letter_depth(&self, queue: &str) -> Result<u64, QueueError> {
        let q = queue.to_string();
        self.db
            .call(move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM dead_letters WHERE queue = ?1",
                    params![q],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map(|n| n as u64)
            .map_err(err)
    }

    async fn replay_dead_letters(&self, queue: &str) -> Result<u64, QueueError> {
        let q = queue.to_string();
        let moved = self
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                let letters: Vec<(i64, Vec<u8>)> = tx
                    .prepare("SELECT id, body FROM dead_letters WHERE queue = ?1 ORDER BY id")?
                    .query_map(params![q], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let n = letters.len();
                {
                    let mut message = tx.prepare_cached(
                        "INSERT INTO messages (queue, visible_at) VALUES (?1, 0)",
                    )?;
                    let mut stored =
                        tx.prepare_cached("INSERT INTO bodies (id, body) VALUES (?1, ?2)")?;
                    let mut gone = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
                    for (letter, body) in &letters {
                        let id = message.insert(params![q])?;
                        stored.execute(params![id, body])?;
                        gone.execute(params![letter])?;
                    }
                }
                tx.commit()?;
                Ok(n as u64)
            })
            .await
            .map_err(err)?;
        self.arrived.notify_waiters();
        Ok(moved)
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, QueueError> {
        let q = queue.to_string();
        self.db
            .call(move |c| {
                let mut stmt = c.prepare(
                    "SELECT queue, body, reason, receive_count, failed_at FROM dead_letters WHERE queue = ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map(params![q], |r| {
                    Ok(DeadLetter {
                        queue: r.get(0)?,
                        body: r.get(1)?,
                        reason: r.get(2)?,
                        receive_count: r.get(3)?,
                        failed_at_ms: r.get(4)?,
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (tempfile::TempDir, EmbeddedQueue) {
        let dir = tempfile::tempdir().unwrap();
        let q = EmbeddedQueue::open(&dir.path().join("queue.sqlite")).unwrap();
        (dir, q)
    }

    async fn setup() -> Option<(tempfile::TempDir, EmbeddedQueue)> {
        Some(queue())
    }

    mod contract {
        crate::queue::contract_tests!(super::setup);
    }

    #[tokio::test]
    async fn a_stale_receipt_acknowledges_nothing() {
        let (_d, q) = queue();
        q.send("s", vec![b"a".to_vec()]).await.unwrap();
        let vis = Duration::from_millis(50);
        let first = q.receive("s", 1, vis, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let second = q.receive("s", 1, vis * 100, Duration::ZERO).await.unwrap();
        q.ack("s", &[first[0].receipt.clone()]).await.unwrap();
        assert_eq!(q.depth("s").await.unwrap().in_flight, 1);
        q.ack("s", &[second[0].receipt.clone()]).await.unwrap();
        assert_eq!(q.depth("s").await.unwrap().total(), 0);
    }

    #[tokio::test]
    async fn survives_reopening_and_recovers_abandoned_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        {
            let q = EmbeddedQueue::open(&path).unwrap();
            q.send("s", vec![b"a".to_vec()]).await.unwrap();
            let got = q
                .receive("s", 1, Duration::from_secs(600), Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(got.len(), 1);
        } // the "process" dies holding the message
        let q = EmbeddedQueue::open(&path).unwrap();
        assert!(
            q.receive("s", 1, Duration::from_secs(1), Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(q.recover_abandoned().await.unwrap(), 1);
        let got = q
            .receive("s", 1, Duration::from_secs(1), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            (got[0].body.as_slice(), got[0].receive_count),
            (&b"a"[..], 2)
        );
    }

    #[tokio::test]
    async fn a_queue_file_of_the_older_layout_keeps_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        {
            let old = rusqlite::Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL,
                   body BLOB NOT NULL, visible_at INTEGER NOT NULL,
                   receive_count INTEGER NOT NULL DEFAULT 0, receipt INTEGER NOT NULL DEFAULT 0);
                 CREATE INDEX messages_ready ON messages (queue, visible_at, id);
                 INSERT INTO messages (queue, body, visible_at) VALUES ('s', x'6f6e65', 0), ('s', x'74776f', 0);",
            )
            .unwrap();
        }
        let q = EmbeddedQueue::open(&path).unwrap();
        let got = q
            .receive("s", 10, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        let bodies: Vec<&[u8]> = got.iter().map(|d| d.body.as_slice()).collect();
        assert_eq!(bodies, [&b"one"[..], &b"two"[..]]);
        let receipts: Vec<Receipt> = got.iter().map(|d| d.receipt.clone()).collect();
        q.ack("s", &receipts).await.unwrap();
        assert_eq!(q.depth("s").await.unwrap().total(), 0);
        // Reopening the migrated file changes nothing.
        drop(q);
        let q = EmbeddedQueue::open(&path).unwrap();
        q.send("s", vec![b"three".to_vec()]).await.unwrap();
        assert_eq!(q.depth("s").await.unwrap().visible, 1);
    }

    #[tokio::test]
    async fn refuses_oversized_messages() {
        let (_d, q) = queue();
        let err = q
            .send("s", vec![vec![0; MAX_MESSAGE_SIZE + 1]])
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::TooLarge { .. }));
    }
}
