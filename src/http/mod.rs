//! The HTTP API: one small router per resource, and the layers they share.

mod admin;
mod cors;
mod events;
mod extract;
mod health;
mod me;
mod metrics;
mod openapi;
mod overrides;
mod paging;
mod sessions;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, Request, header};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// The server's router: [`routes`], all but the probes inside the layers they
/// share. Add no route here: routes go in [`api`], where they are documented.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.server.max_body_bytes;
    let cors = cors_layer(&state.settings.cors.allowed_origins);
    let (api, _) = api()
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        // A layer of each route: axum sets the route template (MatchedPath) only
        // once a route has matched.
        .layer(metrics::TimeRequests(state.meter.clone()))
        .split_for_parts();
    // The rest once around the whole router: axum's `Router::layer` wraps each
    // route, and every wrap costs a boxed clone of the route and a boxed future
    // per request (bench/analysis.md, round twenty).
    let api = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(cors)
        .layer(DefaultBodyLimit::max(body_limit))
        .service(api.with_state(state.clone()));
    // The probes outside them: a prober's 503 (draining, a store down) is an
    // answer, not a failure to log at ERROR every few seconds, and browsers never
    // call the probes (no CORS).
    let (probes, _) = health::probes().split_for_parts();
    probes.with_state(state).fallback_service(api)
}

/// Every route the server serves, each with its description (`GET /openapi.json`):
/// the router of [`router`] without its layers. tests/api/openapi.rs checks that
/// the document lists exactly the paths of this router.
pub fn routes() -> OpenApiRouter<AppState> {
    let mut routes = api().merge(health::probes());
    openapi::describe_every_operation(routes.get_openapi_mut());
    routes
}

/// Every route but the probes. The one place routes are added, and only through
/// `utoipa_axum::routes!`, which takes a handler's `#[utoipa::path]` attribute for
/// both the route and its description (clippy.toml forbids `.route()`, which would
/// serve a route without describing it).
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(sessions::router())
        .merge(me::router())
        .merge(crate::ws::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .merge(crate::web::router())
        .nest("/admin/v1", admin::router().merge(events::router()))
}

/// The OpenAPI document of [`routes`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The span of a request: its path, never its URI, whose query may carry a session
/// token (`/ws?token=...`). Headers (the customer token) are never recorded.
fn request_span(request: &Request<Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        version = ?request.version(),
    )
}

fn cors_layer(origins: &[String]) -> cors::CorsLayer {
    cors::CorsLayer::new(
        origins,
        &[Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS],
        &[
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-admin-key"),
        ],
        Duration::from_secs(600),
    )
}
