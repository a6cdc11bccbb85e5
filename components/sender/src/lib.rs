//! The default sender component: MIME email, Twilio-style SMS, JSON webhook.
//! A thin adapter from the WIT types to `squall-pipeline-core`.

// Talc instead of Rust's default dlmalloc: stages allocate per recipient
// (records, Liquid objects, rendered strings) and the allocator was a
// large share of their time (BENCHMARKS.md).
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

wit_bindgen::generate!({ path: "../../wit", world: "sender-stage" });

use exports::squall::pipeline::sender::{Builder, Config, Guest, GuestBuilder};
use squall::pipeline::types::{
    Channel, DeliveryRequest, Diagnostic, HttpRequest, OutgoingMessage, SmtpEnvelope,
};
use squall_pipeline_core::message::{self, Outgoing, Sender, SenderConfig};
use squall_pipeline_core::template::Rendered;

mod convert;

struct Component;

impl Guest for Component {
    type Builder = Sender;
}

impl GuestBuilder for Sender {
    fn compile(config: Config) -> Result<Builder, Vec<Diagnostic>> {
        let config = SenderConfig {
            campaign: config.campaign,
            channel: match config.channel {
                Channel::Email => message::Channel::Email,
                Channel::Sms => message::Channel::Sms,
                Channel::Webhook => message::Channel::Webhook,
            },
            from: config.from,
            reply_to: config.reply_to,
            unsubscribe_mailto: config.unsubscribe_mailto,
            endpoint: config.endpoint,
        };
        Sender::compile(config)
            .map(Builder::new)
            .map_err(convert::diagnostics)
    }

    fn build(
        &self,
        messages: Vec<OutgoingMessage>,
        now: i64,
    ) -> Vec<Result<DeliveryRequest, String>> {
        messages
            .into_iter()
            .map(|m| {
                let m = Outgoing {
                    message_id: m.message_id,
                    recipient_id: m.recipient_id,
                    address: m.address,
                    segment: m.segment,
                    variant: m.variant,
                    unsubscribe_url: m.unsubscribe_url,
                    content: Rendered {
                        subject: m.content.subject,
                        text: m.content.text,
                        html: m.content.html,
                    },
                    timezone: None,
                };
                Sender::build(self, &m, now).map(|r| match r {
                    message::DeliveryRequest::Smtp {
                        mail_from,
                        rcpt_to,
                        data,
                    } => DeliveryRequest::Smtp(SmtpEnvelope {
                        mail_from,
                        rcpt_to,
                        data,
                    }),
                    message::DeliveryRequest::Http {
                        method,
                        url,
                        headers,
                        body,
                    } => DeliveryRequest::Http(HttpRequest {
                        method,
                        url,
                        headers,
                        body,
                    }),
                })
            })
            .collect()
    }
}

export!(Component);
