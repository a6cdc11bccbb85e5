//! From a campaign to its three configured stages. The stages check their
//! own configuration (rules, templates, sender settings); their diagnostics
//! are mapped back to the campaign file.

use squall_pipeline_core::message::{self, Channel};
use squall_pipeline_core::{segment, template};

use crate::campaign::{Campaign, Diagnostics, FileDiagnostic};
use crate::runtime::{
    PersonaliserStage, SegmenterStage, SenderStage, StageDiagnostics, StageEngine,
    personaliser_types, segmenter_types, sender_types, wit_types,
};

pub struct Stages {
    pub segmenter: SegmenterStage,
    pub personaliser: PersonaliserStage,
    pub sender: SenderStage,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("{0}")]
    Stage(String),
}

// The campaign's stage configurations are built once, as the core types
// the default stages compile natively (the benchmark's baseline uses them
// as they are), and converted to their WIT form for the components.

pub fn core_segmenter_config(c: &Campaign) -> segment::SegmenterConfig {
    let names: Vec<&String> = c.file.segment.iter().map(|s| s.name.get_ref()).collect();
    segment::SegmenterConfig {
        campaign: c.id().to_string(),
        fields: c.columns.clone(),
        segments: c
            .file
            .segment
            .iter()
            .map(|s| segment::SegmentRule {
                name: s.name.get_ref().clone(),
                rule: s.rule.get_ref().clone(),
            })
            .collect(),
        messages: c
            .file
            .message
            .iter()
            .map(|m| segment::MessageChoice {
                segment: names
                    .iter()
                    .position(|n| *n == m.segment.get_ref())
                    .unwrap_or(usize::MAX) as u32,
                variant: m.variant.get_ref().clone(),
                weight: m.weight,
            })
            .collect(),
    }
}

pub fn core_personaliser_config(c: &Campaign) -> template::PersonaliserConfig {
    template::PersonaliserConfig {
        campaign: c.id().to_string(),
        fields: c.columns.clone(),
        templates: c
            .file
            .message
            .iter()
            .enumerate()
            .map(|(i, m)| template::Template {
                key: c.message_key(i),
                subject: m
                    .subject
                    .as_ref()
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default(),
                text: m.text.get_ref().clone(),
                html: m.html.as_ref().map(|h| h.get_ref().clone()),
            })
            .collect(),
    }
}

/// The fields the built-in segmenter and personaliser read, when the
/// campaign uses them: batches cross into those stages carrying only these
/// (moved, never copied), since lowering every field of every recipient
/// into a component's memory was much of a stage's cost. A plugin's reads
/// are unknown, so a plugin is sent every field (`None`).
#[derive(Debug, Clone, Default)]
pub struct StageReads {
    pub segment: Option<Vec<String>>,
    pub personalise: Option<Vec<String>>,
}

pub fn stage_reads(c: &Campaign) -> StageReads {
    let built_in = |s: &crate::runtime::ComponentSource| {
        matches!(s, crate::runtime::ComponentSource::Embedded { .. })
    };
    StageReads {
        segment: built_in(&c.stages.segmenter)
            .then(|| segment::fields_read(&core_segmenter_config(c))),
        personalise: built_in(&c.stages.personaliser)
            .then(|| template::fields_read(&core_personaliser_config(c))),
    }
}

pub fn core_sender_config(c: &Campaign) -> message::SenderConfig {
    let d = &c.file.delivery;
    message::SenderConfig {
        campaign: c.id().to_string(),
        channel: c.channel(),
        from: d.from.get_ref().clone(),
        reply_to: d.reply_to.clone(),
        unsubscribe_mailto: d.unsubscribe_mailto.clone(),
        endpoint: d.endpoint.clone(),
    }
}

pub fn segmenter_config(c: &Campaign) -> segmenter_types::Config {
    let core = core_segmenter_config(c);
    segmenter_types::Config {
        campaign: core.campaign,
        fields: core.fields,
        segments: core
            .segments
            .into_iter()
            .map(|s| segmenter_types::SegmentRule {
                name: s.name,
                rule: s.rule,
            })
            .collect(),
        messages: core
            .messages
            .into_iter()
            .map(|m| segmenter_types::MessageChoice {
                segment: m.segment,
                variant: m.variant,
                weight: m.weight,
            })
            .collect(),
    }
}

pub fn personaliser_config(c: &Campaign) -> personaliser_types::Config {
    let core = core_personaliser_config(c);
    personaliser_types::Config {
        campaign: core.campaign,
        fields: core.fields,
        templates: core
            .templates
            .into_iter()
            .map(|t| personaliser_types::Template {
                key: t.key,
                subject: t.subject,
                text: t.text,
                html: t.html,
            })
            .collect(),
    }
}

pub fn sender_config(c: &Campaign) -> sender_types::Config {
    let core = core_sender_config(c);
    sender_types::Config {
        campaign: core.campaign,
        channel: match core.channel {
            Channel::Email => wit_types::Channel::Email,
            Channel::Sms => wit_types::Channel::Sms,
            Channel::Webhook => wit_types::Channel::Webhook,
        },
        from: core.from,
        reply_to: core.reply_to,
        unsubscribe_mailto: core.unsubscribe_mailto,
        endpoint: core.endpoint,
    }
}

/// Loads and configures all three stages, collecting every problem.
pub fn stages(c: &Campaign, engine: &StageEngine) -> Result<Stages, PrepareError> {
    let limits = c.file.limits.sandbox();
    let segmenter = SegmenterStage::new(engine, &c.stages.segmenter, segmenter_config(c), limits);
    let personaliser = PersonaliserStage::new(
        engine,
        &c.stages.personaliser,
        personaliser_config(c),
        limits,
    );
    let sender = SenderStage::new(engine, &c.stages.sender, sender_config(c), limits);
    let mut problems: Vec<FileDiagnostic> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut collect = |e: &StageDiagnostics| match e {
        StageDiagnostics::Invalid(diags) => problems.extend(
            diags
                .iter()
                .map(|d| c.locate(&d.source, d.line, d.column, &d.message)),
        ),
        StageDiagnostics::Failed(e) => failures.push(e.to_string()),
    };
    for e in [
        segmenter.as_ref().err(),
        personaliser.as_ref().err(),
        sender.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    {
        collect(e);
    }
    if !failures.is_empty() {
        return Err(PrepareError::Stage(failures.join("\n")));
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(PrepareError::Invalid(Diagnostics(problems)));
    }
    Ok(Stages {
        segmenter: segmenter.ok().unwrap(),
        personaliser: personaliser.ok().unwrap(),
        sender: sender.ok().unwrap(),
    })
}
