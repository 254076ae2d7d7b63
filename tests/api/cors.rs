//! CORS: browsers' preflights for the player API, and configured origins.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::json;

use crate::helpers::{TestApp, granted, random_session_id, spawn_app, spawn_app_with};

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> reqwest::Response {
    app.http
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_cors_preflight_is_answered_and_allows_the_authorization_header() {
    let app = spawn_app().await;
    let some_session = format!("/sessions/{}", random_session_id());
    for (path, method) in [
        ("/sessions", "POST"),
        ("/takeover", "POST"),
        ("/takeover", "GET"),
        (some_session.as_str(), "DELETE"),
    ] {
        let response = preflight(&app, path, "https://player.example", method).await;
        assert!(response.status().is_success(), "{method} {path}: {}", response.status());
        let headers = response.headers();
        let origin = header(headers, "access-control-allow-origin");
        assert!(
            origin.as_deref() == Some("*") || origin.as_deref() == Some("https://player.example"),
            "{method} {path}: allow-origin {origin:?}"
        );
        let allowed_headers = header(headers, "access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            allowed_headers
                .split(',')
                .any(|h| h.trim() == "authorization" || h.trim() == "*"),
            "{method} {path}: allow-headers {allowed_headers:?}"
        );
        let allowed_methods = header(headers, "access-control-allow-methods").unwrap_or_default();
        assert!(
            allowed_methods
                .split(',')
                .any(|m| m.trim() == method || m.trim() == "*"),
            "{method} {path}: allow-methods {allowed_methods:?}"
        );
    }

    // The actual request carries the header too.
    let response = app
        .http
        .post(app.url("/sessions"))
        .header("origin", "https://player.example")
        .bearer_auth(app.token("1", "42"))
        .body(json!({"offerId": "S1"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(header(response.headers(), "access-control-allow-origin").is_some());
    granted(response).await;
    app.stop().await;
}

#[tokio::test]
async fn with_configured_origins_only_those_origins_are_allowed() {
    let app = spawn_app_with(|s| s.cors.allowed_origins = vec!["https://app.example".into()]).await;

    let response = preflight(&app, "/sessions", "https://app.example", "POST").await;
    assert!(response.status().is_success());
    assert_eq!(
        header(response.headers(), "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );

    let response = preflight(&app, "/sessions", "https://evil.example", "POST").await;
    assert_eq!(header(response.headers(), "access-control-allow-origin"), None);

    let response = app
        .http
        .post(app.url("/sessions"))
        .header("origin", "https://evil.example")
        .bearer_auth(app.token("1", "42"))
        .body(json!({"offerId": "S1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(header(response.headers(), "access-control-allow-origin"), None);
    app.stop().await;
}

/// The probes are served outside the layers the API shares: a load balancer's
/// check gets no CORS headers, is never taken for a preflight, and is not timed
/// as an API route; everything else, an unknown path included, is inside them.
#[tokio::test]
async fn the_probes_are_outside_the_api_layers_and_every_other_path_inside() {
    let app = spawn_app().await;
    let get = |path: &'static str| {
        app.http
            .get(app.url(path))
            .header("origin", "https://player.example")
            .send()
    };
    for probe in ["/livez", "/readyz"] {
        let response = get(probe).await.unwrap();
        assert_eq!(response.status(), 200, "{probe}");
        assert_eq!(
            header(response.headers(), "access-control-allow-origin"),
            None,
            "{probe}"
        );
        assert_eq!(header(response.headers(), "vary"), None, "{probe}");
        let response = preflight(&app, probe, "https://player.example", "GET").await;
        assert_eq!(response.status(), 405, "{probe}: not answered as a preflight");
    }
    for (path, status) in [("/health", 200), ("/no/such/route", 404)] {
        let response = get(path).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert!(
            header(response.headers(), "access-control-allow-origin").is_some(),
            "{path}"
        );
        assert!(header(response.headers(), "vary").is_some(), "{path}");
        let response = preflight(&app, path, "https://player.example", "GET").await;
        assert!(response.status().is_success(), "{path}: a preflight");
    }
    app.stop().await;
}
