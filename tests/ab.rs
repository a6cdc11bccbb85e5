//! A/B winner selection with a fast fake clock: a test share of the
//! segment gets both variants; an engagement feed (opens through the real
//! `squall serve` pixel) where variant b clearly wins sends b to the rest;
//! with no difference the fallback applies. The decision and its numbers
//! are in `squall status`.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::serve::{Serve, client, find_url, write_config};
use support::*;

fn campaign(dir: &Path) -> std::path::PathBuf {
    let mut csv = String::from("id,email\n");
    for i in 0..400 {
        csv.push_str(&format!("r{i},r{i}@example.org\n"));
    }
    std::fs::write(dir.join("audience.csv"), csv).unwrap();
    let path = dir.join("campaign.toml");
    std::fs::write(
        &path,
        r#"
[campaign]
id = "subjects"
channel = "email"

[audience]
source = "audience.csv"

[[segment]]
name = "all"
rule = "true"

[[message]]
segment = "all"
variant = "a"
subject = "Our spring collection"
text = "Hello"
html = "<p>Hello</p>"

[[message]]
segment = "all"
variant = "b"
subject = "30% off, today only"
text = "Hello"
html = "<p>Hello</p>"

[delivery]
from = "Shop <news@example.com>"

[tracking]
track_opens = true

[ab]
test_share = 0.3
metric = "open_rate"
decide_after = "20h"
min_sample = 30
fallback = "a"

[limits]
batch_size = 25
"#,
    )
    .unwrap();
    path
}

/// Runs the campaign on a clock of an hour a second; `opens` is called
/// once the test share is out, with the server and the outbox so far.
fn run_with(
    opens: impl FnOnce(&Serve, &[serde_json::Value]),
) -> (serde_json::Value, Vec<serde_json::Value>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = campaign(dir.path());
    let data = dir.path().join("data");
    let run = squall()
        .args(["run", "--json", "--data-dir"])
        .arg(&data)
        .arg(&path)
        .env("SQUALL_FAKE_CLOCK", "2027-03-01T08:00:00Z*3600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The test share goes out at once; the rest waits for the decision.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let n = outbox(&data).len();
        if n > 60 && n == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test share never settled: {n}"
        );
        last = n;
    }
    let test_share = outbox(&data);
    assert!(
        test_share.len() < 200,
        "only the test share goes before the decision: {}",
        test_share.len()
    );
    let config = write_config(dir.path(), &data, "");
    let serve = Serve::start(&config);
    opens(&serve, &test_share);
    let out = run.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = squall()
        .args(["status", "--json", "subjects", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    (report, outbox(&data), status)
}

fn open_some(serve: &Serve, lines: &[serde_json::Value], variant: &str, share: f64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mine: Vec<&serde_json::Value> = lines.iter().filter(|l| l["variant"] == variant).collect();
    let n = (mine.len() as f64 * share).round() as usize;
    rt.block_on(async {
        for l in &mine[..n] {
            let pixel = find_url(l["html"].as_str().unwrap(), "http://127.0.0.1:8080/o/").unwrap();
            let path = &pixel["http://127.0.0.1:8080".len()..];
            let r = client().get(serve.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    });
}

#[test]
fn the_clearly_better_variant_goes_to_the_rest() {
    let (report, lines, status) = run_with(|serve, test| {
        open_some(serve, test, "b", 0.6);
        open_some(serve, test, "a", 0.05);
    });
    assert_eq!(report["sent"], 400, "{report}");
    let ids = counts_by(&lines, |l| l["recipient_id"].as_str().unwrap().to_string());
    assert!(ids.values().all(|n| *n == 1), "everyone once");
    let d = &status["ab_decisions"][0];
    assert_eq!(d["winner"], "b", "{status}");
    assert_eq!(d["basis"], "significant at 95%");
    assert!(d["z"].as_f64().unwrap() > 1.96);
    let by_variant = counts_by(&lines, |l| l["variant"].as_str().unwrap().to_string());
    assert!(by_variant["b"] > 300, "the rest got b: {by_variant:?}");
    assert!(by_variant["a"] < 100, "{by_variant:?}");
}

#[test]
fn without_a_significant_difference_the_fallback_goes_to_the_rest() {
    let (report, lines, status) = run_with(|serve, test| {
        open_some(serve, test, "a", 0.2);
        open_some(serve, test, "b", 0.22);
    });
    assert_eq!(report["sent"], 400, "{report}");
    let d = &status["ab_decisions"][0];
    assert_eq!(d["winner"], "a", "{status}");
    assert!(
        d["basis"]
            .as_str()
            .unwrap()
            .contains("no significant difference"),
        "{d}"
    );
    let by_variant = counts_by(&lines, |l| l["variant"].as_str().unwrap().to_string());
    assert!(by_variant["a"] > 300, "{by_variant:?}");
}
