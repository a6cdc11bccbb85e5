//! Pause, resume and cancel as the send stage sees them: each worker reads
//! its campaign's controls from the store at most once a second (so a
//! command takes effect everywhere within about a second), parks paused
//! batches in the store, and puts them back in their queue once resumed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::queue::Queue;
use crate::store::control::decide;
use crate::store::{Control, ControlState, Store, StoreError};

/// How stale a worker's view of the controls may be.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How often a send worker looks for parked batches that may go now (a
/// resume, or messages come due): an indexed query of due rows.
pub const PUT_BACK_EVERY: Duration = Duration::from_millis(250);

/// Parked batches looked over at once: more than a big pause holds.
const PUT_BACK_LOOKS_AT: u32 = 20_000;

/// Parked batches put back at once (payloads in memory together); the
/// rest go on the next look, `PUT_BACK_EVERY` later.
const PUT_BACK_AT_ONCE: usize = 100;

/// How long a worker has to put taken parked batches back before another
/// worker may take them.
const TAKE_LEASE: Duration = Duration::from_secs(60);

/// One campaign's controls, cached for `REFRESH`.
pub struct ControlView {
    campaign: String,
    cached: Mutex<Option<(Instant, Arc<Vec<Control>>)>>,
    /// When this process last said what it is waiting for.
    said_waiting: Mutex<Option<Instant>>,
    /// When this process last judged the guardrails' sliding window.
    judged: Mutex<Option<Instant>>,
}

impl ControlView {
    pub fn new(campaign: &str) -> ControlView {
        ControlView {
            campaign: campaign.to_string(),
            cached: Mutex::new(None),
            said_waiting: Mutex::new(None),
            judged: Mutex::new(None),
        }
    }

    /// Forgets the cached controls (this process just changed them).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap() = None;
    }

    /// Whether the sliding window is due for judging (every `every`).
    pub fn judge_due(&self, every: Duration) -> bool {
        let mut last = self.judged.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= every) {
            *last = Some(Instant::now());
            true
        } else {
            false
        }
    }

    /// Says, at most once a minute, that the campaign waits on parked
    /// batches (a pause, or messages not yet due), so a quiet `squall run`
    /// is not mistaken for a stuck one.
    pub fn say_waiting(&self, batches: u64) {
        let mut last = self.said_waiting.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::info!(
                campaign = self.campaign,
                batches,
                "waiting: batches are held in the store by a pause, until their send window or for their turn on the campaign's rate; `squall status` says which"
            );
            *last = Some(Instant::now());
        }
    }

    pub async fn current(&self, store: &dyn Store) -> Result<Arc<Vec<Control>>, StoreError> {
        if let Some((at, c)) = &*self.cached.lock().unwrap()
            && at.elapsed() < REFRESH
        {
            return Ok(c.clone());
        }
        let fresh = Arc::new(store.controls(&self.campaign).await?);
        *self.cached.lock().unwrap() = Some((Instant::now(), fresh.clone()));
        Ok(fresh)
    }
}

/// What the send stage does with one `segment/variant` now.
pub fn state_of(controls: &[Control], message_key: &str) -> Option<ControlState> {
    if controls.is_empty() {
        return None;
    }
    let (segment, variant) = message_key.split_once('/').unwrap_or((message_key, ""));
    decide(controls, segment, variant)
}

/// Puts parked batches back in their queue once any of their messages is
/// no longer paused (resumed or cancelled: the send stage settles the
/// cancelled ones, and parks again what is still paused). Only batches of
/// `only` when given. Returns how many went back.
pub async fn put_back(
    store: &dyn Store,
    queue: &dyn Queue,
    only: Option<&str>,
) -> anyhow::Result<usize> {
    // Heads only, so a pause holding thousands of batches (listed first,
    // due at 0) neither hides the due ones behind it nor costs much.
    let parked = store
        .parked(PUT_BACK_LOOKS_AT, crate::schedule::clock::now_ms())
        .await?;
    let mut controls: std::collections::HashMap<String, Vec<Control>> = Default::default();
    let mut ready = Vec::new();
    for p in parked {
        if only.is_some_and(|c| c != p.campaign) {
            continue;
        }
        if !controls.contains_key(&p.campaign) {
            controls.insert(p.campaign.clone(), store.controls(&p.campaign).await?);
        }
        let cs = &controls[&p.campaign];
        if p.keys
            .iter()
            .any(|k| state_of(cs, k) != Some(ControlState::Paused))
        {
            ready.push(p);
            if ready.len() == PUT_BACK_AT_ONCE {
                break;
            }
        }
    }
    if ready.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = ready.iter().map(|p| p.id.clone()).collect();
    let taken = store.take_parked(&ids, TAKE_LEASE).await?;
    let mut back = Vec::new();
    for p in taken {
        // Sent before it is forgotten: a crash in between sends it twice,
        // and the ledger makes the second copy harmless.
        queue.send(&p.queue, vec![p.payload]).await?;
        back.push(p.id);
    }
    store.unpark(&back).await?;
    if !back.is_empty() {
        // Debug: paced campaigns put batches back several times a second.
        tracing::debug!(
            batches = back.len(),
            "parked batches came due or were resumed: back in their queue"
        );
    }
    Ok(back.len())
}

/// Applies a pause, resume or cancel and says what it did. Workers notice
/// within `REFRESH`.
pub async fn apply(
    store: &dyn Store,
    campaign: &str,
    scope: &crate::store::Scope,
    action: crate::store::ControlAction,
    reason: &str,
) -> anyhow::Result<String> {
    use crate::store::ControlAction::*;
    if !store.campaign_known(campaign).await? {
        anyhow::bail!(
            "no campaign `{campaign}` in this store: check the id (`[campaign] id` in its file) and the --config it was launched or run with"
        );
    }
    store.control(campaign, scope, action, reason).await?;
    if action == Cancel {
        // Batches waiting in the store for a turn or a window are drained
        // now, not when they come due.
        store.wake_parked(campaign).await?;
    }
    let cancelled = store
        .controls(campaign)
        .await?
        .iter()
        .any(|c| c.state == ControlState::Cancelled && c.scope.contains(scope));
    Ok(match action {
        Pause if cancelled => {
            format!("{scope} of `{campaign}` is cancelled; a pause changes nothing")
        }
        Pause => format!("paused {scope} of `{campaign}`: workers stop sending it within a second"),
        Resume if cancelled => {
            format!("{scope} of `{campaign}` is cancelled for good; nothing to resume")
        }
        Resume => format!("resumed {scope} of `{campaign}`: sending continues where it stopped"),
        Cancel => format!("cancelled {scope} of `{campaign}`: what is queued is drained unsent"),
    })
}
