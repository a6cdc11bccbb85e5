//! `squall serve` against a real campaign run: signed tracking links
//! (forged and tampered ones refused, clicks only to the URL signed),
//! unsubscribes, SES feedback through SNS with real signatures, the
//! generic hook, conversion events, and what each API role may do.

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use support::serve::{ADMIN, ANALYST, EDITOR, Serve, client, find_url, write_config};
use support::*;

const BROWSER_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15";

/// A finished run of a spring-sale copy with tracking, and a server on its
/// store.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    serve: Serve,
    outbox: Vec<serde_json::Value>,
}

fn fixture(rows: usize, extra_config: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let data = path.join("data");
    let campaign = spring_sale_copy(&path, rows, "outbox", "");
    let (out, report) = run_json(&campaign, &data);
    assert!(out.status.success(), "run failed: {report}");
    let config = write_config(&path, &data, extra_config);
    let serve = Serve::start(&config);
    Fixture {
        outbox: outbox(&data),
        _dir: dir,
        dir: path,
        serve,
    }
}

/// `http://127.0.0.1:8080/c/TOKEN` (the campaign's base URL) → the same path
/// on the test's server.
fn on(serve: &Serve, url: &str) -> String {
    let path = url.split_once("://").unwrap().1;
    serve.url(&path[path.find('/').unwrap()..])
}

async fn get_json(url: &str, token: &str) -> (u16, serde_json::Value) {
    let r = client().get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn post_json(
    url: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    // `null`: no body at all.
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut req = client()
        .post(url)
        .body(text)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn stats(serve: &Serve) -> serde_json::Value {
    let (status, s) = get_json(&serve.url("/api/campaigns/spring-sale/stats"), ANALYST).await;
    assert_eq!(status, 200, "{s}");
    s
}

fn vip_lines(outbox: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    outbox
        .iter()
        .filter(|l| l["segment"] == "vip" && l["variant"] == "a")
        .collect()
}

#[tokio::test]
async fn tracking_links_count_once_and_refuse_forgeries() {
    let f = fixture(400, "");
    let vips = vip_lines(&f.outbox);
    assert!(vips.len() >= 3, "the copy has VIPs with the A variant");
    let html = vips[0]["html"].as_str().unwrap();
    let text = vips[0]["text"].as_str().unwrap();
    assert!(
        !html.contains("https://shop.example.com"),
        "HTML links go through the redirect: {html}"
    );
    assert!(
        !text.contains("https://shop.example.com"),
        "text links too: {text}"
    );
    let click = find_url(html, "http://127.0.0.1:8080/c/").expect("a click link");
    let pixel = find_url(html, "http://127.0.0.1:8080/o/").expect("an open pixel");
    let http = client();

    // A click goes to the signed URL, and only there.
    let r = http.get(on(&f.serve, &click)).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(
        r.headers()["location"],
        "https://shop.example.com/spring?from=email"
    );
    let token = click.rsplit('/').next().unwrap();
    let (payload, mac) = token.split_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut evil: serde_json::Value =
        serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
    evil[6] = "https://evil.example/phish".into();
    let forged_target = format!("{}.{mac}", b64.encode(evil.to_string()));
    let mut flipped = token.to_string().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let pixel_token = pixel.rsplit('/').next().unwrap();
    for bad in [
        forged_target.as_str(),
        std::str::from_utf8(&flipped).unwrap(),
        "not-a-token",
        &format!("{payload}.AAAAAAAAAAAAAAAAAAAAAA"),
        pixel_token, // an open token is no click token
    ] {
        let r = http
            .get(f.serve.url(&format!("/c/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "forged click {bad} must be refused");
        assert!(r.headers().get("location").is_none());
    }
    let r = http
        .get(f.serve.url(&format!("/o/{forged_target}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Opens: a person twice counts once; a privacy proxy is a machine.
    for _ in 0..2 {
        let r = http
            .get(on(&f.serve, &pixel))
            .header("user-agent", BROWSER_UA)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/gif");
        assert!(
            r.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("no-store")
        );
        assert_eq!(r.bytes().await.unwrap().len(), 43);
    }
    let other_pixel = find_url(
        vips[1]["html"].as_str().unwrap(),
        "http://127.0.0.1:8080/o/",
    )
    .unwrap();
    let r = http
        .get(on(&f.serve, &other_pixel))
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The same person clicks twice: one click.
    http.get(on(&f.serve, &click)).send().await.unwrap();

    // Unsubscribe: the page does nothing by itself; the one-click POST does.
    let unsubscribe = vips[2]["unsubscribe_url"].as_str().unwrap();
    let address = vips[2]["to"].as_str().unwrap();
    let page = http.get(on(&f.serve, unsubscribe)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("<form method=\"post\">") && page.contains(address),
        "{page}"
    );
    let (_, list) = get_json(&f.serve.url("/api/suppressions"), ANALYST).await;
    assert_eq!(list["count"], 0, "a GET unsubscribes nobody");
    let r = http
        .post(on(&f.serve, unsubscribe))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, list) = get_json(&f.serve.url("/api/suppressions"), ANALYST).await;
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["suppressions"][0]["address"], address.to_lowercase());
    assert_eq!(list["suppressions"][0]["reason"], "unsubscribed");

    let s = stats(&f.serve).await;
    let vip_a = &s["by_variant"]["vip/a"];
    assert_eq!(s["totals"]["opens"], 1, "{s}");
    assert_eq!(s["totals"]["machine_opens"], 1, "{s}");
    assert_eq!(s["totals"]["clicks"], 1, "{s}");
    assert_eq!(s["totals"]["unsubscribes"], 1, "{s}");
    assert_eq!(
        (vip_a["opens"].clone(), vip_a["clicks"].clone()),
        (1.into(), 1.into())
    );
    let sent = vip_a["sent"].as_u64().unwrap();
    assert_eq!(sent as usize, vips.len());
    assert!((vip_a["open_rate"].as_f64().unwrap() - 1.0 / sent as f64).abs() < 1e-9);
    assert_eq!(s["by_segment"]["vip"]["opens"], 1);
    assert_eq!(s["by_wave"]["0"]["clicks"], 1);
    let series_total: u64 = s["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["delivered"].as_u64().unwrap())
        .sum();
    assert_eq!(
        series_total,
        s["totals"]["sent"].as_u64().unwrap(),
        "the time series covers the run"
    );
    let vip_series: u64 = s["series_by_segment"]["vip"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["delivered"].as_u64().unwrap())
        .sum();
    assert_eq!(vip_series, s["by_segment"]["vip"]["sent"].as_u64().unwrap());
}

/// A private key and self-signed certificate standing in for AWS's SNS
/// signing certificate, served over HTTP from `dir`.
fn signing_cert(dir: &Path) {
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sns.test",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// Signs an SNS message the way SNS does (SignatureVersion 2: SHA256withRSA
/// over the canonical string).
fn sns_signed(
    dir: &Path,
    cert_url: &str,
    kind: &str,
    message: &str,
    extra: &[(&str, &str)],
) -> serde_json::Value {
    let mut m = serde_json::json!({
        "Type": kind,
        "MessageId": format!("sns-{:x}", rand_id(message)),
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-feedback",
        "Message": message,
        "Timestamp": "2026-12-04T10:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": cert_url,
    });
    for (k, v) in extra {
        m[*k] = (*v).into();
    }
    let field = |k: &str| m[k].as_str().unwrap_or("").to_string();
    let mut canonical = String::new();
    let names: &[&str] = if kind == "Notification" {
        &["Message", "MessageId", "Timestamp", "TopicArn", "Type"]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    for k in names {
        canonical.push_str(&format!("{k}\n{}\n", field(k)));
    }
    let input = dir.join("canonical.txt");
    std::fs::write(&input, canonical).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("key.pem"))
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    m["Signature"] = base64::engine::general_purpose::STANDARD
        .encode(out.stdout)
        .into();
    m
}

fn rand_id(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn ses_bounce(address: &str, message_id: &str) -> String {
    serde_json::json!({
        "notificationType": "Bounce",
        "bounce": {
            "feedbackId": "0100018c-bounce", "bounceType": "Permanent", "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": "2026-12-04T10:00:00.000Z", "remoteMtaIp": "203.0.113.7", "reportingMTA": "dsn; a27-1.smtp-out.eu-west-1.amazonses.com"
        },
        "mail": {
            "timestamp": "2026-12-04T09:59:58.000Z", "source": "news@example.com",
            "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/example.com",
            "messageId": "0100018c-ses-id", "destination": [address],
            "headersTruncated": false,
            "commonHeaders": {"from": ["Shop <news@example.com>"], "to": [address],
                "messageId": format!("<{message_id}@example.com>"), "subject": "Your private spring sale starts now"}
        }
    })
    .to_string()
}

fn ses_complaint(address: &str, message_id: &str) -> String {
    serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {
            "feedbackId": "0100018c-complaint", "complaintSubType": null,
            "complainedRecipients": [{"emailAddress": address}],
            "timestamp": "2026-12-04T10:05:00.000Z", "userAgent": "ExampleCorp Feedback Loop (V0.01)",
            "complaintFeedbackType": "abuse", "arrivalDate": "2026-12-04T10:04:00.000Z"
        },
        "mail": {
            "timestamp": "2026-12-04T09:59:58.000Z", "source": "news@example.com",
            "messageId": "0100018c-ses-id-2", "destination": [address],
            "commonHeaders": {"messageId": format!("<{message_id}@example.com>")}
        }
    })
    .to_string()
}

#[tokio::test]
async fn ses_bounces_and_complaints_through_sns_suppress_and_count_once() {
    let certs = tempfile::tempdir().unwrap();
    signing_cert(certs.path());
    std::fs::write(
        certs.path().join("confirm"),
        "<ConfirmSubscriptionResponse/>",
    )
    .unwrap();
    let port = free_port();
    let mut files = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(certs.path())
        .stderr(std::fs::File::create(certs.path().join("http.log")).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let f = fixture(
        300,
        &format!("[tracking]\nsns_trusted_urls = [\"{base}\"]\n"),
    );
    let cert_url = format!("{base}cert.pem");
    let hook = f.serve.url("/hooks/ses");

    // The subscription handshake: confirmed by fetching SubscribeURL.
    let confirm = sns_signed(
        certs.path(),
        &cert_url,
        "SubscriptionConfirmation",
        "You have chosen to subscribe…",
        &[
            ("SubscribeURL", &format!("{base}confirm")),
            ("Token", "2336412f37"),
        ],
    );
    let (status, body) = post_json(&hook, None, confirm).await;
    assert_eq!(status, 200, "{body}");
    let served = std::fs::read_to_string(certs.path().join("http.log")).unwrap();
    assert!(
        served.contains("GET /confirm"),
        "SubscribeURL was fetched: {served}"
    );

    let bounced = &f.outbox[0];
    let complained = &f.outbox[1];
    let bounce = sns_signed(
        certs.path(),
        &cert_url,
        "Notification",
        &ses_bounce(
            bounced["to"].as_str().unwrap(),
            bounced["message_id"].as_str().unwrap(),
        ),
        &[],
    );
    let (status, body) = post_json(&hook, None, bounce.clone()).await;
    assert_eq!(
        (status, body["recorded"].clone()),
        (200, 1.into()),
        "{body}"
    );
    // SNS delivers at least once: the same notification again is a duplicate.
    let (status, body) = post_json(&hook, None, bounce.clone()).await;
    assert_eq!(
        (status, body["duplicates"].clone()),
        (200, 1.into()),
        "{body}"
    );
    let complaint = sns_signed(
        certs.path(),
        &cert_url,
        "Notification",
        &ses_complaint(
            complained["to"].as_str().unwrap(),
            complained["message_id"].as_str().unwrap(),
        ),
        &[],
    );
    assert_eq!(post_json(&hook, None, complaint.clone()).await.0, 200);
    assert_eq!(post_json(&hook, None, complaint).await.0, 200);

    // Forgeries: a changed message under the old signature, a certificate
    // from anywhere else.
    let mut tampered = bounce.clone();
    tampered["Message"] = ses_bounce("ceo@example.com", "0").into();
    assert_eq!(post_json(&hook, None, tampered).await.0, 403);
    let elsewhere = sns_signed(
        certs.path(),
        "https://evil.example/cert.pem",
        "Notification",
        &ses_bounce("ceo@example.com", "0"),
        &[],
    );
    assert_eq!(post_json(&hook, None, elsewhere).await.0, 403);
    assert_eq!(
        post_json(&hook, None, serde_json::json!({"not": "sns"}))
            .await
            .0,
        400
    );

    let (_, list) = get_json(&f.serve.url("/api/suppressions"), ANALYST).await;
    let reasons: std::collections::BTreeMap<String, String> = list["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{list}");
    assert_eq!(
        reasons[&bounced["to"].as_str().unwrap().to_lowercase()],
        "hard-bounce"
    );
    assert_eq!(
        reasons[&complained["to"].as_str().unwrap().to_lowercase()],
        "complaint"
    );
    let s = stats(&f.serve).await;
    assert_eq!(
        (
            s["totals"]["bounces"].clone(),
            s["totals"]["complaints"].clone()
        ),
        (1.into(), 1.into()),
        "{s}"
    );
    let seg = bounced["segment"].as_str().unwrap();
    assert!(s["by_segment"][seg]["bounces"].as_u64().unwrap() >= 1);

    // The generic hook: admin only, JSON errors for bad input.
    let generic = f.serve.url("/hooks/generic");
    let third = &f.outbox[2];
    let event = serde_json::json!({"events": [{"type": "bounce", "bounce_type": "hard",
        "address": third["to"], "message_id": third["message_id"], "detail": "550 mailbox unavailable"}]});
    assert_eq!(
        post_json(&generic, Some(ANALYST), event.clone()).await.0,
        403
    );
    assert_eq!(post_json(&generic, None, event.clone()).await.0, 401);
    let (status, body) = post_json(&generic, Some(ADMIN), event.clone()).await;
    assert_eq!(
        (status, body["recorded"].clone()),
        (200, 1.into()),
        "{body}"
    );
    assert_eq!(
        post_json(&generic, Some(ADMIN), event).await.1["duplicates"],
        1
    );
    let (status, body) = post_json(
        &generic,
        Some(ADMIN),
        serde_json::json!({"events": [{"type": "bonce", "address": "x@y.z"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("bonce"), "{body}");
    assert_eq!(stats(&f.serve).await["totals"]["bounces"], 2);
    let _ = files.kill();
    let _ = files.wait();
}

#[tokio::test]
async fn conversions_are_idempotent_and_attributed_to_the_last_message() {
    let f = fixture(200, "");
    let line = &f.outbox[0];
    let recipient = line["recipient_id"].as_str().unwrap();
    let url = f.serve.url("/api/events");
    let event = serde_json::json!({"id": "order-1001", "type": "purchase", "recipient_id": recipient,
        "properties": {"amount": 59.9}});
    let (status, body) = post_json(&url, Some(ADMIN), event.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["attributed"]["campaign"], "spring-sale");
    assert_eq!(body["attributed"]["segment"], line["segment"]);
    let (status, body) = post_json(&url, Some(ADMIN), event).await;
    assert_eq!((status, body["duplicate"].clone()), (200, true.into()));
    // Outside the window (a year before the send): recorded, not attributed.
    let (_, body) = post_json(
        &url,
        Some(ADMIN),
        serde_json::json!({"id": "order-1", "type": "purchase",
        "recipient_id": recipient, "time": "2025-01-01T00:00:00Z"}),
    )
    .await;
    assert!(body["attributed"].is_null(), "{body}");
    for bad in [
        serde_json::json!({"id": "x", "type": "purchase"}),
        serde_json::json!({"id": "", "type": "purchase", "recipient_id": "r"}),
        serde_json::json!({"id": "y", "type": "purchase", "recipient_id": "r", "time": "yesterday"}),
    ] {
        let (status, body) = post_json(&url, Some(ADMIN), bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].is_string());
    }
    let s = stats(&f.serve).await;
    assert_eq!(s["goal"], "purchase");
    assert_eq!(s["totals"]["conversions"], 1, "{s}");
    let key = format!(
        "{}/{}",
        line["segment"].as_str().unwrap(),
        line["variant"].as_str().unwrap()
    );
    assert_eq!(s["by_variant"][&key]["conversions"], 1);
}

#[tokio::test]
async fn each_role_may_do_only_what_it_may() {
    let f = fixture(100, "");
    let campaign_file = f.dir.join("campaign.toml");
    let valid = serde_json::json!({ "path": campaign_file });
    // (method, path, body, least role): every endpoint of the API.
    let endpoints: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        ("GET", "/api/me", serde_json::Value::Null, "analyst"),
        ("GET", "/api/campaigns", serde_json::Value::Null, "analyst"),
        (
            "GET",
            "/api/campaigns/spring-sale",
            serde_json::Value::Null,
            "analyst",
        ),
        (
            "GET",
            "/api/campaigns/spring-sale/stats",
            serde_json::Value::Null,
            "analyst",
        ),
        (
            "GET",
            "/api/suppressions",
            serde_json::Value::Null,
            "analyst",
        ),
        ("GET", "/metrics", serde_json::Value::Null, "analyst"),
        ("POST", "/api/campaigns/validate", valid.clone(), "editor"),
        ("POST", "/api/campaigns", valid.clone(), "editor"),
        (
            "POST",
            "/api/campaigns/spring-sale/launch",
            valid.clone(),
            "admin",
        ),
        (
            "POST",
            "/api/campaigns/spring-sale/pause",
            serde_json::json!({"segment": "vip"}),
            "admin",
        ),
        (
            "POST",
            "/api/campaigns/spring-sale/resume",
            serde_json::json!({"segment": "vip"}),
            "admin",
        ),
        (
            "POST",
            "/api/suppressions",
            serde_json::json!({"addresses": ["nobody@example.org"]}),
            "admin",
        ),
        (
            "DELETE",
            "/api/suppressions/nobody@example.org",
            serde_json::Value::Null,
            "admin",
        ),
        (
            "POST",
            "/api/events",
            serde_json::json!({"id": "e1", "type": "purchase", "recipient_id": "nobody"}),
            "admin",
        ),
        (
            "POST",
            "/hooks/generic",
            serde_json::json!({"events": []}),
            "admin",
        ),
        (
            "POST",
            "/api/campaigns/spring-sale/cancel",
            serde_json::json!({"variant": "zz"}),
            "admin",
        ),
    ];
    let rank = |r: &str| {
        ["analyst", "editor", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    let http = client();
    for (method, path, body, least) in &endpoints {
        for (role, token) in [
            ("analyst", ANALYST),
            ("editor", EDITOR),
            ("admin", ADMIN),
            ("none", ""),
        ] {
            let mut req = http.request(method.parse().unwrap(), f.serve.url(path));
            if !token.is_empty() {
                req = req.bearer_auth(token);
            }
            if !body.is_null() {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            let expected_allowed = role != "none" && rank(role) >= rank(least);
            if role == "none" {
                assert_eq!(status, 401, "{method} {path} without a token: {text}");
            } else if expected_allowed {
                assert!(
                    status < 400,
                    "{role} may {method} {path}: got {status} {text}"
                );
            } else {
                assert_eq!(status, 403, "{role} may not {method} {path}: {text}");
                let err: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(err["error"].as_str().unwrap().contains(least), "{text}");
            }
        }
    }
    // Bad input is a 4xx with a JSON error, never a 500.
    let invalid = serde_json::json!({"toml": "[campaign]\nid = \"x\"\nchannel = \"pigeon\"\n", "base_dir": f.dir});
    let (status, body) = post_json(
        &f.serve.url("/api/campaigns/validate"),
        Some(EDITOR),
        invalid,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let d = &body["diagnostics"][0];
    assert_eq!(
        (d["file"].as_str(), d["line"].as_u64()),
        (Some("campaign.toml"), Some(3)),
        "{body}"
    );
    for (path, body) in [
        ("/api/campaigns/validate", "not json"),
        ("/api/campaigns/validate", "{}"),
        ("/api/campaigns/nope/pause", "{}"),
        ("/api/campaigns/spring-sale/pause", "{\"segmnt\": \"vip\"}"),
        (
            "/api/suppressions",
            "{\"addresses\": [\"a@b.c\"], \"reason\": \"bored\"}",
        ),
    ] {
        let r = http
            .post(f.serve.url(path))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(
            (400..500).contains(&status),
            "{path} {body}: {status} {text}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"].is_string(),
            "{text}"
        );
    }
    let (status, spec) = get_json(&f.serve.url("/api/openapi.json"), "").await;
    assert_eq!(status, 200);
    for (_, path, _, _) in &endpoints {
        let templated = path
            .replace("/spring-sale", "/{id}")
            .replace("/nobody@example.org", "/{address}");
        assert!(
            spec["paths"].get(&templated).is_some(),
            "{templated} documented in openapi.json"
        );
    }
    let metrics = http
        .get(f.serve.url("/metrics"))
        .bearer_auth(ANALYST)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "squall_messages_total",
        "squall_queue_depth",
        "squall_tracking_events_total",
        "squall_plugin_traps_total",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family}")),
            "{family} in {metrics}"
        );
    }
    assert!(
        metrics.contains(
            "squall_messages_total{campaign=\"spring-sale\",stage=\"send\",outcome=\"delivered\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_show_batch_latency_and_plugin_traps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let campaign = hostile_campaign(dir.path(), "trapping", "trap", "max_attempts = 2");
    let out = squall()
        .args(["run", "--json", "--data-dir"])
        .arg(&data)
        .arg(&campaign)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dead_lettered"], 3, "{report}");
    let serve = Serve::start(&write_config(dir.path(), &data, ""));
    let metrics = client()
        .get(serve.url("/metrics"))
        .bearer_auth(ANALYST)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{line_start}` in {metrics}"))
    };
    assert_eq!(
        value("squall_stage_failures_total{stage=\"segment\",cause=\"trap\"}"),
        2.0
    );
    assert_eq!(
        value("squall_batches_total{stage=\"segment\",result=\"failed\"}"),
        2.0
    );
    assert_eq!(
        value("squall_plugin_traps_total{campaign=\"trapping\",stage=\"segment\",cause=\"trap\"}"),
        3.0
    );
    assert_eq!(
        value("squall_batch_duration_seconds_count{stage=\"segment\"}"),
        2.0
    );
    assert!(
        metrics.contains("squall_batch_duration_seconds_bucket{stage=\"segment\",le=\"+Inf\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_campaign_created_on_one_server_launches_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let campaign = spring_sale_copy(dir.path(), 120, "outbox", "");
    let text = std::fs::read_to_string(&campaign)
        .unwrap()
        .replace("id = \"spring-sale\"", "id = \"api-made\"");
    let config = write_config(dir.path(), &data, "");
    let a = Serve::start(&config);
    let b = Serve::start(&config);
    let body = serde_json::json!({ "toml": text, "base_dir": dir.path() });
    let (status, created) = post_json(&a.url("/api/campaigns"), Some(EDITOR), body).await;
    assert_eq!(status, 201, "{created}");
    let (status, launched) = post_json(
        &b.url("/api/campaigns/api-made/launch"),
        Some(ADMIN),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{launched}");
    assert_eq!(launched["audience"], 120);
    assert_eq!(launched["queued_now"], 120);
    let (status, got) = get_json(&a.url("/api/campaigns/api-made"), ANALYST).await;
    assert_eq!(status, 200);
    assert!(
        got["definition"]["text"]
            .as_str()
            .unwrap()
            .contains("api-made")
    );
    assert_eq!(got["status"]["intake_finished"], true);
    let (status, _) = post_json(
        &b.url("/api/campaigns/never-made/launch"),
        Some(ADMIN),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn stats_have_a_time_series_per_provider() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &data,
        "[[provider]]\nname = \"files\"\nkind = \"outbox\"\n",
    );
    let campaign = spring_sale_with_providers(dir.path(), 300, &["files"], "");
    let (out, report) = run_json_with(&campaign, &data, Some(&config), &[]);
    assert!(out.status.success(), "{report}");
    let serve = Serve::start(&config);
    let s = stats(&serve).await;
    let series = s["series_by_provider"]["files"]
        .as_array()
        .expect("a series for the provider");
    let delivered: u64 = series
        .iter()
        .map(|p| p["delivered"].as_u64().unwrap())
        .sum();
    assert_eq!(delivered, report["sent"].as_u64().unwrap(), "{s}");
}

#[tokio::test]
async fn without_a_config_it_serves_the_local_store_and_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = spring_sale_copy(dir.path(), 50, "outbox", "");
    // A local `squall run` writes ./squall-data; `squall serve` reads it.
    let out = squall()
        .current_dir(dir.path())
        .args(["run", "--json"])
        .arg(&campaign)
        .output()
        .unwrap();
    assert!(out.status.success());
    let port = free_port();
    let mut child = squall()
        .current_dir(dir.path())
        .env_remove("SQUALL_CONFIG")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, me) = get_json(&format!("{url}/api/me"), "").await;
    assert_eq!(
        (status, me["role"].clone(), me["open"].clone()),
        (200, "admin".into(), true.into())
    );
    let (_, list) = get_json(&format!("{url}/api/campaigns"), "").await;
    assert_eq!(list["campaigns"][0]["id"], "spring-sale", "{list}");
    let _ = child.kill();
    let _ = child.wait();
    // Without tokens, anywhere but loopback is refused, with what to do.
    let out = squall()
        .current_dir(dir.path())
        .env_remove("SQUALL_CONFIG")
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to serve"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
