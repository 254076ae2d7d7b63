//! Lean HTTP/1.1 keep-alive clients (hyper), customer tokens, and the calls a
//! player makes: `POST /sessions`, `POST /takeover`, and the admin setup.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;

use crate::net::{Sources, Target};
use crate::stats::{C, Counters};

/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Browsers post the body as a string, so players send `text/plain` (PROTOCOL 1.2).
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain;charset=UTF-8");

/// One keep-alive connection; one request at a time.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub async fn open(sources: &Sources, target: &Target) -> Result<Self> {
        let stream = sources.connect(target.addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        host: &HeaderValue,
        auth: &HeaderValue,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let exchange = async {
            self.sender.ready().await?;
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, host.clone())
                .header(AUTHORIZATION, auth.clone())
                .header(CONTENT_TYPE, TEXT_PLAIN)
                .body(Full::new(body))?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .context("HTTP request timed out")?
    }
}

/// Keep-alive connections shared by the players of one process.
pub struct HttpPool {
    idle: Mutex<Vec<HttpConn>>,
    sources: Arc<Sources>,
    target: Target,
    host: HeaderValue,
}

/// Idle connections kept beyond this are closed.
const MAX_IDLE: usize = 64;

impl HttpPool {
    pub fn new(sources: Arc<Sources>, target: Target) -> Result<Self> {
        let host = HeaderValue::from_str(&target.authority)?;
        Ok(Self {
            idle: Mutex::new(Vec::new()),
            sources,
            target,
            host,
        })
    }

    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    pub async fn open(&self) -> Result<HttpConn> {
        HttpConn::open(&self.sources, &self.target).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: &HeaderValue,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        for attempt in 0.. {
            let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(conn) if !conn.is_closed() => conn,
                _ => self.open().await?,
            };
            match conn.send(method.clone(), path, &self.host, auth, body.clone()).await {
                Ok(answer) => {
                    if let Ok(mut idle) = self.idle.lock()
                        && idle.len() < MAX_IDLE
                    {
                        idle.push(conn);
                    }
                    return Ok(answer);
                }
                // A kept-alive connection may have been closed by the server meanwhile.
                Err(_) if !fresh && attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }
}

/// Signs customer tokens (HS256) as the publisher's identity system would.
pub struct Minter {
    key: EncodingKey,
    publisher: String,
    exp: u64,
}

impl Minter {
    pub fn new(secret: &str, publisher: &str, ttl: Duration) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            publisher: publisher.to_owned(),
            exp: jsonwebtoken::get_current_timestamp() + ttl.as_secs(),
        }
    }

    /// `Bearer <JWT>` for one customer.
    pub fn bearer(&self, customer: &str) -> Result<HeaderValue> {
        let claims = serde_json::json!({
            "publisherId": self.publisher,
            "customerId": customer,
            "exp": self.exp,
        });
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)?;
        Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
    }
}

/// The body of `POST /sessions`.
pub fn create_body(offer: &str, name: &str) -> Bytes {
    Bytes::from(serde_json::json!({"sessionName": name, "offerId": offer}).to_string())
}

/// What `POST /sessions` or `/takeover` answered.
#[derive(Debug)]
pub enum Created {
    Granted { endpoint: String, session_id: String },
    Limit { active: Vec<String> },
    Disabled,
    Status(StatusCode),
}

impl Created {
    /// A short description, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Created::Granted { session_id, .. } => format!("granted {session_id}"),
            Created::Limit { active } => format!("limit exceeded ({} active)", active.len()),
            Created::Disabled => "disabled".into(),
            Created::Status(status) => format!("HTTP {status}"),
        }
    }
}

#[derive(Deserialize)]
struct GrantedBody {
    endpoint: Option<String>,
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

#[derive(Deserialize)]
struct LimitBody {
    details: Option<LimitDetails>,
}

#[derive(Deserialize)]
struct LimitDetails {
    #[serde(rename = "activeSessions", default)]
    active_sessions: Vec<ActiveSession>,
}

#[derive(Deserialize)]
struct ActiveSession {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// Reads an answer to a create or a takeover, and counts it.
pub fn read_created(status: StatusCode, body: &[u8], counters: &Counters) -> Result<Created> {
    let created = match status {
        StatusCode::OK => {
            let granted: GrantedBody = serde_json::from_slice(body).context("a 200 answer that is not JSON")?;
            match (granted.endpoint, granted.session_id) {
                (Some(endpoint), session_id) => Created::Granted {
                    endpoint,
                    session_id: session_id.unwrap_or_default(),
                },
                (None, _) => Created::Disabled,
            }
        }
        StatusCode::CONFLICT => {
            let limit: LimitBody = serde_json::from_slice(body).unwrap_or(LimitBody { details: None });
            Created::Limit {
                active: limit
                    .details
                    .map(|d| d.active_sessions.into_iter().map(|s| s.session_id).collect())
                    .unwrap_or_default(),
            }
        }
        other => Created::Status(other),
    };
    counters.inc(match created {
        Created::Granted { .. } => C::Granted,
        Created::Limit { .. } => C::Limit,
        Created::Disabled => C::Disabled,
        Created::Status(_) => C::HttpError,
    });
    Ok(created)
}

/// Admin API calls made before a run (never during the measured part).
pub struct Admin<'a> {
    pub pool: &'a HttpPool,
    pub key: HeaderValue,
}

impl Admin<'_> {
    pub async fn put(&self, path: &str, body: serde_json::Value) -> Result<()> {
        let (status, answer) = self
            .pool
            .send(Method::PUT, path, &self.key, Bytes::from(body.to_string()))
            .await?;
        if !status.is_success() {
            bail!(
                "admin PUT {path} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    }
}
