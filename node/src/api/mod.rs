//! The local control API (HTTP on 127.0.0.1 by default): what `hivemesh
//! members` and `hivemesh leave` talk to. Every route checks the Host and
//! Origin headers first (see `access`, ADR 0014), then the bearer token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use tokio::task::JoinHandle;

pub use access::{AccessConfigError, AccessRules, allowed_host, allowed_origin};
pub use client::{ApiClient, ApiClientError, Method};
pub use routes::{ROUTES, Route};

use crate::federation::FederationHandle;
use crate::net::{ClientError, NodeClient};

mod access;
mod auth;
pub mod client;
mod dashboard;
mod gateway;
mod jobs;
mod metrics;
mod models;
mod openai;
mod routes;
mod trust;

/// What every handler can reach: the node, and its federation when it takes
/// part in jobs.
#[derive(Clone)]
pub(crate) struct AppState {
    pub client: NodeClient,
    pub jobs: Option<FederationHandle>,
    /// This node's own provider, for gateway requests it serves itself.
    pub gateway: Option<crate::gateway::Server>,
    /// Which peers have been failing which models (gateway failover).
    pub breakers: Arc<crate::gateway::breakers::PeerBreakers>,
    /// When the API started (seconds since the epoch): `created` of `/v1/models`.
    pub started_s: u64,
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
    /// The gateway's serving side on this node (ADR 0020), when it takes jobs.
    pub gateway: Option<crate::gateway::Server>,
    pub data_dir: &'a Path,
    /// Host names and web origins allowed beyond the bound address,
    /// `localhost` and the API's own origin (ADR 0014).
    pub access: AccessRules,
}

/// Why the control API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the control API on {0} is reachable beyond loopback: it needs a bearer token")]
    TokenRequired(SocketAddr),
    #[error("cannot bind the control API on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

pub async fn serve(config: ApiConfig<'_>) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    let ApiConfig { address, token, client, jobs, gateway, data_dir, access } = config;
    if !address.ip().is_loopback() && token.is_none() {
        return Err(ServeError::TokenRequired(address));
    }
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && address.port() == DEFAULT_API_PORT => {
            let fallback = SocketAddr::new(address.ip(), 0);
            tracing::warn!(%address, "control API port in use; using an ephemeral port instead");
            tokio::net::TcpListener::bind(fallback)
                .await
                .map_err(|source| ServeError::Bind { address: fallback, source })?
        }
        Err(source) => return Err(ServeError::Bind { address, source }),
    };
    let bound = listener.local_addr().map_err(|source| ServeError::Bind { address, source })?;
    if let Err(e) = std::fs::write(api_addr_file(data_dir), bound.to_string()) {
        tracing::warn!(error = %e, "could not record the API address in the data directory");
    }
    let policy = access::AccessPolicy::new(bound.ip(), access);
    // Outermost first: errors in OpenAI's shape, the Host and Origin checks,
    // CORS (preflights need no token), the bearer token, the body limit.
    let app = routes::router()
        .fallback(no_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(token.map(Arc::<str>::from), auth::require_token))
        .layer(access::cors(policy.clone()))
        .layer(axum::middleware::from_fn_with_state(policy, access::guard))
        .layer(axum::middleware::from_fn(openai_errors))
        .with_state(AppState {
            client,
            jobs,
            gateway,
            breakers: Arc::default(),
            started_s: openai::unix_seconds(),
        });
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

/// An API error, answered on every route in OpenAI's shape:
/// `{"error": {"message", "type", "param", "code"}}`, `param` naming the
/// request field at fault and `code` a short stable string (both may be null).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error with no field and no code.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None, code: None }
    }

    /// A 400 about one request field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            code: Some("invalid_value"),
            ..Self::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// A 400 for a field this API does not support (or not with this value).
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            code: Some("unsupported_parameter"),
            ..Self::new(StatusCode::BAD_REQUEST, message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// OpenAI's `type` for a status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body alone (also sent as a streamed error event).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": {
            "message": self.message, "type": self.kind(), "param": self.param, "code": self.code,
        } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// An error body in OpenAI's shape naming the problem.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// Rewrites every error response that is not already JSON (axum's own
/// rejections of a query string, a path, a body or a method, as plain text
/// or empty) into OpenAI's error shape, keeping the status and the text.
async fn openai_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => format!("{method} is not allowed on {path}"),
        (StatusCode::PAYLOAD_TOO_LARGE, _) => {
            format!(
                "the request body is over the route's limit ({MAX_BODY_BYTES} bytes; {} for \
                 /v1/chat/completions and /v1/embeddings)",
                crate::gateway::MAX_REQUEST_BYTES
            )
        }
        (_, false) => text,
        (_, true) => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut rewritten = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

async fn no_route(uri: axum::http::Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
}

fn stopped(e: ClientError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// A JSON body axum could not take, with axum's status (400 broken JSON,
/// 422 a wrong field or type, 415 no JSON content type, 413 too large, as
/// `/v1/jobs` and `/v1/chat/completions` answer) and the reason.
pub(crate) fn json_rejected(what: &str, rejection: &JsonRejection) -> Response {
    ApiError {
        param: Some("body".into()),
        ..ApiError::new(rejection.status(), format!("{what}: {}", rejection.body_text()))
    }
    .into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

#[derive(serde::Deserialize)]
struct ViewQuery {
    view: Option<String>,
}

/// `?view=majority|registry|swim`; without it, the node's active view.
async fn members(
    State(client): State<NodeClient>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return ApiError::invalid("view", rejection.body_text()).into_response(),
    };
    let kind = match query.view.as_deref().map(str::parse::<ViewKind>).transpose() {
        Ok(kind) => kind,
        Err(e) => return ApiError::invalid("view", e.to_string()).into_response(),
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
        Err(rejection) => return json_rejected("bad advertisement", &rejection),
    };
    match client.advertise(profile.clone()).await {
        Ok(()) => Json(serde_json::json!({ "status": "advertised", "profile": profile })).into_response(),
        Err(ClientError::Replication(error)) => bad_request(error.to_string()),
        Err(e) => stopped(e),
    }
}

/// The node's status; with `quota` (ADR 0017) when it takes part in jobs.
async fn status(State(state): State<AppState>) -> Response {
    #[derive(serde::Serialize)]
    struct Full {
        #[serde(flatten)]
        node: crate::net::StatusReport,
        #[serde(skip_serializing_if = "Option::is_none")]
        quota: Option<crate::federation::quota::QuotaReport>,
    }
    match state.client.status().await {
        Ok(node) => {
            let quota = state.jobs.as_ref().map(|jobs| jobs.quotas.report(std::time::Instant::now()));
            Json(Full { node, quota }).into_response()
        }
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
