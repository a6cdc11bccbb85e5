//! The three stage kinds as the host sees them: a compiled component, the
//! campaign's configuration for it, and a live instance reused across
//! batches. A trap or timeout discards the instance (its state is suspect);
//! the next batch gets a fresh one from the `InstancePre`.

use std::sync::Arc;

use wasmtime::component::{Linker, ResourceAny};
use wasmtime::{Store, StoreContextMut};

use super::engine::{ComponentSource, EPOCH_TICK, StageEngine};
use super::sandbox::{SandboxLimits, StageError, StageState};

mod segmenter_bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "segmenter-stage" });
}
mod personaliser_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "personaliser-stage",
        with: { "squall:pipeline/types": super::segmenter_bindings::squall::pipeline::types,
                "squall:pipeline/log": super::segmenter_bindings::squall::pipeline::log },
    });
}
mod sender_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sender-stage",
        with: { "squall:pipeline/types": super::segmenter_bindings::squall::pipeline::types,
                "squall:pipeline/log": super::segmenter_bindings::squall::pipeline::log },
    });
}

pub use personaliser_bindings::exports::squall::pipeline::personaliser as personaliser_types;
pub use segmenter_bindings::exports::squall::pipeline::segmenter as segmenter_types;
/// The WIT record types, shared by all stages.
pub use segmenter_bindings::squall::pipeline::types as wit_types;
pub use sender_bindings::exports::squall::pipeline::sender as sender_types;

use segmenter_bindings::squall::pipeline::log;

impl log::Host for StageState {
    fn log(&mut self, level: log::Level, message: String) {
        let stage = self.stage.as_str();
        match level {
            log::Level::Debug => tracing::debug!(stage, "{message}"),
            log::Level::Info => tracing::info!(stage, "{message}"),
            log::Level::Warn => tracing::warn!(stage, "{message}"),
            log::Level::Error => tracing::error!(stage, "{message}"),
        }
    }
}

/// Problems a stage found in its configuration, as the stage reported them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageDiagnostics {
    #[error("the stage rejected its configuration")]
    Invalid(Vec<wit_types::Diagnostic>),
    #[error(transparent)]
    Failed(#[from] StageError),
}

fn linker(engine: &StageEngine) -> wasmtime::Result<Linker<StageState>> {
    let mut linker = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    log::add_to_linker::<StageState, wasmtime::component::HasSelf<StageState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// One live instance: its store, its bindings and the resource the stage's
/// `compile` returned for this campaign.
struct Live<B> {
    store: Store<StageState>,
    bindings: B,
    handle: ResourceAny,
}

macro_rules! stage {
    ($(#[$doc:meta])* $name:ident, $label:literal, $bindings:ident, $world:ident, $pre:ident, $config:ty, $iface:ident, $resource:ident) => {
        $(#[$doc])*
        pub struct $name {
            engine: wasmtime::Engine,
            pre: Arc<$bindings::$pre<StageState>>,
            config: $config,
            limits: SandboxLimits,
            live: Option<Live<$bindings::$world>>,
        }

        impl $name {
            /// Loads the component, checks that it implements the stage's
            /// world, and compiles the campaign's configuration in it.
            pub fn new(
                engine: &StageEngine,
                source: &ComponentSource,
                config: $config,
                limits: SandboxLimits,
            ) -> Result<Self, StageDiagnostics> {
                let component = engine.load(source).map_err(|e| StageError::Load {
                    stage: format!("{} ({})", $label, source.describe()),
                    message: format!("{e:#}").replace('\n', " "),
                })?;
                let pre = linker(engine)
                    .and_then(|l| l.instantiate_pre(&component))
                    .and_then($bindings::$pre::new)
                    .map_err(|e| StageError::Load {
                        stage: format!("{} ({})", $label, source.describe()),
                        message: format!(
                            "it does not implement the WIT world `squall:pipeline/{}`: {}",
                            stringify!($world).to_lowercase(),
                            format!("{e:#}").replace('\n', " ")
                        ),
                    })?;
                let mut stage = $name { engine: engine.engine().clone(), pre: Arc::new(pre), config, limits, live: None };
                stage.live()?;
                Ok(stage)
            }

            /// Another instance of the same stage for a parallel worker.
            pub fn fork(&self) -> Result<Self, StageDiagnostics> {
                let mut stage = $name {
                    engine: self.engine.clone(),
                    pre: self.pre.clone(),
                    config: self.config.clone(),
                    limits: self.limits,
                    live: None,
                };
                stage.live()?;
                Ok(stage)
            }

            fn live(&mut self) -> Result<&mut Live<$bindings::$world>, StageDiagnostics> {
                if self.live.is_none() {
                    let mut store = Store::new(&self.engine, StageState::new($label, &self.limits));
                    store.limiter(|s| &mut s.limiter);
                    let ticks = self.limits.timeout().as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64;
                    store.set_epoch_deadline(ticks.max(1));
                    let bindings = match self.pre.instantiate(&mut store) {
                        Ok(b) => b,
                        Err(e) => return Err(store.data().classify(&e, &self.limits).into()),
                    };
                    let compiled = bindings.$iface().$resource().call_compile(&mut store, &self.config);
                    let handle = match compiled {
                        Ok(Ok(handle)) => handle,
                        Ok(Err(diagnostics)) => return Err(StageDiagnostics::Invalid(diagnostics)),
                        Err(e) => return Err(store.data().classify(&e, &self.limits).into()),
                    };
                    self.live = Some(Live { store, bindings, handle });
                }
                Ok(self.live.as_mut().expect("just created"))
            }

            /// Runs one call under the deadline; a failure discards the instance.
            fn call<R>(
                &mut self,
                f: impl FnOnce(&$bindings::$world, StoreContextMut<'_, StageState>, ResourceAny) -> wasmtime::Result<R>,
            ) -> Result<R, StageError> {
                let limits = self.limits;
                let live = self.live().map_err(|e| match e {
                    StageDiagnostics::Failed(e) => e,
                    StageDiagnostics::Invalid(d) => StageError::Trap {
                        stage: $label.into(),
                        message: format!("configuration rejected on re-instantiation: {d:?}"),
                    },
                })?;
                let ticks = limits.timeout().as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64;
                live.store.set_epoch_deadline(ticks.max(1));
                let result = f(&live.bindings, live.store.as_context_mut(), live.handle);
                match result {
                    Ok(r) => Ok(r),
                    Err(e) => {
                        let reason = live.store.data().classify(&e, &limits);
                        tracing::warn!(stage = $label, %reason, "stage call failed; its instance is discarded");
                        self.live = None;
                        Err(reason)
                    }
                }
            }
        }
    };
}

use wasmtime::AsContextMut as _;

stage!(
    /// Places recipients into segments and variants.
    SegmenterStage, "segmenter", segmenter_bindings, SegmenterStage, SegmenterStagePre,
    segmenter_types::Config, squall_pipeline_segmenter, plan
);
stage!(
    /// Renders messages.
    PersonaliserStage, "personaliser", personaliser_bindings, PersonaliserStage, PersonaliserStagePre,
    personaliser_types::Config, squall_pipeline_personaliser, renderer
);
stage!(
    /// Builds provider requests.
    SenderStage, "sender", sender_bindings, SenderStage, SenderStagePre,
    sender_types::Config, squall_pipeline_sender, builder
);

impl SegmenterStage {
    pub fn assign(
        &mut self,
        batch: &wit_types::RecipientBatch,
    ) -> Result<Vec<wit_types::Assignment>, StageError> {
        self.call(|b, store, handle| {
            b.squall_pipeline_segmenter()
                .plan()
                .call_assign(store, handle, batch)
        })
    }
}

impl PersonaliserStage {
    pub fn render(
        &mut self,
        batch: &wit_types::RecipientBatch,
        picks: &[u32],
    ) -> Result<Vec<Result<wit_types::RenderedMessage, String>>, StageError> {
        self.call(|b, store, handle| {
            b.squall_pipeline_personaliser()
                .renderer()
                .call_render(store, handle, batch, picks)
        })
    }
}

impl SenderStage {
    pub fn build(
        &mut self,
        messages: &[wit_types::OutgoingMessage],
        now: i64,
    ) -> Result<Vec<Result<wit_types::DeliveryRequest, String>>, StageError> {
        self.call(|b, store, handle| {
            b.squall_pipeline_sender()
                .builder()
                .call_build(store, handle, messages, now)
        })
    }
}
