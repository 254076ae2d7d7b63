//! `POST /demo/token`: a development customer token for the demo page, signed with
//! the published development key. Served only while the demo is on *and* the server
//! verifies customer tokens with that key: a token minted here is then worth no more
//! than one anyone can mint with `drisc token`. With a key of the operator's own it
//! is refused, whatever `web.demo` says.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::DEV_CUSTOMER_KEY;
use crate::domain::settings::MAX_ID_BYTES;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Long enough for a demo, short enough that a pasted token soon stops working.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Whose token to mint.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DemoTokenRequest {
    /// 1 to 256 bytes.
    publisher_id: String,
    /// 1 to 256 bytes.
    customer_id: String,
}

/// A development customer token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DemoToken {
    /// When it expires, in seconds since the epoch.
    expires_at: u64,
    /// The customer JWT (HS256, the development key), for `Authorization: Bearer`.
    token: String,
}

/// Mint a development customer token for the demo (a drisc extension; development only).
#[utoipa::path(
    post,
    path = "/demo/token",
    tag = "web",
    request_body(content = DemoTokenRequest, description = "Read as JSON whatever the Content-Type"),
    responses(
        (status = 200, description = "A customer token valid for an hour", body = DemoToken),
        (status = 400, description = "InvalidRequest: not a JSON object, an id empty or over 256 bytes", body = ErrorBody),
        (status = 403, description = "Forbidden: customer tokens are verified with a key of the operator's own: mint them with it", body = ErrorBody),
        (status = 404, description = "NotFound: the demo is off (web.demo)", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
    ),
)]
pub async fn mint_token(State(state): State<AppState>, request: Request) -> Result<Json<DemoToken>, ApiError> {
    if !state.settings.demo_enabled() {
        return Err(ApiError::NotFound("the demo is switched off (web.demo)".into()));
    }
    if !state.settings.uses_dev_customer_key() {
        return Err(ApiError::Forbidden(
            "this server verifies customer tokens with a key of its own: the demo mints tokens only \
             with the development key; paste a token from your identity provider instead"
                .into(),
        ));
    }
    let body: DemoTokenRequest = read_json(&state, request).await?;
    for (what, id) in [("publisherId", &body.publisher_id), ("customerId", &body.customer_id)] {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(ApiError::InvalidRequest(format!(
                "{what} must be 1 to {MAX_ID_BYTES} bytes"
            )));
        }
    }
    let expires_at = jsonwebtoken::get_current_timestamp() + TOKEN_TTL.as_secs();
    let claims = serde_json::json!({
        "publisherId": body.publisher_id,
        "customerId": body.customer_id,
        "exp": expires_at,
    });
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(DEV_CUSTOMER_KEY.as_bytes()),
    )
    .map_err(|e| ApiError::Internal(format!("the demo token could not be signed: {e}")))?;
    Ok(Json(DemoToken { expires_at, token }))
}

/// The body as JSON, bounded in size (the router's body limit) and in time.
async fn read_json<T: serde::de::DeserializeOwned>(state: &AppState, request: Request) -> Result<T, ApiError> {
    let limit = state.settings.server.max_body_bytes;
    let timeout = state.settings.server.body_timeout;
    let bytes = tokio::time::timeout(timeout, Bytes::from_request(request, state))
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout))?
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::InvalidRequest(format!("the request body could not be read: {rejection}"))
            }
        })?;
    // serde would also fill a struct from a JSON array, by position: only an object is a request.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("the request body is not valid JSON for this call: {e}")))
}
