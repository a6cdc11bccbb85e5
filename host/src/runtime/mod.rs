//! The WebAssembly runtime: one wasmtime engine, the stage components loaded
//! into it, and the sandbox every call runs in.
//!
//! Architecture invariant: stages see only what `sandbox.rs` grants them (a
//! log and WASI without files, environment, sockets or arguments). Anything
//! with side effects happens in the host around the call.

mod engine;
mod sandbox;
mod stages;

pub use engine::{ComponentSource, StageEngine};
pub use sandbox::{SandboxLimits, StageError};
pub use stages::{
    PersonaliserStage, SegmenterStage, SenderStage, StageDiagnostics, personaliser_types,
    segmenter_types, sender_types, wit_types,
};

/// The default stage components, built by `build.rs` and embedded.
pub mod defaults {
    pub const SEGMENTER: &[u8] = include_bytes!(concat!(
        env!("SQUALL_COMPONENTS_DIR"),
        "/squall_segmenter.wasm"
    ));
    pub const PERSONALISER: &[u8] = include_bytes!(concat!(
        env!("SQUALL_COMPONENTS_DIR"),
        "/squall_personaliser.wasm"
    ));
    pub const SENDER: &[u8] = include_bytes!(concat!(
        env!("SQUALL_COMPONENTS_DIR"),
        "/squall_sender.wasm"
    ));
}
