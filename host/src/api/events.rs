//! `POST /api/events`: business events (a purchase, a sign-up) from the
//! customer's systems, idempotent on the event's id, attributed to the
//! last campaign message the recipient got within the attribution window.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, json_body};
use crate::config::Role;
use crate::sqlite::now_ms;
use crate::store::Conversion;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    /// The client's idempotency key: the same id twice is one event.
    id: String,
    #[serde(rename = "type")]
    kind: String,
    recipient_id: String,
    #[serde(default)]
    properties: serde_json::Value,
    /// RFC 3339; default: now.
    #[serde(default)]
    time: Option<String>,
}

pub async fn record(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let e: EventIn = json_body(&body)?;
    for (name, v) in [
        ("id", &e.id),
        ("type", &e.kind),
        ("recipient_id", &e.recipient_id),
    ] {
        if v.trim().is_empty() {
            return Err(ApiError::bad_request(format!("`{name}` must not be empty")));
        }
    }
    let at = match &e.time {
        None => now_ms(),
        Some(t) => crate::schedule::clock::parse_rfc3339_ms(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`time` must be RFC 3339, like 2026-12-04T10:00:00Z; got `{t}`"
            ))
        })?,
    };
    let window = state
        .backends
        .config
        .tracking
        .attribution_window
        .as_millis() as i64;
    let store = &state.backends.store;
    let attributed = store
        .last_delivered(&e.recipient_id, at - window, at)
        .await?
        .map(|m| m.reference());
    let conversion = Conversion {
        event_id: e.id,
        kind: e.kind,
        recipient_id: e.recipient_id,
        properties: e.properties,
        at,
        attributed: attributed.clone(),
    };
    let new = store.record_conversion(&conversion).await?;
    let body = serde_json::json!({
        "recorded": new,
        "duplicate": !new,
        "attributed": attributed.map(|m| serde_json::json!({
            "campaign": m.campaign, "segment": m.segment, "variant": m.variant, "message_id": m.message_id,
        })),
    });
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}
