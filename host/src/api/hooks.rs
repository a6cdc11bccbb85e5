//! Provider feedback: `POST /hooks/ses` (SES through SNS) and
//! `POST /hooks/generic` (see `tracking::feedback::GenericHook`). Bounces
//! and complaints are counted per message (once, however often they are
//! delivered) and hard bounces and complaints suppress the address.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use super::AppState;
use super::error::{ApiError, json_body};
use super::sns::SnsMessage;
use crate::config::Role;
use crate::sqlite::now_ms;
use crate::store::{
    Engagement, EngagementKind, MessageRef, Suppression, SuppressionReason, normalise_address,
};
use crate::tracking::feedback::{Feedback, FeedbackKind, GenericHook, parse_ses};

#[derive(Debug, Default, serde::Serialize)]
pub struct Applied {
    pub recorded: u64,
    pub duplicates: u64,
    pub suppressed: u64,
}

/// Records feedback against the message it names (or, when the provider
/// names none we know, against the address alone) and suppresses.
pub async fn apply(state: &AppState, feedback: Vec<Feedback>) -> Result<Applied, ApiError> {
    let store = &state.backends.store;
    let mut applied = Applied::default();
    let mut events = Vec::new();
    let mut suppress = Vec::new();
    for f in feedback {
        let sent = match &f.message_id {
            Some(id) => store.sent_message(id).await?,
            None => None,
        };
        let message = sent.map(|s| s.reference()).unwrap_or_else(|| MessageRef {
            campaign: String::new(),
            message_id: normalise_address(&f.address),
            recipient_id: String::new(),
            segment: String::new(),
            variant: String::new(),
            wave: 0,
        });
        let (kind, detail, reason) = match f.kind {
            FeedbackKind::HardBounce => (
                EngagementKind::Bounce,
                "hard",
                Some(SuppressionReason::HardBounce),
            ),
            FeedbackKind::SoftBounce => (EngagementKind::Bounce, "soft", None),
            FeedbackKind::Complaint => (
                EngagementKind::Complaint,
                "",
                Some(SuppressionReason::Complaint),
            ),
            FeedbackKind::Delivery => (EngagementKind::Delivery, "", None),
        };
        if let Some(reason) = reason {
            suppress.push(Suppression {
                address: f.address.clone(),
                reason,
                detail: f.detail.clone(),
                campaign: (!message.campaign.is_empty()).then(|| message.campaign.clone()),
                at: f.at.unwrap_or_else(now_ms),
            });
        }
        events.push(Engagement {
            message,
            kind,
            detail: detail.to_string(),
            machine: false,
            at: f.at.unwrap_or_else(now_ms),
        });
    }
    if !suppress.is_empty() {
        store.suppress(&suppress).await?;
        applied.suppressed = suppress.len() as u64;
    }
    for new in store.record_engagement(&events).await? {
        if new {
            applied.recorded += 1;
        } else {
            applied.duplicates += 1;
        }
    }
    Ok(applied)
}

pub async fn ses(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m: SnsMessage = json_body(&body)?;
    let settings = &state.backends.config.tracking;
    if !settings.sns_topics.is_empty() && !settings.sns_topics.contains(&m.topic_arn) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("SNS topic {} is not in tracking.sns_topics", m.topic_arn),
        ));
    }
    if settings.verify_sns {
        state
            .sns_certs
            .verify(&state.http, &m, &settings.sns_trusted_urls)
            .await
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    }
    match m.kind.as_str() {
        "SubscriptionConfirmation" => {
            let url = m.subscribe_url.clone().unwrap_or_default();
            if !super::sns::trusted_url(&url, &settings.sns_trusted_urls) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("SubscribeURL is not SNS's own: {url}"),
                ));
            }
            state
                .http
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("cannot confirm the SNS subscription: {e}; SNS will retry"),
                    )
                })?;
            tracing::info!(topic = m.topic_arn, "SNS subscription confirmed");
            Ok(Json(serde_json::json!({ "confirmed": m.topic_arn })))
        }
        "Notification" => {
            let feedback = parse_ses(&m.message).map_err(ApiError::bad_request)?;
            let applied = apply(&state, feedback).await?;
            Ok(Json(serde_json::to_value(applied).unwrap_or_default()))
        }
        "UnsubscribeConfirmation" => Ok(Json(serde_json::json!({ "ignored": m.kind }))),
        other => Err(ApiError::bad_request(format!(
            "unknown SNS message type `{other}`"
        ))),
    }
}

pub async fn generic(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let hook: GenericHook = json_body(&body)?;
    if let Some(e) = hook.events.iter().find(|e| e.address.trim().is_empty()) {
        return Err(ApiError::bad_request(format!(
            "an event of type {:?} has an empty `address`",
            e.kind
        )));
    }
    let feedback = hook.events.into_iter().map(|e| e.feedback()).collect();
    let applied = apply(&state, feedback).await?;
    Ok(Json(serde_json::to_value(applied).unwrap_or_default()))
}
