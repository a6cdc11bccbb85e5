//! `squall bench --smtp`: how fast Squall delivers over SMTP, against
//! Postfix's own load generator. Both send to one Postfix `smtp-sink` (it
//! accepts and discards), over the same number of connections, messages of
//! the same size, in the same run: the ratio is what to compare.
//!
//! Squall's figure is a whole `squall run` (intake, Wasm stages, embedded
//! queue, the delivery ledger, MIME built per recipient) divided by its
//! wall time; smtp-source only replays one canned message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::{BenchArgs, audience};
use crate::campaign::Campaign;
use crate::pipeline::RunOptions;
use crate::pipeline::preview::preview;

#[derive(Debug, Serialize)]
pub struct SmtpBenchReport {
    pub messages: u64,
    pub connections: u32,
    pub message_bytes: usize,
    /// Messages per second.
    pub squall: f64,
    pub smtp_source: f64,
    /// squall / smtp_source.
    pub ratio: f64,
    pub squall_seconds: f64,
    pub smtp_source_seconds: f64,
}

/// Postfix's test tools live in /usr/sbin on Debian.
fn postfix_tool(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/lib/postfix/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} is missing: install Debian's `postfix` package"))
}

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sink() -> anyhow::Result<(Sink, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(postfix_tool("smtp-sink")?)
        .args(["-u", "postfix"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("1024")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting smtp-sink")?;
    let sink = Sink(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((sink, port))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<SmtpBenchReport> {
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let data_dir = dir.join("data");
    let _ = std::fs::remove_dir_all(&data_dir);
    let (_sink, port) = start_sink()?;

    let path = audience::write(&dir, args.recipients).context("writing the audience")?;
    let text = std::fs::read_to_string(&path)?.replace(
        "transport = \"null\"",
        &format!(
            "transport = \"smtp://127.0.0.1:{port}\"\nconnections = {}",
            args.connections
        ),
    );
    std::fs::write(&path, text)?;
    let campaign = Campaign::load(&path).map_err(|d| anyhow::anyhow!("{d}"))?;

    // smtp-source sends messages as large as Squall's on average.
    let sample: Vec<usize> = (0..10u64.min(args.recipients))
        .filter_map(|i| preview(&campaign, &i.to_string()).ok()?.request)
        .map(|r| r.len())
        .collect();
    anyhow::ensure!(
        !sample.is_empty(),
        "no recipient of the bench audience gets a message"
    );
    let message_bytes = sample.iter().sum::<usize>() / sample.len();

    eprintln!(
        "bench --smtp: {} recipients, {} connections, {message_bytes}-byte messages",
        args.recipients, args.connections
    );
    let started = Instant::now();
    let report = crate::pipeline::run(&campaign, RunOptions::new(data_dir))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let squall_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.complete && report.totals.failed == 0,
        "the SMTP run did not deliver everything: {} sent, {} failed",
        report.totals.sent,
        report.totals.failed
    );
    let messages = report.totals.sent;

    let started = Instant::now();
    let status = Command::new(postfix_tool("smtp-source")?)
        .arg("-s")
        .arg(args.connections.to_string())
        .arg("-m")
        .arg(messages.to_string())
        .arg("-l")
        .arg(message_bytes.to_string())
        .args(["-f", "news@example.com", "-t", "user@example.com"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .context("running smtp-source")?;
    anyhow::ensure!(status.success(), "smtp-source failed: {status}");
    let smtp_source_seconds = started.elapsed().as_secs_f64();

    let squall = messages as f64 / squall_seconds;
    let smtp_source = messages as f64 / smtp_source_seconds;
    let out = SmtpBenchReport {
        messages,
        connections: args.connections,
        message_bytes,
        squall,
        smtp_source,
        ratio: squall / smtp_source,
        squall_seconds,
        smtp_source_seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "SMTP, {} messages of {} bytes over {} connections:\n  squall run    {:>9.0} msg/s ({:.1} s)\n  smtp-source   {:>9.0} msg/s ({:.1} s)\n  ratio         {:>9.2}",
            out.messages,
            out.message_bytes,
            out.connections,
            out.squall,
            out.squall_seconds,
            out.smtp_source,
            out.smtp_source_seconds,
            out.ratio
        );
    }
    Ok(out)
}
