//! Intake: streams the audience into the first queue, in chunks of
//! `batch_size` rows cut by row index, so a restart re-reads the file and
//! produces exactly the same batches. A chunk counts as done once its
//! envelopes are in the queue; a crash before that re-sends the chunk, and
//! the ledger makes any duplicate downstream harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::counters::RunCounters;
use super::envelope::Envelope;
use super::worker::dead_letter_item;
use crate::audience::{AudienceReader, AudienceSpec, Recipient, Reject, Row};
use crate::queue::Queue;
use crate::store::Store;
use squall_pipeline_core::record::Record;

pub struct Intake {
    pub campaign: String,
    pub audience: AudienceSpec,
    /// The audience's fields (the header), in record order.
    pub columns: Vec<String>,
    pub batch_size: u64,
    pub queue: Arc<dyn Queue>,
    pub output: String,
    pub store: Arc<dyn Store>,
    pub counters: Arc<RunCounters>,
    /// Chunks already handed on by an earlier run.
    pub resume_from: u64,
    /// Envelopes allowed to wait in the output queue before reading pauses
    /// (`None`: no limit, a launch fills a durable queue for workers that
    /// may not run yet). Memory stays flat either way: rows stream from the
    /// file to the queue and are never buffered whole.
    pub read_ahead: Option<u64>,
    pub stop: Arc<AtomicBool>,
    /// The campaign's waves and the audience's size in rows (valid or not):
    /// each chunk is split into one envelope per wave.
    pub waves: Option<(crate::schedule::waves::WavePlan, u64)>,
}

/// The audience a run or launch reads: the file, or for a PostgreSQL
/// audience the snapshot of its query in `data_dir/audiences/` (made on the
/// first run, reused by the next; see `audience::snapshot`).
pub async fn audience_for_run(
    campaign: &crate::campaign::Campaign,
    data_dir: &std::path::Path,
) -> anyhow::Result<crate::audience::AudienceSpec> {
    let spec = campaign.audience.clone();
    if spec.postgres.is_none() {
        return Ok(spec);
    }
    let path = data_dir
        .join("audiences")
        .join(format!("{}.jsonl", campaign.id()));
    if !path.exists() {
        tracing::info!(
            campaign = campaign.id(),
            snapshot = %path.display(),
            "reading the PostgreSQL audience once into a snapshot; the run and any restart read that"
        );
    }
    Ok(tokio::task::spawn_blocking(move || crate::audience::snapshot(&spec, &path)).await??)
}

/// Data rows in the audience, valid or not: what waves are shares of.
pub async fn count_rows(spec: &crate::audience::AudienceSpec) -> anyhow::Result<u64> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut n = 0;
        for row in AudienceReader::open(&spec)? {
            row?;
            n += 1;
        }
        Ok(n)
    })
    .await?
}

struct Chunk {
    number: u64,
    rows: Vec<Row>,
    /// Rows read up to and including this chunk.
    rows_read: u64,
}

impl Intake {
    pub async fn run(self) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::channel::<anyhow::Result<Chunk>>(2);
        let (spec, size, skip) = (self.audience.clone(), self.batch_size, self.resume_from);
        if skip > 0 {
            tracing::info!(
                campaign = self.campaign,
                batches_done = skip,
                "resuming the audience after the batches already queued"
            );
        }
        // CSV/JSON parsing is blocking work: a reader thread feeds chunks
        // through a small bounded channel (backpressure, constant memory).
        let reader = tokio::task::spawn_blocking(move || {
            let mut rows = match AudienceReader::open(&spec) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.into()));
                    return;
                }
            };
            let mut current = Chunk {
                number: 0,
                rows: Vec::new(),
                rows_read: 0,
            };
            for row in rows.by_ref() {
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.into()));
                        return;
                    }
                };
                let number = row.index() / size;
                if number != current.number {
                    let done = std::mem::replace(
                        &mut current,
                        Chunk {
                            number,
                            rows: Vec::new(),
                            rows_read: 0,
                        },
                    );
                    if done.number >= skip && tx.blocking_send(Ok(done)).is_err() {
                        return;
                    }
                }
                current.rows_read = row.index() + 1;
                if number >= skip {
                    current.rows.push(row);
                }
            }
            if (current.number >= skip && !current.rows.is_empty()) || current.rows_read == 0 {
                let _ = tx.blocking_send(Ok(current));
            }
        });
        let mut rows_read = 0;
        let mut chunks_done = self.resume_from;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.wait_for_room().await?;
            rows_read = chunk.rows_read;
            let number = chunk.number;
            if !chunk.rows.is_empty() {
                self.hand_on(chunk).await?;
            }
            chunks_done = number + 1;
            self.store
                .set_intake_progress(&self.campaign, chunks_done, rows_read, false)
                .await?;
        }
        // Dropping the receiver unblocks a reader waiting to hand over a chunk.
        drop(rx);
        reader.await?;
        if !self.stop.load(Ordering::Relaxed) {
            let state = self.store.open_campaign(&self.campaign, "").await?;
            let total = rows_read.max(state.rows_read);
            self.store
                .set_intake_progress(&self.campaign, chunks_done, total, true)
                .await?;
        }
        Ok(())
    }

    async fn wait_for_room(&self) -> anyhow::Result<()> {
        let Some(limit) = self.read_ahead else {
            return Ok(());
        };
        while self.queue.depth(&self.output).await?.total() >= limit {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn hand_on(&self, chunk: Chunk) -> anyhow::Result<()> {
        let mut valid: Vec<Recipient> = Vec::new();
        let mut rejects: Vec<Reject> = Vec::new();
        let read = chunk.rows.len() as u64;
        for row in chunk.rows {
            match row {
                Row::Valid(r) => valid.push(r),
                Row::Rejected { reject, .. } => rejects.push(reject),
            }
        }
        let ids: Vec<(String, u64)> = valid
            .iter()
            .map(|r| (r.record.id.clone(), r.line))
            .collect();
        let duplicates = self.store.register_ids(&self.campaign, &ids).await?;
        let mut records = Vec::with_capacity(valid.len());
        let mut waves = Vec::with_capacity(valid.len());
        for (r, dup) in valid.into_iter().zip(duplicates) {
            match dup {
                Some(first) => rejects.push(Reject {
                    line: r.line,
                    reason: format!(
                        "duplicate id `{}` (first seen on line {first})",
                        r.record.id
                    ),
                    raw: serde_json::to_string(&r.record).unwrap_or_default(),
                }),
                None => {
                    waves.push(self.waves.as_ref().map_or(0, |(plan, rows)| {
                        plan.wave_of(&self.campaign, r.index, *rows)
                    }));
                    records.push(r.record)
                }
            }
        }
        self.store.record_rejects(&self.campaign, &rejects).await?;
        RunCounters::add(&self.counters.rejected, rejects.len() as u64);
        RunCounters::add(&self.counters.rows_read, read);
        if records.is_empty() {
            return Ok(());
        }
        // One envelope per wave present in the chunk (just one without
        // waves), named apart so that each is one batch downstream.
        let mut by_wave: std::collections::BTreeMap<u32, Vec<Record>> = Default::default();
        for (r, w) in records.into_iter().zip(waves) {
            by_wave.entry(w).or_default().push(r);
        }
        let mut bodies = Vec::new();
        for (wave, records) in by_wave {
            let batch = match self.waves {
                Some(_) => format!("{:08}w{wave}", chunk.number),
                None => format!("{:08}", chunk.number),
            };
            let mut env = Envelope::new(&self.campaign, batch, self.columns.clone(), records);
            env.wave = wave;
            bodies.extend(self.encode(env).await?);
        }
        self.queue.send(&self.output, bodies).await?;
        Ok(())
    }

    async fn encode(&self, env: Envelope<Record>) -> anyhow::Result<Vec<Vec<u8>>> {
        let encoded = env.encode(self.queue.max_message_size());
        for (batch, item, size) in encoded.oversized {
            let reason =
                format!("recipient record of {size} bytes exceeds the queue's message limit");
            let payload = serde_json::to_string(&item).unwrap_or_default();
            dead_letter_item(
                &*self.store,
                &self.counters,
                &self.campaign,
                "intake",
                format!("{batch}/{}", item.id),
                reason,
                payload,
            )
            .await?;
        }
        Ok(encoded.bodies)
    }
}
