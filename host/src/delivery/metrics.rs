//! Per-provider figures: attempts, outcomes, latency, breaker state. Each
//! process keeps its own, cumulative since it started, and saves them to the
//! store under its worker name; `squall status` adds up every worker's.
//! Cumulative rather than deltas so that a save repeated after an outage
//! counts nothing twice.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Outcome;

/// Upper bounds of the latency buckets, in milliseconds (the last bucket
/// is everything slower). Prometheus-style: fixed, so histograms from many
/// workers add up.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        })
    }
}

/// One provider's figures as one worker saw them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProviderStats {
    pub provider: String,
    pub kind: String,
    pub attempts: u64,
    pub delivered: u64,
    pub transient: u64,
    pub permanent: u64,
    /// Billing units beyond messages: SMS segments.
    pub units: u64,
    /// Counts per bucket of `LATENCY_BOUNDS_MS`, plus one for slower.
    pub latency_ms: Vec<u64>,
    pub breaker: BreakerState,
    /// Why the breaker is open (the failures that opened it).
    pub breaker_reason: Option<String>,
}

impl ProviderStats {
    /// Adds another worker's figures for the same provider. The breaker
    /// shown is the least healthy one: a manager wants to know that some
    /// worker cannot reach it.
    pub fn merge(&mut self, o: &ProviderStats) {
        self.attempts += o.attempts;
        self.delivered += o.delivered;
        self.transient += o.transient;
        self.permanent += o.permanent;
        self.units += o.units;
        if self.latency_ms.len() < o.latency_ms.len() {
            self.latency_ms.resize(o.latency_ms.len(), 0);
        }
        for (a, b) in self.latency_ms.iter_mut().zip(&o.latency_ms) {
            *a += b;
        }
        let rank = |s: BreakerState| match s {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        if rank(o.breaker) > rank(self.breaker) {
            self.breaker = o.breaker;
            self.breaker_reason = o.breaker_reason.clone();
        }
    }

    /// The latency under which `q` (0..1) of the attempts finished: the
    /// upper bound of the bucket that holds that rank.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_ms.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency_ms.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    LATENCY_BOUNDS_MS
                        .get(i)
                        .copied()
                        .unwrap_or(u64::MAX)
                        .min(60_000),
                );
            }
        }
        None
    }
}

/// The live counters behind `ProviderStats`.
pub struct ProviderMetrics {
    provider: String,
    kind: String,
    attempts: AtomicU64,
    delivered: AtomicU64,
    transient: AtomicU64,
    permanent: AtomicU64,
    units: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    breaker: Mutex<(BreakerState, Option<String>)>,
}

impl ProviderMetrics {
    pub fn new(provider: &str, kind: &str) -> ProviderMetrics {
        ProviderMetrics {
            provider: provider.to_string(),
            kind: kind.to_string(),
            attempts: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            transient: AtomicU64::new(0),
            permanent: AtomicU64::new(0),
            units: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            breaker: Mutex::new((BreakerState::Closed, None)),
        }
    }

    pub fn name(&self) -> &str {
        &self.provider
    }

    pub fn record(&self, outcome: &Outcome, took: Duration) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Delivered => &self.delivered,
            Outcome::Transient { .. } | Outcome::Unavailable(_) => &self.transient,
            Outcome::Permanent(_) | Outcome::HardBounce(_) => &self.permanent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_units(&self, n: u64) {
        self.units.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_breaker(&self, state: BreakerState, reason: Option<String>) {
        *self.breaker.lock().unwrap() = (state, reason);
    }

    pub fn snapshot(&self) -> ProviderStats {
        let (breaker, breaker_reason) = self.breaker.lock().unwrap().clone();
        ProviderStats {
            provider: self.provider.clone(),
            kind: self.kind.clone(),
            attempts: self.attempts.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            transient: self.transient.load(Ordering::Relaxed),
            permanent: self.permanent.load(Ordering::Relaxed),
            units: self.units.load(Ordering::Relaxed),
            latency_ms: self
                .latency
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect(),
            breaker,
            breaker_reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_two_workers_add_up_and_show_the_worst_breaker() {
        let a = ProviderMetrics::new("p", "smtp");
        a.record(&Outcome::Delivered, Duration::from_millis(3));
        a.record(&Outcome::transient("451"), Duration::from_millis(40));
        let b = ProviderMetrics::new("p", "smtp");
        b.record(&Outcome::Delivered, Duration::from_millis(3));
        b.set_breaker(BreakerState::Open, Some("refused".into()));
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        assert_eq!((s.attempts, s.delivered, s.transient), (3, 2, 1));
        assert_eq!(s.breaker, BreakerState::Open);
        assert_eq!(s.latency_quantile_ms(0.5), Some(5));
        assert_eq!(s.latency_quantile_ms(0.99), Some(50));
    }
}
