//! The one error type of the HTTP API: status, JSON body and logging in one place.

use std::sync::LazyLock;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::domain::control::ControlError;
use crate::domain::pool::ActiveSession;
use crate::domain::settings::ResolveError;
use crate::limits::Refused;
use crate::telemetry::throttle::{self, Throttle};

const UNAVAILABLE_LINE: &str = "service unavailable: requests answered 503 \
     (one line per 10 s at most, with the count since the last; each at debug)";
const STORE_UNAVAILABLE_LINE: &str = "session store unavailable: requests answered 503 \
     (one line per 10 s at most, with the count since the last; each at debug)";

/// 503s for a dependency that is down (the settings database, a key source).
static UNAVAILABLE: LazyLock<Throttle> = LazyLock::new(|| {
    Throttle::new(throttle::EVERY, |unavailable| {
        tracing::warn!(unavailable, "{UNAVAILABLE_LINE}");
    })
});

/// 503s for a session store that is down or stalled.
static STORE_UNAVAILABLE: LazyLock<Throttle> = LazyLock::new(|| {
    Throttle::new(throttle::EVERY, |unavailable| {
        tracing::warn!(unavailable, "{STORE_UNAVAILABLE_LINE}");
    })
});

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
    /// The session store did not answer. The client is told only that: the cause
    /// (the engine's own words, hosts, ports) is for the log.
    #[error("the session store is unavailable; try again in a moment")]
    StoreUnavailable { cause: String },
    /// Load shedding: more requests in flight than the server takes at once.
    #[error("the server is busy; retry in a second")]
    Overloaded,
    #[error("internal error")]
    Internal(String),
}

/// The `code` of an error body: a stable name a client can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    LimitExceeded,
    PayloadTooLarge,
    RequestTimeout,
    RateLimited,
    ServiceUnavailable,
    InternalError,
}

/// Every error answer: `{"code", "message"}`.
// Fields are in alphabetical order, the order the `json!` bodies they replaced had
// (serde_json sorts an object's keys), so the bytes on the wire did not change.
// The same holds for every response body of the API.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// For a person, not for a program: the wording may change.
    pub message: String,
}

/// A 409: the customer holds as many sessions as allowed (PROTOCOL 1.2). Players
/// build their takeover list from `details`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = LimitExceededError)]
pub struct LimitExceededBody {
    /// Always `LimitExceeded`.
    pub code: ErrorCode,
    pub details: LimitDetails,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitDetails {
    /// The sessions the customer holds in this pool, for the user to pick one to
    /// replace (empty when the limit is the number of offers watched at once).
    pub active_sessions: Vec<ActiveSessionView>,
    /// Whether the player may offer `POST /takeover`.
    pub take_over_enabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ActiveSession)]
pub struct ActiveSessionView {
    /// The `sessionName` given when the session was created.
    pub name: String,
    #[schema(value_type = String, format = Uuid)]
    pub session_id: crate::domain::SessionId,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            Self::LimitExceeded { .. } | Self::TooManyPools(_) => (StatusCode::CONFLICT, ErrorCode::LimitExceeded),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            Self::Unavailable(_) | Self::StoreUnavailable { .. } | Self::Overloaded => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServiceUnavailable)
            }
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let limit_exceeded = |take_over_enabled, active_sessions| {
            let body = LimitExceededBody {
                code,
                details: LimitDetails {
                    active_sessions,
                    take_over_enabled,
                },
                message: message.clone(),
            };
            (status, Json(body)).into_response()
        };
        let mut response = match &self {
            Self::LimitExceeded {
                takeover_enabled,
                active,
            } => limit_exceeded(
                *takeover_enabled,
                active
                    .iter()
                    .map(|s| ActiveSessionView {
                        name: s.name.clone(),
                        session_id: s.id,
                    })
                    .collect(),
            ),
            Self::TooManyPools(_) => limit_exceeded(false, Vec::new()),
            _ => {
                match &self {
                    Self::Internal(detail) => tracing::error!(detail, "internal error"),
                    // At the request rate while a store is down: each at debug, and
                    // a line per 10 s with the count (the first of a burst's with its
                    // cause; the rest said when the 10 s are over).
                    Self::Unavailable(detail) => {
                        tracing::debug!(detail, "service unavailable");
                        if let Some(unavailable) = UNAVAILABLE.hit() {
                            tracing::warn!(unavailable, detail, "{UNAVAILABLE_LINE}");
                        }
                    }
                    Self::StoreUnavailable { cause } => {
                        tracing::debug!(error = %cause, "session store unavailable");
                        if let Some(unavailable) = STORE_UNAVAILABLE.hit() {
                            tracing::warn!(unavailable, error = %cause, "{STORE_UNAVAILABLE_LINE}");
                        }
                    }
                    // Overloaded is not logged here: under a flood that would be one line
                    // per refused request; the load shedder logs a summary instead.
                    _ => {}
                }
                (status, Json(ErrorBody { code, message })).into_response()
            }
        };
        let retry_after = match &self {
            Self::RateLimited(refused) => Some(HeaderValue::from(refused.retry_after_secs())),
            Self::Overloaded => Some(HeaderValue::from_static("1")),
            _ => None,
        };
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if matches!(self, Self::PayloadTooLarge(_) | Self::RequestTimeout(_)) {
            // The rest of the body was not read, so the connection cannot carry another
            // request and hyper closes it. Said in the answer, or a client may send its
            // next request on the connection before it sees the close, and fail.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
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
            ControlError::Store(_) => Self::StoreUnavailable { cause: cause_chain(&e) },
            ControlError::Settings(_) => Self::Internal(cause_chain(&e)),
        }
    }
}

/// An error and every error under it, outermost first, for the log.
fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
