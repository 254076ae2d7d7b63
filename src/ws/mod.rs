//! The player's WebSocket (PROTOCOL 1.4, 2.4): upgrade, per-socket loop, messages.

mod connection;
pub mod deadline;
mod handshake;
pub mod hub;
pub mod messages;
mod socket;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tungstenite::protocol::WebSocketConfig;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::net;
use crate::state::AppState;
use handshake::Handshake;
use socket::WebSocket;

/// The read buffer every socket keeps for as long as it lives; it grows only for a
/// larger frame. A player's frames are 23 to 28 bytes (PONG, REQUESTED, FINISHED,
/// masked), and 64 is one jemalloc size class below 128: 64 bytes less per held
/// session (`bench/analysis.md`, round seventeen).
const READ_BUFFER: usize = 64;
/// How much a socket may queue when the player does not read (a TAKE_OVER's list).
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// The longest session token accepted in `?token=`. Ours are ~1.3 KiB at most (three
/// ids of at most 256 bytes each); anything longer is refused before it is parsed.
pub const MAX_SESSION_TOKEN_BYTES: usize = 2048;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

// Checks the session token, then upgrades and serves the WebSocket on the raw
// socket with lean buffers: a held session should cost a few KB, not the
// framework's default of ~135 KB (see `socket`).
/// The player's WebSocket (PROTOCOL 1.4, 2.4): open the `endpoint` of a granted session verbatim.
///
/// Every frame, both ways, is a UTF-8 text frame holding one JSON object with an
/// `action` key (schemas `ClientMessage` and `ServerMessage`).
///
/// | player → server | server's reaction |
/// |---|---|
/// | `{"action":"REQUESTED"}` right after the socket opens | `OK` if the session is held (this socket is now bound to it; an older socket gets `TERMINATE`), else `EXPIRED` |
/// | `{"action":"PONG"}` in answer to every `PING` | marks the session alive |
/// | `{"action":"FINISHED"}` when playback ends | ends the session (its slot is free at once); close 1000 |
///
/// | server → player | meaning |
/// |---|---|
/// | `{"action":"OK"}` | the session is valid; start playback only after this |
/// | `{"action":"EXPIRED"}` | the session no longer exists: drop the endpoint and create a new session; close 4003 |
/// | `{"action":"TERMINATE"}` | a newer socket took this session (a reconnect); close 4002 |
/// | `{"action":"TAKE_OVER","sessionName":"..."}` | another device took this session over; close 4001 |
/// | `{"action":"PING"}` | liveness probe: answer `PONG` within the pong timeout |
///
/// Other close codes: 1012 on server restart (reconnect with the same token),
/// 1008 for a socket that keeps sending bad messages or exceeds its message
/// budget, 1003 for a binary frame, 1009 for a frame or message over
/// `websocket.max_message_bytes`.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "protocol",
    params(("token" = String, Query, description = "The session token from a granted session's `endpoint` (at most 2048 bytes)")),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open; speak the messages above"),
        (status = 400, description = "InvalidRequest: a valid token, but not a WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "Unauthorized: no token, a token over 2048 bytes, or one not signed by this server (a well-signed token of an ended session is accepted and gets EXPIRED)", body = ErrorBody),
    ),
)]
async fn upgrade(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    handshake: Handshake,
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
    // axum's extractor decides whether this is a valid upgrade request (and words
    // the refusal); the socket is then served by `socket`, not by axum.
    let _valid = ws.map_err(|e| ApiError::InvalidRequest(format!("this endpoint takes a WebSocket upgrade: {e}")))?;
    let (response, pending) = handshake
        .accept()
        .ok_or_else(|| ApiError::InvalidRequest("this endpoint takes a WebSocket upgrade".into()))?;
    let limit = state.settings.websocket.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let tracker = state.connections.clone();
    // This task only waits for the upgrade, then spawns the socket's own task: what
    // it holds meanwhile (the claims, the state, the configuration) is not carried
    // for the socket's whole life.
    tracker.clone().spawn(async move {
        let upgraded = match pending.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "the WebSocket upgrade did not complete");
                return;
            }
        };
        // Our own listener's socket, served as it is; any other (a router served
        // elsewhere) through hyper's boxed IO.
        match net::Socket::from_upgraded(upgraded) {
            Ok((io, read_ahead)) => {
                tracker.spawn(connection::run(WebSocket::new(io, read_ahead, config), claims, state));
            }
            Err(upgraded) => {
                let io = TokioIo::new(upgraded);
                tracker.spawn(connection::run(
                    WebSocket::new(io, Default::default(), config),
                    claims,
                    state,
                ));
            }
        }
    });
    Ok(response)
}
