//! `squall bench --tracking`: tracking requests at a fixed rate against an
//! in-process `squall serve` (signed tokens, verification, group-committed
//! writes to the SQLite store), then a check that every event is stored.
//! The baseline is the same load against a bare axum handler that answers
//! the same GIF without verifying or storing anything: the ratio is what
//! Squall's tracking costs on top of HTTP on this machine.
//!
//! The generator is open-loop: request i is due at start + i/rate whatever
//! happened before, and its latency counts from when it was due, so a
//! stalled server shows in the figures (no coordinated omission). Written
//! here rather than with an external tool because the check that nothing
//! was lost needs the store's view of the same requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::BenchArgs;
use crate::api::{AppState, router};
use crate::config::Config;
use crate::pipeline::backends::Backends;
use crate::store::{EngagementKind, MessageRef};
use crate::tracking::{Link, LinkKind};

const CAMPAIGN: &str = "bench-tracking";

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests that failed or answered other than 200/30x.
    pub errors: u64,
    /// Requests per second actually completed.
    pub achieved_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct TrackingBenchReport {
    pub rate: u32,
    pub seconds: u32,
    pub requests: u64,
    pub squall: Latency,
    pub baseline: Latency,
    /// squall p99 / baseline p99.
    pub p99_ratio: f64,
    /// Distinct events in the store after the run.
    pub recorded: u64,
    /// Requests answered but not in the store: must be 0.
    pub lost: u64,
}

async fn fire(client: &reqwest::Client, base: &str, paths: &[String], rate: u32) -> Latency {
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, path) in paths.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
        tokio::time::sleep_until(due).await;
        let (client, url) = (client.clone(), format!("{base}{path}"));
        tasks.spawn(async move {
            let ok = match client.get(&url).send().await {
                Ok(r) => {
                    let good = r.status().is_success() || r.status().is_redirection();
                    r.bytes().await.is_ok() && good
                }
                Err(_) => false,
            };
            (ok, due.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(paths.len());
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (ok, took) = r.expect("request task");
        if !ok {
            errors += 1;
        }
        latencies.push(took);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        errors,
        achieved_rate: paths.len() as f64 / elapsed,
    }
}

async fn baseline_server() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    let app = axum::Router::new().fallback(|| async { ([("content-type", "image/gif")], GIF) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, task))
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<TrackingBenchReport> {
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut config = Config::load(None)?;
    config.data_dir = dir.join("data");
    let backends = Backends::open(config, false).await?;
    let store = backends.store.clone();
    let state = Arc::new(AppState::new(backends).await?);
    let signer = state.signer.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    let (baseline_base, baseline) = baseline_server().await?;

    // One distinct message per request: every one must become an event.
    let n = u64::from(args.rate) * u64::from(args.seconds);
    let paths: Vec<String> = (0..n)
        .map(|i| {
            let click = i % 4 == 3;
            let link = Link {
                kind: if click {
                    LinkKind::Click
                } else {
                    LinkKind::Open
                },
                message: MessageRef {
                    campaign: CAMPAIGN.into(),
                    message_id: format!("{i:032x}"),
                    recipient_id: format!("r{i}"),
                    segment: "all".into(),
                    variant: "a".into(),
                    wave: 0,
                },
                extra: if click {
                    format!("https://shop.example.com/p/{i}")
                } else {
                    String::new()
                },
            };
            format!("/{}/{}", if click { "c" } else { "o" }, signer.sign(&link))
        })
        .collect();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36")
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()?;
    let warm = Instant::now();
    let _ = client.get(format!("{baseline_base}/")).send().await;
    let _ = client.get(format!("{base}/api/openapi.json")).send().await;
    tracing::debug!("servers up in {:?}", warm.elapsed());

    let baseline_latency = fire(&client, &baseline_base, &paths, args.rate).await;
    let squall = fire(&client, &base, &paths, args.rate).await;
    let recorded: u64 = store
        .engagement(CAMPAIGN)
        .await?
        .iter()
        .filter(|c| matches!(c.kind, EngagementKind::Open | EngagementKind::Click))
        .map(|c| c.messages)
        .sum();
    server.abort();
    baseline.abort();
    let answered = n - squall.errors;
    Ok(TrackingBenchReport {
        rate: args.rate,
        seconds: args.seconds,
        requests: n,
        p99_ratio: if baseline_latency.p99_ms > 0.0 {
            squall.p99_ms / baseline_latency.p99_ms
        } else {
            0.0
        },
        lost: answered.saturating_sub(recorded),
        recorded,
        squall,
        baseline: baseline_latency,
    })
}

pub fn print(r: &TrackingBenchReport) {
    println!(
        "tracking: {} requests at {}/s for {} s",
        r.requests, r.rate, r.seconds
    );
    for (name, l) in [
        ("squall serve", &r.squall),
        ("bare axum (baseline)", &r.baseline),
    ] {
        println!(
            "  {name:<22} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  errors {}  achieved {:.0}/s",
            l.p50_ms, l.p99_ms, l.max_ms, l.errors, l.achieved_rate
        );
    }
    println!(
        "  p99 ratio {:.2}; recorded {} of {} ({} lost)",
        r.p99_ratio, r.recorded, r.requests, r.lost
    );
}
