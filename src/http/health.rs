//! `GET /health`: is the server up, and how much does it hold.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Whether the server is up, and how much it holds.
// Fields in alphabetical order, as the `json!` they replaced had them (see ErrorBody).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Health {
    /// Malformed or unknown WebSocket messages received since start.
    bad_messages: u64,
    /// Sockets closed for sending past their message budget since start.
    flooded_sockets: u64,
    /// Sessions held (pending, live or detached), on every node of a cluster.
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
        (status = 503, description = "ServiceUnavailable: the session store is unreachable", body = ErrorBody),
    ),
)]
async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    Ok(Json(Health {
        bad_messages: state.hub.bad_messages(),
        flooded_sockets: state.hub.flooded_sockets(),
        sessions: state.control.held_count().await?,
        sockets: state.hub.len(),
        status: "ok",
    }))
}
