//! A PostgreSQL audience (`[audience] source = "postgres"`) against a real
//! server: the rows of a query, typed, checked and rejected like a file's,
//! read once into a snapshot that a restarted run resumes on, whatever the
//! table has become since.
//!
//! Needs `SQUALL_TEST_POSTGRES` (a server URL) and `psql`; `.ci/run`
//! provides both.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

/// `rows` customers in three countries, typed columns (numeric, int,
/// boolean, date, char), missing first names, one invalid address and one
/// id listed twice (the same row twice, so either copy may come first).
fn customers(url: &str, rows: u32) {
    psql(
        url,
        &format!(
            "CREATE TABLE customers (id text, email text, first_name text, country char(2),
                 lifetime_value numeric(10,2), orders int, vip boolean, signed_up date);
             INSERT INTO customers
               SELECT 'c' || lpad(g::text, 6, '0'), 'user' || g || '@example.com',
                      CASE WHEN g % 7 = 0 THEN NULL ELSE 'Name' || g END,
                      (ARRAY['DE','FR','US'])[1 + g % 3], (g * 13 % 3000)::numeric / 1.5,
                      g % 9, g % 10 = 0, DATE '2026-01-01' + g % 365
               FROM generate_series(1, {rows}) g;
             UPDATE customers SET email = 'not-an-address' WHERE id = 'c000004';
             INSERT INTO customers SELECT * FROM customers WHERE id = 'c000010';"
        ),
    );
}

fn campaign(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("campaign.toml");
    std::fs::write(
        &path,
        format!(
            r#"[campaign]
id = "pg-sale"
channel = "email"

[audience]
source = "postgres"
url_env = "SQUALL_TEST_AUDIENCE_URL"
query = "SELECT * FROM customers WHERE country <> 'US'"

[audience.fields]
first_name = "string"
country = "string"
lifetime_value = "number"
orders = "number"
vip = "boolean"
signed_up = "string"

[[segment]]
name = "vip"
rule = 'vip && lifetime_value > 100'

[[segment]]
name = "rest"
rule = "true"

[[message]]
segment = "vip"
subject = "{{{{ first_name | default: 'there' }}}}, thank you since {{{{ signed_up }}}}"
text = "You have spent {{{{ lifetime_value }}}} with us."

[[message]]
segment = "rest"
subject = "Spring sale in {{{{ country }}}}"
text = "Hi {{{{ first_name | default: 'there' }}}}, {{{{ orders }}}} orders so far."

[delivery]
from = "Shop <news@example.com>"
{extra}"#
        ),
    )
    .unwrap();
    path
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines().map(str::to_string).collect()
}

#[test]
fn a_killed_run_resumes_on_the_rows_it_started_with_whatever_the_table_became() {
    let Some((url, _db)) = postgres_database() else {
        return;
    };
    // Large enough that the kill below lands while the audience is still
    // being read into the queue (checked on the restart's log).
    customers(&url, 60_000);
    // The independent count, from the database itself, before the table
    // changes under the campaign.
    let eligible = lines(&psql(
        &url,
        "SELECT DISTINCT id FROM customers WHERE country <> 'US' AND email LIKE '%@%.%'",
    ));
    let vip = lines(&psql(
        &url,
        "SELECT DISTINCT id FROM customers WHERE country <> 'US' AND email LIKE '%@%.%'
           AND vip AND lifetime_value > 100",
    ));
    let rows: u64 = psql(&url, "SELECT count(*) FROM customers WHERE country <> 'US'")
        .trim()
        .parse()
        .unwrap();
    assert!(eligible.len() > 30_000 && !vip.is_empty());

    let dir = tempfile::tempdir().unwrap();
    // Sending slowly, to be killed in the middle.
    let path = campaign(dir.path(), "\n[schedule]\nrate_per_second = 600\n");
    let data = dir.path().join("data");
    let mut child = squall()
        .args(["run", "--data-dir"])
        .arg(&data)
        .arg(&path)
        .env("SQUALL_TEST_AUDIENCE_URL", &url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox(&data).len() < 300 {
        assert!(Instant::now() < deadline, "the run sent nothing");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to tidy up
    child.wait().unwrap();
    let sent_before = outbox(&data).len();
    assert!(sent_before < eligible.len(), "killed before the end");

    // The table moves on: a newcomer who sorts first (every later row of a
    // fresh query would shift by one), and near the end, where the killed
    // run had not read yet, a customer gone and a name changed.
    psql(
        &url,
        "INSERT INTO customers VALUES ('c000000', 'new@example.com', 'Newcomer', 'DE', 5000, 1, true, DATE '2026-06-01');
         DELETE FROM customers WHERE id = 'c059994';
         UPDATE customers SET first_name = 'Renamed' WHERE id = 'c059995';",
    );
    // The rest at full speed.
    campaign(dir.path(), "");
    let (out, report) = run_json_with(
        &path,
        &data,
        None,
        &[("SQUALL_TEST_AUDIENCE_URL", url.as_str())],
    );
    assert!(out.status.success(), "{report}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("resuming the audience after the batches already queued"),
        "the kill came after the whole audience was queued, so this test proved nothing: {log}"
    );
    assert_eq!(report["complete"], true);
    assert_eq!(report["audience"], rows, "{report}");
    assert_eq!(report["rejected"], 2, "{report}");

    let sent = outbox(&data);
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for l in &sent {
        *per_id
            .entry(l["recipient_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(per_id.values().all(|n| *n == 1), "someone got two messages");
    let ids: BTreeSet<String> = per_id.into_keys().collect();
    assert_eq!(
        ids, eligible,
        "everyone of the original query, exactly once"
    );
    assert_eq!(
        counts_by(&sent, |l| l["segment"].as_str().unwrap().to_string())["vip"],
        vip.len() as u64
    );
    // Rendered from the rows as first read: no newcomer, the deleted
    // customer still served, the old name.
    let line = |id: &str| sent.iter().find(|l| l["recipient_id"] == id);
    assert!(line("c000000").is_none());
    assert!(line("c059994").is_some(), "c059994 was in the query");
    let renamed = line("c059995").expect("c059995 was in the query");
    assert!(
        !renamed["text"].as_str().unwrap().contains("Renamed"),
        "{renamed}"
    );
    for l in &sent {
        let text = format!("{} {}", l["subject"], l["text"]);
        assert!(!text.contains("{{") && !text.contains("}}"), "{text}");
    }
    // Typed: an integer count renders as one, a date as its text.
    let c1 = line("c000001").unwrap();
    assert_eq!(c1["text"], "Hi Name1, 1 orders so far.");
    let c10 = line("c000010").unwrap();
    assert_eq!(c10["segment"], "rest", "86.67 is not over 100");

    // Rejects say which row and why.
    let rejects = std::fs::read_to_string(data.join("rejects/pg-sale.jsonl")).unwrap();
    assert!(rejects.contains("not-an-address") && rejects.contains("is not a valid email address"));
    assert!(rejects.contains("duplicate id `c000010`"), "{rejects}");
    // The snapshot the run read, in id order.
    let snapshot = std::fs::read_to_string(data.join("audiences/pg-sale.jsonl")).unwrap();
    assert_eq!(snapshot.lines().count() as u64, rows);
    assert!(snapshot.lines().next().unwrap().contains("\"c000001\""));

    // A third run sends nothing more.
    let (_, again) = run_json_with(
        &path,
        &data,
        None,
        &[("SQUALL_TEST_AUDIENCE_URL", url.as_str())],
    );
    assert_eq!(outbox(&data).len(), eligible.len(), "{again}");
}

#[test]
fn a_postgres_audience_is_checked_without_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("campaign.toml");
    std::fs::write(
        &path,
        r#"[campaign]
id = "pg"
channel = "email"

[audience]
source = "postgres"

[[segment]]
name = "all"
rule = "true"

[[message]]
segment = "all"
subject = "Hi {{ first_name }}"
text = "x"

[delivery]
from = "Shop <news@example.com>"
"#,
    )
    .unwrap();
    let out = squall().arg("validate").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for wanted in [
        "campaign.toml:6:10: error: a PostgreSQL audience needs `query`",
        "campaign.toml:6:10: error: a PostgreSQL audience needs `url_env`",
        "declares its fields in [audience.fields]",
    ] {
        assert!(err.contains(wanted), "missing `{wanted}` in:\n{err}");
    }

    // Declared fields are what rules and templates are checked against.
    let complete = campaign(dir.path(), "");
    let text = std::fs::read_to_string(&complete)
        .unwrap()
        .replace("{{ orders }}", "{{ order_count }}");
    // (only the campaign file is read: there is no database here)
    let at = text
        .lines()
        .position(|l| l.contains("order_count"))
        .unwrap()
        + 1;
    std::fs::write(&complete, text).unwrap();
    let out = squall().arg("validate").arg(&complete).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("campaign.toml:{at}:"))
            && err.contains("unknown field `order_count`; the audience has: id, email, country"),
        "{err}"
    );
}

#[test]
fn a_query_that_cannot_give_the_audience_stops_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = campaign(dir.path(), "");
    let run = |url: Option<&str>| {
        let mut cmd = squall();
        cmd.args(["run", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg(&path)
            .env_remove("SQUALL_TEST_AUDIENCE_URL")
            .stdin(Stdio::null());
        if let Some(url) = url {
            cmd.env("SQUALL_TEST_AUDIENCE_URL", url);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(None);
    assert!(
        err.contains("`SQUALL_TEST_AUDIENCE_URL` (`url_env`) is not set"),
        "{err}"
    );

    let Some((url, _db)) = postgres_database() else {
        return;
    };
    let err = run(Some(&url));
    assert!(
        err.contains("the query does not run") && err.contains("customers"),
        "{err}"
    );
    psql(
        &url,
        "CREATE TABLE customers (id text, email text, first_name text, country text)",
    );
    let err = run(Some(&url));
    assert!(
        err.contains("the query returns no column `lifetime_value`, `orders`, `signed_up`, `vip`"),
        "{err}"
    );
    assert!(outbox(&dir.path().join("data")).is_empty());
}
