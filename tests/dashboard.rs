//! The dashboard in a real browser (Debian's Chromium driven by
//! playwright-core): while a campaign runs, the counters rise on the page;
//! clicking "Pause campaign" stops sending within seconds, as the store and
//! the outbox show. A screenshot is kept in `test-artifacts/`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::serve::{ADMIN, ANALYST, Serve, write_config};
use support::*;

fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let script = repo().join("tests/browser/dashboard.mjs");
    let modules = repo().join("tests/browser/node_modules/playwright-core");
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if modules.exists() && chromium.exists() {
        return Some((script, chromium));
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must install chromium and playwright-core (see .ci/run)"
    );
    eprintln!(
        "skipped: needs {} and `npm ci` in tests/browser",
        chromium.display()
    );
    None
}

#[test]
fn the_dashboard_shows_a_live_campaign_and_pauses_it() {
    let Some((script, chromium)) = browser_tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &data,
        "[[provider]]\nname = \"paced\"\nkind = \"outbox\"\nrate_per_second = 150\n",
    );
    let campaign = spring_sale_with_providers(
        dir.path(),
        4000,
        &["paced"],
        "\n[limits]\nbatch_size = 50\n",
    );
    let mut run = squall()
        .args(["run", "--json", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg(&campaign)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The campaign must exist in the store before the page looks for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox(&data).is_empty() {
        assert!(Instant::now() < deadline, "the run never started sending");
        std::thread::sleep(Duration::from_millis(100));
    }
    let serve = Serve::start(&config);
    let artifacts = repo().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let out = Command::new("node")
        .arg(&script)
        .arg(serve.url(""))
        .arg(ADMIN)
        .arg("spring-sale")
        .arg(&shot)
        .arg(ANALYST)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no result from the browser ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        r.get("error").is_none(),
        "browser: {r}\nserver: {}",
        serve.log()
    );
    assert!(r.get("page_error").is_none(), "the page threw: {r}");
    let samples: Vec<u64> = r["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        samples.len() >= 3 && samples.windows(2).all(|w| w[0] < w[1]),
        "counters rose live: {r}"
    );
    assert_eq!(r["state_before"], "sending");
    assert!(r["paused_seen_after_ms"].as_u64().unwrap() < 5000, "{r}");
    assert_eq!(r["resume_button"], true, "a paused campaign offers resume");
    assert_eq!(r["analyst_role"], "signed in as analyst");
    assert_eq!(r["analyst_buttons"], 0, "an analyst gets no controls: {r}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real screenshot"
    );

    // Against the store: sending stopped within seconds of the click.
    let mut last = outbox(&data).len();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = outbox(&data).len();
        if now == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sending did not stop after the click"
        );
        last = now;
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(outbox(&data).len(), last, "nothing sent while paused");
    let status = squall()
        .args(["status", "--json", "spring-sale", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["controls"][0]["state"], "paused", "{status}");
    assert_eq!(status["controls"][0]["reason"], "API (admin)");
    assert!(last < eligible_ids(&dir.path().join("audience.csv")).len());
    let _ = run.kill();
    let _ = run.wait();
}
