//! What this run did, counted as it happens (for progress and the summary's
//! per-run figures). Durable totals come from the store.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Held by a pause (parked in the store until a resume).
    pub parked: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// CPU time spent inside each stage's Wasm calls, in microseconds.
    pub segment_busy_us: AtomicU64,
    pub personalise_busy_us: AtomicU64,
    pub send_busy_us: AtomicU64,
}

impl RunCounters {
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
            &self.unsegmented,
            &self.rejected,
            &self.dead_lettered,
        ]
        .iter()
        .map(|c| Self::get(c))
        .sum()
    }
}
