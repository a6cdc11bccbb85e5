//! A hostile plugin (infinite loop, memory bomb, panic) fails its batches
//! with a clear reason; the host survives and the run completes.

mod support;

use support::*;

fn campaign_for(dir: &std::path::Path, mode: &str) -> std::path::PathBuf {
    support::hostile_campaign(
        dir,
        &format!("hostile-{mode}"),
        mode,
        "timeout_ms = 300\nmemory_mb = 32\nmax_attempts = 2",
    )
}

fn assert_dead_lettered(mode: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let campaign = campaign_for(dir.path(), mode);
    let (out, report) = run_json(&campaign, &dir.path().join("data"));
    assert!(
        out.status.success(),
        "the host must survive a {mode} plugin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["complete"], true);
    assert_eq!(report["sent"], 0);
    assert_eq!(report["dead_lettered"], 3, "{report}");
    let dead = &report["dead_letters"][0];
    assert_eq!(dead["stage"], "segment");
    let got = dead["reason"].as_str().unwrap();
    assert!(got.contains(reason), "reason {got:?} should say {reason:?}");
    assert!(got.contains("after 2 attempt(s)"), "{got}");
}

#[test]
fn an_infinite_loop_times_out() {
    assert_dead_lettered("loop", "exceeded its time limit of 300 ms");
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    assert_dead_lettered("bomb", "exceeded its memory limit of 32 MiB");
}

#[test]
fn a_panic_traps() {
    assert_dead_lettered("trap", "segmenter trapped");
}

#[test]
fn a_plugin_that_does_not_implement_the_world_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = campaign_for(dir.path(), "true");
    // The hostile plugin is a segmenter: offered as a sender it does not fit.
    let text = std::fs::read_to_string(&campaign)
        .unwrap()
        .replace("segmenter = \"hostile.wasm\"", "sender = \"hostile.wasm\"");
    std::fs::write(&campaign, text).unwrap();
    let out = squall().arg("validate").arg(&campaign).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not implement the WIT world"), "{err}");
}
