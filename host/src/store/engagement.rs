//! What recipients and providers tell us after a send: opens, clicks,
//! unsubscribes, bounces, complaints, and the conversions a campaign is
//! judged by.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngagementKind {
    Open,
    Click,
    Unsubscribe,
    Bounce,
    Complaint,
    /// A provider confirmed delivery to the mailbox (SES `Delivery`).
    Delivery,
}

impl EngagementKind {
    pub const ALL: [EngagementKind; 6] = [
        EngagementKind::Open,
        EngagementKind::Click,
        EngagementKind::Unsubscribe,
        EngagementKind::Bounce,
        EngagementKind::Complaint,
        EngagementKind::Delivery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EngagementKind::Open => "open",
            EngagementKind::Click => "click",
            EngagementKind::Unsubscribe => "unsubscribe",
            EngagementKind::Bounce => "bounce",
            EngagementKind::Complaint => "complaint",
            EngagementKind::Delivery => "delivery",
        }
    }

    pub fn parse(s: &str) -> Option<EngagementKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which message an event is about: enough to count it by segment,
/// variant and wave without looking anything up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    pub campaign: String,
    pub message_id: String,
    pub recipient_id: String,
    pub segment: String,
    pub variant: String,
    pub wave: u32,
}

/// One event. Stored once per (message, kind, detail, machine): a second
/// open of one message by one kind of reader is a repeat, counted as a hit
/// of the first, not as another open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engagement {
    pub message: MessageRef,
    pub kind: EngagementKind,
    /// The URL of a click, the bounce type, and so on; part of the key.
    pub detail: String,
    /// Made by a machine (a mail privacy proxy's prefetch, a link scanner),
    /// not by a person: kept, but left out of rates by default.
    pub machine: bool,
    /// Unix milliseconds.
    pub at: i64,
}

/// Unique events of one kind for one (segment, variant, wave).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngagementCount {
    pub kind: EngagementKind,
    pub segment: String,
    pub variant: String,
    pub wave: u32,
    pub machine: bool,
    /// Distinct messages with at least one such event.
    pub messages: u64,
    /// Every hit, repeats included.
    pub hits: u64,
}

/// A business event (`POST /api/events`), attributed to the last message
/// of a campaign the recipient got before it, within the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// The client's idempotency key.
    pub event_id: String,
    pub kind: String,
    pub recipient_id: String,
    pub properties: serde_json::Value,
    /// Unix milliseconds.
    pub at: i64,
    pub attributed: Option<MessageRef>,
}

/// Conversions of one type for one (segment, variant, wave).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionCount {
    pub kind: String,
    pub segment: String,
    pub variant: String,
    pub wave: u32,
    pub events: u64,
    /// Distinct recipients who converted.
    pub recipients: u64,
}

/// A sent message, as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    pub campaign: String,
    pub recipient_id: String,
    /// `segment/variant`.
    pub message_key: String,
    pub message_id: String,
    pub state: String,
    /// Unix milliseconds of the last change.
    pub at: i64,
}

impl SentMessage {
    pub fn reference(&self) -> MessageRef {
        let (segment, variant) = self
            .message_key
            .split_once('/')
            .unwrap_or((self.message_key.as_str(), ""));
        MessageRef {
            campaign: self.campaign.clone(),
            message_id: self.message_id.clone(),
            recipient_id: self.recipient_id.clone(),
            segment: segment.to_string(),
            variant: variant.to_string(),
            wave: 0,
        }
    }
}

/// Ledger rows of one state for one `segment/variant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerBreakdown {
    pub message_key: String,
    pub state: String,
    pub count: u64,
}
