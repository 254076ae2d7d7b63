//! The operator API (`/admin/v1`): publisher and offer settings, and sessions by id.
//! Authorised by the admin key, never by a customer token.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{AdminAuth, AnyJson};
use crate::auth::{JwksUri, VerificationKey};
use crate::domain::settings::{Catalog, MAX_ID_BYTES, Offer, Publisher, SHARED_UNKNOWN_OFFER, UnknownOffers};
use crate::domain::{PoolKey, Session, SessionId};
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

async fn list_publishers(_: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let publishers = state.control.list_publishers().await?;
    Ok(Json(json!({
        "publishers": publishers.iter().map(PublisherView::from).collect::<Vec<_>>(),
    })))
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
        "publisher settings changed"
    );
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
    tracing::info!(
        event = "settings_changed",
        change = "offer_put",
        publisher = %publisher_id,
        offer = %offer.id,
        session_limit = offer.session_limit,
        takeover_enabled = ?offer.takeover_enabled,
        "offer settings changed"
    );
    Ok(Json(offer_view(&offer)))
}

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

fn session_view(pool: &PoolKey, s: &Session) -> Value {
    json!({
        "sessionId": s.id,
        "name": s.name,
        "state": s.state.as_str(),
        "publisherId": pool.publisher_id,
        "customerId": pool.customer_id,
        "offerId": pool.offer_id,
        "createdAt": s.created_at,
        "expiresAt": s.expires_at,
    })
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
) -> Result<Json<Value>, ApiError> {
    let (pool, id) = find_session(&state, &session_id).await?;
    let sessions = state.control.sessions(&pool).await?;
    let session = sessions
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("session {session_id} does not exist")))?;
    Ok(Json(session_view(&pool, session)))
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
