//! The batch envelope: what one queue message carries between stages.
//! Versioned, campaign-scoped, and split to fit the queue's size limit.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use squall_pipeline_core::Record;
use squall_pipeline_core::message::Outgoing;

pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    pub campaign: String,
    pub wave: u32,
    /// Stable id: the audience chunk it came from, plus `.0`/`.1` per split.
    /// A redelivered or re-produced batch has the same id.
    pub batch: String,
    /// Field names the records' values line up with (empty for the send stage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Send stage: the turns this batch took on shared rates (rate key →
    /// real Unix ms when the turn starts) before it was parked to wait for
    /// them, so that none is taken twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub turns: BTreeMap<String, i64>,
    pub items: Vec<T>,
}

/// Input of the personalise stage: a recipient and where the segmenter put them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub record: Record,
    pub segment: String,
    pub variant: String,
    /// Index of the campaign's `[[message]]`.
    pub message: u32,
    /// Outside the A/B test share: waits for the winner, whose message
    /// replaces this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holdout: bool,
}

pub type SegmentEnvelope = Envelope<Record>;
pub type PersonaliseEnvelope = Envelope<Placed>;
pub type SendEnvelope = Envelope<Outgoing>;

/// What any envelope says of itself, whatever its stage: for routing,
/// dead letters and listings, where the items do not matter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Head {
    pub campaign: String,
    pub batch: String,
    /// How many items (recipients or messages) it carries.
    #[serde(rename = "items", deserialize_with = "count_items")]
    pub recipients: usize,
}

fn count_items<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    Ok(Vec::<serde::de::IgnoredAny>::deserialize(d)?.len())
}

impl Head {
    /// `None` for a body that is not an envelope.
    pub fn peek(body: &[u8]) -> Option<Head> {
        serde_json::from_slice(body).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a Squall batch envelope: {0}")]
    Malformed(String),
    #[error("envelope version {0} is not supported (this squall reads version {ENVELOPE_VERSION})")]
    Version(u32),
}

impl<T: Serialize + DeserializeOwned> Envelope<T> {
    pub fn new(campaign: &str, batch: String, columns: Vec<String>, items: Vec<T>) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            campaign: campaign.to_string(),
            wave: 0,
            batch,
            columns,
            turns: BTreeMap::new(),
            items,
        }
    }

    pub fn decode(body: &[u8]) -> Result<Self, EnvelopeError> {
        // One parse on the hot path; the version is looked at on its own
        // only to explain a failure.
        match serde_json::from_slice::<Self>(body) {
            Ok(env) if env.v == ENVELOPE_VERSION => Ok(env),
            Ok(env) => Err(EnvelopeError::Version(env.v)),
            Err(e) => {
                #[derive(Deserialize)]
                struct Version {
                    v: u32,
                }
                match serde_json::from_slice::<Version>(body) {
                    Ok(Version { v }) if v != ENVELOPE_VERSION => Err(EnvelopeError::Version(v)),
                    _ => Err(EnvelopeError::Malformed(e.to_string())),
                }
            }
        }
    }

    /// Encodes into bodies of at most `max` bytes, halving the batch (ids
    /// `<batch>.0`, `<batch>.1`) until each part fits. A single item too large
    /// on its own is handed back to be dead-lettered.
    pub fn encode(self, max: usize) -> Encoded<T> {
        let mut out = Encoded {
            bodies: Vec::new(),
            oversized: Vec::new(),
        };
        self.encode_into(max, &mut out);
        out
    }

    fn encode_into(self, max: usize, out: &mut Encoded<T>) {
        let body = serde_json::to_vec(&self).expect("envelopes always serialise");
        if body.len() <= max {
            out.bodies.push(body);
            return;
        }
        let Envelope {
            v,
            campaign,
            wave,
            batch,
            columns,
            mut items,
            ..
        } = self;
        if items.len() <= 1 {
            out.oversized
                .extend(items.into_iter().map(|i| (batch.clone(), i, body.len())));
            return;
        }
        let tail = items.split_off(items.len() / 2);
        let part = |suffix: &str, items: Vec<T>| Envelope {
            v,
            campaign: campaign.clone(),
            wave,
            batch: format!("{batch}.{suffix}"),
            columns: columns.clone(),
            // A turn was taken for the whole: halves sent at once would
            // go twice as fast, so each takes a turn of its own.
            turns: BTreeMap::new(),
            items,
        };
        part("0", items).encode_into(max, out);
        part("1", tail).encode_into(max, out);
    }
}

pub struct Encoded<T> {
    pub bodies: Vec<Vec<u8>>,
    /// (batch id, item, encoded size) of items too large for any message.
    pub oversized: Vec<(String, T, usize)>,
}

#[cfg(test)]
mod tests {
    use squall_pipeline_core::Value;

    use super::*;

    fn records(n: usize, text_len: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                line: i as u64,
                id: i.to_string(),
                address: format!("{i}@x.test"),
                values: vec![
                    Some(Value::Text("x".repeat(text_len))),
                    None,
                    Some(Value::Number(1.5)),
                ],
            })
            .collect()
    }

    #[test]
    fn round_trips() {
        let env = Envelope::new(
            "c",
            "000001".into(),
            vec!["a".into(), "b".into(), "c".into()],
            records(3, 4),
        );
        let bodies = env.clone().encode(1 << 20).bodies;
        assert_eq!(bodies.len(), 1);
        assert_eq!(SegmentEnvelope::decode(&bodies[0]).unwrap(), env);
    }

    #[test]
    fn splits_to_fit_and_keeps_every_item() {
        let env = Envelope::new("c", "7".into(), vec![], records(100, 1000));
        let out = env.encode(20_000);
        assert!(out.bodies.len() > 4);
        assert!(out.bodies.iter().all(|b| b.len() <= 20_000));
        let decoded: Vec<SegmentEnvelope> = out
            .bodies
            .iter()
            .map(|b| Envelope::decode(b).unwrap())
            .collect();
        assert_eq!(decoded.iter().map(|e| e.items.len()).sum::<usize>(), 100);
        assert!(decoded.iter().all(|e| e.batch.starts_with("7.")));
        assert!(out.oversized.is_empty());
    }

    #[test]
    fn an_item_too_large_alone_is_handed_back() {
        let mut items = records(3, 10);
        items[1] = records(1, 50_000).remove(0);
        let out = Envelope::new("c", "1".into(), vec![], items).encode(10_000);
        assert_eq!(out.oversized.len(), 1);
        assert_eq!(
            out.bodies
                .iter()
                .map(|b| SegmentEnvelope::decode(b).unwrap().items.len())
                .sum::<usize>(),
            2
        );
    }

    #[test]
    fn the_head_of_any_envelope_can_be_read() {
        let body = Envelope::new("c", "0007".into(), vec![], records(3, 2))
            .encode(1 << 20)
            .bodies
            .remove(0);
        assert_eq!(
            Head::peek(&body),
            Some(Head {
                campaign: "c".into(),
                batch: "0007".into(),
                recipients: 3
            })
        );
        assert_eq!(Head::peek(b"garbage"), None);
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        assert!(matches!(
            SegmentEnvelope::decode(b"{\"v\":99}"),
            Err(EnvelopeError::Version(99))
        ));
        assert!(matches!(
            SegmentEnvelope::decode(b"\x00\x01"),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
