//! `GET /openapi.json`: a valid OpenAPI 3.1 document that lists exactly the routes the
//! router serves, whose schemas the server's own answers match.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, spawn_app};
use crate::players::live_player;

/// The document as served, and its text.
async fn document(app: &TestApp) -> (Value, String) {
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let text = response.text().await.unwrap();
    (serde_json::from_str(&text).expect("the document is JSON"), text)
}

/// Every `$ref` anywhere in `value`.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target.clone());
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// (path, method, operation) of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((path.clone(), method.to_owned(), operation.clone()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_openapi_document_is_valid_openapi_3_1_and_every_reference_resolves() {
    let app = spawn_app().await;
    let (doc, text) = document(&app).await;

    // Parsed by a model of OpenAPI 3.1 that is not the generator's own.
    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
    let version = spec.validate_version().expect("a supported OpenAPI version");
    assert_eq!((version.major, version.minor), (3, 1), "OpenAPI {version}");
    assert!(
        spec.operations().count() >= 12,
        "operations: {}",
        spec.operations().count()
    );

    let mut targets = Vec::new();
    references(&doc, &mut targets);
    assert!(targets.len() > 20, "references: {targets:?}");
    for target in &targets {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{target} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }

    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    let mut ids = BTreeSet::new();
    for (path, method, operation) in operations(&doc) {
        let at = format!("{method} {path}");
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(ids.insert(id.to_owned()), "{at}: operationId {id} is not unique");
        assert!(
            operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{at}: no tag"
        );
        let responses = operation["responses"].as_object().expect("responses");
        for (status, response) in responses {
            assert!(response["description"].is_string(), "{at} {status}: no description");
            // Every error the server writes is JSON with a schema; only hyper's 431 has no body.
            if status.starts_with('4') && status != "431" || status.starts_with('5') {
                assert!(
                    response["content"]["application/json"]["schema"].is_object(),
                    "{at} {status}: no error schema"
                );
            }
        }
        for status in ["431", "503"] {
            assert!(
                responses.contains_key(status),
                "{at} does not say it may answer {status}"
            );
        }
        for requirement in operation["security"].as_array().into_iter().flatten() {
            for name in requirement.as_object().expect("a security requirement").keys() {
                assert!(schemes.contains_key(name), "{at}: unknown security scheme {name}");
            }
        }
    }
    // The customer's JWT and the admin key.
    assert_eq!(schemes["customerToken"]["scheme"], "bearer");
    assert_eq!(schemes["customerToken"]["bearerFormat"], "JWT");
    assert_eq!(schemes["adminKey"]["scheme"], "bearer");
    app.stop().await;
}

/// The paths in a router's `Debug` output: axum lists its routes there, and it has
/// no other way to enumerate them. Its fallback router (`fallback_router`, after
/// the routes) holds only axum's own catch-all paths.
fn served_paths(router: &axum::Router<drisc::state::AppState>) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let routes = debug.split("fallback_router").next().unwrap_or_default();
    routes
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

/// A path of the document with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{session_id}", "00000000-0000-4000-8000-000000000000")
        .replace("{publisher_id}", "p1")
        .replace("{offer_id}", "o1")
        .replace("{customer_id}", "c1")
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_router_serves_with_its_methods() {
    let app = spawn_app().await;
    let (doc, _) = document(&app).await;
    let documented: BTreeSet<String> = doc["paths"].as_object().expect("paths").keys().cloned().collect();

    // The paths of the very router the server runs (http::router adds only layers).
    let (router, _) = drisc::http::routes().split_for_parts();
    let served = served_paths(&router);
    assert!(
        served.contains("/sessions") && served.contains("/admin/v1/publishers"),
        "the router's paths could not be read from its Debug output: {served:?}"
    );
    assert_eq!(
        served, documented,
        "the router serves paths the document does not list, or the reverse"
    );

    // The compatible protocol's routes must never go missing.
    for (path, method) in [
        ("/sessions", "post"),
        ("/takeover", "post"),
        ("/takeover", "get"),
        ("/ws", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }

    // Each documented method is served, and each other one answers 405. (HEAD, which
    // axum answers for GET, and OPTIONS, the CORS layer's, are not operations.)
    for path in &documented {
        for method in ["get", "put", "post", "delete", "patch"] {
            let response = app
                .http
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&concrete(path)),
                )
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if doc["paths"][path][method].is_object() {
                assert!(
                    status != 405 && !body.contains("no such route"),
                    "{method} {path} is documented but not served: {status} {body}"
                );
                let documented_statuses = doc["paths"][path][method]["responses"].as_object().unwrap();
                assert!(
                    documented_statuses.contains_key(&status.to_string()),
                    "{method} {path} answered {status}, which the document does not list"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is served but not documented: {body}");
            }
        }
    }
    app.stop().await;
}

/// Checks `body` against the schema the document gives for this answer, and that its
/// bytes are what serde_json writes for its value (keys sorted, no spaces): what the
/// `json!` bodies before the typed ones were.
pub(crate) fn assert_matches(doc: &Value, path: &str, method: &str, status: u16, text: &str) {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} {status} has no schema");
    assert_valid(doc, schema, text, &format!("{method} {path} {status}"));
}

fn assert_valid(doc: &Value, schema: &Value, text: &str, what: &str) {
    let body: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(serde_json::to_string(&body).unwrap(), text, "{what}: the bytes changed");
    let errors = schema_errors(doc, schema, &body);
    assert!(
        errors.is_empty(),
        "{what}: {body} does not match its schema: {errors:?}"
    );
}

/// The errors of `body` against `schema`, whose `$ref`s point into the document's components.
fn schema_errors(doc: &Value, schema: &Value, body: &Value) -> Vec<String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root).expect("the schema compiles");
    validator.iter_errors(body).map(|e| e.to_string()).collect()
}

async fn send(app: &TestApp, method: Method, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, String) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = auth {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn the_servers_answers_match_the_schemas_of_the_openapi_document() {
    let app = spawn_app().await;
    let (doc, _) = document(&app).await;
    let admin = Some(ADMIN_KEY);

    // The checker refuses what does not match, so the passes below mean something.
    let error = json!({"$ref": "#/components/schemas/Error"});
    assert!(!schema_errors(&doc, &error, &json!({"code": "NoSuchCode", "message": "x"})).is_empty());
    assert!(!schema_errors(&doc, &error, &json!({"message": "x"})).is_empty());

    let (status, text) = send(
        &app,
        Method::PUT,
        "/admin/v1/publishers/1",
        admin,
        Some(json!({"takeoverEnabled": true})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_matches(&doc, "/admin/v1/publishers/{publisher_id}", "put", status, &text);
    let offer = json!({"sessionLimit": 1, "tags": ["live"]});
    let (status, text) = send(
        &app,
        Method::PUT,
        "/admin/v1/publishers/1/offers/S1",
        admin,
        Some(offer),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_matches(
        &doc,
        "/admin/v1/publishers/{publisher_id}/offers/{offer_id}",
        "put",
        status,
        &text,
    );
    let (status, text) = send(&app, Method::GET, "/admin/v1/publishers/1", admin, None).await;
    assert_eq!(status, 200, "{text}");
    assert_matches(&doc, "/admin/v1/publishers/{publisher_id}", "get", status, &text);
    let (status, text) = send(&app, Method::GET, "/admin/v1/publishers", admin, None).await;
    assert_eq!(status, 200, "{text}");
    assert_matches(&doc, "/admin/v1/publishers", "get", status, &text);
    // A page that is not the last: nextCursor a string, not null.
    let (status, _) = send(&app, Method::PUT, "/admin/v1/publishers/2", admin, Some(json!({}))).await;
    assert_eq!(status, 200);
    let (status, text) = send(&app, Method::GET, "/admin/v1/publishers?limit=1", admin, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"nextCursor\":\""), "{text}");
    assert_matches(&doc, "/admin/v1/publishers", "get", status, &text);
    let (status, text) = send(&app, Method::GET, "/admin/v1/publishers?limit=0", admin, None).await;
    assert_eq!(status, 400, "{text}");
    assert_matches(&doc, "/admin/v1/publishers", "get", status, &text);

    // Granted, then the limit, then a player's messages.
    let token = app.token("1", 42);
    let create = json!({"offerId": "S1", "sessionName": "TV"});
    let (status, text) = send(&app, Method::POST, "/sessions", Some(&token), Some(create.clone())).await;
    assert_eq!(status, 200, "{text}");
    assert_matches(&doc, "/sessions", "post", status, &text);
    let granted: Value = serde_json::from_str(&text).unwrap();
    let session_id = granted["sessionId"].as_str().unwrap().to_owned();
    let (status, text) = send(&app, Method::POST, "/sessions", Some(&token), Some(create.clone())).await;
    assert_eq!(status, 409, "{text}");
    assert_matches(&doc, "/sessions", "post", status, &text);
    let (status, text) = send(&app, Method::POST, "/sessions", None, Some(create.clone())).await;
    assert_eq!(status, 401, "{text}");
    assert_matches(&doc, "/sessions", "post", status, &text);
    let (status, text) = send(
        &app,
        Method::POST,
        "/sessions",
        Some(&token),
        Some(json!({"sessionName": "TV"})),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_matches(&doc, "/sessions", "post", status, &text);

    let path = format!("/admin/v1/sessions/{session_id}");
    let (status, text) = send(&app, Method::GET, &path, admin, None).await;
    assert_eq!(status, 200, "{text}");
    assert_matches(&doc, "/admin/v1/sessions/{session_id}", "get", status, &text);
    let (status, text) = send(&app, Method::GET, "/health", None, None).await;
    assert_eq!(status, 200, "{text}");
    assert_matches(&doc, "/health", "get", status, &text);
    // The probes, outside the layers but in the document all the same.
    for path in ["/livez", "/readyz"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            response.headers().get("cache-control").and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{path}"
        );
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        assert_matches(&doc, path, "get", status, &text);
    }
    let (status, text) = send(&app, Method::GET, "/ws?token=forged", None, None).await;
    assert_eq!(status, 401, "{text}");
    assert_matches(&doc, "/ws", "get", status, &text);

    // The WebSocket's messages, both ways.
    let server_message = json!({"$ref": "#/components/schemas/ServerMessage"});
    let client_message = json!({"$ref": "#/components/schemas/ClientMessage"});
    let other = app.token("1", 43);
    let (_, mut player) = live_player(&app, &other, "S1", "Phone").await;
    // The operator's list of a customer's sessions: a live one names its node.
    let (status, text) = send(
        &app,
        Method::GET,
        "/admin/v1/sessions?publisherId=1&customerId=43",
        admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"node\":"), "{text}");
    assert_matches(&doc, "/admin/v1/sessions", "get", status, &text);
    let (status, text) = send(&app, Method::GET, "/admin/v1/sessions?publisherId=1", admin, None).await;
    assert_eq!(status, 400, "{text}");
    assert_matches(&doc, "/admin/v1/sessions", "get", status, &text);
    for action in ["REQUESTED", "PONG", "FINISHED"] {
        let errors = schema_errors(&doc, &client_message, &json!({"action": action}));
        assert!(errors.is_empty(), "{action}: {errors:?}");
    }
    assert!(!schema_errors(&doc, &client_message, &json!({"action": "OK"})).is_empty());
    let taken = app
        .takeover(&other, "S1", "Laptop", &player_session(&app, "43").await)
        .await;
    assert_eq!(taken.status(), 200);
    let message = player.expect("TAKE_OVER").await;
    assert_valid(&doc, &server_message, &message.to_string(), "TAKE_OVER");
    for action in ["OK", "PING", "EXPIRED", "TERMINATE"] {
        let errors = schema_errors(&doc, &server_message, &json!({"action": action}));
        assert!(errors.is_empty(), "{action}: {errors:?}");
    }
    assert!(!schema_errors(&doc, &server_message, &json!({"action": "DANCE"})).is_empty());

    // A customer's sessions ended by the operator.
    let (status, text) = send(
        &app,
        Method::DELETE,
        "/admin/v1/publishers/1/customers/42/sessions",
        admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, r#"{"ended":1}"#);
    assert_matches(
        &doc,
        "/admin/v1/publishers/{publisher_id}/customers/{customer_id}/sessions",
        "delete",
        status,
        &text,
    );

    // GET /metrics: the Prometheus text, under a content type the document names;
    // without the admin key, an Error.
    let response = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let described = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .expect("GET /metrics 200 has a content");
    assert!(
        described.keys().any(|k| content_type.starts_with(k.as_str())),
        "{content_type} is not among {:?}",
        described.keys().collect::<Vec<_>>()
    );
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("# TYPE drisc_admissions_total counter")
    );
    let (status, text) = send(&app, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 401, "{text}");
    assert_matches(&doc, "/metrics", "get", status, &text);

    // Session control switched off: the other 200.
    let (status, _) = send(
        &app,
        Method::PUT,
        "/admin/v1/publishers/1",
        admin,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, text) = send(&app, Method::POST, "/sessions", Some(&token), Some(create)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("disabled"), "{text}");
    assert_matches(&doc, "/sessions", "post", status, &text);
    app.stop().await;
}

/// The id of the one session customer `customer` of publisher 1 holds on S1.
async fn player_session(app: &TestApp, customer: &str) -> String {
    let token = app.token("1", customer.parse::<u64>().unwrap());
    let response = app
        .create(&token, json!({"offerId": "S1", "sessionName": "probe"}))
        .await;
    let refused: Value = response.json().await.unwrap();
    refused["details"]["activeSessions"][0]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("expected LimitExceeded listing the session: {refused}"))
        .to_owned()
}
