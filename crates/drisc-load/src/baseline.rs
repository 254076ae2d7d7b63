//! The baseline bench/run measures drisc against: a bare axum server on the same
//! axum and tokio versions, doing the least a DRISC server could.
//!
//! - `POST /sessions` parses the same JSON body (whatever the content type), bumps
//!   a mutex-guarded counter and answers a similar JSON with an endpoint. No token
//!   is verified, no pool is kept.
//! - `GET /ws` holds a WebSocket with the same lean buffers as drisc. It answers
//!   REQUESTED with OK (so the same players can drive it), sends PING every
//!   `--ping-interval` and takes PONGs; FINISHED closes. Nothing else.
//!
//! Run: `cargo run --release --bin drisc-baseline -- --port 0 --ping-interval 10s`;
//! it prints `listening on 127.0.0.1:PORT` on stdout. [`router`] is public so the
//! load generator's own tests can serve it (over TLS, too).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

/// The baseline server's command line (`--port 0 --ping-interval 10s`): serves
/// [`router`] on 127.0.0.1 until ctrl-c, after printing `listening on
/// 127.0.0.1:PORT` on stdout. Shared by `drisc-baseline` (the C library's malloc)
/// and `drisc-baseline-jemalloc` (jemalloc, as drisc), which differ in their
/// allocator only.
pub async fn serve_from_args() -> anyhow::Result<()> {
    let (port, ping_interval) = parse_args();
    let app = router(ping_interval, false);
    let listener = tokio::net::TcpListener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn parse_args() -> (u16, Duration) {
    let mut port = 0;
    let mut ping = Duration::from_secs(10);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            "--port" => port = value.parse().unwrap_or(0),
            "--ping-interval" => ping = humantime::parse_duration(&value).unwrap_or(ping),
            other => eprintln!("baseline: ignoring {other}"),
        }
    }
    (port, ping)
}

#[derive(Clone)]
struct Baseline {
    granted: Arc<Mutex<u64>>,
    ping_interval: Duration,
    /// `ws` or `wss`: the scheme of the endpoints handed out, as the listener
    /// in front of the router is plain or TLS.
    websocket_scheme: &'static str,
}

/// The baseline's routes: `POST /sessions` and `GET /ws`. `tls` says whether it
/// is served behind TLS, so its endpoints are `wss://`.
pub fn router(ping_interval: Duration, tls: bool) -> Router {
    let state = Baseline {
        granted: Arc::new(Mutex::new(0)),
        ping_interval,
        websocket_scheme: if tls { "wss" } else { "ws" },
    };
    // Not drisc's router, which clippy.toml keeps to documented routes.
    #[expect(
        clippy::disallowed_methods,
        reason = "the baseline is not the server: nothing to describe"
    )]
    Router::new()
        .route("/sessions", post(create))
        .route("/ws", get(upgrade))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct SessionRequest {
    session_name: Option<String>,
    offer_id: Option<String>,
    tag: Option<String>,
    session_id: Option<String>,
}

#[derive(Deserialize)]
struct ClientMessage {
    action: String,
}

async fn create(State(state): State<Baseline>, headers: HeaderMap, body: Bytes) -> Response {
    if serde_json::from_slice::<SessionRequest>(&body).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"code":"InvalidRequest","message":"bad JSON"}"#,
        )
            .into_response();
    }
    let n = {
        let Ok(mut granted) = state.granted.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        *granted += 1;
        *granted
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    axum::Json(serde_json::json!({
        "endpoint": format!("{}://{host}/ws?token={n}", state.websocket_scheme),
        "sessionId": n.to_string(),
        "token": n.to_string(),
    }))
    .into_response()
}

async fn upgrade(State(state): State<Baseline>, _query: RawQuery, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(4096)
        .max_frame_size(4096)
        .on_upgrade(move |socket| serve(socket, state.ping_interval))
}

async fn serve(mut socket: WebSocket, every: Duration) {
    let mut next_ping = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_ping) => {
                next_ping = tokio::time::Instant::now() + every;
                if socket.send(Message::text(r#"{"action":"PING"}"#)).await.is_err() {
                    return;
                }
            }
            frame = socket.recv() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    match frame {
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => continue,
                        _ => return,
                    }
                };
                let action = serde_json::from_str::<ClientMessage>(&text).map(|m| m.action).unwrap_or_default();
                match action.as_str() {
                    "REQUESTED" if socket.send(Message::text(r#"{"action":"OK"}"#)).await.is_err() => return,
                    "FINISHED" => {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}
