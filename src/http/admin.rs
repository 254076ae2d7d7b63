//! The operator API (`/admin/v1`): publisher and offer settings, sessions by id,
//! and a customer's sessions (listed page by page, or all ended at once).
//! Authorised by the admin key, never by a customer token.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminAuth, AnyJson, Params};
use super::paging::{self, Paging};
use crate::auth::{JwksUri, VerificationKey};
use crate::domain::listing::SessionQuery;
use crate::domain::policy::LimitPolicy;
use crate::domain::settings::{Catalog, MAX_ID_BYTES, Offer, Publisher, SHARED_UNKNOWN_OFFER, UnknownOffers};
use crate::domain::{Customer, Millis, PoolKey, Session, SessionId};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// What every admin call may answer before it runs, since the admin key is checked
/// first: said once here for the OpenAPI document (the bodies are built by ApiError).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum AdminKeyRefusals {
    /// Unauthorized: no admin key, or not the right one
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Forbidden: the admin API is disabled (auth.admin_key is empty)
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// RateLimited: the address failed to authenticate too often
    #[response(status = 429, headers(("Retry-After" = u64, description = "Whole seconds to wait")))]
    RateLimited(ErrorBody),
}

const MAX_TAGS: usize = 64;
/// Far above any PEM public key or HMAC secret in use (an RSA-8192 public key is
/// about 1.5 KB), and small enough that a mistake cannot fill the database.
const MAX_KEY_BYTES: usize = 8192;

/// The admin API's routes, relative to `/admin/v1`. Every one of them is tagged
/// `admin` and authorised by the admin key (see `openapi::ApiDoc`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_publishers))
        .routes(routes!(get_publisher, put_publisher))
        .routes(routes!(put_offer, delete_offer))
        .routes(routes!(kick_customer))
        .routes(routes!(list_sessions))
        .routes(routes!(get_session, kick_session))
        .merge(super::overrides::router())
}

// Describes `domain::settings::UnknownOffers` for the document only: the domain
// knows nothing of the document.
/// What an `offerId` that is not configured counts against.
#[derive(ToSchema)]
#[schema(as = UnknownOffers)]
#[allow(dead_code)]
enum UnknownOffersSchema {
    /// All of a customer's unknown offers share one pool with `defaultSessionLimit`.
    #[schema(rename = "shared")]
    Shared,
    /// Each unknown offer is a pool of its own (development only; `default` is its old name).
    #[schema(rename = "each")]
    Each,
    /// An unknown offer is refused with 404.
    #[schema(rename = "reject")]
    Reject,
}

// Describes `domain::policy::LimitPolicy` for the document only.
/// What a full pool does with one more session (`onLimit`, a drisc extension).
#[derive(ToSchema)]
#[schema(as = OnLimit)]
#[allow(dead_code)]
pub(super) enum LimitPolicySchema {
    /// Refuse it with 409 and the takeover list (DRISC's behaviour, the default).
    #[schema(rename = "reject")]
    Reject,
    /// Grant it; the pool's oldest session ends as taken over (its player gets TAKE_OVER).
    #[schema(rename = "evict_oldest")]
    EvictOldest,
    /// Grant it past the limit, and count the would-be refusal (shadow mode); at most
    /// 100 sessions past it, then refuse as `reject` does.
    #[schema(rename = "monitor")]
    Monitor,
}

/// An `onLimit` as given; read here rather than by serde so that a wrong value
/// is refused with a message naming the field and what it may be.
fn limit_policy(given: Option<String>) -> Result<Option<LimitPolicy>, ApiError> {
    given
        .map(|value| {
            LimitPolicy::parse(&value).ok_or_else(|| {
                let known: Vec<_> = LimitPolicy::ALL.iter().map(|p| p.as_str()).collect();
                let shown: String = value.chars().take(40).collect();
                ApiError::InvalidRequest(format!(
                    "onLimit '{shown}' is not a policy: give one of {}",
                    known.join(", ")
                ))
            })
        })
        .transpose()
}

/// Whether a publisher's policy is worth showing: the default is left out, so
/// views of publishers that never set one are as they were.
fn is_reject(policy: &LimitPolicy) -> bool {
    *policy == LimitPolicy::Reject
}

/// Reads a field that may be given as `null` (to clear it) as `Some(None)`, and
/// leaves an absent one `None` (with `#[serde(default)]`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A publisher's settings. The key itself is never echoed.
// Fields in alphabetical order, as the `json!` they replaced had them (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Publisher)]
struct PublisherView {
    /// The household cap: sessions one customer may hold across all offers
    /// (an extension); absent: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_session_limit: Option<u32>,
    /// The limit of offers that are not configured.
    default_session_limit: u32,
    /// false: every create answers "session tracking disabled".
    enabled: bool,
    /// The JWKS verifying its tokens, if it has one (a URI, not a key); absent
    /// otherwise, so views of publishers without one are as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_uri: Option<String>,
    /// Its offers: only in `GET /admin/v1/publishers/{publisher_id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    offers: Option<Vec<OfferView>>,
    /// What a full pool does when its offer does not say (an extension); absent: `reject`.
    #[serde(skip_serializing_if = "is_reject")]
    #[schema(value_type = Option<LimitPolicySchema>)]
    on_limit: LimitPolicy,
    publisher_id: String,
    /// Whether LimitExceeded offers takeover and `/takeover` works (an offer may override).
    takeover_enabled: bool,
    #[schema(value_type = UnknownOffersSchema)]
    unknown_offers: UnknownOffers,
    /// Whether the publisher has its own verification key.
    verification_key_set: bool,
}

impl From<&Publisher> for PublisherView {
    fn from(p: &Publisher) -> Self {
        Self {
            customer_session_limit: p.customer_session_limit,
            default_session_limit: p.default_session_limit,
            enabled: p.enabled,
            jwks_uri: p.jwks_uri.clone(),
            offers: None,
            on_limit: p.on_limit,
            publisher_id: p.id.clone(),
            takeover_enabled: p.takeover_enabled,
            unknown_offers: p.unknown_offers,
            verification_key_set: p.verification_key.is_some(),
        }
    }
}

impl From<&Catalog> for PublisherView {
    fn from(c: &Catalog) -> Self {
        Self {
            offers: Some(c.offers.iter().map(OfferView::from).collect()),
            ..Self::from(&c.publisher)
        }
    }
}

/// A page of publishers, by id.
// Fields in alphabetical order (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PublisherList {
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
    /// Without their offers.
    publishers: Vec<PublisherView>,
}

/// An offer's settings.
// Fields in alphabetical order, as the `json!` they replaced had them (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Offer)]
struct OfferView {
    offer_id: String,
    /// What its pool does when full (an extension); absent: the publisher's `onLimit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<LimitPolicySchema>)]
    on_limit: Option<LimitPolicy>,
    /// Sessions per customer for this offer.
    session_limit: u32,
    /// Tags that resolve to this offer.
    tags: Vec<String>,
    /// Overrides the publisher's takeover flag; null: inherits it.
    takeover_enabled: Option<bool>,
}

impl From<&Offer> for OfferView {
    fn from(o: &Offer) -> Self {
        Self {
            offer_id: o.id.clone(),
            on_limit: o.on_limit,
            session_limit: o.session_limit,
            tags: o.tags.clone(),
            takeover_enabled: o.takeover_enabled,
        }
    }
}

pub(super) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::InvalidRequest(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// An offer id an operator may configure: the id of the pool that unknown offers
/// share is reserved, so no configured offer can ever join that pool.
fn check_offer_id(id: &str) -> Result<(), ApiError> {
    check_id("offerId", id)?;
    if id == SHARED_UNKNOWN_OFFER {
        return Err(ApiError::InvalidRequest(format!(
            "offerId '{SHARED_UNKNOWN_OFFER}' is reserved for the pool that unknown offers share"
        )));
    }
    Ok(())
}

/// The configured publishers by id, a page at a time (a drisc extension; keyset
/// paging: `cursor` is where the last page ended).
#[utoipa::path(
    get,
    path = "/publishers",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(Paging),
    responses(
        (status = 200, description = "A page of publishers, without their offers", body = PublisherList),
        (status = 400, description = "InvalidRequest: a limit outside 1 to 1000, a cursor this server did not give", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn list_publishers(
    _: AdminAuth,
    State(state): State<AppState>,
    Params(paging): Params<Paging>,
) -> Result<Json<PublisherList>, ApiError> {
    let limit = paging.limit()?;
    let after = paging.publisher_cursor()?;
    // One more than shown tells whether another page follows.
    let mut publishers = state.control.publishers_after(after.as_deref(), limit + 1).await?;
    let next_cursor = if publishers.len() > limit as usize {
        publishers.truncate(limit as usize);
        publishers.last().map(|p| paging::publisher_cursor(&p.id))
    } else {
        None
    };
    Ok(Json(PublisherList {
        next_cursor,
        publishers: publishers.iter().map(PublisherView::from).collect(),
    }))
}

/// One publisher with its offers (a drisc extension).
#[utoipa::path(
    get,
    path = "/publishers/{publisher_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(("publisher_id" = String, Path, description = "The publisher's id")),
    responses(
        (status = 200, description = "The publisher, with `offers`", body = PublisherView),
        (status = 404, description = "NotFound: the publisher is not configured", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn get_publisher(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(publisher_id): Path<String>,
) -> Result<Json<PublisherView>, ApiError> {
    let catalog = state
        .control
        .known_catalog(&publisher_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("publisher '{publisher_id}' is not configured")))?;
    Ok(Json(PublisherView::from(&*catalog)))
}

/// Every field optional: what is given changes, the rest stays (or takes the
/// defaults, for a new publisher).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublisherChange {
    enabled: Option<bool>,
    takeover_enabled: Option<bool>,
    default_session_limit: Option<u32>,
    /// `shared`, `each` or `reject` (`default` is still read as `each`).
    #[schema(value_type = Option<UnknownOffersSchema>)]
    unknown_offers: Option<UnknownOffers>,
    /// An HMAC secret or a PEM public key (at most 8 KiB); "" removes the publisher's own key.
    #[schema(max_length = 8192)]
    verification_key: Option<String>,
    /// A JWKS URI (`https://`, `file://`, loopback `http://`); "" removes it.
    jwks_uri: Option<String>,
    /// `reject`, `evict_oldest` or `monitor`: what a full pool does when its
    /// offer does not say (an extension).
    #[schema(value_type = Option<LimitPolicySchema>)]
    on_limit: Option<String>,
    /// The household cap (an extension): at most this many sessions of one
    /// customer across all offers; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, nullable = true)]
    customer_session_limit: Option<Option<u32>>,
}

/// Create or change a publisher (a drisc extension): what is given changes, the
/// rest stays (or takes the defaults, for a new publisher).
#[utoipa::path(
    put,
    path = "/publishers/{publisher_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(("publisher_id" = String, Path, description = "The publisher's id: 1 to 256 bytes")),
    request_body(content = PublisherChange, description = "Read as JSON whatever the Content-Type; unknown fields are refused"),
    responses(
        (status = 200, description = "The publisher as stored, without its offers", body = PublisherView),
        (status = 400, description = "InvalidRequest: not a JSON object, an unknown field, an id too long, a key that cannot be used, a bad jwksUri, both a key and a jwksUri", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn put_publisher(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(publisher_id): Path<String>,
    AnyJson(change): AnyJson<PublisherChange>,
) -> Result<Json<PublisherView>, ApiError> {
    check_id("publisherId", &publisher_id)?;
    let mut publisher = match state.control.known_catalog(&publisher_id).await? {
        Some(c) => c.publisher.clone(),
        None => state.control.default_publisher(&publisher_id),
    };
    if let Some(key) = change.verification_key {
        if key.trim().is_empty() {
            publisher.verification_key = None;
        } else if key.len() > MAX_KEY_BYTES {
            return Err(ApiError::InvalidRequest(format!(
                "verificationKey is longer than {MAX_KEY_BYTES} bytes"
            )));
        } else {
            VerificationKey::parse(&key)
                .map_err(|e| ApiError::InvalidRequest(format!("verificationKey cannot be used: {e}")))?;
            publisher.verification_key = Some(key);
        }
    }
    if let Some(uri) = change.jwks_uri {
        if uri.trim().is_empty() {
            publisher.jwks_uri = None;
        } else {
            JwksUri::parse(&uri).map_err(|e| ApiError::InvalidRequest(format!("jwksUri {e}")))?;
            publisher.jwks_uri = Some(uri.trim().to_owned());
        }
    }
    if publisher.verification_key.is_some() && publisher.jwks_uri.is_some() {
        return Err(ApiError::InvalidRequest(
            "verificationKey and jwksUri are alternatives: set the other to \"\" to switch".into(),
        ));
    }
    publisher.enabled = change.enabled.unwrap_or(publisher.enabled);
    publisher.takeover_enabled = change.takeover_enabled.unwrap_or(publisher.takeover_enabled);
    publisher.default_session_limit = change.default_session_limit.unwrap_or(publisher.default_session_limit);
    publisher.unknown_offers = change.unknown_offers.unwrap_or(publisher.unknown_offers);
    publisher.on_limit = limit_policy(change.on_limit)?.unwrap_or(publisher.on_limit);
    if let Some(cap) = change.customer_session_limit {
        publisher.customer_session_limit = cap;
    }
    state.control.put_publisher(&publisher).await?;
    // The key itself is a secret (an HMAC key may be one): only whether there is one.
    tracing::info!(
        event = "settings_changed",
        change = "publisher_put",
        publisher = %publisher.id,
        enabled = publisher.enabled,
        takeover_enabled = publisher.takeover_enabled,
        default_session_limit = publisher.default_session_limit,
        own_key = publisher.verification_key.is_some(),
        jwks = publisher.jwks_uri.is_some(),
        on_limit = publisher.on_limit.as_str(),
        customer_session_limit = ?publisher.customer_session_limit,
        "publisher settings changed"
    );
    Ok(Json(PublisherView::from(&publisher)))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OfferChange {
    /// Sessions per customer for this offer.
    session_limit: u32,
    /// Tags that resolve to this offer: at most 64, each 1 to 256 bytes.
    #[serde(default)]
    #[schema(max_items = 64)]
    tags: Vec<String>,
    /// Overrides the publisher's takeover flag; null or absent: inherit it.
    takeover_enabled: Option<bool>,
    /// `reject`, `evict_oldest` or `monitor` (an extension); null or absent:
    /// the publisher's `onLimit`.
    #[schema(value_type = Option<LimitPolicySchema>)]
    on_limit: Option<String>,
}

/// Create or replace an offer (a drisc extension), creating its publisher with
/// the defaults if needed.
#[utoipa::path(
    put,
    path = "/publishers/{publisher_id}/offers/{offer_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(
        ("publisher_id" = String, Path, description = "The publisher's id: 1 to 256 bytes"),
        ("offer_id" = String, Path, description = "The offer's id: 1 to 256 bytes; `*unknown` is reserved"),
    ),
    request_body(content = OfferChange, description = "Read as JSON whatever the Content-Type; unknown fields are refused"),
    responses(
        (status = 200, description = "The offer as stored", body = OfferView),
        (status = 400, description = "InvalidRequest: not a JSON object, an unknown field, an id too long or reserved, bad tags", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn put_offer(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, offer_id)): Path<(String, String)>,
    AnyJson(change): AnyJson<OfferChange>,
) -> Result<Json<OfferView>, ApiError> {
    check_id("publisherId", &publisher_id)?;
    check_offer_id(&offer_id)?;
    if change.tags.len() > MAX_TAGS || change.tags.iter().any(|t| t.is_empty() || t.len() > MAX_ID_BYTES) {
        return Err(ApiError::InvalidRequest(format!(
            "tags must be at most {MAX_TAGS} non-empty strings of at most {MAX_ID_BYTES} bytes"
        )));
    }
    let on_limit = limit_policy(change.on_limit)?;
    if state.control.known_catalog(&publisher_id).await?.is_none() {
        let publisher = state.control.default_publisher(&publisher_id);
        state.control.put_publisher(&publisher).await?;
    }
    let offer = Offer {
        id: offer_id,
        session_limit: change.session_limit,
        tags: change.tags,
        takeover_enabled: change.takeover_enabled,
        on_limit,
    };
    state.control.put_offer(&publisher_id, &offer).await?;
    tracing::info!(
        event = "settings_changed",
        change = "offer_put",
        publisher = %publisher_id,
        offer = %offer.id,
        session_limit = offer.session_limit,
        takeover_enabled = ?offer.takeover_enabled,
        on_limit = ?offer.on_limit.map(LimitPolicy::as_str),
        "offer settings changed"
    );
    Ok(Json(OfferView::from(&offer)))
}

/// Remove an offer (a drisc extension). Sessions already held in its pool stay.
#[utoipa::path(
    delete,
    path = "/publishers/{publisher_id}/offers/{offer_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(
        ("publisher_id" = String, Path, description = "The publisher's id"),
        ("offer_id" = String, Path, description = "The offer's id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "NotFound: the offer is not configured", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn delete_offer(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, offer_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state.control.delete_offer(&publisher_id, &offer_id).await? {
        tracing::info!(
            event = "settings_changed",
            change = "offer_deleted",
            publisher = %publisher_id,
            offer = %offer_id,
            "offer deleted"
        );
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "offer '{offer_id}' of publisher '{publisher_id}' is not configured"
        )))
    }
}

/// A held session.
// Fields in alphabetical order, as the `json!` they replaced had them (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Session)]
struct SessionView {
    /// When it was granted, in milliseconds since the epoch.
    #[schema(value_type = u64)]
    created_at: Millis,
    customer_id: String,
    /// When it dies unless its player is heard from, in milliseconds since the epoch.
    #[schema(value_type = u64)]
    expires_at: Millis,
    /// The `sessionName` its player gave.
    name: String,
    /// The node whose socket holds the session, while one does; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    node: Option<u64>,
    /// The pool's offer (`*unknown` for the pool that unknown offers share).
    offer_id: String,
    publisher_id: String,
    #[schema(value_type = String, format = Uuid)]
    session_id: SessionId,
    #[schema(value_type = SessionStateSchema)]
    state: &'static str,
}

// Describes `domain::SessionState` for the document only.
/// A session's state (PROTOCOL 2.2).
#[derive(ToSchema)]
#[schema(as = SessionState)]
#[allow(dead_code)]
enum SessionStateSchema {
    /// Granted; no socket has said REQUESTED yet.
    #[schema(rename = "pending")]
    Pending,
    /// A socket said REQUESTED and got OK.
    #[schema(rename = "live")]
    Live,
    /// Its socket closed without FINISHED; it may reconnect within the grace period.
    #[schema(rename = "detached")]
    Detached,
}

impl SessionView {
    fn new(pool: &PoolKey, s: &Session) -> Self {
        Self {
            created_at: s.created_at,
            customer_id: pool.customer_id().to_owned(),
            expires_at: s.expires_at,
            name: s.name.clone(),
            node: s.holder.map(|h| h.node()),
            offer_id: pool.offer_id().to_owned(),
            publisher_id: pool.publisher_id().to_owned(),
            session_id: s.id,
            state: s.state.as_str(),
        }
    }
}

async fn find_session(state: &AppState, session_id: &str) -> Result<(PoolKey, SessionId), ApiError> {
    let not_found = || ApiError::NotFound(format!("session {session_id} does not exist"));
    let id = SessionId::parse(session_id).ok_or_else(not_found)?;
    let pool = state.control.locate(id).await?.ok_or_else(not_found)?;
    Ok((pool, id))
}

/// A held session, by id (a drisc extension).
#[utoipa::path(
    get,
    path = "/sessions/{session_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(("session_id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 404, description = "NotFound: no such session held", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn get_session(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(session_id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let (pool, id) = find_session(&state, &session_id).await?;
    let sessions = state.control.sessions(&pool).await?;
    let session = sessions
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("session {session_id} does not exist")))?;
    Ok(Json(SessionView::new(&pool, session)))
}

/// End a session (kick; a drisc extension): its slot is free at once and its
/// player is told EXPIRED.
#[utoipa::path(
    delete,
    path = "/sessions/{session_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(("session_id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "NotFound: no such session held", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn kick_session(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (pool, id) = find_session(&state, &session_id).await?;
    state.control.kick(&pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whose sessions: `publisherId` and `customerId` are required, `offerId` narrows.
// Options, so that a missing one gets a JSON 400 naming it, not axum's rejection.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct SessionFilter {
    /// The customer's publisher: 1 to 256 bytes.
    #[param(required = true)]
    publisher_id: Option<String>,
    /// The customer: 1 to 256 bytes.
    #[param(required = true)]
    customer_id: Option<String>,
    /// Only the sessions of this offer (`*unknown`: the pool that unknown offers share).
    offer_id: Option<String>,
}

impl SessionFilter {
    fn required(value: Option<String>, what: &str) -> Result<String, ApiError> {
        let value = value.ok_or_else(|| ApiError::InvalidRequest(format!("{what} is required")))?;
        check_id(what, &value)?;
        Ok(value)
    }
}

/// A page of a customer's sessions, in (offer id, session id) order.
// Fields in alphabetical order (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionList {
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
    sessions: Vec<SessionView>,
}

/// A customer's sessions across its offers (or on one), a page at a time, in
/// (offer id, session id) order (a drisc extension).
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(SessionFilter, Paging),
    responses(
        (status = 200, description = "A page of the customer's sessions (empty if it holds none)", body = SessionList),
        (status = 400, description = "InvalidRequest: publisherId or customerId missing, an id of 0 or over 256 bytes, a limit outside 1 to 1000, a cursor this server did not give", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn list_sessions(
    _: AdminAuth,
    State(state): State<AppState>,
    Params(filter): Params<SessionFilter>,
    Params(paging): Params<Paging>,
) -> Result<Json<SessionList>, ApiError> {
    let customer = Customer {
        publisher_id: SessionFilter::required(filter.publisher_id, "publisherId")?,
        customer_id: SessionFilter::required(filter.customer_id, "customerId")?,
    };
    if let Some(offer_id) = &filter.offer_id {
        check_id("offerId", offer_id)?;
    }
    let query = SessionQuery {
        customer,
        offer_id: filter.offer_id,
        after: paging.session_cursor()?,
        limit: paging.limit()? as usize,
    };
    let page = state.control.customer_sessions(&query).await?;
    Ok(Json(SessionList {
        next_cursor: page.next.as_ref().map(paging::session_cursor),
        sessions: page
            .sessions
            .iter()
            .map(|(pool, s)| SessionView::new(pool, s))
            .collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct OfferFilter {
    /// Only the sessions of this offer (`*unknown`: the pool that unknown offers share).
    offer_id: Option<String>,
}

/// How many sessions an operator ended.
#[derive(Serialize, ToSchema)]
struct Ended {
    /// How many sessions ended (0 if the customer held none).
    ended: usize,
}

/// End all of a customer's sessions, or those of one offer with `?offerId=` (a
/// drisc extension): their slots are free at once and their players are told
/// EXPIRED, on whichever node.
#[utoipa::path(
    delete,
    path = "/publishers/{publisher_id}/customers/{customer_id}/sessions",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(
        ("publisher_id" = String, Path, description = "The publisher's id: 1 to 256 bytes"),
        ("customer_id" = String, Path, description = "The customer's id: 1 to 256 bytes"),
        OfferFilter,
    ),
    responses(
        (status = 200, description = "How many sessions ended", body = Ended),
        (status = 400, description = "InvalidRequest: an id over 256 bytes, a bad query string", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn kick_customer(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, customer_id)): Path<(String, String)>,
    Params(filter): Params<OfferFilter>,
) -> Result<Json<Ended>, ApiError> {
    check_id("publisherId", &publisher_id)?;
    check_id("customerId", &customer_id)?;
    if let Some(offer_id) = &filter.offer_id {
        check_id("offerId", offer_id)?;
    }
    let customer = Customer {
        publisher_id,
        customer_id,
    };
    let ended = state
        .control
        .kick_customer(&customer, filter.offer_id.as_deref())
        .await?;
    tracing::info!(
        publisher = %customer.publisher_id,
        customer = %customer.customer_id,
        offer = filter.offer_id.as_deref().unwrap_or("*"),
        ended,
        "an operator ended the customer's sessions"
    );
    Ok(Json(Ended { ended }))
}
