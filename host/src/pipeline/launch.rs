//! `squall launch`: validate a campaign, store it for the workers, and
//! stream its audience into the first stage's queue. Launching again
//! resumes an interrupted intake and otherwise changes nothing.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::backends::Backends;
use super::counters::RunCounters;
use super::intake::Intake;
use super::prepare::{self, PrepareError};
use super::report::write_rejects;
use super::run::RunError;
use crate::campaign::{Bundle, Campaign};
use crate::config::Stage;
use crate::runtime::StageEngine;

#[derive(Debug, Clone, Serialize)]
pub struct LaunchReport {
    pub campaign: String,
    /// Audience rows read in all (valid or not).
    pub audience: u64,
    pub rejected: u64,
    /// Rows handed to the segment queue by this launch.
    pub queued_now: u64,
    /// The audience was already fully queued by an earlier launch.
    pub already_launched: bool,
    pub rejects_file: std::path::PathBuf,
}

pub async fn launch(
    campaign: &Campaign,
    backends: &Backends,
    stop: Arc<AtomicBool>,
) -> Result<LaunchReport, RunError> {
    // Everything the stages would reject is reported before anything is
    // queued: a campaign that cannot run never starts.
    let problems = super::transports::check_providers(&backends.config.providers, campaign);
    if !problems.is_empty() {
        return Err(PrepareError::Invalid(crate::campaign::Diagnostics(problems)).into());
    }
    let engine = StageEngine::new(&campaign.file.limits.sandbox())?;
    prepare::stages(campaign, &engine)?;
    Ok(store_and_queue(campaign, backends, stop).await?)
}

async fn store_and_queue(
    campaign: &Campaign,
    backends: &Backends,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<LaunchReport> {
    let bundle = Bundle::of(campaign)?;
    let store = backends.store.clone();
    let id = campaign.id().to_string();
    store
        .save_bundle(&id, &campaign.hash, &bundle.to_bytes())
        .await?;
    let state = store.open_campaign(&id, &campaign.hash).await?;
    if state.definition_hash != campaign.hash {
        tracing::warn!(
            campaign = id,
            "the campaign file changed since it was first launched; messages already sent stay sent, workers use the new file from now on"
        );
    }
    let counters = Arc::new(RunCounters::default());
    if !state.intake_finished {
        let audience = super::intake::audience_for_run(campaign, &backends.config.data_dir).await?;
        let intake = Intake {
            campaign: id.clone(),
            audience: audience.clone(),
            columns: campaign.columns.clone(),
            batch_size: backends.config.stage.segment.batch_size as u64,
            queue: backends.queue.clone(),
            output: Stage::Segment.name().to_string(),
            store: store.clone(),
            counters: counters.clone(),
            resume_from: state.intake_batches_done,
            read_ahead: None,
            stop: stop.clone(),
            waves: match &campaign.timing.waves {
                Some(plan) => Some((plan.clone(), super::intake::count_rows(&audience).await?)),
                None => None,
            },
        };
        intake.run().await?;
    }
    let state = store.open_campaign(&id, "").await?;
    let rejects_file = write_rejects(&*store, &backends.config.data_dir, &id).await?;
    Ok(LaunchReport {
        campaign: id.clone(),
        audience: state.rows_read,
        rejected: store.reject_count(&id).await?,
        queued_now: RunCounters::get(&counters.rows_read),
        already_launched: RunCounters::get(&counters.rows_read) == 0 && state.intake_finished,
        rejects_file,
    })
}
