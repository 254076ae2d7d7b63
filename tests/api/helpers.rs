//! Spawning the server and talking to it like a player or an operator would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drisc::{App, Settings};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const DEV_SECRET: &str = drisc::config::DEV_CUSTOMER_KEY;
pub const ADMIN_KEY: &str = drisc::config::DEV_ADMIN_KEY;
/// How long a test waits for anything the server should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub struct TestApp {
    pub port: u16,
    pub base: String,
    pub http: reqwest::Client,
    pub settings: Settings,
    /// Kept alive for the whole test (and across restarts).
    pub data_dir: Arc<tempfile::TempDir>,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// Settings for tests: a fresh data directory and port 0.
pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    let mut s = Settings::defaults().unwrap();
    s.server.port = 0;
    s.server.shutdown_timeout = Duration::from_secs(3);
    s.storage.data_dir = PathBuf::from(data_dir);
    s.log.level = "warn".into();
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(data_dir.path());
    configure(&mut settings);
    start(settings, data_dir).await
}

async fn start(settings: Settings, data_dir: Arc<tempfile::TempDir>) -> TestApp {
    let app = App::build(settings.clone()).await.expect("the server builds");
    let port = app.port();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run());
    TestApp {
        port,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
        settings,
        data_dir,
        shutdown,
        handle,
    }
}

/// A granted session, as `POST /sessions` returns it.
#[derive(Debug, Clone)]
pub struct Granted {
    pub endpoint: String,
    pub session_id: String,
    pub body: Value,
}

impl TestApp {
    /// Shuts down gracefully (sockets get 1012, sessions are saved) and waits for it.
    pub async fn stop(self) -> (Settings, Arc<tempfile::TempDir>) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("the server stops in time")
            .unwrap()
            .expect("the server stops cleanly");
        (self.settings, self.data_dir)
    }

    /// Stops the server and starts it again on the same port and data directory.
    pub async fn restart(self) -> TestApp {
        let port = self.port;
        let (mut settings, data_dir) = self.stop().await;
        settings.server.port = port;
        start(settings, data_dir).await
    }

    /// A customer token signed with the development secret.
    pub fn token(&self, publisher: impl Into<Value>, customer: impl Into<Value>) -> String {
        sign_hs(
            DEV_SECRET,
            Algorithm::HS256,
            json!({"publisherId": publisher.into(), "customerId": customer.into(), "exp": exp_in(600)}),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST path` with a bearer token and a JSON body sent as text, as browsers do.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn create(&self, token: &str, body: Value) -> reqwest::Response {
        self.post("/sessions", token, body).await
    }

    /// Creates a session that must be granted.
    pub async fn create_ok(&self, token: &str, offer: &str, name: &str) -> Granted {
        let response = self.create(token, json!({"offerId": offer, "sessionName": name})).await;
        granted(response).await
    }

    pub async fn takeover(&self, token: &str, offer: &str, name: &str, victim: &str) -> reqwest::Response {
        let body = json!({"offerId": offer, "sessionName": name, "sessionId": victim});
        self.post("/takeover", token, body).await
    }

    /// An admin call with the development admin key.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, self.url(&format!("/admin/v1{path}")))
            .bearer_auth(ADMIN_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Configures an offer (creating its publisher if needed).
    pub async fn put_offer(&self, publisher: &str, offer: &str, limit: u32, tags: &[&str]) {
        let body = json!({"sessionLimit": limit, "tags": tags});
        let response = self
            .admin(
                reqwest::Method::PUT,
                &format!("/publishers/{publisher}/offers/{offer}"),
                Some(body),
            )
            .await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    pub async fn put_publisher(&self, publisher: &str, body: Value) {
        let response = self
            .admin(reqwest::Method::PUT, &format!("/publishers/{publisher}"), Some(body))
            .await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    pub async fn health(&self) -> Value {
        self.http
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Reads a response that must be a granted session.
pub async fn granted(response: reqwest::Response) -> Granted {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "expected a granted session, got {body}");
    Granted {
        endpoint: body["endpoint"].as_str().expect("endpoint").to_owned(),
        session_id: body["sessionId"].as_str().expect("sessionId").to_owned(),
        body,
    }
}

pub fn exp_in(secs: i64) -> i64 {
    jsonwebtoken::get_current_timestamp() as i64 + secs
}

pub fn sign_hs(secret: &str, alg: Algorithm, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// What a player saw on its socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Message(Value),
    Closed(Option<u16>),
}

/// A player's WebSocket.
pub struct Player {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Player {
    pub async fn connect(endpoint: &str) -> Player {
        let (ws, _) = tokio_tungstenite::connect_async(endpoint)
            .await
            .expect("the socket opens");
        Player { ws }
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
                Some(Ok(Message::Text(t))) => Seen::Message(serde_json::from_str(&t).expect("server sends JSON")),
                Some(Ok(Message::Close(frame))) => Seen::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("the server never sends binary frames"),
                Some(Err(_)) | None => Seen::Closed(None),
            });
        }
    }

    /// The next message must be `{"action": action}` (and nothing else).
    pub async fn expect(&mut self, action: &str) -> Value {
        match self.next().await {
            Seen::Message(m) if m["action"] == action => m,
            other => panic!("expected {action}, saw {other:?}"),
        }
    }

    /// The socket must close with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        assert_eq!(self.next().await, Seen::Closed(Some(code)));
    }

    /// Sends REQUESTED and expects OK.
    pub async fn request_ok(&mut self) {
        self.send("REQUESTED").await;
        self.expect("OK").await;
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

/// A player that created a session, connected and got OK.
pub async fn live_player(app: &TestApp, token: &str, offer: &str, name: &str) -> (Granted, Player) {
    let granted = app.create_ok(token, offer, name).await;
    let mut player = Player::connect(&granted.endpoint).await;
    player.request_ok().await;
    (granted, player)
}

/// Polls `check` until it holds or PATIENCE runs out.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

// ---------------------------------------------------------------------------
// Helpers added for the REST API tests (tests/api/http_api.rs).
// ---------------------------------------------------------------------------

/// Reads an error response: it must have `status`, be JSON and carry `code` and a
/// non-empty human-readable `message`. Returns the body for further checks.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let got = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "unexpected status, body: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "an error must be JSON, got content-type {content_type:?}: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
        "an error needs a message: {body}"
    );
    body
}

/// The text of a test fixture under tests/fixtures/ (test-only keys).
pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixture {path:?}: {e}"))
}

/// Customer-token claims naming `publisher` and `customer`, valid for 10 minutes.
pub fn customer_claims(publisher: impl Into<Value>, customer: impl Into<Value>) -> Value {
    json!({"publisherId": publisher.into(), "customerId": customer.into(), "exp": exp_in(600)})
}

/// Signs `claims` with any key and algorithm (RS256 with a PEM private key, ...).
pub fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

// --- end of the REST API tests' helpers ------------------------------------
