//! A campaign's figures for people watching it: what was sent and what
//! came back (opens, clicks, unsubscribes, bounces, complaints,
//! conversions), their rates, per segment, variant and wave, and the
//! delivery rate over time. Read from the store, so any `squall serve`
//! shows what every worker did.

use std::collections::BTreeMap;

use serde::Serialize;

use super::backends::Backends;
use super::status::{Status, status_with};
use crate::store::EngagementKind;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Figures {
    pub sent: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub cancelled: u64,
    /// Distinct messages opened by a person (machine opens apart, unless
    /// the deployment counts them).
    pub opens: u64,
    pub machine_opens: u64,
    pub clicks: u64,
    pub unsubscribes: u64,
    pub bounces: u64,
    pub complaints: u64,
    /// Deliveries the provider confirmed (SES `Delivery`), beyond accepted.
    pub deliveries: u64,
    /// Distinct recipients who converted (the campaign's goal).
    pub conversions: u64,
    pub open_rate: f64,
    pub click_rate: f64,
    pub unsubscribe_rate: f64,
    pub bounce_rate: f64,
    pub complaint_rate: f64,
    pub conversion_rate: f64,
}

impl Figures {
    fn rates(&mut self) {
        let base = self.sent as f64;
        let r = |n: u64| if base > 0.0 { n as f64 / base } else { 0.0 };
        self.open_rate = r(self.opens);
        self.click_rate = r(self.clicks);
        self.unsubscribe_rate = r(self.unsubscribes);
        self.bounce_rate = r(self.bounces);
        self.complaint_rate = r(self.complaints);
        self.conversion_rate = r(self.conversions);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Bucket start, Unix milliseconds.
    pub t: i64,
    pub delivered: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignStats {
    pub campaign: String,
    pub goal: Option<String>,
    pub status: Status,
    pub totals: Figures,
    pub by_segment: BTreeMap<String, Figures>,
    /// Keyed `segment/variant`.
    pub by_variant: BTreeMap<String, Figures>,
    pub by_wave: BTreeMap<String, Figures>,
    /// Messages delivered per `bucket_ms`, in all and per segment and
    /// per `segment/variant`.
    pub series: Vec<SeriesPoint>,
    pub series_by_segment: BTreeMap<String, Vec<SeriesPoint>>,
    pub series_by_variant: BTreeMap<String, Vec<SeriesPoint>>,
    /// Deliveries per provider per 5 s, the whole deployment's (providers
    /// are shared by campaigns).
    pub series_by_provider: BTreeMap<String, Vec<SeriesPoint>>,
    pub bucket_ms: i64,
}

pub async fn campaign_stats(
    backends: &Backends,
    campaign: &str,
    series_since: i64,
    bucket_ms: i64,
) -> anyhow::Result<CampaignStats> {
    let store = &*backends.store;
    let head = super::report::stored_head(store, campaign).await?;
    let status = status_with(backends, campaign, &head).await?;
    let goal = head.goal.clone();
    let count_machine = backends.config.tracking.count_machine_opens;
    let mut totals = Figures::default();
    let mut by_segment: BTreeMap<String, Figures> = BTreeMap::new();
    let mut by_variant: BTreeMap<String, Figures> = BTreeMap::new();
    let mut by_wave: BTreeMap<String, Figures> = BTreeMap::new();

    for row in store.ledger_breakdown(campaign).await? {
        let segment = row.message_key.split('/').next().unwrap_or("").to_string();
        for f in [
            &mut totals,
            by_segment.entry(segment).or_default(),
            by_variant.entry(row.message_key.clone()).or_default(),
        ] {
            match row.state.as_str() {
                "delivered" => f.sent += row.count,
                "failed" => f.failed += row.count,
                "suppressed" => f.suppressed += row.count,
                "cancelled" => f.cancelled += row.count,
                _ => {}
            }
        }
    }
    // The ledger does not record waves. Without waves everything is wave 0;
    // with them, a wave's row has its engagement but no sent count (and so
    // no rates): the wave of a sent message is not kept yet.
    if (totals.sent > 0 || !by_variant.is_empty()) && !head.uses_waves {
        let w = by_wave.entry("0".into()).or_default();
        w.sent = totals.sent;
        w.failed = totals.failed;
        w.suppressed = totals.suppressed;
        w.cancelled = totals.cancelled;
    }
    for c in store.engagement(campaign).await? {
        let variant = format!("{}/{}", c.segment, c.variant);
        for f in [
            &mut totals,
            by_segment.entry(c.segment.clone()).or_default(),
            by_variant.entry(variant).or_default(),
            by_wave.entry(c.wave.to_string()).or_default(),
        ] {
            let n = c.messages;
            match c.kind {
                EngagementKind::Open if c.machine => {
                    f.machine_opens += n;
                    if count_machine {
                        f.opens += n;
                    }
                }
                EngagementKind::Open => f.opens += n,
                EngagementKind::Click if !c.machine => f.clicks += n,
                EngagementKind::Click => {}
                EngagementKind::Unsubscribe => f.unsubscribes += n,
                EngagementKind::Bounce => f.bounces += n,
                EngagementKind::Complaint => f.complaints += n,
                EngagementKind::Delivery => f.deliveries += n,
            }
        }
    }
    for c in store.conversions(campaign).await? {
        if goal.as_ref().is_some_and(|g| *g != c.kind) {
            continue;
        }
        let variant = format!("{}/{}", c.segment, c.variant);
        for f in [
            &mut totals,
            by_segment.entry(c.segment.clone()).or_default(),
            by_variant.entry(variant).or_default(),
            by_wave.entry(c.wave.to_string()).or_default(),
        ] {
            f.conversions += c.recipients;
        }
    }
    for f in std::iter::once(&mut totals)
        .chain(by_segment.values_mut())
        .chain(by_variant.values_mut())
        .chain(by_wave.values_mut())
    {
        f.rates();
    }
    let mut all: BTreeMap<i64, u64> = BTreeMap::new();
    let mut by_seg: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
    let mut by_var: BTreeMap<String, Vec<SeriesPoint>> = BTreeMap::new();
    for (t, key, delivered) in store
        .delivered_series(campaign, series_since, bucket_ms)
        .await?
    {
        *all.entry(t).or_default() += delivered;
        let segment = key.split('/').next().unwrap_or("").to_string();
        *by_seg.entry(segment).or_default().entry(t).or_default() += delivered;
        by_var
            .entry(key)
            .or_default()
            .push(SeriesPoint { t, delivered });
    }
    let points = |m: BTreeMap<i64, u64>| {
        m.into_iter()
            .map(|(t, delivered)| SeriesPoint { t, delivered })
            .collect::<Vec<_>>()
    };
    let mut series_by_provider: BTreeMap<String, Vec<SeriesPoint>> = BTreeMap::new();
    for (provider, t, delivered) in store.provider_series(series_since).await? {
        series_by_provider
            .entry(provider)
            .or_default()
            .push(SeriesPoint { t, delivered });
    }
    Ok(CampaignStats {
        series_by_provider,
        campaign: campaign.to_string(),
        goal,
        status,
        totals,
        by_segment,
        by_variant,
        by_wave,
        series: points(all),
        series_by_segment: by_seg.into_iter().map(|(k, v)| (k, points(v))).collect(),
        series_by_variant: by_var,
        bucket_ms,
    })
}
