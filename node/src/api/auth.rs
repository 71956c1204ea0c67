//! Bearer-token check for an API reachable beyond loopback.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;

/// Lets a request through when no token is configured, or when it carries
/// `Authorization: Bearer TOKEN` (compared in constant time), or when it
/// fetches the dashboard page itself (`GET /`, no data in it).
pub(super) async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    // The dashboard page carries no data; what it fetches needs the token.
    let public = super::dashboard::is_public(request.method(), request.uri().path());
    let Some(token) = token.filter(|_| !public) else { return next.run(request).await };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token")
            .with_code("invalid_api_key")
            .into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "this API needs `Authorization: Bearer TOKEN`")
            .with_code("missing_api_key")
            .into_response(),
    }
}
