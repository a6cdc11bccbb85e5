//! A custom sender plugin for "Acme Notify", an imaginary in-house
//! notification gateway. It shows everything a sender plugin does:
//!
//! - `compile` checks the campaign's sender settings once and reports
//!   problems as diagnostics (they are shown with the campaign file's line
//!   and column);
//! - `build` turns a batch of rendered messages into one HTTP request each.
//!   The URL is a path: the host resolves it against the endpoint of the
//!   provider the campaign names, adds the provider's credentials or
//!   signature, applies its rate limit, retries and failover, and refuses
//!   any destination not on the provider's allow-list. The plugin itself
//!   has no network, no files, no clock and no environment.
//!
//! Acme Notify takes `POST /v1/messages` with a JSON document and wants an
//! `Idempotency-Key` so that a retried request is not delivered twice.
//! Built by the workspace for `wasm32-wasip2` like the default stages.

wit_bindgen::generate!({ path: "../../../wit", world: "sender-stage" });

use exports::squall::pipeline::sender::{Builder, Config, Guest, GuestBuilder};
use squall::pipeline::log::{Level, log};
use squall::pipeline::types::{DeliveryRequest, Diagnostic, HttpRequest, OutgoingMessage};

struct Component;

struct AcmeSender {
    campaign: String,
    /// Acme's sender profile, taken from `[delivery] from`.
    profile: String,
}

impl Guest for Component {
    type Builder = AcmeSender;
}

impl GuestBuilder for AcmeSender {
    fn compile(config: Config) -> Result<Builder, Vec<Diagnostic>> {
        // Acme profiles are short slugs; anything else is a campaign error,
        // reported against `delivery.from`.
        let profile = config.from.trim().to_string();
        if profile.is_empty()
            || !profile
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(vec![Diagnostic {
                source: "delivery.from".into(),
                line: 1,
                column: 1,
                message: format!(
                    "Acme Notify needs a sender profile like `shop-news` in `from`, not `{profile}`"
                ),
            }]);
        }
        log(
            Level::Info,
            &format!("acme-gateway ready for campaign {}", config.campaign),
        );
        Ok(Builder::new(AcmeSender {
            campaign: config.campaign,
            profile,
        }))
    }

    fn build(
        &self,
        messages: Vec<OutgoingMessage>,
        now: i64,
    ) -> Vec<Result<DeliveryRequest, String>> {
        messages
            .into_iter()
            .map(|m| {
                if m.content.text.len() > 4_096 {
                    // One message's problem: it is dead-lettered with this
                    // reason, the rest of the batch goes on.
                    return Err(format!(
                        "Acme Notify takes at most 4096 bytes of text, this message has {}",
                        m.content.text.len()
                    ));
                }
                let doc = serde_json::json!({
                    "profile": self.profile,
                    "recipient": m.address,
                    "title": m.content.subject,
                    "body": m.content.text,
                    "reference": m.message_id,
                    "tags": { "campaign": self.campaign, "segment": m.segment, "variant": m.variant },
                    "unsubscribe": m.unsubscribe_url,
                    "created": now,
                });
                Ok(DeliveryRequest::Http(HttpRequest {
                    method: "POST".into(),
                    url: "/v1/messages".into(),
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        ("idempotency-key".into(), m.message_id),
                    ],
                    body: serde_json::to_vec(&doc).map_err(|e| e.to_string())?,
                }))
            })
            .collect()
    }
}

export!(Component);
