//! `GET /metrics` (Prometheus text format), and the layer that times every request.

use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::extract::AdminAuth;
use crate::error::ApiError;
use crate::meter::Readings;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Authorised like the admin API unless `metrics.public`: the numbers say how
/// busy the service is, which is no one else's business. The key is checked only
/// when needed, so a public scrape never counts as a failed or rate-limited
/// authentication.
async fn metrics(State(state): State<AppState>, mut parts: Parts) -> Result<Response, ApiError> {
    if !state.settings.metrics.public {
        AdminAuth::from_request_parts(&mut parts, &state).await?;
    }
    let hub = &state.hub;
    let text = state.meter.render(Readings {
        sessions: state.control.sessions_by_state(),
        websocket_connections: hub.len(),
        bad_messages: hub.bad_messages(),
        flooded_sockets: hub.flooded_sockets(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// Records each request in `drisc_http_request_duration_seconds` under its route
/// template, so `/sessions/{session_id}` is one series whatever the ids asked for.
pub async fn time_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    state
        .meter
        .http_request(&method, route, response.status().as_u16(), started.elapsed());
    response
}
