//! Tracking under load: 2,000 requests a second for 10 seconds against a
//! real `squall serve` stack (signed tokens, group-committed writes), and
//! every answered request is an event in the store. Latency figures go to
//! BENCHMARKS.md (from a release build); this test asserts nothing about
//! time, only that nothing is lost.

mod support;

#[test]
fn two_thousand_tracking_requests_a_second_are_all_recorded() {
    let r = support::json_of(&[
        "bench",
        "--tracking",
        "--rate",
        "2000",
        "--seconds",
        "10",
        "--json",
    ]);
    assert_eq!(r["requests"], 20_000, "{r}");
    assert_eq!(r["squall"]["errors"], 0, "every request answered: {r}");
    assert_eq!(r["recorded"], 20_000, "every event stored: {r}");
    assert_eq!(r["lost"], 0, "{r}");
    eprintln!("tracking load (debug build): {r}");
}
