//! The default personaliser component: Liquid templates.
//! A thin adapter from the WIT types to `squall-pipeline-core`.

// Talc instead of Rust's default dlmalloc: stages allocate per recipient
// (records, Liquid objects, rendered strings) and the allocator was a
// large share of their time (BENCHMARKS.md).
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

wit_bindgen::generate!({ path: "../../wit", world: "personaliser-stage" });

use exports::squall::pipeline::personaliser::{Config, Guest, GuestRenderer, Renderer};
use squall::pipeline::types::{Diagnostic, RecipientBatch, RenderedMessage};
use squall_pipeline_core::template::{Personaliser, PersonaliserConfig, Template};

mod convert;

struct Component;

impl Guest for Component {
    type Renderer = Personaliser;
}

impl GuestRenderer for Personaliser {
    fn compile(config: Config) -> Result<Renderer, Vec<Diagnostic>> {
        let config = PersonaliserConfig {
            campaign: config.campaign,
            fields: config.fields,
            templates: config
                .templates
                .into_iter()
                .map(|t| Template {
                    key: t.key,
                    subject: t.subject,
                    text: t.text,
                    html: t.html,
                })
                .collect(),
        };
        Personaliser::compile(config)
            .map(Renderer::new)
            .map_err(convert::diagnostics)
    }

    fn render(
        &self,
        batch: RecipientBatch,
        picks: Vec<u32>,
    ) -> Vec<Result<RenderedMessage, String>> {
        Personaliser::render(self, &convert::batch(batch), &picks)
            .into_iter()
            .map(|r| {
                r.map(|m| RenderedMessage {
                    subject: m.subject,
                    text: m.text,
                    html: m.html,
                })
            })
            .collect()
    }
}

export!(Component);
