//! `squall preview`: one recipient through all three stages, nothing sent.

use squall_pipeline_core::ids::message_id;

use super::convert::to_wit;
use super::prepare;
use crate::audience::{AudienceReader, Row};
use crate::campaign::Campaign;
use crate::runtime::{StageEngine, wit_types as wit};
use crate::store::MessageRef;
use crate::tracking::Tracker;
use squall_pipeline_core::template::Rendered;

#[derive(Debug, serde::Serialize)]
pub struct Preview {
    pub recipient_id: String,
    pub line: u64,
    pub to: String,
    pub segment: Option<String>,
    pub variant: Option<String>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    /// The complete provider request: the MIME message for email.
    pub request: Option<String>,
}

pub fn preview(campaign: &Campaign, recipient_id: &str) -> anyhow::Result<Preview> {
    let engine = StageEngine::new(&campaign.file.limits.sandbox())?;
    let mut stages = prepare::stages(campaign, &engine)?;
    let mut found = None;
    for row in AudienceReader::open(&campaign.audience)? {
        match row? {
            Row::Valid(r) if r.record.id == recipient_id => {
                found = Some(r);
                break;
            }
            Row::Rejected { reject, .. } if reject.raw.split(',').next() == Some(recipient_id) => {
                anyhow::bail!(
                    "recipient {recipient_id} (line {}) is rejected: {}",
                    reject.line,
                    reject.reason
                )
            }
            _ => {}
        }
    }
    let r = found.ok_or_else(|| {
        anyhow::anyhow!(
            "no recipient with id `{recipient_id}` in {}",
            campaign.audience.path.display()
        )
    })?;
    let mut preview = Preview {
        recipient_id: r.record.id.clone(),
        line: r.line,
        to: r.record.address.clone(),
        segment: None,
        variant: None,
        message_id: None,
        subject: None,
        text: None,
        html: None,
        request: None,
    };
    let line = r.record.line;
    let batch = wit::RecipientBatch {
        campaign: campaign.id().to_string(),
        columns: campaign.columns.clone(),
        recipients: vec![to_wit(r.record)],
    };
    let assignment = stages.segmenter.assign(&batch)?.pop();
    let Some(wit::Assignment::Assigned(p)) = assignment else {
        return Ok(preview);
    };
    let m = &campaign.file.message[p.message as usize];
    let (segment, variant) = (m.segment.get_ref().clone(), m.variant.get_ref().clone());
    let rendered = stages
        .personaliser
        .render(&batch, &[p.message])?
        .pop()
        .expect("one result per recipient");
    let rendered =
        rendered.map_err(|e| anyhow::anyhow!("rendering {segment}/{variant} fails: {e}"))?;
    let id = message_id(
        campaign.id(),
        line,
        &preview.recipient_id,
        &format!("{segment}/{variant}"),
    );
    // Links are shown as they will be sent, signed with a key of no
    // deployment: a preview's links do not count as anything.
    let tracker = Tracker::from_settings(&campaign.file.tracking, b"preview");
    let reference = MessageRef {
        campaign: campaign.id().to_string(),
        message_id: id.clone(),
        recipient_id: preview.recipient_id.clone(),
        segment: segment.clone(),
        variant: variant.clone(),
        wave: 0,
    };
    let mut content = Rendered {
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
    };
    tracker
        .decorate(&reference, &mut content)
        .map_err(|e| anyhow::anyhow!(e))?;
    let rendered = wit::RenderedMessage {
        subject: content.subject,
        text: content.text,
        html: content.html,
    };
    let outgoing = wit::OutgoingMessage {
        message_id: id.clone(),
        recipient_id: preview.recipient_id.clone(),
        address: preview.to.clone(),
        segment: segment.clone(),
        variant: variant.clone(),
        unsubscribe_url: tracker.unsubscribe_url(&reference, &preview.to),
        content: rendered.clone(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let request = stages
        .sender
        .build(&[outgoing], now)?
        .pop()
        .expect("one request per message");
    preview.request = Some(
        match request.map_err(|e| anyhow::anyhow!("building the request fails: {e}"))? {
            wit::DeliveryRequest::Smtp(s) => String::from_utf8_lossy(&s.data).into_owned(),
            wit::DeliveryRequest::Http(h) => {
                format!(
                    "{} {}\n{:?}\n\n{}",
                    h.method,
                    h.url,
                    h.headers,
                    String::from_utf8_lossy(&h.body)
                )
            }
        },
    );
    preview.segment = Some(segment);
    preview.variant = Some(variant);
    preview.message_id = Some(id);
    preview.subject = Some(rendered.subject);
    preview.text = Some(rendered.text);
    preview.html = rendered.html;
    Ok(preview)
}
