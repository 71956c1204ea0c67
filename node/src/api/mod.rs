//! The local control API (HTTP on 127.0.0.1 by default): what `hivemesh
//! members` and `hivemesh leave` talk to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio::task::JoinHandle;

pub use client::{ApiClient, Method};

use crate::federation::FederationHandle;
use crate::net::{NodeClient, NodeError};

mod auth;
pub mod client;
mod jobs;
mod metrics;
mod openai;

/// What every handler can reach: the node, and its federation when it takes
/// part in jobs.
#[derive(Clone)]
pub(crate) struct AppState {
    pub client: NodeClient,
    pub jobs: Option<FederationHandle>,
}

impl axum::extract::FromRef<AppState> for NodeClient {
    fn from_ref(state: &AppState) -> Self {
        state.client.clone()
    }
}
use crate::replica::{Profile, ViewKind};

/// The default control port; when it is taken, the node falls back to an
/// ephemeral one and says so (its address is in DATA_DIR/api.addr).
pub const DEFAULT_API_PORT: u16 = 7480;

/// File in the data dir holding the API's `host:port`, so local commands find
/// the running node without flags.
pub fn api_addr_file(data_dir: &Path) -> PathBuf {
    data_dir.join("api.addr")
}

/// What the API serves and where.
pub struct ApiConfig<'a> {
    pub address: SocketAddr,
    /// Bearer token every request must carry (required off loopback).
    pub token: Option<String>,
    pub client: NodeClient,
    pub jobs: Option<FederationHandle>,
    pub data_dir: &'a Path,
}

pub async fn serve(config: ApiConfig<'_>) -> Result<(SocketAddr, JoinHandle<()>), NodeError> {
    let ApiConfig { address, token, client, jobs, data_dir } = config;
    if !address.ip().is_loopback() && token.is_none() {
        return Err(NodeError::ApiTokenRequired(address));
    }
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && address.port() == DEFAULT_API_PORT => {
            let fallback = SocketAddr::new(address.ip(), 0);
            tracing::warn!(%address, "control API port in use; using an ephemeral port instead");
            tokio::net::TcpListener::bind(fallback)
                .await
                .map_err(|source| NodeError::Api { address: fallback, source })?
        }
        Err(source) => return Err(NodeError::Api { address, source }),
    };
    let bound = listener.local_addr().map_err(|source| NodeError::Api { address, source })?;
    if let Err(e) = std::fs::write(api_addr_file(data_dir), bound.to_string()) {
        tracing::warn!(error = %e, "could not record the API address in the data directory");
    }
    let app = axum::Router::new()
        .route("/v1/members", get(members))
        .route("/v1/advertise", post(advertise))
        .route("/v1/status", get(status))
        .route("/v1/leave", post(leave))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/metrics", get(metrics::render))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(token.map(Arc::<str>::from), auth::require_token))
        .with_state(AppState { client, jobs });
    // Without TCP_NODELAY a streamed response stalls on Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    Ok((bound, task))
}

/// Largest request body accepted; a bigger one gets 413.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON error body naming the problem.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn stopped(e: NodeError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

#[derive(serde::Deserialize)]
struct ViewQuery {
    view: Option<String>,
}

/// `?view=majority|registry|swim`; without it, the node's active view.
async fn members(State(client): State<NodeClient>, Query(query): Query<ViewQuery>) -> Response {
    let kind = match query.view.as_deref().map(str::parse::<ViewKind>).transpose() {
        Ok(kind) => kind,
        Err(message) => return bad_request(message),
    };
    match client.view(kind).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => stopped(e),
    }
}

/// Replaces this node's advertised profile (a JSON `Profile`).
async fn advertise(State(client): State<NodeClient>, body: Result<Json<Profile>, JsonRejection>) -> Response {
    let Json(profile) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_request(format!("bad advertisement: {}", rejection.body_text())),
    };
    match client.advertise(profile.clone()).await {
        Ok(()) => Json(serde_json::json!({ "status": "advertised", "profile": profile })).into_response(),
        Err(NodeError::Replication(message)) => bad_request(message),
        Err(e) => stopped(e),
    }
}

async fn status(State(client): State<NodeClient>) -> Response {
    match client.status().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => stopped(e),
    }
}

/// Answers at once; the node leaves in the background and then stops.
async fn leave(State(client): State<NodeClient>) -> Response {
    tokio::spawn(async move {
        let _ = client.leave(Duration::from_secs(3)).await;
    });
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "status": "leaving" }))).into_response()
}
