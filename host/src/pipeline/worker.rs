//! The loop every stage worker runs: receive batches, process them, hand
//! the result on, acknowledge. Retries, dead-lettering, heartbeats and
//! riding out outages are decided here, in one place, for every stage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::queue::{Delivery, Queue, QueueError, Receipt};
use crate::store::{DeadLetterRecord, Store, StoreError};

use super::counters::{BatchEnd, RunCounters};
use super::envelope::Head;

/// Why a batch was not processed.
#[derive(Debug)]
pub enum BatchFailure {
    /// Might work next time (a trap, a timeout, a transient provider error).
    Retry { reason: String, recipients: u64 },
    /// Like `Retry`, but not before `after` (a provider's `Retry-After`).
    Later {
        reason: String,
        recipients: u64,
        after: Duration,
    },
    /// Will never work (undecodable); dead-lettered at once.
    Poison { reason: String, recipients: u64 },
    /// The queue or the store is unreachable: nothing is wrong with the
    /// batch. The worker keeps it (extending its visibility), waits and
    /// tries again; it never counts as an attempt.
    Unavailable { reason: String },
    /// Some of the batch is being sent by another worker right now (a
    /// redelivered copy). Waited out like an outage, for at most
    /// `BUSY_PATIENCE`, since a dead owner's claims are settled meanwhile.
    Busy { reason: String, recipients: u64 },
}

/// How long a batch may wait on claims another worker holds before the
/// wait counts as a failed attempt: longer than a worker's lease.
const BUSY_PATIENCE: Duration = Duration::from_secs(180);

/// Infrastructure errors know whether they are an outage (wait it out) or
/// a real failure (count an attempt).
pub trait InfraError: std::fmt::Display {
    fn is_unavailable(&self) -> bool;
}

impl InfraError for StoreError {
    fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl InfraError for QueueError {
    fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }
}

impl InfraError for anyhow::Error {
    fn is_unavailable(&self) -> bool {
        self.chain().any(|e| {
            e.downcast_ref::<StoreError>()
                .is_some_and(InfraError::is_unavailable)
                || e.downcast_ref::<QueueError>()
                    .is_some_and(InfraError::is_unavailable)
        })
    }
}

pub fn infra<E: InfraError>(e: E, recipients: u64) -> BatchFailure {
    if e.is_unavailable() {
        BatchFailure::Unavailable {
            reason: e.to_string(),
        }
    } else {
        BatchFailure::Retry {
            reason: format!("infrastructure: {e}"),
            recipients,
        }
    }
}

pub trait Processor: Send {
    fn stage(&self) -> &'static str;
    /// Attempts allowed for this batch, when the processor knows better
    /// than the worker (a deployment's campaigns each set their own).
    fn max_attempts(&self, _delivery: &Delivery) -> Option<u32> {
        None
    }
    fn process(
        &mut self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send;
    /// Whether work is held outside the queue (batches a pause parked), after
    /// putting back what may go on. Asked about once a second; a worker does
    /// not finish while work is held.
    fn held(&mut self) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }
}

pub struct WorkerContext {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    /// The campaign dead letters are filed under when a batch is too
    /// damaged to say (workers of a deployment serve every campaign).
    pub campaign: String,
    pub input: String,
    pub max_attempts: u32,
    pub visibility: Duration,
    /// Longest wait of one receive (long polling).
    pub poll: Duration,
    /// Batches received at once (up to 10 on SQS); the rest wait in hand,
    /// their visibility extended, while the first is processed.
    pub receive_max: usize,
    pub counters: Arc<RunCounters>,
    /// Set when everything upstream has finished producing.
    pub upstream_done: Arc<AtomicBool>,
    /// Set to stop early (Ctrl-C, SIGTERM): finish the batch in hand,
    /// release what was received but not started, then exit.
    pub stop: Arc<AtomicBool>,
}

/// Exponential backoff with full jitter, and one log line per interval
/// however often it is hit.
pub struct Backoff {
    attempt: u32,
    last_log: Option<Instant>,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            attempt: 0,
            last_log: None,
        }
    }

    pub fn reset(&mut self) {
        if self.attempt > 0 {
            tracing::info!("connection restored; resuming");
        }
        self.attempt = 0;
        self.last_log = None;
    }

    /// Waits before the next try (0.25 s doubling to 30 s, jittered).
    pub async fn wait(&mut self, what: &str, reason: &str) {
        let cap = Duration::from_millis(250 << self.attempt.min(7)).min(Duration::from_secs(30));
        self.attempt += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            tracing::warn!(
                attempt = self.attempt,
                "{what} unreachable, backing off and retrying by itself: {reason}"
            );
            self.last_log = Some(Instant::now());
        }
        let jittered = cap.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::time::sleep(jittered).await;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Receipts a worker holds, kept invisible by the heartbeat.
type Held = Arc<Mutex<Vec<Receipt>>>;

fn heartbeat(ctx: &WorkerContext, held: Held) -> tokio::task::JoinHandle<()> {
    let (queue, input, visibility) = (ctx.queue.clone(), ctx.input.clone(), ctx.visibility);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(visibility / 3).await;
            let receipts = held.lock().unwrap().clone();
            for r in receipts {
                if let Err(e) = queue.extend(&input, &r, visibility).await {
                    tracing::debug!("visibility heartbeat failed: {e}");
                }
            }
        }
    })
}

pub async fn run<P: Processor>(ctx: &WorkerContext, mut processor: P) -> anyhow::Result<()> {
    let held: Held = Arc::default();
    let beat = heartbeat(ctx, held.clone());
    let result = run_loop(ctx, &mut processor, &held).await;
    beat.abort();
    result
}

async fn run_loop<P: Processor>(
    ctx: &WorkerContext,
    processor: &mut P,
    held: &Held,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new();
    let mut last_held_check = Instant::now();
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if last_held_check.elapsed() >= super::control::PUT_BACK_EVERY {
            processor.held().await;
            last_held_check = Instant::now();
        }
        // Read before looking, so nothing produced in between is missed.
        let upstream_done = ctx.upstream_done.load(Ordering::Acquire);
        let got = match ctx
            .queue
            .receive(&ctx.input, ctx.receive_max.max(1), ctx.visibility, ctx.poll)
            .await
        {
            Ok(got) => {
                backoff.reset();
                got
            }
            Err(e) if e.is_unavailable() => {
                backoff.wait("queue", &e.to_string()).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if got.is_empty() {
            if upstream_done && ctx.queue.depth(&ctx.input).await?.total() == 0 {
                if !processor.held().await {
                    return Ok(());
                }
                // Paused: wait for a resume (or a stop) without spinning.
                last_held_check = Instant::now();
                tokio::time::sleep(super::control::REFRESH).await;
            }
            continue;
        }
        *held.lock().unwrap() = got.iter().map(|d| d.receipt.clone()).collect();
        let mut pending = got.into_iter();
        while let Some(delivery) = pending.next() {
            if ctx.stop.load(Ordering::Relaxed) {
                // Not started: hand back at once rather than after the
                // visibility timeout.
                for d in std::iter::once(delivery).chain(pending.by_ref()) {
                    if let Err(e) = ctx
                        .queue
                        .retry_later(&ctx.input, &d.receipt, Duration::ZERO)
                        .await
                    {
                        tracing::warn!(
                            "could not release a batch (it returns by itself after its visibility timeout): {e}"
                        );
                    }
                }
                held.lock().unwrap().clear();
                return Ok(());
            }
            handle(ctx, processor, &delivery, &mut backoff).await?;
            held.lock().unwrap().retain(|r| *r != delivery.receipt);
        }
    }
}

/// Processes one delivery to an end: acknowledged, scheduled for retry or
/// dead-lettered. Outages are waited out here, holding the batch.
async fn handle<P: Processor>(
    ctx: &WorkerContext,
    processor: &mut P,
    delivery: &Delivery,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let mut first_busy: Option<Instant> = None;
    let outcome = loop {
        let started = Instant::now();
        let outcome = processor.process(delivery).await;
        tracing::debug!(
            stage = processor.stage(),
            wall_us = started.elapsed().as_micros() as u64,
            "batch processed"
        );
        if let Some(m) = ctx.counters.stage(processor.stage()) {
            match &outcome {
                Ok(()) => m.record(started.elapsed(), BatchEnd::Done),
                Err(
                    BatchFailure::Retry { reason, .. }
                    | BatchFailure::Later { reason, .. }
                    | BatchFailure::Poison { reason, .. },
                ) => m.record(started.elapsed(), BatchEnd::Failed(reason)),
                // Waiting on an outage or another worker is not the batch's doing.
                Err(BatchFailure::Unavailable { .. } | BatchFailure::Busy { .. }) => {}
            }
        }
        match outcome {
            Err(BatchFailure::Unavailable { reason }) if !ctx.stop.load(Ordering::Relaxed) => {
                backoff
                    .wait("a dependency (store, queue or providers)", &reason)
                    .await;
            }
            Err(BatchFailure::Unavailable { reason }) => {
                tracing::warn!(
                    "stopping during an outage; the batch returns to its queue by itself: {reason}"
                );
                return Ok(());
            }
            Err(BatchFailure::Busy { reason, recipients }) => {
                let since = *first_busy.get_or_insert_with(Instant::now);
                if since.elapsed() > BUSY_PATIENCE || ctx.stop.load(Ordering::Relaxed) {
                    break Err(BatchFailure::Retry { reason, recipients });
                }
                tracing::debug!("batch waits on claims held elsewhere: {reason}");
                tokio::time::sleep(Duration::from_millis(500 + rand::random::<u64>() % 1000)).await;
            }
            other => break other,
        }
    };
    let (outcome, not_before) = match outcome {
        Err(BatchFailure::Later {
            reason,
            recipients,
            after,
        }) => (Err(BatchFailure::Retry { reason, recipients }), after),
        other => (other, Duration::ZERO),
    };
    let done = match outcome {
        Ok(()) => {
            ctx.queue
                .ack(&ctx.input, std::slice::from_ref(&delivery.receipt))
                .await
        }
        Err(BatchFailure::Retry { reason, recipients })
            if delivery.receive_count
                < processor.max_attempts(delivery).unwrap_or(ctx.max_attempts) =>
        {
            // The first retry is at once (another worker, a fresh instance
            // may well succeed), then exponential, jittered, capped.
            let delay = match delivery.receive_count {
                0 | 1 => Duration::ZERO,
                n => Duration::from_millis(500u64 << (n - 1).min(7))
                    .min(Duration::from_secs(60))
                    .mul_f64(0.5 + rand::random::<f64>() * 0.5),
            }
            .max(not_before);
            tracing::warn!(
                stage = processor.stage(),
                attempt = delivery.receive_count,
                max_attempts = processor.max_attempts(delivery).unwrap_or(ctx.max_attempts),
                recipients,
                retry_in_ms = delay.as_millis() as u64,
                "batch failed, will retry: {reason}"
            );
            ctx.queue
                .retry_later(&ctx.input, &delivery.receipt, delay)
                .await
        }
        Err(
            BatchFailure::Retry { reason, recipients }
            | BatchFailure::Poison { reason, recipients },
        ) => {
            let reason = format!("{reason} (after {} attempt(s))", delivery.receive_count);
            tracing::error!(
                stage = processor.stage(),
                recipients,
                "batch dead-lettered: {reason}"
            );
            match dead_letter(ctx, processor.stage(), delivery, recipients, &reason).await {
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(
                        "could not dead-letter during an outage; the batch returns by itself: {e}"
                    );
                    return Ok(());
                }
                other => return other,
            }
        }
        Err(
            BatchFailure::Unavailable { .. }
            | BatchFailure::Busy { .. }
            | BatchFailure::Later { .. },
        ) => {
            unreachable!("waited out or turned into a retry above")
        }
    };
    match done {
        // The message comes back after its visibility timeout; whatever
        // was already done with it is idempotent or in the ledger.
        Err(e) if e.is_unavailable() => {
            tracing::warn!(
                "queue unreachable after processing; the batch will be redelivered: {e}"
            );
            Ok(())
        }
        other => Ok(other?),
    }
}

async fn dead_letter(
    ctx: &WorkerContext,
    stage: &str,
    delivery: &Delivery,
    recipients: u64,
    reason: &str,
) -> anyhow::Result<()> {
    let campaign = Head::peek(&delivery.body).map_or_else(|| ctx.campaign.clone(), |h| h.campaign);
    // The store's record first: if we die between the two, the message is
    // redelivered and the (idempotent) record is written again.
    let item = format!("receipt:{}", xxhash_rust::xxh3::xxh3_64(&delivery.body));
    let record = DeadLetterRecord {
        stage: stage.to_string(),
        item,
        recipients,
        reason: reason.to_string(),
        payload: String::from_utf8_lossy(&delivery.body).into_owned(),
    };
    ctx.store.record_dead_letter(&campaign, &record).await?;
    ctx.queue.dead_letter(&ctx.input, delivery, reason).await?;
    RunCounters::add(&ctx.counters.dead_lettered, recipients);
    Ok(())
}

/// Dead-letters single items (a recipient whose template failed, a message
/// too large for any queue message), keeping them whole in the store.
pub async fn dead_letter_item(
    store: &dyn Store,
    counters: &RunCounters,
    campaign: &str,
    stage: &str,
    item: String,
    reason: String,
    payload: String,
) -> anyhow::Result<()> {
    tracing::warn!(stage, item, "recipient dead-lettered: {reason}");
    store
        .record_dead_letter(
            campaign,
            &DeadLetterRecord {
                stage: stage.to_string(),
                item,
                recipients: 1,
                reason,
                payload,
            },
        )
        .await?;
    RunCounters::add(&counters.dead_lettered, 1);
    Ok(())
}
