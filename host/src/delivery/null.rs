//! Accepts and discards everything: benchmarks measure the pipeline, not a
//! mail server.

use std::collections::HashSet;

use async_trait::async_trait;

use super::{Dispatch, Outcome, Transport};

pub struct NullTransport;

#[async_trait]
impl Transport for NullTransport {
    fn name(&self) -> &'static str {
        "null"
    }

    async fn deliver(&self, batch: &[Dispatch]) -> Vec<Outcome> {
        vec![Outcome::Delivered; batch.len()]
    }

    async fn reconcile(&self, _ids: &HashSet<String>) -> Option<HashSet<String>> {
        Some(HashSet::new())
    }
}
