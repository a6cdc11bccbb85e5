//! What each worker's stages did, for `/metrics`: batches, retries and
//! their causes, and a histogram of batch latency. Each worker saves its
//! own cumulative figures; readers add them up.

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets (ms); one more bucket for slower.
pub const BATCH_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    pub stage: String,
    /// Batches processed (each attempt counts).
    pub batches: u64,
    /// Attempts that failed and will be retried or dead-lettered.
    pub failed: u64,
    /// Of the failed: the stage component trapped, ran out of time, or out
    /// of memory.
    pub traps: u64,
    pub timeouts: u64,
    pub memory: u64,
    /// Counts per bucket of `BATCH_BOUNDS_MS`, plus one for slower.
    pub latency_ms: Vec<u64>,
}

impl StageStats {
    pub fn merge(&mut self, o: &StageStats) {
        self.batches += o.batches;
        self.failed += o.failed;
        self.traps += o.traps;
        self.timeouts += o.timeouts;
        self.memory += o.memory;
        if self.latency_ms.len() < o.latency_ms.len() {
            self.latency_ms.resize(o.latency_ms.len(), 0);
        }
        for (a, b) in self.latency_ms.iter_mut().zip(&o.latency_ms) {
            *a += b;
        }
    }
}

/// Adds up saved per-worker figures per stage, in stage-name order.
pub(crate) fn merge_stage_stats(rows: impl IntoIterator<Item = StageStats>) -> Vec<StageStats> {
    let mut by: std::collections::BTreeMap<String, StageStats> = Default::default();
    for r in rows {
        by.entry(r.stage.clone())
            .or_insert_with(|| StageStats {
                stage: r.stage.clone(),
                ..Default::default()
            })
            .merge(&r);
    }
    by.into_values().collect()
}
