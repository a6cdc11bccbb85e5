//! The three stage processors: decode a batch, call the Wasm stage, hand
//! the result to the next queue, record what happened.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use squall_pipeline_core::ids::message_id;
use squall_pipeline_core::message::{Channel, Outgoing};
use squall_pipeline_core::record::{Record, Value};
use squall_pipeline_core::template::Rendered;

use super::control::{self, ControlView};
use super::convert::{
    give_back, lend, lent_columns, outgoing_from_wit, outgoing_to_wit, request_from_wit,
};
use super::counters::RunCounters;
use super::envelope::{Envelope, PersonaliseEnvelope, Placed, SegmentEnvelope, SendEnvelope};
use super::recovery::settle_in_doubt;
use super::worker::{Backoff, BatchFailure, InfraError, Processor, dead_letter_item, infra};
use crate::delivery::{Dispatch, OutboxRecord, Outcome, Transport};
use crate::queue::{Delivery, Queue};
use crate::runtime::{
    PersonaliserStage, SegmenterStage, SenderStage, StageError, wit_types as wit,
};
use crate::sqlite::now_ms;
use crate::store::{
    BatchStats, ClaimOutcome, ControlState, LedgerKey, MessageRef, Settlement, Store, Suppression,
    SuppressionReason, normalise_address,
};
use crate::tracking::Tracker;

/// What every processor shares.
#[derive(Clone)]
pub struct Shared {
    pub campaign: String,
    pub channel: Channel,
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub counters: Arc<RunCounters>,
    /// `segment` names and `segment/variant` keys by index, from the campaign.
    pub segments: Arc<Vec<String>>,
    pub messages: Arc<Vec<(String, String)>>,
    /// Signs the unsubscribe, click and open links of each message.
    pub tracker: Arc<Tracker>,
    /// Pause, resume and cancel, as the store says.
    pub controls: Arc<ControlView>,
    /// When messages may go, and the audience field with each recipient's
    /// time zone.
    pub timing: Arc<crate::schedule::Timing>,
    pub timezone_field: Option<String>,
    /// The audience field that must be `true` (channel consent).
    pub consent_field: Option<String>,
    /// The campaign's frequency cap, or else the deployment's.
    pub frequency: Option<crate::campaign::FrequencyCap>,
    /// `[schedule] rate_per_second`: the campaign's own pace.
    pub stagger: Option<f64>,
    /// Shared rates each send batch takes a turn on, in order, parked in
    /// the store while a turn is far off (see `hold_for_turns`).
    pub turns: Vec<SharedTurn>,
    /// The fields the segment and personalise stages are sent.
    pub reads: Arc<super::prepare::StageReads>,
}

/// A rate in the store a send batch takes its turn on.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedTurn {
    pub key: String,
    pub per_second: f64,
    /// Turns left unused this long ago may still be taken (see
    /// `Store::reserve`): a provider's, so that batches back late from the
    /// store do not leave it idle; never a campaign's pace, which must not
    /// burst.
    pub tolerance_ms: i64,
}

impl Shared {
    pub fn new(
        campaign: &crate::campaign::Campaign,
        queue: Arc<dyn Queue>,
        store: Arc<dyn Store>,
        counters: Arc<RunCounters>,
        tracking_key: &[u8],
    ) -> Shared {
        Shared {
            campaign: campaign.id().to_string(),
            channel: campaign.channel(),
            queue,
            store,
            counters,
            segments: Arc::new(
                campaign
                    .file
                    .segment
                    .iter()
                    .map(|s| s.name.get_ref().clone())
                    .collect(),
            ),
            messages: Arc::new(
                campaign
                    .file
                    .message
                    .iter()
                    .map(|m| (m.segment.get_ref().clone(), m.variant.get_ref().clone()))
                    .collect(),
            ),
            tracker: Arc::new(Tracker::from_settings(
                &campaign.file.tracking,
                tracking_key,
            )),
            controls: Arc::new(ControlView::new(campaign.id())),
            reads: Arc::new(super::prepare::stage_reads(campaign)),
            timing: Arc::new(campaign.timing.clone()),
            timezone_field: campaign.timezone_field.clone(),
            consent_field: campaign
                .file
                .audience
                .consent_field
                .as_ref()
                .map(|f| f.get_ref().clone()),
            frequency: campaign.file.frequency.max_messages_per_recipient,
            stagger: campaign.file.schedule.rate_per_second.filter(|r| *r > 0.0),
            turns: campaign
                .file
                .schedule
                .rate_per_second
                .filter(|r| *r > 0.0)
                .map(|per_second| SharedTurn {
                    key: format!("campaign/{}", campaign.id()),
                    per_second,
                    tolerance_ms: 0,
                })
                .into_iter()
                .collect(),
        }
    }

    /// Adds the turns of the campaign's first provider, when its rate is
    /// shared (`provider`: the provider's own rate key, and its rate):
    /// first on the campaign's lane of it, at the provider's whole rate, then
    /// on the provider itself. Lanes make campaigns share a busy provider:
    /// each campaign's batches come to the provider's turns at most as fast
    /// as the provider could take them, so campaigns take its turns
    /// alternately instead of one's backlog going first. A campaign with a
    /// pace of its own is spread by that pace and takes its provider turns
    /// as it sends.
    pub fn with_provider_turns(mut self, provider: Option<(String, f64)>) -> Shared {
        if let (None, Some((key, per_second))) = (self.stagger, provider) {
            self.turns.push(SharedTurn {
                key: format!("lane/{key}/{}", self.campaign),
                per_second,
                tolerance_ms: 0,
            });
            self.turns.push(SharedTurn {
                key,
                per_second,
                tolerance_ms: WAKE_BEFORE_TURN_MS,
            });
        }
        self
    }
}

/// A message's identity in the delivery ledger.
fn ledger_key(m: &Outgoing) -> LedgerKey {
    LedgerKey {
        message_id: m.message_id.clone(),
        recipient_id: m.recipient_id.clone(),
        message_key: format!("{}/{}", m.segment, m.variant),
    }
}

fn retry(e: StageError, recipients: u64) -> BatchFailure {
    BatchFailure::Retry {
        reason: e.to_string(),
        recipients,
    }
}

/// A (plugin) stage answered a batch with the wrong number of results.
fn miscounted(stage: &str, got: usize, what: &str, recipients: u64) -> BatchFailure {
    BatchFailure::Retry {
        reason: format!("{stage} returned {got} {what} for {recipients} recipients"),
        recipients,
    }
}

fn poison<E: std::fmt::Display>(e: E) -> BatchFailure {
    BatchFailure::Poison {
        reason: e.to_string(),
        recipients: 0,
    }
}

/// Settles claims whatever it takes: a message that was sent must be
/// recorded as sent, so an outage of the store is waited out here rather
/// than leaving a claim open behind a live worker.
async fn settle_surely(
    store: &dyn Store,
    campaign: &str,
    owner: &str,
    settlements: &[(LedgerKey, Settlement)],
    recipients: u64,
) -> Result<(), BatchFailure> {
    let mut backoff = Backoff::new();
    loop {
        match store.settle(campaign, owner, settlements).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_unavailable() => backoff.wait("state store", &e.to_string()).await,
            Err(e) => return Err(infra(e, recipients)),
        }
    }
}

/// Runs a Wasm stage call on the blocking pool, handing the stage back
/// with the CPU time the call took (µs). CPU time, not wall time: stages
/// share two cores with each other and the databases, and a busy neighbour
/// must not make a stage look slow.
async fn blocking<S: Send + 'static, A: Send + 'static, R: Send + 'static>(
    stage: S,
    arg: A,
    f: impl FnOnce(&mut S, &A) -> R + Send + 'static,
) -> (S, A, R, u64) {
    tokio::task::spawn_blocking(move || {
        let mut stage = stage;
        let before = thread_cpu_us();
        let r = f(&mut stage, &arg);
        let cpu = thread_cpu_us().saturating_sub(before);
        (stage, arg, r, cpu)
    })
    .await
    .expect("stage call panicked in the host")
}

fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

async fn forward<T: serde::Serialize + serde::de::DeserializeOwned + Clone>(
    shared: &Shared,
    stage: &str,
    queue: &str,
    env: Envelope<T>,
) -> Result<(), BatchFailure> {
    let recipients = env.items.len() as u64;
    let encoded = env.encode(shared.queue.max_message_size());
    for (batch, item, size) in encoded.oversized {
        let payload = serde_json::to_string(&item).unwrap_or_default();
        let reason = format!(
            "message of {size} bytes exceeds the queue's limit of {} bytes",
            shared.queue.max_message_size()
        );
        dead_letter_item(
            &*shared.store,
            &shared.counters,
            &shared.campaign,
            stage,
            format!("{batch}/oversized"),
            reason,
            payload,
        )
        .await
        .map_err(|e| infra(e, recipients))?;
    }
    if !encoded.bodies.is_empty() {
        shared
            .queue
            .send(queue, encoded.bodies)
            .await
            .map_err(|e| infra(e, recipients))?;
    }
    Ok(())
}

pub struct SegmentProcessor {
    pub shared: Shared,
    pub stage: Option<SegmenterStage>,
    pub next_queue: String,
}

impl Processor for SegmentProcessor {
    fn stage(&self) -> &'static str {
        "segment"
    }

    async fn process(&mut self, delivery: &Delivery) -> Result<(), BatchFailure> {
        let env = SegmentEnvelope::decode(&delivery.body).map_err(poison)?;
        self.process_envelope(env).await
    }
}

impl SegmentProcessor {
    /// A batch already decoded (a deployment's worker decodes it once, to
    /// route it to its campaign).
    pub async fn process_envelope(&mut self, mut env: SegmentEnvelope) -> Result<(), BatchFailure> {
        let n = env.items.len() as u64;
        // Without consent on this channel, a recipient is not even segmented.
        let mut no_consent = 0;
        if let Some(i) = self
            .shared
            .consent_field
            .as_ref()
            .and_then(|f| env.columns.iter().position(|c| c == f))
        {
            env.items.retain(|r| {
                let yes = matches!(r.values.get(i), Some(Some(Value::Bool(true))));
                no_consent += u64::from(!yes);
                yes
            });
        }
        // The stage is lent the fields it reads; the records keep the rest
        // (and their audience lines) on this side of the boundary.
        let mut records = env.items;
        let (columns, keep) = lent_columns(&env.columns, self.shared.reads.segment.as_deref());
        let batch = wit::RecipientBatch {
            campaign: env.campaign.clone(),
            columns,
            recipients: records
                .iter_mut()
                .map(|r| lend(r, keep.as_deref()))
                .collect(),
        };
        let (stage, batch, result, cpu_us) =
            blocking(self.stage.take().expect("stage in hand"), batch, |s, b| {
                s.assign(b)
            })
            .await;
        self.stage = Some(stage);
        for (r, lent) in records.iter_mut().zip(batch.recipients) {
            give_back(r, lent, keep.as_deref());
        }
        RunCounters::add(&self.shared.counters.segment_busy_us, cpu_us);
        let assignments = result.map_err(|e| retry(e, n))?;
        if assignments.len() != records.len() {
            return Err(miscounted("segmenter", assignments.len(), "assignments", n));
        }
        let mut stats = BatchStats {
            recipients: n,
            no_consent,
            ..Default::default()
        };
        let mut placed = Vec::with_capacity(records.len());
        for (recipient, a) in records.into_iter().zip(assignments) {
            match a {
                wit::Assignment::Unsegmented => stats.unsegmented += 1,
                wit::Assignment::Assigned(p) => {
                    let (Some(segment), Some((msg_segment, variant))) = (
                        self.shared.segments.get(p.segment as usize),
                        self.shared.messages.get(p.message as usize),
                    ) else {
                        return Err(BatchFailure::Retry {
                            reason: format!(
                                "segmenter placed a recipient in unknown segment/message {}/{}",
                                p.segment, p.message
                            ),
                            recipients: n,
                        });
                    };
                    if msg_segment != segment {
                        return Err(BatchFailure::Retry {
                            reason: format!(
                                "segmenter chose message {variant} of `{msg_segment}` for segment `{segment}`"
                            ),
                            recipients: n,
                        });
                    }
                    // Outside the A/B test share of a segment with several
                    // variants: the winner is decided later.
                    let holdout = self.shared.timing.ab.as_ref().is_some_and(|ab| {
                        self.shared
                            .messages
                            .iter()
                            .filter(|(s, _)| s == segment)
                            .count()
                            > 1
                            && !ab.in_test(&env.campaign, segment, &recipient.id)
                    });
                    *stats.per_segment.entry(segment.clone()).or_default() += 1;
                    let shown = if holdout { "holdout" } else { variant.as_str() };
                    *stats
                        .per_variant
                        .entry(format!("{segment}/{shown}"))
                        .or_default() += 1;
                    placed.push(Placed {
                        record: recipient,
                        segment: segment.clone(),
                        variant: variant.clone(),
                        message: p.message,
                        holdout,
                    });
                }
            }
        }
        let mut out = Envelope::new(&env.campaign, env.batch.clone(), env.columns, placed);
        out.wave = env.wave;
        forward(&self.shared, "segment", &self.next_queue, out).await?;
        self.shared
            .store
            .record_batch(&env.campaign, "segment", &env.batch, &stats)
            .await
            .map_err(|e| infra(e, n))?;
        RunCounters::add(
            &self.shared.counters.segmented,
            n - stats.unsegmented - stats.no_consent,
        );
        // Neither kind of skip gets a message: both end here.
        RunCounters::add(
            &self.shared.counters.unsegmented,
            stats.unsegmented + stats.no_consent,
        );
        Ok(())
    }
}

pub struct PersonaliseProcessor {
    pub shared: Shared,
    pub stage: Option<PersonaliserStage>,
    pub next_queue: String,
    /// Where this stage's batches come from: A/B holdouts wait and go back
    /// there.
    pub input_queue: String,
}

impl Processor for PersonaliseProcessor {
    fn stage(&self) -> &'static str {
        "personalise"
    }

    /// A/B holdouts parked for the winner come back to this stage: it must
    /// not finish while any batch of its campaign is parked.
    async fn held(&mut self) -> bool {
        self.shared.timing.ab.is_some()
            && self
                .shared
                .store
                .parked_count(&self.shared.campaign)
                .await
                .map_or(true, |n| n > 0)
    }

    async fn process(&mut self, delivery: &Delivery) -> Result<(), BatchFailure> {
        let env = PersonaliseEnvelope::decode(&delivery.body).map_err(poison)?;
        self.process_envelope(env).await
    }
}

impl PersonaliseProcessor {
    /// A/B holdouts get the segment's winner once it is decided; before the
    /// decision is due they are parked until it is; when it is due and not
    /// yet made, this worker makes it (the first decision stored wins).
    async fn resolve_holdouts(
        &mut self,
        mut env: PersonaliseEnvelope,
    ) -> Result<PersonaliseEnvelope, BatchFailure> {
        let Some(plan) = self.shared.timing.ab.clone() else {
            return Ok(env);
        };
        if !env.items.iter().any(|p| p.holdout) {
            return Ok(env);
        }
        let n = env.items.len() as u64;
        let store = self.shared.store.clone();
        let c = env.campaign.clone();
        let now = crate::schedule::clock::now_ms();
        let t0 = store
            .setting_or_init(&format!("ab/{c}/t0"), now.to_string().as_bytes())
            .await
            .map_err(|e| infra(e, n))?;
        let due = String::from_utf8_lossy(&t0).parse::<i64>().unwrap_or(now) + plan.decide_after_ms;
        let mut waiting = Vec::new();
        let mut go = Vec::with_capacity(env.items.len());
        let mut winners: HashMap<String, Option<String>> = HashMap::new();
        for mut p in std::mem::take(&mut env.items) {
            if !p.holdout {
                go.push(p);
                continue;
            }
            if !winners.contains_key(&p.segment) {
                let w = ab_winner(&self.shared, &plan, &c, &p.segment, now >= due).await?;
                winners.insert(p.segment.clone(), w);
            }
            match winners[&p.segment].as_ref().and_then(|w| {
                self.shared
                    .messages
                    .iter()
                    .position(|(s, v)| *s == p.segment && v == w)
                    .map(|i| (w.clone(), i as u32))
            }) {
                Some((variant, message)) => {
                    p.variant = variant;
                    p.message = message;
                    p.holdout = false;
                    go.push(p);
                }
                None => waiting.push(p),
            }
        }
        env.items = go;
        if !waiting.is_empty() {
            let keys = waiting
                .iter()
                .map(|p| format!("{}/holdout", p.segment))
                .collect();
            let ids = waiting.iter().map(|p| p.record.id.clone()).collect();
            park_items(
                &self.shared,
                &self.input_queue,
                &env,
                waiting,
                keys,
                ids,
                due,
            )
            .await?;
        }
        Ok(env)
    }

    /// A batch already decoded (a deployment's worker decodes it once, to
    /// route it to its campaign).
    pub async fn process_envelope(&mut self, env: PersonaliseEnvelope) -> Result<(), BatchFailure> {
        let env = self.resolve_holdouts(env).await?;
        if env.items.is_empty() {
            return Ok(());
        }
        let n = env.items.len() as u64;
        let picks: Vec<u32> = env.items.iter().map(|p| p.message).collect();
        let mut meta = Vec::with_capacity(env.items.len());
        let mut records = Vec::with_capacity(env.items.len());
        for p in env.items {
            meta.push((p.segment, p.variant));
            records.push(p.record);
        }
        let zone_column = self
            .shared
            .timezone_field
            .as_ref()
            .and_then(|f| env.columns.iter().position(|c| c == f));
        // The stage is lent the fields it reads; the records keep the rest
        // (and their audience lines) on this side of the boundary.
        let (columns, keep) = lent_columns(&env.columns, self.shared.reads.personalise.as_deref());
        let batch = wit::RecipientBatch {
            campaign: env.campaign.clone(),
            columns,
            recipients: records
                .iter_mut()
                .map(|r| lend(r, keep.as_deref()))
                .collect(),
        };
        let (stage, (batch, _), result, cpu_us) = blocking(
            self.stage.take().expect("stage in hand"),
            (batch, picks),
            |s, (b, p)| s.render(b, p),
        )
        .await;
        self.stage = Some(stage);
        for (r, lent) in records.iter_mut().zip(batch.recipients) {
            give_back(r, lent, keep.as_deref());
        }
        RunCounters::add(&self.shared.counters.personalise_busy_us, cpu_us);
        let rendered = result.map_err(|e| retry(e, n))?;
        if rendered.len() != records.len() {
            return Err(miscounted("personaliser", rendered.len(), "messages", n));
        }
        let mut out = Vec::with_capacity(rendered.len());
        let stats = BatchStats {
            recipients: n,
            ..Default::default()
        };
        for ((recipient, (segment, variant)), r) in records.into_iter().zip(meta).zip(rendered) {
            let key = format!("{segment}/{variant}");
            let as_read = |recipient: &Record| serde_json::to_string(recipient).unwrap_or_default();
            match r {
                Ok(m) => {
                    let id = message_id(&env.campaign, recipient.line, &recipient.id, &key);
                    let reference = MessageRef {
                        campaign: env.campaign.clone(),
                        message_id: id.clone(),
                        recipient_id: recipient.id.clone(),
                        segment: segment.clone(),
                        variant: variant.clone(),
                        wave: env.wave,
                    };
                    let mut content = Rendered {
                        subject: m.subject,
                        text: m.text,
                        html: m.html,
                    };
                    let tracker = &self.shared.tracker;
                    if let Err(reason) = tracker.decorate(&reference, &mut content) {
                        dead_letter_item(
                            &*self.shared.store,
                            &self.shared.counters,
                            &env.campaign,
                            "personalise",
                            format!("{}/{}", env.batch, recipient.id),
                            format!(
                                "cannot track `{key}` for recipient {}: {reason}",
                                recipient.id
                            ),
                            as_read(&recipient),
                        )
                        .await
                        .map_err(|e| infra(e, n))?;
                        continue;
                    }
                    let timezone = zone_column.and_then(|i| match recipient.values.get(i) {
                        Some(Some(Value::Text(z))) => Some(z.clone()),
                        _ => None,
                    });
                    out.push(Outgoing {
                        timezone,
                        unsubscribe_url: tracker.unsubscribe_url(&reference, &recipient.address),
                        message_id: id,
                        recipient_id: recipient.id,
                        address: recipient.address,
                        segment,
                        variant,
                        content,
                    });
                }
                Err(reason) => {
                    let payload = as_read(&recipient);
                    dead_letter_item(
                        &*self.shared.store,
                        &self.shared.counters,
                        &env.campaign,
                        "personalise",
                        format!("{}/{}", env.batch, recipient.id),
                        format!(
                            "cannot render `{key}` for recipient {}: {reason}",
                            recipient.id
                        ),
                        payload,
                    )
                    .await
                    .map_err(|e| infra(e, n))?;
                }
            }
        }
        let rendered_count = out.len() as u64;
        let mut out = Envelope::new(&env.campaign, env.batch.clone(), vec![], out);
        out.wave = env.wave;
        forward(&self.shared, "personalise", &self.next_queue, out).await?;
        self.shared
            .store
            .record_batch(&env.campaign, "personalise", &env.batch, &stats)
            .await
            .map_err(|e| infra(e, n))?;
        RunCounters::add(&self.shared.counters.rendered, rendered_count);
        Ok(())
    }
}

pub struct SendProcessor {
    pub shared: Shared,
    pub stage: Option<SenderStage>,
    pub transport: Arc<dyn Transport>,
    /// Ledger owner: this run.
    pub owner: String,
    /// Where this stage's batches come from: paused ones go back there.
    pub input_queue: String,
}

impl Processor for SendProcessor {
    fn stage(&self) -> &'static str {
        "send"
    }

    async fn held(&mut self) -> bool {
        let (store, queue) = (&*self.shared.store, &*self.shared.queue);
        let campaign = self.shared.campaign.as_str();
        match control::put_back(store, queue, Some(campaign)).await {
            Ok(_) => match store.parked_count(campaign).await {
                Ok(0) => false,
                Ok(n) => {
                    self.shared.controls.say_waiting(n);
                    true
                }
                Err(_) => true,
            },
            Err(e) => {
                tracing::debug!("cannot look at parked batches now: {e}");
                true
            }
        }
    }

    async fn process(&mut self, delivery: &Delivery) -> Result<(), BatchFailure> {
        let env = SendEnvelope::decode(&delivery.body).map_err(poison)?;
        self.process_envelope(env).await
    }
}

impl SendProcessor {
    /// A batch already decoded (a deployment's worker decodes it once, to
    /// route it to its campaign).
    pub async fn process_envelope(&mut self, env: SendEnvelope) -> Result<(), BatchFailure> {
        let n = env.items.len() as u64;
        let env = hold_for_wave(&self.shared, &self.input_queue, env).await?;
        let controls = self
            .shared
            .controls
            .current(&*self.shared.store)
            .await
            .map_err(|e| infra(e, n))?;
        let env = hold_until_due(&self.shared, &self.input_queue, env).await?;
        let (env, cancelled) = hold_paused(&self.shared, &self.input_queue, env, &controls).await?;
        let env = hold_for_turns(&self.shared, &self.input_queue, env, &cancelled).await?;
        let shared = &self.shared;
        // Checked before claiming, so that a failed look-up leaves nothing
        // to clean up; a suppression landing between the two is caught by
        // the next batch (the list is checked at every send, not once).
        let addresses: Vec<String> = env
            .items
            .iter()
            .map(|m| normalise_address(&m.address))
            .collect();
        let suppressed = shared
            .store
            .suppressed(&addresses)
            .await
            .map_err(|e| infra(e, n))?;
        // The cap counts deliveries of every campaign: looked up like the
        // suppression list, before claiming. Two campaigns sending to one
        // person at the same instant may both pass (documented).
        let recent = match shared.frequency {
            Some(cap) => {
                let ids: Vec<String> = env.items.iter().map(|m| m.recipient_id.clone()).collect();
                let since = now_ms() - cap.per.as_millis() as i64;
                let counts = shared
                    .store
                    .recent_deliveries(&ids, since)
                    .await
                    .map_err(|e| infra(e, n))?;
                Some((cap, counts))
            }
            None => None,
        };
        let claims: Vec<LedgerKey> = env.items.iter().map(ledger_key).collect();
        let outcomes = shared
            .store
            .claim(&env.campaign, &self.owner, &claims)
            .await
            .map_err(|e| infra(e, n))?;
        let mut busy = 0u64;
        let mut mine = Vec::new();
        let mut skipped = Vec::new();
        for ((m, o), address) in env.items.into_iter().zip(outcomes).zip(&addresses) {
            match o {
                ClaimOutcome::Claimed if cancelled.contains(&m.message_id) => skipped.push((
                    ledger_key(&m),
                    Settlement::Cancelled("cancelled while queued".into()),
                )),
                ClaimOutcome::Claimed => match suppressed.get(address) {
                    Some(why) => skipped.push((
                        ledger_key(&m),
                        Settlement::Suppressed(format!("suppressed ({})", why.as_str())),
                    )),
                    None => match &recent {
                        Some((cap, counts))
                            if counts.get(&m.recipient_id).copied().unwrap_or(0)
                                >= u64::from(cap.count) =>
                        {
                            skipped.push((
                                ledger_key(&m),
                                Settlement::Capped(format!(
                                    "frequency cap: {} message(s) per {}",
                                    cap.count,
                                    humantime::format_duration(cap.per)
                                )),
                            ))
                        }
                        _ => mine.push(m),
                    },
                },
                ClaimOutcome::Settled => RunCounters::add(&shared.counters.skipped_already_sent, 1),
                ClaimOutcome::Busy => busy += 1,
            }
        }
        if !skipped.is_empty() {
            settle_surely(&*shared.store, &env.campaign, &self.owner, &skipped, n).await?;
            let count =
                |f: fn(&Settlement) -> bool| skipped.iter().filter(|(_, s)| f(s)).count() as u64;
            let stopped = count(|s| matches!(s, Settlement::Cancelled(_)));
            let capped = count(|s| matches!(s, Settlement::Capped(_)));
            RunCounters::add(&shared.counters.cancelled, stopped);
            RunCounters::add(&shared.counters.capped, capped);
            RunCounters::add(
                &shared.counters.suppressed,
                skipped.len() as u64 - stopped - capped,
            );
        }
        if !mine.is_empty() {
            self.send_claimed(&env.campaign, &env.batch, &env.turns, mine)
                .await?;
        }
        if busy > 0 {
            // Held by a live worker (it will settle them), or by a dead one
            // whose lease ran out: settle those now so the wait ends.
            settle_in_doubt(
                &*self.shared.store,
                &*self.transport,
                &env.campaign,
                &self.owner,
            )
            .await
            .map_err(|e| infra(e, busy))?;
            return Err(BatchFailure::Busy {
                reason: format!("{busy} message(s) are being sent by another worker right now"),
                recipients: busy,
            });
        }
        Ok(())
    }
}

/// Delivers a batch at the campaign's own pace, from its turn on: in small
/// slices, one every 100 ms, so that sending is spread evenly rather than
/// in bursts of a batch.
async fn staggered(
    transport: &dyn Transport,
    turn_at: i64,
    rate: f64,
    dispatches: &[Dispatch],
) -> Vec<Outcome> {
    let wait = Duration::from_millis((turn_at - now_ms()).max(0) as u64);
    let started = tokio::time::Instant::now() + wait;
    let slice = ((rate / 10.0).ceil() as usize).max(1);
    let mut outcomes = Vec::with_capacity(dispatches.len());
    for (i, part) in dispatches.chunks(slice).enumerate() {
        let due = started + Duration::from_secs_f64((i * slice) as f64 / rate);
        tokio::time::sleep_until(due).await;
        outcomes.extend(transport.deliver(part).await);
    }
    outcomes
}

/// Keeps messages of `env` in the store until `due_at` (campaign time; 0:
/// until a resume), named by their content so that a redelivered batch
/// parks them once.
async fn park(
    shared: &Shared,
    input_queue: &str,
    env: &SendEnvelope,
    held: Vec<Outgoing>,
    due_at: i64,
) -> Result<(), BatchFailure> {
    let keys = held
        .iter()
        .map(|m| format!("{}/{}", m.segment, m.variant))
        .collect();
    let ids = held.iter().map(|m| m.message_id.clone()).collect();
    park_items(shared, input_queue, env, held, keys, ids, due_at).await
}

/// `park` for any stage's items: `keys` (`segment/variant`) say which
/// controls hold them, `ids` name them.
#[allow(clippy::too_many_arguments)]
async fn park_items<T: serde::Serialize + serde::de::DeserializeOwned + Clone, U>(
    shared: &Shared,
    input_queue: &str,
    env: &Envelope<U>,
    held: Vec<T>,
    keys: std::collections::BTreeSet<String>,
    ids: Vec<String>,
    due_at: i64,
) -> Result<(), BatchFailure> {
    let n = held.len() as u64;
    let name = format!(
        "{}/{}/{due_at}/{:016x}",
        env.campaign,
        env.batch,
        xxhash_rust::xxh3::xxh3_64(ids.join(",").as_bytes())
    );
    let mut keep = Envelope::new(&env.campaign, env.batch.clone(), env.columns.clone(), held);
    keep.wave = env.wave;
    keep.turns = env.turns.clone();
    let parked = keep.encode(shared.queue.max_message_size());
    for (i, payload) in parked.bodies.into_iter().enumerate() {
        shared
            .store
            .park(&crate::store::Parked {
                id: format!("{name}/{i}"),
                campaign: env.campaign.clone(),
                due_at,
                queue: input_queue.to_string(),
                keys: keys.iter().cloned().collect(),
                payload,
            })
            .await
            .map_err(|e| infra(e, n))?;
    }
    RunCounters::add(&shared.counters.parked, n);
    Ok(())
}

/// The segment's A/B winner: stored, or decided now when `due`.
async fn ab_winner(
    shared: &Shared,
    plan: &crate::schedule::ab::AbPlan,
    campaign: &str,
    segment: &str,
    due: bool,
) -> Result<Option<String>, BatchFailure> {
    use crate::schedule::ab::{Arm, Decision, Metric};
    let store = &*shared.store;
    let key = format!("ab/{campaign}/decision/{segment}");
    let stored = store.setting(&key).await.map_err(|e| infra(e, 0))?;
    if let Some(d) = stored.and_then(|b| serde_json::from_slice::<Decision>(&b).ok()) {
        return Ok(Some(d.winner));
    }
    if !due {
        return Ok(None);
    }
    let variants: Vec<&String> = shared
        .messages
        .iter()
        .filter(|(s, _)| s == segment)
        .map(|(_, v)| v)
        .collect();
    let fallback = plan
        .fallback
        .clone()
        .unwrap_or_else(|| variants.first().map(|v| v.to_string()).unwrap_or_default());
    let ledger = store
        .ledger_breakdown(campaign)
        .await
        .map_err(|e| infra(e, 0))?;
    let engagement = store.engagement(campaign).await.map_err(|e| infra(e, 0))?;
    let conversions = store.conversions(campaign).await.map_err(|e| infra(e, 0))?;
    let arms: Vec<Arm> = variants
        .iter()
        .map(|v| {
            let mk = format!("{segment}/{v}");
            let sent = ledger
                .iter()
                .filter(|r| r.message_key == mk && r.state == "delivered")
                .map(|r| r.count)
                .sum();
            let events = match plan.metric {
                Metric::OpenRate | Metric::ClickRate => {
                    let kind = if plan.metric == Metric::OpenRate {
                        crate::store::EngagementKind::Open
                    } else {
                        crate::store::EngagementKind::Click
                    };
                    engagement
                        .iter()
                        .filter(|e| {
                            e.kind == kind && !e.machine && e.segment == segment && e.variant == **v
                        })
                        .map(|e| e.messages)
                        .sum()
                }
                Metric::ConversionRate => conversions
                    .iter()
                    .filter(|c| c.segment == segment && c.variant == **v)
                    .map(|c| c.recipients)
                    .sum(),
            };
            Arm {
                variant: v.to_string(),
                sent,
                events,
                rate: 0.0,
            }
        })
        .collect();
    let decision = plan.decide(segment, &fallback, arms, crate::schedule::clock::now_ms());
    let kept = store
        .setting_or_init(&key, &serde_json::to_vec(&decision).unwrap_or_default())
        .await
        .map_err(|e| infra(e, 0))?;
    let decision: Decision = serde_json::from_slice(&kept).unwrap_or(decision);
    tracing::info!(
        campaign,
        segment,
        winner = decision.winner,
        "A/B decision: {} ({})",
        decision.winner,
        decision.basis
    );
    Ok(Some(decision.winner))
}

/// How often a process judges a campaign's guardrails over the window.
const JUDGE_EVERY: Duration = Duration::from_secs(2);

/// Waves and guardrails. A wave's batches wait (parked) until the wave is
/// due: the first batch (of any wave) to reach a send stage fixes the campaign's
/// wave clock, and wave w is due `w × wave_pause` later. When a wave comes
/// due, and every `JUDGE_EVERY` over the sliding window, the guardrails
/// judge what was sent; a breach pauses the whole campaign with the reason
/// (it resumes only on command) and the batch waits with the rest.
async fn hold_for_wave(
    shared: &Shared,
    input_queue: &str,
    mut env: SendEnvelope,
) -> Result<SendEnvelope, BatchFailure> {
    let timing = &shared.timing;
    if !timing.is_gated() || env.items.is_empty() {
        return Ok(env);
    }
    let n = env.items.len() as u64;
    let store = &*shared.store;
    let c = env.campaign.clone();
    let now = crate::schedule::clock::now_ms();
    let mut judge_since = None;
    if let Some(plan) = &timing.waves {
        let t0 = store
            .setting_or_init(&format!("waves/{c}/t0"), now.to_string().as_bytes())
            .await
            .map_err(|e| infra(e, n))?;
        let t0: i64 = String::from_utf8_lossy(&t0).parse().unwrap_or(now);
        let due = t0 + i64::from(env.wave) * plan.pause_ms;
        if now < due {
            let held = std::mem::take(&mut env.items);
            park(shared, input_queue, &env, held, due).await?;
            return Ok(env);
        }
        let checked = format!("waves/{c}/checked/{}", env.wave);
        if env.wave > 0
            && timing.guardrails.any()
            && store
                .setting(&checked)
                .await
                .map_err(|e| infra(e, n))?
                .is_none()
        {
            // The wave boundary: everything since the last breach counts.
            let tripped = store
                .setting(&format!("waves/{c}/tripped_at"))
                .await
                .map_err(|e| infra(e, n))?;
            judge_since = Some(
                tripped
                    .map(|t| String::from_utf8_lossy(&t).parse().unwrap_or(0))
                    .unwrap_or(0),
            );
            if let Some(since) = judge_since
                && !breached(
                    shared,
                    &c,
                    since,
                    n,
                    &format!("at the start of wave {}", env.wave),
                )
                .await?
            {
                store
                    .set_setting(&checked, b"ok")
                    .await
                    .map_err(|e| infra(e, n))?;
            }
        }
    }
    if judge_since.is_none() && timing.guardrails.any() && shared.controls.judge_due(JUDGE_EVERY) {
        let since = now_ms() - timing.guardrails.window_ms;
        let tripped = store
            .setting(&format!("waves/{c}/tripped_at"))
            .await
            .map_err(|e| infra(e, n))?
            .map(|t| String::from_utf8_lossy(&t).parse().unwrap_or(0))
            .unwrap_or(0);
        breached(shared, &c, since.max(tripped), n, "over the sliding window").await?;
    }
    Ok(env)
}

/// Judges the guardrails over what was sent since `since` (real ms); on a
/// breach pauses the campaign with the reason. Whether it did.
async fn breached(
    shared: &Shared,
    campaign: &str,
    since: i64,
    n: u64,
    when: &str,
) -> Result<bool, BatchFailure> {
    let store = &*shared.store;
    let outcomes = store
        .outcomes_since(campaign, since)
        .await
        .map_err(|e| infra(e, n))?;
    let Some(why) = shared.timing.guardrails.breach(&outcomes) else {
        return Ok(false);
    };
    let reason = format!("{why}, {when}");
    tracing::warn!(
        campaign,
        "pausing the campaign: {reason}; `squall resume {campaign}` continues"
    );
    store
        .control(
            campaign,
            &crate::store::Scope::campaign(),
            crate::store::ControlAction::Pause,
            &reason,
        )
        .await
        .map_err(|e| infra(e, n))?;
    store
        .set_setting(
            &format!("waves/{campaign}/tripped_at"),
            now_ms().to_string().as_bytes(),
        )
        .await
        .map_err(|e| infra(e, n))?;
    shared.controls.invalidate();
    Ok(true)
}

/// Parks the messages that may not go yet (before the campaign's start,
/// outside the recipient's send window, in quiet hours) until they are due,
/// grouped by the minute they are due; the rest of the batch goes on.
async fn hold_until_due(
    shared: &Shared,
    input_queue: &str,
    mut env: SendEnvelope,
) -> Result<SendEnvelope, BatchFailure> {
    if shared.timing.is_immediate() {
        return Ok(env);
    }
    let now = crate::schedule::clock::now_ms();
    let mut later: std::collections::BTreeMap<i64, Vec<Outgoing>> = Default::default();
    let mut go = Vec::with_capacity(env.items.len());
    for m in std::mem::take(&mut env.items) {
        let due = shared.timing.next_send_ms(now, m.timezone.as_deref());
        if due > now {
            // Rounded up to the minute: one parked batch per minute due.
            later
                .entry((due + 59_999) / 60_000 * 60_000)
                .or_default()
                .push(m);
        } else {
            go.push(m);
        }
    }
    env.items = go;
    for (due, held) in later {
        park(shared, input_queue, &env, held, due).await?;
    }
    Ok(env)
}

/// A turn further off than this is waited for in the store, not in a
/// worker: a campaign slowed by a rate holds no worker from the others,
/// and a backlog moves out of the queue (first in, first out across
/// campaigns) into its campaign's lane, so that a campaign launched behind
/// it is not queued behind it too.
const PARK_TURNS_AFTER_MS: i64 = 100;

/// The last turn (the provider's, or the campaign's pace) is waited for in
/// the worker when it is this close: parking again would cost more.
const PARK_LAST_TURN_AFTER_MS: i64 = 1_000;

/// A parked batch comes back this long before its turn, so that the trip
/// through the store and the queue (a put-back every 250 ms, a receive)
/// does not leave the provider idle: it waits the rest in the worker.
const WAKE_BEFORE_TURN_MS: i64 = 500;

/// A turn this long past was missed (the batch was paused, or put back
/// late): the batch takes a new one rather than go at once, which would
/// burst.
const STALE_TURN_MS: i64 = 10_000;

/// Takes the batch's turns on the campaign's shared rates, in order, and
/// parks the batch until a turn that is more than a moment away. A batch
/// back from the store goes on from the first turn it has not taken; one
/// whose latest turn was missed (it was paused meanwhile) takes them all
/// again; one back early (a cancel woke its campaign) is parked again.
/// Messages a cancel stops take no turn: they are settled at once.
async fn hold_for_turns(
    shared: &Shared,
    input_queue: &str,
    mut env: SendEnvelope,
    cancelled: &HashSet<String>,
) -> Result<SendEnvelope, BatchFailure> {
    if shared.turns.is_empty() || env.items.is_empty() {
        return Ok(env);
    }
    let (stopped, going): (Vec<Outgoing>, Vec<Outgoing>) = std::mem::take(&mut env.items)
        .into_iter()
        .partition(|m| cancelled.contains(&m.message_id));
    env.items = going;
    let mut env = hold_for_turns_of_rest(shared, input_queue, env).await?;
    env.items.extend(stopped);
    Ok(env)
}

async fn hold_for_turns_of_rest(
    shared: &Shared,
    input_queue: &str,
    mut env: SendEnvelope,
) -> Result<SendEnvelope, BatchFailure> {
    if env.items.is_empty() {
        return Ok(env);
    }
    let now = now_ms();
    if env
        .turns
        .values()
        .max()
        .is_some_and(|latest| *latest < now - STALE_TURN_MS)
    {
        env.turns.clear();
    }
    let n = env.items.len() as u64;
    for (i, rate) in shared.turns.iter().enumerate() {
        if env.turns.contains_key(&rate.key) {
            continue;
        }
        let park_after = if i + 1 == shared.turns.len() {
            PARK_LAST_TURN_AFTER_MS
        } else {
            PARK_TURNS_AFTER_MS
        };
        let turn = shared
            .store
            .reserve(&rate.key, n as u32, rate.per_second, rate.tolerance_ms)
            .await
            .map_err(|e| infra(e, n))?;
        env.turns.insert(rate.key.clone(), turn);
        if turn - now > park_after {
            return park_until_turn(shared, input_queue, env, turn).await;
        }
    }
    match env.turns.values().max() {
        Some(&latest) if latest - now > PARK_LAST_TURN_AFTER_MS => {
            park_until_turn(shared, input_queue, env, latest).await
        }
        _ => Ok(env),
    }
}

async fn park_until_turn(
    shared: &Shared,
    input_queue: &str,
    mut env: SendEnvelope,
    turn: i64,
) -> Result<SendEnvelope, BatchFailure> {
    let held = std::mem::take(&mut env.items);
    let due = crate::schedule::clock::at_real_ms(turn - WAKE_BEFORE_TURN_MS);
    park(shared, input_queue, &env, held, due).await?;
    Ok(env)
}

/// Parks the messages a pause holds (the rest of the batch goes on) and
/// names the ones a cancel stops, which are claimed and settled as
/// cancelled so that no later resume or redelivery sends them.
async fn hold_paused(
    shared: &Shared,
    input_queue: &str,
    mut env: SendEnvelope,
    controls: &[crate::store::Control],
) -> Result<(SendEnvelope, HashSet<String>), BatchFailure> {
    let mut cancelled = HashSet::new();
    if controls.is_empty() {
        return Ok((env, cancelled));
    }
    let mut held = Vec::new();
    let mut go = Vec::with_capacity(env.items.len());
    for m in std::mem::take(&mut env.items) {
        match control::state_of(controls, &format!("{}/{}", m.segment, m.variant)) {
            Some(ControlState::Paused) => held.push(m),
            Some(ControlState::Cancelled) => {
                cancelled.insert(m.message_id.clone());
                go.push(m);
            }
            None => go.push(m),
        }
    }
    env.items = go;
    if held.is_empty() {
        return Ok((env, cancelled));
    }
    park(shared, input_queue, &env, held, 0).await?;
    Ok((env, cancelled))
}

impl SendProcessor {
    async fn send_claimed(
        &mut self,
        campaign: &str,
        batch: &str,
        turns: &std::collections::BTreeMap<String, i64>,
        mine: Vec<Outgoing>,
    ) -> Result<(), BatchFailure> {
        let shared = self.shared.clone();
        let n = mine.len() as u64;
        let release_all = |mine: &[Outgoing]| {
            mine.iter()
                .map(|m| (ledger_key(m), Settlement::Released))
                .collect::<Vec<_>>()
        };
        // Moved across and back (the call borrows them), never copied:
        // message bodies are the largest thing on this path.
        let wit_messages: Vec<wit::OutgoingMessage> =
            mine.into_iter().map(outgoing_to_wit).collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (stage, wit_messages, built, cpu_us) = blocking(
            self.stage.take().expect("stage in hand"),
            wit_messages,
            move |s, m| s.build(m, now),
        )
        .await;
        self.stage = Some(stage);
        let mine: Vec<Outgoing> = wit_messages.into_iter().map(outgoing_from_wit).collect();
        RunCounters::add(&shared.counters.send_busy_us, cpu_us);
        let built = match built {
            Ok(b) if b.len() == mine.len() => b,
            other => {
                settle_surely(
                    &*shared.store,
                    campaign,
                    &self.owner,
                    &release_all(&mine),
                    n,
                )
                .await?;
                return Err(match other {
                    Err(e) => retry(e, n),
                    Ok(b) => miscounted("sender", b.len(), "requests", n),
                });
            }
        };
        let mut dispatches = Vec::with_capacity(mine.len());
        let mut settlements = Vec::with_capacity(mine.len());
        let mut unbuildable = Vec::new();
        for (m, req) in mine.into_iter().zip(built) {
            match req {
                Ok(req) => dispatches.push(Dispatch {
                    key: ledger_key(&m),
                    request: request_from_wit(req),
                    record: OutboxRecord {
                        campaign: campaign.to_string(),
                        message_id: m.message_id,
                        recipient_id: m.recipient_id,
                        to: m.address,
                        channel: shared.channel,
                        segment: m.segment,
                        variant: m.variant,
                        subject: m.content.subject,
                        sms_segments: (shared.channel == Channel::Sms)
                            .then(|| squall_pipeline_core::sms::segments(&m.content.text)),
                        text: m.content.text,
                        html: m.content.html,
                        unsubscribe_url: m.unsubscribe_url,
                        sent_at: crate::schedule::clock::now_ms(),
                    },
                }),
                Err(reason) => {
                    // Not sent: free the claim, keep the message for replay
                    // (after the ledger is settled, so a failure to record
                    // it never leaves a claim open).
                    settlements.push((ledger_key(&m), Settlement::Released));
                    let payload = serde_json::to_string(&m).unwrap_or_default();
                    unbuildable.push((format!("{batch}/{}", m.recipient_id), reason, payload));
                }
            }
        }
        let go_at = turns.values().max().copied();
        let outcomes = match (shared.stagger, go_at) {
            (Some(rate), Some(at)) => staggered(&*self.transport, at, rate, &dispatches).await,
            _ => {
                // The provider turn taken while parked is handed to the
                // provider's pacing, which would otherwise take another.
                let taken = shared
                    .turns
                    .last()
                    .and_then(|t| Some((t.key.clone(), *turns.get(&t.key)?)));
                super::transports::with_taken_turn(taken, self.transport.deliver(&dispatches)).await
            }
        };
        let mut transient = Vec::new();
        let mut unavailable = None;
        let mut not_before = Duration::ZERO;
        let mut bounced = Vec::new();
        for (d, o) in dispatches.iter().zip(outcomes) {
            match o {
                Outcome::Delivered => {
                    settlements.push((d.key.clone(), Settlement::Delivered));
                    RunCounters::add(&shared.counters.sent, 1);
                }
                Outcome::Permanent(reason) => {
                    tracing::warn!(
                        recipient = d.record.recipient_id,
                        "permanent delivery failure: {reason}"
                    );
                    settlements.push((d.key.clone(), Settlement::Failed(reason)));
                    RunCounters::add(&shared.counters.failed, 1);
                }
                Outcome::HardBounce(reason) => {
                    tracing::info!(
                        recipient = d.record.recipient_id,
                        "hard bounce, the address is suppressed from now on: {reason}"
                    );
                    bounced.push(Suppression {
                        address: d.record.to.clone(),
                        reason: SuppressionReason::HardBounce,
                        detail: reason.clone(),
                        campaign: Some(campaign.to_string()),
                        at: now_ms(),
                    });
                    settlements.push((
                        d.key.clone(),
                        Settlement::Failed(format!("hard bounce: {reason}")),
                    ));
                    RunCounters::add(&shared.counters.failed, 1);
                }
                Outcome::Transient {
                    reason,
                    retry_after,
                } => {
                    settlements.push((d.key.clone(), Settlement::Released));
                    not_before = not_before.max(retry_after.unwrap_or_default());
                    transient.push(reason);
                }
                Outcome::Unavailable(reason) => {
                    settlements.push((d.key.clone(), Settlement::Released));
                    unavailable.get_or_insert(reason);
                }
            }
        }
        settle_surely(&*shared.store, campaign, &self.owner, &settlements, n).await?;
        if !bounced.is_empty() {
            shared
                .store
                .suppress(&bounced)
                .await
                .map_err(|e| infra(e, n))?;
        }
        for (item, reason, payload) in unbuildable {
            dead_letter_item(
                &*shared.store,
                &shared.counters,
                campaign,
                "send",
                item,
                reason,
                payload,
            )
            .await
            .map_err(|e| infra(e, n))?;
        }
        if let Some(reason) = unavailable {
            // Every provider is down: the batch waits, it is not at fault.
            return Err(BatchFailure::Unavailable { reason });
        }
        if let Some(first) = transient.first() {
            let distinct: HashSet<&String> = transient.iter().collect();
            let reason = format!(
                "{} message(s) failed transiently via {} ({} distinct reason(s)), e.g.: {first}",
                transient.len(),
                self.transport.name(),
                distinct.len()
            );
            let recipients = transient.len() as u64;
            return Err(if not_before > Duration::ZERO {
                BatchFailure::Later {
                    reason,
                    recipients,
                    after: not_before,
                }
            } else {
                BatchFailure::Retry { reason, recipients }
            });
        }
        Ok(())
    }
}
