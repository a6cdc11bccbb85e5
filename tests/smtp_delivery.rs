//! Real SMTP: a campaign through `smtp://` to Postfix's smtp-sink.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

struct Sink {
    child: Child,
    port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// smtp-sink from Debian's `postfix` package, dumping each message to `dump`.
fn smtp_sink(dump: &Path, extra: &[&str]) -> Sink {
    smtp_sink_on(free_port(), dump, extra)
}

fn smtp_sink_on(port: u16, dump: &Path, extra: &[&str]) -> Sink {
    let bin = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("smtp-sink is missing: install Debian's `postfix` package (.ci/run does)");
    std::fs::create_dir_all(dump).unwrap();
    // smtp-sink drops root privileges to this user; it must be able to write.
    Command::new("chmod")
        .arg("0777")
        .arg(dump)
        .status()
        .unwrap();
    let child = Command::new(bin)
        .args(["-u", "postfix", "-d"])
        .arg(format!("{}/%M.", dump.display()))
        .args(extra)
        .arg(format!("127.0.0.1:{port}"))
        .arg("256")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "smtp-sink did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Sink { child, port }
}

fn dumped(dump: &Path) -> Vec<String> {
    std::fs::read_dir(dump)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect()
}

#[test]
fn a_campaign_over_smtp_delivers_every_message_to_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let sink = smtp_sink(&dump, &[]);
    let campaign = spring_sale_copy(
        dir.path(),
        1_500,
        &format!("smtp://127.0.0.1:{}", sink.port),
        "",
    );
    let expected = expected_spring_sale(&dir.path().join("audience.csv"));
    let eligible = expected
        .recipients
        .values()
        .filter(|r| r.2.is_some())
        .count();

    let (out, report) = run_json(&campaign, &dir.path().join("data"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["sent"], eligible as u64);
    assert_eq!(report["failed"], 0);

    // smtp-sink writes each message when its transaction ends; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dumped(&dump).len() < eligible && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let messages = dumped(&dump);
    assert_eq!(
        messages.len(),
        eligible,
        "the sink received a different number of messages"
    );
    let sample = messages
        .iter()
        .find(|m| m.contains("Subject:"))
        .expect("a message with headers");
    assert!(
        sample.contains("List-Unsubscribe: <http://127.0.0.1:8080/u/"),
        "{sample}"
    );
    assert!(
        sample.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{sample}"
    );
    assert!(
        sample.contains("From: \"Shop\" <news@example.com>"),
        "{sample}"
    );
    assert!(sample.contains("Message-ID: <"), "{sample}");
}

#[test]
fn a_sink_that_rejects_with_5xx_fails_messages_for_good_and_does_not_retry() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let sink = smtp_sink(&dump, &["-f", "RCPT"]);
    let campaign = spring_sale_copy(
        dir.path(),
        40,
        &format!("smtp://127.0.0.1:{}", sink.port),
        "",
    );
    let (out, report) = run_json(&campaign, &dir.path().join("data"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eligible = expected_spring_sale(&dir.path().join("audience.csv"))
        .recipients
        .values()
        .filter(|r| r.2.is_some())
        .count();
    assert_eq!(report["sent"], 0);
    assert_eq!(report["failed"], eligible as u64);
    assert_eq!(report["dead_lettered"], 0);
}

/// tests/servers/flaky_smtp.py (aiosmtpd): turns the recipients whose
/// address ends in an even digit away with a 4xx once (`flaky`) or a
/// 550 5.1.1 always (`unknown`), and logs what it accepts.
struct FaultyServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn faulty_smtp(dir: &Path, mode: &str) -> FaultyServer {
    faulty_smtp_with(dir, mode, &[])
}

fn faulty_smtp_with(dir: &Path, mode: &str, extra: &[&Path]) -> FaultyServer {
    let port = free_port();
    let log = dir.join(format!("{mode}-accepted.jsonl"));
    let child = Command::new("python3")
        .arg(repo().join("tests/servers/flaky_smtp.py"))
        .arg(port.to_string())
        .arg(&log)
        .arg(mode)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("start python3 tests/servers/flaky_smtp.py (needs `pip install aiosmtpd`; .ci/run does)");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "flaky_smtp.py did not start (is aiosmtpd installed?)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    FaultyServer { child, port, log }
}

fn accepted(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn even_address(a: &str) -> bool {
    let local = a.split('@').next().unwrap();
    local
        .chars()
        .last()
        .and_then(|c| c.to_digit(10))
        .is_some_and(|d| d % 2 == 0)
}

fn eligible_addresses(dir: &Path) -> Vec<String> {
    expected_spring_sale(&dir.join("audience.csv"))
        .recipients
        .values()
        .filter(|r| r.2.is_some())
        .map(|r| r.0.clone())
        .collect()
}

#[test]
fn a_server_that_answers_4xx_to_part_of_the_traffic_gets_every_message_once_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = faulty_smtp(dir.path(), "flaky");
    let campaign = spring_sale_copy(
        dir.path(),
        300,
        &format!("smtp://127.0.0.1:{}", server.port),
        "",
    );
    let eligible = eligible_addresses(dir.path());
    let turned_away = eligible.iter().filter(|a| even_address(a)).count();
    assert!(turned_away > 50, "the test needs traffic to turn away");

    let (out, report) = run_json(&campaign, &dir.path().join("data"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["sent"], eligible.len() as u64, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["dead_lettered"], 0);

    let got = accepted(&server.log);
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|l| l["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got.len(),
        eligible.len(),
        "one delivery per eligible recipient"
    );
    assert_eq!(ids.len(), got.len(), "no message delivered twice");
    // The 4xx were retried by the host, each counted once as transient.
    let p = provider(&report, &format!("smtp://127.0.0.1:{}", server.port));
    assert_eq!(p["transient"], turned_away as u64, "{p}");
    assert_eq!(p["delivered"], eligible.len() as u64);
    assert_eq!(p["breaker"], "closed");
}

#[test]
fn a_hard_bounce_suppresses_the_address_for_every_later_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = faulty_smtp(dir.path(), "unknown");
    let campaign = spring_sale_copy(
        dir.path(),
        200,
        &format!("smtp://127.0.0.1:{}", server.port),
        "",
    );
    let eligible = eligible_addresses(dir.path());
    let bouncing: Vec<&String> = eligible.iter().filter(|a| even_address(a)).collect();
    let (out, report) = run_json(&campaign, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["failed"], bouncing.len() as u64, "{report}");
    assert_eq!(report["sent"], (eligible.len() - bouncing.len()) as u64);
    assert_eq!(accepted(&server.log).len(), eligible.len() - bouncing.len());

    let list = squall()
        .args(["suppress", "list", "--json"])
        .env("SQUALL_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    let mut suppressed: Vec<&str> = list
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    suppressed.sort();
    let mut want: Vec<&str> = bouncing.iter().map(|a| a.as_str()).collect();
    want.sort();
    assert_eq!(suppressed, want);
    assert!(list.iter().all(|s| s["reason"] == "hard-bounce"
        && s["campaign"] == "spring-sale"
        && s["detail"].as_str().unwrap().contains("5.1.1")));

    // The next campaign, through a server that would take everything,
    // sends the bounced addresses nothing.
    let sink_dump = dir.path().join("dump");
    let sink = smtp_sink(&sink_dump, &[]);
    let text = std::fs::read_to_string(&campaign)
        .unwrap()
        .replace("id = \"spring-sale\"", "id = \"summer-sale\"")
        .replace(
            &format!("smtp://127.0.0.1:{}", server.port),
            &format!("smtp://127.0.0.1:{}", sink.port),
        );
    std::fs::write(&campaign, text).unwrap();
    let (out, report) = run_json(&campaign, &data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["suppressed"], bouncing.len() as u64, "{report}");
    assert_eq!(report["sent"], (eligible.len() - bouncing.len()) as u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dumped(&sink_dump).len() < eligible.len() - bouncing.len()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let delivered = dumped(&sink_dump);
    assert_eq!(delivered.len(), eligible.len() - bouncing.len());
    for a in &bouncing {
        assert!(
            !delivered
                .iter()
                .any(|m| m.contains(&format!("To: <{a}>")) || m.contains(&format!("To: {a}"))),
            "{a} bounced before and must not be sent to again"
        );
    }
}

fn message_ids(dump: &Path) -> Vec<String> {
    dumped(dump)
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_string))
        })
        .collect()
}

/// Two smtp-sinks as `primary` and `backup` providers, throttled so that
/// the campaign takes some seconds. The primary is killed mid-campaign and
/// started again: its breaker opens, traffic moves to the backup, a
/// half-open probe finds the primary back and traffic returns to it.
#[test]
fn when_the_primary_dies_the_backup_takes_over_and_the_primary_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (dump_a, dump_a2, dump_b) = (
        dir.path().join("primary"),
        dir.path().join("primary-again"),
        dir.path().join("backup"),
    );
    let port_a = free_port();
    let primary = smtp_sink_on(port_a, &dump_a, &[]);
    let backup = smtp_sink(&dump_b, &[]);
    let provider = |name: &str, port: u16| {
        format!(
            r#"
[[provider]]
name = "{name}"
kind = "smtp"
endpoint = "smtp://127.0.0.1:{port}"
tls = "none"
rate_per_second = 150
concurrency = 4
timeout = "2s"
attempts = 2
breaker = {{ failure_rate = 0.5, min_requests = 4, window = "3s", cooldown = "500ms" }}
"#
        )
    };
    let config = dir.path().join("squall.toml");
    std::fs::write(
        &config,
        provider("primary", port_a) + &provider("backup", backup.port),
    )
    .unwrap();
    let campaign = spring_sale_with_providers(dir.path(), 3_000, &["primary", "backup"], "");
    let eligible = eligible_addresses(dir.path());

    let child = squall()
        .args(["run", "--json", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(&campaign)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("the primary to carry traffic", &|| {
        dumped(&dump_a).len() >= 300
    });
    drop(primary);
    let at_kill = dumped(&dump_b).len();
    wait_for("the backup to take over", &|| {
        dumped(&dump_b).len() >= at_kill + 300
    });
    let primary_again = smtp_sink_on(port_a, &dump_a2, &[]);
    wait_for("traffic to return to the primary", &|| {
        !dumped(&dump_a2).is_empty()
    });

    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sent"], eligible.len() as u64, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["dead_lettered"], 0);

    // Every eligible recipient exactly once, across the three sinks.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let all = || {
        let mut ids = message_ids(&dump_a);
        ids.extend(message_ids(&dump_a2));
        ids.extend(message_ids(&dump_b));
        ids
    };
    while all().len() < eligible.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ids = all();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        eligible.len(),
        "every eligible recipient got a message"
    );
    assert_eq!(ids.len(), eligible.len(), "nobody got one twice");
    assert!(
        dumped(&dump_a2).len() > 100,
        "the primary carried traffic again"
    );

    let p = support::provider(&report, "primary");
    assert_eq!(p["breaker"], "closed", "{p}");
    assert!(p["transient"].as_u64().unwrap() > 0, "{p}");
    let b = support::provider(&report, "backup");
    assert_eq!(b["breaker"], "closed", "{b}");
    assert_eq!(
        p["delivered"].as_u64().unwrap() + b["delivered"].as_u64().unwrap(),
        eligible.len() as u64
    );
    drop(primary_again);
}

/// A provider with `dkim` signs every message; a receiver's DKIM check
/// (dkimpy, with the public key instead of DNS) passes on each one.
#[test]
fn dkim_signed_mail_verifies_at_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success());
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD.encode(&public.stdout);

    let dump = dir.path().join("dump");
    let sink = smtp_sink(&dump, &[]);
    let config = dir.path().join("squall.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[provider]]
name = "signed"
kind = "smtp"
endpoint = "smtp://127.0.0.1:{}"
tls = "none"
dkim = {{ domain = "example.com", selector = "s2027", private_key_file = "{}" }}
"#,
            sink.port,
            key.display()
        ),
    )
    .unwrap();
    let campaign = spring_sale_with_providers(dir.path(), 30, &["signed"], "");
    let eligible = eligible_addresses(dir.path());
    let (out, report) = run_json_with(&campaign, &dir.path().join("data"), Some(&config), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["sent"], eligible.len() as u64, "{report}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dumped(&dump).len() < eligible.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), eligible.len());
    let verified = Command::new("python3")
        .arg(repo().join("tests/servers/dkim_verify.py"))
        .arg(&public)
        .args(&files)
        .output()
        .expect("python3 tests/servers/dkim_verify.py (needs `pip install dkimpy`; .ci/run does)");
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&verified.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), files.len());
    for r in &results {
        assert_eq!(r["ok"], true, "DKIM does not verify: {r}");
        assert_eq!(r["d"], "example.com");
        assert_eq!(r["s"], "s2027");
    }
    // The check is real: a changed subject no longer verifies.
    let tampered = dir.path().join("tampered");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(
        &tampered,
        text.replacen("Subject: ", "Subject: FREE MONEY ", 1),
    )
    .unwrap();
    let again = Command::new("python3")
        .arg(repo().join("tests/servers/dkim_verify.py"))
        .arg(&public)
        .arg(&tampered)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("\"ok\": false"));
}

/// Both providers down from the start: nothing is dropped or dead-lettered
/// (a batch may be tried only once here), `squall status` says why sending
/// waits, and everything goes out once a provider is back.
#[test]
fn when_every_provider_is_down_messages_wait_and_status_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let provider = |name: &str, port: u16| {
        format!(
            r#"
[[provider]]
name = "{name}"
kind = "smtp"
endpoint = "smtp://127.0.0.1:{port}"
tls = "none"
attempts = 1
timeout = "2s"
breaker = {{ failure_rate = 0.5, min_requests = 2, cooldown = "300ms" }}
"#
        )
    };
    let config = dir.path().join("squall.toml");
    std::fs::write(
        &config,
        provider("primary", port_a) + &provider("backup", port_b),
    )
    .unwrap();
    let campaign = spring_sale_with_providers(
        dir.path(),
        400,
        &["primary", "backup"],
        "\n[limits]\nmax_attempts = 1\n",
    );
    let eligible = eligible_addresses(dir.path());
    let data = dir.path().join("data");
    let child = squall()
        .args(["run", "--json", "--data-dir"])
        .arg(&data)
        .arg(&campaign)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `None` until the run has opened the campaign.
    let last_error = std::cell::RefCell::new(String::new());
    let try_status = || {
        let out = squall()
            .args(["status", "--json", "spring-sale"])
            .env("SQUALL_DATA_DIR", &data)
            .output()
            .unwrap();
        if !out.status.success() {
            *last_error.borrow_mut() = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    };
    let status = || try_status().expect("squall status answers once the run is going");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let s = try_status().unwrap_or_default();
        if s["waiting"].is_string() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never said why: {s}; last error: {}",
            last_error.borrow()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let why = waiting["waiting"].as_str().unwrap();
    assert!(why.contains("no provider is available"), "{why}");
    assert!(
        why.contains("`primary`") && why.contains("`backup`"),
        "{why}"
    );
    assert_eq!(waiting["sent"], 0);
    assert_eq!(waiting["dead_lettered"], 0, "{waiting}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status()["dead_lettered"], 0, "waiting is not failing");

    // The backup comes up: everything goes out, once.
    let dump = dir.path().join("dump");
    let _backup = smtp_sink_on(port_b, &dump, &[]);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sent"], eligible.len() as u64, "{report}");
    assert_eq!(report["dead_lettered"], 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dumped(&dump).len() < eligible.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ids = message_ids(&dump);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (eligible.len(), eligible.len()));
    assert!(status()["waiting"].is_null());
}

/// A relay that insists on STARTTLS and AUTH, with a certificate from a
/// private CA: a provider with `tls = "required"`, the CA in
/// `tls_ca_file` and credentials from the environment gets every message
/// through, encrypted and logged in.
#[test]
fn starttls_and_auth_with_credentials_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    // A private CA and a server certificate it signed, as an internal
    // relay would have.
    let p = |f: &str| dir.path().join(f);
    let (ca, ca_key, cert, key) = (p("ca.pem"), p("ca.key"), p("cert.pem"), p("key.pem"));
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    openssl(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=Squall test CA"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    openssl(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=localhost"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        p("leaf.csr").as_os_str(),
    ]);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-days"),
        os("1"),
        os("-in"),
        p("leaf.csr").as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-extfile"),
        p("leaf.ext").as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
    let server = faulty_smtp_with(dir.path(), "tls-auth", &[&cert, &key]);
    let config = dir.path().join("squall.toml");
    let provider = |user_env: &str| {
        format!(
            r#"
[[provider]]
name = "relay"
kind = "smtp"
endpoint = "smtp://localhost:{}"
tls = "required"
tls_ca_file = "{}"
username_env = "{user_env}"
password_env = "TEST_SMTP_PASSWORD"
attempts = 1
"#,
            server.port,
            ca.display()
        )
    };
    std::fs::write(&config, provider("TEST_SMTP_USER")).unwrap();
    let campaign = spring_sale_with_providers(dir.path(), 40, &["relay"], "");
    let eligible = eligible_addresses(dir.path());
    let (out, report) = run_json_with(
        &campaign,
        &dir.path().join("data"),
        Some(&config),
        &[
            ("TEST_SMTP_USER", "squall"),
            ("TEST_SMTP_PASSWORD", "s3cret"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["sent"], eligible.len() as u64, "{report}");
    let got = accepted(&server.log);
    assert_eq!(got.len(), eligible.len());
    assert!(
        got.iter()
            .all(|m| m["tls"] == true && m["login"] == "squall"),
        "every message under TLS, logged in: {got:?}"
    );

    // A credential variable that is not set is an error before anything is sent.
    std::fs::write(&config, provider("TEST_SMTP_NOBODY")).unwrap();
    let out = squall()
        .args(["run", "--json", "--data-dir"])
        .arg(dir.path().join("data2"))
        .arg(&campaign)
        .arg("--config")
        .arg(&config)
        .env_remove("TEST_SMTP_NOBODY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TEST_SMTP_NOBODY") && err.contains("not set"),
        "{err}"
    );
}

/// A campaign in waves of 10%, 30% and 100% of 600 rows: addresses that end
/// in an even digit are given to the second wave's recipients only, so the
/// server that turns them away (550) breaches the failure guardrail in
/// wave 2; the campaign pauses and wave 3 is never sent until a resume.
fn wave_campaign(
    dir: &Path,
    port: u16,
    even: &std::collections::BTreeSet<usize>,
) -> std::path::PathBuf {
    let mut csv = String::from("id,email\n");
    for i in 0..600usize {
        // r{i} with a last digit chosen by wave: odd everywhere but wave 2.
        let last = if even.contains(&i) { 2 } else { 1 };
        csv.push_str(&format!("r{i},u{i}x{last}@example.org\n"));
    }
    std::fs::write(dir.join("audience.csv"), csv).unwrap();
    let path = dir.join("campaign.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[campaign]
id = "in-waves"
channel = "email"

[audience]
source = "audience.csv"

[[segment]]
name = "all"
rule = "true"

[[message]]
segment = "all"
subject = "Hello"
text = "Hi"

[delivery]
transport = "smtp://127.0.0.1:{port}"
from = "Shop <news@example.com>"

[schedule]
waves = [0.1, 0.3, 1.0]
wave_pause = "3h"

[guardrails]
max_failure_rate = 0.2
min_sample = 20

[limits]
batch_size = 20
max_attempts = 1
"#
        ),
    )
    .unwrap();
    path
}

fn dry_run_waves(path: &Path, data: &Path) -> (serde_json::Value, Vec<u32>) {
    let out = squall()
        .args(["run", "--dry-run", "--json", "--data-dir"])
        .arg(data)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut waves = vec![0u32; 600];
    for l in std::fs::read_to_string(r["file"].as_str().unwrap())
        .unwrap()
        .lines()
    {
        let l: serde_json::Value = serde_json::from_str(l).unwrap();
        let i: usize = l["recipient_id"].as_str().unwrap()[1..].parse().unwrap();
        waves[i] = l["wave"].as_u64().unwrap() as u32;
    }
    (r, waves)
}

#[test]
fn waves_go_out_in_exact_shares_and_a_guardrail_breach_stops_the_next_wave() {
    let dir = tempfile::tempdir().unwrap();
    let server = faulty_smtp(dir.path(), "unknown");
    let data = dir.path().join("data");
    // Which rows are in which wave depends only on the campaign and the
    // audience's size, so a first dry run tells, and addresses can be
    // chosen after it.
    let path = wave_campaign(dir.path(), server.port, &Default::default());
    let (report, waves) = dry_run_waves(&path, &data);
    assert_eq!(
        report["wave_rows"],
        serde_json::json!([60, 120, 420]),
        "{report}"
    );
    let second: std::collections::BTreeSet<usize> = (0..600).filter(|i| waves[*i] == 1).collect();
    let path = wave_campaign(dir.path(), server.port, &second);
    let (_, again) = dry_run_waves(&path, &data);
    assert_eq!(again, waves, "waves are reproducible");

    let config = dir.path().join("squall.toml");
    std::fs::write(&config, "data_dir = \"data\"\n").unwrap();
    let mut run = squall()
        .args(["run", "--json", "--data-dir"])
        .arg(&data)
        .arg(&path)
        .env("SQUALL_FAKE_CLOCK", "2027-03-01T09:00:00Z*3600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = || -> serde_json::Value {
        let out = squall()
            .args(["status", "--json", "in-waves", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let paused = loop {
        let s = status();
        if s["controls"][0]["state"] == "paused" {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guardrail never tripped: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let reason = paused["controls"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("guardrail: failure rate"), "{reason}");
    // Paused: the third wave is never sent, however long we wait.
    std::thread::sleep(Duration::from_secs(4));
    let third = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|l| {
                let rcpt = l["rcpt"].as_str().unwrap_or_default();
                let i: usize = rcpt[1..rcpt.find('x').unwrap()].parse().unwrap();
                waves[i] == 2
            })
            .count()
    };
    let before = accepted(&server.log);
    assert_eq!(third(&before), 0, "no message of wave 3 before the resume");
    assert_eq!(before.len(), 60, "wave 1 went whole");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run waits for a resume"
    );

    // The cause is fixed (the server accepts again): resume, and everyone
    // not turned away gets one message.
    let port = server.port;
    drop(server);
    let dump = dir.path().join("dump");
    let sink = smtp_sink_on(port, &dump, &[]);
    let out = squall()
        .args(["resume", "in-waves", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&run.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(report["complete"], true, "{report}");
    let failed = report["failed"].as_u64().unwrap();
    assert!(failed >= 20, "wave 2 was turned away: {report}");
    assert_eq!(report["sent"].as_u64().unwrap() + failed, 600, "{report}");
    let after = dumped(&dump);
    assert!(
        after.len() >= 420,
        "wave 3 went after the resume: {}",
        after.len()
    );
    drop(sink);
}
