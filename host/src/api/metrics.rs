//! `GET /metrics` in the Prometheus text exposition format (0.0.4).
//!
//! The figures are the deployment's, read from the store and the queues at
//! scrape time (every worker saves its own there), so any `squall serve`
//! behind a load balancer gives the same answer. Written out here rather
//! than through `prometheus-client`, whose metric types own their values
//! and cannot take histograms already bucketed by many workers.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::config::{Role, Stage};
use crate::delivery::metrics::{BreakerState, LATENCY_BOUNDS_MS};
use crate::store::figures::BATCH_BOUNDS_MS;

/// This server's own figures.
#[derive(Default)]
pub struct ServerMetrics {
    /// Tracking events answered but not stored (the store failed).
    pub lost_events: AtomicU64,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }
}

pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.auth.require(&headers, Role::Analyst)?;
    let store = &state.backends.store;
    let queue = &state.backends.queue;
    let mut o = Out(String::new());

    o.family(
        "squall_messages_total",
        "counter",
        "Recipients each stage finished with, by campaign and outcome.",
    );
    let campaigns = store.campaigns().await?;
    let mut tracking = Vec::new();
    for c in &campaigns {
        let seg = store.stage_totals(c, "segment").await?;
        o.sample(
            "squall_messages_total",
            &[
                ("campaign", c),
                ("stage", "segment"),
                ("outcome", "segmented"),
            ],
            seg.recipients - seg.unsegmented.min(seg.recipients),
        );
        o.sample(
            "squall_messages_total",
            &[
                ("campaign", c),
                ("stage", "segment"),
                ("outcome", "unsegmented"),
            ],
            seg.unsegmented,
        );
        let per = store.stage_totals(c, "personalise").await?;
        o.sample(
            "squall_messages_total",
            &[
                ("campaign", c),
                ("stage", "personalise"),
                ("outcome", "rendered"),
            ],
            per.recipients,
        );
        let l = store.ledger_totals(c).await?;
        for (outcome, n) in [
            ("delivered", l.delivered),
            ("failed", l.failed),
            ("suppressed", l.suppressed),
            ("in_doubt", l.in_doubt),
            ("cancelled", l.cancelled),
        ] {
            o.sample(
                "squall_messages_total",
                &[("campaign", c), ("stage", "send"), ("outcome", outcome)],
                n,
            );
        }
        for d in store.dead_letters(c).await? {
            tracking.push((c.clone(), d.stage, d.recipients, d.reason));
        }
    }
    o.family(
        "squall_dead_lettered_total",
        "counter",
        "Recipients dead-lettered, by campaign, stage and cause (trap, timeout, memory, other).",
    );
    let mut dead: std::collections::BTreeMap<(String, String, &str), u64> = Default::default();
    for (c, stage, n, reason) in &tracking {
        *dead
            .entry((c.clone(), stage.clone(), cause(reason)))
            .or_default() += n;
    }
    for ((c, stage, cause), n) in &dead {
        o.sample(
            "squall_dead_lettered_total",
            &[("campaign", c), ("stage", stage), ("cause", cause)],
            n,
        );
    }
    o.family(
        "squall_plugin_traps_total",
        "counter",
        "Recipients of batches a stage component failed on for good (trap, deadline or memory limit).",
    );
    for ((c, stage, cause), n) in &dead {
        if *cause != "other" {
            o.sample(
                "squall_plugin_traps_total",
                &[("campaign", c), ("stage", stage), ("cause", cause)],
                n,
            );
        }
    }

    let stages = store.stage_stats().await?;
    o.family(
        "squall_batches_total",
        "counter",
        "Attempts at batches per stage, by result (every worker of the deployment).",
    );
    for st in &stages {
        let ok = st.batches - st.failed.min(st.batches);
        o.sample(
            "squall_batches_total",
            &[("stage", &st.stage), ("result", "ok")],
            ok,
        );
        o.sample(
            "squall_batches_total",
            &[("stage", &st.stage), ("result", "failed")],
            st.failed,
        );
    }
    o.family(
        "squall_stage_failures_total",
        "counter",
        "Failed batch attempts by cause: the component trapped, hit its deadline or its memory limit.",
    );
    for st in &stages {
        for (cause, n) in [
            ("trap", st.traps),
            ("timeout", st.timeouts),
            ("memory", st.memory),
        ] {
            o.sample(
                "squall_stage_failures_total",
                &[("stage", &st.stage), ("cause", cause)],
                n,
            );
        }
    }
    o.family(
        "squall_batch_duration_seconds",
        "histogram",
        "Time to process one batch, per stage.",
    );
    for st in &stages {
        histogram(
            &mut o,
            "squall_batch_duration_seconds",
            ("stage", &st.stage),
            &st.latency_ms,
            &BATCH_BOUNDS_MS,
        );
    }

    o.family(
        "squall_queue_depth",
        "gauge",
        "Batches in each stage's queue, by state.",
    );
    for stage in Stage::ALL {
        let d = queue
            .depth(stage.name())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let dl = queue
            .dead_letter_depth(stage.name())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        o.sample(
            "squall_queue_depth",
            &[("queue", stage.name()), ("state", "visible")],
            d.visible,
        );
        o.sample(
            "squall_queue_depth",
            &[("queue", stage.name()), ("state", "in_flight")],
            d.in_flight,
        );
        o.sample(
            "squall_queue_depth",
            &[("queue", stage.name()), ("state", "dead")],
            dl,
        );
    }

    let providers = store.provider_stats().await?;
    o.family(
        "squall_provider_attempts_total",
        "counter",
        "Delivery attempts per provider and outcome.",
    );
    for p in &providers {
        for (outcome, n) in [
            ("delivered", p.delivered),
            ("transient", p.transient),
            ("permanent", p.permanent),
        ] {
            o.sample(
                "squall_provider_attempts_total",
                &[("provider", &p.provider), ("outcome", outcome)],
                n,
            );
        }
    }
    o.family(
        "squall_provider_breaker_state",
        "gauge",
        "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
    );
    for p in &providers {
        let v = match p.breaker {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        o.sample(
            "squall_provider_breaker_state",
            &[("provider", &p.provider)],
            v,
        );
    }
    o.family(
        "squall_provider_latency_seconds",
        "histogram",
        "Delivery request latency per provider.",
    );
    for p in &providers {
        histogram(
            &mut o,
            "squall_provider_latency_seconds",
            ("provider", &p.provider),
            &p.latency_ms,
            &LATENCY_BOUNDS_MS,
        );
    }

    o.family(
        "squall_tracking_events_total",
        "counter",
        "Distinct tracking events by campaign, kind and source.",
    );
    for c in &campaigns {
        let mut by: std::collections::BTreeMap<(&str, bool), u64> = Default::default();
        for e in store.engagement(c).await? {
            *by.entry((e.kind.as_str(), e.machine)).or_default() += e.messages;
        }
        for ((kind, machine), n) in by {
            let source = if machine { "machine" } else { "person" };
            o.sample(
                "squall_tracking_events_total",
                &[("campaign", c), ("kind", kind), ("source", source)],
                n,
            );
        }
    }
    o.family(
        "squall_tracking_events_lost_total",
        "counter",
        "Tracking events this server answered but could not store.",
    );
    o.sample(
        "squall_tracking_events_lost_total",
        &[],
        state.metrics.lost_events.load(Ordering::Relaxed),
    );

    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        o.0,
    )
        .into_response())
}

/// A histogram from bucket counts (`counts[i]` for values ≤ `bounds[i]`, one
/// more for slower). The sum is estimated from the bucket bounds: workers
/// keep counts, not sums.
fn histogram(o: &mut Out, name: &str, label: (&str, &str), counts: &[u64], bounds: &[u64]) {
    let mut cumulative = 0;
    let mut sum_ms = 0f64;
    for (i, bound) in bounds.iter().enumerate() {
        let n = counts.get(i).copied().unwrap_or(0);
        cumulative += n;
        sum_ms += n as f64 * *bound as f64;
        let le = format!("{}", *bound as f64 / 1000.0);
        o.sample(&format!("{name}_bucket"), &[label, ("le", &le)], cumulative);
    }
    let slower = counts.get(bounds.len()).copied().unwrap_or(0);
    cumulative += slower;
    sum_ms += slower as f64 * bounds.last().copied().unwrap_or(0) as f64;
    o.sample(
        &format!("{name}_bucket"),
        &[label, ("le", "+Inf")],
        cumulative,
    );
    o.sample(&format!("{name}_sum"), &[label], sum_ms / 1000.0);
    o.sample(&format!("{name}_count"), &[label], cumulative);
}

/// What made a stage give up on a batch, from its dead-letter reason.
fn cause(reason: &str) -> &'static str {
    crate::runtime::StageError::cause_of(reason).unwrap_or("other")
}
