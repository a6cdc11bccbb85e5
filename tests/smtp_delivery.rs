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
    let port = free_port();
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
        sample.contains("List-Unsubscribe: <https://shop.example.com/u/"),
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
