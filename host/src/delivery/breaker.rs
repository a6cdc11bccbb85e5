//! A circuit breaker per provider. Closed: everything goes through, and the
//! outcomes of a sliding window are counted; when enough of them failed the
//! breaker opens and traffic moves to the next provider. After a cool-down
//! one probe is let through (half-open): its success closes the breaker,
//! its failure opens it again.
//!
//! Hand-written: the breaker crates on crates.io (`failsafe`, `circuitbreaker-rs`)
//! wrap a call in a future and decide per call, while here one decision
//! covers a batch and the state must be shown in `squall status`; the logic
//! is these sixty lines.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::metrics::BreakerState;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Share of failed attempts in the window that opens the breaker.
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// Fewer attempts than this in the window never open it.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_window", with = "super::provider::duration")]
    pub window: Duration,
    /// How long it stays open before a probe is let through.
    #[serde(default = "default_cooldown", with = "super::provider::duration")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: default_failure_rate(),
            min_requests: default_min_requests(),
            window: default_window(),
            cooldown: default_cooldown(),
        }
    }
}

fn default_failure_rate() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    10
}
fn default_window() -> Duration {
    Duration::from_secs(30)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(15)
}

/// What the breaker lets through now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// Closed: send everything.
    Pass,
    /// Half-open: send one message; its outcome decides.
    Probe,
    /// Open: send nothing; the reason the breaker opened.
    Refuse(String),
}

enum State {
    Closed { window: VecDeque<(Instant, bool)> },
    Open { until: Instant, reason: String },
    HalfOpen { probing: bool, reason: String },
}

pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State::Closed {
                window: VecDeque::new(),
            }),
        }
    }

    pub fn permit(&self) -> Permit {
        let mut s = self.state.lock().unwrap();
        match &mut *s {
            State::Closed { .. } => Permit::Pass,
            State::Open { until, reason } if Instant::now() >= *until => {
                *s = State::HalfOpen {
                    probing: true,
                    reason: reason.clone(),
                };
                Permit::Probe
            }
            State::Open { reason, .. } => Permit::Refuse(reason.clone()),
            State::HalfOpen { probing, reason } => {
                if *probing {
                    Permit::Refuse(reason.clone())
                } else {
                    *probing = true;
                    Permit::Probe
                }
            }
        }
    }

    /// Records one attempt's outcome; `failure` is the reason if it failed
    /// in a way that is the provider's fault.
    pub fn record(&self, failure: Option<&str>) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        match (&mut *s, failure) {
            (State::Closed { window }, _) => {
                window.push_back((now, failure.is_none()));
                while window
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > self.config.window)
                {
                    window.pop_front();
                }
                let failed = window.iter().filter(|(_, ok)| !ok).count();
                if let Some(reason) = failure
                    && window.len() >= self.config.min_requests as usize
                    && failed as f64 >= self.config.failure_rate * window.len() as f64
                {
                    *s = State::Open {
                        until: now + self.config.cooldown,
                        reason: format!(
                            "{failed} of the last {} attempts failed, e.g.: {reason}",
                            window.len()
                        ),
                    };
                }
            }
            (State::HalfOpen { .. }, None) => {
                *s = State::Closed {
                    window: VecDeque::new(),
                }
            }
            (State::HalfOpen { .. }, Some(reason)) => {
                *s = State::Open {
                    until: now + self.config.cooldown,
                    reason: format!("the probe after the cool-down failed too: {reason}"),
                }
            }
            // Stragglers that were in flight when the breaker opened.
            (State::Open { .. }, _) => {}
        }
    }

    pub fn state(&self) -> (BreakerState, Option<String>) {
        match &*self.state.lock().unwrap() {
            State::Closed { .. } => (BreakerState::Closed, None),
            State::Open { reason, .. } => (BreakerState::Open, Some(reason.clone())),
            State::HalfOpen { reason, .. } => (BreakerState::HalfOpen, Some(reason.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker::new(BreakerConfig {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(60),
            cooldown: Duration::from_millis(cooldown_ms),
        })
    }

    #[test]
    fn opens_on_the_failure_rate_and_not_before_the_minimum() {
        let b = breaker(10_000);
        b.record(Some("refused"));
        b.record(Some("refused"));
        b.record(Some("refused"));
        assert_eq!(b.permit(), Permit::Pass, "three attempts are too few");
        b.record(None);
        b.record(Some("refused"));
        assert!(matches!(b.permit(), Permit::Refuse(r) if r.contains("4 of the last 5")));
    }

    #[test]
    fn a_probe_after_the_cool_down_closes_or_reopens_it() {
        let b = breaker(20);
        for _ in 0..4 {
            b.record(Some("down"));
        }
        assert!(matches!(b.permit(), Permit::Refuse(_)));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.permit(), Permit::Probe);
        assert!(
            matches!(b.permit(), Permit::Refuse(_)),
            "one probe at a time"
        );
        b.record(Some("still down"));
        assert_eq!(b.state().0, BreakerState::Open);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.permit(), Permit::Probe);
        b.record(None);
        assert_eq!(b.permit(), Permit::Pass);
        assert_eq!(b.state().0, BreakerState::Closed);
    }
}
