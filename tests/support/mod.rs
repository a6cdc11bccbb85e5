//! Test scaffolding shared by the end-to-end suites: the real `squall`
//! binary, temporary campaigns, real services.
#![allow(dead_code)]

pub mod http;
pub mod serve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn squall() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_squall"));
    cmd.env("SQUALL_LOG_FORMAT", "json")
        .env("SQUALL_LOG", "warn,squall=info");
    cmd
}

/// `squall ARGS`, which must succeed: what it printed, as JSON.
pub fn json_of(args: &[&str]) -> serde_json::Value {
    let out = squall().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "squall {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "squall {} printed no JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn example(name: &str) -> PathBuf {
    repo().join("examples").join(name)
}

/// The hostile plugin built with the default components.
pub fn hostile_plugin() -> PathBuf {
    Path::new(env!("SQUALL_COMPONENTS_DIR")).join("squall_test_hostile.wasm")
}

pub fn run_json(campaign: &Path, data_dir: &Path) -> (Output, serde_json::Value) {
    run_json_with(campaign, data_dir, None, &[])
}

/// `squall run --json`, with a squall.toml (for its providers) and extra
/// environment (provider credentials).
pub fn run_json_with(
    campaign: &Path,
    data_dir: &Path,
    config: Option<&Path>,
    env: &[(&str, &str)],
) -> (Output, serde_json::Value) {
    let mut cmd = squall();
    cmd.args(["run", "--json", "--data-dir"])
        .arg(data_dir)
        .arg(campaign);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run squall");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "squall run did not print JSON ({e}); stdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

pub fn outbox(data_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(data_dir.join("outbox.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("every outbox line is whole JSON"))
        .collect()
}

pub fn counts_by(
    lines: &[serde_json::Value],
    f: impl Fn(&serde_json::Value) -> String,
) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(f(l)).or_default() += 1;
    }
    m
}

/// The spring-sale example's audience, read independently of Squall with
/// the `csv` crate and its rules written out by hand.
pub struct ExpectedSpringSale {
    /// recipient id → (email, first name, segment or None, orders)
    pub recipients: BTreeMap<String, (String, String, Option<&'static str>, u64)>,
    pub rejected_lines: Vec<u64>,
    pub rows: u64,
}

pub fn expected_spring_sale(audience: &Path) -> ExpectedSpringSale {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(audience)
        .unwrap();
    let mut recipients = BTreeMap::new();
    let mut rejected_lines = Vec::new();
    let mut rows = 0;
    for rec in reader.records() {
        let rec = rec.unwrap();
        rows += 1;
        let line = rec.position().unwrap().line();
        let f = |i: usize| rec.get(i).unwrap_or("").to_string();
        let (id, email) = (f(0), f(1));
        let email_ok = email
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && d.contains('.'));
        if rec.len() != 9 || id.is_empty() || !email_ok || recipients.contains_key(&id) {
            rejected_lines.push(line);
            continue;
        }
        let subscribed = f(8) == "true";
        let ltv: f64 = f(6).parse().unwrap();
        let orders: u64 = f(7).parse().unwrap();
        let country = f(4);
        let segment = if subscribed && ltv > 500.0 && (country == "DE" || country == "FR") {
            Some("vip")
        } else if subscribed && orders >= 1 {
            Some("regulars")
        } else if subscribed && orders == 0 {
            Some("newcomers")
        } else {
            None
        };
        recipients.insert(id, (email, f(2), segment, orders));
    }
    ExpectedSpringSale {
        recipients,
        rejected_lines,
        rows,
    }
}

/// The example custom sender plugin, built with the default components.
pub fn acme_gateway_plugin() -> PathBuf {
    Path::new(env!("SQUALL_COMPONENTS_DIR")).join("squall_example_acme_gateway.wasm")
}

/// The provider figures of a run report, by provider name.
pub fn provider<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["provider"] == name))
        .unwrap_or_else(|| panic!("no figures for provider {name} in {report}"))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies the spring-sale example into `dir`, keeping only the first
/// `rows` audience rows, with `transport` and extra TOML appended.
pub fn spring_sale_copy(dir: &Path, rows: usize, transport: &str, extra: &str) -> PathBuf {
    let src = example("spring-sale");
    let audience = std::fs::read_to_string(src.join("audience.csv")).unwrap();
    let kept: Vec<&str> = audience.lines().take(rows + 1).collect();
    std::fs::write(dir.join("audience.csv"), kept.join("\n") + "\n").unwrap();
    let campaign = std::fs::read_to_string(src.join("campaign.toml"))
        .unwrap()
        .replace(
            "transport = \"outbox\"",
            &format!("transport = \"{transport}\""),
        );
    let path = dir.join("campaign.toml");
    std::fs::write(&path, campaign + extra).unwrap();
    path
}

/// A campaign of three recipients whose segmenter is the hostile plugin:
/// `rule` says what it does (`loop`, `bomb`, `trap`, or a real CEL rule).
pub fn hostile_campaign(dir: &Path, id: &str, rule: &str, limits: &str) -> PathBuf {
    std::fs::write(
        dir.join("audience.csv"),
        "id,email\n1,a@x.test\n2,b@x.test\n3,c@x.test\n",
    )
    .unwrap();
    std::fs::copy(hostile_plugin(), dir.join("hostile.wasm")).unwrap();
    let toml = format!(
        r#"
[campaign]
id = "{id}"
channel = "email"

[audience]
source = "audience.csv"

[[segment]]
name = "all"
rule = "{rule}"

[[message]]
segment = "all"
subject = "hi"
text = "hello"

[delivery]
from = "Shop <news@example.com>"

[stages]
segmenter = "hostile.wasm"

[limits]
{limits}
"#
    );
    let path = dir.join("campaign.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Ids of the recipients of an audience (a spring-sale copy) that are in
/// some segment: exactly the ones who must get one message.
pub fn eligible_ids(audience: &Path) -> std::collections::BTreeSet<String> {
    expected_spring_sale(audience)
        .recipients
        .into_iter()
        .filter(|(_, r)| r.2.is_some())
        .map(|(id, _)| id)
        .collect()
}

/// Like `spring_sale_copy`, but delivering through `squall.toml` providers.
pub fn spring_sale_with_providers(
    dir: &Path,
    rows: usize,
    providers: &[&str],
    extra: &str,
) -> PathBuf {
    let path = spring_sale_copy(dir, rows, "outbox", extra);
    let list: Vec<String> = providers.iter().map(|p| format!("\"{p}\"")).collect();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "transport = \"outbox\"",
        &format!("providers = [{}]", list.join(", ")),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `n` recipients `u0..` with addresses `user0@example.org..` and names
/// `Name0..`, in `dir/audience.csv`; returns (id, address) of each.
pub fn small_audience(dir: &Path, n: usize) -> Vec<(String, String)> {
    let mut csv = String::from("id,email,name\n");
    let mut people = Vec::new();
    for i in 0..n {
        let (id, email) = (format!("u{i}"), format!("user{i}@example.org"));
        csv.push_str(&format!("{id},{email},Name{i}\n"));
        people.push((id, email));
    }
    std::fs::write(dir.join("audience.csv"), csv).unwrap();
    people
}

/// Campaign `hooks`: a webhook to everyone of `dir/audience.csv` through
/// `provider`, subject `Hello {{ name }}`, text `Your code is {{ id | upcase }}`.
pub fn webhook_campaign(dir: &Path, provider: &str) -> PathBuf {
    let path = dir.join("campaign.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[campaign]
id = "hooks"
channel = "webhook"

[audience]
source = "audience.csv"

[[segment]]
name = "all"
rule = "true"

[[message]]
segment = "all"
subject = "Hello {{{{ name }}}}"
text = "Your code is {{{{ id | upcase }}}}"

[delivery]
providers = ["{provider}"]
from = "shop"
"#
        ),
    )
    .unwrap();
    path
}

/// A fresh database on the test PostgreSQL server (`SQUALL_TEST_POSTGRES`,
/// a server URL): its URL, and a guard that drops it (connections and all)
/// when dropped, so a shared server is not left a database per test.
/// `None`, said on stderr, when the variable is not set (never in CI).
pub fn postgres_database() -> Option<(String, DropDatabase)> {
    let Ok(server) = std::env::var("SQUALL_TEST_POSTGRES") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must set SQUALL_TEST_POSTGRES"
        );
        eprintln!("skipped: SQUALL_TEST_POSTGRES is not set");
        return None;
    };
    let name = format!("squall_e2e_{:016x}", rand::random::<u64>());
    let server = server.trim_end_matches('/').to_string();
    let status = Command::new("psql")
        .arg(format!("{server}/postgres"))
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql");
    assert!(status.success(), "cannot create the test database");
    Some((format!("{server}/{name}"), DropDatabase { server, name }))
}

pub struct DropDatabase {
    server: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(format!("{}/postgres", self.server))
            .args([
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

/// Runs SQL on the database at `url` through psql; panics with its
/// message if it fails.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
