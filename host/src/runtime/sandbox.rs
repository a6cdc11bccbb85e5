//! What a stage may touch, and how a misbehaving one is stopped.

use std::time::Duration;

use wasmtime::{ResourceLimiter, Trap};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

/// Per-call limits. Defaults suit the built-in stages with batches of
/// hundreds of recipients; plugins may be given tighter ones.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxLimits {
    /// Linear memory a stage instance may grow to.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Wall-clock budget for one batch call (enforced by epoch interruption).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_memory_mb() -> u32 {
    256
}
fn default_timeout_ms() -> u64 {
    10_000
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_mb: default_memory_mb(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

impl SandboxLimits {
    pub fn memory_bytes(&self) -> usize {
        self.memory_mb as usize * 1024 * 1024
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Why a stage call failed. Every variant fails one batch, never the host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageError {
    #[error("{stage} exceeded its time limit of {limit_ms} ms for one batch (infinite loop?)")]
    Timeout { stage: String, limit_ms: u64 },
    #[error("{stage} exceeded its memory limit of {limit_mb} MiB")]
    MemoryExceeded { stage: String, limit_mb: u32 },
    #[error("{stage} trapped: {message}")]
    Trap { stage: String, message: String },
    #[error("{stage} cannot be loaded: {message}")]
    Load { stage: String, message: String },
}

impl StageError {
    /// What a failure reason that came from a `StageError` says about its
    /// cause: `trap`, `timeout` or `memory`; `None` for other reasons. By
    /// the wording above, since reasons travel as text (dead letters, retry
    /// reasons) and are classified where they are counted.
    pub fn cause_of(reason: &str) -> Option<&'static str> {
        if reason.contains("exceeded its time limit") {
            Some("timeout")
        } else if reason.contains("exceeded its memory limit") {
            Some("memory")
        } else if reason.contains(" trapped: ") {
            Some("trap")
        } else {
            None
        }
    }
}

/// Host state of one stage instance.
pub(crate) struct StageState {
    pub(crate) stage: String,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
}

impl StageState {
    pub(crate) fn new(stage: &str, limits: &SandboxLimits) -> Self {
        // No preopened directories, no environment, no arguments, no network:
        // WasiCtx's defaults grant none of them. Stdout/stderr are closed too.
        let wasi = WasiCtx::builder().build();
        StageState {
            stage: stage.to_string(),
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: limits.memory_bytes(),
                exceeded: false,
            },
        }
    }

    /// Turns a failed call into the reason recorded for its batch.
    pub(crate) fn classify(&self, error: &wasmtime::Error, limits: &SandboxLimits) -> StageError {
        let stage = self.stage.clone();
        if self.limiter.exceeded {
            return StageError::MemoryExceeded {
                stage,
                limit_mb: limits.memory_mb,
            };
        }
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            return StageError::Timeout {
                stage,
                limit_ms: limits.timeout_ms,
            };
        }
        StageError::Trap {
            stage,
            message: format!("{error:#}").replace('\n', " "),
        }
    }
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that the cap was hit, so the failure is
/// reported as what it is rather than as the guest's allocation-failure trap.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}
