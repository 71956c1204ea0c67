//! Every route the API serves, as one table: the router is built from it
//! alone, and tests walk it to check every route and method (the Host and
//! Origin checks among them), so a route added here is tested at once.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post};

use crate::gateway::MAX_REQUEST_BYTES;

use super::{AppState, advertise, gateway, jobs, leave, members, metrics, models, status, trust};

/// One path and what it answers.
pub struct Route {
    /// The path as axum matches it (`{id}` is a path parameter, `{*id}` one
    /// that takes the rest of the path, `/` included).
    pub path: &'static str,
    /// The methods routed (a `GET` route also answers `HEAD`); any other
    /// method gets 405.
    pub methods: &'static [Method],
    /// The handlers, one per method in `methods`.
    handlers: fn() -> MethodRouter<AppState>,
}

impl Route {
    /// Whether `method` may change state or spend money here: anything but
    /// `GET`, `HEAD` and `OPTIONS` (a CORS preflight).
    pub fn changes_state(method: &Method) -> bool {
        !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// The API's routes. Add a route here, never with `.route` elsewhere.
pub const ROUTES: &[Route] = &[
    Route { path: "/", methods: &[Method::GET], handlers: || get(super::dashboard::page_handler) },
    Route { path: "/v1/members", methods: &[Method::GET], handlers: || get(members) },
    Route { path: "/v1/advertise", methods: &[Method::POST], handlers: || post(advertise) },
    Route { path: "/v1/status", methods: &[Method::GET], handlers: || get(status) },
    Route { path: "/v1/leave", methods: &[Method::POST], handlers: || post(leave) },
    Route {
        path: "/v1/jobs",
        methods: &[Method::POST, Method::GET],
        handlers: || post(jobs::submit).get(jobs::list),
    },
    Route {
        path: "/v1/jobs/{id}",
        methods: &[Method::GET, Method::DELETE],
        handlers: || get(jobs::show).delete(jobs::cancel),
    },
    Route { path: "/v1/jobs/{id}/events", methods: &[Method::GET], handlers: || get(jobs::events) },
    Route {
        path: "/v1/chat/completions",
        methods: &[Method::POST],
        // A peer's model takes bodies as large as the gateway forwards.
        handlers: || post(gateway::chat_completions).layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES)),
    },
    Route { path: "/v1/models", methods: &[Method::GET], handlers: || get(models::list) },
    // A wildcard: model ids hold `/` (`meta-llama/llama-3.2-3b-instruct:free`).
    Route { path: "/v1/models/{*id}", methods: &[Method::GET], handlers: || get(models::show) },
    Route {
        path: "/v1/byzantine",
        methods: &[Method::GET, Method::POST],
        handlers: || get(trust::list).post(trust::report),
    },
    Route {
        path: "/v1/embeddings",
        methods: &[Method::POST],
        handlers: || post(gateway::embeddings).layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES)),
    },
    Route { path: "/v1/byzantine/{peer}", methods: &[Method::DELETE], handlers: || delete(trust::clear) },
    Route { path: "/v1/force-leave", methods: &[Method::POST], handlers: || post(trust::force_leave) },
    Route { path: "/metrics", methods: &[Method::GET], handlers: || get(metrics::render) },
];

/// A router serving exactly [`ROUTES`].
pub(super) fn router() -> Router<AppState> {
    ROUTES.iter().fold(Router::new(), |router, route| router.route(route.path, (route.handlers)()))
}
