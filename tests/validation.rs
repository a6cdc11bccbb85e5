//! Campaign validation: every problem at once, each with file:line:column.

mod support;

use support::*;

#[test]
fn every_problem_is_reported_at_once_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("audience.csv"),
        "id,email,country,ltv\n1,a@x.test,DE,5\n",
    )
    .unwrap();
    let toml = r#"[campaign]
id = "broken"
channel = "email"

[audience]
source = "audience.csv"

[[segment]]
name = "vip"
rule = 'ltv > 500 && contry == "DE"'

[[segment]]
name = "broken"
rule = "ltv >"

[[segment]]
name = "lonely"
rule = "true"

[[message]]
segment = "vip"
subject = "Hi {{ first_name }}"
text = "Hello {{ country"

[[message]]
segment = "broken"
subject = "ok"
text = "ok"

[[message]]
segment = "nope"
subject = "x"
text = "y"

[delivery]
from = "Shop <news@example.com>"
"#;
    let path = dir.path().join("campaign.toml");
    std::fs::write(&path, toml).unwrap();

    let out = squall().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    let expected = [
        format!("{file}:10:22: error: segment[0].rule: unknown field `contry`"),
        format!("{file}:14:"),
        format!("{file}:17:8: error: segment `lonely` has no [[message]]"),
        format!("{file}:22:18: error: message[0].subject: unknown field `first_name`"),
        format!("{file}:23:"),
        format!("{file}:31:11: error: message refers to unknown segment `nope`"),
    ];
    for e in &expected {
        assert!(err.contains(e.as_str()), "missing {e:?} in:\n{err}");
    }
    assert!(err.contains("segment[1].rule: syntax error"), "{err}");
    assert!(err.contains("message[0].text: template error"), "{err}");
    // All of them, in file order, in one pass.
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(lines.len(), expected.len(), "{err}");
    assert!(err.contains("6 problems found; nothing was sent"), "{err}");
}

#[test]
fn toml_errors_and_unknown_keys_have_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[campaign]\nid = \"x\"\nchanel = \"email\"\n").unwrap();
    let out = squall().arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:3:1: error: unknown field `chanel`",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn a_valid_campaign_validates() {
    let out = squall()
        .arg("validate")
        .arg(example("spring-sale").join("campaign.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}
