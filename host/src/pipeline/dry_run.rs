//! `squall run --dry-run`: the whole audience through the campaign's own
//! segmenter and personaliser, with consent, the suppression list, the
//! frequency cap and the schedule applied as the send stage would, and
//! nothing sent, queued or recorded. One line per recipient says what would
//! happen and when; the audience is streamed in batches, in constant memory.
//!
//! Read-only against the store: the suppression list and the recipients'
//! recent deliveries are looked up there. Unlike a run, duplicates of an id
//! are not detected (that needs the store's memory of ids) and messages a
//! previous run already sent are not told apart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use squall_pipeline_core::record::Value;

use super::convert::to_wit;
use super::prepare;
use crate::audience::{AudienceReader, Recipient, Row};
use crate::campaign::{Campaign, FrequencyCap};
use crate::runtime::{StageEngine, wit_types as wit};
use crate::store::{Store, normalise_address};

#[derive(Debug, Serialize)]
pub struct DryRunLine {
    pub recipient_id: String,
    pub line: u64,
    pub to: String,
    /// `send`, `unsegmented`, `no_consent`, `suppressed`, `capped`,
    /// `rejected` or `render_failed`.
    pub outcome: &'static str,
    /// The wave it belongs to (0 without waves).
    pub wave: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it would go (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct DryRunReport {
    pub campaign: String,
    pub now: String,
    pub audience: u64,
    pub rejected: u64,
    pub unsegmented: u64,
    pub no_consent: u64,
    pub would_send: u64,
    pub suppressed: u64,
    pub capped: u64,
    pub render_failed: u64,
    pub per_segment: BTreeMap<String, u64>,
    pub per_variant: BTreeMap<String, u64>,
    pub first_send_at: Option<String>,
    pub last_send_at: Option<String>,
    /// Audience rows (valid or not) in each wave, and who would be sent.
    pub wave_rows: Vec<u64>,
    pub per_wave: BTreeMap<u32, u64>,
    /// One JSON line per recipient.
    pub file: PathBuf,
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn dry_run(
    campaign: &Campaign,
    store: &dyn Store,
    frequency: Option<FrequencyCap>,
    now_ms: i64,
    out: PathBuf,
) -> anyhow::Result<DryRunReport> {
    let engine = StageEngine::new(&campaign.file.limits.sandbox())?;
    let mut stages = prepare::stages(campaign, &engine)?;
    let cap = campaign
        .file
        .frequency
        .max_messages_per_recipient
        .or(frequency);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let mut report = DryRunReport {
        campaign: campaign.id().to_string(),
        now: rfc3339(now_ms),
        file: out.clone(),
        ..Default::default()
    };
    let (mut first, mut last): (Option<i64>, Option<i64>) = (None, None);
    let consent = campaign
        .file
        .audience
        .consent_field
        .as_ref()
        .and_then(|f| campaign.columns.iter().position(|c| c == f.get_ref()));
    let zone = campaign
        .timezone_field
        .as_ref()
        .and_then(|f| campaign.columns.iter().position(|c| c == f));
    let rows = match &campaign.timing.waves {
        Some(plan) => {
            let rows = super::intake::count_rows(&campaign.audience).await?;
            report.wave_rows = vec![0; plan.shares.len()];
            Some((plan.clone(), rows))
        }
        None => None,
    };
    let wave_of = |index: u64| {
        rows.as_ref()
            .map_or(0, |(plan, n)| plan.wave_of(campaign.id(), index, *n))
    };
    let mut reader = AudienceReader::open(&campaign.audience)?;
    let batch_size = campaign.file.limits.batch_size.max(1) as usize;
    loop {
        let mut chunk: Vec<Recipient> = Vec::with_capacity(batch_size);
        let mut lines = Vec::new();
        for row in reader.by_ref() {
            match row? {
                Row::Valid(r) => {
                    report.audience += 1;
                    if let Some(n) = report.wave_rows.get_mut(wave_of(r.index) as usize) {
                        *n += 1;
                    }
                    chunk.push(r);
                    if chunk.len() == batch_size {
                        break;
                    }
                }
                Row::Rejected { index, reject } => {
                    report.audience += 1;
                    report.rejected += 1;
                    let wave = wave_of(index);
                    if let Some(n) = report.wave_rows.get_mut(wave as usize) {
                        *n += 1;
                    }
                    lines.push(DryRunLine {
                        recipient_id: reject.raw.split(',').next().unwrap_or("").to_string(),
                        line: reject.line,
                        to: String::new(),
                        outcome: "rejected",
                        wave,
                        segment: None,
                        variant: None,
                        subject: None,
                        at: None,
                        reason: Some(reject.reason),
                    });
                }
            }
        }
        if chunk.is_empty() && lines.is_empty() {
            break;
        }
        let mut consenting = Vec::with_capacity(chunk.len());
        for r in chunk {
            let yes = consent
                .is_none_or(|i| matches!(r.record.values.get(i), Some(Some(Value::Bool(true)))));
            if yes {
                consenting.push(r);
            } else {
                report.no_consent += 1;
                let mut l = skip(&r, "no_consent");
                l.wave = wave_of(r.index);
                lines.push(l);
            }
        }
        if !consenting.is_empty() {
            let waves: Vec<u32> = consenting.iter().map(|r| wave_of(r.index)).collect();
            evaluate(
                campaign,
                &mut stages,
                store,
                cap,
                now_ms,
                zone,
                consenting,
                &waves,
                &mut report,
                &mut lines,
                &mut first,
                &mut last,
            )
            .await?;
        }
        for l in lines {
            serde_json::to_writer(&mut file, &l)?;
            file.write_all(b"\n")?;
        }
    }
    file.flush()?;
    report.first_send_at = first.map(rfc3339);
    report.last_send_at = last.map(rfc3339);
    Ok(report)
}

fn skip(r: &Recipient, outcome: &'static str) -> DryRunLine {
    DryRunLine {
        recipient_id: r.record.id.clone(),
        line: r.line,
        to: r.record.address.clone(),
        outcome,
        wave: 0,
        segment: None,
        variant: None,
        subject: None,
        at: None,
        reason: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn evaluate(
    campaign: &Campaign,
    stages: &mut prepare::Stages,
    store: &dyn Store,
    cap: Option<FrequencyCap>,
    now_ms: i64,
    zone: Option<usize>,
    chunk: Vec<Recipient>,
    waves: &[u32],
    report: &mut DryRunReport,
    lines: &mut Vec<DryRunLine>,
    first: &mut Option<i64>,
    last: &mut Option<i64>,
) -> anyhow::Result<()> {
    let batch = wit::RecipientBatch {
        campaign: campaign.id().to_string(),
        columns: campaign.columns.clone(),
        recipients: chunk.iter().map(|r| to_wit(r.record.clone())).collect(),
    };
    let assignments = stages.segmenter.assign(&batch)?;
    let mut placed = Vec::new();
    for (i, a) in assignments.into_iter().enumerate() {
        match a {
            wit::Assignment::Unsegmented => {
                report.unsegmented += 1;
                let mut l = skip(&chunk[i], "unsegmented");
                l.wave = waves[i];
                lines.push(l);
            }
            wit::Assignment::Assigned(p) => placed.push((i, p.message)),
        }
    }
    if placed.is_empty() {
        return Ok(());
    }
    let sub = wit::RecipientBatch {
        campaign: batch.campaign.clone(),
        columns: batch.columns.clone(),
        recipients: placed
            .iter()
            .map(|(i, _)| batch.recipients[*i].clone())
            .collect(),
    };
    let picks: Vec<u32> = placed.iter().map(|(_, m)| *m).collect();
    let rendered = stages.personaliser.render(&sub, &picks)?;
    let addresses: Vec<String> = placed
        .iter()
        .map(|(i, _)| normalise_address(&chunk[*i].record.address))
        .collect();
    let suppressed = store.suppressed(&addresses).await?;
    let recent = match cap {
        Some(c) => {
            let ids: Vec<String> = placed
                .iter()
                .map(|(i, _)| chunk[*i].record.id.clone())
                .collect();
            store
                .recent_deliveries(&ids, now_ms - c.per.as_millis() as i64)
                .await?
        }
        None => Default::default(),
    };
    for (((i, m), r), address) in placed.iter().zip(rendered).zip(&addresses) {
        let rec = &chunk[*i];
        let msg = &campaign.file.message[*m as usize];
        let (segment, variant) = (msg.segment.get_ref().clone(), msg.variant.get_ref().clone());
        let mut line = skip(rec, "send");
        line.wave = waves[*i];
        line.segment = Some(segment.clone());
        line.variant = Some(variant.clone());
        match r {
            Err(e) => {
                report.render_failed += 1;
                line.outcome = "render_failed";
                line.reason = Some(e);
            }
            Ok(content) => {
                line.subject = Some(content.subject);
                if let Some(why) = suppressed.get(address) {
                    report.suppressed += 1;
                    line.outcome = "suppressed";
                    line.reason = Some(why.as_str().to_string());
                } else if cap.is_some_and(|c| {
                    recent.get(&rec.record.id).copied().unwrap_or(0) >= u64::from(c.count)
                }) {
                    report.capped += 1;
                    line.outcome = "capped";
                } else {
                    let tz = zone.and_then(|z| match rec.record.values.get(z) {
                        Some(Some(Value::Text(t))) => Some(t.as_str()),
                        _ => None,
                    });
                    let at = campaign.timing.next_send_ms(now_ms, tz);
                    *first = Some(first.map_or(at, |f| f.min(at)));
                    *last = Some(last.map_or(at, |l| l.max(at)));
                    line.at = Some(rfc3339(at));
                    report.would_send += 1;
                    *report.per_wave.entry(line.wave).or_default() += 1;
                    *report.per_segment.entry(segment.clone()).or_default() += 1;
                    *report
                        .per_variant
                        .entry(format!("{segment}/{variant}"))
                        .or_default() += 1;
                }
            }
        }
        lines.push(line);
    }
    Ok(())
}
