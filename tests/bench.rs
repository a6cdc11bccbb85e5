//! `squall bench` itself, on a small audience: the figures BENCHMARKS.md
//! quotes come from this command, so its report must stay whole and
//! consistent. Nothing here is about speed (a debug build, a shared
//! machine); release figures go to BENCHMARKS.md.

mod support;

fn number(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v}", path.join(".")))
}

#[test]
fn the_benchmark_runs_both_pipelines_and_reports_consistent_figures() {
    let r = support::json_of(&["bench", "--recipients", "3000", "--json"]);
    assert_eq!(r["recipients"], 3000, "{r}");
    // The bench itself checks that the native baseline sent exactly what
    // the pipeline sent; most of the synthetic audience is in a segment.
    let sent = number(&r, &["sent"]);
    assert!(sent > 2000.0 && sent <= 3000.0, "{r}");
    for stage in ["segment", "personalise", "send", "stages", "end_to_end"] {
        let wasm = number(&r, &["wasm", stage]);
        let native = number(&r, &["native", stage]);
        let ratio = number(&r, &["ratio", stage]);
        assert!(wasm.is_finite() && wasm > 0.0, "{stage}: {r}");
        assert!(native.is_finite() && native > 0.0, "{stage}: {r}");
        assert!(
            (ratio - wasm / native).abs() < 1e-9 * ratio.max(1.0),
            "{stage}: {r}"
        );
    }
    for side in ["wasm", "native"] {
        let per_message: f64 = ["segment", "personalise", "send"]
            .iter()
            .map(|s| 1.0 / number(&r, &[side, s]))
            .sum();
        let stages = number(&r, &[side, "stages"]);
        assert!(
            (stages * per_message - 1.0).abs() < 1e-9,
            "{side}: the stages together take each stage's time per message: {r}"
        );
    }
    assert!(number(&r, &["peak_rss_mb"]) > 1.0, "{r}");
    assert!(number(&r, &["ledger_us_per_message"]) > 0.0, "{r}");
}
