//! Pause, resume and cancel from the command line while `squall run` is
//! sending on the embedded queue and store: nothing is sent while paused,
//! resume goes on exactly where it stopped (every eligible recipient once),
//! and cancel drains the rest unsent and counts it. The same over SQS and
//! PostgreSQL with separate workers is in `distributed.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Run {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
}

/// A spring-sale copy sent through an outbox paced at `rate` messages a
/// second, so that a command lands mid-campaign.
fn start(rows: usize, rate: u32) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("squall.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n\n[[provider]]\nname = \"paced\"\nkind = \"outbox\"\nrate_per_second = {rate}\n"
        ),
    )
    .unwrap();
    // Small batches: a command lands between two of them.
    let campaign = spring_sale_with_providers(
        dir.path(),
        rows,
        &["paced"],
        "\n[limits]\nbatch_size = 50\n",
    );
    let child = squall()
        .args(["run", "--json", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg(&campaign)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
        .spawn()
        .unwrap();
    Run {
        dir,
        config,
        child: Some(child),
    }
}

impl Run {
    fn sent(&self) -> usize {
        outbox(&self.dir.path().join("data")).len()
    }

    fn wait_sent(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.sent() < n {
            assert!(Instant::now() < deadline, "never reached {n} sent");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self, args: &[&str]) -> String {
        let out = squall()
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.command(&["status", "--json", "spring-sale"])).unwrap()
    }

    fn finish(
        mut self,
    ) -> (
        serde_json::Value,
        Vec<serde_json::Value>,
        PathBuf,
        tempfile::TempDir,
    ) {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let log = std::fs::read_to_string(self.dir.path().join("run.log")).unwrap_or_default();
        assert!(out.status.success(), "run failed: {log}");
        let report = serde_json::from_slice(&out.stdout).unwrap();
        let lines = outbox(&self.dir.path().join("data"));
        let audience = self.dir.path().join("audience.csv");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (report, lines, audience, dir)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for sending to stop (a batch in flight when the command landed
/// may still finish) and checks it stays stopped.
fn assert_stays_stopped(run: &Run) -> usize {
    let mut last = run.sent();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = run.sent();
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "sending never stopped");
        last = now;
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run.sent(), last, "nothing is sent while paused");
    last
}

fn ids(lines: &[serde_json::Value]) -> std::collections::BTreeMap<String, usize> {
    counts_by(lines, |l| l["recipient_id"].as_str().unwrap().to_string())
        .into_iter()
        .map(|(k, v)| (k, v as usize))
        .collect()
}

#[test]
fn a_paused_run_sends_nothing_until_resumed_then_everyone_once() {
    let run = start(3000, 300);
    run.wait_sent(200);
    let said = run.command(&["pause", "spring-sale"]);
    assert!(said.contains("paused"), "{said}");
    let held_at = assert_stays_stopped(&run);
    let status = run.status();
    assert_eq!(status["controls"][0]["state"], "paused", "{status}");
    assert!(status["parked_batches"].as_u64().unwrap() > 0, "{status}");
    assert!(!status["complete"].as_bool().unwrap());

    run.command(&["resume", "spring-sale"]);
    let (report, lines, audience, _dir) = run.finish();
    assert!(held_at < lines.len(), "sending went on after the resume");
    let eligible = eligible_ids(&audience);
    let got = ids(&lines);
    assert!(got.values().all(|n| *n == 1), "nobody twice");
    assert_eq!(
        got.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        eligible,
        "nobody skipped"
    );
    assert_eq!(report["sent"], eligible.len() as u64, "{report}");
    assert_eq!(report["complete"], true);
}

#[test]
fn pausing_one_segment_holds_only_that_segment() {
    let run = start(2000, 300);
    run.wait_sent(50);
    run.command(&["pause", "spring-sale", "--segment", "regulars"]);
    // Wait until everything but the paused segment is out.
    let audience = run.dir.path().join("audience.csv");
    let expected = expected_spring_sale(&audience);
    let others = expected
        .recipients
        .values()
        .filter(|r| r.2.is_some_and(|s| s != "regulars"))
        .count();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = outbox(&run.dir.path().join("data"));
        let done = lines.iter().filter(|l| l["segment"] != "regulars").count();
        if done == others {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other segments did not finish: {done} of {others}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let regulars_at = assert_stays_stopped(&run);
    let status = run.status();
    assert!(status["parked_batches"].as_u64().unwrap() > 0);
    run.command(&["resume", "spring-sale", "--segment", "regulars"]);
    let (report, lines, audience, _dir) = run.finish();
    assert!(lines.len() > regulars_at);
    let got = ids(&lines);
    assert!(got.values().all(|n| *n == 1));
    assert_eq!(got.len(), eligible_ids(&audience).len(), "{report}");
}

#[test]
fn a_cancelled_run_drains_unsent_and_counts_it() {
    // At 100/s the rest would take about 25 s: batches waiting in the
    // store for their turns are drained at once, not when their turn comes.
    let run = start(3000, 100);
    run.wait_sent(200);
    let said = run.command(&["cancel", "spring-sale"]);
    let cancelled_at = Instant::now();
    assert!(said.contains("cancelled"), "{said}");
    let (report, lines, audience, _dir) = run.finish();
    let drained_in = cancelled_at.elapsed();
    assert!(
        drained_in < Duration::from_secs(10),
        "the cancel took {drained_in:?} to drain: {report}"
    );
    let eligible = eligible_ids(&audience).len() as u64;
    let sent = lines.len() as u64;
    let cancelled = report["cancelled"].as_u64().unwrap();
    assert!(cancelled > 0, "{report}");
    assert!(sent < eligible, "the cancel came too late: {report}");
    assert_eq!(report["sent"], sent);
    assert_eq!(
        sent + cancelled,
        eligible,
        "everyone eligible is sent or counted as cancelled: {report}"
    );
    assert!(ids(&lines).values().all(|n| *n == 1));
    // Final: a resume changes nothing, and says so.
    let again = squall()
        .args(["resume", "spring-sale", "--config"])
        .arg(_dir.path().join("squall.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("cancelled for good"));
}

#[test]
fn control_commands_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = squall()
        .args(["pause", "no-such-campaign", "--config"])
        .arg(write_empty_config(dir.path()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no campaign `no-such-campaign`"), "{err}");
}

fn write_empty_config(dir: &Path) -> PathBuf {
    let p = dir.join("squall.toml");
    std::fs::write(&p, "data_dir = \"data\"\n").unwrap();
    p
}

#[test]
fn an_unsubscribe_mid_campaign_stops_everything_after_it() {
    let run = start(2000, 300);
    run.wait_sent(100);
    // Everyone not sent yet unsubscribes (through the list the unsubscribe
    // link feeds): from the moment it lands, none of them gets anything.
    let sent: std::collections::BTreeSet<String> = outbox(&run.dir.path().join("data"))
        .iter()
        .map(|l| l["to"].as_str().unwrap().to_string())
        .collect();
    let audience = run.dir.path().join("audience.csv");
    let expected = expected_spring_sale(&audience);
    let later: Vec<String> = expected
        .recipients
        .values()
        .filter(|r| r.2.is_some() && !sent.contains(&r.0))
        .map(|r| r.0.clone())
        .collect();
    let list = run.dir.path().join("unsubscribed.txt");
    std::fs::write(&list, later.join("\n")).unwrap();
    run.command(&["suppress", "import", list.to_str().unwrap()]);
    let landed_at = run.sent();
    let (report, lines, _, _dir) = run.finish();
    let after: Vec<&serde_json::Value> = lines[landed_at..]
        .iter()
        .filter(|l| later.contains(&l["to"].as_str().unwrap().to_string()))
        .collect();
    // Batches already claimed when the list changed may still go; nothing
    // claimed after it does. With 50-message batches, at most two in flight.
    assert!(
        after.len() <= 100,
        "{} sent after the unsubscribe landed",
        after.len()
    );
    let suppressed = report["suppressed"].as_u64().unwrap();
    let later_sent = lines
        .iter()
        .filter(|l| later.contains(&l["to"].as_str().unwrap().to_string()))
        .count() as u64;
    assert_eq!(
        later_sent + suppressed,
        later.len() as u64,
        "each unsubscriber is sent (before) or suppressed: {report}"
    );
    assert!(suppressed > 0, "{report}");
    assert_eq!(
        report["sent"].as_u64().unwrap() + suppressed,
        eligible_ids(&audience).len() as u64,
        "everyone is sent or suppressed: {report}"
    );
}
