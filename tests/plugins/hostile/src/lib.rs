//! A deliberately hostile segmenter plugin for the sandbox tests. What it
//! does is chosen by the first segment's rule: `loop` spins forever, `bomb`
//! grows memory without end, `trap` panics; anything else behaves.

wit_bindgen::generate!({ path: "../../../wit", world: "segmenter-stage" });

use exports::squall::pipeline::segmenter::{Config, Guest, GuestPlan, Plan};
use squall::pipeline::types::{Assignment, Diagnostic, Placement, RecipientBatch};

struct Component;

struct Hostile {
    mode: String,
}

impl Guest for Component {
    type Plan = Hostile;
}

impl GuestPlan for Hostile {
    fn compile(config: Config) -> Result<Plan, Vec<Diagnostic>> {
        let mode = config
            .segments
            .first()
            .map(|s| s.rule.clone())
            .unwrap_or_default();
        Ok(Plan::new(Hostile { mode }))
    }

    fn assign(&self, batch: RecipientBatch) -> Vec<Assignment> {
        match self.mode.as_str() {
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "trap" => panic!("hostile plugin panicked on purpose"),
            _ => batch
                .recipients
                .iter()
                .map(|_| {
                    Assignment::Assigned(Placement {
                        segment: 0,
                        message: 0,
                    })
                })
                .collect(),
        }
    }
}

export!(Component);
