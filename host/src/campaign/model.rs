//! The campaign file as written (TOML). Unknown keys are errors: a typo in a
//! setting must not silently fall back to a default.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::audience::{FieldType, Format};
use crate::runtime::SandboxLimits;
pub use squall_pipeline_core::message::Channel;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignFile {
    pub campaign: CampaignSection,
    pub audience: AudienceSection,
    #[serde(default)]
    pub segment: Vec<SegmentSection>,
    #[serde(default)]
    pub message: Vec<MessageSection>,
    pub delivery: DeliverySection,
    #[serde(default)]
    pub stages: StagesSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub tracking: TrackingSection,
    #[serde(default)]
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub frequency: FrequencySection,
    #[serde(default)]
    pub guardrails: GuardrailsSection,
    pub ab: Option<Spanned<AbSection>>,
}

/// A/B winner selection for segments with several variants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbSection {
    /// Share of each segment that gets every variant (by weight).
    pub test_share: f64,
    /// `open_rate`, `click_rate` or `conversion_rate`.
    pub metric: crate::schedule::ab::Metric,
    /// When the rest get the winner, e.g. `"4h"` after the test starts.
    pub decide_after: String,
    /// Messages each variant needs before a winner may be declared.
    #[serde(default = "default_min_sample")]
    pub min_sample: u64,
    /// The variant the rest get when no winner is clear (default: each
    /// segment's first).
    pub fallback: Option<String>,
}

fn default_min_sample() -> u64 {
    500
}

/// How many messages one person may get across campaigns.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencySection {
    /// Overrides the deployment's (`squall.toml`).
    pub max_messages_per_recipient: Option<FrequencyCap>,
}

/// At most `count` messages delivered to a recipient per `per` (all
/// campaigns of the store together), e.g. `{ count = 3, per = "7d" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    pub count: u32,
    #[serde(deserialize_with = "crate::config::duration_text")]
    pub per: std::time::Duration,
}

/// When messages may go (see `schedule::Timing`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// RFC 3339: nothing is sent before it.
    pub start: Option<Spanned<String>>,
    /// Recipient-local hours when messages may go, e.g. `{ from = "12:00",
    /// to = "13:30" }`; a recipient outside it waits (in the store) for the
    /// next one.
    pub window: Option<Spanned<HoursSection>>,
    /// Recipient-local hours when nothing is ever sent, window or not.
    pub quiet_hours: Option<Spanned<HoursSection>>,
    /// Audience field holding each recipient's IANA time zone.
    pub timezone_field: Option<Spanned<String>>,
    /// Zone for recipients without a valid one (default UTC).
    pub timezone: Option<Spanned<String>>,
    /// Spread this campaign's sends evenly at this rate (all workers
    /// together) instead of as fast as its providers allow.
    pub rate_per_second: Option<f64>,
    /// Cumulative shares of the audience sent in turn, e.g. `[0.01, 0.05,
    /// 0.25, 1.0]`; each wave a reproducible random sample.
    pub waves: Option<Spanned<Vec<f64>>>,
    /// Time between the start of one wave and the next, e.g. `"30m"`.
    pub wave_pause: Option<Spanned<String>>,
}

/// Rates that pause the campaign when crossed (each a fraction of the
/// messages sent), checked at every wave boundary and over a sliding
/// window. A paused campaign resumes only on command.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsSection {
    pub max_bounce_rate: Option<f64>,
    pub max_failure_rate: Option<f64>,
    pub max_complaint_rate: Option<f64>,
    pub max_unsubscribe_rate: Option<f64>,
    /// Messages sent before a rate is judged at all (default 50).
    pub min_sample: Option<u64>,
    /// The sliding window (default `"1h"`).
    pub window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoursSection {
    pub from: String,
    pub to: String,
}

/// Links in messages that report back to `squall serve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSection {
    /// Where `squall serve` is reachable by recipients; every tracking and
    /// unsubscribe link starts with it.
    #[serde(default = "default_tracking_base")]
    pub base_url: Spanned<String>,
    /// A 1×1 pixel in HTML bodies.
    #[serde(default)]
    pub track_opens: bool,
    /// Links in text and HTML bodies go through a signed redirect.
    #[serde(default)]
    pub track_clicks: bool,
}

impl Default for TrackingSection {
    fn default() -> Self {
        TrackingSection {
            base_url: default_tracking_base(),
            track_opens: false,
            track_clicks: false,
        }
    }
}

fn default_tracking_base() -> Spanned<String> {
    Spanned::new(0..0, "http://127.0.0.1:8080".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSection {
    pub id: Spanned<String>,
    pub channel: Channel,
    /// The conversion event this campaign is judged by.
    pub goal: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceSection {
    /// CSV or JSONL, relative to the campaign file; or `postgres`, the rows
    /// of `query` in the database named by `url_env`.
    pub source: Spanned<String>,
    /// `source = "postgres"`: the SQL query whose rows are the audience.
    pub query: Option<Spanned<String>>,
    /// `source = "postgres"`: the environment variable holding the database
    /// URL, so that credentials never sit in a campaign file.
    pub url_env: Option<Spanned<String>>,
    /// Defaults from the extension: `.jsonl`/`.ndjson` → jsonl, else csv.
    pub format: Option<Format>,
    /// Column holding the recipient's unique id.
    #[serde(default = "default_id_field")]
    pub id_field: Spanned<String>,
    /// Column holding the address; defaults by channel: `email`, `phone`, or
    /// the id for webhooks.
    pub address_field: Option<Spanned<String>>,
    /// Explicit types for fields whose values must not be inferred (e.g. a
    /// zip code `"01234"` that must stay text), and fields a JSONL audience
    /// carries beyond its first lines.
    #[serde(default)]
    pub fields: BTreeMap<String, Spanned<FieldType>>,
    /// A field that must be `true` for a recipient to get anything on this
    /// campaign's channel (e.g. `sms_opt_in`); others are skipped and
    /// counted as `no_consent`.
    pub consent_field: Option<Spanned<String>>,
}

fn default_id_field() -> Spanned<String> {
    Spanned::new(0..0, "id".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSection {
    pub name: Spanned<String>,
    pub rule: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSection {
    pub segment: Spanned<String>,
    #[serde(default = "default_variant")]
    pub variant: Spanned<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub subject: Option<Spanned<String>>,
    pub text: Spanned<String>,
    pub html: Option<Spanned<String>>,
}

fn default_variant() -> Spanned<String> {
    Spanned::new(0..0, "a".to_string())
}
fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// `outbox` (default), `smtp://host:port`, or `null` (discard; benchmarks).
    #[serde(default = "default_transport")]
    pub transport: Spanned<String>,
    /// Instead of `transport`: providers defined in `squall.toml`, in order
    /// of preference; a message fails over to the next when one is down.
    pub providers: Option<Spanned<Vec<String>>>,
    /// A custom sender component (the same as `[stages] sender`): it turns
    /// each message into a request the providers above carry.
    pub plugin: Option<Spanned<String>>,
    pub from: Spanned<String>,
    pub reply_to: Option<String>,
    pub unsubscribe_mailto: Option<String>,
    /// Target of SMS and webhook requests: a URL, or a path resolved
    /// against the provider's endpoint. Default: the provider's endpoint.
    pub endpoint: Option<String>,
    /// Parallel SMTP connections (pooled).
    #[serde(default = "default_connections")]
    pub connections: u32,
}

fn default_transport() -> Spanned<String> {
    Spanned::new(0..0, "outbox".to_string())
}
fn default_connections() -> u32 {
    8
}

/// Custom stage components (plugins), relative to the campaign file. Each
/// must implement its stage's WIT world.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagesSection {
    pub segmenter: Option<Spanned<String>>,
    pub personaliser: Option<Spanned<String>>,
    pub sender: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Recipients per batch: per queue message and per Wasm call.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Attempts at a batch before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Linear memory one stage instance may use.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Time one stage call (one batch) may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl LimitsSection {
    pub fn sandbox(&self) -> SandboxLimits {
        SandboxLimits {
            memory_mb: self.memory_mb,
            timeout_ms: self.timeout_ms,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            batch_size: default_batch_size(),
            max_attempts: default_max_attempts(),
            memory_mb: default_memory_mb(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_memory_mb() -> u32 {
    SandboxLimits::default().memory_mb
}
fn default_timeout_ms() -> u64 {
    SandboxLimits::default().timeout_ms
}

fn default_batch_size() -> u32 {
    500
}
fn default_max_attempts() -> u32 {
    3
}
