//! The player's WebSocket (PROTOCOL 1.4, 2.4): upgrade, per-socket loop, messages.

mod connection;
pub mod hub;
pub mod messages;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;

const READ_BUFFER: usize = 512;
/// The longest session token accepted in `?token=`. Ours are ~1.3 KiB at most (three
/// ids of at most 256 bytes each); anything longer is refused before it is parsed.
pub const MAX_SESSION_TOKEN_BYTES: usize = 2048;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

/// Checks the session token, then upgrades with lean buffers: a held session
/// should cost a few KB, not the framework's default of ~135 KB.
async fn upgrade(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the endpoint needs ?token=<session token>".into()))?;
    if token.len() > MAX_SESSION_TOKEN_BYTES {
        return Err(ApiError::Unauthorized(format!(
            "the session token is longer than the {MAX_SESSION_TOKEN_BYTES} bytes accepted"
        )));
    }
    let claims = state
        .tokens
        .verify(token)
        .ok_or_else(|| ApiError::Unauthorized("the session token is not valid".into()))?;
    let ws = ws.map_err(|e| ApiError::InvalidRequest(format!("this endpoint takes a WebSocket upgrade: {e}")))?;
    let limit = state.settings.websocket.max_message_bytes;
    let tracker = state.connections.clone();
    Ok(ws
        // The read buffer is allocated up front for every socket, and grows only for
        // a larger frame: protocol messages are ~25 bytes, so 512 is plenty.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| tracker.track_future(connection::run(socket, claims, state))))
}
