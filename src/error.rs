//! The one error type of the HTTP API: status, JSON body and logging in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::domain::control::ControlError;
use crate::domain::pool::ActiveSession;
use crate::domain::settings::ResolveError;

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
    #[error("the request body is larger than the {0} bytes allowed")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
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
            Self::LimitExceeded { .. } => (StatusCode::CONFLICT, "LimitExceeded"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
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
            Self::Internal(detail) => {
                tracing::error!(detail, "internal error");
                json!({"code": code, "message": message})
            }
            Self::Unavailable(detail) => {
                tracing::warn!(detail, "service unavailable");
                json!({"code": code, "message": message})
            }
            _ => json!({"code": code, "message": message}),
        };
        (status, Json(body)).into_response()
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
