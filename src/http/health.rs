//! `GET /health`: is the server up, and how much does it hold.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
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
