//! Squall's host: loads the stage components, feeds them batches from the
//! queues, and owns state, delivery and progress.
//!
//! Dependencies point one way: `main.rs` (CLI) → `pipeline` (runtime of a
//! campaign) → `runtime` (Wasm stages), `queue`, `store`, `delivery`,
//! `audience`, `campaign`. Nothing below knows about anything above.

pub mod audience;
pub mod bench;
pub mod campaign;
pub mod config;
pub mod delivery;
pub mod pipeline;
pub mod queue;
pub mod runtime;
mod sqlite;
pub mod store;
