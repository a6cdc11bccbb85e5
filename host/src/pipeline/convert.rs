//! Core records ↔ WIT records. Values are moved across, never cloned.

use squall_pipeline_core::message::Outgoing;
use squall_pipeline_core::{Record, Value};

use crate::runtime::wit_types as wit;

pub fn to_wit(r: Record) -> wit::Recipient {
    wit::Recipient {
        id: r.id,
        address: r.address,
        values: r
            .values
            .into_iter()
            .map(|v| {
                v.map(|v| match v {
                    Value::Text(s) => wit::Value::Text(s),
                    Value::Number(n) => wit::Value::Number(n),
                    Value::Bool(b) => wit::Value::Boolean(b),
                })
            })
            .collect(),
    }
}

/// The audience line is the host's alone: the caller puts it back.
pub fn from_wit(r: wit::Recipient) -> Record {
    Record {
        line: 0,
        id: r.id,
        address: r.address,
        values: r
            .values
            .into_iter()
            .map(|v| {
                v.map(|v| match v {
                    wit::Value::Text(s) => Value::Text(s),
                    wit::Value::Number(n) => Value::Number(n),
                    wit::Value::Boolean(b) => Value::Bool(b),
                })
            })
            .collect(),
    }
}

pub fn outgoing_to_wit(m: Outgoing) -> wit::OutgoingMessage {
    wit::OutgoingMessage {
        message_id: m.message_id,
        recipient_id: m.recipient_id,
        address: m.address,
        segment: m.segment,
        variant: m.variant,
        unsubscribe_url: m.unsubscribe_url,
        content: wit::RenderedMessage {
            subject: m.content.subject,
            text: m.content.text,
            html: m.content.html,
        },
    }
}

pub fn outgoing_from_wit(m: wit::OutgoingMessage) -> Outgoing {
    Outgoing {
        message_id: m.message_id,
        recipient_id: m.recipient_id,
        address: m.address,
        segment: m.segment,
        variant: m.variant,
        unsubscribe_url: m.unsubscribe_url,
        content: squall_pipeline_core::template::Rendered {
            subject: m.content.subject,
            text: m.content.text,
            html: m.content.html,
        },
        // Timing is decided before the sender stage; nothing to carry back.
        timezone: None,
    }
}

pub fn request_from_wit(r: wit::DeliveryRequest) -> squall_pipeline_core::message::DeliveryRequest {
    use squall_pipeline_core::message::DeliveryRequest as D;
    match r {
        wit::DeliveryRequest::Smtp(s) => D::Smtp {
            mail_from: s.mail_from,
            rcpt_to: s.rcpt_to,
            data: s.data,
        },
        wit::DeliveryRequest::Http(h) => D::Http {
            method: h.method,
            url: h.url,
            headers: h.headers,
            body: h.body,
        },
    }
}
