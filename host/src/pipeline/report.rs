//! What a campaign has done, from the store: the durable totals that
//! `squall run` ends with and `squall status` shows, whichever process or
//! machine did the work, and the rejects file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store::{CampaignState, Store};

/// A campaign's totals across runs and workers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Audience rows read (valid or not).
    pub audience: u64,
    pub rejected: u64,
    pub unsegmented: u64,
    /// Skipped: no consent on the campaign's channel.
    pub no_consent: u64,
    pub per_segment: BTreeMap<String, u64>,
    pub per_variant: BTreeMap<String, u64>,
    pub sent: u64,
    pub failed: u64,
    /// Not sent: the address was on the suppression list at send time.
    pub suppressed: u64,
    /// Maybe sent by a worker that died mid-request; never sent again.
    pub in_doubt: u64,
    /// Not sent: cancelled while queued.
    pub cancelled: u64,
    /// Not sent: the recipient had reached the frequency cap.
    pub capped: u64,
    pub dead_lettered: u64,
    /// Why, per dead letter (payloads stay in the store).
    pub dead_letters: Vec<DeadLetterSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterSummary {
    pub stage: String,
    pub item: String,
    pub recipients: u64,
    pub reason: String,
}

impl Totals {
    /// Valid recipients not yet at an end (sent, failed, in doubt,
    /// unsegmented or dead-lettered): queued or being worked on.
    pub fn in_progress(&self) -> u64 {
        let valid = self.audience.saturating_sub(self.rejected);
        let ended = self.sent
            + self.failed
            + self.suppressed
            + self.in_doubt
            + self.cancelled
            + self.capped
            + self.unsegmented
            + self.no_consent
            + self.dead_lettered;
        valid.saturating_sub(ended)
    }
}

/// `state` is the campaign's, as just read from the store.
pub async fn totals(
    store: &dyn Store,
    campaign: &str,
    state: &CampaignState,
) -> anyhow::Result<Totals> {
    let segment = store.stage_totals(campaign, "segment").await?;
    let ledger = store.ledger_totals(campaign).await?;
    let dead_letters: Vec<DeadLetterSummary> = store
        .dead_letters(campaign)
        .await?
        .into_iter()
        .map(|d| DeadLetterSummary {
            stage: d.stage,
            item: d.item,
            recipients: d.recipients,
            reason: d.reason,
        })
        .collect();
    Ok(Totals {
        audience: state.rows_read,
        rejected: store.reject_count(campaign).await?,
        unsegmented: segment.unsegmented,
        no_consent: segment.no_consent,
        per_segment: segment.per_segment,
        per_variant: segment.per_variant,
        sent: ledger.delivered,
        failed: ledger.failed,
        suppressed: ledger.suppressed,
        in_doubt: ledger.in_doubt,
        cancelled: ledger.cancelled,
        capped: ledger.capped,
        dead_lettered: dead_letters.iter().map(|d| d.recipients).sum(),
        dead_letters,
    })
}

/// `<data-dir>/rejects/<campaign>.jsonl`: every rejected row with its line
/// and reason, rewritten whole from the store.
pub async fn write_rejects(
    store: &dyn Store,
    data_dir: &Path,
    campaign: &str,
) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("rejects");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{campaign}.jsonl"));
    let mut out = Vec::new();
    for r in store.rejects(campaign).await? {
        serde_json::to_writer(&mut out, &r)?;
        out.push(b'\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// What the reports need of a campaign's stored definition (its bundle):
/// read and parsed once per report.
#[derive(Debug, Clone, Default)]
pub struct StoredHead {
    pub goal: Option<String>,
    pub segments: Vec<String>,
    pub uses_waves: bool,
}

pub async fn stored_head(store: &dyn Store, campaign: &str) -> anyhow::Result<StoredHead> {
    let Some((_, bytes)) = store.bundle(campaign).await? else {
        return Ok(StoredHead::default());
    };
    let bundle = crate::campaign::Bundle::from_bytes(&bytes)?;
    #[derive(serde::Deserialize)]
    struct Head {
        campaign: HeadCampaign,
        #[serde(default)]
        segment: Vec<Named>,
        schedule: Option<HeadSchedule>,
    }
    #[derive(serde::Deserialize)]
    struct HeadCampaign {
        goal: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct HeadSchedule {
        waves: Option<Vec<f64>>,
    }
    // The bundle was valid when stored; a head that no longer parses (a
    // newer format) reports as having none of these.
    Ok(toml::from_str::<Head>(&bundle.text)
        .map(|h| StoredHead {
            goal: h.campaign.goal,
            segments: h.segment.into_iter().map(|s| s.name).collect(),
            uses_waves: h.schedule.is_some_and(|s| s.waves.is_some()),
        })
        .unwrap_or_default())
}
