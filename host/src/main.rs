//! `squall`: the command line. It parses, then calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use squall::campaign::Campaign;
use squall::config::{Config, Stage};
use squall::pipeline::backends::Backends;
use squall::pipeline::counters::RunCounters;
use squall::pipeline::envelope::Head;
use squall::pipeline::launch::launch;
use squall::pipeline::prepare::PrepareError;
use squall::pipeline::run::RunError;
use squall::pipeline::service::{WorkerOptions, work};
use squall::pipeline::status::status;
use squall::pipeline::validate::Validation;
use squall::pipeline::{RunOptions, preview, run};
use squall::store::{ControlAction, Scope};

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
    /// Check a campaign file (rules, templates, audience header, the
    /// providers it names); send nothing.
    Validate {
        campaign: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
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
        /// A squall.toml whose `[[provider]]` entries the campaign may name
        /// (its queue and store settings are not used: `run` is embedded).
        #[arg(long, env = "SQUALL_CONFIG")]
        config: Option<PathBuf>,
        /// Evaluate everything (segments, variants, consent, suppression,
        /// the frequency cap, the schedule) and write what would be sent
        /// and when to `<data-dir>/dry-run/<campaign>.jsonl`; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// With `--dry-run`: the instant to plan from (RFC 3339; default now).
        #[arg(long, requires = "dry_run")]
        now: Option<String>,
    },
    /// Benchmark the pipeline against a native baseline on a synthetic audience.
    Bench(squall::bench::BenchArgs),
    /// Validate a campaign, store it for the workers of a deployment and
    /// queue its audience. Launching again resumes or does nothing.
    Launch {
        campaign: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Run one stage's worker for every launched campaign, until SIGTERM or
    /// Ctrl-C (then it finishes or hands back what it holds, and exits).
    Worker {
        #[arg(long, value_enum)]
        stage: Stage,
        #[command(flatten)]
        config: ConfigArg,
        /// Batches worked on at once (default: `stage.<name>.concurrency`).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Progress of a launched campaign: per stage, sent, failed, dead letters.
    Status {
        /// The campaign's id (`[campaign] id` in its file).
        campaign: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Manage the deployment's queues.
    Queues {
        #[command(subcommand)]
        command: QueuesCommand,
    },
    /// Inspect and replay dead-lettered batches.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Stop sending a campaign (or one segment or variant) within about a
    /// second on every worker; queued messages wait, parked, for `resume`.
    Pause(ControlArgs),
    /// Lift the pauses within a scope: sending continues exactly where it
    /// stopped.
    Resume(ControlArgs),
    /// Stop for good: what is still queued is drained unsent, and counted.
    Cancel(ControlArgs),
    /// Serve tracking links, provider feedback hooks, the HTTP API and the
    /// live dashboard.
    Serve(squall::api::ServeArgs),
    /// The suppression list: addresses never sent to again, checked at
    /// every send (unsubscribes, hard bounces, complaints, manual entries).
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
}

#[derive(Subcommand)]
enum SuppressCommand {
    /// Add addresses.
    Add {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long, default_value = "manual", value_parser = ["manual", "unsubscribed", "complaint", "hard-bounce"])]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove addresses (they may be sent to again).
    Remove {
        #[arg(required = true)]
        addresses: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the list.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Add every address of a file: one per line, or a CSV with an
    /// `address` or `email` (or `phone`) column.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "manual", value_parser = ["manual", "unsubscribed", "complaint", "hard-bounce"])]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The deployment's squall.toml (defaults: embedded queue, SQLite in ./squall-data).
    #[arg(long, env = "SQUALL_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<Config> {
        for name in Config::unknown_env() {
            tracing::warn!("environment variable {name} is not a Squall setting; ignored (typo?)");
        }
        Ok(Config::load(self.config.as_deref())?)
    }
}

#[derive(clap::Args)]
struct ControlArgs {
    /// The campaign's id (`[campaign] id` in its file).
    campaign: String,
    /// Only this segment.
    #[arg(long)]
    segment: Option<String>,
    /// Only this variant (of `--segment`, or of every segment).
    #[arg(long)]
    variant: Option<String>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum QueuesCommand {
    /// Create the stage queues and their dead-letter queues with a redrive
    /// policy (idempotent; existing queues are used as they are).
    Create {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead-lettered batches with their reasons.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this stage's queue.
        #[arg(long, value_enum)]
        stage: Option<Stage>,
        #[arg(long)]
        json: bool,
    },
    /// Put a stage's dead-lettered batches back on its queue (after fixing
    /// the cause). The ledger keeps anything already sent from going twice.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum)]
        stage: Stage,
    },
}

/// Sets `stop` on Ctrl-C or SIGTERM.
fn stop_on_signals(stop: Arc<std::sync::atomic::AtomicBool>, message: &'static str) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("\n{message}");
        stop.store(true, Ordering::Relaxed);
    });
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
        Command::Validate { campaign, config } => {
            let config = config.load()?;
            let c = match squall::pipeline::validate::validate(&campaign, &config.providers) {
                Ok(Validation::Valid(c)) => c,
                Ok(Validation::Invalid(problems)) => {
                    eprintln!("{}", squall::campaign::Diagnostics(problems));
                    return Ok(ExitCode::from(INVALID));
                }
                Err(e) => return Ok(invalid(e)),
            };
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
            config,
            dry_run: true,
            now,
            ..
        } => {
            let Some(c) = load(&campaign) else {
                return Ok(ExitCode::from(INVALID));
            };
            let frequency = match &config {
                Some(p) => Config::load(Some(p))?.frequency.max_messages_per_recipient,
                None => None,
            };
            let now_ms = match now {
                Some(t) => squall::schedule::clock::parse_rfc3339_ms(&t).with_context(|| {
                    format!("--now {t}: use RFC 3339, like 2027-03-01T09:00:00Z")
                })?,
                None => squall::schedule::clock::now_ms(),
            };
            let store = squall::store::sqlite::SqliteStore::open(&data_dir)?;
            let out = data_dir.join("dry-run").join(format!("{}.jsonl", c.id()));
            let r = squall::pipeline::dry_run::dry_run(&c, &store, frequency, now_ms, out).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} (dry run from {}): {} would be sent{}; {} suppressed, {} capped, {} without consent, {} unsegmented, {} rejected, {} cannot be rendered",
                    r.campaign,
                    r.now,
                    r.would_send,
                    match (&r.first_send_at, &r.last_send_at) {
                        (Some(a), Some(b)) if a != b => format!(" between {a} and {b}"),
                        (Some(a), _) => format!(" at {a}"),
                        _ => String::new(),
                    },
                    r.suppressed,
                    r.capped,
                    r.no_consent,
                    r.unsegmented,
                    r.rejected,
                    r.render_failed
                );
                for (k, n) in &r.per_variant {
                    println!("  {k:<24} {n}");
                }
                println!("  every recipient, with when: {}", r.file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            campaign,
            data_dir,
            json,
            personalise_workers,
            config,
            ..
        } => {
            let Some(c) = load(&campaign) else {
                return Ok(ExitCode::from(INVALID));
            };
            let mut opts = RunOptions::new(data_dir);
            opts.personalise_workers = personalise_workers;
            if let Some(path) = config {
                let config = Config::load(Some(&path))?;
                opts.providers = config.providers;
                opts.frequency = config.frequency.max_messages_per_recipient;
            }
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
        Command::Bench(args) if args.tracking => {
            let report = squall::bench::tracking::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                squall::bench::tracking::print(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) if args.smtp => {
            squall::bench::smtp::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            squall::bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Launch {
            campaign,
            config,
            json,
        } => {
            let Some(c) = load(&campaign) else {
                return Ok(ExitCode::from(INVALID));
            };
            let backends = Backends::open(config.load()?, true).await?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            stop_on_signals(
                stop.clone(),
                "stopping: launch again with the same command to queue the rest",
            );
            let report = match launch(&c, &backends, stop.clone()).await {
                Ok(r) => r,
                Err(RunError::Invalid(e)) => return Ok(invalid(e)),
                Err(RunError::Other(e)) => return Err(e),
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else if report.already_launched {
                println!(
                    "{}: already launched ({} rows, {} rejected); `squall status {}` shows progress",
                    report.campaign, report.audience, report.rejected, report.campaign
                );
            } else {
                println!(
                    "{}: launched; {} rows queued, {} rejected (listed in {}); start workers with `squall worker --stage segment|personalise|send`",
                    report.campaign,
                    report.queued_now,
                    report.rejected,
                    report.rejects_file.display()
                );
            }
            Ok(if stop.load(Ordering::Relaxed) {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Worker {
            stage,
            config,
            concurrency,
        } => {
            let config = config.load()?;
            let concurrency = concurrency.unwrap_or(config.stage.get(stage).concurrency);
            let backends = Backends::open(config, true).await?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            stop_on_signals(
                stop.clone(),
                "stopping: finishing the batches in hand and releasing the rest",
            );
            let report = work(
                &backends,
                WorkerOptions {
                    stage,
                    concurrency,
                    stop,
                },
            )
            .await?;
            eprintln!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Suppress { command } => suppress(command).await,
        Command::Pause(a) => control(a, ControlAction::Pause).await,
        Command::Resume(a) => control(a, ControlAction::Resume).await,
        Command::Cancel(a) => control(a, ControlAction::Cancel).await,
        Command::Serve(args) => {
            squall::api::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            campaign,
            config,
            json,
        } => {
            let backends = Backends::open(config.load()?, false).await?;
            let s = status(&backends, &campaign).await?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print_status(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queues {
            command: QueuesCommand::Create { config },
        } => {
            let backends = Backends::open(config.load()?, false).await?;
            match &backends.sqs {
                Some(sqs) => {
                    for stage in Stage::ALL {
                        let url = sqs.create(stage.name()).await?;
                        println!("{}: {url}", stage.name());
                    }
                }
                None => println!(
                    "the embedded queue needs no creation (it lives in {})",
                    backends.config.data_dir.join("queue.sqlite").display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => match command {
            DlqCommand::List {
                config,
                stage,
                json,
            } => {
                let backends = Backends::open(config.load()?, false).await?;
                let stages: Vec<Stage> = stage.map_or(Stage::ALL.to_vec(), |s| vec![s]);
                let mut rows = Vec::new();
                for s in stages {
                    for d in backends.queue.dead_letters(s.name()).await? {
                        rows.push(dead_letter_row(s, &d));
                    }
                }
                if json {
                    println!("{}", serde_json::to_string(&rows)?);
                } else if rows.is_empty() {
                    println!("no dead letters");
                } else {
                    for r in &rows {
                        println!(
                            "{} · campaign {} · batch {} · {} recipient(s) · received {} time(s)\n    {}",
                            r["stage"].as_str().unwrap_or(""),
                            r["campaign"].as_str().unwrap_or("?"),
                            r["batch"].as_str().unwrap_or("?"),
                            r["recipients"],
                            r["receive_count"],
                            r["reason"].as_str().unwrap_or("")
                        );
                    }
                    println!(
                        "{} dead-lettered batch(es); fix the cause, then `squall dlq replay --stage STAGE`",
                        rows.len()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Replay { config, stage } => {
                let backends = Backends::open(config.load()?, false).await?;
                let n = backends.queue.replay_dead_letters(stage.name()).await?;
                println!("{n} batch(es) back on the {} queue", stage.name());
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

/// One dead letter for `dlq list`: what the envelope says of itself, and why.
fn dead_letter_row(stage: Stage, d: &squall::queue::DeadLetter) -> serde_json::Value {
    let head = Head::peek(&d.body);
    serde_json::json!({
        "stage": stage.name(),
        "campaign": head.as_ref().map(|h| h.campaign.clone()),
        "batch": head.as_ref().map(|h| h.batch.clone()),
        "recipients": head.as_ref().map_or(0, |h| h.recipients),
        "reason": d.reason,
        "receive_count": d.receive_count,
        "failed_at_ms": d.failed_at_ms,
        "bytes": d.body.len(),
    })
}

async fn control(a: ControlArgs, action: ControlAction) -> anyhow::Result<ExitCode> {
    let backends = Backends::open(a.config.load()?, false).await?;
    let scope = Scope {
        segment: a.segment,
        variant: a.variant,
    };
    let done = squall::pipeline::control::apply(
        &*backends.store,
        &a.campaign,
        &scope,
        action,
        "squall command line",
    )
    .await?;
    println!("{done}");
    Ok(ExitCode::SUCCESS)
}

async fn suppress(command: SuppressCommand) -> anyhow::Result<ExitCode> {
    use squall::store::{Suppression, SuppressionReason};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let entries = |addresses: Vec<String>, reason: &str| -> Vec<Suppression> {
        let reason = SuppressionReason::parse(reason).expect("clap checked it");
        addresses
            .into_iter()
            .map(|address| Suppression {
                address,
                reason,
                detail: "added by hand".into(),
                campaign: None,
                at: now,
            })
            .collect()
    };
    match command {
        SuppressCommand::Add {
            addresses,
            reason,
            config,
        } => {
            let backends = Backends::open(config.load()?, false).await?;
            let n = addresses.len();
            backends
                .store
                .suppress(&entries(addresses, &reason))
                .await?;
            println!("{n} address(es) suppressed ({reason})");
        }
        SuppressCommand::Remove { addresses, config } => {
            let backends = Backends::open(config.load()?, false).await?;
            let n = backends.store.unsuppress(&addresses).await?;
            println!(
                "{n} of {} address(es) removed from the list",
                addresses.len()
            );
        }
        SuppressCommand::List { config, json } => {
            let backends = Backends::open(config.load()?, false).await?;
            let list = backends.store.suppressions().await?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for s in &list {
                    println!(
                        "{}\t{}\t{}\t{}",
                        s.address,
                        s.reason.as_str(),
                        s.campaign.as_deref().unwrap_or("-"),
                        s.detail
                    );
                }
                eprintln!("{} address(es)", list.len());
            }
        }
        SuppressCommand::Import {
            file,
            reason,
            config,
        } => {
            let addresses = squall::audience::read_address_list(&file)
                .with_context(|| format!("cannot import {}", file.display()))?;
            let backends = Backends::open(config.load()?, false).await?;
            let n = addresses.len();
            // In chunks: a list of millions is not one statement.
            for chunk in entries(addresses, &reason).chunks(5_000) {
                backends.store.suppress(chunk).await?;
            }
            println!(
                "{n} address(es) from {} suppressed ({reason})",
                file.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &squall::pipeline::status::Status) {
    println!(
        "{} — {}",
        s.campaign,
        if s.complete {
            "complete"
        } else if s.intake_finished {
            "running"
        } else {
            "launching"
        }
    );
    println!(
        "  audience {} · rejected {} · unsegmented {} · in progress {}",
        s.totals.audience, s.totals.rejected, s.totals.unsegmented, s.in_progress
    );
    println!(
        "  sent {} · failed {} · suppressed {} · capped {} · in doubt {} · cancelled {} · dead-lettered {}",
        s.totals.sent,
        s.totals.failed,
        s.totals.suppressed,
        s.totals.capped,
        s.totals.in_doubt,
        s.totals.cancelled,
        s.totals.dead_lettered
    );
    for c in &s.controls {
        println!("  {} {} (by {})", c.state.as_str(), c.scope, c.reason);
    }
    for d in &s.ab_decisions {
        let arms: Vec<String> = d
            .arms
            .iter()
            .map(|a| {
                format!(
                    "{} {}/{} = {:.1}%",
                    a.variant,
                    a.events,
                    a.sent,
                    a.rate * 100.0
                )
            })
            .collect();
        println!(
            "  A/B {}: {} wins ({}; {})",
            d.segment,
            d.winner,
            d.basis,
            arms.join(", ")
        );
    }
    if s.parked_batches > 0 {
        println!(
            "  {} batch(es) held by a pause; `squall resume {}` sends them",
            s.parked_batches, s.campaign
        );
    }
    for stage in Stage::ALL {
        let (name, Some(st)) = (stage.name(), s.stages.get(stage.name())) else {
            continue;
        };
        println!(
            "  {name:<12} processed {:>8} · dead-lettered {:>5} · queue (all campaigns): {} waiting, {} in flight, {} dead",
            st.processed,
            st.dead_lettered,
            st.queued_batches,
            st.in_flight_batches,
            st.dead_letter_batches
        );
    }
    for d in &s.totals.dead_letters {
        println!(
            "  dead letter: {} {} ({} recipient(s)): {}",
            d.stage, d.item, d.recipients, d.reason
        );
    }
    print_providers(&s.providers);
    if let Some(w) = &s.waiting {
        println!("  {w}");
    }
}

fn print_providers(providers: &[squall::delivery::metrics::ProviderStats]) {
    for p in providers {
        let ms = |q| {
            p.latency_quantile_ms(q)
                .map_or("-".to_string(), |v| format!("≤{v} ms"))
        };
        println!(
            "  provider {} ({}): {} attempts · {} delivered · {} transient · {} permanent{} · p50 {} · p99 {} · breaker {}{}",
            p.provider,
            p.kind,
            p.attempts,
            p.delivered,
            p.transient,
            p.permanent,
            if p.units > 0 {
                format!(" · {} SMS segments", p.units)
            } else {
                String::new()
            },
            ms(0.5),
            ms(0.99),
            p.breaker,
            p.breaker_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
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
    // A query's row count is unknown until it has run: count, no total.
    let template = if total == 0 {
        "{spinner} [{elapsed_precise}] {human_pos} recipients · {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {bar:40} {human_pos}/{human_len} recipients, eta {eta} · {msg}"
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
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
    row("audience rows", r.totals.audience);
    row("rejected", r.totals.rejected);
    row("unsegmented", r.totals.unsegmented);
    if r.totals.no_consent > 0 {
        row("no consent (skipped)", r.totals.no_consent);
    }
    for (s, n) in &r.totals.per_segment {
        row(&format!("segment {s}"), *n);
    }
    for (v, n) in &r.totals.per_variant {
        row(&format!("  variant {v}"), *n);
    }
    row("sent", r.totals.sent);
    row("failed", r.totals.failed);
    for (label, n) in [
        ("suppressed (not sent)", r.totals.suppressed),
        ("capped (not sent)", r.totals.capped),
        ("cancelled (not sent)", r.totals.cancelled),
    ] {
        if n > 0 {
            row(label, n);
        }
    }
    row("dead-lettered", r.totals.dead_lettered);
    for d in r.totals.dead_letters.iter().take(10) {
        println!(
            "    {} {} ({} recipient(s)): {}",
            d.stage, d.item, d.recipients, d.reason
        );
    }
    if r.totals.dead_letters.len() > 10 {
        println!("    … and {} more", r.totals.dead_letters.len() - 10);
    }
    if r.totals.in_doubt > 0 {
        row("in doubt (never resent)", r.totals.in_doubt);
    }
    row("skipped, already sent", r.skipped_already_sent);
    println!("  rejects: {}", r.rejects_file.display());
    if let Some(o) = &r.outbox {
        println!("  outbox:  {}", o.display());
    }
    print_providers(&r.providers);
    println!("  took {:.1} s", r.elapsed_ms as f64 / 1000.0);
}
