//! Spawning the server and talking to it like a player or an operator would: one
//! client of the API ([`Api`]) for the in-process server and the real binary alike,
//! and customer tokens. A player's WebSocket is in players.rs. Every module uses
//! these; a module keeps only the helpers about its own feature.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drisc::{App, Settings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DEV_SECRET: &str = drisc::config::DEV_CUSTOMER_KEY;
pub const ADMIN_KEY: &str = drisc::config::DEV_ADMIN_KEY;
/// The content type a browser's `fetch` gives a JSON string body: what players send.
pub const TEXT_PLAIN: &str = "text/plain;charset=UTF-8";
/// How long a test waits for anything the server should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The in-process server

/// The server running in this process on port 0. It derefs to its [`Api`], so a
/// test calls `app.create_ok(..)`, `app.admin(..)`, `app.http` directly.
pub struct TestApp {
    pub api: Api,
    pub port: u16,
    pub settings: Settings,
    /// Kept alive for the whole test (and across restarts).
    pub data_dir: Arc<tempfile::TempDir>,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
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
        api: Api::new(format!("http://127.0.0.1:{port}")),
        port,
        settings,
        data_dir,
        shutdown,
        handle,
    }
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
}

/// Starts a server again from what [`TestApp::stop`] returned (any free port).
pub async fn restart_with(settings: Settings, data_dir: Arc<tempfile::TempDir>) -> TestApp {
    start(settings, data_dir).await
}

// ---------------------------------------------------------------------------
// What players and the operator send: one client for any server

/// A client of one server (in-process, or the real binary at its `base`): the
/// player API with customer tokens, the admin API with `admin_key`.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub admin_key: String,
}

/// A granted session, as `POST /sessions` returns it.
#[derive(Debug, Clone)]
pub struct Granted {
    pub endpoint: String,
    pub session_id: String,
    pub body: Value,
}

impl Api {
    /// A client of the server at `base`, with the development admin key.
    pub fn new(base: impl Into<String>) -> Api {
        Api {
            base: base.into(),
            http: reqwest::Client::new(),
            admin_key: ADMIN_KEY.to_owned(),
        }
    }

    pub fn with_admin_key(self, admin_key: &str) -> Api {
        Api {
            admin_key: admin_key.to_owned(),
            ..self
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A customer token signed with the development secret.
    pub fn token(&self, publisher: impl Into<Value>, customer: impl Into<Value>) -> String {
        customer_token(publisher, customer)
    }

    /// `POST path` with a bearer token and a JSON body sent as text, as browsers do;
    /// not sent yet (see [`all_at_once`]).
    pub fn post_request(&self, path: &str, token: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", TEXT_PLAIN)
            .body(body.to_string())
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.post_request(path, token, &body).send().await.unwrap()
    }

    pub async fn create(&self, token: &str, body: Value) -> reqwest::Response {
        self.post("/sessions", token, body).await
    }

    /// The status of a create once the node answers other than 503 (503 if it
    /// still does after `patience`): during a store's failover, and after it
    /// until the node's next round reaches the new master, a node refuses with
    /// 503; what it says then is what a test asserts.
    pub async fn create_status_once_available(&self, token: &str, body: Value, patience: std::time::Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let status = self.create(token, body.clone()).await.status().as_u16();
            if status != 503 || tokio::time::Instant::now() >= deadline {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
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

    /// `DELETE /sessions/{id}`: the customer gives its session back.
    pub async fn end_session(&self, token: &str, session_id: &str) -> reqwest::Response {
        self.http
            .delete(self.url(&format!("/sessions/{session_id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// An admin call with this client's admin key.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, self.url(&format!("/admin/v1{path}")))
            .bearer_auth(&self.admin_key);
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
                Method::PUT,
                &format!("/publishers/{publisher}/offers/{offer}"),
                Some(body),
            )
            .await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    pub async fn put_publisher(&self, publisher: &str, body: Value) {
        let response = self
            .admin(Method::PUT, &format!("/publishers/{publisher}"), Some(body))
            .await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// The session's state as the admin API shows it; `None` once it is not held.
    pub async fn session_state(&self, session_id: &str) -> Option<String> {
        let response = self.admin(Method::GET, &format!("/sessions/{session_id}"), None).await;
        match response.status().as_u16() {
            404 => None,
            200 => {
                let body: Value = response.json().await.unwrap();
                Some(body["state"].as_str().expect("state").to_owned())
            }
            other => panic!("GET /admin/v1/sessions/{session_id}: {other}"),
        }
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

    /// How many sessions `/health` says the server holds.
    pub async fn held(&self) -> u64 {
        self.health().await["sessions"].as_u64().expect("sessions")
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

/// A create that must be refused with 409 LimitExceeded; returns the error body.
pub async fn limit_exceeded(api: &Api, token: &str, body: Value) -> Value {
    let refused = expect_error(api.create(token, body).await, 409, "LimitExceeded").await;
    assert!(
        refused["details"]["takeOverEnabled"].is_boolean(),
        "takeOverEnabled must be a boolean: {refused}"
    );
    refused
}

/// `details.activeSessions` of a LimitExceeded body as sorted (sessionId, name) pairs.
pub fn active_sessions(refused: &Value) -> Vec<(String, String)> {
    let mut sessions: Vec<_> = refused["details"]["activeSessions"]
        .as_array()
        .unwrap_or_else(|| panic!("activeSessions must be an array: {refused}"))
        .iter()
        .map(|s| {
            (
                s["sessionId"].as_str().expect("sessionId").to_owned(),
                s["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    sessions.sort();
    sessions
}

/// A (sessionId, name) pair as [`active_sessions`] lists it.
pub fn pair(id: &str, name: &str) -> (String, String) {
    (id.to_owned(), name.to_owned())
}

pub fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// A session id no server has handed out.
pub fn random_session_id() -> String {
    drisc::domain::SessionId::random().to_string()
}

/// A response read to its end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// Every answer of the player and admin APIs is JSON.
    pub body: Value,
}

/// Sends every request at once, each on its own task; their answers, in order.
pub async fn all_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<Answer> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            tokio::spawn(async move {
                let response = request.send().await.expect("every request is answered");
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let text = response.text().await.unwrap();
                let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
                Answer {
                    status,
                    retry_after,
                    body,
                }
            })
        })
        .collect();
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|answer| answer.unwrap())
        .collect()
}

/// `count` creates of one customer on `offer` at once (device 0, device 1, ...).
pub async fn creates_at_once(api: &Api, token: &str, offer: &str, count: usize) -> Vec<Answer> {
    let requests = (0..count)
        .map(|i| {
            let body = json!({"offerId": offer, "sessionName": format!("device {i}")});
            api.post_request("/sessions", token, &body)
        })
        .collect();
    all_at_once(requests).await
}

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

/// Starts `POST /sessions` with `token` and only part of its body: a request in
/// flight that will not finish by itself, for as long as the stream is kept.
pub async fn half_sent_create(port: u16, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"offerId\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

// ---------------------------------------------------------------------------
// Customer tokens

pub fn exp_in(secs: i64) -> i64 {
    jsonwebtoken::get_current_timestamp() as i64 + secs
}

/// Customer-token claims naming `publisher` and `customer`, valid for 10 minutes.
pub fn customer_claims(publisher: impl Into<Value>, customer: impl Into<Value>) -> Value {
    json!({"publisherId": publisher.into(), "customerId": customer.into(), "exp": exp_in(600)})
}

/// A customer token signed with the development secret, which every server in
/// these tests accepts unless a test configures another key.
pub fn customer_token(publisher: impl Into<Value>, customer: impl Into<Value>) -> String {
    sign_dev(customer_claims(publisher, customer))
}

/// Any claims, signed (HS256) with the development secret: a token that verifies,
/// whatever the claims then make of it.
pub fn sign_dev(claims: Value) -> String {
    sign_hs(DEV_SECRET, Algorithm::HS256, claims)
}

/// A well-formed customer token signed with a secret no server knows.
pub fn forged_token(publisher: impl Into<Value>, customer: impl Into<Value>) -> String {
    sign_hs("guessed-secret", Algorithm::HS256, customer_claims(publisher, customer))
}

pub fn sign_hs(secret: &str, alg: Algorithm, claims: Value) -> String {
    sign_with(alg, &EncodingKey::from_secret(secret.as_bytes()), &claims)
}

/// Signs `claims` with any key and algorithm (RS256 with a PEM private key, ...).
pub fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// The RSA private key of the fixtures (its public half is `rsa-public.pem`).
pub fn rsa_signing_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()).expect("the RSA test key reads")
}

/// The EC private key of the fixtures (PKCS#8; its public half is `ec-public.pem`).
pub fn ec_signing_key() -> EncodingKey {
    EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()).expect("the EC test key (PKCS#8) reads")
}

/// Base64url without padding, as JWTs and JWKs encode their parts.
pub fn base64_url(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The text of a test fixture under tests/fixtures/ (test-only keys).
pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixture {path:?}: {e}"))
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
