//! Campaign state: intake progress, the audience's seen ids, rejects,
//! per-batch statistics, dead-letter reasons and the delivery ledger.
//!
//! Architecture invariant: the delivery ledger is the only thing that
//! decides whether a message may be sent. A (campaign, recipient, message)
//! is claimed before its request is executed and settled after; a claim
//! that is never settled (the worker died) is *in doubt* and is resolved by
//! asking the transport, or else never sent again: at most once, always.

pub mod control;
pub mod engagement;
pub mod figures;
pub mod postgres;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::audience::Reject;
pub use crate::delivery::metrics::ProviderStats;
pub use control::{Control, ControlAction, ControlState, Parked, ParkedHead, Scope};
pub use engagement::{
    Conversion, ConversionCount, Engagement, EngagementCount, EngagementKind, LedgerBreakdown,
    MessageRef, SentMessage,
};
pub use figures::StageStats;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignState {
    /// Batches of audience rows fully handed to the first queue.
    pub intake_batches_done: u64,
    /// Rows read so far (all of them once `intake_finished`).
    pub rows_read: u64,
    pub intake_finished: bool,
    /// Fingerprint of the campaign file when it was first run.
    pub definition_hash: String,
}

/// What one stage did with one batch. Recorded once per (stage, batch id),
/// so redelivered batches do not count twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    pub recipients: u64,
    #[serde(default)]
    pub unsegmented: u64,
    /// Skipped: the campaign's consent field is not `true` for them.
    #[serde(default)]
    pub no_consent: u64,
    #[serde(default)]
    pub per_segment: BTreeMap<String, u64>,
    #[serde(default)]
    pub per_variant: BTreeMap<String, u64>,
}

impl BatchStats {
    pub fn merge(&mut self, other: &BatchStats) {
        self.recipients += other.recipients;
        self.unsegmented += other.unsegmented;
        self.no_consent += other.no_consent;
        for (k, v) in &other.per_segment {
            *self.per_segment.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.per_variant {
            *self.per_variant.entry(k.clone()).or_default() += v;
        }
    }
}

/// One message in the delivery ledger. Rows are keyed by `message_id`
/// (`ids::message_id`), which names (campaign, recipient, message) one to
/// one and keeps a batch's rows side by side; the other two fields are kept
/// for reports and look-ups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LedgerKey {
    pub message_id: String,
    pub recipient_id: String,
    /// `segment/variant`.
    pub message_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Ours to send now.
    Claimed,
    /// Already settled (sent, failed for good, or in doubt): never again.
    Settled,
    /// Claimed by a live worker right now; try the batch again later.
    Busy,
}

/// Each claim's outcome, from the message ids this claim inserted and the
/// states of the rows that were there already. Shared by every backend:
/// this is the ledger's decision, the backends only gather its inputs.
pub(crate) fn claim_outcomes(
    claims: &[LedgerKey],
    mut inserted: std::collections::HashSet<String>,
    existing: &std::collections::HashMap<String, String>,
) -> Vec<ClaimOutcome> {
    claims
        .iter()
        .map(|cl| {
            // `remove`: a message listed twice in one batch is ours once.
            if inserted.remove(&cl.message_id) {
                ClaimOutcome::Claimed
            } else if existing.get(&cl.message_id).is_some_and(|s| s == "claimed") {
                ClaimOutcome::Busy
            } else {
                ClaimOutcome::Settled
            }
        })
        .collect()
}

/// For each (id, line) registered, the line the id was first seen on if
/// that is another line (a duplicate), from the stored first lines. Shared
/// by every backend; a line registered again after a restart is no
/// duplicate of itself.
pub(crate) fn duplicates(
    ids: &[(String, u64)],
    first_lines: &std::collections::HashMap<String, u64>,
) -> Vec<Option<u64>> {
    ids.iter()
        .map(|(id, line)| {
            let first = first_lines.get(id).copied().unwrap_or(*line);
            (first != *line).then_some(first)
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    /// Failed for good; never retried.
    Failed(String),
    /// Not sent, never to be: the address is on the suppression list.
    Suppressed(String),
    /// Not sent, never to be: its campaign (or segment, variant) was
    /// cancelled while it was queued.
    Cancelled(String),
    /// Not sent, never to be: the recipient had their share of messages
    /// (the frequency cap) when it was due.
    Capped(String),
    /// Not sent; the claim is dropped so a retry may send it.
    Released,
    /// Maybe sent (the worker died mid-request, the transport cannot tell):
    /// never sent again, counted apart.
    InDoubt,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTotals {
    pub delivered: u64,
    pub failed: u64,
    pub in_doubt: u64,
    pub suppressed: u64,
    #[serde(default)]
    pub cancelled: u64,
    #[serde(default)]
    pub capped: u64,
}

impl LedgerTotals {
    /// Adds one ledger state's count.
    pub(crate) fn add(&mut self, state: &str, n: u64) {
        match state {
            "delivered" => self.delivered += n,
            "failed" => self.failed += n,
            "in_doubt" => self.in_doubt += n,
            "suppressed" => self.suppressed += n,
            "cancelled" => self.cancelled += n,
            "capped" => self.capped += n,
            _ => {}
        }
    }
}

/// Why an address is never sent to again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuppressionReason {
    Unsubscribed,
    HardBounce,
    Complaint,
    Manual,
}

impl SuppressionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::Unsubscribed => "unsubscribed",
            SuppressionReason::HardBounce => "hard-bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<SuppressionReason> {
        [
            SuppressionReason::Unsubscribed,
            SuppressionReason::HardBounce,
            SuppressionReason::Complaint,
            SuppressionReason::Manual,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// One entry of the suppression list. Addresses are kept normalised (see
/// `normalise_address`), so `Ana@Example.org` and `ana@example.org` are one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub address: String,
    pub reason: SuppressionReason,
    /// What happened, e.g. the bounce's SMTP reply.
    pub detail: String,
    /// The campaign it came from, if any.
    pub campaign: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

/// Email addresses compare case-insensitively in practice (providers treat
/// the local part so), phone numbers and keys as they are.
pub fn normalise_address(a: &str) -> String {
    let a = a.trim();
    if a.contains('@') {
        a.to_lowercase()
    } else {
        a.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub stage: String,
    pub item: String,
    pub recipients: u64,
    pub reason: String,
    /// What failed, kept whole so it can be inspected and replayed.
    pub payload: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store error: {0}")]
    Other(String),
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates the campaign's state on first sight; returns it as stored.
    async fn open_campaign(
        &self,
        campaign: &str,
        definition_hash: &str,
    ) -> Result<CampaignState, StoreError>;

    async fn set_intake_progress(
        &self,
        campaign: &str,
        batches_done: u64,
        rows_read: u64,
        finished: bool,
    ) -> Result<(), StoreError>;

    /// Registers (id, line) pairs; for each, whether it is a duplicate of an
    /// id first seen on another line. Re-registering the same line is not.
    async fn register_ids(
        &self,
        campaign: &str,
        ids: &[(String, u64)],
    ) -> Result<Vec<Option<u64>>, StoreError>;

    /// Idempotent per (campaign, line).
    async fn record_rejects(&self, campaign: &str, rejects: &[Reject]) -> Result<(), StoreError>;

    async fn rejects(&self, campaign: &str) -> Result<Vec<Reject>, StoreError>;

    async fn reject_count(&self, campaign: &str) -> Result<u64, StoreError>;

    /// Idempotent per (campaign, stage, batch).
    async fn record_batch(
        &self,
        campaign: &str,
        stage: &str,
        batch: &str,
        stats: &BatchStats,
    ) -> Result<(), StoreError>;

    async fn stage_totals(&self, campaign: &str, stage: &str) -> Result<BatchStats, StoreError>;

    /// Idempotent per (campaign, stage, item).
    async fn record_dead_letter(
        &self,
        campaign: &str,
        record: &DeadLetterRecord,
    ) -> Result<(), StoreError>;

    async fn dead_letters(&self, campaign: &str) -> Result<Vec<DeadLetterRecord>, StoreError>;

    /// Claims each message for `owner` (a run or worker id). Claims older
    /// than `lease_ms` by another owner count as `Busy` until resolved.
    async fn claim(
        &self,
        campaign: &str,
        owner: &str,
        claims: &[LedgerKey],
    ) -> Result<Vec<ClaimOutcome>, StoreError>;

    async fn settle(
        &self,
        campaign: &str,
        owner: &str,
        settled: &[(LedgerKey, Settlement)],
    ) -> Result<(), StoreError>;

    /// Claims not settled by owners other than `owner` whose lease (see
    /// `beat`) has run out, or who never held one: left by dead workers.
    async fn unsettled(&self, campaign: &str, owner: &str) -> Result<Vec<LedgerKey>, StoreError>;

    /// Says `owner` is alive for another `lease`. A worker that stops
    /// beating is dead: its open claims become `unsettled` for others.
    async fn beat(&self, owner: &str, lease: std::time::Duration) -> Result<(), StoreError>;

    /// Ends `owner`'s lease at once (a clean shutdown).
    async fn retire(&self, owner: &str) -> Result<(), StoreError>;

    /// Keeps what workers on other machines need to run the campaign (its
    /// file, audience fields, plugins), keyed by the definition's hash.
    async fn save_bundle(
        &self,
        campaign: &str,
        hash: &str,
        bundle: &[u8],
    ) -> Result<(), StoreError>;

    /// The latest saved bundle and its hash.
    async fn bundle(&self, campaign: &str) -> Result<Option<(String, Vec<u8>)>, StoreError>;

    /// The latest saved bundle's hash alone: cheap enough to ask often
    /// (has the campaign changed? was it launched at all?).
    async fn bundle_hash(&self, campaign: &str) -> Result<Option<String>, StoreError>;

    /// Whether a run or a launch ever opened this campaign here.
    async fn campaign_known(&self, campaign: &str) -> Result<bool, StoreError>;

    /// Resolves claims of dead owners (see `unsettled`).
    async fn resolve(
        &self,
        campaign: &str,
        resolved: &[(LedgerKey, Settlement)],
    ) -> Result<(), StoreError>;

    async fn ledger_totals(&self, campaign: &str) -> Result<LedgerTotals, StoreError>;

    /// Adds (or updates the reason of) suppression entries.
    async fn suppress(&self, entries: &[Suppression]) -> Result<(), StoreError>;

    /// Removes addresses from the list; returns how many were on it.
    async fn unsuppress(&self, addresses: &[String]) -> Result<u64, StoreError>;

    /// Of these (normalised) addresses, the ones suppressed, with why.
    async fn suppressed(
        &self,
        addresses: &[String],
    ) -> Result<HashMap<String, SuppressionReason>, StoreError>;

    /// The whole list, oldest first.
    async fn suppressions(&self) -> Result<Vec<Suppression>, StoreError>;

    /// A worker's cumulative provider figures (replacing its last save).
    async fn save_provider_stats(
        &self,
        worker: &str,
        stats: &[ProviderStats],
    ) -> Result<(), StoreError>;

    /// Every worker's provider figures, added up per provider.
    async fn provider_stats(&self) -> Result<Vec<ProviderStats>, StoreError>;

    /// Messages each provider delivered per `PROVIDER_BUCKET_MS` since
    /// `since` (Unix ms), every worker together: (provider, bucket start,
    /// delivered), from the cumulative figures workers save.
    async fn provider_series(&self, since: i64) -> Result<Vec<(String, i64, u64)>, StoreError>;

    /// A worker's cumulative stage figures (replacing its last save).
    async fn save_stage_stats(&self, worker: &str, stats: &[StageStats]) -> Result<(), StoreError>;

    /// Every worker's stage figures, added up per stage.
    async fn stage_stats(&self) -> Result<Vec<StageStats>, StoreError>;

    /// Every campaign opened here, oldest first.
    async fn campaigns(&self) -> Result<Vec<String>, StoreError>;

    /// Ledger rows by `segment/variant` and state.
    async fn ledger_breakdown(&self, campaign: &str) -> Result<Vec<LedgerBreakdown>, StoreError>;

    /// Messages delivered since `since` (Unix ms), per `bucket_ms` and
    /// `segment/variant`: (bucket start, message key, count), oldest first,
    /// empty buckets left out.
    async fn delivered_series(
        &self,
        campaign: &str,
        since: i64,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, StoreError>;

    /// The ledger's row for a message id (a bounce names the Message-ID).
    async fn sent_message(&self, message_id: &str) -> Result<Option<SentMessage>, StoreError>;

    /// Messages delivered to each of these recipients since `since` (Unix
    /// ms), every campaign together: what the frequency cap counts.
    async fn recent_deliveries(
        &self,
        recipient_ids: &[String],
        since: i64,
    ) -> Result<HashMap<String, u64>, StoreError>;

    /// The last message delivered to a recipient within [since, until].
    async fn last_delivered(
        &self,
        recipient_id: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<SentMessage>, StoreError>;

    /// The key that signs tracking links: made at random on first use and
    /// the same for every process that shares this store.
    async fn tracking_key(&self) -> Result<Vec<u8>, StoreError> {
        let fresh: [u8; 32] = rand::random();
        self.setting_or_init("tracking_key", &fresh).await
    }

    /// Reserves `n` sends on a rate shared by every process of this store
    /// (a virtual-time token bucket, GCRA: one row per key, advanced
    /// atomically by `n / rate` seconds). Returns when the reserved sends may
    /// start, Unix ms: now, or later when others reserved before. With a
    /// `tolerance_ms`, turns left unused in the last `tolerance_ms` may
    /// still be taken (the start is then in the past): a burst of at most
    /// that long's worth, so that late arrivals do not lose the rate.
    async fn reserve(
        &self,
        key: &str,
        n: u32,
        rate_per_second: f64,
        tolerance_ms: i64,
    ) -> Result<i64, StoreError>;

    /// Takes up to `want` free slots of the `limit` of `key` (a provider's
    /// concurrency cap, shared by every process of this store) for
    /// `holder`, leased for `lease`; returns the slots taken, maybe none. A
    /// slot whose lease ran out (its holder died) is free again.
    async fn take_slots(
        &self,
        key: &str,
        limit: u32,
        want: u32,
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<Vec<u32>, StoreError>;

    /// Extends the lease of `holder`'s slots to `lease` from now; a zero
    /// lease gives them back.
    async fn keep_slots(
        &self,
        key: &str,
        slots: &[u32],
        holder: &str,
        lease: std::time::Duration,
    ) -> Result<(), StoreError>;

    /// A named value the deployment keeps (e.g. a campaign created through
    /// the API, for whichever server launches it).
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    async fn set_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;

    /// The setting, first set to `value` if it had none: whoever comes
    /// first decides, every process reads the same.
    async fn setting_or_init(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Delivered and failed messages settled since `since` (real Unix ms),
    /// and distinct bounces, complaints and unsubscribes recorded since
    /// then: what guardrails judge.
    async fn outcomes_since(
        &self,
        campaign: &str,
        since: i64,
    ) -> Result<crate::schedule::Outcomes, StoreError>;

    /// Records events; for each, whether it is new (not a repeat of one
    /// already stored, which only adds a hit).
    async fn record_engagement(&self, events: &[Engagement]) -> Result<Vec<bool>, StoreError>;

    async fn engagement(&self, campaign: &str) -> Result<Vec<EngagementCount>, StoreError>;

    /// Records a conversion; false if its event id was recorded before.
    async fn record_conversion(&self, conversion: &Conversion) -> Result<bool, StoreError>;

    /// Conversions attributed to the campaign, by type.
    async fn conversions(&self, campaign: &str) -> Result<Vec<ConversionCount>, StoreError>;

    /// Pauses, resumes or cancels part of a campaign. A resume lifts every
    /// pause within its scope; a cancel is final.
    async fn control(
        &self,
        campaign: &str,
        scope: &Scope,
        action: ControlAction,
        reason: &str,
    ) -> Result<(), StoreError>;

    async fn controls(&self, campaign: &str) -> Result<Vec<Control>, StoreError>;

    /// Keeps a paused batch until a resume; idempotent by its id.
    async fn park(&self, parked: &Parked) -> Result<(), StoreError>;

    /// Up to `limit` parked batches due by `due_by` (campaign time) that no
    /// worker is putting back right now, earliest due first, without their
    /// payloads (a pause may hold thousands, looked over several times a
    /// second).
    async fn parked(&self, limit: u32, due_by: i64) -> Result<Vec<ParkedHead>, StoreError>;

    /// Takes parked batches for putting back, for `lease`; returns the ones
    /// taken (another worker may have been first), payloads and all.
    async fn take_parked(
        &self,
        ids: &[String],
        lease: std::time::Duration,
    ) -> Result<Vec<Parked>, StoreError>;

    /// Forgets parked batches once they are back in their queue.
    async fn unpark(&self, ids: &[String]) -> Result<(), StoreError>;

    async fn parked_count(&self, campaign: &str) -> Result<u64, StoreError>;

    /// Makes every batch of `campaign` held until a time due now (a cancel
    /// drains them at once; what is not cancelled is parked again by the
    /// send stage). Batches held until a resume stay so.
    async fn wake_parked(&self, campaign: &str) -> Result<(), StoreError>;
}

/// Resolution of the per-provider time series.
pub const PROVIDER_BUCKET_MS: i64 = 5_000;

/// Deliveries per (provider, bucket) from cumulative per-worker readings
/// `(worker, provider, bucket, delivered so far)` in bucket order: each
/// reading's increase over the same worker's previous one.
/// Readings start one bucket before `since`: a worker alive then has one
/// there (workers save every second), which is its baseline; a worker whose
/// first reading is inside the span started in it and counts from zero.
pub(crate) fn provider_deltas(
    readings: impl IntoIterator<Item = (String, String, i64, u64)>,
    since: i64,
) -> Vec<(String, i64, u64)> {
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut out: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for (worker, provider, bucket, delivered) in readings {
        let key = (worker, provider.clone());
        let prev = match last.insert(key, delivered) {
            Some(prev) => prev,
            None if bucket < since => continue,
            None => 0,
        };
        if bucket >= since {
            *out.entry((provider, bucket)).or_default() += delivered.saturating_sub(prev);
        }
    }
    out.into_iter().map(|((p, b), n)| (p, b, n)).collect()
}

/// Adds up saved per-worker figures per provider, in name order.
pub(crate) fn merge_provider_stats(
    rows: impl IntoIterator<Item = ProviderStats>,
) -> Vec<ProviderStats> {
    let mut by: std::collections::BTreeMap<String, ProviderStats> = Default::default();
    for r in rows {
        match by.get_mut(&r.provider) {
            Some(m) => m.merge(&r),
            None => {
                by.insert(r.provider.clone(), r);
            }
        }
    }
    by.into_values().collect()
}

/// One test per contract case for a backend: `$setup` is an async fn giving
/// `Option<(guard, store)>`; `None` skips (a service the environment does
/// not provide), and the guard (a temporary folder) lives through the test.
#[cfg(test)]
macro_rules! contract_tests {
    ($setup:path) => {
        $crate::store::contract_tests!(@each $setup;
            a_message_is_claimed_once_and_never_again_after_settling,
            claims_of_a_dead_owner_are_found_and_resolved,
            live_owners_keep_their_claims,
            bundles_are_kept_by_hash,
            duplicate_ids_are_told_apart_from_rereads,
            batch_stats_count_once_per_batch,
            a_message_twice_in_one_batch_is_claimed_once,
            the_suppression_list_is_kept_by_normalised_address,
            provider_figures_of_every_worker_add_up,
            a_campaign_is_known_once_opened,
            engagement_counts_each_message_once,
            conversions_are_idempotent_and_attributed,
            the_tracking_key_is_made_once,
            a_cancel_is_final_and_a_resume_lifts_pauses_within_its_scope,
            a_parked_batch_is_taken_by_one_worker,
            sent_messages_are_found_by_id_and_by_recipient,
            stage_figures_of_every_worker_add_up,
            a_shared_rate_is_reserved_in_turn,
            concurrency_slots_are_shared_and_leased);
    };
    (@each $setup:path; $($case:ident),*) => {$(
        #[tokio::test]
        async fn $case() {
            if let Some((_guard, store)) = $setup().await {
                $crate::store::contract::$case(&store).await;
            }
        }
    )*};
}
#[cfg(test)]
pub(crate) use contract_tests;

/// The contract every store backend must keep; each backend's tests run it
/// through `contract_tests!`.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    /// The message "vip/a" of campaign "c" to recipient `r`, on line `r`.
    fn claim(r: &str) -> LedgerKey {
        LedgerKey {
            message_id: squall_pipeline_core::ids::message_id(
                "c",
                r.parse().unwrap_or(0),
                r,
                "vip/a",
            ),
            recipient_id: r.into(),
            message_key: "vip/a".into(),
        }
    }

    /// After a backend converted an older ledger holding r7 (delivered) and
    /// r8 (failed), both on their audience lines 7 and 8 of campaign "c":
    /// neither is ever claimed again, a newcomer is.
    pub(crate) async fn the_converted_older_ledger_keeps_what_it_settled(s: &dyn Store) {
        let key = |r: &str, line| LedgerKey {
            message_id: squall_pipeline_core::ids::message_id("c", line, r, "vip/a"),
            recipient_id: r.into(),
            message_key: "vip/a".into(),
        };
        assert_eq!(
            s.claim("c", "run1", &[key("r7", 7), key("r8", 8), key("r9", 9)])
                .await
                .unwrap(),
            vec![
                ClaimOutcome::Settled,
                ClaimOutcome::Settled,
                ClaimOutcome::Claimed
            ],
            "what the older ledger settled stays settled"
        );
        let totals = s.ledger_totals("c").await.unwrap();
        assert_eq!((totals.delivered, totals.failed), (1, 1));
        // The newest states fit the converted table.
        s.settle(
            "c",
            "run1",
            &[(key("r9", 9), Settlement::Capped("cap".into()))],
        )
        .await
        .unwrap();
        assert_eq!(s.ledger_totals("c").await.unwrap().capped, 1);
    }

    pub(crate) async fn a_message_is_claimed_once_and_never_again_after_settling(s: &dyn Store) {
        let out = s
            .claim("c", "run1", &[claim("1"), claim("2")])
            .await
            .unwrap();
        assert_eq!(out, vec![ClaimOutcome::Claimed, ClaimOutcome::Claimed]);
        // A redelivered batch while the first is in work: busy, not sent.
        assert_eq!(
            s.claim("c", "run1", &[claim("1")]).await.unwrap(),
            vec![ClaimOutcome::Busy]
        );
        s.settle(
            "c",
            "run1",
            &[
                (claim("1"), Settlement::Delivered),
                (claim("2"), Settlement::Released),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            s.claim("c", "run2", &[claim("1"), claim("2")])
                .await
                .unwrap(),
            vec![ClaimOutcome::Settled, ClaimOutcome::Claimed]
        );
        assert_eq!(
            s.ledger_totals("c").await.unwrap(),
            LedgerTotals {
                delivered: 1,
                failed: 0,
                in_doubt: 0,
                suppressed: 0,
                cancelled: 0,
                capped: 0,
            }
        );
    }

    pub(crate) async fn claims_of_a_dead_owner_are_found_and_resolved(s: &dyn Store) {
        s.claim("c", "dead", &[claim("1"), claim("2")])
            .await
            .unwrap();
        let left = s.unsettled("c", "alive").await.unwrap();
        assert_eq!(left.len(), 2);
        // The dead owner's late settle after resolution changes nothing.
        s.resolve(
            "c",
            &[
                (claim("1"), Settlement::Delivered),
                (claim("2"), Settlement::InDoubt),
            ],
        )
        .await
        .unwrap();
        s.settle("c", "dead", &[(claim("2"), Settlement::Released)])
            .await
            .unwrap();
        assert_eq!(
            s.ledger_totals("c").await.unwrap(),
            LedgerTotals {
                delivered: 1,
                failed: 0,
                in_doubt: 1,
                suppressed: 0,
                ..Default::default()
            }
        );
        assert!(s.unsettled("c", "alive").await.unwrap().is_empty());
    }

    pub(crate) async fn live_owners_keep_their_claims(s: &dyn Store) {
        use std::time::Duration;
        s.beat("alive", Duration::from_secs(60)).await.unwrap();
        s.beat("dying", Duration::from_millis(1)).await.unwrap();
        s.claim("c", "alive", &[claim("1")]).await.unwrap();
        s.claim("c", "dying", &[claim("2")]).await.unwrap();
        s.claim("c", "retired", &[claim("3")]).await.unwrap();
        s.beat("retired", Duration::from_secs(60)).await.unwrap();
        s.retire("retired").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut left: Vec<String> = s
            .unsettled("c", "me")
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.recipient_id)
            .collect();
        left.sort();
        assert_eq!(left, vec!["2".to_string(), "3".to_string()]);
    }

    pub(crate) async fn bundles_are_kept_by_hash(s: &dyn Store) {
        assert_eq!(s.bundle("c").await.unwrap(), None);
        assert_eq!(s.bundle_hash("c").await.unwrap(), None);
        s.save_bundle("c", "h1", b"one").await.unwrap();
        s.save_bundle("c", "h1", b"one").await.unwrap();
        assert_eq!(
            s.bundle("c").await.unwrap(),
            Some(("h1".to_string(), b"one".to_vec()))
        );
        s.save_bundle("c", "h2", b"two").await.unwrap();
        assert_eq!(s.bundle("c").await.unwrap().unwrap().0, "h2");
        assert_eq!(s.bundle_hash("c").await.unwrap().as_deref(), Some("h2"));
    }

    pub(crate) async fn duplicate_ids_are_told_apart_from_rereads(s: &dyn Store) {
        let first = s
            .register_ids("c", &[("a".into(), 2), ("b".into(), 3)])
            .await
            .unwrap();
        assert_eq!(first, vec![None, None]);
        // Line 2 read again after a restart: not a duplicate. Line 9: is.
        let again = s
            .register_ids("c", &[("a".into(), 2), ("a".into(), 9)])
            .await
            .unwrap();
        assert_eq!(again, vec![None, Some(2)]);
        // A new id twice in one call: the first line counts.
        let twice = s
            .register_ids("c", &[("n".into(), 20), ("n".into(), 21)])
            .await
            .unwrap();
        assert_eq!(twice, vec![None, Some(20)]);
    }

    pub(crate) async fn batch_stats_count_once_per_batch(s: &dyn Store) {
        let stats = BatchStats {
            recipients: 3,
            unsegmented: 1,
            no_consent: 0,
            per_segment: [("vip".to_string(), 2)].into(),
            per_variant: [("vip/a".to_string(), 2)].into(),
        };
        s.record_batch("c", "segment", "b1", &stats).await.unwrap();
        s.record_batch("c", "segment", "b1", &stats).await.unwrap();
        s.record_batch("c", "segment", "b2", &stats).await.unwrap();
        let total = s.stage_totals("c", "segment").await.unwrap();
        assert_eq!(
            (
                total.recipients,
                total.unsegmented,
                total.per_segment["vip"]
            ),
            (6, 2, 4)
        );
    }

    pub(crate) async fn a_message_twice_in_one_batch_is_claimed_once(s: &dyn Store) {
        let out = s
            .claim("c", "run1", &[claim("1"), claim("1"), claim("2")])
            .await
            .unwrap();
        // The copy is busy (its twin is being sent right now), never claimed.
        assert_eq!(
            out,
            vec![
                ClaimOutcome::Claimed,
                ClaimOutcome::Busy,
                ClaimOutcome::Claimed
            ]
        );
        s.settle(
            "c",
            "run1",
            &[
                (claim("1"), Settlement::Failed("550 no such user".into())),
                (claim("2"), Settlement::InDoubt),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            s.ledger_totals("c").await.unwrap(),
            LedgerTotals {
                delivered: 0,
                failed: 1,
                in_doubt: 1,
                suppressed: 0,
                ..Default::default()
            }
        );
    }

    pub(crate) async fn the_suppression_list_is_kept_by_normalised_address(s: &dyn Store) {
        let entry = |address: &str, reason| Suppression {
            address: address.into(),
            reason,
            detail: "550 5.1.1".into(),
            campaign: Some("c".into()),
            at: 1,
        };
        s.suppress(&[
            entry("Ana@Example.org", SuppressionReason::HardBounce),
            entry("+4915112345678", SuppressionReason::Manual),
        ])
        .await
        .unwrap();
        // A second entry for an address updates its reason.
        s.suppress(&[entry("ana@example.org ", SuppressionReason::Complaint)])
            .await
            .unwrap();
        let asked: Vec<String> = ["ana@example.org", "+4915112345678", "bob@example.org"]
            .map(String::from)
            .to_vec();
        let found = s.suppressed(&asked).await.unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found["ana@example.org"], SuppressionReason::Complaint);
        assert_eq!(found["+4915112345678"], SuppressionReason::Manual);
        let all = s.suppressions().await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().any(|e| e.address == "ana@example.org"
            && e.campaign.as_deref() == Some("c")
            && e.detail == "550 5.1.1"));
        let removed = s
            .unsuppress(&["ANA@example.org".into(), "nobody@example.org".into()])
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert!(s.suppressed(&asked).await.unwrap().len() == 1);
    }

    pub(crate) async fn provider_figures_of_every_worker_add_up(s: &dyn Store) {
        use crate::delivery::Outcome;
        use crate::delivery::metrics::ProviderMetrics;
        use std::time::Duration;
        let a = ProviderMetrics::new("primary", "smtp");
        a.record(&Outcome::Delivered, Duration::from_millis(2));
        a.record(&Outcome::transient("451"), Duration::from_millis(9));
        let b = ProviderMetrics::new("primary", "smtp");
        b.record(&Outcome::Delivered, Duration::from_millis(2));
        s.save_provider_stats("w1", &[a.snapshot()]).await.unwrap();
        s.save_provider_stats("w2", &[b.snapshot()]).await.unwrap();
        // A later save replaces the worker's earlier one, it is not added.
        a.record(&Outcome::Delivered, Duration::from_millis(2));
        s.save_provider_stats("w1", &[a.snapshot()]).await.unwrap();
        let all = s.provider_stats().await.unwrap();
        assert_eq!(all.len(), 1);
        let series = s.provider_series(0).await.unwrap();
        let delivered: u64 = series.iter().map(|(_, _, n)| n).sum();
        assert!(series.iter().all(|(p, _, _)| p == "primary"));
        // Both workers started inside the span: 2 (w1) + 1 (w2) delivered.
        assert_eq!(delivered, 3, "{series:?}");
        assert!(
            s.provider_series(crate::sqlite::now_ms() + 60_000)
                .await
                .unwrap()
                .is_empty()
        );
        let p = &all[0];
        assert_eq!(
            (p.provider.as_str(), p.attempts, p.delivered, p.transient),
            ("primary", 4, 3, 1)
        );
    }

    pub(crate) async fn a_campaign_is_known_once_opened(s: &dyn Store) {
        assert!(!s.campaign_known("fresh").await.unwrap());
        s.open_campaign("fresh", "h").await.unwrap();
        assert!(s.campaign_known("fresh").await.unwrap());
    }

    fn reference(message: &str, segment: &str, variant: &str) -> MessageRef {
        MessageRef {
            campaign: "c".into(),
            message_id: message.into(),
            recipient_id: format!("r-{message}"),
            segment: segment.into(),
            variant: variant.into(),
            wave: 0,
        }
    }

    fn event(message: &str, kind: EngagementKind, machine: bool) -> Engagement {
        Engagement {
            message: reference(message, "vip", "a"),
            kind,
            detail: String::new(),
            machine,
            at: 1,
        }
    }

    pub(crate) async fn engagement_counts_each_message_once(s: &dyn Store) {
        use EngagementKind::*;
        let new = s
            .record_engagement(&[
                event("m1", Open, false),
                event("m1", Open, false),
                event("m1", Open, true),
                event("m2", Open, false),
                event("m1", Click, false),
            ])
            .await
            .unwrap();
        assert_eq!(new, vec![true, false, true, true, true]);
        assert_eq!(
            s.record_engagement(&[event("m2", Open, false)])
                .await
                .unwrap(),
            vec![false]
        );
        let counts = s.engagement("c").await.unwrap();
        let find = |kind, machine| {
            counts
                .iter()
                .find(|c| c.kind == kind && c.machine == machine)
                .map(|c| (c.messages, c.hits))
        };
        assert_eq!(find(Open, false), Some((2, 4)));
        assert_eq!(find(Open, true), Some((1, 1)));
        assert_eq!(find(Click, false), Some((1, 1)));
        assert!(s.engagement("other").await.unwrap().is_empty());
    }

    pub(crate) async fn conversions_are_idempotent_and_attributed(s: &dyn Store) {
        let conversion = |id: &str, recipient: &str| Conversion {
            event_id: id.into(),
            kind: "purchase".into(),
            recipient_id: recipient.into(),
            properties: serde_json::json!({"amount": 42}),
            at: 5,
            attributed: Some(reference(recipient, "vip", "b")),
        };
        assert!(s.record_conversion(&conversion("e1", "r1")).await.unwrap());
        assert!(!s.record_conversion(&conversion("e1", "r1")).await.unwrap());
        assert!(s.record_conversion(&conversion("e2", "r1")).await.unwrap());
        assert!(s.record_conversion(&conversion("e3", "r2")).await.unwrap());
        let counts = s.conversions("c").await.unwrap();
        assert_eq!(counts.len(), 1);
        assert_eq!(
            (
                counts[0].variant.as_str(),
                counts[0].events,
                counts[0].recipients
            ),
            ("b", 3, 2)
        );
    }

    pub(crate) async fn the_tracking_key_is_made_once(s: &dyn Store) {
        let k = s.tracking_key().await.unwrap();
        assert_eq!(k.len(), 32);
        assert_eq!(s.tracking_key().await.unwrap(), k);
        assert_eq!(s.setting("x").await.unwrap(), None);
        s.set_setting("x", b"1").await.unwrap();
        s.set_setting("x", b"2").await.unwrap();
        assert_eq!(s.setting("x").await.unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(s.setting_or_init("y", b"first").await.unwrap(), b"first");
        assert_eq!(s.setting_or_init("y", b"second").await.unwrap(), b"first");
    }

    pub(crate) async fn a_cancel_is_final_and_a_resume_lifts_pauses_within_its_scope(
        s: &dyn Store,
    ) {
        use control::decide;
        let seg = |name: &str| Scope {
            segment: Some(name.into()),
            variant: None,
        };
        s.control("c", &seg("vip"), ControlAction::Pause, "test")
            .await
            .unwrap();
        let vip_b = Scope {
            segment: Some("vip".into()),
            variant: Some("b".into()),
        };
        s.control("c", &vip_b, ControlAction::Pause, "test")
            .await
            .unwrap();
        s.control("c", &seg("newcomers"), ControlAction::Cancel, "test")
            .await
            .unwrap();
        let cs = s.controls("c").await.unwrap();
        assert_eq!(decide(&cs, "vip", "a"), Some(ControlState::Paused));
        assert_eq!(decide(&cs, "newcomers", "a"), Some(ControlState::Cancelled));
        assert_eq!(decide(&cs, "regulars", "a"), None);
        // Resuming the segment lifts its variant's pause too; a pause never
        // undoes a cancel, and a resume does not either.
        s.control("c", &seg("vip"), ControlAction::Resume, "test")
            .await
            .unwrap();
        s.control("c", &seg("newcomers"), ControlAction::Pause, "test")
            .await
            .unwrap();
        s.control("c", &Scope::campaign(), ControlAction::Resume, "test")
            .await
            .unwrap();
        let cs = s.controls("c").await.unwrap();
        assert_eq!(decide(&cs, "vip", "b"), None);
        assert_eq!(decide(&cs, "newcomers", "a"), Some(ControlState::Cancelled));
        assert!(s.controls("other").await.unwrap().is_empty());
    }

    pub(crate) async fn a_parked_batch_is_taken_by_one_worker(s: &dyn Store) {
        let later = Parked {
            id: "c/send/b2".into(),
            campaign: "c".into(),
            due_at: 5_000,
            queue: "c.send".into(),
            keys: vec!["vip/a".into()],
            payload: b"later".to_vec(),
        };
        s.park(&later).await.unwrap();
        assert!(s.parked(10, 4_999).await.unwrap().is_empty(), "not due yet");
        assert_eq!(s.parked(10, 5_000).await.unwrap(), vec![later.head()]);
        s.unpark(std::slice::from_ref(&later.id)).await.unwrap();
        let p = Parked {
            id: "c/send/b1".into(),
            campaign: "c".into(),
            due_at: 0,
            queue: "c.send".into(),
            keys: vec!["vip/a".into()],
            payload: b"payload".to_vec(),
        };
        s.park(&p).await.unwrap();
        s.park(&p).await.unwrap();
        assert_eq!(s.parked_count("c").await.unwrap(), 1);
        assert_eq!(s.parked(10, 0).await.unwrap(), vec![p.head()]);
        let lease = std::time::Duration::from_secs(60);
        let ids = vec![p.id.clone()];
        assert_eq!(s.take_parked(&ids, lease).await.unwrap(), vec![p.clone()]);
        assert!(s.take_parked(&ids, lease).await.unwrap().is_empty());
        assert!(
            s.parked(10, 0).await.unwrap().is_empty(),
            "taken: not listed"
        );
        s.unpark(&ids).await.unwrap();
        assert_eq!(s.parked_count("c").await.unwrap(), 0);

        // Woken: what waited for a time is due now; what waits for a resume
        // still waits for it; other campaigns are untouched.
        let far = Parked {
            id: "c/send/b3".into(),
            due_at: i64::MAX / 2,
            ..later.clone()
        };
        let other = Parked {
            id: "d/send/b1".into(),
            campaign: "d".into(),
            ..far.clone()
        };
        s.park(&far).await.unwrap();
        s.park(&other).await.unwrap();
        s.park(&p).await.unwrap();
        s.wake_parked("c").await.unwrap();
        let due: Vec<String> = s
            .parked(10, crate::schedule::clock::now_ms())
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(due, vec![p.id.clone(), far.id.clone()]);
        assert_eq!(
            s.parked(10, 0).await.unwrap(),
            vec![p.head()],
            "still held until a resume"
        );
    }

    pub(crate) async fn sent_messages_are_found_by_id_and_by_recipient(s: &dyn Store) {
        s.open_campaign("c", "h").await.unwrap();
        s.claim("c", "run1", &[claim("1"), claim("2")])
            .await
            .unwrap();
        s.settle(
            "c",
            "run1",
            &[
                (claim("1"), Settlement::Delivered),
                (claim("2"), Settlement::Cancelled("cancelled".into())),
            ],
        )
        .await
        .unwrap();
        let m = s
            .sent_message(&claim("1").message_id)
            .await
            .unwrap()
            .expect("found by id");
        assert_eq!(
            (
                m.campaign.as_str(),
                m.recipient_id.as_str(),
                m.state.as_str()
            ),
            ("c", "1", "delivered")
        );
        assert_eq!(m.reference().segment, "vip");
        assert!(s.sent_message("nope").await.unwrap().is_none());
        let recent = s
            .recent_deliveries(&["1".into(), "2".into(), "3".into()], 0)
            .await
            .unwrap();
        assert_eq!(recent.get("1"), Some(&1));
        assert_eq!(recent.get("2"), None, "cancelled is not delivered");
        assert!(
            s.recent_deliveries(&["1".into()], i64::MAX)
                .await
                .unwrap()
                .is_empty()
        );
        let last = s.last_delivered("1", 0, i64::MAX).await.unwrap();
        assert_eq!(last.map(|m| m.message_id), Some(claim("1").message_id));
        assert!(
            s.last_delivered("2", 0, i64::MAX).await.unwrap().is_none(),
            "cancelled, not delivered"
        );
        assert_eq!(s.ledger_totals("c").await.unwrap().cancelled, 1);
        // Another campaign's messages count for it alone.
        let other = LedgerKey {
            message_id: squall_pipeline_core::ids::message_id("d", 1, "1", "vip/a"),
            ..claim("1")
        };
        s.claim("d", "run1", std::slice::from_ref(&other))
            .await
            .unwrap();
        s.settle("d", "run1", &[(other, Settlement::Delivered)])
            .await
            .unwrap();
        assert_eq!(s.ledger_totals("c").await.unwrap().delivered, 1);
        assert_eq!(s.ledger_totals("d").await.unwrap().delivered, 1);
        let b = s.ledger_breakdown("c").await.unwrap();
        assert_eq!(b.iter().map(|r| r.count).sum::<u64>(), 2);
        let o = s.outcomes_since("c", 0).await.unwrap();
        assert_eq!((o.delivered, o.failed), (1, 0));
        assert_eq!(s.outcomes_since("c", i64::MAX).await.unwrap().delivered, 0);
        let series = s.delivered_series("c", 0, 1000).await.unwrap();
        assert_eq!(series.iter().map(|(_, _, n)| n).sum::<u64>(), 1);
        assert_eq!(series[0].1, "vip/a");
        assert_eq!(s.campaigns().await.unwrap(), vec!["c".to_string()]);
    }

    pub(crate) async fn stage_figures_of_every_worker_add_up(s: &dyn Store) {
        let fig = |stage: &str, batches, traps| StageStats {
            stage: stage.into(),
            batches,
            failed: traps,
            traps,
            latency_ms: vec![batches, 0, 1],
            ..Default::default()
        };
        s.save_stage_stats("w1", &[fig("send", 5, 1), fig("segment", 2, 0)])
            .await
            .unwrap();
        s.save_stage_stats("w2", &[fig("send", 3, 0)])
            .await
            .unwrap();
        s.save_stage_stats("w1", &[fig("send", 6, 1), fig("segment", 2, 0)])
            .await
            .unwrap();
        let all = s.stage_stats().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].stage.as_str(), all[0].batches, all[0].traps),
            ("segment", 2, 0)
        );
        assert_eq!(
            (all[1].stage.as_str(), all[1].batches, all[1].traps),
            ("send", 9, 1)
        );
        assert_eq!(all[1].latency_ms, vec![9, 0, 2]);
    }

    pub(crate) async fn concurrency_slots_are_shared_and_leased(s: &dyn Store) {
        let lease = std::time::Duration::from_secs(60);
        let mut a = s.take_slots("p", 3, 2, "a", lease).await.unwrap();
        a.sort();
        assert_eq!(a, vec![0, 1]);
        assert_eq!(s.take_slots("p", 3, 2, "b", lease).await.unwrap(), vec![2]);
        assert!(
            s.take_slots("p", 3, 1, "c", lease)
                .await
                .unwrap()
                .is_empty(),
            "all taken"
        );
        assert_eq!(
            s.take_slots("q", 3, 1, "c", lease).await.unwrap(),
            vec![0],
            "keys do not share"
        );
        // Given back: free for another; a holder cannot give back another's.
        s.keep_slots("p", &[0, 2], "a", std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(s.take_slots("p", 3, 3, "c", lease).await.unwrap(), vec![0]);
        // A lease that runs out frees the slot, unless it is kept.
        let short = std::time::Duration::from_millis(200);
        assert_eq!(
            s.take_slots("r", 2, 2, "dead", short).await.unwrap().len(),
            2
        );
        s.keep_slots("r", &[1], "dead", lease).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            s.take_slots("r", 2, 2, "alive", lease).await.unwrap(),
            vec![0]
        );
    }

    pub(crate) async fn a_shared_rate_is_reserved_in_turn(s: &dyn Store) {
        let before = crate::sqlite::now_ms();
        let a = s.reserve("provider/x", 50, 100.0, 0).await.unwrap();
        let b = s.reserve("provider/x", 50, 100.0, 0).await.unwrap();
        let other = s.reserve("provider/y", 50, 100.0, 0).await.unwrap();
        assert!(a >= before && a <= before + 1_000, "the first goes now");
        assert!(
            b - a >= 499 && b - a <= 501,
            "the second waits for the first's 0.5 s: {}",
            b - a
        );
        assert!(other - before < 1_000, "keys do not share");
        // Turns unused for the last 2 s: a tolerance of 1 s takes back 1 s.
        let idle = s.reserve("provider/z", 10, 100.0, 0).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        let late = s.reserve("provider/z", 10, 100.0, 1_000).await.unwrap();
        let now = crate::sqlite::now_ms();
        assert!(
            late <= now - 900 && late >= now - 1_200,
            "a late turn starts up to the tolerance back: {} ms before now (first at {idle})",
            now - late
        );
        let next = s.reserve("provider/z", 10, 100.0, 1_000).await.unwrap();
        assert!(
            (next - late - 100).abs() <= 1,
            "and the rate goes on from there"
        );
    }
}
