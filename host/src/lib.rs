//! Squall's host: loads the stage components, feeds them batches from the
//! queues, and owns state, delivery and progress.
//!
//! Dependencies point one way: `main.rs` (CLI) → `pipeline` (runtime of a
//! campaign) → `runtime` (Wasm stages), `queue`, `store`, `delivery`,
//! `audience`, `campaign`. Nothing below knows about anything above.

pub mod api;
pub mod audience;
pub mod bench;
pub mod campaign;
pub mod config;
pub mod delivery;
pub mod pipeline;
pub mod queue;
pub mod runtime;
pub mod schedule;
mod sqlite;
pub mod store;
pub mod tracking;

/// The address of a real service a test needs, from `var`; `None` (the
/// test says it is skipped) on a developer's machine without it. CI sets
/// every such variable (see `.ci/run`), so there a missing one fails.
#[cfg(test)]
pub(crate) fn test_service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must set {var} (see .ci/run)"
            );
            eprintln!("skipped: {var} is not set");
            None
        }
    }
}
