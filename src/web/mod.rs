//! The browser pages: the operator console (`/console`) and the demo player
//! (`/demo`), with their scripts and styles built into the binary, so serving them
//! needs no files on disk and no Node toolchain to build the server.
//!
//! The pages are clients of the API like any other: the console calls the admin
//! API with the key the operator types in (kept in the tab's sessionStorage), the
//! demo calls `POST /sessions` and opens the socket with `examples/player.js`,
//! served here as `/web/player.js`. Nothing served carries a key; the only secret
//! used here is the published development key, by `POST /demo/token`, and only
//! while the server verifies customer tokens with it.

mod assets;
mod demo;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(console))
        .routes(routes!(demo_page))
        .routes(routes!(asset))
        .routes(routes!(demo::mint_token))
}

/// The operator console (a drisc extension): a page over the admin API. It holds
/// no data of its own: everything it shows needs the admin key.
#[utoipa::path(
    get,
    path = "/console",
    tag = "web",
    responses(
        (status = 200, description = "The console's page", body = String, content_type = "text/html"),
        (status = 404, description = "NotFound: web.console is false", body = ErrorBody),
    ),
)]
async fn console(State(state): State<AppState>) -> Response {
    if !state.settings.web.console {
        return not_served("the console is switched off (web.console = false)");
    }
    page(&state, assets::CONSOLE_HTML)
}

/// The demo player (a drisc extension): a page that plays the protocol step by step.
#[utoipa::path(
    get,
    path = "/demo",
    tag = "web",
    responses(
        (status = 200, description = "The demo's page", body = String, content_type = "text/html"),
        (status = 404, description = "NotFound: the demo is off (web.demo, or `auto` with a customer key of the operator's own)", body = ErrorBody),
    ),
)]
async fn demo_page(State(state): State<AppState>) -> Response {
    if !state.settings.demo_enabled() {
        return not_served("the demo is switched off (web.demo)");
    }
    page(&state, assets::DEMO_HTML)
}

/// A script or style sheet of the pages (`console.js`, `demo.js`, `player.js`, `style.css`).
#[utoipa::path(
    get,
    path = "/web/{file}",
    tag = "web",
    params(("file" = String, Path, description = "The asset's name, e.g. `player.js`")),
    responses(
        (status = 200, description = "The file", body = String, content_type = "text/javascript"),
        (status = 404, description = "NotFound: no such asset", body = ErrorBody),
    ),
)]
async fn asset(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    match assets::find(&file) {
        Some((content_type, body)) => with_headers(&state, content_type, body),
        None => not_served("no such asset"),
    }
}

fn page(state: &AppState, html: &'static str) -> Response {
    with_headers(state, "text/html; charset=utf-8", html)
}

/// A 404 with the pages' headers, as JSON like every other error.
fn not_served(message: &str) -> Response {
    let mut response = ApiError::NotFound(message.into()).into_response();
    harden(response.headers_mut(), None);
    response
}

fn with_headers(state: &AppState, content_type: &'static str, body: &'static str) -> Response {
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidated each time: the files change with the binary, and they are small.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response();
    harden(response.headers_mut(), Some(&state.settings.server.public_ws_url));
    response
}

/// The pages' security headers: scripts and styles from this origin only (no inline
/// script or style anywhere in the pages), never framed, no referrer (a URL never
/// carries a key, but a session token may sit in a socket's URL).
fn harden(headers: &mut axum::http::HeaderMap, public_ws_url: Option<&str>) {
    let csp = content_security_policy(public_ws_url.unwrap_or(""));
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `connect-src 'self'` covers the API and a socket on this host; a configured
/// `server.public_ws_url` on another origin is added, or the demo could not open
/// the endpoints this server hands out.
fn content_security_policy(public_ws_url: &str) -> String {
    let mut connect = String::from("'self'");
    if let Ok(url) = url::Url::parse(public_ws_url)
        && let Some(host) = url.host_str()
    {
        let origin = match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        connect.push(' ');
        connect.push_str(&origin);
    }
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::content_security_policy;

    #[test]
    fn the_policy_adds_a_public_socket_origin_and_nothing_else() {
        let plain = content_security_policy("");
        assert!(plain.contains("connect-src 'self';"), "{plain}");
        assert!(plain.contains("frame-ancestors 'none'"), "{plain}");
        assert!(!plain.contains("unsafe-inline"), "{plain}");
        let public = content_security_policy("wss://drisc.example.com:8443/ws?x=1");
        assert!(
            public.contains("connect-src 'self' wss://drisc.example.com:8443;"),
            "{public}"
        );
    }
}
