//! HTTP providers against a local server that records every request and
//! answers 429 or 500 when told to: the Twilio-compatible SMS form with
//! basic auth and its segment count, signed webhooks, `Retry-After`, and
//! the example custom sender plugin (Acme Notify) end to end.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use support::http::{Answer, Recorded, Recorder};
use support::*;

const SID: &str = "AC0123456789";
const TOKEN: &str = "twilio-test-token";
const KEY: &str = "webhook-signing-key";

fn write(path: &Path, text: &str) -> std::path::PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Checks `x-squall-signature: t=…,v1=…` the way a receiver would: an
/// HMAC-SHA256 over `t.body` with the shared key, `t` recent.
fn assert_signed(r: &Recorded, key: &str) {
    let header = r.header("x-squall-signature").expect("a signature header");
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("malformed signature {header}"));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(v1).unwrap())
        .expect("the signature verifies with the shared key");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t: u64 = t.parse().unwrap();
    assert!(
        now.abs_diff(t) < 120,
        "signature time {t} is not now ({now})"
    );
}

/// The accepted request of each key, and every request by key.
fn by_key(reqs: &[Recorded], key: impl Fn(&Recorded) -> String) -> BTreeMap<String, Vec<Recorded>> {
    let mut m: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    for r in reqs {
        m.entry(key(r)).or_default().push(r.clone());
    }
    m
}

fn sms_key(r: &Recorded) -> String {
    r.form().get("To").cloned().unwrap_or_default()
}

#[test]
fn sms_goes_out_as_a_twilio_form_with_basic_auth_and_retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    // Phones ending in 0 or 2 are rate limited once (429, Retry-After: 1);
    // ending in 5 hit a server error once (500); the rest go through.
    let server = Recorder::start(sms_key, |r, before| {
        let to = sms_key(r);
        match (to.chars().last(), before) {
            (Some('0' | '2'), 0) => Answer {
                status: 429,
                headers: vec![("retry-after", "1".into())],
            },
            (Some('5'), 0) => Answer {
                status: 500,
                headers: Vec::new(),
            },
            _ => Answer::ok(),
        }
    });
    let mut audience = String::new();
    let mut expected: HashMap<String, String> = HashMap::new();
    let long = "Spring sale: everything in the shop is 20% off until Sunday night, shipping is free above 30 EUR, and members get early access to the new collection. Reply STOP to opt out.";
    for i in 0..30 {
        let phone = format!("+49151000100{i:02}");
        let points = i * 10;
        audience.push_str(&format!(
            "{{\"id\": \"r{i}\", \"phone\": \"{phone}\", \"name\": \"N{i}\", \"points\": {points}}}\n"
        ));
        let text = if points >= 150 {
            format!("N{i}: {long}")
        } else {
            format!("N{i}, you have {points} points.")
        };
        expected.insert(phone, text);
    }
    write(&dir.path().join("people.jsonl"), &audience);
    let campaign = write(
        &dir.path().join("campaign.toml"),
        &format!(
            r#"
[campaign]
id = "sms-points"
channel = "sms"

[audience]
source = "people.jsonl"

[[segment]]
name = "rich"
rule = "points >= 150"

[[segment]]
name = "rest"
rule = "true"

[[message]]
segment = "rich"
text = "{{{{ name }}}}: {long}"

[[message]]
segment = "rest"
text = "{{{{ name }}}}, you have {{{{ points }}}} points."

[delivery]
providers = ["twilio"]
from = "+15005550006"
"#
        ),
    );
    let config = write(
        &dir.path().join("squall.toml"),
        &format!(
            r#"
[[provider]]
name = "twilio"
kind = "http-sms"
endpoint = "{}"
username_env = "TEST_TWILIO_SID"
password_env = "TEST_TWILIO_TOKEN"
concurrency = 4
attempts = 3
breaker = {{ failure_rate = 0.9, min_requests = 1000 }}
"#,
            server.url(&format!("/2010-04-01/Accounts/{SID}/Messages.json"))
        ),
    );
    let (out, report) = run_json_with(
        &campaign,
        &dir.path().join("data"),
        Some(&config),
        &[("TEST_TWILIO_SID", SID), ("TEST_TWILIO_TOKEN", TOKEN)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["sent"], 30, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["dead_lettered"], 0);

    let reqs = server.requests();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    let grouped = by_key(&reqs, sms_key);
    assert_eq!(grouped.len(), 30, "one recipient per phone");
    let mut retried_after_429 = 0;
    for (phone, attempts) in &grouped {
        let accepted: Vec<&Recorded> = attempts.iter().filter(|r| r.status == 201).collect();
        assert_eq!(accepted.len(), 1, "{phone} must be delivered exactly once");
        let ok = accepted[0];
        assert_eq!(ok.method, "POST");
        assert_eq!(ok.path, format!("/2010-04-01/Accounts/{SID}/Messages.json"));
        assert_eq!(
            ok.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(ok.header("authorization"), Some(basic.as_str()));
        let form = ok.form();
        assert_eq!(form["From"], "+15005550006");
        assert_eq!(&form["Body"], &expected[phone]);
        if let Some(first) = attempts.first().filter(|r| r.status == 429) {
            // Retry-After: 1 means no second try within that second.
            let waited = ok.at.duration_since(first.at);
            assert!(
                waited >= Duration::from_millis(995),
                "{phone} was retried {waited:?} after a 429 with Retry-After: 1"
            );
            retried_after_429 += 1;
        }
    }
    assert_eq!(retried_after_429, 6, "phones ending in 0 or 2");

    let p = provider(&report, "twilio");
    assert_eq!(p["kind"], "http-sms");
    assert_eq!(p["delivered"], 30);
    assert_eq!(p["transient"], 9, "six 429s and three 500s: {p}");
    assert_eq!(p["attempts"], reqs.len() as u64);
    // 15 long GSM-7 texts of two segments each, 15 short ones of one.
    assert_eq!(p["units"], 45, "{p}");
    assert_eq!(p["breaker"], "closed");
}

fn webhook_key(r: &Recorded) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| {
            v.get("message_id")
                .or_else(|| v.get("reference"))
                .and_then(|m| m.as_str().map(str::to_string))
        })
        .unwrap_or_default()
}

/// `squall run` with the webhook signing key in its environment.
fn run_signed(campaign: &Path, dir: &Path, config: &Path) -> serde_json::Value {
    let (out, report) = run_json_with(
        campaign,
        &dir.join("data"),
        Some(config),
        &[("TEST_WEBHOOK_KEY", KEY)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

fn webhook_provider(dir: &Path, name: &str, endpoint: &str) -> std::path::PathBuf {
    write(
        &dir.join("squall.toml"),
        &format!(
            r#"
[[provider]]
name = "{name}"
kind = "webhook"
endpoint = "{endpoint}"
secret_env = "TEST_WEBHOOK_KEY"
concurrency = 4
breaker = {{ failure_rate = 0.9, min_requests = 1000 }}
"#
        ),
    )
}

#[test]
fn webhooks_are_signed_and_a_500_is_retried_until_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    // Every fourth message meets a 500 on its first attempt.
    let server = Recorder::start(webhook_key, |r, before| {
        let id = webhook_key(r);
        if before == 0 && id.as_bytes().last().is_some_and(|b| b % 4 == 0) {
            Answer {
                status: 500,
                headers: Vec::new(),
            }
        } else {
            Answer::ok()
        }
    });
    let people = small_audience(dir.path(), 40);
    let campaign = webhook_campaign(dir.path(), "crm");
    let config = webhook_provider(dir.path(), "crm", &server.url("/hooks/squall"));
    let report = run_signed(&campaign, dir.path(), &config);
    assert_eq!(report["sent"], 40, "{report}");

    let reqs = server.requests();
    let grouped = by_key(&reqs, webhook_key);
    assert_eq!(grouped.len(), 40);
    let mut failed_first = 0;
    let mut seen = std::collections::BTreeSet::new();
    for attempts in grouped.values() {
        let accepted: Vec<&Recorded> = attempts.iter().filter(|r| r.status == 201).collect();
        assert_eq!(accepted.len(), 1, "each message delivered exactly once");
        failed_first += usize::from(attempts[0].status == 500);
        for r in attempts {
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, "/hooks/squall");
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_signed(r, KEY);
        }
        let doc = accepted[0].json();
        assert_eq!(doc["campaign"], "hooks");
        let id = doc["recipient_id"].as_str().unwrap().to_string();
        let i: usize = id[1..].parse().unwrap();
        assert_eq!(doc["subject"], format!("Hello Name{i}"));
        assert_eq!(doc["text"], format!("Your code is U{i}"));
        seen.insert(id);
    }
    assert_eq!(seen.len(), people.len());
    assert!(failed_first > 0, "the test needs some 500s");
    let p = provider(&report, "crm");
    assert_eq!(p["transient"], failed_first as u64, "{p}");
    assert_eq!(p["delivered"], 40);

    // A tampered body or another key does not verify.
    let mut forged = grouped.values().next().unwrap()[0].clone();
    forged.body.extend_from_slice(b" ");
    let tampered = std::panic::catch_unwind(|| assert_signed(&forged, KEY));
    assert!(tampered.is_err(), "a changed body must not verify");
}

fn acme_campaign(dir: &Path, from: &str) -> std::path::PathBuf {
    std::fs::copy(acme_gateway_plugin(), dir.join("acme.wasm")).unwrap();
    write(
        &dir.join("campaign.toml"),
        &format!(
            r#"
[campaign]
id = "acme-news"
channel = "webhook"

[audience]
source = "audience.csv"
address_field = "email"

[[segment]]
name = "all"
rule = "true"

[[message]]
segment = "all"
subject = "News for {{{{ name }}}}"
text = "Hello {{{{ name }}}}, here is what is new."

[delivery]
plugin = "acme.wasm"
providers = ["acme"]
from = "{from}"
"#
        ),
    )
}

#[test]
fn the_example_custom_sender_plugin_delivers_a_campaign_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Recorder::start(webhook_key, |_, _| Answer::ok());
    let people = small_audience(dir.path(), 25);
    let campaign = acme_campaign(dir.path(), "shop-news");
    let config = webhook_provider(dir.path(), "acme", &server.url("/"));

    let report = run_signed(&campaign, dir.path(), &config);
    assert_eq!(report["sent"], 25, "{report}");
    assert_eq!(report["failed"], 0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 25, "one request per recipient, nothing retried");
    let mut recipients: Vec<String> = Vec::new();
    for r in &reqs {
        // The plugin built a path; the host resolved it against the
        // provider's endpoint and signed it.
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/messages");
        assert_signed(r, KEY);
        let doc = r.json();
        assert_eq!(doc["profile"], "shop-news");
        assert_eq!(doc["tags"]["campaign"], "acme-news");
        assert_eq!(
            r.header("idempotency-key"),
            doc["reference"].as_str(),
            "the message id is the idempotency key"
        );
        let email = doc["recipient"].as_str().unwrap().to_string();
        let i: usize = email
            .trim_start_matches("user")
            .trim_end_matches("@example.org")
            .parse()
            .unwrap();
        assert_eq!(doc["title"], format!("News for Name{i}"));
        assert_eq!(doc["body"], format!("Hello Name{i}, here is what is new."));
        recipients.push(email);
    }
    recipients.sort();
    let mut want: Vec<String> = people.into_iter().map(|(_, e)| e).collect();
    want.sort();
    assert_eq!(recipients, want);

    // Run again: the campaign is done, nothing goes out twice.
    let report = run_signed(&campaign, dir.path(), &config);
    assert_eq!(report["sent"], 25, "{report}");
    assert_eq!(server.requests().len(), 25);
}

#[test]
fn the_plugins_own_checks_are_shown_at_the_campaign_files_line() {
    let dir = tempfile::tempdir().unwrap();
    small_audience(dir.path(), 2);
    let campaign = acme_campaign(dir.path(), "Shop <news@example.com>");
    let config = webhook_provider(dir.path(), "acme", "http://127.0.0.1:9/");
    let out = squall()
        .arg("validate")
        .arg(&campaign)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = std::fs::read_to_string(&campaign)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("from = "))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("campaign.toml:{line}:"))
            && err.contains("Acme Notify needs a sender profile"),
        "{err}"
    );
}

#[test]
fn a_campaign_naming_an_unknown_provider_is_invalid_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = spring_sale_with_providers(dir.path(), 20, &["primary", "nowhere"], "");
    let config = write(
        &dir.path().join("squall.toml"),
        "[[provider]]\nname = \"primary\"\nkind = \"smtp\"\nendpoint = \"smtp://127.0.0.1:9\"\ntls = \"none\"\n",
    );
    let out = squall()
        .arg("validate")
        .arg(&campaign)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("provider `nowhere` is not defined in squall.toml; it defines `primary`"),
        "{err}"
    );
}
