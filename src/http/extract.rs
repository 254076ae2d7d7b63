//! Extractors for who is calling (a customer, an operator) and for request bodies,
//! whose rejections all speak the API's error format.

use axum::body::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, KeySource};
use crate::domain::Customer;
use crate::domain::settings::{Catalog, Publisher};
use crate::error::ApiError;
use crate::limits::Source;
use crate::meter::RateLimit;
use crate::state::AppState;

fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token.trim())
}

/// The customer named by a verified `Authorization: Bearer <customer JWT>`, with
/// its publisher's catalog when the publisher is configured (read to choose the
/// key; handed on so admission does not read it again).
pub struct CustomerAuth(pub Customer, pub Option<Arc<Catalog>>);

impl FromRequestParts<AppState> for CustomerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let source = checked_source(parts, state)?;
        let verified = async {
            let token = bearer(parts)?;
            // Read once: the publisher it claims picks the key, which then verifies
            // the same reading.
            let token = state.verifier.read(token)?;
            // Looked up without creating the publisher: nothing is written before the
            // token's signature is checked.
            let catalog = state.control.known_catalog(token.publisher()).await?;
            let keys = match catalog.as_ref().map(|c| &c.publisher) {
                Some(Publisher {
                    jwks_uri: Some(uri), ..
                }) => KeySource::Jwks(uri),
                Some(Publisher {
                    verification_key: Some(key),
                    ..
                }) => KeySource::Key(key),
                _ => KeySource::Server,
            };
            let customer = state.verifier.verify_read(token, keys).await?;
            Ok(Self(customer, catalog))
        }
        .await;
        charge_failure(verified, source, state)
    }
}

/// The request's source, refused with 429 while it is blocked for failing to
/// authenticate too often: checked before any key is compared or signature verified.
fn checked_source(parts: &Parts, state: &AppState) -> Result<Option<Source>, ApiError> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let source = state.limits.source(peer, &parts.headers);
    state.limits.check_source(source).map_err(|refused| {
        state.meter.rate_limited(RateLimit::FailedAuth);
        ApiError::from(refused)
    })?;
    Ok(source)
}

/// A 401 counts against its source's failure budget; the one past it is a 429.
fn charge_failure<T>(result: Result<T, ApiError>, source: Option<Source>, state: &AppState) -> Result<T, ApiError> {
    match result {
        Err(ApiError::Unauthorized(message)) => {
            state.limits.charge_failure(source).map_err(|refused| {
                state.meter.rate_limited(RateLimit::FailedAuth);
                ApiError::from(refused)
            })?;
            Err(ApiError::Unauthorized(message))
        }
        other => other,
    }
}

/// An operator holding the admin key.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let source = checked_source(parts, state)?;
        charge_failure(Self::check(parts, state), source, state)
    }
}

impl AdminAuth {
    fn check(parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        let expected = state.settings.auth.admin_key.expose_secret().as_bytes();
        if expected.is_empty() {
            return Err(ApiError::Forbidden(
                "the admin API is disabled (auth.admin_key is empty)".into(),
            ));
        }
        let given = bearer(parts)
            .ok()
            .or_else(|| parts.headers.get("x-admin-key").and_then(|v| v.to_str().ok()))
            .ok_or_else(|| {
                ApiError::Unauthorized("send the admin key as 'Authorization: Bearer <admin key>'".into())
            })?;
        if !constant_time_eq(given.as_bytes(), expected) {
            return Err(ApiError::Unauthorized("the admin key is not valid".into()));
        }
        Ok(Self)
    }
}

/// Compares without an early exit, so timing reveals nothing of the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON body read whatever its `Content-Type`: browsers post a string body as
/// `text/plain`, and players do exactly that (PROTOCOL 1.2).
pub struct AnyJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AnyJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        json_object(&bytes).map(Self)
    }
}

/// A JSON body's bytes, read as [`AnyJson`] reads them, for a handler that parses
/// them with [`JsonBytes::parse`] into a type that borrows its strings from them
/// (`POST /sessions` allocates none for its fields).
pub struct JsonBytes(Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read_body(req, state).await.map(Self)
    }
}

impl JsonBytes {
    /// The body as `T`, refused as [`AnyJson`] refuses it.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ApiError> {
        json_object(&self.0)
    }
}

/// [`AnyJson`] for a call whose body is optional: an empty (or blank) body is `None`.
pub struct MaybeJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        json_object(&bytes).map(|v| Self(Some(v)))
    }
}

/// The whole body, within `server.max_body_bytes` and `server.body_timeout`.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.settings.server.max_body_bytes;
    // One deadline for the whole body, not per chunk (as tower-http's body timeout
    // is): a client trickling a byte at a time must not hold a request open.
    let timeout = state.settings.server.body_timeout;
    tokio::time::timeout(timeout, Bytes::from_request(req, state))
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout))?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::InvalidRequest(format!("the request body could not be read: {rejection}"))
            }
        })
}

fn json_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // serde would also fill a struct from a JSON array, by position: only an
    // object is a request.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("the request body is not valid JSON for this call: {e}")))
}

/// Query parameters, refused like every other bad request: a JSON error naming
/// the parameter, not axum's plain-text rejection.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| {
                ApiError::InvalidRequest(format!(
                    "the query string is not valid for this call: {}",
                    e.body_text()
                ))
            })
    }
}
