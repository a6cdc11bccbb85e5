//! Send windows in each recipient's time zone, with a fast fake clock
//! (`SQUALL_FAKE_CLOCK`, an hour of campaign time per real second) instead
//! of waiting for a day: Auckland, Los Angeles on the day it springs
//! forward, Kolkata with its half-hour offset, and recipients without a
//! zone (the campaign's default). Every message goes inside its
//! recipient's local window, and everyone gets exactly one.

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use support::*;

const ZONES: [&str; 4] = [
    "Pacific/Auckland",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "",
];

fn campaign(dir: &std::path::Path, rows: usize) -> std::path::PathBuf {
    let mut csv = String::from("id,email,timezone\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "r{i},r{i}@example.org,{}\n",
            ZONES[i % ZONES.len()]
        ));
    }
    std::fs::write(dir.join("audience.csv"), csv).unwrap();
    let path = dir.join("campaign.toml");
    std::fs::write(
        &path,
        r#"
[campaign]
id = "lunchtime"
channel = "email"

[audience]
source = "audience.csv"

[[segment]]
name = "all"
rule = "true"

[[message]]
segment = "all"
subject = "Lunch deal"
text = "Hungry?"

[delivery]
from = "Shop <news@example.com>"

[schedule]
window = { from = "12:00", to = "13:30" }
timezone = "Europe/London"

[limits]
batch_size = 20
"#,
    )
    .unwrap();
    path
}

#[test]
fn every_message_goes_inside_its_recipients_local_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = campaign(dir.path(), 200);
    let data = dir.path().join("data");
    // 22:00Z on 13 March 2027: nowhere in lunchtime yet; Los Angeles
    // springs forward the next morning.
    let out = squall()
        .args(["run", "--json", "--data-dir"])
        .arg(&data)
        .arg(&path)
        .env("SQUALL_FAKE_CLOCK", "2027-03-13T22:00:00Z*3600")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["sent"], 200, "{report}");
    let lines = outbox(&data);
    let by_id = counts_by(&lines, |l| l["recipient_id"].as_str().unwrap().to_string());
    assert_eq!(by_id.len(), 200);
    assert!(by_id.values().all(|n| *n == 1), "nobody twice");

    let from = NaiveTime::from_hms_opt(12, 0, 0).unwrap();
    let to = NaiveTime::from_hms_opt(13, 30, 0).unwrap();
    let mut per_zone: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for l in &lines {
        let i: usize = l["recipient_id"].as_str().unwrap()[1..].parse().unwrap();
        let zone = match ZONES[i % ZONES.len()] {
            "" => "Europe/London",
            z => z,
        };
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        let at = Utc
            .timestamp_millis_opt(l["sent_at"].as_i64().unwrap())
            .unwrap();
        let local = at.with_timezone(&tz);
        assert!(
            (from..to).contains(&local.time()),
            "{} in {zone} was sent at {local}, outside 12:00–13:30",
            l["recipient_id"]
        );
        per_zone.entry(zone).or_default().push(at);
    }
    assert_eq!(per_zone.len(), 4, "{per_zone:?}");
    // Los Angeles on its daylight-saving day: noon is 19:00Z, not 20:00Z.
    for at in &per_zone["America/Los_Angeles"] {
        let local = at.with_timezone(&chrono_tz::America::Los_Angeles);
        assert_eq!(local.date_naive().to_string(), "2027-03-14");
        assert!(
            at.to_rfc3339().as_str() >= "2027-03-14T19:00:00+00:00",
            "{at}"
        );
        assert!(
            at.to_rfc3339().as_str() < "2027-03-14T20:30:00+00:00",
            "{at}"
        );
    }
    // Kolkata's lunch starts at 06:30Z (UTC+5:30).
    assert!(
        per_zone["Asia/Kolkata"]
            .iter()
            .all(|at| at.to_rfc3339().as_str() >= "2027-03-14T06:30:00+00:00")
    );
}

#[test]
fn schedule_mistakes_are_reported_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = campaign(dir.path(), 4);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "window = { from = \"12:00\", to = \"13:30\" }\ntimezone = \"Europe/London\"",
        "start = \"next monday\"\nwindow = { from = \"12:00\", to = \"25:00\" }\ntimezone = \"Mars/Olympus\"\ntimezone_field = \"tz\"",
    );
    std::fs::write(&path, text).unwrap();
    let out = squall().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for (needle, line) in [
        ("schedule.start `next monday`", 22),
        ("schedule.window: `25:00` is not a time of day", 23),
        ("schedule.timezone `Mars/Olympus`", 24),
        ("schedule.timezone_field `tz` is not a field", 25),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(needle) && l.contains(&format!("campaign.toml:{line}:"))),
            "`{needle}` at line {line}: {err}"
        );
    }
}

#[test]
fn a_dry_run_says_who_gets_what_and_when_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = campaign(dir.path(), 40);
    let data = dir.path().join("data");
    let config = dir.path().join("squall.toml");
    std::fs::write(&config, "data_dir = \"data\"\n").unwrap();
    let out = squall()
        .args(["suppress", "add", "r3@example.org", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = squall()
        .args([
            "run",
            "--dry-run",
            "--now",
            "2027-03-13T22:00:00Z",
            "--json",
            "--data-dir",
        ])
        .arg(&data)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["would_send"].clone(), r["suppressed"].clone()),
        (39.into(), 1.into()),
        "{r}"
    );
    assert_eq!(
        r["first_send_at"], "2027-03-13T23:00:00Z",
        "Auckland's noon first"
    );
    assert_eq!(
        r["last_send_at"], "2027-03-14T19:00:00Z",
        "Los Angeles' noon on its DST day last"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(r["file"].as_str().unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    let noon = NaiveTime::from_hms_opt(12, 0, 0).unwrap();
    for l in lines.iter().filter(|l| l["outcome"] == "send") {
        let i: usize = l["recipient_id"].as_str().unwrap()[1..].parse().unwrap();
        let zone: chrono_tz::Tz = match ZONES[i % ZONES.len()] {
            "" => "Europe/London",
            z => z,
        }
        .parse()
        .unwrap();
        let at = DateTime::parse_from_rfc3339(l["at"].as_str().unwrap()).unwrap();
        assert_eq!(at.with_timezone(&zone).time(), noon, "{l}");
    }
    assert_eq!(
        lines.iter().find(|l| l["to"] == "r3@example.org").unwrap()["outcome"],
        "suppressed"
    );
    assert!(outbox(&data).is_empty(), "a dry run sends nothing");
    // Nor does it record anything: the store has never heard of it.
    let status = squall()
        .args(["status", "lunchtime", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("never launched or run"));
}

#[test]
fn a_campaign_rate_spreads_sending_evenly() {
    let dir = tempfile::tempdir().unwrap();
    let path = spring_sale_copy(
        dir.path(),
        1200,
        "outbox",
        "\n[schedule]\nrate_per_second = 200\n",
    );
    let data = dir.path().join("data");
    let (out, report) = run_json(&path, &data);
    assert!(out.status.success(), "{report}");
    let mut at: Vec<i64> = outbox(&data)
        .iter()
        .map(|l| l["sent_at"].as_i64().unwrap())
        .collect();
    at.sort();
    let span_s = (at[at.len() - 1] - at[0]) as f64 / 1000.0;
    let measured = (at.len() - 1) as f64 / span_s;
    assert!(
        (measured - 200.0).abs() / 200.0 <= 0.05,
        "{measured:.1}/s for 200/s"
    );
    // Evenly: slices of a tenth of a second's worth, not batches of 500.
    let burst = counts_by(&outbox(&data), |l| l["sent_at"].to_string())
        .into_values()
        .max()
        .unwrap();
    assert!(burst <= 20, "{burst} messages went at the same instant");
}
