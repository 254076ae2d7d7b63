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
//! Run: `cargo run --release --example baseline -- --port 0 --ping-interval 10s`;
//! it prints `listening on 127.0.0.1:PORT` on stdout.

use std::net::SocketAddr;
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

#[derive(Clone)]
struct Baseline {
    granted: Arc<Mutex<u64>>,
    ping_interval: Duration,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (port, ping_interval) = parse_args();
    let state = Baseline {
        granted: Arc::new(Mutex::new(0)),
        ping_interval,
    };
    // Not drisc's router, which clippy.toml keeps to documented routes.
    #[expect(
        clippy::disallowed_methods,
        reason = "the baseline is not the server: nothing to describe"
    )]
    let app = Router::new()
        .route("/sessions", post(create))
        .route("/ws", get(upgrade))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
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
        "endpoint": format!("ws://{host}/ws?token={n}"),
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
