//! The loop every stage worker runs: receive a batch, process it, hand the
//! result on, acknowledge. Retries and dead-lettering are decided here, in
//! one place, for every stage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::queue::{Delivery, Queue};
use crate::store::{DeadLetterRecord, Store};

use super::counters::RunCounters;

/// Why a batch was not processed.
#[derive(Debug)]
pub enum BatchFailure {
    /// Might work next time (a trap, a timeout, a transient provider error).
    Retry { reason: String, recipients: u64 },
    /// Will never work (undecodable); dead-lettered at once.
    Poison { reason: String, recipients: u64 },
}

pub trait Processor: Send {
    fn stage(&self) -> &'static str;
    fn process(
        &mut self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<(), BatchFailure>> + Send;
}

pub struct WorkerContext {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub campaign: String,
    pub input: String,
    pub max_attempts: u32,
    pub visibility: Duration,
    pub counters: Arc<RunCounters>,
    /// Set when everything upstream has finished producing.
    pub upstream_done: Arc<AtomicBool>,
    /// Set to stop early (Ctrl-C): finish the batch in hand, then exit.
    pub stop: Arc<AtomicBool>,
}

const POLL: Duration = Duration::from_millis(200);

pub async fn run<P: Processor>(ctx: &WorkerContext, mut processor: P) -> anyhow::Result<()> {
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Read before looking, so nothing produced in between is missed.
        let upstream_done = ctx.upstream_done.load(Ordering::Acquire);
        let got = ctx
            .queue
            .receive(&ctx.input, 1, ctx.visibility, POLL)
            .await?;
        if got.is_empty() {
            if upstream_done && ctx.queue.depth(&ctx.input).await?.total() == 0 {
                return Ok(());
            }
            continue;
        }
        for delivery in got {
            let started = std::time::Instant::now();
            let outcome = processor.process(&delivery).await;
            tracing::debug!(
                stage = processor.stage(),
                wall_us = started.elapsed().as_micros() as u64,
                "batch processed"
            );
            match outcome {
                Ok(()) => {
                    ctx.queue
                        .ack(&ctx.input, std::slice::from_ref(&delivery.receipt))
                        .await?
                }
                Err(BatchFailure::Retry { reason, recipients })
                    if delivery.receive_count < ctx.max_attempts =>
                {
                    // Exponential backoff: 0.5 s, 1 s, 2 s … capped at a minute.
                    let delay = Duration::from_millis(500u64 << delivery.receive_count.min(7))
                        .min(Duration::from_secs(60));
                    tracing::warn!(
                        stage = processor.stage(),
                        attempt = delivery.receive_count,
                        max_attempts = ctx.max_attempts,
                        recipients,
                        retry_in_ms = delay.as_millis() as u64,
                        "batch failed, will retry: {reason}"
                    );
                    ctx.queue
                        .retry_later(&ctx.input, &delivery.receipt, delay)
                        .await?;
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
                    dead_letter(ctx, processor.stage(), &delivery, recipients, &reason).await?;
                }
            }
        }
    }
}

async fn dead_letter(
    ctx: &WorkerContext,
    stage: &str,
    delivery: &Delivery,
    recipients: u64,
    reason: &str,
) -> anyhow::Result<()> {
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
    ctx.store.record_dead_letter(&ctx.campaign, &record).await?;
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
