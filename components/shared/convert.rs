// WIT ↔ core conversions shared by the default components. Each component
// generates its own bindings, so the types are distinct per crate and this
// file is included (not linked) into each: values are moved, never copied.
#[allow(unused_imports)]
use crate::squall::pipeline::types as wit;
#[allow(unused_imports)]
use squall_pipeline_core as core_types;

#[allow(dead_code)]
pub fn batch(b: wit::RecipientBatch) -> core_types::Batch {
    core_types::Batch {
        campaign: b.campaign,
        columns: b.columns,
        recipients: b
            .recipients
            .into_iter()
            .map(|r| core_types::Record {
                // Stages never see audience lines.
                line: 0,
                id: r.id,
                address: r.address,
                values: r
                    .values
                    .into_iter()
                    .map(|v| {
                        v.map(|v| match v {
                            wit::Value::Text(s) => core_types::Value::Text(s),
                            wit::Value::Number(n) => core_types::Value::Number(n),
                            wit::Value::Boolean(b) => core_types::Value::Bool(b),
                        })
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[allow(dead_code)]
pub fn diagnostics(d: Vec<core_types::Diagnostic>) -> Vec<wit::Diagnostic> {
    d.into_iter()
        .map(|d| wit::Diagnostic { source: d.source, line: d.line, column: d.column, message: d.message })
        .collect()
}
