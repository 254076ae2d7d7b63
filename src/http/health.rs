//! `GET /livez` (the process runs), `GET /readyz` (it can admit: what load
//! balancers act on) and `GET /health` (is the server up, and how much does it
//! hold; kept for compatibility).

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::readiness::CheckState;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// The probes load balancers and orchestrators poll every few seconds.
pub fn probes() -> Router<AppState> {
    Router::new().route("/livez", get(livez)).route("/readyz", get(readyz))
}

async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({
        "status": "ok",
        "sessions": state.control.held_count().await?,
        "sockets": state.hub.len(),
        "badMessages": state.hub.bad_messages(),
        "floodedSockets": state.hub.flooded_sockets(),
    })))
}

#[derive(Serialize)]
struct Live {
    status: &'static str,
}

/// Touches nothing: a process that answers HTTP is alive, whatever its stores do
/// (restarting it would not bring Redis back).
async fn livez() -> Response {
    uncached(Json(Live { status: "ok" }).into_response())
}

/// `{"status":"ready"}`, or 503 with why not.
#[derive(Serialize)]
struct Ready {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Each store the node depends on: `"up"` or `"down"`.
    checks: BTreeMap<&'static str, CheckState>,
}

/// Cheap under a flood: the stores are probed at most once a second
/// (`readiness::MAX_AGE`), and never while draining.
async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.readiness.report().await;
    let ready = report.ready();
    let body = Ready {
        status: if ready { "ready" } else { "unavailable" },
        reason: report.reason,
        checks: report.checks.into_iter().collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    uncached((status, Json(body)).into_response())
}

/// A probe's answer is about now: no cache between it and the prober may keep it.
fn uncached(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
