//! Session events for operators and publishers (drisc extensions): a publisher's
//! webhook (`/admin/v1/publishers/{publisher_id}/webhooks`) and the live stream of
//! every event (`GET /admin/v1/events`, Server-Sent Events). Authorised by the
//! admin key; the stream reads it from the usual header, never from the URL.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{AdminKeyRefusals, check_id};
use super::extract::{AdminAuth, AnyJson, Params};
use crate::domain::control::ControlError;
use crate::domain::events::{EventType, OutboxCounts, Webhook};
use crate::domain::ports::SettingsError;
use crate::error::{ApiError, ErrorBody};
use crate::events::{Events, Published, signature, target};
use crate::state::AppState;

/// Event types one webhook may list: each at most once.
const MAX_EVENT_TYPES: usize = EventType::ALL.len();

/// Relative to `/admin/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_webhook, put_webhook, delete_webhook))
        .routes(routes!(stream_events))
}

fn settings_error(e: SettingsError) -> ApiError {
    ApiError::from(ControlError::from(e))
}

/// What a webhook is asked to be.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WebhookChange {
    /// `https://` (or `http://`) URL the events are POSTed to, at most 2048 bytes. A
    /// host on a loopback or private network is refused unless the server allows it
    /// (`webhooks.allow_private_targets`).
    #[schema(max_length = 2048)]
    url: String,
    /// `whsec_` followed by the base64 of 24 to 64 random bytes (Standard Webhooks).
    /// Absent: the server makes one and shows it in this answer only.
    secret: Option<String>,
    /// The event types to send (`session.granted`, `session.refused`,
    /// `session.taken_over`, `session.ended`, `session.kicked`); absent: all of them.
    events: Option<Vec<String>>,
}

/// Events of the webhook waiting in the outbox.
// Fields in alphabetical order (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct OutboxView {
    /// Given up on after the last retry (kept until newer events need the room).
    dead_lettered: u64,
    /// Waiting for delivery or a retry.
    pending: u64,
}

/// A publisher's webhook. The secret is shown only when the server made it.
// Fields in alphabetical order (see ErrorBody).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct WebhookView {
    events: Vec<String>,
    outbox: OutboxView,
    publisher_id: String,
    /// Only in the answer to the PUT that made it (no `secret` was sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// The secret's first characters, to tell secrets apart.
    secret_hint: String,
    url: String,
}

impl WebhookView {
    fn new(hook: &Webhook, counts: OutboxCounts, secret: Option<String>) -> Self {
        Self {
            events: hook.events.iter().map(|t| t.as_str().to_owned()).collect(),
            outbox: OutboxView {
                dead_lettered: counts.dead,
                pending: counts.pending,
            },
            publisher_id: hook.publisher_id.clone(),
            secret,
            secret_hint: signature::hint(&hook.secret),
            url: hook.url.clone(),
        }
    }
}

/// A publisher's webhook (a drisc extension).
#[utoipa::path(
    get,
    path = "/publishers/{publisher_id}/webhooks",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(("publisher_id" = String, Path, description = "The publisher's id")),
    responses(
        (status = 200, description = "The webhook, without its secret", body = WebhookView),
        (status = 404, description = "NotFound: the publisher has no webhook", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn get_webhook(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(publisher_id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let hook = state
        .events
        .webhook(&publisher_id)
        .await
        .map_err(settings_error)?
        .ok_or_else(|| ApiError::NotFound(format!("publisher '{publisher_id}' has no webhook")))?;
    let counts = state
        .events
        .outbox_counts(&publisher_id)
        .await
        .map_err(settings_error)?;
    Ok(Json(WebhookView::new(&hook, counts, None)))
}

/// Sends the publisher's session events to a URL, signed the Standard Webhooks
/// way (a drisc extension). Replaces the webhook the publisher had.
#[utoipa::path(
    put,
    path = "/publishers/{publisher_id}/webhooks",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(("publisher_id" = String, Path, description = "The publisher's id")),
    request_body(content = WebhookChange, description = "Read as JSON whatever the Content-Type; unknown fields are refused"),
    responses(
        (status = 200, description = "The webhook as stored; `secret` only if the server made it", body = WebhookView),
        (status = 400, description = "InvalidRequest: a bad URL, a private target not allowed, a bad secret, an unknown event type", body = ErrorBody),
        (status = 404, description = "NotFound: the publisher is not configured", body = ErrorBody),
        (status = 408, description = "RequestTimeout: the body did not arrive within server.body_timeout", body = ErrorBody),
        (status = 413, description = "PayloadTooLarge: the body is over server.max_body_bytes", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn put_webhook(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(publisher_id): Path<String>,
    AnyJson(change): AnyJson<WebhookChange>,
) -> Result<Json<WebhookView>, ApiError> {
    check_id("publisherId", &publisher_id)?;
    if state.control.known_catalog(&publisher_id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "publisher '{publisher_id}' is not configured"
        )));
    }
    let allow_private = state.settings.webhooks.allow_private_targets;
    let url = target::check(change.url.trim(), allow_private)
        .await
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let made = change.secret.is_none();
    let secret = change.secret.unwrap_or_else(signature::new_secret);
    signature::key_of(&secret).map_err(|e| ApiError::InvalidRequest(format!("secret {e}")))?;
    let events = event_types(change.events)?;
    let hook = Webhook {
        publisher_id: publisher_id.clone(),
        url: url.to_string(),
        secret,
        events,
    };
    state.events.put_webhook(&hook).await.map_err(settings_error)?;
    tracing::info!(
        event = "settings_changed",
        change = "webhook_put",
        publisher = %publisher_id,
        host = url.host_str().unwrap_or_default(),
        "publisher webhook set"
    );
    let counts = state
        .events
        .outbox_counts(&publisher_id)
        .await
        .map_err(settings_error)?;
    let shown = made.then(|| hook.secret.clone());
    Ok(Json(WebhookView::new(&hook, counts, shown)))
}

fn event_types(given: Option<Vec<String>>) -> Result<Vec<EventType>, ApiError> {
    let Some(given) = given else {
        return Ok(EventType::ALL.to_vec());
    };
    if given.is_empty() || given.len() > MAX_EVENT_TYPES * 4 {
        return Err(ApiError::InvalidRequest(
            "events must list at least one event type (or be left out for all of them)".into(),
        ));
    }
    let mut types = Vec::new();
    for name in &given {
        let t = EventType::parse(name).ok_or_else(|| {
            let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            ApiError::InvalidRequest(format!(
                "events: unknown event type {name:?} (known: {})",
                known.join(", ")
            ))
        })?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Ok(types)
}

/// Stops the publisher's webhook and drops its events still in the outbox (a
/// drisc extension).
#[utoipa::path(
    delete,
    path = "/publishers/{publisher_id}/webhooks",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(("publisher_id" = String, Path, description = "The publisher's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "NotFound: the publisher has no webhook", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn delete_webhook(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(publisher_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state
        .events
        .delete_webhook(&publisher_id)
        .await
        .map_err(settings_error)?
    {
        return Err(ApiError::NotFound(format!("publisher '{publisher_id}' has no webhook")));
    }
    tracing::info!(event = "settings_changed", change = "webhook_delete", publisher = %publisher_id, "publisher webhook removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct StreamFilter {
    /// Only this publisher's events.
    publisher: Option<String>,
}

/// Every session event of this node as it happens (Server-Sent Events; a drisc
/// extension): `event: <type>`, `id: <message id>`, `data: <the webhook body>`,
/// a comment line when idle. A reader that falls `events.stream_buffer` events
/// behind skips to the newest and gets `event: lagged` with `{"skipped": n}`.
#[utoipa::path(
    get,
    path = "/events",
    tag = "admin",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    params(StreamFilter),
    responses(
        (status = 200, description = "An endless text/event-stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "InvalidRequest: an unknown query parameter", body = ErrorBody),
        (status = 503, description = "ServiceUnavailable: events.max_streams streams are open", body = ErrorBody),
        AdminKeyRefusals,
    ),
)]
async fn stream_events(
    _: AdminAuth,
    State(state): State<AppState>,
    Params(filter): Params<StreamFilter>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (receiver, permit) = state.events.subscribe().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "{} event streams are open already (events.max_streams)",
            state.settings.events.max_streams
        ))
    })?;
    let reader = Reader {
        receiver,
        _permit: permit,
        publisher: filter.publisher,
        events: state.events.clone(),
        shutdown: state.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok(event), reader))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(state.settings.events.stream_keep_alive)))
}

/// One open stream: its place in the broadcast, its permit, its filter.
struct Reader {
    receiver: broadcast::Receiver<Arc<Published>>,
    _permit: OwnedSemaphorePermit,
    publisher: Option<String>,
    events: Arc<Events>,
    /// The stream ends with the server, so a graceful shutdown does not wait on it.
    shutdown: CancellationToken,
}

impl Reader {
    async fn next(&mut self) -> Option<Event> {
        loop {
            let received = tokio::select! {
                received = self.receiver.recv() => received,
                () = self.shutdown.cancelled() => return None,
            };
            match received {
                Ok(published) => {
                    if self.publisher.as_ref().is_some_and(|p| *p != published.publisher_id) {
                        continue;
                    }
                    return Some(
                        Event::default()
                            .event(published.event_type.as_str())
                            .id(published.id.clone())
                            .data(published.body.clone()),
                    );
                }
                Err(RecvError::Lagged(skipped)) => {
                    self.events.lagged(skipped);
                    return Some(
                        Event::default()
                            .event("lagged")
                            .data(serde_json::json!({ "skipped": skipped }).to_string()),
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
