//! What this run did, counted as it happens (for progress and the summary's
//! per-run figures). Durable totals come from the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::StageStats;
use crate::store::figures::BATCH_BOUNDS_MS;

/// One stage's batches in this process, for `/metrics` (see `StageStats`).
#[derive(Debug, Default)]
pub struct StageMetrics {
    batches: AtomicU64,
    failed: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    memory: AtomicU64,
    latency: [AtomicU64; BATCH_BOUNDS_MS.len() + 1],
}

/// How an attempt at a batch ended, for the figures.
pub enum BatchEnd<'a> {
    Done,
    /// Failed, with the reason (a stage error names trap, time or memory).
    Failed(&'a str),
}

impl StageMetrics {
    pub fn record(&self, took: Duration, end: BatchEnd<'_>) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let i = BATCH_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BATCH_BOUNDS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        if let BatchEnd::Failed(reason) = end {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let cause = match crate::runtime::StageError::cause_of(reason) {
                Some("timeout") => Some(&self.timeouts),
                Some("memory") => Some(&self.memory),
                Some(_) => Some(&self.traps),
                None => None,
            };
            if let Some(c) = cause {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self, stage: &str) -> StageStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StageStats {
            stage: stage.to_string(),
            batches: get(&self.batches),
            failed: get(&self.failed),
            traps: get(&self.traps),
            timeouts: get(&self.timeouts),
            memory: get(&self.memory),
            latency_ms: self.latency.iter().map(get).collect(),
        }
    }
}

#[derive(Debug, Default)]
pub struct RunCounters {
    pub rows_read: AtomicU64,
    pub rejected: AtomicU64,
    pub segmented: AtomicU64,
    pub unsegmented: AtomicU64,
    pub rendered: AtomicU64,
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    /// Not sent: the address is on the suppression list.
    pub suppressed: AtomicU64,
    pub skipped_already_sent: AtomicU64,
    /// Not sent: cancelled while queued.
    pub cancelled: AtomicU64,
    /// Not sent: the frequency cap.
    pub capped: AtomicU64,
    /// Held by a pause (parked in the store until a resume).
    pub parked: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// CPU time spent inside each stage's Wasm calls, in microseconds.
    pub segment_busy_us: AtomicU64,
    pub personalise_busy_us: AtomicU64,
    pub send_busy_us: AtomicU64,
    /// Per stage: segment, personalise, send.
    pub stages: [StageMetrics; 3],
}

const STAGES: [&str; 3] = ["segment", "personalise", "send"];

impl RunCounters {
    pub fn stage(&self, name: &str) -> Option<&StageMetrics> {
        STAGES
            .iter()
            .position(|s| *s == name)
            .map(|i| &self.stages[i])
    }

    /// This process's figures for the stages that did anything.
    pub fn stage_stats(&self) -> Vec<StageStats> {
        STAGES
            .iter()
            .zip(&self.stages)
            .map(|(name, m)| m.snapshot(name))
            .filter(|s| s.batches > 0)
            .collect()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Recipients that reached an end this run: sent, failed, skipped,
    /// unsegmented, rejected or dead-lettered.
    pub fn finished(&self) -> u64 {
        [
            &self.sent,
            &self.failed,
            &self.suppressed,
            &self.skipped_already_sent,
            &self.cancelled,
            &self.capped,
            &self.unsegmented,
            &self.rejected,
            &self.dead_lettered,
        ]
        .iter()
        .map(|c| Self::get(c))
        .sum()
    }
}
