//! Campaigns over HTTP: list, get, validate, create, launch, pause, resume,
//! cancel, stats and a live stream of stats (server-sent events).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, json_body};
use crate::campaign::{Bundle, Campaign};
use crate::config::Role;
use crate::pipeline::stats::{CampaignStats, campaign_stats};
use crate::pipeline::validate::{Validation, validate};
use crate::sqlite::now_ms;
use crate::store::{ControlAction, Scope};

/// How often the live stream sends fresh figures.
const LIVE_EVERY: Duration = Duration::from_secs(1);
/// The throughput chart's span and resolution.
const SERIES_SPAN_MS: i64 = 15 * 60 * 1000;
const SERIES_BUCKET_MS: i64 = 5_000;

async fn known(state: &AppState, campaign: &str) -> Result<(), ApiError> {
    if state.backends.store.campaign_known(campaign).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no campaign `{campaign}`: GET /api/campaigns lists them"
        )))
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Analyst)?;
    let store = &state.backends.store;
    let mut out = Vec::new();
    for id in store.campaigns().await? {
        let st = store.open_campaign(&id, "").await?;
        let ledger = store.ledger_totals(&id).await?;
        let controls = store.controls(&id).await?;
        out.push(serde_json::json!({
            "id": id,
            "audience": st.rows_read,
            "intake_finished": st.intake_finished,
            "sent": ledger.delivered,
            "failed": ledger.failed,
            "controls": controls,
        }));
    }
    Ok(Json(serde_json::json!({ "campaigns": out })))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Analyst)?;
    known(&state, &id).await?;
    let store = &state.backends.store;
    let definition = match store.bundle(&id).await? {
        Some((hash, bytes)) => {
            let b = Bundle::from_bytes(&bytes).map_err(|e| anyhow::anyhow!(e))?;
            serde_json::json!({ "hash": hash, "file": b.file_name, "text": b.text, "fields": b.columns })
        }
        None => serde_json::Value::Null,
    };
    let status = crate::pipeline::status::status(&state.backends, &id).await?;
    Ok(Json(serde_json::json!({
        "id": id,
        "definition": definition,
        "status": status,
    })))
}

/// A campaign file sent to the API: a path on the server, or the file's
/// text with the folder its relative paths (audience, plugins) start from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignIn {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    toml: Option<String>,
    #[serde(default)]
    base_dir: Option<PathBuf>,
}

/// A campaign file as the API was given it: kept (text and the folder its
/// relative paths start from) so that a later launch reads the same file.
#[derive(Clone, serde::Serialize, Deserialize)]
pub struct Created {
    pub text: String,
    pub base_dir: PathBuf,
}

/// The campaign written where its relative paths resolve, for as long as
/// the returned file lives.
fn materialise(c: &Created) -> Result<tempfile::NamedTempFile, ApiError> {
    if !c.base_dir.is_dir() {
        return Err(ApiError::bad_request(format!(
            "base_dir {} is not a folder on the server",
            c.base_dir.display()
        )));
    }
    let mut f = tempfile::Builder::new()
        .prefix(".squall-api-")
        .suffix(".toml")
        .tempfile_in(&c.base_dir)
        .map_err(|e| {
            ApiError::bad_request(format!("cannot write in {}: {e}", c.base_dir.display()))
        })?;
    std::io::Write::write_all(&mut f, c.text.as_bytes())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(f)
}

fn created_key(id: &str) -> String {
    format!("api/created/{id}")
}

fn created_from(input: CampaignIn) -> Result<(Created, String), ApiError> {
    match (input.path, input.toml) {
        (Some(p), None) => {
            let text = std::fs::read_to_string(&p).map_err(|e| {
                ApiError::bad_request(format!("cannot read {} on the server: {e}", p.display()))
            })?;
            let base_dir = p
                .parent()
                .map(|d| d.to_path_buf())
                .unwrap_or_else(|| ".".into());
            let base_dir = if base_dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                base_dir
            };
            Ok((Created { text, base_dir }, p.display().to_string()))
        }
        (None, Some(text)) => Ok((
            Created {
                text,
                base_dir: input.base_dir.unwrap_or_else(|| PathBuf::from(".")),
            },
            "campaign.toml".to_string(),
        )),
        _ => Err(ApiError::bad_request(
            "send either `path` (a campaign file on the server) or `toml` (its text, with `base_dir`)",
        )),
    }
}

/// Validates the campaign in `body`; its problems are a 422 with every
/// diagnostic at `file:line:column`.
async fn validated(state: &AppState, body: &[u8]) -> Result<(Campaign, Created), ApiError> {
    let input: CampaignIn = json_body(body)?;
    let (created, shown) = created_from(input)?;
    let providers = state.backends.config.providers.clone();
    let kept = created.clone();
    let run =
        move || -> Result<Result<Campaign, Vec<crate::campaign::FileDiagnostic>>, ApiError> {
            let file = materialise(&created)?;
            let real = file.path().display().to_string();
            match validate(file.path(), &providers) {
                Ok(Validation::Valid(c)) => Ok(Ok(*c)),
                Ok(Validation::Invalid(mut problems)) => {
                    for p in &mut problems {
                        if p.file == real {
                            p.file = shown.clone();
                        }
                        p.message = p.message.replace(&real, &shown);
                    }
                    Ok(Err(problems))
                }
                Err(e) => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    e.to_string(),
                )),
            }
        };
    // Compiling rules and templates is CPU work: off the async threads.
    let result = tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let c = result.map_err(|problems| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: format!("{} problem(s) in the campaign file", problems.len()),
        diagnostics: problems,
    })?;
    Ok((c, kept))
}

pub async fn validate_campaign(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Editor)?;
    let (c, _) = validated(&state, &body).await?;
    Ok(Json(serde_json::json!({
        "valid": true,
        "id": c.id(),
        "segments": c.file.segment.len(),
        "messages": c.file.message.len(),
        "fields": c.columns,
    })))
}

/// Stores the definition (for workers and the dashboard) without queuing
/// anyone: launching is a separate, admin-only step.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    state.auth.require(&headers, Role::Editor)?;
    let (c, created) = validated(&state, &body).await?;
    let bundle = Bundle::of(&c).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let store = &state.backends.store;
    store
        .save_bundle(c.id(), &c.hash, &bundle.to_bytes())
        .await?;
    store.open_campaign(c.id(), &c.hash).await?;
    // In the store, not this process: any server of the deployment may be
    // the one asked to launch it.
    let kept = serde_json::to_vec(&created).map_err(|e| anyhow::anyhow!(e))?;
    store.set_setting(&created_key(c.id()), &kept).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "created": c.id(), "hash": c.hash })),
    ))
}

/// Queues the audience of a campaign this server validated (created), or
/// of the campaign file at `path`.
pub async fn launch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.require(&headers, Role::Admin)?;
    let created = if body.is_empty() {
        let kept = state.backends.store.setting(&created_key(&id)).await?.ok_or_else(|| {
            ApiError::not_found(format!(
                "campaign `{id}` was not created through the API: POST /api/campaigns first, or send its `path` or `toml`"
            ))
        })?;
        serde_json::from_slice(&kept).map_err(|e| anyhow::anyhow!(e))?
    } else {
        created_from(json_body(&body)?)?.0
    };
    let file = materialise(&created)?;
    let c = Campaign::load(file.path()).map_err(|d| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: "the campaign file has problems".into(),
        diagnostics: d.0,
    })?;
    if c.id() != id {
        return Err(ApiError::bad_request(format!(
            "the file is campaign `{}`, not `{id}`",
            c.id()
        )));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let report = crate::pipeline::launch::launch(&c, &state.backends, stop)
        .await
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    drop(file);
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScopeIn {
    segment: Option<String>,
    variant: Option<String>,
}

async fn steer(
    state: Arc<AppState>,
    headers: HeaderMap,
    id: String,
    body: Bytes,
    action: ControlAction,
) -> Result<Json<serde_json::Value>, ApiError> {
    let role = state.auth.require(&headers, Role::Admin)?;
    known(&state, &id).await?;
    let s: ScopeIn = if body.is_empty() {
        ScopeIn::default()
    } else {
        json_body(&body)?
    };
    let scope = Scope {
        segment: s.segment,
        variant: s.variant,
    };
    let said = crate::pipeline::control::apply(
        &*state.backends.store,
        &id,
        &scope,
        action,
        &format!("API ({})", role.as_str()),
    )
    .await?;
    Ok(Json(
        serde_json::json!({ "campaign": id, "scope": scope, "result": said }),
    ))
}

pub async fn pause(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    steer(state, headers, id, body, ControlAction::Pause).await
}

pub async fn resume(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    steer(state, headers, id, body, ControlAction::Resume).await
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    steer(state, headers, id, body, ControlAction::Cancel).await
}

async fn figures(state: &AppState, id: &str) -> Result<CampaignStats, ApiError> {
    Ok(campaign_stats(
        &state.backends,
        id,
        now_ms() - SERIES_SPAN_MS,
        SERIES_BUCKET_MS,
    )
    .await?)
}

pub async fn stats(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CampaignStats>, ApiError> {
    state.auth.require(&headers, Role::Analyst)?;
    known(&state, &id).await?;
    Ok(Json(figures(&state, &id).await?))
}

/// `text/event-stream`: a `stats` event every second, the same JSON as
/// `GET …/stats`.
pub async fn live(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.auth.require(&headers, Role::Analyst)?;
    known(&state, &id).await?;
    let stream = futures::stream::unfold((state, id, true), |(state, id, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        let event = match figures(&state, &id).await {
            Ok(s) => Event::default()
                .event("stats")
                .json_data(&s)
                .unwrap_or_else(|_| Event::default().event("error").data("cannot encode")),
            Err(e) => Event::default().event("error").data(e.message),
        };
        Some((Ok(event), (state, id, false)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
