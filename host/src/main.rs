//! `squall`: the command line. It parses, then calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use squall::campaign::Campaign;
use squall::pipeline::counters::RunCounters;
use squall::pipeline::prepare::PrepareError;
use squall::pipeline::run::RunError;
use squall::pipeline::{RunOptions, preview, run};

#[derive(Parser)]
#[command(
    name = "squall",
    version,
    about = "Large-scale messaging campaigns on WebAssembly stages"
)]
struct Cli {
    /// Log format: `text`, or `json` (the default when stderr is not a terminal).
    #[arg(long, global = true, env = "SQUALL_LOG_FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a campaign file (rules, templates, audience header); send nothing.
    Validate { campaign: PathBuf },
    /// Render the message one recipient would get; send nothing.
    Preview {
        campaign: PathBuf,
        #[arg(long)]
        recipient: String,
        /// Print the complete provider request (the MIME message for email).
        #[arg(long)]
        raw: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run a campaign to the end on this machine. Interrupted, run it again:
    /// it resumes, and nobody is sent twice.
    Run {
        campaign: PathBuf,
        #[arg(long, default_value = "squall-data", env = "SQUALL_DATA_DIR")]
        data_dir: PathBuf,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Parallel personalise workers.
        #[arg(long, default_value_t = 2)]
        personalise_workers: usize,
    },
    /// Benchmark the pipeline against a native baseline on a synthetic audience.
    Bench(squall::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format.as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,squall=info"));
    let json = match format {
        Some(f) => f == "json",
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Exit code 2: the campaign is invalid (distinct from a failure while running).
const INVALID: u8 = 2;

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { campaign } => {
            let (c, mut problems) = match Campaign::load_partial(&campaign) {
                Ok(loaded) => loaded,
                Err(d) => {
                    eprintln!("{d}");
                    return Ok(ExitCode::from(INVALID));
                }
            };
            let engine = squall::runtime::StageEngine::new(&c.file.limits.sandbox())?;
            match squall::pipeline::prepare::stages(&c, &engine) {
                Ok(_) => {}
                Err(PrepareError::Invalid(d)) => {
                    // With structural problems present, keep what only the
                    // stages can see (rules, templates); the rest repeats them.
                    let structural = !problems.is_empty();
                    problems.extend(d.0.into_iter().filter(|p| {
                        !structural
                            || [".rule:", ".subject:", ".text:", ".html:"]
                                .iter()
                                .any(|k| p.message.contains(k))
                    }));
                }
                Err(e) => return Ok(invalid(e)),
            }
            if !problems.is_empty() {
                problems.sort_by_key(|p| (p.line, p.column));
                eprintln!("{}", squall::campaign::Diagnostics(problems));
                return Ok(ExitCode::from(INVALID));
            }
            println!(
                "{}: ok — campaign `{}`, {} segment(s), {} message(s), audience fields: {}",
                campaign.display(),
                c.id(),
                c.file.segment.len(),
                c.file.message.len(),
                c.columns.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Preview {
            campaign,
            recipient,
            raw,
            json,
        } => {
            let Some(c) = load(&campaign) else {
                return Ok(ExitCode::from(INVALID));
            };
            let p = preview::preview(&c, &recipient)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else if raw {
                println!(
                    "{}",
                    p.request
                        .as_deref()
                        .unwrap_or("(no message: the recipient is in no segment)")
                );
            } else {
                print_preview(&p);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            campaign,
            data_dir,
            json,
            personalise_workers,
        } => {
            let Some(c) = load(&campaign) else {
                return Ok(ExitCode::from(INVALID));
            };
            let mut opts = RunOptions::new(data_dir);
            opts.personalise_workers = personalise_workers;
            let stop = opts.stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!(
                        "\nstopping: finishing the batches in hand; run the same command again to resume"
                    );
                    stop.store(true, Ordering::Relaxed);
                }
            });
            let bar = progress_bar(&c);
            if let Some(bar) = bar.clone() {
                opts.on_progress = Some(Box::new(move |counters: &RunCounters| {
                    bar.set_position(counters.finished());
                    bar.set_message(format!(
                        "sent {} · skipped {} · rejected {}",
                        RunCounters::get(&counters.sent),
                        RunCounters::get(&counters.skipped_already_sent),
                        RunCounters::get(&counters.rejected)
                    ));
                }));
            } else {
                let last = std::sync::Mutex::new(std::time::Instant::now());
                opts.on_progress = Some(Box::new(move |counters: &RunCounters| {
                    let mut last = last.lock().unwrap();
                    if last.elapsed().as_secs() >= 2 {
                        *last = std::time::Instant::now();
                        tracing::info!(
                            read = RunCounters::get(&counters.rows_read),
                            sent = RunCounters::get(&counters.sent),
                            skipped = RunCounters::get(&counters.skipped_already_sent),
                            rejected = RunCounters::get(&counters.rejected),
                            dead_lettered = RunCounters::get(&counters.dead_lettered),
                            "progress"
                        );
                    }
                }));
            }
            let result = run(&c, opts).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let report = match result {
                Ok(r) => r,
                Err(RunError::Invalid(e)) => return Ok(invalid(e)),
                Err(RunError::Other(e)) => return Err(e),
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&report);
            }
            Ok(if report.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Bench(args) => {
            squall::bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(path: &std::path::Path) -> Option<Campaign> {
    match Campaign::load(path) {
        Ok(c) => Some(c),
        Err(d) => {
            eprintln!("{d}");
            None
        }
    }
}

fn invalid(e: PrepareError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(if matches!(e, PrepareError::Invalid(_)) {
        INVALID
    } else {
        1
    })
}

fn progress_bar(c: &Campaign) -> Option<Arc<indicatif::ProgressBar>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let total = squall::audience::estimate_rows(&c.audience);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} recipients, eta {eta} · {msg}")
            .expect("valid template"),
    );
    Some(Arc::new(bar))
}

fn print_preview(p: &preview::Preview) {
    println!("recipient {} (line {}) → {}", p.recipient_id, p.line, p.to);
    match (&p.segment, &p.variant) {
        (Some(s), Some(v)) => println!(
            "segment {s}, variant {v}, message id {}",
            p.message_id.as_deref().unwrap_or("")
        ),
        _ => {
            println!("in no segment: this recipient gets nothing");
            return;
        }
    }
    println!(
        "\nSubject: {}\n\n{}",
        p.subject.as_deref().unwrap_or(""),
        p.text.as_deref().unwrap_or("")
    );
    if let Some(html) = &p.html {
        println!("\n--- html ---\n{html}");
    }
}

fn print_report(r: &squall::pipeline::RunReport) {
    let row = |label: &str, n: u64| println!("  {label:<26} {n:>10}");
    println!(
        "campaign {}: {}",
        r.campaign,
        if r.complete {
            "complete"
        } else {
            "stopped; run again to resume"
        }
    );
    row("audience rows", r.audience);
    row("rejected", r.rejected);
    row("unsegmented", r.unsegmented);
    for (s, n) in &r.per_segment {
        row(&format!("segment {s}"), *n);
    }
    for (v, n) in &r.per_variant {
        row(&format!("  variant {v}"), *n);
    }
    row("sent", r.sent);
    row("failed", r.failed);
    row("dead-lettered", r.dead_lettered);
    for d in r.dead_letters.iter().take(10) {
        println!(
            "    {} {} ({} recipient(s)): {}",
            d.stage, d.item, d.recipients, d.reason
        );
    }
    if r.dead_letters.len() > 10 {
        println!("    … and {} more", r.dead_letters.len() - 10);
    }
    if r.in_doubt > 0 {
        row("in doubt (never resent)", r.in_doubt);
    }
    row("skipped, already sent", r.skipped_already_sent);
    println!("  rejects: {}", r.rejects_file.display());
    if let Some(o) = &r.outbox {
        println!("  outbox:  {}", o.display());
    }
    println!("  took {:.1} s", r.elapsed_ms as f64 / 1000.0);
}
