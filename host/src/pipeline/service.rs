//! `squall worker --stage S`: one stage's worker process for a deployment.
//! It serves every launched campaign: each batch names its campaign, whose
//! stored bundle is unpacked and prepared on first sight (per worker task,
//! since each holds its own Wasm instances).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::backends::Backends;
use super::counters::RunCounters;
use super::envelope::{EnvelopeError, Head, PersonaliseEnvelope, SegmentEnvelope, SendEnvelope};
use super::prepare;
use super::recovery::settle_in_doubt;
use super::run::save_figures;
use super::stages::{PersonaliseProcessor, SegmentProcessor, SendProcessor, Shared};
use super::transports::{OutboxPlace, Transports};
use super::worker::{self, BatchFailure, Processor, WorkerContext, infra};
use crate::campaign::{Bundle, Campaign};
use crate::config::Stage;
use crate::delivery::Transport;
use crate::queue::{Delivery, Queue};
use crate::runtime::StageEngine;
use crate::store::Store;

/// A worker's lease in the store: a worker silent for this long is dead
/// and its open delivery claims are settled by others.
const LEASE: Duration = Duration::from_secs(30);

pub struct WorkerOptions {
    pub stage: Stage,
    pub concurrency: usize,
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Default, Serialize)]
pub struct WorkerReport {
    pub worker: String,
    pub stage: String,
    pub sent: u64,
    pub failed: u64,
    pub skipped_already_sent: u64,
    pub dead_lettered: u64,
}

fn worker_id(stage: Stage) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{}-{host}-{}-{:06x}",
        stage.name(),
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Runs until `stop` is set, then finishes or releases what it holds.
pub async fn work(backends: &Backends, opts: WorkerOptions) -> anyhow::Result<WorkerReport> {
    let id = worker_id(opts.stage);
    let config = &backends.config;
    let counters = Arc::new(RunCounters::default());
    tracing::info!(
        worker = id,
        stage = opts.stage.name(),
        concurrency = opts.concurrency,
        "worker started"
    );

    // The lease: renewed well within its length; missing a few renewals
    // (a store outage) is harmless, the claims stay ours.
    backends.store.beat(&id, LEASE).await?;
    let lease = {
        let (store, id) = (backends.store.clone(), id.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE / 4).await;
                if let Err(e) = store.beat(&id, LEASE).await {
                    tracing::warn!("could not renew the worker's lease: {e}");
                }
            }
        })
    };

    let transports = Arc::new(
        Transports::new(
            config.providers.clone(),
            OutboxPlace::Shared {
                dir: config.data_dir.join("outbox"),
                worker: id.clone(),
            },
        )
        .sharing_rates(backends.store.clone()),
    );
    // Provider figures reach the store every second, for `squall status`.
    let stats_task = {
        let (transports, store, id, c) = (
            transports.clone(),
            backends.store.clone(),
            id.clone(),
            counters.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                save_figures(&transports, &*store, &id, &c).await;
            }
        })
    };
    let campaigns = Arc::new(Campaigns {
        stage: opts.stage,
        owner: id.clone(),
        data_dir: config.data_dir.clone(),
        store: backends.store.clone(),
        transports: transports.clone(),
        frequency: config.frequency.max_messages_per_recipient,
        loaded: Default::default(),
        engines: Default::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let limits = config.stage.get(opts.stage);
    for _ in 0..opts.concurrency.max(1) {
        let ctx = WorkerContext {
            queue: backends.queue.clone(),
            store: backends.store.clone(),
            campaign: "unknown".into(),
            input: opts.stage.name().to_string(),
            max_attempts: 3, // each campaign's own, see `Router::max_attempts`
            visibility: config.queue.visibility(),
            poll: config.queue.wait(),
            receive_max: limits.read_ahead.clamp(1, 10),
            counters: counters.clone(),
            upstream_done: Arc::new(AtomicBool::new(false)),
            stop: opts.stop.clone(),
        };
        let router = Router {
            shared_parts: (backends.queue.clone(), counters.clone()),
            campaigns: campaigns.clone(),
            mine: HashMap::new(),
        };
        tasks.spawn(async move { worker::run(&ctx, router).await });
    }
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            opts.stop.store(true, Ordering::Relaxed);
            failure.get_or_insert(e);
        }
    }
    lease.abort();
    stats_task.abort();
    save_figures(&transports, &*backends.store, &id, &counters).await;
    // A clean exit settled everything it claimed: end the lease at once.
    if failure.is_none()
        && let Err(e) = backends.store.retire(&id).await
    {
        tracing::warn!("could not end the worker's lease (it runs out by itself): {e}");
    }
    if let Some(e) = failure {
        return Err(e);
    }
    tracing::info!(worker = id, "worker stopped");
    Ok(WorkerReport {
        worker: id,
        stage: opts.stage.name().into(),
        sent: RunCounters::get(&counters.sent),
        failed: RunCounters::get(&counters.failed),
        skipped_already_sent: RunCounters::get(&counters.skipped_already_sent),
        dead_lettered: RunCounters::get(&counters.dead_lettered),
    })
}

enum Loaded {
    Segment(SegmentProcessor),
    Personalise(PersonaliseProcessor),
    Send(SendProcessor),
}

/// A campaign as this process runs it: unpacked, its stages compiled and
/// configured once; every task forks its own instances from `stages`.
struct Prepared {
    hash: String,
    campaign: Campaign,
    stages: std::sync::Mutex<prepare::Stages>,
    /// The send stage's transport (settled of dead workers' claims).
    transport: Option<Arc<dyn Transport>>,
}

/// The campaigns one worker process has loaded, shared by its tasks, so
/// that a campaign is unpacked, compiled and reconciled once per process.
struct Campaigns {
    stage: Stage,
    owner: String,
    data_dir: PathBuf,
    store: Arc<dyn Store>,
    /// One per destination, shared by the campaigns that use it; the
    /// outbox is one file per worker process.
    transports: Arc<Transports>,
    /// The deployment's frequency cap, unless a campaign sets its own.
    frequency: Option<crate::campaign::FrequencyCap>,
    loaded: tokio::sync::Mutex<HashMap<String, Arc<Prepared>>>,
    /// Engines by sandbox limits: creating one reserves the instance pool.
    engines: std::sync::Mutex<HashMap<(u32, u64), Arc<StageEngine>>>,
}

impl Campaigns {
    /// The campaign as currently stored, loading it if it is new here or
    /// its definition changed. One task loads; the others wait for it.
    async fn get(&self, campaign: &str) -> Result<Arc<Prepared>, BatchFailure> {
        let mut loaded = self.loaded.lock().await;
        let hash = self
            .store
            .bundle_hash(campaign)
            .await
            .map_err(|e| infra(e, 0))?;
        if let (Some(p), Some(hash)) = (loaded.get(campaign), &hash)
            && p.hash == *hash
        {
            return Ok(p.clone());
        }
        // New or changed: only now fetch the whole bundle (plugins included).
        let stored = match hash {
            Some(_) => self.store.bundle(campaign).await.map_err(|e| infra(e, 0))?,
            None => None,
        };
        let Some((hash, bytes)) = stored else {
            return Err(BatchFailure::Poison {
                reason: format!(
                    "campaign `{campaign}` is not in the store: launch it with `squall launch` against the same store"
                ),
                recipients: 0,
            });
        };
        let fail = |e: String| BatchFailure::Retry {
            reason: format!("cannot load campaign `{campaign}`: {e}"),
            recipients: 0,
        };
        let bundle = Bundle::from_bytes(&bytes).map_err(|e| fail(e.to_string()))?;
        let dir = self.data_dir.join("campaigns").join(campaign).join(&hash);
        let c = bundle.unpack(&dir).map_err(|e| fail(e.to_string()))?;
        let limits = c.file.limits.sandbox();
        let engine = {
            let mut engines = self.engines.lock().unwrap();
            match engines.get(&(limits.memory_mb, limits.timeout_ms)) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(StageEngine::new(&limits).map_err(|e| fail(e.to_string()))?);
                    engines.insert((limits.memory_mb, limits.timeout_ms), e.clone());
                    e
                }
            }
        };
        let stages = prepare::stages(&c, &engine).map_err(|e| fail(e.to_string()))?;
        let transport = match self.stage {
            Stage::Send => {
                let t = self
                    .transports
                    .get(&c)
                    .map_err(|e| fail(format!("{e:#}")))?;
                // Claims a dead worker left open are settled before this
                // worker sends anything of the campaign.
                settle_in_doubt(&*self.store, &*t, campaign, &self.owner)
                    .await
                    .map_err(|e| infra(e, 0))?;
                Some(t)
            }
            _ => None,
        };
        tracing::info!(campaign, hash, stage = self.stage.name(), "campaign loaded");
        let p = Arc::new(Prepared {
            hash,
            campaign: c,
            stages: std::sync::Mutex::new(stages),
            transport,
        });
        loaded.insert(campaign.to_string(), p.clone());
        Ok(p)
    }
}

struct ForCampaign {
    hash: String,
    checked: std::time::Instant,
    max_attempts: u32,
    processor: Loaded,
}

/// One task's view: routes each batch to its campaign's processor (this
/// task's own Wasm instances), looking for a newer definition every
/// `RECHECK`.
pub struct Router {
    shared_parts: (Arc<dyn Queue>, Arc<RunCounters>),
    campaigns: Arc<Campaigns>,
    mine: HashMap<String, ForCampaign>,
}

/// How often a worker looks for a newer definition of a loaded campaign.
const RECHECK: Duration = Duration::from_secs(10);

impl Router {
    async fn processor(&mut self, campaign: &str) -> Result<&mut Loaded, BatchFailure> {
        self.load(campaign).await?;
        Ok(&mut self.mine.get_mut(campaign).expect("loaded above").processor)
    }

    async fn load(&mut self, campaign: &str) -> Result<(), BatchFailure> {
        if self
            .mine
            .get(campaign)
            .is_some_and(|c| c.checked.elapsed() < RECHECK)
        {
            return Ok(());
        }
        let p = self.campaigns.get(campaign).await?;
        if let Some(c) = self.mine.get_mut(campaign)
            && c.hash == p.hash
        {
            c.checked = std::time::Instant::now();
            return Ok(());
        }
        let fork_failed = |e: crate::runtime::StageDiagnostics| BatchFailure::Retry {
            reason: format!("cannot instantiate the stage of `{campaign}`: {e}"),
            recipients: 0,
        };
        let (queue, counters) = self.shared_parts.clone();
        let store = self.campaigns.store.clone();
        let key = crate::tracking::signing_key(&*store)
            .await
            .map_err(|e| infra(e, 0))?;
        let mut shared = Shared::new(&p.campaign, queue, store, counters, &key)
            .with_provider_turns(self.campaigns.transports.shared_turn(&p.campaign));
        shared.frequency = shared.frequency.or(self.campaigns.frequency);
        let stages = p.stages.lock().unwrap();
        let processor = match self.campaigns.stage {
            Stage::Segment => Loaded::Segment(SegmentProcessor {
                shared,
                stage: Some(stages.segmenter.fork().map_err(fork_failed)?),
                next_queue: Stage::Personalise.name().into(),
            }),
            Stage::Personalise => Loaded::Personalise(PersonaliseProcessor {
                shared,
                stage: Some(stages.personaliser.fork().map_err(fork_failed)?),
                next_queue: Stage::Send.name().into(),
                input_queue: Stage::Personalise.name().into(),
            }),
            Stage::Send => Loaded::Send(SendProcessor {
                shared,
                stage: Some(stages.sender.fork().map_err(fork_failed)?),
                transport: p
                    .transport
                    .clone()
                    .expect("send campaigns have a transport"),
                owner: self.campaigns.owner.clone(),
                input_queue: Stage::Send.name().into(),
            }),
        };
        drop(stages);
        self.mine.insert(
            campaign.to_string(),
            ForCampaign {
                hash: p.hash.clone(),
                checked: std::time::Instant::now(),
                max_attempts: p.campaign.file.limits.max_attempts,
                processor,
            },
        );
        Ok(())
    }
}

impl Processor for Router {
    fn stage(&self) -> &'static str {
        self.campaigns.stage.name()
    }

    async fn held(&mut self) -> bool {
        // A deployment's send workers put back every campaign's resumed
        // batches; they run until stopped, so nothing held keeps them.
        if self.campaigns.stage == Stage::Send {
            let (queue, _) = &self.shared_parts;
            if let Err(e) = super::control::put_back(&*self.campaigns.store, &**queue, None).await {
                tracing::debug!("cannot look at parked batches now: {e}");
            }
        }
        false
    }

    fn max_attempts(&self, delivery: &Delivery) -> Option<u32> {
        let head = Head::peek(&delivery.body)?;
        self.mine.get(&head.campaign).map(|c| c.max_attempts)
    }

    async fn process(&mut self, delivery: &Delivery) -> Result<(), BatchFailure> {
        // Decoded once, as the stage's envelope type: its campaign routes it.
        let malformed = |e: EnvelopeError| BatchFailure::Poison {
            reason: e.to_string(),
            recipients: 0,
        };
        match self.campaigns.stage {
            Stage::Segment => {
                let env = SegmentEnvelope::decode(&delivery.body).map_err(malformed)?;
                match self.processor(&env.campaign).await? {
                    Loaded::Segment(p) => p.process_envelope(env).await,
                    _ => unreachable!("a segment worker loads segment processors"),
                }
            }
            Stage::Personalise => {
                let env = PersonaliseEnvelope::decode(&delivery.body).map_err(malformed)?;
                match self.processor(&env.campaign).await? {
                    Loaded::Personalise(p) => p.process_envelope(env).await,
                    _ => unreachable!("a personalise worker loads personalise processors"),
                }
            }
            Stage::Send => {
                let env = SendEnvelope::decode(&delivery.body).map_err(malformed)?;
                match self.processor(&env.campaign).await? {
                    Loaded::Send(p) => p.process_envelope(env).await,
                    _ => unreachable!("a send worker loads send processors"),
                }
            }
        }
    }
}
