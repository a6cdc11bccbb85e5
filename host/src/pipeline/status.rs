//! `squall status`: where a launched campaign stands, from the store (per
//! campaign) and the queues (per stage, shared by every campaign).

use std::collections::BTreeMap;

use serde::Serialize;

use super::backends::Backends;
use super::report::{Totals, totals};
use crate::config::Stage;
use crate::delivery::metrics::{BreakerState, ProviderStats};

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub campaign: String,
    pub intake_finished: bool,
    #[serde(flatten)]
    pub totals: Totals,
    pub stages: BTreeMap<String, StageStatus>,
    /// See `Totals::in_progress`.
    pub in_progress: u64,
    pub complete: bool,
    /// The deployment's providers (shared by its campaigns), every
    /// worker's figures added up: attempts, outcomes, latency, breaker.
    pub providers: Vec<ProviderStats>,
    /// Why sending waits, when it does: every provider's breaker is open.
    pub waiting: Option<String>,
    /// Pauses and cancels in force, with who set them.
    pub controls: Vec<crate::store::Control>,
    /// Batches a pause holds in the store until a resume.
    pub parked_batches: u64,
    /// A/B decisions made, per segment, with their numbers.
    pub ab_decisions: Vec<crate::schedule::ab::Decision>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StageStatus {
    /// Recipients this stage finished with, for this campaign.
    pub processed: u64,
    pub dead_lettered: u64,
    /// The stage's queue (shared by every campaign of the deployment):
    /// batches waiting and batches being worked on.
    pub queued_batches: u64,
    pub in_flight_batches: u64,
    /// Batches in the queue's dead-letter store.
    pub dead_letter_batches: u64,
}

pub async fn status(backends: &Backends, campaign: &str) -> anyhow::Result<Status> {
    let head = super::report::stored_head(&*backends.store, campaign).await?;
    status_with(backends, campaign, &head).await
}

/// `status`, with the stored definition's head already read.
pub async fn status_with(
    backends: &Backends,
    campaign: &str,
    head: &super::report::StoredHead,
) -> anyhow::Result<Status> {
    let store = &*backends.store;
    // A `squall run` leaves no bundle, only the campaign's state.
    if !store.campaign_known(campaign).await? && store.bundle_hash(campaign).await?.is_none() {
        anyhow::bail!(
            "campaign `{campaign}` was never launched or run against this store; check the campaign id and --config"
        );
    }
    let state = store.open_campaign(campaign, "").await?;
    let totals = totals(store, campaign, &state).await?;
    let mut stages = BTreeMap::new();
    for stage in Stage::ALL {
        let depth = backends.queue.depth(stage.name()).await?;
        let processed = match stage {
            Stage::Send => {
                totals.sent
                    + totals.failed
                    + totals.suppressed
                    + totals.in_doubt
                    + totals.cancelled
                    + totals.capped
            }
            other => store.stage_totals(campaign, other.name()).await?.recipients,
        };
        stages.insert(
            stage.name().to_string(),
            StageStatus {
                processed,
                dead_lettered: totals
                    .dead_letters
                    .iter()
                    .filter(|d| d.stage == stage.name())
                    .map(|d| d.recipients)
                    .sum(),
                queued_batches: depth.visible,
                in_flight_batches: depth.in_flight,
                dead_letter_batches: backends.queue.dead_letter_depth(stage.name()).await?,
            },
        );
    }
    let in_progress = totals.in_progress();
    let providers = store.provider_stats().await?;
    let waiting = (!providers.is_empty()
        && providers.iter().all(|p| p.breaker != BreakerState::Closed))
    .then(|| {
        let why: Vec<String> = providers
            .iter()
            .map(|p| {
                format!(
                    "`{}` is {}: {}",
                    p.provider,
                    p.breaker,
                    p.breaker_reason.as_deref().unwrap_or("no reason recorded")
                )
            })
            .collect();
        format!(
            "sending waits: no provider is available ({}); messages stay queued and go out when one is back",
            why.join("; ")
        )
    });
    let mut ab_decisions = Vec::new();
    for segment in &head.segments {
        if let Some(d) = store
            .setting(&format!("ab/{campaign}/decision/{segment}"))
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            ab_decisions.push(d);
        }
    }
    Ok(Status {
        ab_decisions,
        controls: store.controls(campaign).await?,
        parked_batches: store.parked_count(campaign).await?,
        providers,
        waiting,
        campaign: campaign.to_string(),
        intake_finished: state.intake_finished,
        stages,
        in_progress,
        complete: state.intake_finished && in_progress == 0,
        totals,
    })
}
