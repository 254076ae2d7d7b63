//! `GET /metrics` (Prometheus text format), and the layer that times every request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::AdminAuth;
use crate::error::{ApiError, ErrorBody};
use crate::meter::{Meter, Readings};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// This server's metrics in the Prometheus text format (a drisc extension).
///
/// Authorised by the admin key unless `metrics.public`, for a port only a private
/// network reaches. Labels come from fixed lists, route templates and status
/// codes: never a customer id, session id or token.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(("adminKey" = []), ("adminKeyHeader" = [])),
    responses(
        (status = 200, description = "The metrics, in the Prometheus text exposition format 0.0.4", body = String,
            content_type = "text/plain"),
        (status = 401, description = "Unauthorized: no admin key, or not the right one (unless metrics.public)", body = ErrorBody),
        (status = 403, description = "Forbidden: the admin API is disabled (auth.admin_key is empty) and metrics.public is false", body = ErrorBody),
        (status = 429, description = "RateLimited: the address failed to authenticate too often", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait"))),
    ),
)]
// Authorised like the admin API unless `metrics.public`: the numbers say how
// busy the service is, which is no one else's business. The key is checked only
// when needed, so a public scrape never counts as a failed or rate-limited
// authentication.
async fn metrics(State(state): State<AppState>, mut parts: Parts) -> Result<Response, ApiError> {
    if !state.settings.metrics.public {
        AdminAuth::from_request_parts(&mut parts, &state).await?;
    }
    let hub = &state.hub;
    let text = state.meter.render(Readings {
        sessions: state.control.sessions_by_state(),
        websocket_connections: hub.len(),
        bad_messages: hub.bad_messages(),
        flooded_sockets: hub.flooded_sockets(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// Records each request in `drisc_http_request_duration_seconds` under its route
/// template, so `/sessions/{session_id}` is one series whatever the ids asked for.
///
/// A layer of each route (axum sets the template, `MatchedPath`, only once it has
/// matched one), written as a plain service: axum's `from_fn` cloned the state,
/// boxed the route again and boxed its own future on every request.
#[derive(Clone)]
pub struct TimeRequests(pub Arc<Meter>);

impl<S> Layer<S> for TimeRequests {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            meter: Arc::clone(&self.0),
            route: None,
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Timed<S> {
    meter: Arc<Meter>,
    /// The template of the one route `inner` serves, for a route answered
    /// without axum's router (which sets `MatchedPath`); `None` for a layer of
    /// the router's routes.
    route: Option<&'static str>,
    inner: S,
}

impl<S> Timed<S> {
    /// Times `inner`, which serves the one route `route` outside the router.
    pub fn route(meter: Arc<Meter>, route: &'static str, inner: S) -> Self {
        Self {
            meter,
            route: Some(route),
            inner,
        }
    }
}

impl<S> Service<Request> for Timed<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TimedAnswer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let route = match self.route {
            Some(route) => Route::Fixed(route),
            None => request
                .extensions()
                .get::<MatchedPath>()
                .cloned()
                .map_or(Route::Unmatched, Route::Matched),
        };
        TimedAnswer {
            answer: self.inner.call(request),
            started,
            method,
            route,
            meter: Arc::clone(&self.meter),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct TimedAnswer<F> {
        #[pin]
        answer: F,
        started: Instant,
        method: Method,
        route: Route,
        meter: Arc<Meter>,
    }
}

/// The route an answer is counted under.
enum Route {
    Matched(MatchedPath),
    Fixed(&'static str),
    Unmatched,
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            Route::Matched(route) => route.as_str(),
            Route::Fixed(route) => route,
            Route::Unmatched => "unmatched",
        }
    }
}

impl<F, E> Future for TimedAnswer<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.answer.poll(cx));
        if let Ok(response) = &answer {
            this.meter.http_request(
                this.method,
                this.route.as_str(),
                response.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(answer)
    }
}
