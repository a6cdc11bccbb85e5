//! Mid-campaign control: pause, resume and cancel a whole campaign, one
//! segment, or one variant, and the batches a pause holds.
//!
//! Controls live in the store so that every worker of a deployment sees
//! them within a refresh; paused batches are parked in the store (not
//! spun on the queue) until a resume lets a worker put them back.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlState {
    Paused,
    /// Final: what is still queued is drained without being sent.
    Cancelled,
}

impl ControlState {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlState::Paused => "paused",
            ControlState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ControlState> {
        match s {
            "paused" => Some(ControlState::Paused),
            "cancelled" => Some(ControlState::Cancelled),
            _ => None,
        }
    }
}

/// What a control applies to: the whole campaign, a segment, a variant of
/// every segment, or one segment's variant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Scope {
    pub fn campaign() -> Scope {
        Scope::default()
    }

    /// Whether a message of `segment/variant` falls under this scope.
    pub fn covers(&self, segment: &str, variant: &str) -> bool {
        self.segment.as_deref().is_none_or(|s| s == segment)
            && self.variant.as_deref().is_none_or(|v| v == variant)
    }

    /// Whether `other` lies within this scope (a resume of a segment lifts
    /// the pauses of its variants too).
    pub fn contains(&self, other: &Scope) -> bool {
        (self.segment.is_none() || self.segment == other.segment)
            && (self.variant.is_none() || self.variant == other.variant)
    }

    /// Stored form of a part: `""` means any.
    pub(crate) fn parts(&self) -> (String, String) {
        (
            self.segment.clone().unwrap_or_default(),
            self.variant.clone().unwrap_or_default(),
        )
    }

    pub(crate) fn from_parts(segment: String, variant: String) -> Scope {
        Scope {
            segment: (!segment.is_empty()).then_some(segment),
            variant: (!variant.is_empty()).then_some(variant),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.segment, &self.variant) {
            (None, None) => write!(f, "the whole campaign"),
            (Some(s), None) => write!(f, "segment `{s}`"),
            (None, Some(v)) => write!(f, "variant `{v}` of every segment"),
            (Some(s), Some(v)) => write!(f, "`{s}/{v}`"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Pause,
    Resume,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub scope: Scope,
    pub state: ControlState,
    /// Who or what set it (a command, a guardrail), for `squall status`.
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// What to do with a message, given a campaign's controls: cancelled wins
/// over paused, and either over running.
pub fn decide(controls: &[Control], segment: &str, variant: &str) -> Option<ControlState> {
    let mut paused = false;
    for c in controls {
        if c.scope.covers(segment, variant) {
            match c.state {
                ControlState::Cancelled => return Some(ControlState::Cancelled),
                ControlState::Paused => paused = true,
            }
        }
    }
    paused.then_some(ControlState::Paused)
}

/// A batch held in the store: by a pause until a resume, or by the
/// schedule until its messages are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub id: String,
    pub campaign: String,
    /// Campaign time (Unix ms) before which it stays parked; 0: not held
    /// by time.
    pub due_at: i64,
    /// The queue it goes back to.
    pub queue: String,
    /// The `segment/variant` keys of its messages.
    pub keys: Vec<String>,
    pub payload: Vec<u8>,
}

/// A parked batch without its payload: what deciding whether it may go
/// needs, so that looking over many held batches reads little.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedHead {
    pub id: String,
    pub campaign: String,
    pub due_at: i64,
    pub keys: Vec<String>,
}

impl Parked {
    pub fn head(&self) -> ParkedHead {
        ParkedHead {
            id: self.id.clone(),
            campaign: self.campaign.clone(),
            due_at: self.due_at,
            keys: self.keys.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(segment: Option<&str>, variant: Option<&str>, state: ControlState) -> Control {
        Control {
            scope: Scope {
                segment: segment.map(String::from),
                variant: variant.map(String::from),
            },
            state,
            reason: String::new(),
            at: 0,
        }
    }

    #[test]
    fn narrowest_scope_applies_and_cancel_wins() {
        let cs = [
            c(Some("vip"), None, ControlState::Paused),
            c(None, Some("b"), ControlState::Cancelled),
        ];
        assert_eq!(decide(&cs, "vip", "a"), Some(ControlState::Paused));
        assert_eq!(decide(&cs, "vip", "b"), Some(ControlState::Cancelled));
        assert_eq!(decide(&cs, "regulars", "a"), None);
        assert_eq!(decide(&cs, "regulars", "b"), Some(ControlState::Cancelled));
        assert!(Scope::campaign().contains(&cs[0].scope));
        assert!(!cs[0].scope.contains(&Scope::campaign()));
    }
}
