//! A/B winner selection: a test share of each segment gets every variant;
//! after `decide_after`, the variant with the best metric goes to the rest
//! if a two-proportion z-test says it is better than the runner-up at 95%
//! confidence (and every variant reached `min_sample`); otherwise the
//! configured fallback does. The decision and its numbers are kept.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    OpenRate,
    ClickRate,
    ConversionRate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AbPlan {
    pub test_share: f64,
    pub metric: Metric,
    pub decide_after_ms: i64,
    pub min_sample: u64,
    /// The variant the rest get when no winner is clear; default: each
    /// segment's first.
    pub fallback: Option<String>,
}

/// One variant's figures in the test share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub variant: String,
    pub sent: u64,
    /// Distinct messages with the metric's event.
    pub events: u64,
    pub rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub segment: String,
    pub winner: String,
    /// `significant`, or why the fallback applies.
    pub basis: String,
    pub metric: Metric,
    pub arms: Vec<Arm>,
    /// The z statistic of best against runner-up.
    pub z: f64,
    /// Campaign time (Unix ms).
    pub decided_at: i64,
}

/// 1.96: two-sided 95% for a standard normal.
const Z_95: f64 = 1.959_964;

impl AbPlan {
    /// Whether a recipient of a segment is in the test share (a pure
    /// function of campaign, segment and recipient: the same on every run).
    pub fn in_test(&self, campaign: &str, segment: &str, recipient: &str) -> bool {
        let u = squall_pipeline_core::ids::bucket(
            campaign,
            &format!("ab/{segment}"),
            recipient,
            1_000_000,
        );
        (u as f64) < self.test_share * 1_000_000.0
    }

    /// `fallback`: the segment's fallback variant.
    pub fn decide(&self, segment: &str, fallback: &str, mut arms: Vec<Arm>, now: i64) -> Decision {
        for a in &mut arms {
            a.rate = if a.sent > 0 {
                a.events as f64 / a.sent as f64
            } else {
                0.0
            };
        }
        arms.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(a.variant.cmp(&b.variant)));
        let mut decision = Decision {
            segment: segment.to_string(),
            winner: fallback.to_string(),
            basis: String::new(),
            metric: self.metric,
            arms: arms.clone(),
            z: 0.0,
            decided_at: now,
        };
        if arms.len() < 2 {
            decision.basis = "fallback: fewer than two variants were sent".into();
            return decision;
        }
        if let Some(small) = arms.iter().find(|a| a.sent < self.min_sample) {
            decision.basis = format!(
                "fallback: variant {} had {} of the {} messages min_sample asks",
                small.variant, small.sent, self.min_sample
            );
            return decision;
        }
        let (best, next) = (&arms[0], &arms[1]);
        let pooled = (best.events + next.events) as f64 / (best.sent + next.sent) as f64;
        let se =
            (pooled * (1.0 - pooled) * (1.0 / best.sent as f64 + 1.0 / next.sent as f64)).sqrt();
        let z = if se > 0.0 {
            (best.rate - next.rate) / se
        } else {
            0.0
        };
        decision.z = z;
        if z > Z_95 {
            decision.winner = best.variant.clone();
            decision.basis = "significant at 95%".into();
        } else {
            decision.basis = format!("fallback: no significant difference (z = {z:.2})");
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> AbPlan {
        AbPlan {
            test_share: 0.2,
            metric: Metric::OpenRate,
            decide_after_ms: 0,
            min_sample: 100,
            fallback: None,
        }
    }

    fn arm(v: &str, sent: u64, events: u64) -> Arm {
        Arm {
            variant: v.into(),
            sent,
            events,
            rate: 0.0,
        }
    }

    #[test]
    fn a_clear_winner_wins_and_a_tie_falls_back() {
        let d = plan().decide("vip", "a", vec![arm("a", 500, 50), arm("b", 500, 120)], 1);
        assert_eq!(
            (d.winner.as_str(), d.basis.as_str()),
            ("b", "significant at 95%")
        );
        assert!(d.z > 5.0, "{}", d.z);
        let tie = plan().decide("vip", "a", vec![arm("a", 500, 52), arm("b", 500, 55)], 1);
        assert_eq!(tie.winner, "a");
        assert!(
            tie.basis.contains("no significant difference"),
            "{}",
            tie.basis
        );
        let small = plan().decide("vip", "a", vec![arm("a", 50, 1), arm("b", 50, 40)], 1);
        assert_eq!(small.winner, "a");
        assert!(small.basis.contains("min_sample"), "{}", small.basis);
        let p = plan();
        let share = (0..10_000)
            .filter(|i| p.in_test("c", "vip", &format!("r{i}")))
            .count();
        assert!((1_900..2_100).contains(&share), "{share}");
    }
}
