//! `GET /openapi.json`: the API described for client generators (OpenAPI 3.1).
//!
//! The document is generated, not written: each handler carries its route, its
//! statuses and its typed bodies in a `#[utoipa::path]` attribute, and the router
//! is built from those same handlers (`utoipa_axum::routes!`), so a route cannot be
//! served without being described. What no handler answers itself (the load
//! shedder's 503, hyper's 431) is added to every operation here.

use std::sync::{Arc, OnceLock};

use axum::Extension;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody, LimitExceededBody};
use crate::state::AppState;
use crate::ws::messages::{ClientMessage, ServerMessage};

/// What the handlers' attributes do not say: the title, the tags, the security
/// schemes, and the schemas that only descriptions refer to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "drisc",
        description = "Session control for video streaming: a player asks for a session (`POST /sessions`) \
with a customer JWT, then holds a WebSocket (`GET /ws`) while it plays.\n\n\
Routes tagged `protocol` are the compatible DRISC protocol: their paths, fields and messages are those \
existing players speak and never change (docs/PROTOCOL.md, part 1). Routes tagged `extensions` and `admin` \
are drisc's own additions.\n\n\
Every error is `{\"code\", \"message\"}` (schema `Error`); a 409 also carries `details` (schema \
`LimitExceededError`). Browsers on other origins get CORS preflight answers for every route \
(`cors.allowed_origins`) but the probes `/livez` and `/readyz`, which are for load balancers and \
orchestrators.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody, LimitExceededBody, ClientMessage, ServerMessage)),
    tags(
        (name = "protocol", description = "The compatible DRISC protocol: names, bodies and messages exactly as existing players expect"),
        (name = "extensions", description = "drisc extensions for players, beyond the compatible protocol"),
        (name = "admin", description = "drisc extension: the operator API under /admin/v1, authorised by the admin key, never by a customer token"),
        (name = "web", description = "drisc extension: the browser pages (the operator console, the demo player) and their files; the demo's development token"),
        (name = "operations", description = "For operators and tools: health, the liveness and readiness probes, the Prometheus metrics, and this document"),
    ),
)]
pub struct ApiDoc;

/// The two identities: a customer (a JWT of its publisher) and an operator (the admin key).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "customerToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The customer JWT issued by the publisher's identity system: claims customerId, \
publisherId (strings or numbers) and exp; verified with the publisher's key or JWKS, else the server's.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "adminKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin key (auth.admin_key) as a bearer token."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "adminKeyHeader",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Admin-Key",
                "The admin key in its own header, for tools that cannot send a bearer token.",
            ))),
        );
    }
}

/// What is said of every operation, once every route is in (the modifiers of
/// [`ApiDoc`] run before): the statuses any request may get before or beside its
/// handler, and an operation id that is unique, as OpenAPI requires (a handler
/// serving two methods gives both its name).
pub fn describe_every_operation(api: &mut utoipa::openapi::OpenApi) {
    add_server_answers(api);
    let mut seen = std::collections::HashSet::new();
    for item in api.paths.paths.values_mut() {
        for (method, operation) in operations(item) {
            if let Some(id) = operation.operation_id.as_mut() {
                if !seen.insert(id.clone()) {
                    *id = format!("{id}_{method}");
                }
            }
        }
    }
}

fn add_server_answers(api: &mut utoipa::openapi::OpenApi) {
    let error = || {
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(Ref::from_schema_name("Error"))))
            .build()
    };
    let common = [
        (
            "431",
            ResponseBuilder::new()
                .description(
                    "The request head is larger than server.max_header_bytes: refused before routing, \
without a body",
                )
                .build(),
        ),
        (
            "500",
            ResponseBuilder::new()
                .description("InternalError: an unexpected failure (logged with its detail)")
                .content("application/json", error())
                .build(),
        ),
        (
            "503",
            ResponseBuilder::new()
                .description(
                    "ServiceUnavailable: the server sheds load (more requests in flight than \
server.max_requests_in_flight; then with Retry-After: 1), or a store or key set it needs is unreachable",
                )
                .content("application/json", error())
                .header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(u64_schema())
                        .description(Some("Whole seconds to wait; sent when shedding load"))
                        .build(),
                )
                .build(),
        ),
    ];
    for item in api.paths.paths.values_mut() {
        for (_, operation) in operations(item) {
            for (status, response) in &common {
                operation
                    .responses
                    .responses
                    .entry((*status).to_owned())
                    .or_insert_with(|| RefOr::T(response.clone()));
            }
        }
    }
}

fn u64_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(0))
        .build()
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|o| (method, o)))
}

/// The document as served: serialised once, on first request.
#[derive(Clone, Default)]
struct Document(Arc<OnceLock<Option<Bytes>>>);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(serve))
        .layer(Extension(Document::default()))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document, OpenAPI 3.1", body = Object, content_type = "application/json")),
)]
async fn serve(Extension(document): Extension<Document>) -> Result<Response, ApiError> {
    let json = document
        .0
        .get_or_init(|| serde_json::to_vec(&super::openapi()).ok().map(Bytes::from))
        .clone()
        .ok_or_else(|| ApiError::Internal("the OpenAPI document could not be serialised".into()))?;
    Ok(([(CONTENT_TYPE, "application/json")], json).into_response())
}
