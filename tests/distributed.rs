//! Distributed Squall: real `squall worker` processes per stage, connected
//! by SQS (a real moto server, one per test, so pausing it disturbs no
//! other test) with state in a fresh PostgreSQL database.
//!
//! Needs `moto_server` on PATH and `SQUALL_TEST_POSTGRES` (a server URL);
//! `.ci/run` provides both.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Deployment {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The SQS server, when the deployment uses SQS.
    moto: Option<Child>,
    workers: Vec<(String, Child)>,
    /// The PostgreSQL database, when the deployment uses one: dropped
    /// after the workers are gone (fields drop after `drop`).
    _database: Option<DropDatabase>,
    /// Held until the workers are gone.
    _machine: MachineTurn,
}

/// The deployments of the tests that measure a rate run alone, so that a
/// figure is the limiter's and not a crowded machine's (each deployment
/// here is a moto and three or four workers on two cores); the others run
/// side by side.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum MachineTurn {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

fn machine_turn(alone: bool) -> MachineTurn {
    // A failed test poisons the lock; the machine is no less free for it.
    if alone {
        MachineTurn::Alone(MACHINE.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        MachineTurn::Shared(MACHINE.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, w) in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(moto) = &mut self.moto {
            let _ = moto.kill();
            let _ = moto.wait();
        }
    }
}

fn start_moto(port: u16) -> Child {
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server on PATH (pip install 'moto[server]')");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

impl Deployment {
    fn new() -> Option<Deployment> {
        Deployment::with_batch_size(500)
    }

    /// Smaller batches make a campaign take longer (more queue messages):
    /// room for a kill or an outage in the middle of it.
    fn with_batch_size(batch_size: usize) -> Option<Deployment> {
        Deployment::sqs(batch_size, false)
    }

    /// `with_batch_size`, alone on the machine: for measuring a rate.
    fn measuring(batch_size: usize) -> Option<Deployment> {
        Deployment::sqs(batch_size, true)
    }

    fn sqs(batch_size: usize, alone: bool) -> Option<Deployment> {
        let (db, database) = postgres_database()?;
        let machine = machine_turn(alone);
        let port = free_port();
        let moto = start_moto(port);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("squall.toml");
        std::fs::write(
            &config,
            format!(
                r#"
data_dir = "data"

[queue]
backend = "sqs"
endpoint = "http://127.0.0.1:{port}"
prefix = "e2e-"
visibility_timeout_s = 20
wait_s = 1
max_receives = 6

[store]
url = "{db}"

[stage.segment]
batch_size = {batch_size}
"#
            ),
        )
        .unwrap();
        let d = Deployment {
            dir,
            config,
            moto: Some(moto),
            workers: Vec::new(),
            _database: Some(database),
            _machine: machine,
        };
        let out = d.squall(&["queues", "create"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        Some(d)
    }

    /// One machine, several worker processes: the embedded queue and the
    /// SQLite store, the defaults of a `squall.toml` that says nothing.
    fn embedded() -> Deployment {
        Deployment::embedded_with(machine_turn(false))
    }

    /// `embedded`, alone on the machine: for measuring a rate.
    fn embedded_measuring() -> Deployment {
        Deployment::embedded_with(machine_turn(true))
    }

    fn embedded_with(machine: MachineTurn) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("squall.toml");
        std::fs::write(&config, "data_dir = \"data\"\n[queue]\nwait_s = 1\n").unwrap();
        Deployment {
            dir,
            config,
            moto: None,
            workers: Vec::new(),
            _database: None,
            _machine: machine,
        }
    }

    fn moto_pid(&self) -> u32 {
        self.moto.as_ref().expect("an SQS deployment").id()
    }

    fn squall(&self, args: &[&str]) -> Command {
        let mut cmd = squall();
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            // The signing key of the webhook providers tests define.
            .env("TEST_WEBHOOK_KEY", "test-key")
            .stdin(Stdio::null());
        cmd
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn launch(&self, campaign: &Path) -> serde_json::Value {
        let out = self
            .squall(&["launch", "--json", campaign.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "launch failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn start_worker(&mut self, stage: &str, log: &str) {
        let err = std::fs::File::create(self.dir.path().join(format!("{log}.log"))).unwrap();
        let child = self
            .squall(&["worker", "--stage", stage])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        self.workers.push((log.to_string(), child));
    }

    fn kill9(&mut self, log: &str) {
        let i = self.workers.iter().position(|(l, _)| l == log).unwrap();
        let (_, mut child) = self.workers.remove(i);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn status(&self, campaign: &str) -> serde_json::Value {
        let out = self
            .squall(&["status", "--json", campaign])
            .output()
            .unwrap();
        assert!(out.status.success(), "status failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_until(
        &mut self,
        campaign: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status(campaign);
            if done(&s) {
                return s;
            }
            for (log, w) in &mut self.workers {
                if let Ok(Some(code)) = w.try_wait() {
                    panic!(
                        "worker {log} exited with {code}: {}",
                        std::fs::read_to_string(self.dir.path().join(format!("{log}.log")))
                            .unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "campaign did not get there in {limit:?}; last status: {s}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM every worker; each must exit cleanly, soon.
    fn stop_workers(&mut self) {
        for (_, w) in &self.workers {
            unsafe_kill(w.id(), "TERM");
        }
        for (log, w) in &mut self.workers {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = w.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "worker {log} exited with {status}: {}",
                        std::fs::read_to_string(self.dir.path().join(format!("{log}.log")))
                            .unwrap_or_default()
                    );
                    break;
                }
                assert!(Instant::now() < deadline, "worker {log} ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.workers.clear();
    }

    /// Every outbox line of every send worker.
    fn outbox(&self) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.data().join("outbox")) else {
            return lines;
        };
        for f in dir {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            for l in text.lines() {
                lines.push(serde_json::from_str(l).expect("every outbox line is whole JSON"));
            }
        }
        lines
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn complete(s: &serde_json::Value) -> bool {
    s["complete"] == true
}

/// (recipient, segment/variant) of each line, asserting none repeats.
fn exactly_once(lines: &[serde_json::Value]) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    for l in lines {
        let key = (
            l["recipient_id"].as_str().unwrap().to_string(),
            format!(
                "{}/{}",
                l["segment"].as_str().unwrap(),
                l["variant"].as_str().unwrap()
            ),
        );
        assert!(seen.insert(key.clone()), "{key:?} was sent twice");
    }
    seen
}

fn embedded_reference() -> (serde_json::Value, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (out, report) = run_json(&example("spring-sale").join("campaign.toml"), &data);
    assert!(out.status.success(), "{}", stderr(&out));
    (report, outbox(&data))
}

/// A message as the recipient sees it, tracking tokens aside: each store
/// signs links with a key of its own, so the two runs' tokens differ.
fn content(l: &serde_json::Value) -> (String, String, String, String, String) {
    let s = |k: &str| without_tokens(l[k].as_str().unwrap_or_default());
    (
        s("recipient_id"),
        s("to"),
        s("subject"),
        s("text"),
        s("html"),
    )
}

fn without_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = ["/c/", "/o/", "/u/"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        out.push_str(&rest[..i + 3]);
        out.push_str("TOKEN");
        rest = rest[i + 3..]
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || "-_.".contains(c));
    }
    out.push_str(rest);
    out
}

#[test]
fn sqs_and_postgres_give_the_embedded_result_message_for_message() {
    let Some(d) = Deployment::new() else {
        return;
    };
    same_result_as_squall_run(d);
}

#[test]
fn workers_on_the_embedded_queue_and_sqlite_give_the_same_result() {
    same_result_as_squall_run(Deployment::embedded());
}

fn same_result_as_squall_run(mut d: Deployment) {
    let launched = d.launch(&example("spring-sale").join("campaign.toml"));
    assert_eq!(launched["audience"], 10_005);
    // Launching again queues nothing twice.
    let again = d.launch(&example("spring-sale").join("campaign.toml"));
    assert_eq!(again["already_launched"], true, "{again}");

    for stage in ["segment", "personalise", "send"] {
        d.start_worker(stage, stage);
    }
    let status = d.wait_until("spring-sale", Duration::from_secs(300), complete);
    d.stop_workers();

    let (reference, reference_outbox) = embedded_reference();
    for key in [
        "audience",
        "rejected",
        "unsegmented",
        "per_segment",
        "per_variant",
        "sent",
        "failed",
        "dead_lettered",
    ] {
        assert_eq!(status[key], reference[key], "{key} differs");
    }
    let ours = d.outbox();
    exactly_once(&ours);
    let mine: BTreeSet<_> = ours.iter().map(content).collect();
    let theirs: BTreeSet<_> = reference_outbox.iter().map(content).collect();
    assert_eq!(mine.len(), reference_outbox.len());
    assert!(
        mine == theirs,
        "the distributed run rendered different messages"
    );

    // Every stage's queue is drained and nothing was dead-lettered.
    for (stage, st) in status["stages"].as_object().unwrap() {
        assert_eq!(st["dead_letter_batches"], 0, "{stage}: {st}");
    }
    let dlq = d.squall(&["dlq", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&dlq.stdout).contains("no dead letters"));
}

#[test]
fn two_senders_in_parallel_deliver_each_message_exactly_once() {
    let Some(mut d) = Deployment::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let campaign = spring_sale_copy(dir.path(), 4000, "outbox", "");
    d.launch(&campaign);
    d.start_worker("segment", "segment");
    d.start_worker("personalise", "personalise");
    d.start_worker("send", "send-1");
    d.start_worker("send", "send-2");
    let status = d.wait_until("spring-sale", Duration::from_secs(300), complete);
    d.stop_workers();

    let lines = d.outbox();
    let sent = exactly_once(&lines);
    assert_eq!(sent.len() as u64, status["sent"].as_u64().unwrap());
    assert_eq!(
        sent.len(),
        eligible_ids(&dir.path().join("audience.csv")).len()
    );
    // Both workers took part (each has its own outbox file with lines).
    let files: Vec<_> = std::fs::read_dir(d.data().join("outbox"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(files.len(), 2, "both send workers should have sent");
}

#[test]
fn killed_workers_lose_nothing_and_send_nothing_twice() {
    let Some(mut d) = Deployment::with_batch_size(40) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let campaign = spring_sale_copy(dir.path(), 10_005, "outbox", "");
    d.launch(&campaign);
    d.start_worker("segment", "segment");
    d.start_worker("personalise", "personalise-1");
    d.start_worker("send", "send-1");
    // Mid-campaign: some sent, most not.
    d.wait_until("spring-sale", Duration::from_secs(300), |s| {
        s["sent"].as_u64().unwrap() > 200
    });
    d.kill9("personalise-1");
    d.kill9("send-1");
    let sent_before = d.status("spring-sale")["sent"].as_u64().unwrap();
    d.start_worker("personalise", "personalise-2");
    d.start_worker("send", "send-2");
    let status = d.wait_until("spring-sale", Duration::from_secs(400), complete);
    d.stop_workers();

    let eligible = eligible_ids(&dir.path().join("audience.csv"));
    assert!(
        sent_before < eligible.len() as u64,
        "the kill came too late"
    );
    let lines = d.outbox();
    let sent = exactly_once(&lines);
    let ids: BTreeSet<String> = sent.into_iter().map(|(r, _)| r).collect();
    assert_eq!(ids, eligible, "everyone eligible got exactly one message");
    assert_eq!(status["in_doubt"], 0, "the outbox proves what was sent");
    assert_eq!(status["sent"], eligible.len() as u64);
}

#[test]
fn workers_ride_out_an_sqs_outage() {
    let Some(mut d) = Deployment::with_batch_size(40) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let campaign = spring_sale_copy(dir.path(), 10_005, "outbox", "");
    d.launch(&campaign);
    for stage in ["segment", "personalise", "send"] {
        d.start_worker(stage, stage);
    }
    let before = d.wait_until("spring-sale", Duration::from_secs(300), |s| {
        s["stages"]["segment"]["processed"].as_u64().unwrap() > 0
    });
    // The SQS server freezes (connections hang, nothing answers) ...
    unsafe_kill(d.moto_pid(), "STOP");
    assert_eq!(before["complete"], false, "the outage came too late");
    std::thread::sleep(Duration::from_secs(6));
    // ... and comes back; the workers carry on by themselves.
    unsafe_kill(d.moto_pid(), "CONT");
    let status = d.wait_until("spring-sale", Duration::from_secs(300), complete);
    d.stop_workers();

    let sent = exactly_once(&d.outbox());
    assert_eq!(
        sent.len(),
        eligible_ids(&dir.path().join("audience.csv")).len()
    );
    assert_eq!(status["dead_lettered"], 0, "{status}");
}

#[test]
fn a_poisoned_batch_ends_in_the_dead_letter_queue_with_its_reason() {
    let Some(mut d) = Deployment::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let campaign = hostile_campaign(dir.path(), "poisoned", "trap", "max_attempts = 3");
    d.launch(&campaign);
    d.start_worker("segment", "segment");
    let status = d.wait_until("poisoned", Duration::from_secs(120), complete);
    d.stop_workers();
    assert_eq!(status["dead_lettered"], 3, "{status}");
    assert_eq!(status["stages"]["segment"]["dead_letter_batches"], 1);

    let out = d
        .squall(&["dlq", "list", "--json", "--stage", "segment"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(reason.contains("segmenter trapped"), "{reason}");
    assert!(reason.contains("after 3 attempt(s)"), "{reason}");
    assert_eq!(rows[0]["receive_count"], 3);
    assert_eq!(rows[0]["campaign"], "poisoned");
    assert_eq!(rows[0]["recipients"], 3);

    // Listing is not consuming: a replay puts it back on the queue.
    let out = d
        .squall(&["dlq", "replay", "--stage", "segment"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 batch"));
    let per_stage: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(d.status("poisoned")["stages"].clone()).unwrap();
    assert_eq!(per_stage["segment"]["dead_letter_batches"], 0);
    assert_eq!(per_stage["segment"]["queued_batches"], 1);
}

/// One worker per stage serves every campaign of a deployment: hostile
/// plugins (an infinite loop, a memory bomb, a trap) in three of them
/// cost those campaigns their batches, with the reasons, while the fourth
/// campaign is sent in full by the same worker processes.
#[test]
fn hostile_plugins_fail_their_own_campaigns_and_the_others_keep_sending() {
    let mut d = Deployment::embedded();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let limits = "timeout_ms = 300\nmemory_mb = 32\nmax_attempts = 2";
    let hostile = [
        ("loop", "time limit of 300 ms"),
        ("bomb", "memory limit of 32 MiB"),
        ("trap", "segmenter trapped"),
    ];
    for ((mode, _), dir) in hostile.iter().zip(&dirs) {
        d.launch(&hostile_campaign(
            dir.path(),
            &format!("hostile-{mode}"),
            mode,
            limits,
        ));
    }
    let campaign = spring_sale_copy(dirs[3].path(), 1_500, "outbox", "");
    d.launch(&campaign);
    for stage in ["segment", "personalise", "send"] {
        d.start_worker(stage, stage);
    }
    let status = d.wait_until("spring-sale", Duration::from_secs(300), complete);
    let eligible = eligible_ids(&dirs[3].path().join("audience.csv"));
    assert_eq!(status["sent"], eligible.len() as u64, "{status}");
    assert_eq!(status["dead_lettered"], 0);
    for (mode, reason) in hostile {
        let s = d.wait_until(
            &format!("hostile-{mode}"),
            Duration::from_secs(120),
            complete,
        );
        assert_eq!(s["sent"], 0, "{s}");
        assert_eq!(s["dead_lettered"], 3, "{s}");
        let why = s["dead_letters"][0]["reason"].as_str().unwrap();
        assert!(why.contains(reason), "{mode}: {why}");
    }
    // The workers are still there, and stop cleanly.
    d.stop_workers();
    let ids: BTreeSet<String> = exactly_once(&d.outbox())
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(ids, eligible);
}

#[test]
fn pause_and_resume_reach_every_worker_and_lose_nothing() {
    let Some(mut d) = Deployment::with_batch_size(40) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let campaign = spring_sale_copy(dir.path(), 6000, "outbox", "");
    d.launch(&campaign);
    d.start_worker("segment", "segment");
    d.start_worker("personalise", "personalise");
    d.start_worker("send", "send-1");
    d.start_worker("send", "send-2");
    d.wait_until("spring-sale", Duration::from_secs(300), |s| {
        s["sent"].as_u64().unwrap() > 100
    });
    let out = d.squall(&["pause", "spring-sale"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Batches in flight when the pause landed may finish; then nothing.
    let mut held = d.status("spring-sale");
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = d.status("spring-sale");
        if now["sent"] == held["sent"] {
            break;
        }
        held = now;
    }
    std::thread::sleep(Duration::from_secs(3));
    let still = d.status("spring-sale");
    assert_eq!(still["sent"], held["sent"], "nothing is sent while paused");
    assert!(still["parked_batches"].as_u64().unwrap() > 0, "{still}");
    let eligible = eligible_ids(&dir.path().join("audience.csv"));
    assert!(
        held["sent"].as_u64().unwrap() < eligible.len() as u64,
        "the pause came too late"
    );

    let out = d.squall(&["resume", "spring-sale"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let status = d.wait_until("spring-sale", Duration::from_secs(400), complete);
    d.stop_workers();
    let lines = d.outbox();
    let sent = exactly_once(&lines);
    let ids: BTreeSet<String> = sent.into_iter().map(|(r, _)| r).collect();
    assert_eq!(ids, eligible, "everyone eligible got exactly one message");
    assert_eq!(status["parked_batches"], 0);
}

#[test]
fn two_workers_share_one_providers_rate() {
    let Some(mut d) = Deployment::measuring(40) else {
        return;
    };
    let rate = 150.0;
    let mut config = std::fs::read_to_string(&d.config).unwrap();
    config.push_str(&format!(
        "\n[[provider]]\nname = \"paced\"\nkind = \"outbox\"\nrate_per_second = {rate}\n"
    ));
    std::fs::write(&d.config, config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let campaign = spring_sale_with_providers(dir.path(), 3000, &["paced"], "");
    d.launch(&campaign);
    // The limiter is what is measured, so the senders start on a full
    // queue: a producer slowed by a busy machine must not pass for it.
    d.start_worker("segment", "segment");
    d.start_worker("personalise", "personalise");
    let eligible = eligible_ids(&dir.path().join("audience.csv")).len() as u64;
    d.wait_until("spring-sale", Duration::from_secs(300), |s| {
        s["stages"]["personalise"]["processed"].as_u64() == Some(eligible)
    });
    d.start_worker("send", "send-1");
    d.start_worker("send", "send-2");
    d.wait_until("spring-sale", Duration::from_secs(300), complete);
    d.stop_workers();
    let lines = d.outbox();
    assert_eq!(lines.len() as u64, eligible);
    exactly_once(&lines);
    let at = sent_times(&lines, "spring-sale");
    let span_s = (at[at.len() - 1] - at[0]) as f64 / 1000.0;
    let measured = rate_of(&at);
    eprintln!("two workers, one provider at {rate}/s: {measured:.1}/s measured");
    assert!(
        (measured - rate).abs() / rate <= 0.05,
        "{} messages in {span_s:.1} s: {measured:.1}/s, not within 5% of {rate}/s",
        at.len()
    );
    // Both workers sent: the rate is shared, not one worker doing it all.
    let files = std::fs::read_dir(d.data().join("outbox"))
        .unwrap()
        .filter(|f| std::fs::metadata(f.as_ref().unwrap().path()).unwrap().len() > 0)
        .count();
    assert_eq!(files, 2);
}

/// The outbox lines of one campaign, and their send times in order.
fn sent_times(lines: &[serde_json::Value], campaign: &str) -> Vec<i64> {
    let mut at: Vec<i64> = lines
        .iter()
        .filter(|l| l["campaign"] == campaign)
        .map(|l| l["sent_at"].as_i64().unwrap())
        .collect();
    at.sort();
    at
}

/// Messages a second between the first and the last of `at` (sorted).
fn rate_of(at: &[i64]) -> f64 {
    (at.len() - 1) as f64 / ((at[at.len() - 1] - at[0]) as f64 / 1000.0)
}

/// A spring-sale copy under another campaign id.
fn renamed_copy(dir: &Path, rows: usize, providers: &[&str], extra: &str, id: &str) -> PathBuf {
    let path = if providers.is_empty() {
        spring_sale_copy(dir, rows, "outbox", extra)
    } else {
        spring_sale_with_providers(dir, rows, providers, extra)
    };
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("id = \"spring-sale\"", &format!("id = \"{id}\"")),
    )
    .unwrap();
    path
}

/// Each campaign's eligible recipients got exactly one message.
fn each_eligible_once(lines: &[serde_json::Value], campaigns: &[(&str, &Path)]) {
    for (campaign, dir) in campaigns {
        let mine: Vec<serde_json::Value> = lines
            .iter()
            .filter(|l| l["campaign"] == *campaign)
            .cloned()
            .collect();
        let ids: BTreeSet<String> = exactly_once(&mine).into_iter().map(|(r, _)| r).collect();
        assert_eq!(ids, eligible_ids(&dir.join("audience.csv")), "{campaign}");
    }
}

impl Deployment {
    fn add_config(&self, toml: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(toml);
        std::fs::write(&self.config, config).unwrap();
    }

    /// Launches `first`, starts a worker per stage, and launches `second`
    /// once `first` is sending: its batches queue behind the first's.
    fn launch_second_behind_first(&mut self, first: (&str, &Path), second: &Path) {
        self.launch(first.1);
        self.start_worker("segment", "segment");
        self.start_worker("personalise", "personalise");
        self.start_worker("send", "send");
        self.wait_until(first.0, Duration::from_secs(120), |s| {
            s["sent"].as_u64() > Some(0)
        });
        self.launch(second);
    }
}

#[test]
fn a_campaign_slowed_by_its_own_rate_holds_no_worker_from_another() {
    let mut d = Deployment::embedded_measuring();
    // More batches than the send worker has slots, queued first: waiting
    // for their turns in the worker would hold every slot for 20 s.
    d.add_config("[stage.segment]\nbatch_size = 40\n");
    let slow_dir = tempfile::tempdir().unwrap();
    let pace = "\n[schedule]\nrate_per_second = 20\n";
    let slow = renamed_copy(slow_dir.path(), 600, &[], pace, "slow-sale");
    let quick_dir = tempfile::tempdir().unwrap();
    let quick = spring_sale_copy(quick_dir.path(), 600, "outbox", "");
    d.launch_second_behind_first(("slow-sale", &slow), &quick);

    d.wait_until("spring-sale", Duration::from_secs(120), complete);
    let slow_then = d.status("slow-sale")["sent"].as_u64().unwrap();
    let slow_eligible = eligible_ids(&slow_dir.path().join("audience.csv")).len() as u64;
    eprintln!(
        "when the unpaced campaign was done, the paced one had sent {slow_then} of {slow_eligible}"
    );
    assert!(
        slow_then * 2 < slow_eligible,
        "the unpaced campaign waited for the paced one: {slow_then} of {slow_eligible} paced messages went first"
    );
    d.wait_until("slow-sale", Duration::from_secs(120), complete);
    d.stop_workers();

    let lines = d.outbox();
    each_eligible_once(
        &lines,
        &[
            ("slow-sale", slow_dir.path()),
            ("spring-sale", quick_dir.path()),
        ],
    );
    // Parked between turns, the paced campaign still keeps its rate.
    let measured = rate_of(&sent_times(&lines, "slow-sale"));
    assert!(
        (measured - 20.0).abs() / 20.0 <= 0.05,
        "{measured:.1}/s for 20/s"
    );
}

#[test]
fn campaigns_on_one_busy_provider_take_turns() {
    let mut d = Deployment::embedded_measuring();
    let rate = 100.0;
    d.add_config(&format!(
        "[stage.segment]\nbatch_size = 40\n\n[[provider]]\nname = \"paced\"\nkind = \"outbox\"\nrate_per_second = {rate}\n"
    ));
    let big_dir = tempfile::tempdir().unwrap();
    let big = renamed_copy(big_dir.path(), 3000, &["paced"], "", "big-sale");
    let small_dir = tempfile::tempdir().unwrap();
    let small = spring_sale_with_providers(small_dir.path(), 600, &["paced"], "");
    // The small campaign comes while the big one's backlog fills the
    // provider's next half minute.
    d.launch_second_behind_first(("big-sale", &big), &small);
    d.wait_until("spring-sale", Duration::from_secs(120), complete);
    let big_then = d.status("big-sale");
    assert!(
        !complete(&big_then),
        "the big campaign was done first: {big_then}"
    );
    d.wait_until("big-sale", Duration::from_secs(120), complete);
    d.stop_workers();

    let lines = d.outbox();
    let small_at = sent_times(&lines, "spring-sale");
    let big_at = sent_times(&lines, "big-sale");
    let (from, to) = (small_at[0], small_at[small_at.len() - 1]);
    let big_meanwhile = big_at.iter().filter(|t| (from..=to).contains(*t)).count();
    let share = small_at.len() as f64 / (small_at.len() + big_meanwhile) as f64;
    eprintln!(
        "while both sent: {} small, {big_meanwhile} big messages (small's share {share:.2})",
        small_at.len()
    );
    assert!(
        (0.35..=0.65).contains(&share),
        "campaigns did not take turns: the small one's share was {share:.2}"
    );
    // Together they kept the provider's rate.
    let mut all: Vec<i64> = lines
        .iter()
        .map(|l| l["sent_at"].as_i64().unwrap())
        .collect();
    all.sort();
    let measured = rate_of(&all);
    assert!(
        (measured - rate).abs() / rate <= 0.05,
        "{measured:.1}/s for {rate}/s"
    );
    each_eligible_once(
        &lines,
        &[
            ("big-sale", big_dir.path()),
            ("spring-sale", small_dir.path()),
        ],
    );
}

#[test]
fn two_workers_share_one_providers_concurrency_cap() {
    let mut d = Deployment::embedded();
    let server = support::http::Recorder::start_slow(
        Duration::from_millis(40),
        |r| {
            r.json()["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        },
        |_, _| support::http::Answer::ok(),
    );
    // Two workers of two slots each would have four requests in flight.
    d.add_config(&format!(
        r#"[stage.segment]
batch_size = 50

[[provider]]
name = "crm"
kind = "webhook"
endpoint = "{}"
secret_env = "TEST_WEBHOOK_KEY"
concurrency = 2
"#,
        server.url("/hooks")
    ));
    let dir = tempfile::tempdir().unwrap();
    small_audience(dir.path(), 300);
    let campaign = webhook_campaign(dir.path(), "crm");
    d.launch(&campaign);
    d.start_worker("segment", "segment");
    d.start_worker("personalise", "personalise");
    d.start_worker("send", "send-1");
    d.start_worker("send", "send-2");
    let status = d.wait_until("hooks", Duration::from_secs(120), complete);
    d.stop_workers();
    assert_eq!(status["sent"], 300, "{status}");
    let requests = server.requests();
    let ids: BTreeSet<String> = requests
        .iter()
        .map(|r| r.json()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((requests.len(), ids.len()), (300, 300), "each message once");
    let widest = server.max_in_flight();
    eprintln!("two workers, a provider capped at 2: at most {widest} requests in flight");
    assert!(widest <= 2, "{widest} requests were in flight at once");
}
