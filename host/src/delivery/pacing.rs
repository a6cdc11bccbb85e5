//! How fast and how wide one provider is driven: a token bucket (governor)
//! spreads attempts evenly at the configured rate, a semaphore caps the
//! attempts in flight, and each attempt is timed into the provider's
//! metrics. Shared by every batch and campaign of the process that uses
//! the provider, so campaigns share its limits.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use futures::StreamExt;

use super::Outcome;
use super::metrics::ProviderMetrics;

/// A provider rate shared with the other processes of a deployment (the
/// pipeline coordinates it through the store). Waits until `n` sends of
/// `key` may start at `rate_per_second` across all of them.
#[async_trait::async_trait]
pub trait SharedRate: Send + Sync {
    async fn wait_turn(&self, key: &str, n: usize, rate_per_second: f64);
}

/// A provider's concurrency cap shared with the other processes of a
/// deployment (the pipeline keeps it in the store).
#[async_trait::async_trait]
pub trait SharedSlots: Send + Sync {
    /// Waits until at least one of the `limit` slots of `key` is free and
    /// takes up to `want`; they are held (the lease kept alive) until the
    /// returned hold is given back.
    async fn hold(&self, key: &str, limit: usize, want: usize) -> Box<dyn SlotHold>;
}

#[async_trait::async_trait]
pub trait SlotHold: Send {
    /// Slots held: how many attempts may be in flight.
    fn width(&self) -> usize;
    async fn give_back(self: Box<Self>);
}

pub struct Pacing {
    limiter: Option<DefaultDirectRateLimiter>,
    rate: Option<f64>,
    /// Set when the deployment shares this provider's rate across processes.
    shared: std::sync::OnceLock<(Arc<dyn SharedRate>, String)>,
    /// Set when the deployment shares this provider's concurrency cap.
    slots: std::sync::OnceLock<(Arc<dyn SharedSlots>, String)>,
    permits: Semaphore,
    pub concurrency: usize,
    pub metrics: Arc<ProviderMetrics>,
}

impl Pacing {
    /// `rate_per_second`: `None` is unlimited. The bucket holds one
    /// second's worth (at least one token), so a provider's limit is kept
    /// over any second, not only on average.
    pub fn new(
        rate_per_second: Option<f64>,
        concurrency: u32,
        metrics: Arc<ProviderMetrics>,
    ) -> Pacing {
        let limiter = rate_per_second.filter(|r| *r > 0.0).map(|rate| {
            let period = Duration::from_secs_f64(1.0 / rate);
            let burst = NonZeroU32::new(rate.floor().max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)
                .expect("a positive rate has a non-zero period")
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        let concurrency = concurrency.max(1) as usize;
        Pacing {
            limiter,
            rate: rate_per_second.filter(|r| *r > 0.0),
            shared: std::sync::OnceLock::new(),
            slots: std::sync::OnceLock::new(),
            permits: Semaphore::new(concurrency),
            concurrency,
            metrics,
        }
    }

    /// Runs one attempt when the rate and the concurrency cap allow it.
    pub async fn attempt<F: Future<Output = Outcome>>(&self, attempt: F) -> Outcome {
        let _permit = self.permits.acquire().await.expect("never closed");
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        let started = Instant::now();
        let outcome = attempt.await;
        self.metrics.record(&outcome, started.elapsed());
        outcome
    }

    /// Shares the rate with the deployment's other processes under `key`:
    /// each batch first takes its turn there, then is spread at the rate
    /// here. Without a rate there is nothing to share.
    pub fn share(&self, shared: Arc<dyn SharedRate>, key: String) {
        let _ = self.shared.set((shared, key));
    }

    /// Shares the concurrency cap with the deployment's other processes
    /// under `key`: a batch sends only as wide as the slots it holds there.
    pub fn share_slots(&self, slots: Arc<dyn SharedSlots>, key: String) {
        let _ = self.slots.set((slots, key));
    }

    async fn turn(&self, n: usize) {
        if let (Some(rate), Some((shared, key))) = (self.rate, self.shared.get())
            && n > 0
        {
            shared.wait_turn(key, n, rate).await;
        }
    }

    /// Waits until `n` messages may go at the configured rate, for
    /// transports that deliver a whole batch in one write (the outbox):
    /// the batch goes when its last message's token is due, so the rate
    /// holds over any second.
    pub async fn admit(&self, n: usize) {
        self.turn(n).await;
        if let Some(l) = &self.limiter {
            for _ in 0..n {
                l.until_ready().await;
            }
        }
    }

    /// Runs the attempts, paced, at most `concurrency` at once; outcomes
    /// in the order given.
    pub async fn each<F>(&self, attempts: impl Iterator<Item = F>) -> Vec<Outcome>
    where
        F: Future<Output = Outcome>,
    {
        let paced: Vec<_> = attempts.map(|a| self.attempt(a)).collect();
        if paced.is_empty() {
            return Vec::new();
        }
        self.turn(paced.len()).await;
        let Some((slots, key)) = self.slots.get() else {
            return futures::stream::iter(paced)
                .buffered(self.concurrency)
                .collect()
                .await;
        };
        let hold = slots
            .hold(key, self.concurrency, paced.len().min(self.concurrency))
            .await;
        let outcomes = futures::stream::iter(paced)
            .buffered(hold.width().max(1))
            .collect()
            .await;
        hold.give_back().await;
        outcomes
    }
}
