//! Failover across a campaign's providers, in its order of preference.
//!
//! Each message goes to the first provider whose circuit breaker lets it
//! through. A transient failure is retried on the same provider with
//! exponential backoff and full jitter (at least the provider's
//! `Retry-After`), up to its `attempts`; what still fails, or what a
//! breaker that opened meanwhile refuses, moves to the next provider. A
//! permanent failure or a hard bounce ends the message's way at once.
//!
//! What no provider took comes back `Transient` (retried through the queue,
//! dead-lettered after `limits.max_attempts` with the last reason), or
//! `Unavailable` when every breaker is open: the batch then waits in the
//! queue, not counted as an attempt, until a probe finds a provider back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::breaker::Permit;
use super::metrics::BreakerState;
use super::provider::Provider;
use super::{Dispatch, Outcome, Transport};

pub struct ProviderChain {
    providers: Vec<Arc<Provider>>,
}

impl ProviderChain {
    pub fn new(providers: Vec<Arc<Provider>>) -> ProviderChain {
        assert!(!providers.is_empty(), "a chain has at least one provider");
        ProviderChain { providers }
    }

    /// One attempt at `batch[i]` for each `i` in `pending`, outcomes in order.
    async fn attempt(&self, p: &Provider, batch: &[Dispatch], pending: &[usize]) -> Vec<Outcome> {
        if !p.transport.paced() {
            p.pacing.admit(pending.len()).await;
        }
        let started = Instant::now();
        let outcomes = if pending.len() == batch.len() {
            p.transport.deliver(batch).await
        } else {
            // Retries and failovers are the exception: cloning them is fine.
            let subset: Vec<Dispatch> = pending.iter().map(|i| batch[*i].clone()).collect();
            p.transport.deliver(&subset).await
        };
        if !p.transport.paced() {
            let each = started.elapsed() / outcomes.len().max(1) as u32;
            for o in &outcomes {
                p.metrics.record(o, each);
            }
        }
        for o in &outcomes {
            p.breaker.record(match o {
                Outcome::Transient { reason, .. } | Outcome::Unavailable(reason) => {
                    Some(reason.as_str())
                }
                _ => None,
            });
        }
        let (state, reason) = p.breaker.state();
        p.metrics.set_breaker(state, reason);
        outcomes
    }

    /// Sends what `pending` holds through one provider; returns what is
    /// still pending after it. `tried` is set once anything was attempted.
    async fn through(
        &self,
        p: &Provider,
        batch: &[Dispatch],
        mut pending: Vec<usize>,
        done: &mut [Option<Outcome>],
        last: &mut Option<Outcome>,
        tried: &mut bool,
    ) -> Vec<usize> {
        let mut attempt = 0;
        while !pending.is_empty() && attempt < p.attempts {
            match p.breaker.permit() {
                Permit::Pass => {}
                Permit::Probe => {
                    // One message finds out whether the provider is back. A
                    // failed probe is no attempt at the batch: it waits.
                    let (rest, _) = self
                        .through_once(p, batch, vec![pending[0]], done, last)
                        .await;
                    if !rest.is_empty() {
                        break;
                    }
                    tracing::info!(
                        provider = p.name,
                        "provider is back: its probe was delivered"
                    );
                    *tried = true;
                    pending.remove(0);
                    continue;
                }
                Permit::Refuse(reason) => {
                    if last.is_none() {
                        *last = Some(Outcome::Unavailable(format!(
                            "provider `{}` is off (circuit open): {reason}",
                            p.name
                        )));
                    }
                    break;
                }
            }
            *tried = true;
            attempt += 1;
            let hinted;
            (pending, hinted) = self.through_once(p, batch, pending, done, last).await;
            if pending.is_empty() || attempt == p.attempts {
                break;
            }
            let backoff = Duration::from_millis(250u64 << (attempt - 1).min(8))
                .mul_f64(rand::random::<f64>());
            let wait = hinted.max(backoff);
            if wait > p.max_retry_wait {
                // The provider asks for longer than a batch should be held:
                // on to the next provider, or back to the queue.
                break;
            }
            tokio::time::sleep(wait).await;
        }
        pending
    }

    /// One attempt at the pending messages: what is still pending, and the
    /// longest `Retry-After` any of their answers asked for (a retry of
    /// the batch must wait for the slowest, not the last, to allow it).
    async fn through_once(
        &self,
        p: &Provider,
        batch: &[Dispatch],
        pending: Vec<usize>,
        done: &mut [Option<Outcome>],
        last: &mut Option<Outcome>,
    ) -> (Vec<usize>, Duration) {
        let outcomes = self.attempt(p, batch, &pending).await;
        let mut rest = Vec::new();
        let mut hinted = Duration::ZERO;
        for (i, o) in pending.into_iter().zip(outcomes) {
            match o {
                Outcome::Transient {
                    reason,
                    retry_after,
                } => {
                    hinted = hinted.max(retry_after.unwrap_or_default());
                    *last = Some(Outcome::Transient {
                        reason: format!("via `{}`: {reason}", p.name),
                        retry_after,
                    });
                    rest.push(i);
                }
                Outcome::Unavailable(reason) => {
                    *last = Some(Outcome::Unavailable(format!("via `{}`: {reason}", p.name)));
                    rest.push(i);
                }
                final_outcome => done[i] = Some(final_outcome),
            }
        }
        (rest, hinted)
    }
}

#[async_trait]
impl Transport for ProviderChain {
    fn name(&self) -> &'static str {
        "providers"
    }

    async fn deliver(&self, batch: &[Dispatch]) -> Vec<Outcome> {
        let mut done: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        // The failure that kept the pending ones from going, for the record.
        let mut last: Option<Outcome> = None;
        let mut tried = false;
        for p in &self.providers {
            if pending.is_empty() {
                break;
            }
            pending = self
                .through(p, batch, pending, &mut done, &mut last, &mut tried)
                .await;
        }
        // Every breaker open (some perhaps just now, by this batch's own
        // failures): the providers are down, not the messages at fault. The
        // batch waits without spending an attempt, so an outage of any
        // length dead-letters nothing.
        let all_down = self
            .providers
            .iter()
            .all(|p| p.breaker.state().0 != BreakerState::Closed);
        let leftover = match last {
            Some(Outcome::Transient { reason, .. }) if !tried || all_down => {
                Outcome::Unavailable(reason)
            }
            Some(o) => o,
            None => Outcome::Unavailable("no provider is available".into()),
        };
        done.into_iter()
            .map(|o| o.unwrap_or_else(|| leftover.clone()))
            .collect()
    }

    async fn reconcile(&self, ids: &HashSet<String>) -> Option<HashSet<String>> {
        // Only a chain whose every provider can tell can settle a claim.
        let mut found = HashSet::new();
        for p in &self.providers {
            found.extend(p.transport.reconcile(ids).await?);
        }
        Some(found)
    }
}
