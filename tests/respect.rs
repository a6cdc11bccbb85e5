//! Respecting people: a frequency cap across campaigns (global in
//! squall.toml, overridable per campaign), per-channel consent, and the
//! counts that say who was skipped and why.

mod support;

use std::path::{Path, PathBuf};

use support::*;

fn audience(dir: &Path, rows: usize) {
    let mut csv = String::from("id,email,email_opt_in\n");
    for i in 0..rows {
        csv.push_str(&format!("r{i},r{i}@example.org,{}\n", i % 5 != 0));
    }
    std::fs::write(dir.join("audience.csv"), csv).unwrap();
}

fn campaign(dir: &Path, id: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[campaign]
id = "{id}"
channel = "email"

[audience]
source = "audience.csv"
{extra}

[[segment]]
name = "all"
rule = "true"

[[message]]
segment = "all"
subject = "News from {id}"
text = "Hello"

[delivery]
from = "Shop <news@example.com>"
"#
        ),
    )
    .unwrap();
    path
}

fn run(campaign: &Path, data: &Path, config: &Path) -> serde_json::Value {
    let (out, report) = run_json_with(campaign, data, Some(config), &[]);
    assert!(out.status.success(), "{report}");
    report
}

#[test]
fn the_frequency_cap_counts_every_campaign_and_a_campaign_may_raise_it() {
    let dir = tempfile::tempdir().unwrap();
    audience(dir.path(), 50);
    let data = dir.path().join("data");
    let config = dir.path().join("squall.toml");
    std::fs::write(
        &config,
        "[frequency]\nmax_messages_per_recipient = { count = 2, per = \"7d\" }\n",
    )
    .unwrap();
    for id in ["first", "second"] {
        let r = run(&campaign(dir.path(), id, ""), &data, &config);
        assert_eq!(
            (r["sent"].clone(), r["capped"].clone()),
            (50.into(), 0.into()),
            "{r}"
        );
    }
    let third = run(&campaign(dir.path(), "third", ""), &data, &config);
    assert_eq!(third["sent"], 0, "everyone had their two: {third}");
    assert_eq!(third["capped"], 50);
    assert_eq!(third["complete"], true);
    let raised = campaign(
        dir.path(),
        "important",
        "\n[frequency]\nmax_messages_per_recipient = { count = 3, per = \"7d\" }\n",
    );
    let r = run(&raised, &data, &config);
    assert_eq!(
        (r["sent"].clone(), r["capped"].clone()),
        (50.into(), 0.into()),
        "{r}"
    );
    let lines = outbox(&data);
    let per_recipient = counts_by(&lines, |l| l["recipient_id"].as_str().unwrap().to_string());
    assert!(per_recipient.values().all(|n| *n == 3), "{per_recipient:?}");
}

#[test]
fn without_consent_on_the_channel_nobody_is_sent_and_everyone_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    audience(dir.path(), 40);
    let data = dir.path().join("data");
    let config = dir.path().join("squall.toml");
    std::fs::write(&config, "").unwrap();
    let c = campaign(dir.path(), "consented", "consent_field = \"email_opt_in\"");
    let r = run(&c, &data, &config);
    assert_eq!(r["no_consent"], 8, "every fifth has not opted in: {r}");
    assert_eq!(r["sent"], 32);
    assert!(outbox(&data).iter().all(|l| {
        let i: usize = l["recipient_id"].as_str().unwrap()[1..].parse().unwrap();
        !i.is_multiple_of(5)
    }));
    let bad = campaign(dir.path(), "typo", "consent_field = \"email_optin\"");
    let out = squall().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.toml:8:17: error: audience.consent_field `email_optin` is not a field"),
        "{err}"
    );
}
