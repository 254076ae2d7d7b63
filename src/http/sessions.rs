//! `POST /sessions` and `POST /takeover` (PROTOCOL 1.2, 1.3), and `DELETE
//! /sessions/{id}` for a player that wants to give its slot back without a socket.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{CustomerAuth, JsonBytes};
use crate::domain::control::{CreateOutcome, CreateRequest};
use crate::domain::settings::{MAX_ID_BYTES, OfferChoice};
use crate::domain::{Customer, PoolKey, Session, SessionId};
use crate::error::{ApiError, ErrorBody, LimitExceededBody};
use crate::json_text;
use crate::meter::{Admission, RateLimit};
use crate::state::AppState;
use crate::telemetry::throttle::{self, Throttle};

const FAILED_OPEN_LINE: &str = "session store unavailable: failing open, creates answered without a session \
     (one line per 10 s at most, with the count since the last; each at debug)";
/// Every create fails open while the store is down: a line per 10 s, the first
/// of a burst's with its cause.
static FAILED_OPEN: LazyLock<Throttle> =
    LazyLock::new(|| Throttle::new(throttle::EVERY, |creates| tracing::warn!(creates, "{FAILED_OPEN_LINE}")));

/// The longest `sessionName` accepted, in characters.
pub(super) const MAX_SESSION_NAME: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(take_over))
        .routes(routes!(end_session))
}

/// The path of [`create`], the hottest route: `POST` on it is answered by
/// [`create_service`] without going through the router (`super::Hot`). A test
/// holds it equal to the path of `create`'s route.
pub(super) const CREATE_PATH: &str = "/sessions";

/// [`create`] as a service of its own, with the state it needs: what the router
/// would call for `POST` [`CREATE_PATH`], without the router's matching, its
/// boxed clone of the route and its futures around the handler's.
pub(super) fn create_service(
    state: AppState,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    axum::handler::Handler::with_state(create, state)
}

/// The body of `POST /sessions` and `POST /takeover`, read as JSON whatever its
/// `Content-Type` (browsers send `text/plain`). Exactly one of `offerId` and `tag`.
/// Its strings are borrowed from the body's bytes ([`Text`]), so a create
/// allocates nothing for them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionRequest<'a> {
    /// A label shown in the takeover list, e.g. the content's title: at most 100 characters.
    #[schema(max_length = 100, value_type = Option<String>)]
    #[serde(borrow)]
    session_name: Option<Text<'a>>,
    /// The offer to count against: at most 256 bytes.
    #[schema(max_length = 256, value_type = Option<String>)]
    #[serde(borrow)]
    offer_id: Option<Text<'a>>,
    /// A tag configured on offers (`live`, `vod`): at most 256 bytes.
    #[schema(max_length = 256, value_type = Option<String>)]
    #[serde(borrow)]
    tag: Option<Text<'a>>,
    /// Only for `/takeover`: the session to replace (a UUID).
    #[schema(value_type = Option<String>)]
    #[serde(borrow)]
    session_id: Option<Text<'a>>,
}

/// A string of the request's body, borrowed from its bytes unless JSON escapes had
/// to be undone. Its own type because serde borrows a `Cow` only where it is a
/// field's whole type: an `Option<Cow<str>>` is always deserialized owned.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// 200: the session is granted; open `endpoint` as a WebSocket, verbatim.
// Fields in alphabetical order, as the `json!` they replaced had them (see ErrorBody).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionGranted {
    /// The WebSocket URL to open: `<ws url>?token=<session token>`.
    endpoint: String,
    /// The offer the session counts against (the one a `tag` resolved to).
    offer_id: String,
    #[schema(value_type = String, format = Uuid)]
    session_id: SessionId,
    /// The session token (also in `endpoint`).
    token: String,
}

/// 200 without `endpoint`: the publisher switched session control off; play
/// without a session. Both `status` and `enabled` are sent, because two
/// generations of players read one or the other.
#[derive(Debug, Serialize, ToSchema)]
struct SessionTrackingDisabled {
    /// Always `false`.
    enabled: bool,
    /// Always `Session tracking disabled.`
    message: &'static str,
    /// Always `disabled`.
    status: &'static str,
}

/// The 200 answers of `POST /sessions` and `/takeover`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum SessionAnswer {
    Granted(SessionGranted),
    Disabled(SessionTrackingDisabled),
}

/// A 200 answer of `POST /sessions` and `/takeover` as `application/json`.
enum Answer {
    /// A granted answer's bytes, written by [`granted`].
    Granted(Vec<u8>),
    /// Any other answer, serialized as `Json` would.
    Other(SessionAnswer),
}

/// Room for the fixed parts of a granted answer (names, quotes, the session id).
const ANSWER_FIXED: usize = 128;

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let body = match self {
            Self::Granted(body) => body,
            Self::Other(answer) => match serde_json::to_vec(&answer) {
                Ok(body) => body,
                // Strings and a UUID always serialize; kept for the type's sake.
                Err(e) => return ApiError::Internal(format!("the answer could not be written: {e}")).into_response(),
            },
        };
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response()
    }
}

impl SessionRequest<'_> {
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

/// Initiate a session (PROTOCOL 1.2).
#[utoipa::path(
    post,
    path = "/sessions",
    tag = "protocol",
    security(("customerToken" = [])),
    request_body(
        description = "Read as JSON whatever the Content-Type: browsers post it as text/plain.",
        content((SessionRequest = "application/json"), (SessionRequest = "text/plain")),
    ),
    responses(
        (status = 200, description = "Granted (with `endpoint`), or session control disabled (`status: disabled`, no `endpoint`): for this publisher, or while the session store is unreachable and cluster.on_store_unavailable lets players play", body = SessionAnswer),
        (status = 400, description = "InvalidRequest: not a JSON object, both or neither of offerId and tag, a field too long", body = ErrorBody),
        (status = 401, description = "Unauthorized: the customer token is missing, malformed, expired or badly signed", body = ErrorBody),
        (status = 403, description = "Forbidden: the publisher is not configured and the server is strict", body = ErrorBody),
        (status = 404, description = "NotFound: no such offer (unknownOffers = reject) or no offer with this tag", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 409, description = "LimitExceeded: the customer holds as many sessions as allowed; `details` lists them", body = LimitExceededBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
        (status = 429, description = "RateLimited: the customer asks too often, or its address failed to authenticate too often", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ),
)]
// Every answer is counted by its outcome, refusals by the extractors included:
// the customer is taken as a result, and the body is read only once the caller
// is known and within its rate limit, as an extractor would have.
async fn create(
    State(state): State<AppState>,
    customer: Result<CustomerAuth, ApiError>,
    request: Request,
) -> Result<Answer, ApiError> {
    // The headers are moved out for the endpoint, not cloned (as the `HeaderMap`
    // extractor does): reading the body needs none of them.
    let (mut parts, body) = request.into_parts();
    let headers = std::mem::take(&mut parts.headers);
    let request = Request::from_parts(parts, body);
    let outcome = async {
        let CustomerAuth(customer, catalog) = customer?;
        admit_customer(&state, &customer)?;
        let bytes = JsonBytes::from_request(request, &state).await?;
        let body: SessionRequest<'_> = bytes.parse()?;
        let request = body.validate()?;
        Ok(state.control.create_in(&customer, catalog, request).await?)
    }
    .await;
    state.meter.admission(admission(&outcome));
    respond(&state, &headers, outcome?)
}

/// Replace one of the customer's sessions (PROTOCOL 1.3).
///
/// The replaced session's player gets `TAKE_OVER` with the new session's name and
/// its socket is closed (4001). Answers exactly as a granted `POST /sessions`.
/// GET with the same body is accepted too, because one page of the public
/// reference shows it.
#[utoipa::path(
    method(post, get),
    path = "/takeover",
    tag = "protocol",
    security(("customerToken" = [])),
    request_body(
        description = "The body of `POST /sessions` plus `sessionId`, the session to replace.",
        content((SessionRequest = "application/json"), (SessionRequest = "text/plain")),
    ),
    responses(
        (status = 200, description = "Granted (with `endpoint`), or session control disabled (`status: disabled`, no `endpoint`): for this publisher, or while the session store is unreachable and cluster.on_store_unavailable lets players play", body = SessionAnswer),
        (status = 400, description = "InvalidRequest: as for POST /sessions, or sessionId missing or not a UUID", body = ErrorBody),
        (status = 401, description = "Unauthorized: the customer token is missing, malformed, expired or badly signed", body = ErrorBody),
        (status = 403, description = "Forbidden: takeover is disabled for this offer, or the publisher is not configured and the server is strict", body = ErrorBody),
        (status = 404, description = "NotFound: no such session in the requested offer's pool of this customer, or no such offer or tag", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
        (status = 429, description = "RateLimited: shares the budget of POST /sessions", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ),
)]
async fn take_over(
    State(state): State<AppState>,
    CustomerAuth(customer, _): CustomerAuth,
    headers: HeaderMap,
    bytes: JsonBytes,
) -> Result<Answer, ApiError> {
    // Parsed before the rate limit is asked, as the extractor it replaced was.
    let body: SessionRequest<'_> = bytes.parse()?;
    admit_customer(&state, &customer)?;
    let request = body.validate()?;
    let victim = body.victim()?;
    let outcome = state.control.take_over(&customer, request, victim).await?;
    if matches!(outcome, CreateOutcome::Granted { .. }) {
        state.meter.takeover();
    }
    respond(&state, &headers, outcome)
}

pub(super) fn admit_customer(state: &AppState, customer: &Customer) -> Result<(), ApiError> {
    state.limits.admit_customer(customer).map_err(|refused| {
        state.meter.rate_limited(RateLimit::Customer);
        ApiError::from(refused)
    })
}

/// How `drisc_admissions_total{outcome}` names an answer to `POST /sessions`.
fn admission(outcome: &Result<CreateOutcome, ApiError>) -> Admission {
    match outcome {
        Ok(CreateOutcome::Granted { .. }) => Admission::Granted,
        Ok(CreateOutcome::Disabled | CreateOutcome::FailedOpen { .. }) => Admission::Disabled,
        Ok(CreateOutcome::LimitExceeded { .. }) => Admission::LimitExceeded,
        Ok(CreateOutcome::TooManyPools { .. }) => Admission::TooManyPools,
        Err(ApiError::RateLimited(_)) => Admission::RateLimited,
        Err(ApiError::Unauthorized(_)) => Admission::Unauthorized,
        Err(ApiError::Forbidden(_) | ApiError::NotFound(_)) => Admission::Rejected,
        Err(ApiError::Unavailable(_) | ApiError::StoreUnavailable { .. } | ApiError::Overloaded) => {
            Admission::Unavailable
        }
        Err(ApiError::InvalidRequest(_) | ApiError::PayloadTooLarge(_) | ApiError::RequestTimeout(_)) => {
            Admission::Invalid
        }
        Err(_) => Admission::Error,
    }
}

/// Give one of the customer's own sessions back without a socket (a drisc extension).
///
/// Its slot is free at once; a player still connected to it gets `EXPIRED`.
#[utoipa::path(
    delete,
    path = "/sessions/{session_id}",
    tag = "extensions",
    security(("customerToken" = [])),
    params(("session_id" = String, Path, description = "The session to end (a UUID)")),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "Unauthorized: the customer token is missing, malformed, expired or badly signed", body = ErrorBody),
        (status = 404, description = "NotFound: no such session of this customer (another customer's session answers the same)", body = ErrorBody),
        (status = 429, description = "RateLimited: the address failed to authenticate too often", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ),
)]
async fn end_session(
    State(state): State<AppState>,
    CustomerAuth(customer, _): CustomerAuth,
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

fn respond(state: &AppState, headers: &HeaderMap, outcome: CreateOutcome) -> Result<Answer, ApiError> {
    match outcome {
        CreateOutcome::Granted {
            pool,
            offer_id,
            session,
        } => Ok(granted(state, headers, &pool, offer_id, &session)),
        CreateOutcome::FailedOpen { cause } => {
            tracing::debug!(error = %cause, "session store unavailable: failing open (DRISC disabled for this create)");
            if let Some(creates) = FAILED_OPEN.hit() {
                tracing::warn!(creates, error = %cause, "{FAILED_OPEN_LINE}");
            }
            respond(state, headers, CreateOutcome::Disabled)
        }
        CreateOutcome::Disabled => Ok(Answer::Other(SessionAnswer::Disabled(SessionTrackingDisabled {
            enabled: false,
            message: "Session tracking disabled.",
            status: "disabled",
        }))),
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

fn granted(state: &AppState, headers: &HeaderMap, pool: &PoolKey, offer_id: String, session: &Session) -> Answer {
    let now_secs = state.control.clock().now() / 1000;
    let token = state.tokens.issue(pool, session.id, now_secs);
    let base = ws_base(state, headers);
    match granted_body(base, &token, &offer_id, session.id) {
        Some(body) => Answer::Granted(body),
        // A configured URL with a character JSON escapes: serde writes it.
        None => Answer::Other(SessionAnswer::Granted(SessionGranted {
            endpoint: format!("{}{}{}?token={token}", base[0], base[1], base[2]),
            offer_id,
            session_id: session.id,
            token,
        })),
    }
}

/// The granted answer, the bytes serde_json writes for [`SessionGranted`] (a unit
/// test holds them equal), written straight into one buffer of its size: the token,
/// written twice, is not scanned for characters to escape, since a session token
/// is base64url and dots (`SessionTokens::issue`), which JSON never escapes. `None`
/// when the WebSocket URL has a character JSON escapes.
fn granted_body(base: [&str; 3], token: &str, offer_id: &str, session_id: SessionId) -> Option<Vec<u8>> {
    if !base.iter().all(|part| json_text::needs_no_escape(part)) {
        return None;
    }
    let base_len: usize = base.iter().map(|part| part.len()).sum();
    let mut body = Vec::with_capacity(ANSWER_FIXED + base_len + 2 * token.len() + offer_id.len());
    body.extend_from_slice(br#"{"endpoint":""#);
    for part in base {
        body.extend_from_slice(part.as_bytes());
    }
    body.extend_from_slice(b"?token=");
    body.extend_from_slice(token.as_bytes());
    body.extend_from_slice(br#"","offerId":"#);
    // Any string a player sent: escaped as serde_json escapes it.
    serde_json::to_writer(&mut body, offer_id).ok()?;
    body.extend_from_slice(br#","sessionId":""#);
    session_id.with_text(|id| body.extend_from_slice(id.as_bytes()));
    body.extend_from_slice(br#"","token":""#);
    body.extend_from_slice(token.as_bytes());
    body.extend_from_slice(br#""}"#);
    Some(body)
}

/// The WebSocket URL players should open, in up to three parts: configured, or else
/// the address the player itself used to reach us. Parts, not one string, so that
/// no string of its own is built per create.
fn ws_base<'a>(state: &'a AppState, headers: &'a HeaderMap) -> [&'a str; 3] {
    let configured = &state.settings.server.public_ws_url;
    if !configured.is_empty() {
        return [configured, "", ""];
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_plain_host(h));
    let Some(host) = host else {
        return [&state.fallback_ws_url, "", ""];
    };
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    [if secure { "wss://" } else { "ws://" }, host, "/ws"]
}

/// A Host header is reflected into the endpoint only if it is a host and port.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_bytes(endpoint: String, offer_id: &str, session_id: SessionId, token: &str) -> Vec<u8> {
        serde_json::to_vec(&SessionAnswer::Granted(SessionGranted {
            endpoint,
            offer_id: offer_id.to_owned(),
            session_id,
            token: token.to_owned(),
        }))
        .unwrap()
    }

    #[test]
    fn a_granted_answer_is_byte_for_byte_what_serde_json_writes() {
        let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJhIn0.c2lnbmF0dXJlLV8";
        let session_id = SessionId::random();
        let bases = [
            ["ws://", "127.0.0.1:8080", "/ws"],
            ["wss://", "[::1]:443", "/ws"],
            ["wss://play.example.com/drisc/ws", "", ""],
            ["ws://ex\u{e9}mple.com/ws?a=1&b=/", "", ""],
        ];
        let offers = [
            "bench",
            "",
            "o\"ff\\er",
            "caf\u{e9} \u{1f600}",
            "tab\there\u{1}\u{7f}",
            "</script>",
        ];
        for base in bases {
            for offer in offers {
                let body = granted_body(base, token, offer, session_id).unwrap();
                let endpoint = format!("{}{}{}?token={token}", base[0], base[1], base[2]);
                assert_eq!(
                    String::from_utf8(body).unwrap(),
                    String::from_utf8(serde_bytes(endpoint, offer, session_id, token)).unwrap(),
                    "{base:?} {offer:?}"
                );
            }
        }
    }

    #[test]
    fn a_request_borrows_its_strings_unless_json_escapes_were_undone() {
        let body = br#"{"sessionName":"Match","offerId":"bench","tag":"l\u0069ve","sessionId":null}"#;
        let request: SessionRequest<'_> = serde_json::from_slice(body).unwrap();
        let borrowed = |t: &Option<Text<'_>>| matches!(t, Some(Text(Cow::Borrowed(_))));
        assert!(borrowed(&request.session_name) && borrowed(&request.offer_id));
        assert_eq!(request.session_name.as_deref(), Some("Match"));
        assert_eq!(request.offer_id.as_deref(), Some("bench"));
        // An escape is undone into a string of its own.
        assert!(matches!(&request.tag, Some(Text(Cow::Owned(t))) if t == "live"));
        assert!(request.session_id.is_none());
    }

    /// `SessionRequest` as it was with owned strings: what players' bad bodies were
    /// refused with.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct OwnedRequest {
        session_name: Option<String>,
        offer_id: Option<String>,
        tag: Option<String>,
        session_id: Option<String>,
    }

    #[test]
    fn a_bad_body_is_refused_with_the_message_owned_strings_gave() {
        let bodies = [
            r#"{"offerId":5}"#,
            r#"{"sessionName":["a"],"offerId":"x"}"#,
            r#"{"tag":{"a":1}}"#,
            r#"{"sessionId":true}"#,
            r#"{"offerId":"x","offerId":"y"}"#,
            r#"{"offerId":"unterminated}"#,
            r#"{"offerId":"bad \q escape"}"#,
            r#"{"offerId":null,"tag":"live"}"#,
            r#"{"offerId":"x"} trailing"#,
        ];
        for body in bodies {
            let ours = serde_json::from_str::<SessionRequest<'_>>(body)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let owned = serde_json::from_str::<OwnedRequest>(body)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert_eq!(ours, owned, "{body}");
        }
    }

    #[test]
    fn a_websocket_url_that_json_escapes_is_left_to_serde_json() {
        for base in ["ws://a\"b/ws", "ws://a\\b/ws", "ws://a\nb/ws"] {
            assert!(
                granted_body([base, "", ""], "t.t.t", "o", SessionId::random()).is_none(),
                "{base:?}"
            );
        }
    }
}
