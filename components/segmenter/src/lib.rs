//! The default segmenter component: CEL rules, weighted A/B variants.
//! A thin adapter from the WIT types to `squall-pipeline-core`.

// Talc instead of Rust's default dlmalloc: stages allocate per recipient
// (records, Liquid objects, rendered strings) and the allocator was a
// large share of their time (BENCHMARKS.md).
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

wit_bindgen::generate!({ path: "../../wit", world: "segmenter-stage" });

use exports::squall::pipeline::segmenter::{Config, Guest, GuestPlan, Plan};
use squall::pipeline::types::{Assignment, Diagnostic, Placement, RecipientBatch};
use squall_pipeline_core::segment::{self, MessageChoice, SegmentRule, Segmenter, SegmenterConfig};

mod convert;

struct Component;

impl Guest for Component {
    type Plan = Segmenter;
}

impl GuestPlan for Segmenter {
    fn compile(config: Config) -> Result<Plan, Vec<Diagnostic>> {
        let config = SegmenterConfig {
            campaign: config.campaign,
            fields: config.fields,
            segments: config
                .segments
                .into_iter()
                .map(|s| SegmentRule {
                    name: s.name,
                    rule: s.rule,
                })
                .collect(),
            messages: config
                .messages
                .into_iter()
                .map(|m| MessageChoice {
                    segment: m.segment,
                    variant: m.variant,
                    weight: m.weight,
                })
                .collect(),
        };
        Segmenter::compile(config)
            .map(Plan::new)
            .map_err(convert::diagnostics)
    }

    fn assign(&self, batch: RecipientBatch) -> Vec<Assignment> {
        Segmenter::assign(self, &convert::batch(batch))
            .into_iter()
            .map(|a| match a {
                segment::Assignment::Unsegmented => Assignment::Unsegmented,
                segment::Assignment::Assigned { segment, message } => {
                    Assignment::Assigned(Placement { segment, message })
                }
            })
            .collect()
    }
}

export!(Component);
