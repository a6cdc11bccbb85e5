//! `squall bench`: the real pipeline (Wasm stages, embedded queue and
//! store, null transport) against a native baseline that runs the very same
//! stage code (`squall-pipeline-core`) in-process with no Wasm and no queue,
//! in the same process, on the same synthetic audience. Machines here are
//! shared and noisy, so the figures that matter are the ratios.

mod audience;
pub mod smtp;
pub mod tracking;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use squall_pipeline_core::ids::message_id;
use squall_pipeline_core::message::{Outgoing, Sender};
use squall_pipeline_core::segment::{Assignment, Segmenter};
use squall_pipeline_core::template::Personaliser;
use squall_pipeline_core::{Batch, Record};

use crate::audience::{AudienceReader, Row};
use crate::campaign::Campaign;
use crate::pipeline::{RunOptions, prepare};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Synthetic audience size.
    #[arg(long, default_value_t = 1_000_000)]
    pub recipients: u64,
    /// Where to write the audience and the run's data (default: a temp dir, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub personalise_workers: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Measure SMTP delivery instead: `squall run` into Postfix's
    /// smtp-sink against Postfix's own smtp-source into the same sink.
    #[arg(long)]
    pub smtp: bool,
    /// SMTP connections, for squall and smtp-source alike (with `--smtp`).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Measure `squall serve`'s tracking endpoints instead: requests at a
    /// fixed rate, every event checked in the store afterwards.
    #[arg(long)]
    pub tracking: bool,
    /// Tracking requests per second (with `--tracking`).
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// How long to keep the rate up (with `--tracking`).
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
}

#[derive(Debug, Serialize)]
pub struct Rates {
    pub segment: f64,
    pub personalise: f64,
    pub send: f64,
    /// The three stages as one pipeline: one message's time in each stage,
    /// added up (1 / (1/segment + 1/personalise + 1/send)). The issue's
    /// "Wasm pipeline against the native baseline" in one figure, with no
    /// queue or store in it.
    pub stages: f64,
    pub end_to_end: f64,
}

impl Rates {
    fn new(segment: f64, personalise: f64, send: f64, end_to_end: f64) -> Rates {
        Rates {
            segment,
            personalise,
            send,
            stages: 1.0 / (1.0 / segment + 1.0 / personalise + 1.0 / send),
            end_to_end,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub recipients: u64,
    pub sent: u64,
    /// Messages per second; stage figures count only time inside the stage.
    pub wasm: Rates,
    pub native: Rates,
    /// wasm / native, per stage and end to end.
    pub ratio: Rates,
    pub peak_rss_mb: f64,
    /// Claim + settle of one message in the SQLite ledger, alone (µs).
    pub ledger_us_per_message: f64,
    pub wasm_seconds: f64,
    pub native_seconds: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let data_dir = dir.join("data");
    let _ = std::fs::remove_dir_all(&data_dir);
    let campaign_path =
        audience::write(&dir, args.recipients).context("writing the synthetic audience")?;
    let campaign = Campaign::load(&campaign_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    eprintln!("bench: {} recipients in {}", args.recipients, dir.display());

    // Compile the components once, in another process, so that neither the
    // timing nor the peak memory below includes Cranelift (the compiled code
    // is cached on disk and loaded in milliseconds).
    let warm = std::process::Command::new(std::env::current_exe()?)
        .arg("validate")
        .arg(&campaign_path)
        .stdout(std::process::Stdio::null())
        .status()
        .context("compiling the components before the benchmark")?;
    anyhow::ensure!(warm.success(), "the benchmark campaign does not validate");

    let mut opts = RunOptions::new(data_dir);
    opts.personalise_workers = args.personalise_workers;
    let started = Instant::now();
    let report = crate::pipeline::run(&campaign, opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let wasm_seconds = started.elapsed().as_secs_f64();
    let peak_rss_mb = peak_rss_mb();
    anyhow::ensure!(report.complete, "the benchmark run did not complete");

    let per = |busy_ms: Option<&u64>, n: u64| {
        n as f64 / (busy_ms.copied().unwrap_or(1).max(1) as f64 / 1000.0)
    };
    let segmented: u64 = report.totals.per_segment.values().sum();
    let wasm = Rates::new(
        per(
            report.stage_busy_ms.get("segment"),
            args.recipients - report.totals.rejected,
        ),
        per(report.stage_busy_ms.get("personalise"), segmented),
        per(report.stage_busy_ms.get("send"), report.totals.sent),
        report.totals.sent as f64 / wasm_seconds,
    );

    let (native, native_seconds, native_sent) =
        tokio::task::spawn_blocking(move || native_baseline(&campaign)).await??;
    anyhow::ensure!(
        native_sent == report.totals.sent,
        "native baseline sent {native_sent}, the pipeline {}",
        report.totals.sent
    );
    let ledger_us_per_message = ledger_probe(&dir.join("ledger-probe")).await?;
    let ratio = Rates {
        segment: wasm.segment / native.segment,
        personalise: wasm.personalise / native.personalise,
        send: wasm.send / native.send,
        stages: wasm.stages / native.stages,
        end_to_end: wasm.end_to_end / native.end_to_end,
    };
    let out = BenchReport {
        recipients: args.recipients,
        sent: report.totals.sent,
        wasm,
        native,
        ratio,
        peak_rss_mb,
        ledger_us_per_message,
        wasm_seconds,
        native_seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print(&out);
    }
    Ok(out)
}

/// The same stage code, natively, one thread, no queue, no store.
fn native_baseline(campaign: &Campaign) -> anyhow::Result<(Rates, f64, u64)> {
    let diagnostics = |d: Vec<squall_pipeline_core::Diagnostic>| anyhow::anyhow!("{d:?}");
    let segmenter =
        Segmenter::compile(prepare::core_segmenter_config(campaign)).map_err(diagnostics)?;
    let personaliser =
        Personaliser::compile(prepare::core_personaliser_config(campaign)).map_err(diagnostics)?;
    let sender = Sender::compile(prepare::core_sender_config(campaign)).map_err(diagnostics)?;
    let keys: Vec<(String, String)> = campaign
        .file
        .message
        .iter()
        .map(|m| (m.segment.get_ref().clone(), m.variant.get_ref().clone()))
        .collect();

    let started = Instant::now();
    let (mut t_seg, mut t_per, mut t_send) = (0f64, 0f64, 0f64);
    let (mut n_seg, mut n_per, mut sent) = (0u64, 0u64, 0u64);
    let batch_size = campaign.file.limits.batch_size as usize;
    let mut records: Vec<Record> = Vec::with_capacity(batch_size);
    let mut rows = AudienceReader::open(&campaign.audience)?;
    let mut flush = |records: Vec<Record>| {
        let batch = Batch {
            campaign: campaign.id().to_string(),
            columns: campaign.columns.clone(),
            recipients: records,
        };
        let t = Instant::now();
        let assignments = segmenter.assign(&batch);
        t_seg += t.elapsed().as_secs_f64();
        n_seg += batch.recipients.len() as u64;
        let mut picks = Vec::new();
        let mut placed = Vec::new();
        for (r, a) in batch.recipients.into_iter().zip(assignments) {
            if let Assignment::Assigned { message, .. } = a {
                picks.push(message);
                placed.push(r);
            }
        }
        let batch = Batch {
            campaign: batch.campaign,
            columns: batch.columns,
            recipients: placed,
        };
        let t = Instant::now();
        let rendered = personaliser.render(&batch, &picks);
        t_per += t.elapsed().as_secs_f64();
        n_per += rendered.len() as u64;
        let t = Instant::now();
        for ((r, m), content) in batch.recipients.into_iter().zip(picks).zip(rendered) {
            let Ok(content) = content else { continue };
            let (segment, variant) = keys[m as usize].clone();
            let id = message_id(
                &batch.campaign,
                r.line,
                &r.id,
                &format!("{segment}/{variant}"),
            );
            let out = Outgoing {
                unsubscribe_url: format!("http://localhost:8080/u/{id}"),
                message_id: id,
                recipient_id: r.id,
                address: r.address,
                segment,
                variant,
                content,
                timezone: None,
            };
            if sender.build(&out, 1_700_000_000).is_ok() {
                sent += 1;
            }
        }
        t_send += t.elapsed().as_secs_f64();
    };
    for row in rows.by_ref() {
        if let Row::Valid(r) = row? {
            records.push(r.record);
            if records.len() == batch_size {
                flush(std::mem::take(&mut records));
            }
        }
    }
    if !records.is_empty() {
        flush(records);
    }
    let total = started.elapsed().as_secs_f64();
    Ok((
        Rates::new(
            n_seg as f64 / t_seg.max(1e-9),
            n_per as f64 / t_per.max(1e-9),
            sent as f64 / t_send.max(1e-9),
            sent as f64 / total,
        ),
        total,
        sent,
    ))
}

/// The delivery ledger's own cost: claim and settle 100,000 messages in
/// batches of 500 on a fresh SQLite store, nothing else running.
async fn ledger_probe(dir: &std::path::Path) -> anyhow::Result<f64> {
    use crate::store::sqlite::SqliteStore;
    use crate::store::{LedgerKey, Settlement, Store};
    let _ = std::fs::remove_dir_all(dir);
    let store = SqliteStore::open(dir)?;
    let started = Instant::now();
    for batch in 0..200u64 {
        let claims: Vec<LedgerKey> = (0..500u64)
            .map(|i| {
                let line = batch * 500 + i;
                let id = line.to_string();
                LedgerKey {
                    message_id: message_id("probe", line, &id, "s/a"),
                    recipient_id: id,
                    message_key: "s/a".into(),
                }
            })
            .collect();
        store.claim("probe", "bench", &claims).await?;
        let settled: Vec<_> = claims
            .into_iter()
            .map(|c| (c, Settlement::Delivered))
            .collect();
        store.settle("probe", "bench", &settled).await?;
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / 100_000.0;
    let _ = std::fs::remove_dir_all(dir);
    Ok(us)
}

/// Peak resident memory of this process (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn print(r: &BenchReport) {
    println!(
        "recipients: {}   sent: {}   peak RSS: {:.0} MB   ledger claim+settle alone: {:.1} µs/message",
        r.recipients, r.sent, r.peak_rss_mb, r.ledger_us_per_message
    );
    println!(
        "{:<14} {:>14} {:>14} {:>8}",
        "messages/s", "wasm pipeline", "native", "ratio"
    );
    for (name, w, n, q) in [
        ("segment", r.wasm.segment, r.native.segment, r.ratio.segment),
        (
            "personalise",
            r.wasm.personalise,
            r.native.personalise,
            r.ratio.personalise,
        ),
        ("send (build)", r.wasm.send, r.native.send, r.ratio.send),
        ("stages", r.wasm.stages, r.native.stages, r.ratio.stages),
        (
            "end to end",
            r.wasm.end_to_end,
            r.native.end_to_end,
            r.ratio.end_to_end,
        ),
    ] {
        println!("{name:<14} {w:>14.0} {n:>14.0} {q:>8.2}");
    }
}
