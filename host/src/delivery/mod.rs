//! Executing delivery requests. The sender stage decides *what* to send;
//! a transport sends it and classifies the outcome.

pub mod breaker;
pub mod chain;
pub mod dkim;
pub mod http;
pub mod metrics;
pub mod null;
pub mod outbox;
pub mod outcome;
pub mod pacing;
pub mod provider;
pub mod smtp;

use std::collections::HashSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use squall_pipeline_core::message::{Channel, DeliveryRequest};

pub use outcome::Outcome;

use crate::store::LedgerKey;

/// What the outbox records of a message, and what tests read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub campaign: String,
    pub message_id: String,
    pub recipient_id: String,
    pub to: String,
    pub channel: Channel,
    pub segment: String,
    pub variant: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// The signed one-click unsubscribe link (List-Unsubscribe).
    #[serde(default)]
    pub unsubscribe_url: String,
    /// When it was handed to the transport, campaign time (Unix ms).
    #[serde(default)]
    pub sent_at: i64,
    /// SMS only: what the text costs (GSM-7 or UCS-2, and how many parts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_segments: Option<squall_pipeline_core::sms::Segments>,
}

/// One message ready to go: its ledger identity, its content, and the
/// provider request the sender stage built for it.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub key: LedgerKey,
    pub record: OutboxRecord,
    pub request: DeliveryRequest,
}

#[async_trait]
pub trait Transport: Send + Sync {
    fn name(&self) -> &'static str;

    /// Whether the transport paces and times each attempt itself (network
    /// transports do, through `pacing::Pacing`); the provider chain times
    /// the others per batch.
    fn paced(&self) -> bool {
        false
    }

    /// One outcome per dispatch, in order.
    async fn deliver(&self, batch: &[Dispatch]) -> Vec<Outcome>;

    /// Of these message ids, which surely were delivered; `None` when the
    /// transport cannot know (SMTP: the server may have accepted a message
    /// whose reply never arrived). Used to settle claims a crash left open.
    async fn reconcile(&self, message_ids: &HashSet<String>) -> Option<HashSet<String>>;
}
