//! A player's WebSocket ([`Player`]): connecting, the protocol's messages both ways,
//! and answering PINGs. Every message a player reads is checked against the
//! protocol's vocabulary.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{Api, Granted, PATIENCE};

/// The only actions the server may ever send (PROTOCOL 1.4).
pub const SERVER_ACTIONS: [&str; 5] = ["OK", "EXPIRED", "TERMINATE", "TAKE_OVER", "PING"];

/// Fails unless `m` is one of the five server messages, with exactly its keys.
pub fn assert_protocol_message(m: &Value) {
    let object = m
        .as_object()
        .unwrap_or_else(|| panic!("the server sent a non-object: {m}"));
    let action = object
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the server sent a message without an action: {m}"));
    assert!(
        SERVER_ACTIONS.contains(&action),
        "the server sent an action outside the protocol: {m}"
    );
    if action == "TAKE_OVER" {
        assert!(object["sessionName"].is_string(), "TAKE_OVER without sessionName: {m}");
        assert_eq!(object.len(), 2, "TAKE_OVER with extra keys: {m}");
    } else {
        assert_eq!(object.len(), 1, "{action} with extra keys: {m}");
    }
}

/// What a player saw on its socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Message(Value),
    Closed(Option<u16>),
}

/// A player's WebSocket. Every message it reads is checked against the protocol's
/// vocabulary, so any test that meets a stray action fails, not only the one
/// about the vocabulary.
pub struct Player {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    seen: Vec<Value>,
}

impl Player {
    pub async fn connect(endpoint: &str) -> Player {
        let (ws, _) = tokio_tungstenite::connect_async(endpoint)
            .await
            .expect("the socket opens");
        Player { ws, seen: Vec::new() }
    }

    pub async fn send(&mut self, action: &str) {
        self.send_text(&json!({"action": action}).to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        let _ = self.ws.send(message).await;
    }

    /// Every message this player has read, in order.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// The next message or close, skipping protocol-level pings.
    pub async fn next(&mut self) -> Seen {
        self.next_within(PATIENCE).await.expect("the server answers in time")
    }

    /// `None` if nothing arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Seen> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            return Some(match frame {
                Some(Ok(Message::Text(t))) => {
                    let m: Value = serde_json::from_str(&t).expect("server sends JSON");
                    assert_protocol_message(&m);
                    self.seen.push(m.clone());
                    Seen::Message(m)
                }
                Some(Ok(Message::Close(frame))) => Seen::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("the server never sends binary frames"),
                Some(Err(_)) | None => Seen::Closed(None),
            });
        }
    }

    /// The next message must be `{"action": action}` (plus sessionName for TAKE_OVER).
    pub async fn expect(&mut self, action: &str) -> Value {
        match self.next().await {
            Seen::Message(m) if m["action"] == action => m,
            other => panic!("expected {action}, saw {other:?}"),
        }
    }

    /// The socket must close with `code`; a PING the server sent before it
    /// closed (already on its way when the player asked to end) is skipped.
    pub async fn expect_close(&mut self, code: u16) {
        assert_eq!(
            self.next_skipping_pings(false).await,
            Seen::Closed(Some(code)),
            "expected close {code}"
        );
    }

    /// Nothing at all arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(seen) = self.next_within(wait).await {
            panic!("expected nothing for {wait:?}, saw {seen:?}");
        }
    }

    /// Sends REQUESTED and expects OK.
    pub async fn request_ok(&mut self) {
        self.send("REQUESTED").await;
        self.expect("OK").await;
    }

    /// The next thing that is not a PING; each PING is answered with PONG if `answer`.
    pub async fn next_skipping_pings(&mut self, answer: bool) -> Seen {
        loop {
            match self.next().await {
                Seen::Message(m) if m["action"] == "PING" => {
                    if answer {
                        self.send("PONG").await;
                    }
                }
                other => return other,
            }
        }
    }

    /// [`Self::keep_alive_for`] on a task of its own, so the test goes on
    /// (creates, a failover) while the player plays; the task gives the
    /// player back with the PINGs it answered.
    pub fn keep_alive_in_background(mut self, window: Duration) -> tokio::task::JoinHandle<(usize, Self)> {
        tokio::spawn(async move {
            let pings = self.keep_alive_for(window).await;
            (pings, self)
        })
    }

    /// Answers every PING for `window`; fails on anything else. Returns how many PINGs came.
    pub async fn keep_alive_for(&mut self, window: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + window;
        let mut pings = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return pings;
            }
            match self.next_within(left).await {
                None => return pings,
                Some(Seen::Message(m)) if m["action"] == "PING" => {
                    pings += 1;
                    self.send("PONG").await;
                }
                Some(other) => panic!("a player answering every PING was disturbed: {other:?}"),
            }
        }
    }

    /// Answers every PING until something else arrives (returned) or `window`
    /// passes (`None`); also how many PINGs came.
    pub async fn play_until_told(&mut self, window: Duration) -> (usize, Option<Seen>) {
        let deadline = tokio::time::Instant::now() + window;
        let mut pings = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(Seen::Message(m)) if m["action"] == "PING" => {
                    pings += 1;
                    self.send("PONG").await;
                }
                other => return (pings, other),
            }
        }
    }

    /// [`Self::play_until_told`] on a task of its own; the task gives the
    /// player back.
    pub fn play_in_background(mut self, window: Duration) -> tokio::task::JoinHandle<(usize, Option<Seen>, Self)> {
        tokio::spawn(async move {
            let (pings, told) = self.play_until_told(window).await;
            (pings, told, self)
        })
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            }))
            .await;
        // Drain until the server's close reply or the end of the stream.
        let _ = tokio::time::timeout(PATIENCE, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
    }
}

/// A cached endpoint, pointed at the server listening on `port` on loopback: a
/// player coming back through another node, or to a restarted process (behind a
/// load balancer its URL would not change).
pub fn endpoint_on(endpoint: &str, port: u16) -> String {
    let (scheme, rest) = endpoint.split_once("://").expect("an endpoint is a URL");
    let (_, path) = rest.split_once('/').expect("an endpoint has a path");
    format!("{scheme}://127.0.0.1:{port}/{path}")
}

/// Opens `endpoint` and sends REQUESTED, which must be answered with OK.
pub async fn connect_ok(endpoint: &str) -> Player {
    let mut player = Player::connect(endpoint).await;
    player.request_ok().await;
    player
}

/// Opens `endpoint` and sends REQUESTED, which must be answered with EXPIRED and close 4003.
pub async fn connect_expired(endpoint: &str) {
    let mut player = Player::connect(endpoint).await;
    player.send("REQUESTED").await;
    player.expect("EXPIRED").await;
    player.expect_close(4003).await;
}

/// A player that created a session, connected and got OK.
pub async fn live_player(api: &Api, token: &str, offer: &str, name: &str) -> (Granted, Player) {
    let granted = api.create_ok(token, offer, name).await;
    let player = connect_ok(&granted.endpoint).await;
    (granted, player)
}
