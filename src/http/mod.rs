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

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, Request, Response, header};
use axum::response::Response as Answer;
use axum::routing::future::RouteFuture;
use futures_util::future::Either;
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::net::HttpService;
use crate::state::AppState;

/// The server's router: [`routes`], all but the probes inside the layers they
/// share. Add no route here: routes go in [`api`], where they are documented.
pub fn router(state: AppState) -> HttpService {
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
        .map_response(|response: Response<_>| response.map(Body::new))
        // A failed response (5xx) at debug: tower-http's default is a line at
        // error for each, a flood while a store is down; the answers' own lines
        // (`ApiError`) say it once per 10 s with a count, and each 500 at error.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(cors)
        .layer(DefaultBodyLimit::max(body_limit))
        .service(Hot {
            create: metrics::Timed::route(
                state.meter.clone(),
                sessions::CREATE_PATH,
                sessions::create_service(state.clone()),
            ),
            rest: api.with_state(state.clone()),
        });
    let (probes, _) = health::probes().split_for_parts();
    HttpService::new(Edge {
        probes: probes.with_state(state),
        api,
    })
}

/// Sends the probes to their own router and every other request through the
/// API's layers. The probes stay outside them: a prober's 503 (draining, a store
/// down) is an answer, not a failure to log at ERROR every few seconds, and
/// browsers never call the probes (no CORS). A comparison of the path, where a
/// router of the two probes with the API as its fallback cost every request a
/// boxed clone of the API, a boxed future and a second pass over the answer.
#[derive(Clone)]
struct Edge<A> {
    probes: Router,
    api: A,
}

impl<A> Service<Request<Incoming>> for Edge<A>
where
    A: Service<Request<Body>, Response = Answer, Error = Infallible>,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Either<RouteFuture<Infallible>, A::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (axum's router, and layers that only pass it on).
        std::task::ready!(Service::<Request<Incoming>>::poll_ready(&mut self.probes, cx))?;
        self.api.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        if health::PROBE_PATHS.contains(&request.uri().path()) {
            Either::Left(self.probes.call(request))
        } else {
            Either::Right(self.api.call(request.map(Body::new)))
        }
    }
}

/// Sends `POST /sessions`, nearly every request of a busy node, straight to its
/// handler, and every other request to the router. axum's router costs each
/// request its path's match, a boxed clone of the matched route and two futures
/// around the handler's (bench/analysis.md, round twenty-four); this is one
/// comparison. It sits inside the shared layers (trace, CORS, the body limit),
/// so the route's answers are the router's own: a test holds `CREATE_PATH` to
/// the route's path, and tests/api/metrics.rs counts its answers under the
/// template, as the router's layer did.
#[derive(Clone)]
struct Hot<C, R> {
    create: C,
    rest: R,
}

impl<C, R> Service<Request<Body>> for Hot<C, R>
where
    C: Service<Request<Body>, Response = Answer, Error = Infallible>,
    R: Service<Request<Body>, Response = Answer, Error = Infallible>,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Either<C::Future, R::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (a handler, and axum's router).
        std::task::ready!(self.create.poll_ready(cx))?;
        self.rest.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.method() == Method::POST && request.uri().path() == sessions::CREATE_PATH {
            Either::Left(self.create.call(request))
        } else {
            Either::Right(self.rest.call(request))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{health, sessions};

    #[test]
    fn the_hot_path_is_the_path_of_the_create_route() {
        let document = sessions::router().into_openapi();
        let item = document.paths.paths.get(sessions::CREATE_PATH);
        assert!(
            item.is_some_and(|item| item.post.is_some()),
            "POST {} is not a route of the sessions router",
            sessions::CREATE_PATH
        );
    }

    #[test]
    fn the_probe_paths_are_those_of_the_probes_router() {
        let document = health::probes().into_openapi();
        let mut paths: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        paths.sort_unstable();
        assert_eq!(paths, health::PROBE_PATHS);
    }
}
