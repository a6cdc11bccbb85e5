//! The spring-sale example, end to end on the embedded defaults, checked
//! against an independent reading of its audience file.

mod support;

use std::collections::BTreeMap;

use support::*;

#[test]
fn spring_sale_runs_end_to_end_with_counts_matching_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let campaign = example("spring-sale").join("campaign.toml");
    let expected = expected_spring_sale(&example("spring-sale").join("audience.csv"));

    let (out, report) = run_json(&campaign, &data);
    assert!(
        out.status.success(),
        "squall run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Counts per segment, against the hand-written rules.
    let mut per_segment: BTreeMap<String, u64> = BTreeMap::new();
    let mut unsegmented = 0;
    for (_, _, seg, _) in expected.recipients.values() {
        match seg {
            Some(s) => *per_segment.entry(s.to_string()).or_default() += 1,
            None => unsegmented += 1,
        }
    }
    let eligible: u64 = per_segment.values().sum();
    assert!(
        eligible > 8_000,
        "the example should have thousands of eligible recipients"
    );
    assert_eq!(report["audience"], expected.rows);
    assert_eq!(report["rejected"], expected.rejected_lines.len() as u64);
    assert_eq!(report["unsegmented"], unsegmented);
    assert_eq!(
        report["per_segment"],
        serde_json::to_value(&per_segment).unwrap()
    );
    assert_eq!(report["sent"], eligible);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["dead_lettered"], 0);
    assert_eq!(report["complete"], true);

    // A/B: the two VIP variants split the segment about evenly, and the
    // report's per-variant counts are what the outbox holds.
    let vip = per_segment["vip"];
    let (a, b) = (
        report["per_variant"]["vip/a"].as_u64().unwrap(),
        report["per_variant"]["vip/b"].as_u64().unwrap(),
    );
    assert_eq!(a + b, vip);
    assert!(
        a * 10 > vip * 4 && b * 10 > vip * 4,
        "weights 1:1 should split near half: a={a} b={b}"
    );

    // Every outbox line: right recipient, right message, fully rendered.
    let lines = outbox(&data);
    assert_eq!(lines.len() as u64, eligible);
    let by_variant = counts_by(&lines, |l| {
        format!(
            "{}/{}",
            l["segment"].as_str().unwrap(),
            l["variant"].as_str().unwrap()
        )
    });
    assert_eq!(
        serde_json::to_value(&by_variant).unwrap(),
        report["per_variant"]
    );
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        let id = l["recipient_id"].as_str().unwrap();
        assert!(seen.insert(id.to_string()), "recipient {id} was sent twice");
        let (email, first, segment, orders) = &expected.recipients[id];
        assert_eq!(l["to"], email.as_str());
        assert_eq!(
            l["segment"],
            segment.expect("only segmented recipients are sent")
        );
        assert_eq!(l["campaign"], "spring-sale");
        assert_eq!(l["channel"], "email");
        let name = |fallback: &str| {
            if first.is_empty() {
                fallback.to_string()
            } else {
                first.clone()
            }
        };
        let subject = l["subject"].as_str().unwrap();
        let text = l["text"].as_str().unwrap();
        match (segment.unwrap(), l["variant"].as_str().unwrap()) {
            ("vip", "a") => {
                assert_eq!(subject, format!("{}, early access for you", name("there")));
                assert!(
                    text.contains(&format!("you have been with us for {orders} orders")),
                    "{text}"
                );
                let html = l["html"].as_str().unwrap();
                assert!(
                    html.contains(&format!("<p>Hi {},</p>", name("there"))),
                    "{html}"
                );
            }
            ("vip", "b") => assert_eq!(subject, "Your private spring sale starts now"),
            ("regulars", _) => {
                assert_eq!(subject, format!("Spring sale: 20% off, {}", name("friend")));
                assert!(
                    text.contains(&format!("shopping with us {orders} times")),
                    "{text}"
                );
            }
            ("newcomers", _) => assert_eq!(subject, "Welcome! Here is 10% off your first order"),
            other => panic!("unexpected message {other:?}"),
        }
        for field in ["subject", "text", "html"] {
            let v = l[field].as_str().unwrap_or("");
            assert!(
                !v.contains("{{") && !v.contains("{%"),
                "leftover template syntax in {field}: {v}"
            );
        }
    }

    // Rejects: listed with their lines and reasons.
    let rejects_file = report["rejects_file"].as_str().unwrap();
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(rejects_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines_rejected: Vec<u64> = rejects
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines_rejected, expected.rejected_lines);
    let reasons: Vec<&str> = rejects
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    for needle in [
        "not a valid email",
        "has 4 fields, the header has 9",
        "duplicate id `c00007`",
        "missing recipient id",
        "missing address",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no reject says {needle:?}: {reasons:?}"
        );
    }

    // Running it again sends nothing more: everything is already settled.
    let (out, again) = run_json(&campaign, &data);
    assert!(out.status.success());
    assert_eq!(again["sent"], eligible);
    assert_eq!(outbox(&data).len() as u64, eligible);
}

#[test]
fn preview_renders_one_recipient_with_its_mime_message() {
    let campaign = example("spring-sale").join("campaign.toml");
    let out = squall()
        .args(["preview", "--json", "--recipient", "c00001"])
        .arg(&campaign)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["segment"], "regulars");
    assert_eq!(p["subject"], "Spring sale: 20% off, Mateo");
    let mime = p["request"].as_str().unwrap();
    assert!(mime.contains("To: <customer1@example.com>"), "{mime}");
    assert!(
        mime.contains("List-Unsubscribe: <http://127.0.0.1:8080/u/"),
        "{mime}"
    );
    assert!(
        mime.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{mime}"
    );

    let missing = squall()
        .args(["preview", "--recipient", "nobody"])
        .arg(&campaign)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no recipient with id `nobody`"));
}

#[test]
fn a_jsonl_audience_over_sms_runs_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("people.jsonl"),
        concat!(
            "{\"id\": 1, \"phone\": \"+4915112345678\", \"name\": \"Ana\", \"points\": 120}\n",
            "{\"id\": 2, \"phone\": \"0151 nope\", \"name\": \"Ben\", \"points\": 80}\n",
            "not json at all\n",
            "{\"id\": 3, \"phone\": \"+33612345678\", \"points\": 20}\n",
        ),
    )
    .unwrap();
    let campaign = dir.path().join("campaign.toml");
    std::fs::write(
        &campaign,
        r#"
[campaign]
id = "points"
channel = "sms"

[audience]
source = "people.jsonl"

[[segment]]
name = "rich"
rule = "points >= 100"

[[segment]]
name = "rest"
rule = "true"

[[message]]
segment = "rich"
text = "{{ name | default: 'Hi' }}, you have {{ points }} points!"

[[message]]
segment = "rest"
text = "{{ name | default: 'Hi' }}, collect {{ 100 | minus: points }} more points."

[delivery]
from = "+15005550006"
endpoint = "https://sms.example.com/2010-04-01/Accounts/AC1/Messages.json"
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let (out, report) = run_json(&campaign, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["audience"], 4);
    assert_eq!(report["rejected"], 2);
    assert_eq!(report["sent"], 2);
    let mut lines = outbox(&data);
    lines.sort_by_key(|l| l["recipient_id"].as_str().unwrap().to_string());
    assert_eq!(lines[0]["to"], "+4915112345678");
    assert_eq!(lines[0]["channel"], "sms");
    assert_eq!(lines[0]["text"], "Ana, you have 120 points!");
    assert_eq!(lines[1]["recipient_id"], "3");
    assert_eq!(lines[1]["text"], "Hi, collect 80 more points.");
    let rejects = std::fs::read_to_string(report["rejects_file"].as_str().unwrap()).unwrap();
    assert!(
        rejects.contains("E.164") && rejects.contains("not valid JSON"),
        "{rejects}"
    );
}
