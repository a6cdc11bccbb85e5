//! Crash safety: a run interrupted by Ctrl-C or killed with `kill -9` at a
//! random point and run again finishes the campaign with every eligible
//! recipient in the outbox exactly once.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use rand::Rng;
use support::*;

fn start(campaign: &std::path::Path, data: &std::path::Path) -> std::process::Child {
    squall()
        .args(["run", "--json", "--data-dir"])
        .arg(data)
        .arg(campaign)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the outbox has at least `n` lines (the run is mid-campaign).
fn wait_for_outbox(data: &std::path::Path, n: usize, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let lines = std::fs::read_to_string(data.join("outbox.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= n {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached {n} messages"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A stop must be prompt; a hang is a failure, not a stuck test.
fn wait_at_most(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("squall did not exit within {limit:?} of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killed_and_interrupted_runs_resume_without_sending_anyone_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The whole example, in small batches so that a kill lands mid-batch.
    let campaign = spring_sale_copy(
        dir.path(),
        10_000,
        "outbox",
        "\n[limits]\nbatch_size = 50\n",
    );
    let expected = expected_spring_sale(&dir.path().join("audience.csv"));
    let eligible: Vec<&String> = expected
        .recipients
        .iter()
        .filter(|(_, (_, _, seg, _))| seg.is_some())
        .map(|(id, _)| id)
        .collect();
    let mut rng = rand::rng();

    // 1. kill -9 at a random point.
    let mut child = start(&campaign, &data);
    wait_for_outbox(&data, rng.random_range(200..3000), &mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let after_kill = outbox(&data).len();
    assert!(
        after_kill < eligible.len(),
        "the kill came too late to test anything"
    );

    // 2. Ctrl-C (SIGINT) at another point: a clean stop, exit code 3.
    let mut child = start(&campaign, &data);
    wait_for_outbox(&data, after_kill + rng.random_range(100..2000), &mut child);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    assert!(
        status.code() == Some(3) || status.success(),
        "Ctrl-C should stop cleanly, got {status:?}"
    );

    // 3. kill -9 once more, then run to the end.
    let mut child = start(&campaign, &data);
    std::thread::sleep(Duration::from_millis(rng.random_range(50..600)));
    let _ = child.kill();
    child.wait().unwrap();

    let (out, report) = run_json(&campaign, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["complete"], true);

    let lines = outbox(&data);
    let per_recipient = counts_by(&lines, |l| l["recipient_id"].as_str().unwrap().to_string());
    let twice: BTreeMap<_, _> = per_recipient.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let missing: Vec<_> = eligible
        .iter()
        .filter(|id| !per_recipient.contains_key(**id))
        .collect();
    assert!(
        missing.is_empty(),
        "never sent: {} recipients, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(lines.len(), eligible.len());
    // The outbox can always prove what it holds, so nothing is left in doubt.
    assert_eq!(report["in_doubt"], 0);
    assert_eq!(report["sent"], eligible.len() as u64);
    assert_eq!(report["rejected"], expected.rejected_lines.len() as u64);
}
