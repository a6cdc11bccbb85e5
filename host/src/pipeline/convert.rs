//! Core records ↔ WIT records. Values are moved across, never cloned.

use squall_pipeline_core::message::Outgoing;
use squall_pipeline_core::{Record, Value};

use crate::runtime::wit_types as wit;

fn value_to_wit(v: Option<Value>) -> Option<wit::Value> {
    v.map(|v| match v {
        Value::Text(s) => wit::Value::Text(s),
        Value::Number(n) => wit::Value::Number(n),
        Value::Bool(b) => wit::Value::Boolean(b),
    })
}

fn value_from_wit(v: Option<wit::Value>) -> Option<Value> {
    v.map(|v| match v {
        wit::Value::Text(s) => Value::Text(s),
        wit::Value::Number(n) => Value::Number(n),
        wit::Value::Boolean(b) => Value::Bool(b),
    })
}

pub fn to_wit(r: Record) -> wit::Recipient {
    wit::Recipient {
        id: r.id,
        address: r.address,
        values: r.values.into_iter().map(value_to_wit).collect(),
    }
}

/// The audience line is the host's alone: the caller puts it back.
pub fn from_wit(r: wit::Recipient) -> Record {
    Record {
        line: 0,
        id: r.id,
        address: r.address,
        values: r.values.into_iter().map(value_from_wit).collect(),
    }
}

/// The columns a stage is sent, and which of the batch's they are (`None`:
/// all of them), for a stage that reads only `reads`.
pub fn lent_columns(
    columns: &[String],
    reads: Option<&[String]>,
) -> (Vec<String>, Option<Vec<usize>>) {
    match reads {
        None => (columns.to_vec(), None),
        Some(reads) => {
            let keep: Vec<usize> = (0..columns.len())
                .filter(|&i| reads.contains(&columns[i]))
                .collect();
            (
                keep.iter().map(|&i| columns[i].clone()).collect(),
                Some(keep),
            )
        }
    }
}

/// Moves a record's id, address and the values at `keep` (every value:
/// `None`) into its WIT form for a stage call; `give_back` returns them.
/// Nothing is copied on this side of the boundary.
pub fn lend(r: &mut Record, keep: Option<&[usize]>) -> wit::Recipient {
    let values = match keep {
        None => std::mem::take(&mut r.values),
        Some(keep) => keep
            .iter()
            .map(|&i| r.values.get_mut(i).and_then(Option::take))
            .collect(),
    };
    wit::Recipient {
        id: std::mem::take(&mut r.id),
        address: std::mem::take(&mut r.address),
        values: values.into_iter().map(value_to_wit).collect(),
    }
}

/// Puts back what `lend` moved out of `r`.
pub fn give_back(r: &mut Record, lent: wit::Recipient, keep: Option<&[usize]>) {
    r.id = lent.id;
    r.address = lent.address;
    let values = lent.values.into_iter().map(value_from_wit);
    match keep {
        None => r.values = values.collect(),
        Some(keep) => {
            for (&i, v) in keep.iter().zip(values) {
                if let Some(slot) = r.values.get_mut(i) {
                    *slot = v;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lent_fields_come_back_where_they_were() {
        let record = Record {
            line: 7,
            id: "r1".into(),
            address: "a@x.test".into(),
            values: vec![
                Some(Value::Text("DE".into())),
                None,
                Some(Value::Number(2.5)),
                Some(Value::Bool(true)),
            ],
        };
        let columns: Vec<String> = ["country", "name", "ltv", "vip"].map(String::from).into();
        let reads = vec![
            "vip".to_string(),
            "country".to_string(),
            "unknown".to_string(),
        ];
        for reads in [None, Some(reads.as_slice())] {
            let (sent, keep) = lent_columns(&columns, reads);
            let mut r = record.clone();
            let lent = lend(&mut r, keep.as_deref());
            assert_eq!(lent.values.len(), sent.len());
            if reads.is_some() {
                assert_eq!(sent, ["country", "vip"]);
                assert!(matches!(lent.values[1], Some(wit::Value::Boolean(true))));
            }
            give_back(&mut r, lent, keep.as_deref());
            assert_eq!(r, record);
        }
    }
}
