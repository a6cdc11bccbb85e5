//! The links in messages: open pixel, click redirect, unsubscribe page and
//! RFC 8058 one-click unsubscribe. A token that does not verify is a 404:
//! nothing is recorded, and nobody learns why.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::AppState;
use crate::sqlite::now_ms;
use crate::store::{Engagement, EngagementKind, Suppression, SuppressionReason};
use crate::tracking::{Link, LinkKind, agents};

/// The smallest transparent GIF (1×1, 43 bytes).
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn unknown_link() -> Response {
    (StatusCode::NOT_FOUND, "unknown or damaged link").into_response()
}

fn verified(state: &AppState, token: &str, kind: LinkKind) -> Option<Link> {
    state.signer.verify(token).ok().filter(|l| l.kind == kind)
}

fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

async fn record(state: &AppState, link: &Link, kind: EngagementKind, detail: &str, machine: bool) {
    let event = Engagement {
        message: link.message.clone(),
        kind,
        detail: detail.to_string(),
        machine,
        at: now_ms(),
    };
    if let Err(e) = state.recorder.record(event).await {
        // The person still gets their page; the loss is logged and counted.
        state
            .metrics
            .lost_events
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(
            campaign = link.message.campaign,
            "{} not recorded: {e}",
            kind.as_str()
        );
    }
}

pub async fn open(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let token = token.trim_end_matches(".gif");
    let Some(link) = verified(&state, token, LinkKind::Open) else {
        return unknown_link();
    };
    let machine = agents::is_machine(user_agent(&headers));
    record(&state, &link, EngagementKind::Open, "", machine).await;
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, no-cache, must-revalidate, private, max-age=0"),
            ),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
            (header::EXPIRES, HeaderValue::from_static("0")),
        ],
        PIXEL,
    )
        .into_response()
}

pub async fn click(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(link) = verified(&state, &token, LinkKind::Click) else {
        return unknown_link();
    };
    // The only place a click may lead: the URL the token signs, and only a
    // web one (a signed `javascript:` could never be made, but check).
    let target = link.extra.clone();
    if !(target.starts_with("https://") || target.starts_with("http://")) {
        return unknown_link();
    }
    let machine = agents::is_machine(user_agent(&headers));
    record(&state, &link, EngagementKind::Click, &target, machine).await;
    let mut r = Redirect::to(&target).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#1d2433}}button{{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:6px;background:#1d4ed8;color:#fff;cursor:pointer}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"#
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A confirmation page: a link scanner's GET must not unsubscribe anyone.
pub async fn unsubscribe_page(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
) -> Response {
    let Some(link) = verified(&state, &token, LinkKind::Unsubscribe) else {
        return unknown_link();
    };
    page(
        "Unsubscribe",
        &format!(
            r#"<p>Stop all messages to <strong>{}</strong>?</p><form method="post"><button type="submit">Unsubscribe</button></form>"#,
            escape(&link.extra)
        ),
    )
    .into_response()
}

/// RFC 8058 one-click (the mail client POSTs `List-Unsubscribe=One-Click`)
/// and the confirmation page's button: unsubscribed at once.
pub async fn unsubscribe(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
) -> Response {
    let Some(link) = verified(&state, &token, LinkKind::Unsubscribe) else {
        return unknown_link();
    };
    let entry = Suppression {
        address: link.extra.clone(),
        reason: SuppressionReason::Unsubscribed,
        detail: format!("unsubscribed from `{}`", link.message.campaign),
        campaign: Some(link.message.campaign.clone()),
        at: now_ms(),
    };
    if let Err(e) = state.backends.store.suppress(&[entry]).await {
        tracing::error!("unsubscribe not recorded: {e}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            page(
                "Please try again",
                "<p>We could not record this just now. Please try again in a minute.</p>",
            ),
        )
            .into_response();
    }
    record(&state, &link, EngagementKind::Unsubscribe, "", false).await;
    page(
        "You are unsubscribed",
        &format!(
            "<p><strong>{}</strong> will get no more messages from us.</p>",
            escape(&link.extra)
        ),
    )
    .into_response()
}
