//! The embedded store: SQLite, one file, zero set-up.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::*;
use crate::sqlite::{Db, now_ms};

// Three files, so that their writers do not queue behind each other:
// SQLite has one writer per database, and intake (ids), the stage workers
// (stats) and the send workers (ledger) all write at once.
const STATE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    definition_hash TEXT NOT NULL,
    intake_batches_done INTEGER NOT NULL DEFAULT 0,
    rows_read INTEGER NOT NULL DEFAULT 0,
    intake_finished INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    campaign TEXT NOT NULL,
    line INTEGER NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    PRIMARY KEY (campaign, line)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_stats (
    campaign TEXT NOT NULL,
    stage TEXT NOT NULL,
    batch TEXT NOT NULL,
    stats TEXT NOT NULL,
    PRIMARY KEY (campaign, stage, batch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letter_records (
    campaign TEXT NOT NULL,
    stage TEXT NOT NULL,
    item TEXT NOT NULL,
    recipients INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (campaign, stage, item)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS suppressions (
    address TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    campaign TEXT,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS provider_stats (
    worker TEXT NOT NULL,
    provider TEXT NOT NULL,
    stats TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (worker, provider)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bundles (
    campaign TEXT NOT NULL,
    hash TEXT NOT NULL,
    bundle BLOB NOT NULL,
    saved_at INTEGER NOT NULL,
    PRIMARY KEY (campaign, hash)
);
";

const IDS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audience_ids (
    campaign TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    PRIMARY KEY (campaign, recipient_id)
) WITHOUT ROWID;
";

const LEDGER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger (
    campaign TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    message_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('claimed', 'delivered', 'failed', 'in_doubt', 'suppressed')),
    owner TEXT NOT NULL,
    detail TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (campaign, recipient_id, message_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,
    lease_until INTEGER NOT NULL
) WITHOUT ROWID;
";

pub struct SqliteStore {
    db: Db,
    ids: Db,
    ledger: Db,
}

impl SqliteStore {
    /// Opens (creating) the store's files in `dir`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        let open = |file: &str, schema: &str| {
            let path = dir.join(file);
            Db::open(&path, schema)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))
        };
        Ok(SqliteStore {
            db: open("state.sqlite", STATE_SCHEMA)?,
            ids: open("audience-ids.sqlite", IDS_SCHEMA)?,
            ledger: open("ledger.sqlite", LEDGER_SCHEMA)?,
        })
    }
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Other(e.to_string())
}

/// Settles a batch with one statement per kind of outcome (a failure's
/// reason is per message, so failures go one by one; they are rare). The
/// ledger is on every message's path, and per-row statements cost a few µs
/// each; the keys travel as one JSON array through SQLite's `json_each`,
/// matched with a row-value `IN` that uses the primary key.
fn settle_batch(
    tx: &rusqlite::Transaction<'_>,
    campaign: &str,
    owner: Option<&str>,
    settled: &[(LedgerKey, Settlement)],
) -> rusqlite::Result<()> {
    let mut delivered = Vec::new();
    let mut in_doubt = Vec::new();
    let mut released = Vec::new();
    for (key, s) in settled {
        let pair = serde_json::json!([key.recipient_id, key.message_key]);
        match s {
            Settlement::Delivered => delivered.push(pair),
            Settlement::InDoubt => in_doubt.push(pair),
            Settlement::Released => released.push(pair),
            Settlement::Failed(reason) | Settlement::Suppressed(reason) => {
                let state = if matches!(s, Settlement::Failed(_)) {
                    "failed"
                } else {
                    "suppressed"
                };
                tx.prepare_cached(
                    "UPDATE ledger SET state = ?7, detail = ?4, updated_at = ?5
                     WHERE campaign = ?1 AND recipient_id = ?2 AND message_key = ?3 AND state = 'claimed'
                       AND (?6 IS NULL OR owner = ?6)",
                )?
                .execute(params![campaign, key.recipient_id, key.message_key, reason, now_ms(), owner, state])?;
            }
        }
    }
    const KEYS: &str =
        "(recipient_id, message_key) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?3))";
    for (state, keys) in [("delivered", delivered), ("in_doubt", in_doubt)] {
        if !keys.is_empty() {
            tx.prepare_cached(&format!(
                "UPDATE ledger SET state = ?4, updated_at = ?5
                 WHERE campaign = ?1 AND state = 'claimed' AND (?2 IS NULL OR owner = ?2) AND {KEYS}"
            ))?
            .execute(params![campaign, owner, serde_json::Value::Array(keys).to_string(), state, now_ms()])?;
        }
    }
    if !released.is_empty() {
        tx.prepare_cached(&format!(
            "DELETE FROM ledger WHERE campaign = ?1 AND state = 'claimed' AND (?2 IS NULL OR owner = ?2) AND {KEYS}"
        ))?
        .execute(params![campaign, owner, serde_json::Value::Array(released).to_string()])?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn open_campaign(
        &self,
        campaign: &str,
        definition_hash: &str,
    ) -> Result<CampaignState, StoreError> {
        let (c, h) = (campaign.to_string(), definition_hash.to_string());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO campaigns (id, definition_hash, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![c, h, now_ms()],
                )?;
                conn.query_row(
                    "SELECT intake_batches_done, rows_read, intake_finished, definition_hash FROM campaigns WHERE id = ?1",
                    params![c],
                    |r| {
                        Ok(CampaignState {
                            intake_batches_done: r.get::<_, i64>(0)? as u64,
                            rows_read: r.get::<_, i64>(1)? as u64,
                            intake_finished: r.get(2)?,
                            definition_hash: r.get(3)?,
                        })
                    },
                )
            })
            .await
            .map_err(err)
    }

    async fn set_intake_progress(
        &self,
        campaign: &str,
        batches_done: u64,
        rows_read: u64,
        finished: bool,
    ) -> Result<(), StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE campaigns SET intake_batches_done = ?2, rows_read = ?3, intake_finished = ?4 WHERE id = ?1",
                    params![c, batches_done as i64, rows_read as i64, finished],
                )
            })
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn register_ids(
        &self,
        campaign: &str,
        ids: &[(String, u64)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let (c, ids) = (campaign.to_string(), ids.to_vec());
        self.ids
            .call(move |conn| {
                // One statement for the batch, as for the ledger: rows go in
                // in order, so within a batch the first line of an id wins.
                let batch = serde_json::Value::Array(
                    ids.iter().map(|(id, line)| serde_json::json!([id, line])).collect(),
                )
                .to_string();
                let tx = conn.transaction()?;
                tx.prepare_cached(
                    "INSERT INTO audience_ids (campaign, recipient_id, line)
                     SELECT ?1, value ->> 0, value ->> 1 FROM json_each(?2) WHERE true
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![c, batch])?;
                let first: HashMap<String, u64> = tx
                    .prepare_cached(
                        "SELECT recipient_id, line FROM audience_ids
                         WHERE campaign = ?1 AND recipient_id IN (SELECT value ->> 0 FROM json_each(?2))",
                    )?
                    .query_map(params![c, batch], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                tx.commit()?;
                Ok(duplicates(&ids, &first))
            })
            .await
            .map_err(err)
    }

    async fn record_rejects(&self, campaign: &str, rejects: &[Reject]) -> Result<(), StoreError> {
        if rejects.is_empty() {
            return Ok(());
        }
        let (c, rejects) = (campaign.to_string(), rejects.to_vec());
        self.db
            .call(move |conn| {
                let tx = conn.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO rejects (campaign, line, reason, raw) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                    )?;
                    for r in &rejects {
                        stmt.execute(params![c, r.line as i64, r.reason, r.raw])?;
                    }
                }
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn rejects(&self, campaign: &str) -> Result<Vec<Reject>, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT line, reason, raw FROM rejects WHERE campaign = ?1 ORDER BY line",
                )?;
                let rows = stmt.query_map(params![c], |r| {
                    Ok(Reject {
                        line: r.get::<_, i64>(0)? as u64,
                        reason: r.get(1)?,
                        raw: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn reject_count(&self, campaign: &str) -> Result<u64, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM rejects WHERE campaign = ?1",
                    params![c],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map(|n| n as u64)
            .map_err(err)
    }

    async fn record_batch(
        &self,
        campaign: &str,
        stage: &str,
        batch: &str,
        stats: &BatchStats,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(stats).map_err(|e| StoreError::Other(e.to_string()))?;
        let (c, s, b) = (campaign.to_string(), stage.to_string(), batch.to_string());
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO batch_stats (campaign, stage, batch, stats) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )?
                .execute(params![c, s, b, json])
            })
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn stage_totals(&self, campaign: &str, stage: &str) -> Result<BatchStats, StoreError> {
        let (c, s) = (campaign.to_string(), stage.to_string());
        let rows: Vec<String> = self
            .db
            .call(move |conn| {
                let mut stmt = conn
                    .prepare("SELECT stats FROM batch_stats WHERE campaign = ?1 AND stage = ?2")?;
                let rows = stmt.query_map(params![c, s], |r| r.get(0))?;
                rows.collect()
            })
            .await
            .map_err(err)?;
        let mut total = BatchStats::default();
        for json in rows {
            let stats: BatchStats =
                serde_json::from_str(&json).map_err(|e| StoreError::Other(e.to_string()))?;
            total.merge(&stats);
        }
        Ok(total)
    }

    async fn record_dead_letter(
        &self,
        campaign: &str,
        record: &DeadLetterRecord,
    ) -> Result<(), StoreError> {
        let (c, r) = (campaign.to_string(), record.clone());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO dead_letter_records (campaign, stage, item, recipients, reason, payload, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    params![c, r.stage, r.item, r.recipients as i64, r.reason, r.payload, now_ms()],
                )
            })
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn dead_letters(&self, campaign: &str) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT stage, item, recipients, reason, payload FROM dead_letter_records
                     WHERE campaign = ?1 ORDER BY recorded_at, item",
                )?;
                let rows = stmt.query_map(params![c], |r| {
                    Ok(DeadLetterRecord {
                        stage: r.get(0)?,
                        item: r.get(1)?,
                        recipients: r.get::<_, i64>(2)? as u64,
                        reason: r.get(3)?,
                        payload: r.get(4)?,
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn claim(
        &self,
        campaign: &str,
        owner: &str,
        claims: &[LedgerClaim],
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        let (c, o, claims) = (campaign.to_string(), owner.to_string(), claims.to_vec());
        self.ledger
            .call(move |conn| {
                let tx = conn.transaction()?;
                let batch = serde_json::Value::Array(
                    claims
                        .iter()
                        .map(|cl| serde_json::json!([cl.key.recipient_id, cl.key.message_key, cl.message_id]))
                        .collect(),
                )
                .to_string();
                let mut inserted: HashSet<KeyPair> = HashSet::with_capacity(claims.len());
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO ledger (campaign, recipient_id, message_key, message_id, state, owner, updated_at)
                         SELECT ?1, value ->> 0, value ->> 1, value ->> 2, 'claimed', ?2, ?3 FROM json_each(?4) WHERE true
                         ON CONFLICT DO NOTHING
                         RETURNING recipient_id, message_key",
                    )?;
                    let rows = insert.query_map(params![c, o, now_ms(), batch], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    for row in rows {
                        inserted.insert(row?);
                    }
                }
                let mut states: HashMap<KeyPair, String> = HashMap::new();
                if inserted.len() < claims.len() {
                    let mut stmt = tx.prepare_cached(
                        "SELECT l.recipient_id, l.message_key, l.state FROM json_each(?2) AS j
                         CROSS JOIN ledger AS l ON l.campaign = ?1 AND l.recipient_id = j.value ->> 0 AND l.message_key = j.value ->> 1",
                    )?;
                    let rows = stmt.query_map(params![c, batch], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
                    for row in rows {
                        let (key, state) = row?;
                        states.insert(key, state);
                    }
                }
                let out = claim_outcomes(&claims, inserted, &states);
                tx.commit()?;
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn settle(
        &self,
        campaign: &str,
        owner: &str,
        settled: &[(LedgerKey, Settlement)],
    ) -> Result<(), StoreError> {
        let (c, o, settled) = (campaign.to_string(), owner.to_string(), settled.to_vec());
        self.ledger
            .call(move |conn| {
                let tx = conn.transaction()?;
                settle_batch(&tx, &c, Some(&o), &settled)?;
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn unsettled(&self, campaign: &str, owner: &str) -> Result<Vec<Unsettled>, StoreError> {
        let (c, o) = (campaign.to_string(), owner.to_string());
        self.ledger
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT recipient_id, message_key, message_id FROM ledger
                     WHERE campaign = ?1 AND state = 'claimed' AND owner <> ?2
                       AND NOT EXISTS (SELECT 1 FROM owners WHERE owners.owner = ledger.owner AND lease_until > ?3)",
                )?;
                let rows = stmt.query_map(params![c, o, now_ms()], |r| {
                    Ok(Unsettled {
                        key: LedgerKey {
                            recipient_id: r.get(0)?,
                            message_key: r.get(1)?,
                        },
                        message_id: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn beat(&self, owner: &str, lease: std::time::Duration) -> Result<(), StoreError> {
        let (o, until) = (owner.to_string(), now_ms() + lease.as_millis() as i64);
        self.ledger
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO owners (owner, lease_until) VALUES (?1, ?2)
                     ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until",
                    params![o, until],
                )
            })
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn retire(&self, owner: &str) -> Result<(), StoreError> {
        let o = owner.to_string();
        self.ledger
            .call(move |conn| conn.execute("DELETE FROM owners WHERE owner = ?1", params![o]))
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn save_bundle(
        &self,
        campaign: &str,
        hash: &str,
        bundle: &[u8],
    ) -> Result<(), StoreError> {
        let (c, h, b) = (campaign.to_string(), hash.to_string(), bundle.to_vec());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO bundles (campaign, hash, bundle, saved_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (campaign, hash) DO UPDATE SET saved_at = excluded.saved_at",
                    params![c, h, b, now_ms()],
                )
            })
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn bundle(&self, campaign: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT hash, bundle FROM bundles WHERE campaign = ?1 ORDER BY saved_at DESC, rowid DESC LIMIT 1",
                    params![c],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })
            .await
            .map_err(err)
    }

    async fn campaign_known(&self, campaign: &str) -> Result<bool, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                conn.query_row("SELECT 1 FROM campaigns WHERE id = ?1", params![c], |_| {
                    Ok(())
                })
                .optional()
            })
            .await
            .map(|r| r.is_some())
            .map_err(err)
    }

    async fn bundle_hash(&self, campaign: &str) -> Result<Option<String>, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT hash FROM bundles WHERE campaign = ?1 ORDER BY saved_at DESC, rowid DESC LIMIT 1",
                    params![c],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
            .map_err(err)
    }

    async fn resolve(
        &self,
        campaign: &str,
        resolved: &[(LedgerKey, Settlement)],
    ) -> Result<(), StoreError> {
        let (c, resolved) = (campaign.to_string(), resolved.to_vec());
        self.ledger
            .call(move |conn| {
                let tx = conn.transaction()?;
                settle_batch(&tx, &c, None, &resolved)?;
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn ledger_totals(&self, campaign: &str) -> Result<LedgerTotals, StoreError> {
        let c = campaign.to_string();
        self.ledger
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT state, COUNT(*) FROM ledger WHERE campaign = ?1 GROUP BY state",
                )?;
                let mut totals = LedgerTotals::default();
                let rows = stmt.query_map(params![c], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                for row in rows {
                    let (state, n) = row?;
                    match state.as_str() {
                        "delivered" => totals.delivered = n,
                        "failed" => totals.failed = n,
                        "in_doubt" => totals.in_doubt = n,
                        "suppressed" => totals.suppressed = n,
                        _ => {}
                    }
                }
                Ok(totals)
            })
            .await
            .map_err(err)
    }

    async fn suppress(&self, entries: &[Suppression]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.db
            .call(move |conn| {
                let tx = conn.transaction()?;
                for e in &entries {
                    tx.prepare_cached(
                        "INSERT INTO suppressions (address, reason, detail, campaign, at) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, detail = excluded.detail,
                           campaign = excluded.campaign, at = excluded.at",
                    )?
                    .execute(params![normalise_address(&e.address), e.reason.as_str(), e.detail, e.campaign, e.at])?;
                }
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn unsuppress(&self, addresses: &[String]) -> Result<u64, StoreError> {
        let list: Vec<String> = addresses.iter().map(|a| normalise_address(a)).collect();
        self.db
            .call(move |conn| {
                conn.execute(
                    "DELETE FROM suppressions WHERE address IN (SELECT value FROM json_each(?1))",
                    params![serde_json::to_string(&list).unwrap_or_default()],
                )
                .map(|n| n as u64)
            })
            .await
            .map_err(err)
    }

    async fn suppressed(
        &self,
        addresses: &[String],
    ) -> Result<HashMap<String, SuppressionReason>, StoreError> {
        if addresses.is_empty() {
            return Ok(HashMap::new());
        }
        let list = serde_json::to_string(addresses).unwrap_or_default();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT address, reason FROM suppressions WHERE address IN (SELECT value FROM json_each(?1))",
                )?;
                let rows = stmt.query_map(params![list], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                let mut out = HashMap::new();
                for row in rows {
                    let (a, r) = row?;
                    out.insert(a, SuppressionReason::parse(&r).unwrap_or(SuppressionReason::Manual));
                }
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn suppressions(&self) -> Result<Vec<Suppression>, StoreError> {
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT address, reason, detail, campaign, at FROM suppressions ORDER BY at, address",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(Suppression {
                        address: r.get(0)?,
                        reason: SuppressionReason::parse(&r.get::<_, String>(1)?)
                            .unwrap_or(SuppressionReason::Manual),
                        detail: r.get(2)?,
                        campaign: r.get(3)?,
                        at: r.get(4)?,
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn save_provider_stats(
        &self,
        worker: &str,
        stats: &[ProviderStats],
    ) -> Result<(), StoreError> {
        let worker = worker.to_string();
        let rows: Vec<(String, String)> = stats
            .iter()
            .map(|s| {
                (
                    s.provider.clone(),
                    serde_json::to_string(s).unwrap_or_default(),
                )
            })
            .collect();
        self.db
            .call(move |conn| {
                let tx = conn.transaction()?;
                for (provider, json) in &rows {
                    tx.prepare_cached(
                        "INSERT INTO provider_stats (worker, provider, stats, updated_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (worker, provider) DO UPDATE SET stats = excluded.stats, updated_at = excluded.updated_at",
                    )?
                    .execute(params![worker, provider, json, now_ms()])?;
                }
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn provider_stats(&self) -> Result<Vec<ProviderStats>, StoreError> {
        let rows: Vec<String> = self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare("SELECT stats FROM provider_stats")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect()
            })
            .await
            .map_err(err)?;
        Ok(merge_provider_stats(
            rows.iter().filter_map(|j| serde_json::from_str(j).ok()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn setup() -> Option<(tempfile::TempDir, SqliteStore)> {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        Some((dir, s))
    }

    mod contract {
        crate::store::contract_tests!(super::setup);
    }

    #[tokio::test]
    async fn campaign_state_and_rejects_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let s = SqliteStore::open(&path).unwrap();
            assert_eq!(
                s.open_campaign("c", "h1")
                    .await
                    .unwrap()
                    .intake_batches_done,
                0
            );
            s.set_intake_progress("c", 4, 2000, false).await.unwrap();
            let r = Reject {
                line: 7,
                reason: "bad".into(),
                raw: "x".into(),
            };
            s.record_rejects("c", &[r.clone(), r]).await.unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let state = s.open_campaign("c", "h2").await.unwrap();
        assert_eq!(
            (
                state.intake_batches_done,
                state.rows_read,
                state.definition_hash.as_str()
            ),
            (4, 2000, "h1")
        );
        assert_eq!(s.rejects("c").await.unwrap().len(), 1);
    }
}
