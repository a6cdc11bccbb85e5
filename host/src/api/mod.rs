//! `squall serve`: tracking links, provider feedback, the JSON API, the
//! dashboard and `/metrics`, in one axum process. It keeps no state of its
//! own (all of it is in the store), so several can run behind a load
//! balancer in a distributed deployment.
//!
//! | path | who | what |
//! |---|---|---|
//! | `GET /o/{token}`, `GET /c/{token}`, `GET|POST /u/{token}` | anyone with a signed link | open pixel, click redirect, unsubscribe |
//! | `POST /hooks/ses` | SNS (signature checked) | SES bounces, complaints, deliveries |
//! | `POST /hooks/generic` | admin | bounces and complaints in Squall's format |
//! | `/api/…` | by role, see `api/openapi.json` | campaigns, control, stats, suppressions, events |
//! | `GET /metrics` | analyst | Prometheus |
//! | `GET /` | anyone (the page asks for a token) | dashboard |

mod auth;
mod campaigns;
mod dashboard;
mod error;
mod events;
mod hooks;
mod metrics;
mod recorder;
mod sns;
mod suppressions;
mod tracking;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::config::{Config, Role};
use crate::pipeline::backends::Backends;
use crate::tracking::Signer;

pub use error::ApiError;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The deployment's squall.toml (defaults: the embedded store in
    /// ./squall-data, which a local `squall run` writes).
    #[arg(long, env = "SQUALL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default: `api.listen`, 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
}

pub struct AppState {
    pub backends: Backends,
    pub signer: Signer,
    auth: auth::Auth,
    recorder: recorder::Recorder,
    metrics: metrics::ServerMetrics,
    http: reqwest::Client,
    sns_certs: sns::CertCache,
}

impl AppState {
    pub async fn new(backends: Backends) -> anyhow::Result<AppState> {
        let key = crate::tracking::signing_key(&*backends.store).await?;
        let auth = auth::Auth::from_config(&backends.config.api)?;
        Ok(AppState {
            signer: Signer::new(&key),
            recorder: recorder::Recorder::start(backends.store.clone()),
            auth,
            metrics: metrics::ServerMetrics::default(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
            sns_certs: sns::CertCache::default(),
            backends,
        })
    }
}

async fn me(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let role: Role = state.auth.role(&headers)?;
    Ok(Json(
        serde_json::json!({ "role": role, "open": state.auth.is_open() }),
    ))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: GET /api/openapi.json lists them")
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/dashboard.js", get(dashboard::script))
        .route("/assets/dashboard.css", get(dashboard::style))
        .route("/o/{token}", get(tracking::open))
        .route("/c/{token}", get(tracking::click))
        .route(
            "/u/{token}",
            get(tracking::unsubscribe_page).post(tracking::unsubscribe),
        )
        .route("/hooks/ses", post(hooks::ses))
        .route("/hooks/generic", post(hooks::generic))
        .route("/metrics", get(metrics::metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/me", get(me))
        .route("/api/events", post(events::record))
        .route(
            "/api/campaigns",
            get(campaigns::list).post(campaigns::create),
        )
        .route(
            "/api/campaigns/validate",
            post(campaigns::validate_campaign),
        )
        .route("/api/campaigns/{id}", get(campaigns::get))
        .route("/api/campaigns/{id}/launch", post(campaigns::launch))
        .route("/api/campaigns/{id}/pause", post(campaigns::pause))
        .route("/api/campaigns/{id}/resume", post(campaigns::resume))
        .route("/api/campaigns/{id}/cancel", post(campaigns::cancel))
        .route("/api/campaigns/{id}/stats", get(campaigns::stats))
        .route("/api/campaigns/{id}/live", get(campaigns::live))
        .route(
            "/api/suppressions",
            get(suppressions::list).post(suppressions::add),
        )
        .route("/api/suppressions/{address}", delete(suppressions::remove))
        .fallback(not_found)
        .with_state(state)
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| config.api.listen.clone());
    let addr: SocketAddr = listen.parse().map_err(|e| {
        anyhow::anyhow!("--listen {listen}: {e}; use host:port, e.g. 127.0.0.1:8080")
    })?;
    let backends = Backends::open(config, false).await?;
    let state = Arc::new(AppState::new(backends).await?);
    if state.auth.is_open() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve {addr} without API tokens: anyone could steer campaigns. Add [[api.token]] entries to squall.toml, or listen on 127.0.0.1"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr}: {e}; is another server using the port?")
    })?;
    tracing::info!(
        "squall serve: dashboard at http://{}/ ({})",
        listener.local_addr()?,
        if state.auth.is_open() {
            "no tokens configured: local use only, everyone is admin"
        } else {
            "bearer tokens required"
        }
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = shutdown => {}, _ = term.recv() => {} }
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
