//! The embedded store: SQLite, one file, zero set-up.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::*;
use crate::sqlite::{Db, now_ms};
use squall_pipeline_core::ids::campaign_id_range;

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
CREATE TABLE IF NOT EXISTS stage_stats (
    worker TEXT NOT NULL,
    stage TEXT NOT NULL,
    stats TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (worker, stage)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS provider_history (
    worker TEXT NOT NULL,
    provider TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    PRIMARY KEY (worker, provider, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate_limits (
    key TEXT PRIMARY KEY,
    tat_ms REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS provider_slots (
    key TEXT NOT NULL,
    slot INTEGER NOT NULL,
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (key, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS controls (
    campaign TEXT NOT NULL,
    segment TEXT NOT NULL,
    variant TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (campaign, segment, variant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parked (
    id TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    queue TEXT NOT NULL,
    keys TEXT NOT NULL,
    payload BLOB NOT NULL,
    due_at INTEGER NOT NULL DEFAULT 0,
    taken_until INTEGER NOT NULL DEFAULT 0,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_by_due ON parked (due_at, at);
CREATE TABLE IF NOT EXISTS bundles (
    campaign TEXT NOT NULL,
    hash TEXT NOT NULL,
    bundle BLOB NOT NULL,
    saved_at INTEGER NOT NULL,
    PRIMARY KEY (campaign, hash)
);
";

/// Tracking has a file of its own: `squall serve` writes events while a
/// run writes the ledger, and SQLite allows one writer per file.
const TRACKING_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS engagement (
    campaign TEXT NOT NULL,
    message_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    machine INTEGER NOT NULL,
    recipient_id TEXT NOT NULL,
    segment TEXT NOT NULL,
    variant TEXT NOT NULL,
    wave INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (campaign, message_id, kind, detail, machine)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversions (
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    properties TEXT NOT NULL,
    at INTEGER NOT NULL,
    campaign TEXT,
    message_id TEXT,
    segment TEXT,
    variant TEXT,
    wave INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversions_by_campaign ON conversions (campaign) WHERE campaign IS NOT NULL;
";

const IDS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audience_ids (
    campaign TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    PRIMARY KEY (campaign, recipient_id)
) WITHOUT ROWID;
";

// Keyed by message id alone (see `ids::message_id`): it names (campaign,
// recipient, message) one to one, and its layout (campaign tag, then
// audience line) puts a batch's claims on a few neighbouring pages and a
// campaign's rows in one key range. No other index is written per message
// but the partial one the frequency cap and conversions read.
//
// The columns carry no NOT NULL or CHECK: a constraint that may abort a
// statement writing two b-trees (the row and the partial index) makes
// SQLite open a statement journal for every claim and settlement, which was
// half the ledger's cost (squall bench: 7.1 -> 3.5 us a message). Only this
// module writes the ledger, every column bound, states from `Settlement`.
const LEDGER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger (
    message_id TEXT NOT NULL PRIMARY KEY,
    campaign TEXT,
    recipient_id TEXT,
    message_key TEXT,
    state TEXT,
    owner TEXT,
    detail TEXT,
    updated_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_by_recipient ON ledger (recipient_id, updated_at) WHERE state = 'delivered';
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,
    lease_until INTEGER NOT NULL
) WITHOUT ROWID;
";

pub struct SqliteStore {
    db: Db,
    ids: Db,
    ledger: Db,
    tracking: Db,
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
            ledger: open_ledger(&dir.join("ledger.sqlite"), &dir.join("audience-ids.sqlite"))?,
            tracking: open("tracking.sqlite", TRACKING_SCHEMA)?,
        })
    }
}

/// Opens the ledger, first converting a ledger of an older layout (keyed by
/// campaign, recipient and message) to the current one. Its rows get their
/// message ids from the audience lines in `ids_path`, so every message it
/// settled stays settled.
fn open_ledger(path: &Path, ids_path: &Path) -> Result<Db, StoreError> {
    let unavailable =
        |e: rusqlite::Error| StoreError::Unavailable(format!("{}: {e}", path.display()));
    if path.exists() {
        convert_older_ledger(path, ids_path).map_err(unavailable)?;
    }
    Db::open(path, LEDGER_SCHEMA).map_err(unavailable)
}

fn convert_older_ledger(path: &Path, ids_path: &Path) -> rusqlite::Result<()> {
    // Another process (a run, a server) may be writing right now.
    let conn = crate::sqlite::connect(path)?;
    let keyed_by_recipient = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ledger'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .is_some_and(|sql| sql.contains("PRIMARY KEY (campaign, recipient_id, message_key)"));
    if !keyed_by_recipient {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE ledger RENAME TO ledger_keyed_by_recipient;
         DROP INDEX IF EXISTS ledger_by_message;
         DROP INDEX IF EXISTS ledger_by_recipient;",
    )?;
    conn.execute_batch(LEDGER_SCHEMA)?;
    conn.execute(
        "ATTACH DATABASE ?1 AS ids",
        params![ids_path.to_string_lossy()],
    )?;
    let converted = {
        let mut rows = conn.prepare(
            "SELECT l.campaign, l.recipient_id, l.message_key, l.state, l.owner, l.detail, l.updated_at, i.line
             FROM ledger_keyed_by_recipient AS l
             LEFT JOIN ids.audience_ids AS i ON i.campaign = l.campaign AND i.recipient_id = l.recipient_id",
        )?;
        let mut insert = conn.prepare(
            "INSERT INTO ledger (message_id, campaign, recipient_id, message_key, state, owner, detail, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut rows = rows.query([])?;
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            let (campaign, recipient, key): (String, String, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?);
            // Every recipient that reached the ledger was registered at
            // intake; line 0 is only a fallback for a damaged ids file.
            let line = r.get::<_, Option<i64>>(7)?.unwrap_or(0) as u64;
            let id = squall_pipeline_core::ids::message_id(&campaign, line, &recipient, &key);
            insert.execute(params![
                id,
                campaign,
                recipient,
                key,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?
            ])?;
            n += 1;
        }
        n
    };
    conn.execute_batch("DROP TABLE ledger_keyed_by_recipient; COMMIT; DETACH DATABASE ids;")?;
    tracing::info!(
        rows = converted,
        "the delivery ledger was converted to its current layout"
    );
    Ok(())
}

fn err(e: rusqlite::Error) -> StoreError {
    if crate::sqlite::is_busy(&e) {
        StoreError::Unavailable(format!(
            "the store database is locked by another process: {e}"
        ))
    } else {
        StoreError::Other(e.to_string())
    }
}

fn sent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SentMessage> {
    Ok(SentMessage {
        campaign: r.get(0)?,
        recipient_id: r.get(1)?,
        message_key: r.get(2)?,
        message_id: r.get(3)?,
        state: r.get(4)?,
        at: r.get(5)?,
    })
}

/// Settles a batch: one statement per message, by primary key. Only a
/// claim still open (and, unless resolving a dead owner's claims, still
/// `owner`'s) is settled, so a late settle of a resolved claim changes
/// nothing.
fn settle_batch(
    tx: &rusqlite::Transaction<'_>,
    owner: Option<&str>,
    settled: &[(LedgerKey, Settlement)],
) -> rusqlite::Result<()> {
    let now = now_ms();
    let mut update = tx.prepare_cached(
        "UPDATE ledger SET state = ?2, detail = ?3, updated_at = ?4
         WHERE message_id = ?1 AND state = 'claimed' AND (?5 IS NULL OR owner = ?5)",
    )?;
    let mut release = tx.prepare_cached(
        "DELETE FROM ledger WHERE message_id = ?1 AND state = 'claimed' AND (?2 IS NULL OR owner = ?2)",
    )?;
    for (key, s) in settled {
        let (state, detail) = match s {
            Settlement::Released => {
                release.execute(params![key.message_id, owner])?;
                continue;
            }
            Settlement::Delivered => ("delivered", None),
            Settlement::InDoubt => ("in_doubt", None),
            Settlement::Failed(reason) => ("failed", Some(reason)),
            Settlement::Suppressed(reason) => ("suppressed", Some(reason)),
            Settlement::Cancelled(reason) => ("cancelled", Some(reason)),
            Settlement::Capped(reason) => ("capped", Some(reason)),
        };
        update.execute(params![key.message_id, state, detail, now, owner])?;
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
                // One prepared insert per id; the first line is read back
                // only for an id that was there already (a re-read after a
                // restart, or a duplicate), so a fresh audience costs one
                // statement per recipient.
                let tx = conn.transaction()?;
                let mut first: HashMap<String, u64> = HashMap::new();
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO audience_ids (campaign, recipient_id, line) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                    )?;
                    let mut line_of = tx.prepare_cached(
                        "SELECT line FROM audience_ids WHERE campaign = ?1 AND recipient_id = ?2",
                    )?;
                    for (id, line) in &ids {
                        if insert.execute(params![c, id, *line as i64])? == 0
                            && !first.contains_key(id)
                        {
                            let l: i64 = line_of.query_row(params![c, id], |r| r.get(0))?;
                            first.insert(id.clone(), l as u64);
                        }
                    }
                }
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
        claims: &[LedgerKey],
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        let (c, o, claims) = (campaign.to_string(), owner.to_string(), claims.to_vec());
        self.ledger
            .call(move |conn| {
                let tx = conn.transaction()?;
                let now = now_ms();
                let mut inserted: HashSet<String> = HashSet::with_capacity(claims.len());
                let mut existing: HashMap<String, String> = HashMap::new();
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO ledger (message_id, campaign, recipient_id, message_key, state, owner, updated_at)
                         VALUES (?1, ?2, ?3, ?4, 'claimed', ?5, ?6) ON CONFLICT DO NOTHING",
                    )?;
                    let mut state = tx.prepare_cached("SELECT state FROM ledger WHERE message_id = ?1")?;
                    for cl in &claims {
                        if insert.execute(params![cl.message_id, c, cl.recipient_id, cl.message_key, o, now])? == 1 {
                            inserted.insert(cl.message_id.clone());
                        } else if inserted.contains(&cl.message_id) {
                            // Listed twice in this batch: its twin holds it.
                            existing.insert(cl.message_id.clone(), "claimed".into());
                        } else {
                            let s: String = state.query_row(params![cl.message_id], |r| r.get(0))?;
                            existing.insert(cl.message_id.clone(), s);
                        }
                    }
                }
                let out = claim_outcomes(&claims, inserted, &existing);
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
        // Message ids name their campaign.
        let _ = campaign;
        let (o, settled) = (owner.to_string(), settled.to_vec());
        self.ledger
            .call(move |conn| {
                let tx = conn.transaction()?;
                settle_batch(&tx, Some(&o), &settled)?;
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn unsettled(&self, campaign: &str, owner: &str) -> Result<Vec<LedgerKey>, StoreError> {
        let (c, o) = (campaign.to_string(), owner.to_string());
        let (low, high) = campaign_id_range(campaign);
        self.ledger
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT message_id, recipient_id, message_key FROM ledger
                     WHERE message_id >= ?4 AND message_id < ?5 AND campaign = ?1
                       AND state = 'claimed' AND owner <> ?2
                       AND NOT EXISTS (SELECT 1 FROM owners WHERE owners.owner = ledger.owner AND lease_until > ?3)",
                )?;
                let rows = stmt.query_map(params![c, o, now_ms(), low, high], |r| {
                    Ok(LedgerKey {
                        message_id: r.get(0)?,
                        recipient_id: r.get(1)?,
                        message_key: r.get(2)?,
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
        // Message ids name their campaign.
        let _ = campaign;
        let resolved = resolved.to_vec();
        self.ledger
            .call(move |conn| {
                let tx = conn.transaction()?;
                settle_batch(&tx, None, &resolved)?;
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn ledger_totals(&self, campaign: &str) -> Result<LedgerTotals, StoreError> {
        let c = campaign.to_string();
        let (low, high) = campaign_id_range(campaign);
        self.ledger
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT state, COUNT(*) FROM ledger
                     WHERE message_id >= ?2 AND message_id < ?3 AND campaign = ?1 GROUP BY state",
                )?;
                let mut totals = LedgerTotals::default();
                let rows = stmt.query_map(params![c, low, high], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                for row in rows {
                    let (state, n) = row?;
                    totals.add(&state, n);
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
                    tx.prepare_cached(
                        "INSERT INTO provider_history (worker, provider, bucket, delivered)
                         VALUES (?1, ?2, ?3, json_extract(?4, '$.delivered'))
                         ON CONFLICT (worker, provider, bucket) DO UPDATE SET delivered = excluded.delivered",
                    )?
                    .execute(params![worker, provider, now_ms() / PROVIDER_BUCKET_MS * PROVIDER_BUCKET_MS, json])?;
                }
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn provider_series(&self, since: i64) -> Result<Vec<(String, i64, u64)>, StoreError> {
        let readings: Vec<(String, String, i64, u64)> = self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT worker, provider, bucket, delivered FROM provider_history
                     WHERE bucket >= ?1 ORDER BY bucket",
                )?;
                let rows = stmt.query_map(params![since - PROVIDER_BUCKET_MS], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
                })?;
                rows.collect()
            })
            .await
            .map_err(err)?;
        Ok(provider_deltas(readings, since))
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

    async fn save_stage_stats(&self, worker: &str, stats: &[StageStats]) -> Result<(), StoreError> {
        let (w, stats) = (worker.to_string(), stats.to_vec());
        self.db
            .call(move |conn| {
                let tx = conn.transaction()?;
                for st in &stats {
                    tx.prepare_cached(
                        "INSERT INTO stage_stats (worker, stage, stats, updated_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (worker, stage) DO UPDATE SET stats = excluded.stats, updated_at = excluded.updated_at",
                    )?
                    .execute(params![w, st.stage, serde_json::to_string(st).unwrap_or_default(), now_ms()])?;
                }
                tx.commit()
            })
            .await
            .map_err(err)
    }

    async fn stage_stats(&self) -> Result<Vec<StageStats>, StoreError> {
        let rows: Vec<String> = self
            .db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT stats FROM stage_stats")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await
            .map_err(err)?;
        Ok(figures::merge_stage_stats(
            rows.iter().filter_map(|r| serde_json::from_str(r).ok()),
        ))
    }

    async fn campaigns(&self) -> Result<Vec<String>, StoreError> {
        self.db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT id FROM campaigns ORDER BY created_at, id")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn ledger_breakdown(&self, campaign: &str) -> Result<Vec<LedgerBreakdown>, StoreError> {
        let c = campaign.to_string();
        let (low, high) = campaign_id_range(campaign);
        self.ledger
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT message_key, state, COUNT(*) FROM ledger
                     WHERE message_id >= ?2 AND message_id < ?3 AND campaign = ?1
                     GROUP BY message_key, state ORDER BY message_key, state",
                )?;
                let rows = stmt.query_map(params![c, low, high], |r| {
                    Ok(LedgerBreakdown {
                        message_key: r.get(0)?,
                        state: r.get(1)?,
                        count: r.get::<_, i64>(2)? as u64,
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn delivered_series(
        &self,
        campaign: &str,
        since: i64,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, StoreError> {
        let c = campaign.to_string();
        let bucket = bucket_ms.max(1);
        let (low, high) = campaign_id_range(campaign);
        self.ledger
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT (updated_at / ?3) * ?3 AS b, message_key, COUNT(*) FROM ledger
                     WHERE message_id >= ?4 AND message_id < ?5 AND campaign = ?1
                       AND state = 'delivered' AND updated_at >= ?2
                     GROUP BY b, message_key ORDER BY b, message_key",
                )?;
                let rows = stmt.query_map(params![c, since, bucket, low, high], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)? as u64,
                    ))
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn sent_message(&self, message_id: &str) -> Result<Option<SentMessage>, StoreError> {
        let m = message_id.to_string();
        self.ledger
            .call(move |conn| {
                conn.query_row(
                    "SELECT campaign, recipient_id, message_key, message_id, state, updated_at
                     FROM ledger WHERE message_id = ?1",
                    params![m],
                    sent_row,
                )
                .optional()
            })
            .await
            .map_err(err)
    }

    async fn recent_deliveries(
        &self,
        recipient_ids: &[String],
        since: i64,
    ) -> Result<HashMap<String, u64>, StoreError> {
        if recipient_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let list = serde_json::to_string(recipient_ids).unwrap_or_default();
        self.ledger
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT recipient_id, COUNT(*) FROM ledger
                     WHERE recipient_id IN (SELECT value FROM json_each(?1))
                       AND state = 'delivered' AND updated_at >= ?2
                     GROUP BY recipient_id",
                )?;
                let rows = stmt.query_map(params![list, since], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn last_delivered(
        &self,
        recipient_id: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<SentMessage>, StoreError> {
        let r = recipient_id.to_string();
        self.ledger
            .call(move |conn| {
                conn.query_row(
                    "SELECT campaign, recipient_id, message_key, message_id, state, updated_at
                     FROM ledger WHERE recipient_id = ?1 AND state = 'delivered'
                       AND updated_at BETWEEN ?2 AND ?3
                     ORDER BY updated_at DESC LIMIT 1",
                    params![r, since, until],
                    sent_row,
                )
                .optional()
            })
            .await
            .map_err(err)
    }

    async fn take_slots(
        &self,
        key: &str,
        limit: u32,
        want: u32,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Vec<u32>, StoreError> {
        let (k, h) = (key.to_string(), holder.to_string());
        self.db
            .call(move |conn| {
                let now = now_ms();
                let until = now + lease.as_millis() as i64;
                let tx = conn.transaction()?;
                let mut taken = Vec::new();
                for slot in 0..limit {
                    if taken.len() as u32 == want {
                        break;
                    }
                    let n = tx
                        .prepare_cached(
                            "INSERT INTO provider_slots (key, slot, holder, until_ms) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (key, slot) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                             WHERE provider_slots.until_ms < ?5",
                        )?
                        .execute(params![k, slot, h, until, now])?;
                    if n == 1 {
                        taken.push(slot);
                    }
                }
                tx.commit()?;
                Ok(taken)
            })
            .await
            .map_err(err)
    }

    async fn keep_slots(
        &self,
        key: &str,
        slots: &[u32],
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        let (k, h) = (key.to_string(), holder.to_string());
        let list = serde_json::to_string(slots).unwrap_or_default();
        let until = if lease.is_zero() {
            0
        } else {
            now_ms() + lease.as_millis() as i64
        };
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE provider_slots SET until_ms = ?4
                     WHERE key = ?1 AND holder = ?2 AND slot IN (SELECT value FROM json_each(?3))",
                    params![k, h, list, until],
                )
                .map(|_| ())
            })
            .await
            .map_err(err)
    }

    async fn reserve(
        &self,
        key: &str,
        n: u32,
        rate_per_second: f64,
        tolerance_ms: i64,
    ) -> Result<i64, StoreError> {
        let k = key.to_string();
        let cost = f64::from(n) * 1000.0 / rate_per_second.max(1e-9);
        self.db
            .call(move |conn| {
                let now = now_ms() as f64;
                let since = now - tolerance_ms.max(0) as f64;
                // A new key has no unused turns to give back.
                let tat: f64 = conn.query_row(
                    "INSERT INTO rate_limits (key, tat_ms) VALUES (?1, ?2 + ?3)
                     ON CONFLICT (key) DO UPDATE SET tat_ms = MAX(rate_limits.tat_ms, ?4) + ?3
                     RETURNING tat_ms",
                    params![k, now, cost, since],
                    |r| r.get(0),
                )?;
                Ok((tat - cost) as i64)
            })
            .await
            .map_err(err)
    }

    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let n = name.to_string();
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT value FROM settings WHERE name = ?1",
                    params![n],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
            .map_err(err)
    }

    async fn set_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let (n, v) = (name.to_string(), value.to_vec());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO settings (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    params![n, v],
                )
                .map(|_| ())
            })
            .await
            .map_err(err)
    }

    async fn setting_or_init(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (n, v) = (name.to_string(), value.to_vec());
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![n, v],
                )?;
                conn.query_row(
                    "SELECT value FROM settings WHERE name = ?1",
                    params![n],
                    |r| r.get(0),
                )
            })
            .await
            .map_err(err)
    }

    async fn outcomes_since(
        &self,
        campaign: &str,
        since: i64,
    ) -> Result<crate::schedule::Outcomes, StoreError> {
        let c = campaign.to_string();
        let (low, high) = campaign_id_range(campaign);
        let mut o: crate::schedule::Outcomes = self
            .ledger
            .call(move |conn| {
                let mut o = crate::schedule::Outcomes::default();
                let mut stmt = conn.prepare_cached(
                    "SELECT state, COUNT(*) FROM ledger
                     WHERE message_id >= ?3 AND message_id < ?4 AND campaign = ?1 AND updated_at >= ?2
                       AND state IN ('delivered', 'failed') GROUP BY state",
                )?;
                let rows = stmt.query_map(params![c, since, low, high], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                for row in rows {
                    let (state, n) = row?;
                    if state == "delivered" {
                        o.delivered = n;
                    } else {
                        o.failed = n;
                    }
                }
                Ok(o)
            })
            .await
            .map_err(err)?;
        let c = campaign.to_string();
        let kinds: Vec<(String, u64)> = self
            .tracking
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT kind, COUNT(DISTINCT message_id) FROM engagement
                     WHERE campaign = ?1 AND first_at >= ?2 AND machine = 0 GROUP BY kind",
                )?;
                let rows = stmt.query_map(params![c, since], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?;
                rows.collect()
            })
            .await
            .map_err(err)?;
        for (kind, n) in kinds {
            match kind.as_str() {
                "bounce" => o.bounces = n,
                "complaint" => o.complaints = n,
                "unsubscribe" => o.unsubscribes = n,
                _ => {}
            }
        }
        Ok(o)
    }

    async fn record_engagement(&self, events: &[Engagement]) -> Result<Vec<bool>, StoreError> {
        let events = events.to_vec();
        self.tracking
            .call(move |conn| {
                let tx = conn.transaction()?;
                let mut new = Vec::with_capacity(events.len());
                for e in &events {
                    let m = &e.message;
                    // RETURNING tells an insert (hits = 1) from a repeat.
                    let hits: i64 = tx
                        .prepare_cached(
                            "INSERT INTO engagement (campaign, message_id, kind, detail, machine, recipient_id,
                               segment, variant, wave, first_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                             ON CONFLICT DO UPDATE SET hits = hits + 1
                             RETURNING hits",
                        )?
                        .query_row(
                            params![
                                m.campaign, m.message_id, e.kind.as_str(), e.detail, e.machine,
                                m.recipient_id, m.segment, m.variant, m.wave, e.at
                            ],
                            |r| r.get(0),
                        )?;
                    new.push(hits == 1);
                }
                tx.commit()?;
                Ok(new)
            })
            .await
            .map_err(err)
    }

    async fn engagement(&self, campaign: &str) -> Result<Vec<EngagementCount>, StoreError> {
        let c = campaign.to_string();
        self.tracking
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT kind, segment, variant, wave, machine, COUNT(DISTINCT message_id), SUM(hits)
                     FROM engagement WHERE campaign = ?1
                     GROUP BY kind, segment, variant, wave, machine",
                )?;
                let rows = stmt.query_map(params![c], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        EngagementCount {
                            kind: EngagementKind::Open,
                            segment: r.get(1)?,
                            variant: r.get(2)?,
                            wave: r.get(3)?,
                            machine: r.get(4)?,
                            messages: r.get::<_, i64>(5)? as u64,
                            hits: r.get::<_, i64>(6)? as u64,
                        },
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (kind, mut count) = row?;
                    if let Some(k) = EngagementKind::parse(&kind) {
                        count.kind = k;
                        out.push(count);
                    }
                }
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn record_conversion(&self, c: &Conversion) -> Result<bool, StoreError> {
        let c = c.clone();
        self.tracking
            .call(move |conn| {
                let a = c.attributed.as_ref();
                conn.execute(
                    "INSERT INTO conversions (event_id, kind, recipient_id, properties, at, campaign,
                       message_id, segment, variant, wave)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
                    params![
                        c.event_id, c.kind, c.recipient_id, c.properties.to_string(), c.at,
                        a.map(|m| &m.campaign), a.map(|m| &m.message_id), a.map(|m| &m.segment),
                        a.map(|m| &m.variant), a.map(|m| m.wave)
                    ],
                )
                .map(|n| n == 1)
            })
            .await
            .map_err(err)
    }

    async fn conversions(&self, campaign: &str) -> Result<Vec<ConversionCount>, StoreError> {
        let c = campaign.to_string();
        self.tracking
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT kind, segment, variant, wave, COUNT(*), COUNT(DISTINCT recipient_id)
                     FROM conversions WHERE campaign = ?1 GROUP BY kind, segment, variant, wave",
                )?;
                let rows = stmt.query_map(params![c], |r| {
                    Ok(ConversionCount {
                        kind: r.get(0)?,
                        segment: r.get(1)?,
                        variant: r.get(2)?,
                        wave: r.get(3)?,
                        events: r.get::<_, i64>(4)? as u64,
                        recipients: r.get::<_, i64>(5)? as u64,
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn control(
        &self,
        campaign: &str,
        scope: &Scope,
        action: ControlAction,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (c, scope, reason) = (campaign.to_string(), scope.clone(), reason.to_string());
        self.db
            .call(move |conn| {
                let (segment, variant) = scope.parts();
                match action {
                    ControlAction::Pause | ControlAction::Cancel => {
                        let state = if action == ControlAction::Pause {
                            ControlState::Paused
                        } else {
                            ControlState::Cancelled
                        };
                        // A cancel is final: a pause never overrides it.
                        conn.execute(
                            "INSERT INTO controls (campaign, segment, variant, state, reason, at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                             ON CONFLICT DO UPDATE SET state = excluded.state, reason = excluded.reason, at = excluded.at
                             WHERE controls.state <> 'cancelled'",
                            params![c, segment, variant, state.as_str(), reason, now_ms()],
                        )?;
                    }
                    ControlAction::Resume => {
                        let mut stmt = conn.prepare(
                            "SELECT segment, variant FROM controls WHERE campaign = ?1 AND state = 'paused'",
                        )?;
                        let paused: Vec<(String, String)> = stmt
                            .query_map(params![c], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect::<rusqlite::Result<_>>()?;
                        for (s, v) in paused {
                            if scope.contains(&Scope::from_parts(s.clone(), v.clone())) {
                                conn.execute(
                                    "DELETE FROM controls WHERE campaign = ?1 AND segment = ?2 AND variant = ?3 AND state = 'paused'",
                                    params![c, s, v],
                                )?;
                            }
                        }
                    }
                }
                Ok(())
            })
            .await
            .map_err(err)
    }

    async fn controls(&self, campaign: &str) -> Result<Vec<Control>, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT segment, variant, state, reason, at FROM controls WHERE campaign = ?1 ORDER BY at",
                )?;
                let rows = stmt.query_map(params![c], |r| {
                    Ok((
                        Scope::from_parts(r.get(0)?, r.get(1)?),
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (scope, state, reason, at) = row?;
                    if let Some(state) = ControlState::parse(&state) {
                        out.push(Control { scope, state, reason, at });
                    }
                }
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn park(&self, parked: &Parked) -> Result<(), StoreError> {
        let p = parked.clone();
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO parked (id, campaign, queue, keys, payload, at, due_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT DO NOTHING",
                    params![p.id, p.campaign, p.queue, serde_json::to_string(&p.keys).unwrap_or_default(), p.payload, now_ms(), p.due_at],
                )
                .map(|_| ())
            })
            .await
            .map_err(err)
    }

    async fn parked(&self, limit: u32, due_by: i64) -> Result<Vec<ParkedHead>, StoreError> {
        self.db
            .call(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, campaign, keys, due_at FROM parked
                     WHERE taken_until < ?1 AND due_at <= ?3
                     ORDER BY due_at, at, id LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![now_ms(), limit, due_by], |r| {
                    Ok(ParkedHead {
                        id: r.get(0)?,
                        campaign: r.get(1)?,
                        due_at: r.get(3)?,
                        keys: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(err)
    }

    async fn wake_parked(&self, campaign: &str) -> Result<(), StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE parked SET due_at = 1 WHERE campaign = ?1 AND due_at > 1",
                    params![c],
                )
                .map(|_| ())
            })
            .await
            .map_err(err)
    }

    async fn take_parked(
        &self,
        ids: &[String],
        lease: std::time::Duration,
    ) -> Result<Vec<Parked>, StoreError> {
        let ids = ids.to_vec();
        self.db
            .call(move |conn| {
                let now = now_ms();
                let until = now + lease.as_millis() as i64;
                let tx = conn.transaction()?;
                let mut taken = Vec::new();
                for id in ids {
                    let row = tx
                        .prepare_cached(
                            "UPDATE parked SET taken_until = ?2 WHERE id = ?1 AND taken_until < ?3
                             RETURNING id, campaign, queue, keys, payload, due_at",
                        )?
                        .query_row(params![id, until, now], |r| {
                            Ok(Parked {
                                id: r.get(0)?,
                                campaign: r.get(1)?,
                                due_at: r.get(5)?,
                                queue: r.get(2)?,
                                keys: serde_json::from_str(&r.get::<_, String>(3)?)
                                    .unwrap_or_default(),
                                payload: r.get(4)?,
                            })
                        })
                        .optional()?;
                    taken.extend(row);
                }
                tx.commit()?;
                Ok(taken)
            })
            .await
            .map_err(err)
    }

    async fn unpark(&self, ids: &[String]) -> Result<(), StoreError> {
        let list = serde_json::to_string(ids).unwrap_or_default();
        self.db
            .call(move |conn| {
                conn.execute(
                    "DELETE FROM parked WHERE id IN (SELECT value FROM json_each(?1))",
                    params![list],
                )
                .map(|_| ())
            })
            .await
            .map_err(err)
    }

    async fn parked_count(&self, campaign: &str) -> Result<u64, StoreError> {
        let c = campaign.to_string();
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM parked WHERE campaign = ?1",
                    params![c],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
            })
            .await
            .map_err(err)
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

    #[tokio::test]
    async fn a_ledger_of_the_older_layout_keeps_what_it_settled() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As written by a squall of the previous layout: keyed by
            // (campaign, recipient, message), message ids hashed.
            let ledger = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).unwrap();
            ledger
                .execute_batch(
                    "CREATE TABLE ledger (
                        campaign TEXT NOT NULL, recipient_id TEXT NOT NULL, message_key TEXT NOT NULL,
                        message_id TEXT NOT NULL,
                        state TEXT NOT NULL CHECK (state IN ('claimed', 'delivered', 'failed', 'in_doubt', 'suppressed')),
                        owner TEXT NOT NULL, detail TEXT, updated_at INTEGER NOT NULL,
                        PRIMARY KEY (campaign, recipient_id, message_key)
                     ) WITHOUT ROWID;
                     CREATE INDEX ledger_by_message ON ledger (message_id);
                     INSERT INTO ledger VALUES
                       ('c', 'r7', 'vip/a', 'old-1', 'delivered', 'run0', NULL, 1),
                       ('c', 'r8', 'vip/a', 'old-2', 'failed', 'run0', '550', 2);",
                )
                .unwrap();
            let ids = rusqlite::Connection::open(dir.path().join("audience-ids.sqlite")).unwrap();
            ids.execute_batch(IDS_SCHEMA).unwrap();
            ids.execute_batch("INSERT INTO audience_ids VALUES ('c', 'r7', 7), ('c', 'r8', 8);")
                .unwrap();
        }
        let s = SqliteStore::open(dir.path()).unwrap();
        crate::store::contract::the_converted_older_ledger_keeps_what_it_settled(&s).await;
        drop(s);
        // Opening it again converts nothing more.
        let s = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(s.ledger_totals("c").await.unwrap().delivered, 1);
    }
}
