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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, id);
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
        let db = Db::open(path, SCHEMA)
            .map_err(|e| QueueError::Unavailable(format!("{}: {e}", path.display())))?;
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
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO messages (queue, body, visible_at) VALUES (?1, ?2, 0)",
                    )?;
                    for body in &bodies {
                        stmt.execute(params![queue, body])?;
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
                             RETURNING id, body, receive_count, receipt",
                        )?;
                        let rows = stmt.query_map(params![now + vis, q, now, max as i64], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, u32>(2)?, r.get::<_, i64>(3)?))
                        })?;
                        for row in rows {
                            let (id, body, receive_count, nonce) = row?;
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
                    let mut stmt =
                        tx.prepare_cached("DELETE FROM messages WHERE id = ?1 AND receipt = ?2")?;
                    for (id, nonce) in &ids {
                        stmt.execute(params![id, nonce])?;
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
                    .query_row("SELECT body FROM messages WHERE id = ?1 AND receipt = ?2", params![id, nonce], |r| r.get(0))
                    .optional()?;
                if let Some(body) = body {
                    tx.execute(
                        "INSERT INTO dead_letters (queue, body, reason, receive_count, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![queue, body, reason, count, now_ms()],
                    )?;
                    tx.execute("DELETE FROM messages WHERE id = ?1", params![id])?;
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
                let n = tx.execute(
                    "INSERT INTO messages (queue, body, visible_at) SELECT queue, body, 0 FROM dead_letters WHERE queue = ?1 ORDER BY id",
                    params![q],
                )?;
                tx.execute("DELETE FROM dead_letters WHERE queue = ?1", params![q])?;
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
    async fn refuses_oversized_messages() {
        let (_d, q) = queue();
        let err = q
            .send("s", vec![vec![0; MAX_MESSAGE_SIZE + 1]])
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::TooLarge { .. }));
    }
}
