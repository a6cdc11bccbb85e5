//! Engine set-up in one place: pooling allocator, epoch ticker, compilation
//! cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::sandbox::SandboxLimits;

/// How often the epoch advances; a call's deadline is counted in these.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Where a stage's component comes from.
#[derive(Debug, Clone)]
pub enum ComponentSource {
    Embedded {
        name: &'static str,
        bytes: &'static [u8],
    },
    File(PathBuf),
}

impl ComponentSource {
    pub fn describe(&self) -> String {
        match self {
            ComponentSource::Embedded { name, .. } => format!("built-in {name}"),
            ComponentSource::File(p) => p.display().to_string(),
        }
    }
}

pub struct StageEngine {
    engine: Engine,
    stop_ticker: Arc<AtomicBool>,
}

impl StageEngine {
    /// `max_memory` bounds every instance's linear memory in the pool;
    /// per-stage limits may be lower (see `SandboxLimits`).
    pub fn new(max_memory: &SandboxLimits) -> anyhow::Result<StageEngine> {
        let mut pool = PoolingAllocationConfig::new();
        // Bounded: a handful of instances per stage and worker, reused across
        // batches. Slots are virtual memory until touched.
        pool.total_component_instances(64)
            .total_core_instances(512)
            .total_memories(128)
            .total_tables(256)
            .max_memory_size(max_memory.memory_bytes().max(16 << 20));
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // For profiling the stages with `perf`: JIT code gets its Wasm
        // function names in /tmp/perf-<pid>.map.
        if std::env::var_os("SQUALL_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("cannot configure the WebAssembly engine: {e:#}"))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("squall-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("cannot start the epoch ticker")?;
        Ok(StageEngine {
            engine,
            stop_ticker,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component, or loads it from the on-disk cache when this
    /// exact component was compiled by this exact engine before (compiling
    /// the default stages takes seconds; loading them, milliseconds).
    pub(crate) fn load(&self, source: &ComponentSource) -> anyhow::Result<Component> {
        let owned;
        let bytes: &[u8] = match source {
            ComponentSource::Embedded { bytes, .. } => bytes,
            ComponentSource::File(path) => {
                owned = std::fs::read(path)
                    .with_context(|| format!("cannot read plugin {}", path.display()))?;
                &owned
            }
        };
        let key = format!(
            "{:032x}-{:016x}",
            xxhash_rust::xxh3::xxh3_128(bytes),
            self.engine.precompile_compatibility_hash_u64()
        );
        let cached = cache_dir().map(|d| d.join(format!("{key}.cwasm")));
        if let Some(path) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (part of the name), in
            // squall's own cache directory; wasmtime re-checks its header.
            if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, path) } {
                return Ok(component);
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid WebAssembly component: {e:#}",
                source.describe()
            )
        })?;
        if let Some(path) = cached
            && let Ok(serialized) = component.serialize()
        {
            {
                // Write then rename, so a concurrent reader never sees half a file.
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::create_dir_all(path.parent().unwrap()).is_ok()
                    && std::fs::write(&tmp, serialized).is_ok()
                {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
        }
        Ok(component)
    }
}

impl Drop for StageEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

trait CompatHash {
    fn precompile_compatibility_hash_u64(&self) -> u64;
}

impl CompatHash for Engine {
    fn precompile_compatibility_hash_u64(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }
}

/// `$SQUALL_CACHE_DIR`, else `$XDG_CACHE_HOME/squall`, else `~/.cache/squall`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SQUALL_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("squall").join("components"))
}
