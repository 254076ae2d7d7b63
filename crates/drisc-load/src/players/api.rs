//! The calls a player makes (`POST /sessions`, `POST /takeover`), its customer
//! tokens, and the admin setup before a run.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;

use super::HttpPool;
use crate::stats::{C, Counters};

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
