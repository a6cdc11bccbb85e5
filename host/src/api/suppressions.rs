//! The suppression list over HTTP: read it (analyst), add and remove
//! entries (admin).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, json_body};
use crate::config::Role;
use crate::sqlite::now_ms;
use crate::store::{Suppression, SuppressionReason};

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Analyst)?;
    let list = state.backends.store.suppressions().await?;
    Ok(Json(
        serde_json::json!({ "count": list.len(), "suppressions": list }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddIn {
    addresses: Vec<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

pub async fn add(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let a: AddIn = json_body(&body)?;
    let reason = match a.reason.as_deref() {
        None => SuppressionReason::Manual,
        Some(r) => SuppressionReason::parse(r).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown reason `{r}`: use unsubscribed, hard-bounce, complaint or manual"
            ))
        })?,
    };
    if a.addresses.is_empty() || a.addresses.iter().any(|x| x.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "`addresses` must list non-empty addresses",
        ));
    }
    let entries: Vec<Suppression> = a
        .addresses
        .iter()
        .map(|address| Suppression {
            address: address.clone(),
            reason,
            detail: a
                .detail
                .clone()
                .unwrap_or_else(|| "added through the API".into()),
            campaign: None,
            at: now_ms(),
        })
        .collect();
    state.backends.store.suppress(&entries).await?;
    Ok(Json(serde_json::json!({ "suppressed": entries.len() })))
}

pub async fn remove(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(address): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let n = state
        .backends
        .store
        .unsuppress(std::slice::from_ref(&address))
        .await?;
    if n == 0 {
        return Err(ApiError::not_found(format!(
            "{address} is not on the suppression list"
        )));
    }
    Ok(Json(serde_json::json!({ "removed": address })))
}
