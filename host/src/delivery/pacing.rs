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

pub struct Pacing {
    limiter: Option<DefaultDirectRateLimiter>,
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

    /// Waits until `n` messages may go at the configured rate, for
    /// transports that deliver a whole batch in one write (the outbox):
    /// the batch goes when its last message's token is due, so the rate
    /// holds over any second.
    pub async fn admit(&self, n: usize) {
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
        futures::stream::iter(paced)
            .buffered(self.concurrency)
            .collect()
            .await
    }
}
