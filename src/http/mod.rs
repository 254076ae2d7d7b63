//! The HTTP API: one small router per resource, and the layers they share.

mod admin;
mod extract;
mod health;
mod metrics;
mod sessions;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    let cors = cors_layer(&state.settings.cors.allowed_origins);
    Router::new()
        .merge(sessions::router())
        .merge(crate::ws::router())
        .merge(health::router())
        .merge(metrics::router())
        .nest("/admin/v1", admin::router())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        // Innermost: axum sets the route template (MatchedPath) before it runs.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::time_requests,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(cors)
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of a request: its path, never its URI, whose query may carry a session
/// token (`/ws?token=...`). Headers (the customer token) are never recorded.
fn request_span(request: &Request<Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
    )
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Validated at start-up (config::Settings::validate).
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse::<HeaderValue>().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-admin-key"),
        ])
        .max_age(Duration::from_secs(600))
}
