//! `squall status`: where a launched campaign stands, from the store (per
//! campaign) and the queues (per stage, shared by every campaign).

use std::collections::BTreeMap;

use serde::Serialize;

use super::backends::Backends;
use super::run::DeadLetterSummary;
use crate::config::Stage;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub campaign: String,
    pub launched: bool,
    pub intake_finished: bool,
    pub audience: u64,
    pub rejected: u64,
    pub unsegmented: u64,
    pub per_segment: BTreeMap<String, u64>,
    pub per_variant: BTreeMap<String, u64>,
    pub stages: BTreeMap<String, StageStatus>,
    pub sent: u64,
    pub failed: u64,
    pub in_doubt: u64,
    pub dead_lettered: u64,
    pub dead_letters: Vec<DeadLetterSummary>,
    /// Valid recipients not yet at an end (sent, failed, in doubt,
    /// unsegmented or dead-lettered): queued or being worked on.
    pub in_progress: u64,
    pub complete: bool,
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
    let store = &*backends.store;
    let launched = store.bundle(campaign).await?.is_some();
    if !launched {
        anyhow::bail!(
            "campaign `{campaign}` was never launched against this store; check the campaign id and --config"
        );
    }
    let report = super::run::report(store, campaign).await?;
    let state = store.open_campaign(campaign, "").await?;
    let mut stages = BTreeMap::new();
    for stage in Stage::ALL {
        let depth = backends.queue.depth(stage.name()).await?;
        let dead_letter_batches = backends.queue.dead_letter_depth(stage.name()).await?;
        let processed = match stage {
            Stage::Send => report.sent + report.failed + report.in_doubt,
            other => store.stage_totals(campaign, other.name()).await?.recipients,
        };
        stages.insert(
            stage.name().to_string(),
            StageStatus {
                processed,
                dead_lettered: report
                    .dead_letters
                    .iter()
                    .filter(|d| d.stage == stage.name())
                    .map(|d| d.recipients)
                    .sum(),
                queued_batches: depth.visible,
                in_flight_batches: depth.in_flight,
                dead_letter_batches,
            },
        );
    }
    let valid = report.audience.saturating_sub(report.rejected);
    let ended =
        report.sent + report.failed + report.in_doubt + report.unsegmented + report.dead_lettered;
    let in_progress = valid.saturating_sub(ended);
    Ok(Status {
        campaign: campaign.to_string(),
        launched,
        intake_finished: state.intake_finished,
        audience: report.audience,
        rejected: report.rejected,
        unsegmented: report.unsegmented,
        per_segment: report.per_segment,
        per_variant: report.per_variant,
        stages,
        sent: report.sent,
        failed: report.failed,
        in_doubt: report.in_doubt,
        dead_lettered: report.dead_lettered,
        dead_letters: report.dead_letters,
        in_progress,
        complete: launched && state.intake_finished && in_progress == 0,
    })
}
