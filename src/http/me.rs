//! "Who's watching" (a drisc extension): with the customer's own token (the JWT
//! of `POST /sessions`, verified the same way), the end user lists their
//! sessions across offers and stops one of them from elsewhere.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{CustomerAuth, MaybeJson, Params};
use super::paging::{self, Paging};
use super::sessions::{MAX_SESSION_NAME, admit_customer};
use crate::domain::control::ControlError;
use crate::domain::listing::SessionQuery;
use crate::domain::{Millis, PoolKey, Session, SessionId};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The name a stopped session's player is shown (`TAKE_OVER`'s `sessionName`)
/// when the request gives none.
pub const DEFAULT_STOP_NAME: &str = "another device";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_sessions))
        .routes(routes!(stop_session))
}

/// One of the customer's sessions.
// Fields in alphabetical order (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = MySession)]
struct MySessionView {
    /// When it was granted, in milliseconds since the epoch.
    #[schema(value_type = u64)]
    created_at: Millis,
    /// The `sessionName` its player gave.
    name: String,
    /// The offer's pool it counts against (`*unknown` for the pool that unknown offers share).
    offer_id: String,
    #[schema(value_type = String, format = Uuid)]
    session_id: SessionId,
    /// `pending`, `live` or `detached`.
    state: &'static str,
}

impl MySessionView {
    fn new(pool: &PoolKey, s: &Session) -> Self {
        Self {
            created_at: s.created_at,
            name: s.name.clone(),
            offer_id: pool.offer_id().to_owned(),
            session_id: s.id,
            state: s.state.as_str(),
        }
    }
}

/// A page of the customer's sessions.
// Fields in alphabetical order (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct MySessions {
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
    sessions: Vec<MySessionView>,
}

/// The optional body of `DELETE /me/sessions/{session_id}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StopRequest {
    /// Shown to the stopped session's player in `TAKE_OVER`: at most 100
    /// characters; absent: `another device`.
    #[schema(max_length = 100)]
    session_name: Option<String>,
}

/// The customer's own sessions across offers, a page at a time, in (offer id,
/// session id) order (a drisc extension).
#[utoipa::path(
    get,
    path = "/me/sessions",
    tag = "extensions",
    security(("customerToken" = [])),
    params(Paging),
    responses(
        (status = 200, description = "A page of the customer's sessions (empty if it holds none)", body = MySessions),
        (status = 400, description = "InvalidRequest: a limit outside 1 to 1000, a cursor this server did not give", body = ErrorBody),
        (status = 401, description = "Unauthorized: the customer token is missing, malformed, expired or badly signed", body = ErrorBody),
        (status = 429, description = "RateLimited: shares the budget of POST /sessions", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ),
)]
async fn my_sessions(
    State(state): State<AppState>,
    CustomerAuth(customer, _): CustomerAuth,
    Params(paging): Params<Paging>,
) -> Result<Json<MySessions>, ApiError> {
    admit_customer(&state, &customer)?;
    let query = SessionQuery {
        customer,
        offer_id: None,
        after: paging.session_cursor()?,
        limit: paging.limit()? as usize,
    };
    let page = state.control.customer_sessions(&query).await?;
    Ok(Json(MySessions {
        next_cursor: page.next.as_ref().map(paging::session_cursor),
        sessions: page
            .sessions
            .iter()
            .map(|(pool, s)| MySessionView::new(pool, s))
            .collect(),
    }))
}

/// Stop one of the customer's sessions from elsewhere (a drisc extension).
///
/// Its slot is free at once; its player gets `TAKE_OVER` with `sessionName`
/// (default `another device`) and its socket is closed, on whichever node holds it.
#[utoipa::path(
    delete,
    path = "/me/sessions/{session_id}",
    tag = "extensions",
    security(("customerToken" = [])),
    params(("session_id" = String, Path, description = "The session to stop (a UUID)")),
    request_body(
        content = Option<StopRequest>,
        description = "Optional; read as JSON whatever the Content-Type",
    ),
    responses(
        (status = 204, description = "Stopped"),
        (status = 400, description = "InvalidRequest: the body is not a JSON object, has an unknown field, or sessionName is over 100 characters", body = ErrorBody),
        (status = 401, description = "Unauthorized: the customer token is missing, malformed, expired or badly signed", body = ErrorBody),
        (status = 404, description = "NotFound: no such session of this customer (another customer's session answers the same)", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
        (status = 429, description = "RateLimited: shares the budget of POST /sessions", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ),
)]
async fn stop_session(
    State(state): State<AppState>,
    CustomerAuth(customer, _): CustomerAuth,
    Path(session_id): Path<String>,
    MaybeJson(body): MaybeJson<StopRequest>,
) -> Result<StatusCode, ApiError> {
    admit_customer(&state, &customer)?;
    let name = body.and_then(|b| b.session_name).unwrap_or_default();
    if name.chars().count() > MAX_SESSION_NAME {
        return Err(ApiError::InvalidRequest(format!(
            "sessionName is longer than {MAX_SESSION_NAME} characters"
        )));
    }
    let name = if name.is_empty() { DEFAULT_STOP_NAME } else { &name };
    // Never echoed: the path is the caller's, of any length.
    let not_found = || ApiError::NotFound("no such session of this customer".into());
    let id = SessionId::parse(&session_id).ok_or_else(not_found)?;
    match state.control.stop_remotely(&customer, id, name).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(ControlError::SessionNotFound(_)) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}
