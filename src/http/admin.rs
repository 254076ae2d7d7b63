//! The operator API (`/admin/v1`): publisher and offer settings, sessions by id,
//! and a customer's sessions (listed page by page, or all ended at once).
//! Authorised by the admin key, never by a customer token.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, put};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{AdminAuth, AnyJson, Params};
use super::paging::{self, Paging};
use crate::auth::{JwksUri, VerificationKey};
use crate::domain::listing::SessionQuery;
use crate::domain::settings::{Catalog, MAX_ID_BYTES, Offer, Publisher, SHARED_UNKNOWN_OFFER, UnknownOffers};
use crate::domain::{Customer, Millis, PoolKey, Session, SessionId, SessionState};
use crate::error::ApiError;
use crate::state::AppState;

const MAX_TAGS: usize = 64;
/// Far above any PEM public key or HMAC secret in use (an RSA-8192 public key is
/// about 1.5 KB), and small enough that a mistake cannot fill the database.
const MAX_KEY_BYTES: usize = 8192;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/publishers", get(list_publishers))
        .route("/publishers/{publisher_id}", get(get_publisher).put(put_publisher))
        .route(
            "/publishers/{publisher_id}/offers/{offer_id}",
            put(put_offer).delete(delete_offer),
        )
        .route(
            "/publishers/{publisher_id}/customers/{customer_id}/sessions",
            delete(kick_customer),
        )
        .route("/sessions", get(list_sessions))
        .route("/sessions/{session_id}", get(get_session).delete(kick_session))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublisherView {
    publisher_id: String,
    enabled: bool,
    takeover_enabled: bool,
    default_session_limit: u32,
    unknown_offers: UnknownOffers,
    /// Whether the publisher has its own key; the key itself is never echoed.
    verification_key_set: bool,
    /// The JWKS verifying its tokens, if it has one (a URI, not a key); absent
    /// otherwise, so views of publishers without one are as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_uri: Option<String>,
}

impl From<&Publisher> for PublisherView {
    fn from(p: &Publisher) -> Self {
        Self {
            publisher_id: p.id.clone(),
            enabled: p.enabled,
            takeover_enabled: p.takeover_enabled,
            default_session_limit: p.default_session_limit,
            unknown_offers: p.unknown_offers,
            verification_key_set: p.verification_key.is_some(),
            jwks_uri: p.jwks_uri.clone(),
        }
    }
}

fn offer_view(o: &Offer) -> Value {
    json!({
        "offerId": o.id,
        "sessionLimit": o.session_limit,
        "tags": o.tags,
        "takeoverEnabled": o.takeover_enabled,
    })
}

fn catalog_view(c: &Catalog) -> Value {
    let mut view = json!(PublisherView::from(&c.publisher));
    view["offers"] = c.offers.iter().map(offer_view).collect();
    view
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublisherList {
    publishers: Vec<PublisherView>,
    /// Where the next page starts; null on the last page.
    next_cursor: Option<String>,
}

/// Publishers by id, a page at a time (keyset: `cursor` is the last id shown).
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
        publishers: publishers.iter().map(PublisherView::from).collect(),
        next_cursor,
    }))
}

async fn get_publisher(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(publisher_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = state
        .control
        .known_catalog(&publisher_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("publisher '{publisher_id}' is not configured")))?;
    Ok(Json(catalog_view(&catalog)))
}

/// Every field optional: what is given changes, the rest stays (or takes the
/// defaults, for a new publisher).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublisherChange {
    enabled: Option<bool>,
    takeover_enabled: Option<bool>,
    default_session_limit: Option<u32>,
    unknown_offers: Option<UnknownOffers>,
    /// An HMAC secret or a PEM public key; "" removes the publisher's own key.
    verification_key: Option<String>,
    /// A JWKS URI (`https://`, `file://`, loopback `http://`); "" removes it.
    jwks_uri: Option<String>,
}

async fn put_publisher(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(publisher_id): Path<String>,
    AnyJson(change): AnyJson<PublisherChange>,
) -> Result<Json<Value>, ApiError> {
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
    state.control.put_publisher(&publisher).await?;
    Ok(Json(json!(PublisherView::from(&publisher))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OfferChange {
    session_limit: u32,
    #[serde(default)]
    tags: Vec<String>,
    /// Overrides the publisher's takeover flag; null or absent: inherit it.
    takeover_enabled: Option<bool>,
}

async fn put_offer(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, offer_id)): Path<(String, String)>,
    AnyJson(change): AnyJson<OfferChange>,
) -> Result<Json<Value>, ApiError> {
    check_id("publisherId", &publisher_id)?;
    check_offer_id(&offer_id)?;
    if change.tags.len() > MAX_TAGS || change.tags.iter().any(|t| t.is_empty() || t.len() > MAX_ID_BYTES) {
        return Err(ApiError::InvalidRequest(format!(
            "tags must be at most {MAX_TAGS} non-empty strings of at most {MAX_ID_BYTES} bytes"
        )));
    }
    if state.control.known_catalog(&publisher_id).await?.is_none() {
        let publisher = state.control.default_publisher(&publisher_id);
        state.control.put_publisher(&publisher).await?;
    }
    let offer = Offer {
        id: offer_id,
        session_limit: change.session_limit,
        tags: change.tags,
        takeover_enabled: change.takeover_enabled,
    };
    state.control.put_offer(&publisher_id, &offer).await?;
    Ok(Json(offer_view(&offer)))
}

async fn delete_offer(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, offer_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state.control.delete_offer(&publisher_id, &offer_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "offer '{offer_id}' of publisher '{publisher_id}' is not configured"
        )))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    session_id: SessionId,
    name: String,
    state: SessionState,
    publisher_id: String,
    customer_id: String,
    offer_id: String,
    created_at: Millis,
    expires_at: Millis,
    /// The node whose socket holds the session, while one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<u64>,
}

impl SessionView {
    fn new(pool: &PoolKey, s: &Session) -> Self {
        Self {
            session_id: s.id,
            name: s.name.clone(),
            state: s.state,
            publisher_id: pool.publisher_id.clone(),
            customer_id: pool.customer_id.clone(),
            offer_id: pool.offer_id.clone(),
            created_at: s.created_at,
            expires_at: s.expires_at,
            node: s.holder.map(|h| h.node()),
        }
    }
}

async fn find_session(state: &AppState, session_id: &str) -> Result<(PoolKey, SessionId), ApiError> {
    let not_found = || ApiError::NotFound(format!("session {session_id} does not exist"));
    let id = SessionId::parse(session_id).ok_or_else(not_found)?;
    let pool = state.control.locate(id).await?.ok_or_else(not_found)?;
    Ok((pool, id))
}

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

/// Ends a session: its slot is free at once and its player is told EXPIRED.
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
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionFilter {
    publisher_id: Option<String>,
    customer_id: Option<String>,
    offer_id: Option<String>,
}

impl SessionFilter {
    fn required(value: Option<String>, what: &str) -> Result<String, ApiError> {
        let value = value.ok_or_else(|| ApiError::InvalidRequest(format!("{what} is required")))?;
        check_id(what, &value)?;
        Ok(value)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionList {
    sessions: Vec<SessionView>,
    /// Where the next page starts; null on the last page.
    next_cursor: Option<String>,
}

/// A customer's sessions across its offers (or on one), a page at a time, in
/// (offer id, session id) order.
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
        sessions: page
            .sessions
            .iter()
            .map(|(pool, s)| SessionView::new(pool, s))
            .collect(),
        next_cursor: page.next.as_ref().map(paging::session_cursor),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OfferFilter {
    offer_id: Option<String>,
}

#[derive(Serialize)]
struct Ended {
    /// How many sessions ended.
    ended: usize,
}

/// Ends all of a customer's sessions (on one offer with `?offerId=`): their slots
/// are free at once and their players are told EXPIRED, on whichever node.
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
