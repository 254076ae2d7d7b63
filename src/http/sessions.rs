//! `POST /sessions` and `POST /takeover` (PROTOCOL 1.2, 1.3), and `DELETE
//! /sessions/{id}` for a player that wants to give its slot back without a socket.

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde::Deserialize;
use serde_json::json;

use super::extract::{AnyJson, CustomerAuth};
use crate::domain::control::{CreateOutcome, CreateRequest};
use crate::domain::settings::{MAX_ID_BYTES, OfferChoice};
use crate::domain::{Customer, PoolKey, Session, SessionId};
use crate::error::ApiError;
use crate::meter::{Admission, RateLimit};
use crate::state::AppState;

/// The longest `sessionName` accepted, in characters.
const MAX_SESSION_NAME: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions", post(create))
        // One page of the public reference shows GET: accept both, same body.
        .route("/takeover", post(take_over).get(take_over))
        .route("/sessions/{session_id}", delete(end_session))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionRequest {
    session_name: Option<String>,
    offer_id: Option<String>,
    tag: Option<String>,
    /// Only for takeover: the session to replace.
    session_id: Option<String>,
}

impl SessionRequest {
    /// Checks every field's bounds before anything is looked up or stored, so an
    /// oversized field costs nothing but this answer.
    fn validate(&self) -> Result<CreateRequest<'_>, ApiError> {
        let name = self.session_name.as_deref().unwrap_or("");
        if name.chars().count() > MAX_SESSION_NAME {
            return Err(ApiError::InvalidRequest(format!(
                "sessionName is longer than {MAX_SESSION_NAME} characters"
            )));
        }
        for (field, value) in [("offerId", &self.offer_id), ("tag", &self.tag)] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_ID_BYTES) {
                return Err(ApiError::InvalidRequest(format!(
                    "{field} is longer than {MAX_ID_BYTES} bytes"
                )));
            }
        }
        let offer_id = self.offer_id.as_deref().filter(|s| !s.is_empty());
        let tag = self.tag.as_deref().filter(|s| !s.is_empty());
        let offer = match (offer_id, tag) {
            (Some(id), None) => OfferChoice::Id(id),
            (None, Some(tag)) => OfferChoice::Tag(tag),
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidRequest("give either offerId or tag, not both".into()));
            }
            (None, None) => return Err(ApiError::InvalidRequest("give one of offerId or tag".into())),
        };
        Ok(CreateRequest { name, offer })
    }

    /// The session a takeover replaces. Session ids are UUIDs: anything else is
    /// malformed (and never echoed back, whatever its size).
    fn victim(&self) -> Result<SessionId, ApiError> {
        match self.session_id.as_deref() {
            None | Some("") => Err(ApiError::InvalidRequest(
                "give sessionId, the session to take over".into(),
            )),
            Some(id) => SessionId::parse(id).ok_or_else(|| ApiError::InvalidRequest("sessionId must be a UUID".into())),
        }
    }
}

/// Every answer is counted by its outcome, refusals by the extractors included:
/// the customer is taken as a result, and the body is read only once the caller
/// is known and within its rate limit, as an extractor would have.
async fn create(
    State(state): State<AppState>,
    customer: Result<CustomerAuth, ApiError>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let outcome = async {
        let CustomerAuth(customer) = customer?;
        admit_customer(&state, &customer)?;
        let AnyJson(body) = AnyJson::<SessionRequest>::from_request(request, &state).await?;
        let request = body.validate()?;
        Ok(state.control.create(&customer, request).await?)
    }
    .await;
    state.meter.admission(admission(&outcome));
    respond(&state, &headers, outcome?)
}

async fn take_over(
    State(state): State<AppState>,
    CustomerAuth(customer): CustomerAuth,
    headers: HeaderMap,
    AnyJson(body): AnyJson<SessionRequest>,
) -> Result<Response, ApiError> {
    admit_customer(&state, &customer)?;
    let request = body.validate()?;
    let victim = body.victim()?;
    let outcome = state.control.take_over(&customer, request, victim).await?;
    if matches!(outcome, CreateOutcome::Granted { .. }) {
        state.meter.takeover();
    }
    respond(&state, &headers, outcome)
}

fn admit_customer(state: &AppState, customer: &Customer) -> Result<(), ApiError> {
    state.limits.admit_customer(customer).map_err(|refused| {
        state.meter.rate_limited(RateLimit::Customer);
        ApiError::from(refused)
    })
}

/// How `drisc_admissions_total{outcome}` names an answer to `POST /sessions`.
fn admission(outcome: &Result<CreateOutcome, ApiError>) -> Admission {
    match outcome {
        Ok(CreateOutcome::Granted { .. }) => Admission::Granted,
        Ok(CreateOutcome::Disabled) => Admission::Disabled,
        Ok(CreateOutcome::LimitExceeded { .. }) => Admission::LimitExceeded,
        Ok(CreateOutcome::TooManyPools { .. }) => Admission::TooManyPools,
        Err(ApiError::RateLimited(_)) => Admission::RateLimited,
        Err(ApiError::Unauthorized(_)) => Admission::Unauthorized,
        Err(ApiError::Forbidden(_) | ApiError::NotFound(_)) => Admission::Rejected,
        Err(ApiError::Unavailable(_) | ApiError::Overloaded) => Admission::Unavailable,
        Err(ApiError::InvalidRequest(_) | ApiError::PayloadTooLarge(_) | ApiError::RequestTimeout(_)) => {
            Admission::Invalid
        }
        Err(_) => Admission::Error,
    }
}

async fn end_session(
    State(state): State<AppState>,
    CustomerAuth(customer): CustomerAuth,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("session {session_id} does not exist"));
    let id = SessionId::parse(&session_id).ok_or_else(not_found)?;
    // Another customer's session answers exactly like a missing one.
    let pool = state
        .control
        .locate(id)
        .await?
        .filter(|pool| pool.owner() == customer)
        .ok_or_else(not_found)?;
    state.control.kick(&pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn respond(state: &AppState, headers: &HeaderMap, outcome: CreateOutcome) -> Result<Response, ApiError> {
    match outcome {
        CreateOutcome::Granted {
            pool,
            offer_id,
            session,
        } => Ok(granted(state, headers, &pool, &offer_id, &session)),
        CreateOutcome::Disabled => Ok(Json(json!({
            "status": "disabled",
            "message": "Session tracking disabled.",
            "enabled": false,
        }))
        .into_response()),
        CreateOutcome::LimitExceeded {
            takeover_enabled,
            active,
        } => Err(ApiError::LimitExceeded {
            takeover_enabled,
            active,
        }),
        CreateOutcome::TooManyPools { max } => Err(ApiError::TooManyPools(max)),
    }
}

fn granted(state: &AppState, headers: &HeaderMap, pool: &PoolKey, offer_id: &str, session: &Session) -> Response {
    let now_secs = state.control.clock().now() / 1000;
    let token = state.tokens.issue(pool, session.id, now_secs);
    let endpoint = format!("{}?token={token}", ws_base(state, headers));
    Json(json!({
        "endpoint": endpoint,
        "sessionId": session.id,
        "token": token,
        "offerId": offer_id,
    }))
    .into_response()
}

/// The WebSocket URL players should open: configured, or else the address the
/// player itself used to reach us.
fn ws_base(state: &AppState, headers: &HeaderMap) -> String {
    let configured = &state.settings.server.public_ws_url;
    if !configured.is_empty() {
        return configured.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_plain_host(h));
    let Some(host) = host else {
        return state.fallback_ws_url.to_string();
    };
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}/ws", if secure { "wss" } else { "ws" })
}

/// A Host header is reflected into the endpoint only if it is a host and port.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}
