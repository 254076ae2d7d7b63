//! Per-customer overrides of an offer's limit (a drisc extension, under
//! `/admin/v1`): a customer who bought an extra screen, or a boost for an event.
//! Admission reads them through the settings cache; once one expires, the
//! offer's own limit applies again to new sessions (none held is ended).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::AdminKeyRefusals;
use super::extract::{AdminAuth, AnyJson};
use crate::domain::Millis;
use crate::domain::policy::{CustomerOverride, MAX_OVERRIDE_LIMIT, OverrideKey};
use crate::domain::settings::{MAX_ID_BYTES, SHARED_UNKNOWN_OFFER};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Relative to `/admin/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_override, put_override, delete_override))
}

/// A customer's own limit on an offer.
// Fields in alphabetical order (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CustomerOverride)]
struct OverrideView {
    /// Whether it applies now (false once `expiresAt` has passed).
    active: bool,
    customer_id: String,
    /// When it stops applying (RFC 3339, UTC); null: until removed.
    #[schema(required = true, format = DateTime)]
    expires_at: Option<String>,
    offer_id: String,
    publisher_id: String,
    /// Sessions this customer may hold in the offer's pool while it applies.
    session_limit: u32,
}

/// The body of a PUT: both fields are required, `expiresAt` may be null.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OverrideChange {
    /// 0 to 10 000.
    #[schema(maximum = 10000)]
    session_limit: u32,
    /// RFC 3339 (`2026-12-31T23:00:00Z`, any offset); null: until removed.
    #[schema(required = true, format = DateTime)]
    expires_at: Option<String>,
}

/// The override's key from the path, checked the way offers' ids are.
fn key_of(publisher_id: String, customer_id: String, offer_id: String) -> Result<OverrideKey, ApiError> {
    for (what, id) in [
        ("publisherId", &publisher_id),
        ("customerId", &customer_id),
        ("offerId", &offer_id),
    ] {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(ApiError::InvalidRequest(format!(
                "{what} must be 1 to {MAX_ID_BYTES} bytes"
            )));
        }
    }
    Ok(OverrideKey {
        publisher_id,
        customer_id,
        offer_id,
    })
}

/// 404 unless the publisher is configured and configures the offer: an override
/// of an unknown offer would never apply.
async fn check_offer(state: &AppState, key: &OverrideKey) -> Result<(), ApiError> {
    let catalog = state
        .control
        .known_catalog(&key.publisher_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("publisher '{}' is not configured", key.publisher_id)))?;
    let configured = key.offer_id != SHARED_UNKNOWN_OFFER && catalog.offers.iter().any(|o| o.id == key.offer_id);
    if !configured {
        return Err(ApiError::NotFound(format!(
            "offer '{}' of publisher '{}' is not configured",
            key.offer_id, key.publisher_id
        )));
    }
    Ok(())
}

fn millis_of(text: &str) -> Result<Millis, ApiError> {
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "expiresAt is not an RFC 3339 time ({e}): e.g. 2026-12-31T23:00:00Z"
        ))
    })?;
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    Millis::try_from(ms).map_err(|_| ApiError::InvalidRequest("expiresAt is before 1970".into()))
}

fn rfc3339_of(ms: Millis) -> Option<String> {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

fn view(key: OverrideKey, o: &CustomerOverride, now: Millis) -> OverrideView {
    OverrideView {
        active: o.applies(now),
        customer_id: key.customer_id,
        expires_at: o.expires_at.and_then(rfc3339_of),
        offer_id: key.offer_id,
        publisher_id: key.publisher_id,
        session_limit: o.session_limit,
    }
}

/// A customer's override of an offer's limit (a drisc extension).
#[utoipa::path(
    get,
    path = "/publishers/{publisher_id}/customers/{customer_id}/offers/{offer_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(
        ("publisher_id" = String, Path, description = "The publisher's id"),
        ("customer_id" = String, Path, description = "The customer's id (the token's `sub`)"),
        ("offer_id" = String, Path, description = "A configured offer's id"),
    ),
    responses(
        (status = 200, description = "The override, expired or not (`active` says)", body = OverrideView),
        (status = 404, description = "NotFound: no such publisher, offer, or override", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn get_override(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, customer_id, offer_id)): Path<(String, String, String)>,
) -> Result<Json<OverrideView>, ApiError> {
    let key = key_of(publisher_id, customer_id, offer_id)?;
    check_offer(&state, &key).await?;
    let found = state.control.customer_override(&key).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "customer '{}' has no override of offer '{}'",
            key.customer_id, key.offer_id
        ))
    })?;
    let now = state.control.clock().now();
    Ok(Json(view(key, &found, now)))
}

/// Set a customer's own limit on an offer (a drisc extension): it applies to
/// their next session, on every node within `cluster.settings_cache_ttl`.
#[utoipa::path(
    put,
    path = "/publishers/{publisher_id}/customers/{customer_id}/offers/{offer_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(
        ("publisher_id" = String, Path, description = "The publisher's id"),
        ("customer_id" = String, Path, description = "The customer's id (the token's `sub`): 1 to 256 bytes"),
        ("offer_id" = String, Path, description = "A configured offer's id"),
    ),
    request_body(content = OverrideChange, description = "Read as JSON whatever the Content-Type; unknown fields are refused"),
    responses(
        (status = 200, description = "The override as stored", body = OverrideView),
        (status = 400, description = "InvalidRequest: not a JSON object, an unknown field, sessionLimit above 10 000, expiresAt not RFC 3339", body = ErrorBody),
        (status = 404, description = "NotFound: no such publisher or offer", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn put_override(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, customer_id, offer_id)): Path<(String, String, String)>,
    AnyJson(change): AnyJson<OverrideChange>,
) -> Result<Json<OverrideView>, ApiError> {
    let key = key_of(publisher_id, customer_id, offer_id)?;
    if change.session_limit > MAX_OVERRIDE_LIMIT {
        return Err(ApiError::InvalidRequest(format!(
            "sessionLimit must be 0 to {MAX_OVERRIDE_LIMIT}"
        )));
    }
    let expires_at = change.expires_at.as_deref().map(millis_of).transpose()?;
    check_offer(&state, &key).await?;
    let value = CustomerOverride {
        session_limit: change.session_limit,
        expires_at,
    };
    state.control.put_override(&key, &value).await?;
    tracing::info!(
        event = "settings_changed",
        change = "override_put",
        publisher = %key.publisher_id,
        customer = %key.customer_id,
        offer = %key.offer_id,
        session_limit = value.session_limit,
        expires_at = ?value.expires_at,
        "customer override set"
    );
    let now = state.control.clock().now();
    Ok(Json(view(key, &value, now)))
}

/// Remove a customer's override (a drisc extension): the offer's limit applies
/// to their next session; sessions already held stay.
#[utoipa::path(
    delete,
    path = "/publishers/{publisher_id}/customers/{customer_id}/offers/{offer_id}",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(
        ("publisher_id" = String, Path, description = "The publisher's id"),
        ("customer_id" = String, Path, description = "The customer's id"),
        ("offer_id" = String, Path, description = "A configured offer's id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "NotFound: no such publisher, offer, or override", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn delete_override(
    _: AdminAuth,
    State(state): State<AppState>,
    Path((publisher_id, customer_id, offer_id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let key = key_of(publisher_id, customer_id, offer_id)?;
    check_offer(&state, &key).await?;
    if !state.control.delete_override(&key).await? {
        return Err(ApiError::NotFound(format!(
            "customer '{}' has no override of offer '{}'",
            key.customer_id, key.offer_id
        )));
    }
    tracing::info!(
        event = "settings_changed",
        change = "override_deleted",
        publisher = %key.publisher_id,
        customer = %key.customer_id,
        offer = %key.offer_id,
        "customer override removed"
    );
    Ok(StatusCode::NO_CONTENT)
}
