//! The shared store: PostgreSQL, for workers spread over machines. Same
//! contract as the SQLite store; the ledger's primary key makes a claim
//! atomic across every worker, and batches of claims and settlements are
//! single statements over `unnest`ed arrays.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::*;
use crate::sqlite::now_ms;
use squall_pipeline_core::ids::campaign_id_range;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Any fixed key: the migrations of several workers starting at once run
/// one after the other.
const MIGRATION_LOCK: i64 = 0x5351_5541_4c4c;

pub struct PostgresStore {
    pool: Pool,
}

fn err(e: tokio_postgres::Error) -> StoreError {
    let unavailable = e.is_closed()
        || match e.as_db_error() {
            None => true,
            // Connection exceptions, shutdowns, resource exhaustion.
            Some(db) => {
                let code = db.code().code();
                code.starts_with("08") || code.starts_with("57") || code.starts_with("53")
            }
        };
    if unavailable {
        StoreError::Unavailable(format!("PostgreSQL: {e}"))
    } else {
        StoreError::Other(format!("PostgreSQL: {e}"))
    }
}

fn sent_row(r: &tokio_postgres::Row) -> SentMessage {
    SentMessage {
        campaign: r.get(0),
        recipient_id: r.get(1),
        message_key: r.get(2),
        message_id: r.get(3),
        state: r.get(4),
        at: r.get(5),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => err(e),
        other => StoreError::Unavailable(format!("PostgreSQL: {other}")),
    }
}

impl PostgresStore {
    /// Connects and brings the schema up to date (one set of migrations,
    /// run at start by whoever gets there first).
    pub async fn connect(url: &str, max_connections: usize) -> Result<PostgresStore, StoreError> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Other(format!("invalid PostgreSQL URL {url}: {e}")))?;
        pg.connect_timeout(Duration::from_secs(5));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Other(format!("PostgreSQL pool: {e}")))?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let client: &mut tokio_postgres::Client = &mut client;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        let mut result = embedded::migrations::runner()
            .set_migration_table_name("squall_schema_history")
            .run_async(client)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if result.is_ok() {
            result = convert_older_ledger(client)
                .await
                .map_err(|e| format!("converting the older ledger: {e}"));
        }
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        result.map_err(|e| StoreError::Other(format!("PostgreSQL migrations: {e}")))?;
        Ok(())
    }
}

/// Moves the rows of a ledger of the older layout (left by migration V5)
/// into the current one, each under its message id, so every message it
/// settled stays settled. Runs under the migration lock, in one
/// transaction; a no-op once done.
async fn convert_older_ledger(
    client: &mut tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    let older: Option<String> = client
        .query_one("SELECT to_regclass('ledger_keyed_by_recipient')::text", &[])
        .await?
        .get(0);
    if older.is_none() {
        return Ok(());
    }
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT l.campaign, l.recipient_id, l.message_key, l.state, l.owner, l.detail, l.updated_at, i.line
             FROM ledger_keyed_by_recipient AS l
             LEFT JOIN audience_ids AS i ON i.campaign = l.campaign AND i.recipient_id = l.recipient_id",
            &[],
        )
        .await?;
    for chunk in rows.chunks(1000) {
        let mut cols: [Vec<String>; 6] = Default::default();
        let mut details: Vec<Option<String>> = Vec::with_capacity(chunk.len());
        let mut at: Vec<i64> = Vec::with_capacity(chunk.len());
        for r in chunk {
            let (campaign, recipient, key): (String, String, String) =
                (r.get(0), r.get(1), r.get(2));
            // Every recipient that reached the ledger was registered at
            // intake; line 0 is only a fallback.
            let line = r.get::<_, Option<i64>>(7).unwrap_or(0) as u64;
            cols[0].push(squall_pipeline_core::ids::message_id(
                &campaign, line, &recipient, &key,
            ));
            cols[1].push(campaign);
            cols[2].push(recipient);
            cols[3].push(key);
            cols[4].push(r.get(3));
            cols[5].push(r.get(4));
            details.push(r.get(5));
            at.push(r.get(6));
        }
        tx.execute(
            "INSERT INTO ledger (message_id, campaign, recipient_id, message_key, state, owner, detail, updated_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[])
             ON CONFLICT DO NOTHING",
            &[&cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5], &details, &at],
        )
        .await?;
    }
    tx.execute("DROP TABLE ledger_keyed_by_recipient", &[])
        .await?;
    tx.commit().await?;
    tracing::info!(
        rows = rows.len(),
        "the delivery ledger was converted to its current layout"
    );
    Ok(())
}

impl PostgresStore {
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }
}

/// Settles a batch, by message id: one statement for each kind of outcome
/// that has no reason, one for those that have one (each its own). Only a
/// claim still open (and, unless resolving a dead owner's claims, still
/// `owner`'s) is settled.
async fn settle_batch(
    tx: &tokio_postgres::Transaction<'_>,
    owner: Option<&str>,
    settled: &[(LedgerKey, Settlement)],
) -> Result<(), tokio_postgres::Error> {
    let now = now_ms();
    let ids = |want: &Settlement| -> Vec<&str> {
        settled
            .iter()
            .filter(|(_, s)| std::mem::discriminant(s) == std::mem::discriminant(want))
            .map(|(k, _)| k.message_id.as_str())
            .collect()
    };
    for (state, want) in [
        ("delivered", Settlement::Delivered),
        ("in_doubt", Settlement::InDoubt),
    ] {
        let ids = ids(&want);
        if !ids.is_empty() {
            tx.execute(
                "UPDATE ledger SET state = $3, updated_at = $4
                 WHERE message_id = ANY($1::text[]) AND state = 'claimed' AND ($2::text IS NULL OR owner = $2)",
                &[&ids, &owner, &state, &now],
            )
            .await?;
        }
    }
    let released = ids(&Settlement::Released);
    if !released.is_empty() {
        tx.execute(
            "DELETE FROM ledger
             WHERE message_id = ANY($1::text[]) AND state = 'claimed' AND ($2::text IS NULL OR owner = $2)",
            &[&released, &owner],
        )
        .await?;
    }
    let mut failed = Vec::new();
    let mut reasons = Vec::new();
    let mut states = Vec::new();
    for (k, s) in settled {
        let (state, reason) = match s {
            Settlement::Failed(r) => ("failed", r),
            Settlement::Suppressed(r) => ("suppressed", r),
            Settlement::Cancelled(r) => ("cancelled", r),
            Settlement::Capped(r) => ("capped", r),
            _ => continue,
        };
        failed.push(k.message_id.as_str());
        reasons.push(reason.as_str());
        states.push(state);
    }
    if !failed.is_empty() {
        tx.execute(
            "UPDATE ledger AS l SET state = f.state, detail = f.reason, updated_at = $5
             FROM unnest($1::text[], $2::text[], $3::text[]) AS f(message_id, reason, state)
             WHERE l.message_id = f.message_id AND l.state = 'claimed' AND ($4::text IS NULL OR l.owner = $4)",
            &[&failed, &reasons, &states, &owner, &now],
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn open_campaign(
        &self,
        campaign: &str,
        definition_hash: &str,
    ) -> Result<CampaignState, StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO campaigns (id, definition_hash, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&campaign, &definition_hash, &now_ms()],
        )
        .await
        .map_err(err)?;
        let row = c
            .query_one(
                "SELECT intake_batches_done, rows_read, intake_finished, definition_hash FROM campaigns WHERE id = $1",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(CampaignState {
            intake_batches_done: row.get::<_, i64>(0) as u64,
            rows_read: row.get::<_, i64>(1) as u64,
            intake_finished: row.get(2),
            definition_hash: row.get(3),
        })
    }

    async fn set_intake_progress(
        &self,
        campaign: &str,
        batches_done: u64,
        rows_read: u64,
        finished: bool,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE campaigns SET intake_batches_done = $2, rows_read = $3, intake_finished = $4 WHERE id = $1",
                &[&campaign, &(batches_done as i64), &(rows_read as i64), &finished],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn register_ids(
        &self,
        campaign: &str,
        ids: &[(String, u64)],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let (names, lines): (Vec<String>, Vec<i64>) =
            ids.iter().map(|(id, l)| (id.clone(), *l as i64)).unzip();
        let c = self.client().await?;
        c.execute(
            "INSERT INTO audience_ids (campaign, recipient_id, line)
             SELECT $1, i, l FROM unnest($2::text[], $3::bigint[]) AS u(i, l) ON CONFLICT DO NOTHING",
            &[&campaign, &names, &lines],
        )
        .await
        .map_err(err)?;
        let rows = c
            .query(
                "SELECT recipient_id, line FROM audience_ids WHERE campaign = $1 AND recipient_id = ANY($2)",
                &[&campaign, &names],
            )
            .await
            .map_err(err)?;
        let first: HashMap<String, u64> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect();
        Ok(duplicates(ids, &first))
    }

    async fn record_rejects(&self, campaign: &str, rejects: &[Reject]) -> Result<(), StoreError> {
        if rejects.is_empty() {
            return Ok(());
        }
        let lines: Vec<i64> = rejects.iter().map(|r| r.line as i64).collect();
        let reasons: Vec<&str> = rejects.iter().map(|r| r.reason.as_str()).collect();
        let raws: Vec<&str> = rejects.iter().map(|r| r.raw.as_str()).collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO rejects (campaign, line, reason, raw)
                 SELECT $1, l, r, w FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(l, r, w)
                 ON CONFLICT DO NOTHING",
                &[&campaign, &lines, &reasons, &raws],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn rejects(&self, campaign: &str) -> Result<Vec<Reject>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT line, reason, raw FROM rejects WHERE campaign = $1 ORDER BY line",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| Reject {
                line: r.get::<_, i64>(0) as u64,
                reason: r.get(1),
                raw: r.get(2),
            })
            .collect())
    }

    async fn reject_count(&self, campaign: &str) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COUNT(*) FROM rejects WHERE campaign = $1",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn record_batch(
        &self,
        campaign: &str,
        stage: &str,
        batch: &str,
        stats: &BatchStats,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(stats).map_err(|e| StoreError::Other(e.to_string()))?;
        self.client()
            .await?
            .execute(
                "INSERT INTO batch_stats (campaign, stage, batch, stats) VALUES ($1, $2, $3, ($4::text)::jsonb)
                 ON CONFLICT DO NOTHING",
                &[&campaign, &stage, &batch, &json],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn stage_totals(&self, campaign: &str, stage: &str) -> Result<BatchStats, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT stats::text FROM batch_stats WHERE campaign = $1 AND stage = $2",
                &[&campaign, &stage],
            )
            .await
            .map_err(err)?;
        let mut total = BatchStats::default();
        for r in rows {
            let stats: BatchStats = serde_json::from_str(r.get::<_, &str>(0))
                .map_err(|e| StoreError::Other(e.to_string()))?;
            total.merge(&stats);
        }
        Ok(total)
    }

    async fn record_dead_letter(
        &self,
        campaign: &str,
        r: &DeadLetterRecord,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO dead_letter_records (campaign, stage, item, recipients, reason, payload, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &campaign,
                    &r.stage,
                    &r.item,
                    &(r.recipients as i64),
                    &r.reason,
                    &r.payload,
                    &now_ms(),
                ],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn dead_letters(&self, campaign: &str) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT stage, item, recipients, reason, payload FROM dead_letter_records
                 WHERE campaign = $1 ORDER BY recorded_at, item",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetterRecord {
                stage: r.get(0),
                item: r.get(1),
                recipients: r.get::<_, i64>(2) as u64,
                reason: r.get(3),
                payload: r.get(4),
            })
            .collect())
    }

    async fn claim(
        &self,
        campaign: &str,
        owner: &str,
        claims: &[LedgerKey],
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        let mut ids = Vec::with_capacity(claims.len());
        let mut rs = Vec::with_capacity(claims.len());
        let mut ms = Vec::with_capacity(claims.len());
        for cl in claims {
            ids.push(cl.message_id.as_str());
            rs.push(cl.recipient_id.as_str());
            ms.push(cl.message_key.as_str());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        // `DISTINCT ON`: PostgreSQL refuses to touch one row twice in one
        // INSERT … ON CONFLICT, and a batch may list a message twice.
        let inserted: HashSet<String> = tx
            .query(
                "INSERT INTO ledger (message_id, campaign, recipient_id, message_key, state, owner, updated_at)
                 SELECT DISTINCT ON (i) i, $1, r, m, 'claimed', $2, $3
                 FROM unnest($4::text[], $5::text[], $6::text[]) AS u(i, r, m)
                 ON CONFLICT DO NOTHING
                 RETURNING message_id",
                &[&campaign, &owner, &now_ms(), &ids, &rs, &ms],
            )
            .await
            .map_err(err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut states: HashMap<String, String> = HashMap::new();
        if inserted.len() < claims.len() {
            for r in tx
                .query(
                    "SELECT message_id, state FROM ledger WHERE message_id = ANY($1::text[])",
                    &[&ids],
                )
                .await
                .map_err(err)?
            {
                states.insert(r.get(0), r.get(1));
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(claim_outcomes(claims, inserted, &states))
    }

    async fn settle(
        &self,
        _campaign: &str,
        owner: &str,
        settled: &[(LedgerKey, Settlement)],
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        settle_batch(&tx, Some(owner), settled).await.map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn unsettled(&self, campaign: &str, owner: &str) -> Result<Vec<LedgerKey>, StoreError> {
        let (low, high) = campaign_id_range(campaign);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT message_id, recipient_id, message_key FROM ledger
                 WHERE message_id >= $4 AND message_id < $5 AND campaign = $1
                   AND state = 'claimed' AND owner <> $2
                   AND NOT EXISTS (SELECT 1 FROM owners o WHERE o.owner = ledger.owner AND o.lease_until > $3)",
                &[&campaign, &owner, &now_ms(), &low, &high],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| LedgerKey {
                message_id: r.get(0),
                recipient_id: r.get(1),
                message_key: r.get(2),
            })
            .collect())
    }

    async fn beat(&self, owner: &str, lease: Duration) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO owners (owner, lease_until) VALUES ($1, $2)
                 ON CONFLICT (owner) DO UPDATE SET lease_until = excluded.lease_until",
                &[&owner, &(now_ms() + lease.as_millis() as i64)],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn retire(&self, owner: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM owners WHERE owner = $1", &[&owner])
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
        self.client()
            .await?
            .execute(
                "INSERT INTO bundles (campaign, hash, bundle, saved_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (campaign, hash) DO UPDATE SET saved_at = excluded.saved_at, seq = nextval(pg_get_serial_sequence('bundles', 'seq'))",
                &[&campaign, &hash, &bundle, &now_ms()],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn bundle(&self, campaign: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT hash, bundle FROM bundles WHERE campaign = $1 ORDER BY seq DESC LIMIT 1",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn campaign_known(&self, campaign: &str) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT 1 FROM campaigns WHERE id = $1", &[&campaign])
            .await
            .map_err(err)?;
        Ok(row.is_some())
    }

    async fn bundle_hash(&self, campaign: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT hash FROM bundles WHERE campaign = $1 ORDER BY seq DESC LIMIT 1",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn resolve(
        &self,
        campaign: &str,
        resolved: &[(LedgerKey, Settlement)],
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        let _ = campaign;
        settle_batch(&tx, None, resolved).await.map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn ledger_totals(&self, campaign: &str) -> Result<LedgerTotals, StoreError> {
        let (low, high) = campaign_id_range(campaign);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT state, COUNT(*) FROM ledger
                 WHERE message_id >= $2 AND message_id < $3 AND campaign = $1 GROUP BY state",
                &[&campaign, &low, &high],
            )
            .await
            .map_err(err)?;
        let mut totals = LedgerTotals::default();
        for r in rows {
            totals.add(r.get::<_, &str>(0), r.get::<_, i64>(1) as u64);
        }
        Ok(totals)
    }

    async fn suppress(&self, entries: &[Suppression]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let addresses: Vec<String> = entries
            .iter()
            .map(|e| normalise_address(&e.address))
            .collect();
        let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
        let details: Vec<&str> = entries.iter().map(|e| e.detail.as_str()).collect();
        let campaigns: Vec<Option<&str>> = entries.iter().map(|e| e.campaign.as_deref()).collect();
        let ats: Vec<i64> = entries.iter().map(|e| e.at).collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO suppressions (address, reason, detail, campaign, at)
                 SELECT DISTINCT ON (a) a, r, d, c, t FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS e(a, r, d, c, t)
                 ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, detail = excluded.detail,
                   campaign = excluded.campaign, at = excluded.at",
                &[&addresses, &reasons, &details, &campaigns, &ats],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn unsuppress(&self, addresses: &[String]) -> Result<u64, StoreError> {
        let list: Vec<String> = addresses.iter().map(|a| normalise_address(a)).collect();
        self.client()
            .await?
            .execute("DELETE FROM suppressions WHERE address = ANY($1)", &[&list])
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
        let rows = self
            .client()
            .await?
            .query(
                "SELECT address, reason FROM suppressions WHERE address = ANY($1)",
                &[&addresses],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    SuppressionReason::parse(r.get(1)).unwrap_or(SuppressionReason::Manual),
                )
            })
            .collect())
    }

    async fn suppressions(&self) -> Result<Vec<Suppression>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT address, reason, detail, campaign, at FROM suppressions ORDER BY at, address",
                &[],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| Suppression {
                address: r.get(0),
                reason: SuppressionReason::parse(r.get(1)).unwrap_or(SuppressionReason::Manual),
                detail: r.get(2),
                campaign: r.get(3),
                at: r.get(4),
            })
            .collect())
    }

    async fn save_provider_stats(
        &self,
        worker: &str,
        stats: &[ProviderStats],
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        for s in stats {
            let json = serde_json::to_string(s).map_err(|e| StoreError::Other(e.to_string()))?;
            c.execute(
                "INSERT INTO provider_stats (worker, provider, stats, updated_at) VALUES ($1, $2, ($3::text)::jsonb, $4)
                 ON CONFLICT (worker, provider) DO UPDATE SET stats = excluded.stats, updated_at = excluded.updated_at",
                &[&worker, &s.provider, &json, &now_ms()],
            )
            .await
            .map_err(err)?;
            let bucket = now_ms() / PROVIDER_BUCKET_MS * PROVIDER_BUCKET_MS;
            c.execute(
                "INSERT INTO provider_history (worker, provider, bucket, delivered) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (worker, provider, bucket) DO UPDATE SET delivered = excluded.delivered",
                &[&worker, &s.provider, &bucket, &(s.delivered as i64)],
            )
            .await
            .map_err(err)?;
        }
        Ok(())
    }

    async fn provider_series(&self, since: i64) -> Result<Vec<(String, i64, u64)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT worker, provider, bucket, delivered FROM provider_history
                 WHERE bucket >= $1 ORDER BY bucket",
                &[&(since - PROVIDER_BUCKET_MS)],
            )
            .await
            .map_err(err)?;
        Ok(provider_deltas(
            rows.iter().map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get::<_, i64>(2),
                    r.get::<_, i64>(3) as u64,
                )
            }),
            since,
        ))
    }

    async fn provider_stats(&self) -> Result<Vec<ProviderStats>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT stats::text FROM provider_stats", &[])
            .await
            .map_err(err)?;
        Ok(merge_provider_stats(rows.iter().filter_map(|r| {
            serde_json::from_str(r.get::<_, &str>(0)).ok()
        })))
    }

    async fn save_stage_stats(&self, worker: &str, stats: &[StageStats]) -> Result<(), StoreError> {
        if stats.is_empty() {
            return Ok(());
        }
        let stages: Vec<&str> = stats.iter().map(|s| s.stage.as_str()).collect();
        let json: Vec<String> = stats
            .iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO stage_stats (worker, stage, stats, updated_at)
                 SELECT $1, s, j::jsonb, $4 FROM unnest($2::text[], $3::text[]) AS x(s, j)
                 ON CONFLICT (worker, stage) DO UPDATE SET stats = excluded.stats, updated_at = excluded.updated_at",
                &[&worker, &stages, &json, &now_ms()],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn stage_stats(&self) -> Result<Vec<StageStats>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT stats::text FROM stage_stats", &[])
            .await
            .map_err(err)?;
        Ok(figures::merge_stage_stats(rows.iter().filter_map(|r| {
            serde_json::from_str(r.get::<_, &str>(0)).ok()
        })))
    }

    async fn campaigns(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT id FROM campaigns ORDER BY created_at, id", &[])
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn ledger_breakdown(&self, campaign: &str) -> Result<Vec<LedgerBreakdown>, StoreError> {
        let (low, high) = campaign_id_range(campaign);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT message_key, state, COUNT(*) FROM ledger
                 WHERE message_id >= $2 AND message_id < $3 AND campaign = $1
                 GROUP BY message_key, state ORDER BY message_key, state",
                &[&campaign, &low, &high],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| LedgerBreakdown {
                message_key: r.get(0),
                state: r.get(1),
                count: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    async fn delivered_series(
        &self,
        campaign: &str,
        since: i64,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, StoreError> {
        let (low, high) = campaign_id_range(campaign);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT (updated_at / $3) * $3 AS b, message_key, COUNT(*) FROM ledger
                 WHERE message_id >= $4 AND message_id < $5 AND campaign = $1
                   AND state = 'delivered' AND updated_at >= $2
                 GROUP BY b, message_key ORDER BY b, message_key",
                &[&campaign, &since, &bucket_ms.max(1), &low, &high],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2) as u64,
                )
            })
            .collect())
    }

    async fn sent_message(&self, message_id: &str) -> Result<Option<SentMessage>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT campaign, recipient_id, message_key, message_id, state, updated_at
                 FROM ledger WHERE message_id = $1",
                &[&message_id],
            )
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(sent_row))
    }

    async fn recent_deliveries(
        &self,
        recipient_ids: &[String],
        since: i64,
    ) -> Result<HashMap<String, u64>, StoreError> {
        if recipient_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self
            .client()
            .await?
            .query(
                "SELECT recipient_id, COUNT(*) FROM ledger
                 WHERE recipient_id = ANY($1) AND state = 'delivered' AND updated_at >= $2
                 GROUP BY recipient_id",
                &[&recipient_ids, &since],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn last_delivered(
        &self,
        recipient_id: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<SentMessage>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT campaign, recipient_id, message_key, message_id, state, updated_at
                 FROM ledger WHERE recipient_id = $1 AND state = 'delivered'
                   AND updated_at BETWEEN $2 AND $3
                 ORDER BY updated_at DESC LIMIT 1",
                &[&recipient_id, &since, &until],
            )
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(sent_row))
    }

    async fn take_slots(
        &self,
        key: &str,
        limit: u32,
        want: u32,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Vec<u32>, StoreError> {
        let now = now_ms();
        let until = now + lease.as_millis() as i64;
        // Free slots are picked first, then taken one by one: of two
        // workers after the same slot, the row's lock lets one win.
        let rows = self
            .client()
            .await?
            .query(
                "WITH free AS (
                     SELECT s FROM generate_series(0, $2::int - 1) AS s
                     WHERE NOT EXISTS (SELECT 1 FROM provider_slots p
                                       WHERE p.key = $1 AND p.slot = s AND p.until_ms >= $5)
                     ORDER BY s LIMIT $6)
                 INSERT INTO provider_slots (key, slot, holder, until_ms)
                 SELECT $1, s, $3, $4 FROM free
                 ON CONFLICT (key, slot) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
                 WHERE provider_slots.until_ms < $5
                 RETURNING slot",
                &[&key, &(limit as i32), &holder, &until, &now, &i64::from(want)],
            )
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    }

    async fn keep_slots(
        &self,
        key: &str,
        slots: &[u32],
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        let until = if lease.is_zero() {
            0
        } else {
            now_ms() + lease.as_millis() as i64
        };
        let slots: Vec<i32> = slots.iter().map(|s| *s as i32).collect();
        self.client()
            .await?
            .execute(
                "UPDATE provider_slots SET until_ms = $4
                 WHERE key = $1 AND holder = $2 AND slot = ANY($3)",
                &[&key, &holder, &slots, &until],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn reserve(
        &self,
        key: &str,
        n: u32,
        rate_per_second: f64,
        tolerance_ms: i64,
    ) -> Result<i64, StoreError> {
        let cost = f64::from(n) * 1000.0 / rate_per_second.max(1e-9);
        let now = now_ms() as f64;
        let since = now - tolerance_ms.max(0) as f64;
        // One row per key, advanced under its row lock: every worker of the
        // deployment takes its turn.
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO rate_limits (key, tat_ms) VALUES ($1, $2::float8 + $3::float8)
                 ON CONFLICT (key) DO UPDATE SET tat_ms = GREATEST(rate_limits.tat_ms, $4::float8) + $3::float8
                 RETURNING tat_ms",
                &[&key, &now, &cost, &since],
            )
            .await
            .map_err(err)?;
        Ok((row.get::<_, f64>(0) - cost) as i64)
    }

    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
            .await
            .map_err(err)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn set_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn setting_or_init(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &value],
            )
            .await
            .map_err(err)?;
        let row = client
            .query_one("SELECT value FROM settings WHERE name = $1", &[&name])
            .await
            .map_err(err)?;
        Ok(row.get(0))
    }

    async fn outcomes_since(
        &self,
        campaign: &str,
        since: i64,
    ) -> Result<crate::schedule::Outcomes, StoreError> {
        let client = self.client().await?;
        let mut o = crate::schedule::Outcomes::default();
        let (low, high) = campaign_id_range(campaign);
        for r in client
            .query(
                "SELECT state, COUNT(*) FROM ledger
                 WHERE message_id >= $3 AND message_id < $4 AND campaign = $1 AND updated_at >= $2
                   AND state IN ('delivered', 'failed') GROUP BY state",
                &[&campaign, &since, &low, &high],
            )
            .await
            .map_err(err)?
        {
            let n = r.get::<_, i64>(1) as u64;
            if r.get::<_, &str>(0) == "delivered" {
                o.delivered = n;
            } else {
                o.failed = n;
            }
        }
        for r in client
            .query(
                "SELECT kind, COUNT(DISTINCT message_id) FROM engagement
                 WHERE campaign = $1 AND first_at >= $2 AND NOT machine GROUP BY kind",
                &[&campaign, &since],
            )
            .await
            .map_err(err)?
        {
            let n = r.get::<_, i64>(1) as u64;
            match r.get::<_, &str>(0) {
                "bounce" => o.bounces = n,
                "complaint" => o.complaints = n,
                "unsubscribe" => o.unsubscribes = n,
                _ => {}
            }
        }
        Ok(o)
    }

    async fn record_engagement(&self, events: &[Engagement]) -> Result<Vec<bool>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO engagement (campaign, message_id, kind, detail, machine, recipient_id,
                   segment, variant, wave, first_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (campaign, message_id, kind, detail, machine)
                 DO UPDATE SET hits = engagement.hits + 1
                 RETURNING hits",
            )
            .await
            .map_err(err)?;
        let mut new = Vec::with_capacity(events.len());
        for e in events {
            let m = &e.message;
            let wave = m.wave as i32;
            let row = tx
                .query_one(
                    &stmt,
                    &[
                        &m.campaign,
                        &m.message_id,
                        &e.kind.as_str(),
                        &e.detail,
                        &e.machine,
                        &m.recipient_id,
                        &m.segment,
                        &m.variant,
                        &wave,
                        &e.at,
                    ],
                )
                .await
                .map_err(err)?;
            new.push(row.get::<_, i64>(0) == 1);
        }
        tx.commit().await.map_err(err)?;
        Ok(new)
    }

    async fn engagement(&self, campaign: &str) -> Result<Vec<EngagementCount>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT kind, segment, variant, wave, machine, COUNT(DISTINCT message_id), SUM(hits)::BIGINT
                 FROM engagement WHERE campaign = $1
                 GROUP BY kind, segment, variant, wave, machine",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(EngagementCount {
                    kind: EngagementKind::parse(r.get(0))?,
                    segment: r.get(1),
                    variant: r.get(2),
                    wave: r.get::<_, i32>(3) as u32,
                    machine: r.get(4),
                    messages: r.get::<_, i64>(5) as u64,
                    hits: r.get::<_, i64>(6) as u64,
                })
            })
            .collect())
    }

    async fn record_conversion(&self, c: &Conversion) -> Result<bool, StoreError> {
        let a = c.attributed.as_ref();
        let wave = a.map(|m| m.wave as i32);
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO conversions (event_id, kind, recipient_id, properties, at, campaign,
                   message_id, segment, variant, wave)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                &[
                    &c.event_id,
                    &c.kind,
                    &c.recipient_id,
                    &tokio_postgres::types::Json(&c.properties),
                    &c.at,
                    &a.map(|m| m.campaign.as_str()),
                    &a.map(|m| m.message_id.as_str()),
                    &a.map(|m| m.segment.as_str()),
                    &a.map(|m| m.variant.as_str()),
                    &wave,
                ],
            )
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    async fn conversions(&self, campaign: &str) -> Result<Vec<ConversionCount>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT kind, segment, variant, wave, COUNT(*), COUNT(DISTINCT recipient_id)
                 FROM conversions WHERE campaign = $1 GROUP BY kind, segment, variant, wave",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| ConversionCount {
                kind: r.get(0),
                segment: r.get(1),
                variant: r.get(2),
                wave: r.get::<_, Option<i32>>(3).unwrap_or(0) as u32,
                events: r.get::<_, i64>(4) as u64,
                recipients: r.get::<_, i64>(5) as u64,
            })
            .collect())
    }

    async fn control(
        &self,
        campaign: &str,
        scope: &Scope,
        action: ControlAction,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (segment, variant) = scope.parts();
        let client = self.client().await?;
        match action {
            ControlAction::Pause | ControlAction::Cancel => {
                let state = if action == ControlAction::Pause {
                    ControlState::Paused
                } else {
                    ControlState::Cancelled
                };
                // A cancel is final: a pause never overrides it.
                client
                    .execute(
                        "INSERT INTO controls (campaign, segment, variant, state, reason, at)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (campaign, segment, variant) DO UPDATE
                         SET state = excluded.state, reason = excluded.reason, at = excluded.at
                         WHERE controls.state <> 'cancelled'",
                        &[
                            &campaign,
                            &segment,
                            &variant,
                            &state.as_str(),
                            &reason,
                            &now_ms(),
                        ],
                    )
                    .await
                    .map_err(err)?;
            }
            ControlAction::Resume => {
                let rows = client
                    .query(
                        "SELECT segment, variant FROM controls WHERE campaign = $1 AND state = 'paused'",
                        &[&campaign],
                    )
                    .await
                    .map_err(err)?;
                for r in rows {
                    let (s, v): (String, String) = (r.get(0), r.get(1));
                    if scope.contains(&Scope::from_parts(s.clone(), v.clone())) {
                        client
                            .execute(
                                "DELETE FROM controls WHERE campaign = $1 AND segment = $2 AND variant = $3 AND state = 'paused'",
                                &[&campaign, &s, &v],
                            )
                            .await
                            .map_err(err)?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn controls(&self, campaign: &str) -> Result<Vec<Control>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT segment, variant, state, reason, at FROM controls WHERE campaign = $1 ORDER BY at",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Control {
                    scope: Scope::from_parts(r.get(0), r.get(1)),
                    state: ControlState::parse(r.get(2))?,
                    reason: r.get(3),
                    at: r.get(4),
                })
            })
            .collect())
    }

    async fn park(&self, parked: &Parked) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO parked (id, campaign, queue, keys, payload, at, due_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT DO NOTHING",
                &[
                    &parked.id,
                    &parked.campaign,
                    &parked.queue,
                    &tokio_postgres::types::Json(&parked.keys),
                    &parked.payload,
                    &now_ms(),
                    &parked.due_at,
                ],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn parked(&self, limit: u32, due_by: i64) -> Result<Vec<ParkedHead>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, campaign, keys, due_at FROM parked
                 WHERE taken_until < $1 AND due_at <= $3
                 ORDER BY due_at, at, id LIMIT $2",
                &[&now_ms(), &i64::from(limit), &due_by],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| ParkedHead {
                id: r.get(0),
                campaign: r.get(1),
                due_at: r.get(3),
                keys: r.get::<_, tokio_postgres::types::Json<Vec<String>>>(2).0,
            })
            .collect())
    }

    async fn wake_parked(&self, campaign: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE parked SET due_at = 1 WHERE campaign = $1 AND due_at > 1",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn take_parked(
        &self,
        ids: &[String],
        lease: std::time::Duration,
    ) -> Result<Vec<Parked>, StoreError> {
        let now = now_ms();
        let until = now + lease.as_millis() as i64;
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE parked SET taken_until = $2 WHERE id = ANY($1) AND taken_until < $3
                 RETURNING id, campaign, queue, keys, payload, due_at",
                &[&ids, &until, &now],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| Parked {
                id: r.get(0),
                campaign: r.get(1),
                due_at: r.get(5),
                queue: r.get(2),
                keys: r.get::<_, tokio_postgres::types::Json<Vec<String>>>(3).0,
                payload: r.get(4),
            })
            .collect())
    }

    async fn unpark(&self, ids: &[String]) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM parked WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn parked_count(&self, campaign: &str) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT COUNT(*) FROM parked WHERE campaign = $1",
                &[&campaign],
            )
            .await
            .map_err(err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// A fresh, empty database on the server at `SQUALL_TEST_POSTGRES` (a
/// server URL without a database, e.g. `postgres://postgres@127.0.0.1:5432`),
/// dropped when this is: a shared server is not left a database per test.
#[cfg(test)]
pub(crate) struct TestDatabase {
    pub url: String,
    server: String,
    name: String,
}

#[cfg(test)]
pub(crate) async fn test_database() -> Option<TestDatabase> {
    let server = crate::test_service("SQUALL_TEST_POSTGRES")?;
    let server = server.trim_end_matches('/').to_string();
    let (client, conn) = tokio_postgres::connect(&format!("{server}/postgres"), NoTls)
        .await
        .expect("connect to the test PostgreSQL server");
    tokio::spawn(conn);
    let name = format!("squall_test_{:016x}", rand::random::<u64>());
    client
        .execute(&format!("CREATE DATABASE {name}"), &[])
        .await
        .unwrap();
    Some(TestDatabase {
        url: format!("{server}/{name}"),
        server,
        name,
    })
}

#[cfg(test)]
impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // a thread of its own with a runtime of its own does the work.
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&format!("{server}/postgres"), NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
                        .await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn setup() -> Option<(TestDatabase, PostgresStore)> {
        let db = test_database().await?;
        let store = PostgresStore::connect(&db.url, 4).await.unwrap();
        Some((db, store))
    }

    mod contract {
        crate::store::contract_tests!(super::setup);
    }

    #[tokio::test]
    async fn concurrent_claims_from_many_workers_never_overlap() {
        let Some(db) = test_database().await else {
            return;
        };
        let store = std::sync::Arc::new(PostgresStore::connect(&db.url, 8).await.unwrap());
        // Migrating again (a second worker starting) is harmless.
        PostgresStore::connect(&db.url, 1).await.unwrap();
        let claims: Vec<LedgerKey> = (0..300)
            .map(|i| LedgerKey {
                message_id: squall_pipeline_core::ids::message_id("c", i, &format!("r{i}"), "s/a"),
                recipient_id: format!("r{i}"),
                message_key: "s/a".into(),
            })
            .collect();
        let mut tasks = Vec::new();
        for w in 0..6 {
            let (s, claims) = (store.clone(), claims.clone());
            tasks.push(tokio::spawn(async move {
                let out = s.claim("c", &format!("w{w}"), &claims).await.unwrap();
                out.iter().filter(|o| **o == ClaimOutcome::Claimed).count()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 300, "each message claimed by exactly one worker");
    }

    #[tokio::test]
    async fn a_ledger_of_the_older_layout_keeps_what_it_settled() {
        let Some(db) = test_database().await else {
            return;
        };
        {
            // The schema as it was before V5, with rows of the older ledger.
            let (mut client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut runner =
                embedded::migrations::runner().set_target(refinery::Target::Version(4));
            runner
                .set_migration_table_name("squall_schema_history")
                .run_async(&mut client)
                .await
                .unwrap();
            client
                .batch_execute(
                    "INSERT INTO ledger VALUES
                       ('c', 'r7', 'vip/a', 'old-1', 'delivered', 'run0', NULL, 1),
                       ('c', 'r8', 'vip/a', 'old-2', 'failed', 'run0', '550', 2);
                     INSERT INTO audience_ids VALUES ('c', 'r7', 7), ('c', 'r8', 8);",
                )
                .await
                .unwrap();
        }
        let s = PostgresStore::connect(&db.url, 2).await.unwrap();
        crate::store::contract::the_converted_older_ledger_keeps_what_it_settled(&s).await;
        // A second worker starting converts nothing more.
        let again = PostgresStore::connect(&db.url, 1).await.unwrap();
        assert_eq!(again.ledger_totals("c").await.unwrap().delivered, 1);
    }
}
