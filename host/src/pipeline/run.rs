//! One campaign, one machine: `squall run`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::counters::RunCounters;
use super::intake::Intake;
use super::prepare::{self, PrepareError};
use super::recovery::settle_in_doubt;
use super::report::{Totals, totals, write_rejects};
use super::stages::{PersonaliseProcessor, SegmentProcessor, SendProcessor, Shared};
use super::transports::{OutboxPlace, Transports, check_providers};
use super::worker::{self, WorkerContext};
use crate::campaign::{Campaign, Diagnostics, TransportSpec};
use crate::delivery::Transport;
use crate::delivery::metrics::ProviderStats;
use crate::delivery::provider::ProviderConfig;
use crate::queue::Queue;
use crate::queue::embedded::EmbeddedQueue;
use crate::runtime::StageEngine;
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

pub type ProgressFn = Box<dyn Fn(&RunCounters) + Send + Sync>;

pub struct RunOptions {
    pub data_dir: PathBuf,
    /// Parallel personalise workers (the heaviest stage).
    pub personalise_workers: usize,
    /// Called with (finished recipients, this run's counters) while running.
    pub on_progress: Option<ProgressFn>,
    /// Set to stop early; the run exits cleanly and can be resumed.
    pub stop: Arc<AtomicBool>,
    /// `[[provider]]` entries of `squall.toml`, for campaigns that name them.
    pub providers: Vec<ProviderConfig>,
    /// The deployment's frequency cap (`squall.toml`), unless the campaign
    /// sets its own.
    pub frequency: Option<crate::campaign::FrequencyCap>,
}

impl RunOptions {
    pub fn new(data_dir: PathBuf) -> RunOptions {
        RunOptions {
            data_dir,
            personalise_workers: 2,
            on_progress: None,
            stop: Arc::new(AtomicBool::new(false)),
            providers: Vec::new(),
            frequency: None,
        }
    }
}

/// The campaign's totals (durable, across runs) and this run's own figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub campaign: String,
    #[serde(flatten)]
    pub totals: Totals,
    /// Messages this run found already sent (after a crash or a re-run).
    pub skipped_already_sent: u64,
    pub complete: bool,
    pub elapsed_ms: u64,
    pub outbox: Option<PathBuf>,
    pub rejects_file: PathBuf,
    pub stage_busy_ms: BTreeMap<String, u64>,
    /// Per provider: attempts, outcomes, latency, circuit breaker.
    pub providers: Vec<ProviderStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(#[from] PrepareError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

pub async fn run(campaign: &Campaign, opts: RunOptions) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let problems = check_providers(&opts.providers, campaign);
    if !problems.is_empty() {
        return Err(PrepareError::Invalid(Diagnostics(problems)).into());
    }
    let engine = StageEngine::new(&campaign.file.limits.sandbox())?;
    let stages = prepare::stages(campaign, &engine)?;
    Ok(execute(campaign, stages, opts, started).await?)
}

async fn execute(
    campaign: &Campaign,
    stages: prepare::Stages,
    opts: RunOptions,
    started: Instant,
) -> anyhow::Result<RunReport> {
    std::fs::create_dir_all(&opts.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            opts.data_dir.display()
        )
    })?;
    // One process per data directory: the embedded queue and the recovery
    // below assume nobody else holds messages or claims.
    let lock_path = opts.data_dir.join("squall.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock.try_write().map_err(|_| {
        anyhow::anyhow!(
            "another squall process is using {}; wait for it to finish or use another --data-dir",
            opts.data_dir.display()
        )
    })?;

    let queue = Arc::new(EmbeddedQueue::open(&opts.data_dir.join("queue.sqlite"))?);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&opts.data_dir)?);
    let outbox_path = opts.data_dir.join("outbox.jsonl");
    let transports = Arc::new(
        Transports::new(
            opts.providers.clone(),
            OutboxPlace::File(outbox_path.clone()),
        )
        .sharing_rates(store.clone()),
    );
    let transport: Arc<dyn Transport> = transports.get(campaign)?;

    let id = campaign.id().to_string();
    let state = store.open_campaign(&id, &campaign.hash).await?;
    // Kept so `squall serve` can show the campaign's definition and goal.
    let bundle = crate::campaign::Bundle::of(campaign)?;
    store
        .save_bundle(&id, &campaign.hash, &bundle.to_bytes())
        .await?;
    if state.definition_hash != campaign.hash {
        tracing::warn!(
            campaign = id,
            "the campaign file changed since this campaign started; messages already sent stay sent, the rest use the new file"
        );
    }
    let owner = format!("run-{:016x}", rand::random::<u64>());
    let recovered = queue.recover_abandoned().await?;
    if recovered > 0 {
        tracing::info!(
            batches = recovered,
            "resuming: batches a previous run held are back in the queues"
        );
    }
    settle_in_doubt(&*store, &*transport, &id, &owner).await?;

    let queue_dyn: Arc<dyn Queue> = queue.clone();
    let counters = Arc::new(RunCounters::default());
    let names = |stage: &str| format!("{id}.{stage}");
    let key = crate::tracking::signing_key(&*store).await?;
    let mut shared = Shared::new(
        campaign,
        queue_dyn.clone(),
        store.clone(),
        counters.clone(),
        &key,
    )
    .with_provider_turns(transports.shared_turn(campaign));
    shared.frequency = shared.frequency.or(opts.frequency);
    let limits = &campaign.file.limits;
    // A batch must never come back while it is still being worked on.
    let visibility = Duration::from_millis(limits.timeout_ms * 3).max(Duration::from_secs(60));
    let ctx = |stage: &str, upstream: &Arc<AtomicBool>| WorkerContext {
        queue: queue_dyn.clone(),
        store: store.clone(),
        campaign: id.clone(),
        input: names(stage),
        max_attempts: limits.max_attempts,
        visibility,
        poll: Duration::from_millis(200),
        receive_max: 1,
        counters: counters.clone(),
        upstream_done: upstream.clone(),
        stop: opts.stop.clone(),
    };

    let intake_done = Arc::new(AtomicBool::new(state.intake_finished));
    let segment_done = Arc::new(AtomicBool::new(false));
    let personalise_done = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();

    if !state.intake_finished {
        let audience = super::intake::audience_for_run(campaign, &opts.data_dir).await?;
        let intake = Intake {
            campaign: id.clone(),
            audience: audience.clone(),
            columns: campaign.columns.clone(),
            batch_size: limits.batch_size as u64,
            queue: queue_dyn.clone(),
            output: names("segment"),
            store: store.clone(),
            counters: counters.clone(),
            resume_from: state.intake_batches_done,
            read_ahead: Some(16),
            stop: opts.stop.clone(),
            waves: match &campaign.timing.waves {
                Some(plan) => Some((plan.clone(), super::intake::count_rows(&audience).await?)),
                None => None,
            },
        };
        let done = intake_done.clone();
        tasks.spawn(async move {
            let r = intake.run().await;
            done.store(true, Ordering::Release);
            r.context("audience intake")
        });
    }
    {
        let ctx = ctx("segment", &intake_done);
        let p = SegmentProcessor {
            shared: shared.clone(),
            stage: Some(stages.segmenter),
            next_queue: names("personalise"),
        };
        let done = segment_done.clone();
        tasks.spawn(async move {
            let r = worker::run(&ctx, p).await;
            done.store(true, Ordering::Release);
            r.context("segment worker")
        });
    }
    {
        let mut workers = tokio::task::JoinSet::new();
        let first = stages.personaliser;
        let mut instances = Vec::new();
        for _ in 1..opts.personalise_workers.max(1) {
            instances.push(first.fork().map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        instances.push(first);
        for stage in instances {
            let ctx = ctx("personalise", &segment_done);
            let p = PersonaliseProcessor {
                shared: shared.clone(),
                stage: Some(stage),
                next_queue: names("send"),
                input_queue: names("personalise"),
            };
            workers.spawn(async move { worker::run(&ctx, p).await });
        }
        let done = personalise_done.clone();
        tasks.spawn(async move {
            let mut result = Ok(());
            while let Some(r) = workers.join_next().await {
                if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                    result = Err(e);
                }
            }
            done.store(true, Ordering::Release);
            result.context("personalise worker")
        });
    }
    {
        // Two send workers: while one waits on the ledger or the transport,
        // the other builds. The ledger keeps them from ever sending one
        // message twice.
        let second = stages.sender.fork().map_err(|e| anyhow::anyhow!("{e}"))?;
        for stage in [stages.sender, second] {
            let ctx = ctx("send", &personalise_done);
            let p = SendProcessor {
                shared: shared.clone(),
                stage: Some(stage),
                transport: transport.clone(),
                owner: owner.clone(),
                input_queue: names("send"),
            };
            tasks.spawn(async move { worker::run(&ctx, p).await.context("send worker") });
        }
    }

    let progress = opts.on_progress.map(|f| {
        let counters = counters.clone();
        tokio::spawn(async move {
            loop {
                f(&counters);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    // Provider figures reach the store every second, for `squall status`.
    let stats_task = {
        let (t, s, o, c) = (
            transports.clone(),
            store.clone(),
            owner.clone(),
            counters.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                save_figures(&t, &*s, &o, &c).await;
            }
        })
    };
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            // A worker's infrastructure failed (disk, database): stop the
            // others; everything in flight comes back on the next run.
            opts.stop.store(true, Ordering::Relaxed);
            failure.get_or_insert(e);
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    stats_task.abort();
    save_figures(&transports, &*store, &owner, &counters).await;
    if let Some(e) = failure {
        return Err(e);
    }

    let state = store.open_campaign(&id, "").await?;
    let mut report = RunReport {
        campaign: id.clone(),
        totals: totals(&*store, &id, &state).await?,
        ..Default::default()
    };
    report.complete = !opts.stop.load(Ordering::Relaxed)
        && state.intake_finished
        && queues_empty(&queue, &id).await?;
    report.skipped_already_sent = RunCounters::get(&counters.skipped_already_sent);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.outbox = (campaign.transport == TransportSpec::Outbox).then_some(outbox_path);
    report.rejects_file = write_rejects(&*store, &opts.data_dir, &id).await?;
    report.providers = transports.stats();
    for (stage, c) in [
        ("segment", &counters.segment_busy_us),
        ("personalise", &counters.personalise_busy_us),
        ("send", &counters.send_busy_us),
    ] {
        report
            .stage_busy_ms
            .insert(stage.to_string(), RunCounters::get(c) / 1000);
    }
    Ok(report)
}

/// Provider and stage figures reach the store every second, for `squall
/// status` and `/metrics`.
pub(crate) async fn save_figures(
    transports: &Transports,
    store: &dyn Store,
    worker: &str,
    counters: &RunCounters,
) {
    let stats = transports.stats();
    if !stats.is_empty()
        && let Err(e) = store.save_provider_stats(worker, &stats).await
    {
        tracing::debug!("could not save provider figures: {e}");
    }
    let stages = counters.stage_stats();
    if !stages.is_empty()
        && let Err(e) = store.save_stage_stats(worker, &stages).await
    {
        tracing::debug!("could not save stage figures: {e}");
    }
}

async fn queues_empty(queue: &EmbeddedQueue, campaign: &str) -> anyhow::Result<bool> {
    for stage in ["segment", "personalise", "send"] {
        if queue.depth(&format!("{campaign}.{stage}")).await?.total() > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}
