//! The one error type of the HTTP API: status, JSON body and logging in one place.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::domain::control::ControlError;
use crate::domain::pool::ActiveSession;
use crate::domain::settings::ResolveError;
use crate::limits::Refused;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the customer already holds as many sessions as the offer allows")]
    LimitExceeded {
        takeover_enabled: bool,
        active: Vec<ActiveSession>,
    },
    /// The customer holds sessions on as many offers as the server allows at once.
    /// Answered as LimitExceeded (409) with no takeover and no session listed,
    /// rather than 403: players already handle LimitExceeded by telling the user
    /// to stop watching elsewhere, which is what frees a pool; a 403 reads as "not
    /// allowed to watch at all". No session is listed because none of this pool
    /// could be taken over: it holds none.
    #[error(
        "the customer already holds sessions on {0} offers, the most allowed at once: end one of them to watch another offer"
    )]
    TooManyPools(u32),
    #[error("the request body is larger than the {0} bytes allowed")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0:?}")]
    RequestTimeout(std::time::Duration),
    #[error("too many requests; retry after {} s", .0.retry_after_secs())]
    RateLimited(Refused),
    #[error("{0}")]
    Unavailable(String),
    /// Load shedding: more requests in flight than the server takes at once.
    #[error("the server is busy; retry in a second")]
    Overloaded,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Self::LimitExceeded { .. } | Self::TooManyPools(_) => (StatusCode::CONFLICT, "LimitExceeded"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "RateLimited"),
            Self::Unavailable(_) | Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let body = match &self {
            Self::LimitExceeded {
                takeover_enabled,
                active,
            } => json!({
                "code": code,
                "message": message,
                "details": {
                    "takeOverEnabled": takeover_enabled,
                    "activeSessions": active
                        .iter()
                        .map(|s| json!({"sessionId": s.id, "name": s.name}))
                        .collect::<Vec<_>>(),
                },
            }),
            Self::TooManyPools(_) => json!({
                "code": code,
                "message": message,
                "details": {"takeOverEnabled": false, "activeSessions": []},
            }),
            Self::Internal(detail) => {
                tracing::error!(detail, "internal error");
                json!({"code": code, "message": message})
            }
            Self::Unavailable(detail) => {
                tracing::warn!(detail, "service unavailable");
                json!({"code": code, "message": message})
            }
            // Not logged here: under a flood that would be one line per refused request;
            // the load shedder logs a summary instead.
            Self::Overloaded => {
                return (
                    status,
                    [(header::RETRY_AFTER, "1")],
                    Json(json!({"code": code, "message": message})),
                )
                    .into_response();
            }
            _ => json!({"code": code, "message": message}),
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::RateLimited(refused) = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(refused.retry_after_secs()));
        }
        response
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        Self::RateLimited(refused)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            // The server cannot check the token, which may well be good.
            AuthError::KeysUnavailable => Self::Unavailable(e.to_string()),
            _ => Self::Unauthorized(e.to_string()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::UnknownPublisher(_) | ControlError::TakeoverDisabled => Self::Forbidden(e.to_string()),
            ControlError::Offer(ResolveError::UnknownOffer(_) | ResolveError::UnknownTag(_))
            | ControlError::SessionNotFound(_) => Self::NotFound(e.to_string()),
            ControlError::Store(_) => Self::Unavailable(e.to_string()),
            ControlError::Settings(_) => Self::Internal(e.to_string()),
        }
    }
}
