//! `GET /livez` (the process runs), `GET /readyz` (it can admit: what load
//! balancers act on) and `GET /health` (is the server up, and how much does it
//! hold; kept for compatibility).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::readiness::CheckState;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// The probes load balancers and orchestrators poll every few seconds. Served
/// outside the trace and CORS layers (see `http::router`).
pub fn probes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(livez)).routes(routes!(readyz))
}

/// The paths of [`probes`], which `http::router` sends past the API's layers (a
/// unit test holds the two lists equal).
pub const PROBE_PATHS: [&str; 2] = ["/livez", "/readyz"];

/// Whether the server is up, and how much it holds.
// Fields in alphabetical order, as the `json!` they replaced had them (see ErrorBody).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Health {
    /// Malformed or unknown WebSocket messages received since start.
    bad_messages: u64,
    /// Sockets closed for sending past their message budget since start.
    flooded_sockets: u64,
    /// Sessions held: with the memory store, all of them (pending, live or
    /// detached); with Redis, those bound to this node's sockets.
    sessions: usize,
    /// WebSockets open on this node.
    sockets: usize,
    /// Always `ok`.
    status: &'static str,
}

/// Is the server up, and how much does it hold.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Up", body = Health),
    ),
)]
async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        bad_messages: state.hub.bad_messages(),
        flooded_sockets: state.hub.flooded_sockets(),
        sessions: state.control.held_count(),
        sockets: state.hub.len(),
        status: "ok",
    })
}

/// The process serves HTTP.
#[derive(Debug, Serialize, ToSchema)]
struct Live {
    /// Always `ok`.
    status: &'static str,
}

/// Is the process alive (a liveness probe). Touches nothing: a process that
/// answers HTTP is alive, whatever its stores do (restarting it would not bring
/// Redis back).
#[utoipa::path(
    get,
    path = "/livez",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = Live,
            headers(("Cache-Control" = String, description = "Always `no-store`: the answer is about now"))),
    ),
)]
async fn livez() -> Response {
    uncached(Json(Live { status: "ok" }).into_response())
}

/// The node can admit.
// Fields in alphabetical order, as every body's (see ErrorBody).
#[derive(Debug, Serialize, ToSchema)]
struct Ready {
    /// Each store the node depends on, by engine (`sqlite`, `postgres`, `redis`):
    /// `up` or `down`. A store the node admits without (Redis with
    /// `cluster.on_store_unavailable = "fail_open"`) may be `down` here.
    checks: BTreeMap<&'static str, CheckState>,
    /// Always `ready`.
    status: &'static str,
}

/// The node cannot admit: a store it needs is unreachable, or it is stopping.
// Fields in alphabetical order, as every body's (see ErrorBody).
#[derive(Debug, Serialize, ToSchema)]
struct NotReady {
    /// Each store the node depends on, by engine: `up` or `down` (as of the last
    /// probe; empty if draining began before any).
    checks: BTreeMap<&'static str, CheckState>,
    /// Why: `draining`, or `<engine> unreachable` (e.g. `redis unreachable`).
    reason: String,
    /// Always `unavailable`.
    status: &'static str,
}

/// Can the node admit players (a readiness probe, what load balancers act on).
/// Cheap under a flood: the stores are probed at most once a second
/// (`readiness::MAX_AGE`), and never while draining.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: every store the node needs answers", body = Ready,
            headers(("Cache-Control" = String, description = "Always `no-store`: the answer is about now"))),
        (status = 503, description = "Not ready: a store the node needs is unreachable, or the node is \
draining (stopping: server.drain_period). (A server shedding load answers 503 with an Error body and \
Retry-After instead, as for every route.)", body = NotReady,
            headers(("Cache-Control" = String, description = "Always `no-store`: the answer is about now"))),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.readiness.report().await;
    let checks = report.checks.into_iter().collect();
    let response = match report.reason {
        None => Json(Ready {
            checks,
            status: "ready",
        })
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(NotReady {
                checks,
                reason,
                status: "unavailable",
            }),
        )
            .into_response(),
    };
    uncached(response)
}

/// A probe's answer is about now: no cache between it and the prober may keep it.
fn uncached(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
