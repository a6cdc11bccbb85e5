//! Everything wrong with a campaign file, found in one pass and before
//! anything is sent: structure, rules and templates (by the stages that
//! will run them), and the providers it names. `squall validate` and the
//! API's validate and create call this.

use std::path::Path;

use super::prepare::{self, PrepareError};
use crate::campaign::{Campaign, FileDiagnostic};
use crate::delivery::provider::ProviderConfig;
use crate::runtime::StageEngine;

pub enum Validation {
    Valid(Box<Campaign>),
    Invalid(Vec<FileDiagnostic>),
}

pub fn validate(path: &Path, providers: &[ProviderConfig]) -> Result<Validation, PrepareError> {
    let (c, mut problems) = match Campaign::load_partial(path) {
        Ok(loaded) => loaded,
        Err(d) => return Ok(Validation::Invalid(d.0)),
    };
    let engine = StageEngine::new(&c.file.limits.sandbox())
        .map_err(|e| PrepareError::Stage(format!("{e:#}")))?;
    match prepare::stages(&c, &engine) {
        Ok(_) => {}
        Err(PrepareError::Invalid(d)) => {
            // With structural problems present, keep what only the stages
            // can see (rules, templates); the rest repeats them.
            let structural = !problems.is_empty();
            problems.extend(d.0.into_iter().filter(|p| {
                !structural
                    || [".rule:", ".subject:", ".text:", ".html:"]
                        .iter()
                        .any(|k| p.message.contains(k))
            }));
        }
        Err(e) => return Err(e),
    }
    problems.extend(super::transports::check_providers(providers, &c));
    if problems.is_empty() {
        Ok(Validation::Valid(Box::new(c)))
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Ok(Validation::Invalid(problems))
    }
}
