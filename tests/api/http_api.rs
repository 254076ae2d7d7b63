//! The REST API: create, takeover, errors, tokens, settings, CORS, admin.

use std::collections::HashMap;

use base64::Engine;
use drisc::domain::SessionId;
use futures_util::future::join_all;
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, DEV_SECRET, TestApp, customer_claims, exp_in, expect_error, fixture, granted, sign_hs, sign_with,
    spawn_app, spawn_app_with,
};

const TEXT_PLAIN: &str = "text/plain;charset=UTF-8";

// ---------------------------------------------------------------------------
// Small helpers for this file
// ---------------------------------------------------------------------------

/// `POST path` with a raw body (sent as text/plain, as browsers do).
async fn post_raw(app: &TestApp, path: &str, token: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(token)
        .header(CONTENT_TYPE, TEXT_PLAIN)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `POST /sessions` with a valid body and whatever `Authorization` header is given.
async fn create_with_authorization(app: &TestApp, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/sessions"))
        .header(CONTENT_TYPE, TEXT_PLAIN)
        .body(json!({"offerId": "S1", "sessionName": "TV"}).to_string());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

/// The customer token must be refused with 401, and nothing may be held for it.
async fn assert_unauthorized(app: &TestApp, authorization: Option<&str>) {
    let response = create_with_authorization(app, authorization).await;
    expect_error(response, 401, "Unauthorized").await;
    assert_eq!(app.health().await["sessions"], 0, "a refused token must hold no slot");
}

async fn delete_session(app: &TestApp, token: &str, session_id: &str) -> reqwest::Response {
    app.http
        .delete(app.url(&format!("/sessions/{session_id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// A create that must be refused with 409 LimitExceeded; returns the error body.
async fn limit_exceeded(app: &TestApp, token: &str, body: Value) -> Value {
    let refused = expect_error(app.create(token, body).await, 409, "LimitExceeded").await;
    assert!(
        refused["details"]["takeOverEnabled"].is_boolean(),
        "takeOverEnabled must be a boolean: {refused}"
    );
    refused
}

/// `details.activeSessions` of a LimitExceeded body as sorted (sessionId, name) pairs.
fn active_sessions(refused: &Value) -> Vec<(String, String)> {
    let mut sessions: Vec<_> = refused["details"]["activeSessions"]
        .as_array()
        .unwrap_or_else(|| panic!("activeSessions must be an array: {refused}"))
        .iter()
        .map(|s| {
            (
                s["sessionId"].as_str().expect("sessionId").to_owned(),
                s["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    sessions.sort();
    sessions
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

fn pair(id: &str, name: &str) -> (String, String) {
    (id.to_owned(), name.to_owned())
}

fn random_session_id() -> String {
    SessionId::random().to_string()
}

async fn admin_session_status(app: &TestApp, session_id: &str) -> u16 {
    app.admin(Method::GET, &format!("/sessions/{session_id}"), None)
        .await
        .status()
        .as_u16()
}

fn rsa_signing_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()).expect("the RSA test key reads")
}

fn ec_signing_key() -> EncodingKey {
    EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()).expect("the EC test key (PKCS#8) reads")
}

fn base64_url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

// ---------------------------------------------------------------------------
// Granted sessions and the endpoint
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_granted_create_is_200_with_an_endpoint_built_from_the_host_header() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    // The helper posts the JSON as text/plain, as a browser's fetch does.
    let g = granted(app.create(&token, json!({"offerId": "S1", "sessionName": "TV"})).await).await;

    let session_token = g.body["token"].as_str().expect("the body carries the session token");
    assert_eq!(session_token.split('.').count(), 3, "the session token is a JWT");
    assert_eq!(
        g.endpoint,
        format!("ws://127.0.0.1:{}/ws?token={session_token}", app.port)
    );
    assert!(
        SessionId::parse(&g.session_id).is_some(),
        "sessionId is a UUID: {}",
        g.session_id
    );
    app.stop().await;
}

#[tokio::test]
async fn a_create_posted_as_application_json_is_granted_too() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/sessions"))
        .bearer_auth(app.token("1", "42"))
        .json(&json!({"offerId": "S1", "sessionName": "TV"}))
        .send()
        .await
        .unwrap();
    let g = granted(response).await;
    assert!(
        g.endpoint
            .starts_with(&format!("ws://127.0.0.1:{}/ws?token=", app.port))
    );
    app.stop().await;
}

#[tokio::test]
async fn x_forwarded_proto_https_gives_a_wss_endpoint() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/sessions"))
        .bearer_auth(app.token("1", "42"))
        .header("x-forwarded-proto", "https")
        .body(json!({"offerId": "S1"}).to_string())
        .send()
        .await
        .unwrap();
    let g = granted(response).await;
    let session_token = g.body["token"].as_str().unwrap();
    assert_eq!(
        g.endpoint,
        format!("wss://127.0.0.1:{}/ws?token={session_token}", app.port)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_configured_public_ws_url_is_used_verbatim() {
    let app = spawn_app_with(|s| s.server.public_ws_url = "wss://drisc.example.com/ws".into()).await;
    let response = app
        .http
        .post(app.url("/sessions"))
        .bearer_auth(app.token("1", "42"))
        .header("x-forwarded-proto", "http")
        .body(json!({"offerId": "S1"}).to_string())
        .send()
        .await
        .unwrap();
    let g = granted(response).await;
    let session_token = g.body["token"].as_str().unwrap();
    assert_eq!(g.endpoint, format!("wss://drisc.example.com/ws?token={session_token}"));
    app.stop().await;
}

// ---------------------------------------------------------------------------
// DRISC disabled
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_disabled_publisher_answers_200_disabled_without_endpoint_on_create_and_takeover() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({"enabled": false})).await;
    let token = app.token("1", "42");
    let expected = json!({"status": "disabled", "message": "Session tracking disabled.", "enabled": false});

    let response = app.create(&token, json!({"offerId": "S1", "sessionName": "TV"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), expected);

    let response = app.takeover(&token, "S1", "Phone", &random_session_id()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), expected);

    assert_eq!(
        app.health().await["sessions"],
        0,
        "a disabled publisher holds no session"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Limit exceeded and takeover permissions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_full_pool_is_409_limit_exceeded_listing_each_held_session() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 2, &[]).await;
    let token = app.token("1", "42");
    let tv = app.create_ok(&token, "S1", "Living room TV - Match of the day").await;
    let phone = app.create_ok(&token, "S1", "Phone").await;

    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Laptop"})).await;
    assert_eq!(refused["details"]["takeOverEnabled"], true);
    assert_eq!(
        active_sessions(&refused),
        sorted(vec![
            pair(&tv.session_id, "Living room TV - Match of the day"),
            pair(&phone.session_id, "Phone"),
        ])
    );
    app.stop().await;
}

#[tokio::test]
async fn with_takeover_disabled_on_the_publisher_the_flag_is_false_and_takeover_is_403() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({"takeoverEnabled": false})).await;
    let token = app.token("1", "42");
    let tv = app.create_ok(&token, "S1", "TV").await;

    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Phone"})).await;
    assert_eq!(refused["details"]["takeOverEnabled"], false);
    assert_eq!(active_sessions(&refused), vec![pair(&tv.session_id, "TV")]);

    let response = app.takeover(&token, "S1", "Phone", &tv.session_id).await;
    expect_error(response, 403, "Forbidden").await;
    assert_eq!(
        admin_session_status(&app, &tv.session_id).await,
        200,
        "the session is still held"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_offer_can_disable_takeover_while_its_publisher_allows_it() {
    let app = spawn_app().await;
    let response = app
        .admin(
            Method::PUT,
            "/publishers/1/offers/NOTAKE",
            Some(json!({"sessionLimit": 1, "takeoverEnabled": false})),
        )
        .await;
    assert_eq!(response.status(), 200);
    app.put_offer("1", "INHERIT", 1, &[]).await;
    let token = app.token("1", "42");

    let held = app.create_ok(&token, "NOTAKE", "TV").await;
    let refused = limit_exceeded(&app, &token, json!({"offerId": "NOTAKE", "sessionName": "Phone"})).await;
    assert_eq!(refused["details"]["takeOverEnabled"], false);
    expect_error(
        app.takeover(&token, "NOTAKE", "Phone", &held.session_id).await,
        403,
        "Forbidden",
    )
    .await;

    // The publisher's own flag (true) still applies to its other offers.
    let other = app.create_ok(&token, "INHERIT", "TV").await;
    let refused = limit_exceeded(&app, &token, json!({"offerId": "INHERIT", "sessionName": "Phone"})).await;
    assert_eq!(refused["details"]["takeOverEnabled"], true);
    granted(app.takeover(&token, "INHERIT", "Phone", &other.session_id).await).await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Takeover
// ---------------------------------------------------------------------------

#[tokio::test]
async fn takeover_is_granted_in_the_victims_slot() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    let victim = app.create_ok(&token, "S1", "TV").await;

    let new = granted(app.takeover(&token, "S1", "Phone", &victim.session_id).await).await;
    assert_ne!(new.session_id, victim.session_id);
    assert!(
        new.endpoint
            .starts_with(&format!("ws://127.0.0.1:{}/ws?token=", app.port))
    );
    assert!(new.body["token"].is_string());

    // The pool is still at its limit of 1, now held by the new session only.
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Laptop"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&new.session_id, "Phone")]);
    assert_eq!(admin_session_status(&app, &victim.session_id).await, 404);
    app.stop().await;
}

#[tokio::test]
async fn takeover_of_an_unknown_session_is_404() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    let held = app.create_ok(&token, "S1", "TV").await;

    expect_error(
        app.takeover(&token, "S1", "Phone", &random_session_id()).await,
        404,
        "NotFound",
    )
    .await;
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1"})).await;
    assert_eq!(
        active_sessions(&refused),
        vec![pair(&held.session_id, "TV")],
        "nothing was replaced"
    );
    app.stop().await;
}

#[tokio::test]
async fn takeover_with_a_session_id_that_is_not_a_uuid_is_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    app.create_ok(&token, "S1", "TV").await;
    expect_error(
        app.takeover(&token, "S1", "Phone", "not-a-session-id").await,
        400,
        "InvalidRequest",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn takeover_without_a_session_id_is_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    app.create_ok(&token, "S1", "TV").await;
    let response = app
        .post("/takeover", &token, json!({"offerId": "S1", "sessionName": "Phone"}))
        .await;
    expect_error(response, 400, "InvalidRequest").await;
    let response = app
        .post(
            "/takeover",
            &token,
            json!({"offerId": "S1", "sessionName": "Phone", "sessionId": ""}),
        )
        .await;
    expect_error(response, 400, "InvalidRequest").await;
    app.stop().await;
}

#[tokio::test]
async fn get_takeover_with_a_json_body_works_like_post() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    let victim = app.create_ok(&token, "S1", "TV").await;
    let response = app
        .http
        .get(app.url("/takeover"))
        .bearer_auth(&token)
        .header(CONTENT_TYPE, TEXT_PLAIN)
        .body(json!({"offerId": "S1", "sessionName": "Phone", "sessionId": victim.session_id}).to_string())
        .send()
        .await
        .unwrap();
    let new = granted(response).await;
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&new.session_id, "Phone")]);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Offers: tags, unknown offers, strict mode
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_tag_resolves_to_the_largest_limit_with_ties_going_to_the_smallest_offer_id() {
    let app = spawn_app().await;
    // Configured out of order on purpose.
    app.put_offer("1", "B", 3, &["live"]).await;
    app.put_offer("1", "C", 2, &["live", "sport"]).await;
    app.put_offer("1", "A", 3, &["live", "vod"]).await;
    app.put_offer("1", "D", 5, &["sport"]).await;
    let token = app.token("1", "42");

    let by_tag = |tag: &'static str| {
        let app = &app;
        let token = &token;
        async move { granted(app.create(token, json!({"tag": tag, "sessionName": tag})).await).await }
    };
    assert_eq!(by_tag("live").await.body["offerId"], "A", "3 = 3: the smallest id wins");
    assert_eq!(by_tag("sport").await.body["offerId"], "D", "5 > 2");
    assert_eq!(by_tag("vod").await.body["offerId"], "A");
    app.stop().await;
}

#[tokio::test]
async fn sessions_created_by_tag_and_by_its_offer_id_share_one_pool() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 2, &["live"]).await;
    app.put_offer("1", "S9", 1, &["live"]).await;
    let token = app.token("1", "42");

    let by_tag = granted(app.create(&token, json!({"tag": "live", "sessionName": "TV"})).await).await;
    let by_id = app.create_ok(&token, "S1", "Phone").await;
    let expected = sorted(vec![pair(&by_tag.session_id, "TV"), pair(&by_id.session_id, "Phone")]);

    let refused = limit_exceeded(&app, &token, json!({"tag": "live", "sessionName": "Laptop"})).await;
    assert_eq!(active_sessions(&refused), expected);
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Laptop"})).await;
    assert_eq!(active_sessions(&refused), expected);

    let shown: Value = app
        .admin(Method::GET, &format!("/sessions/{}", by_tag.session_id), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["offerId"], "S1");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_tag_is_404() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 2, &["live"]).await;
    let token = app.token("1", "42");
    let response = app.create(&token, json!({"tag": "vod", "sessionName": "TV"})).await;
    expect_error(response, 404, "NotFound").await;
    assert_eq!(app.health().await["sessions"], 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_offer_id_gets_the_publishers_default_session_limit() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({"defaultSessionLimit": 2})).await;
    let token = app.token("1", "42");
    let tv = app.create_ok(&token, "NOT-CONFIGURED", "TV").await;
    let phone = app.create_ok(&token, "NOT-CONFIGURED", "Phone").await;
    let refused = limit_exceeded(
        &app,
        &token,
        json!({"offerId": "NOT-CONFIGURED", "sessionName": "Laptop"}),
    )
    .await;
    assert_eq!(
        active_sessions(&refused),
        sorted(vec![pair(&tv.session_id, "TV"), pair(&phone.session_id, "Phone")])
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_offer_id_is_404_when_the_publisher_rejects_unknown_offers() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({"unknownOffers": "reject"})).await;
    app.put_offer("1", "S1", 1, &[]).await;
    let token = app.token("1", "42");
    let response = app
        .create(&token, json!({"offerId": "NOT-CONFIGURED", "sessionName": "TV"}))
        .await;
    expect_error(response, 404, "NotFound").await;
    app.create_ok(&token, "S1", "TV").await;
    app.stop().await;
}

#[tokio::test]
async fn in_strict_mode_an_unconfigured_publisher_is_403_until_the_admin_creates_it() {
    let app = spawn_app_with(|s| s.publishers.auto_create = false).await;
    let token = app.token("1", "42");
    let response = app.create(&token, json!({"offerId": "S1", "sessionName": "TV"})).await;
    expect_error(response, 403, "Forbidden").await;
    let response = app.admin(Method::GET, "/publishers/1", None).await;
    assert_eq!(response.status(), 404, "a refused token must not create its publisher");

    app.put_publisher("1", json!({})).await;
    app.create_ok(&token, "S1", "TV").await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

/// Fires `count` creates for one pool at once; returns (status, body) of each.
async fn parallel_creates(app: &TestApp, token: &str, offer: &str, count: usize) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let http = app.http.clone();
            let url = app.url("/sessions");
            let token = token.to_owned();
            let body = json!({"offerId": offer, "sessionName": format!("device {i}")}).to_string();
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .header(CONTENT_TYPE, TEXT_PLAIN)
                    .body(body)
                    .send()
                    .await
                    .expect("every request is answered");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("every answer is JSON"))
            })
        })
        .collect();
    join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect()
}

/// Splits answers into granted session ids and LimitExceeded refusals, and fails on
/// anything else.
fn granted_and_refused(results: &[(u16, Value)]) -> (Vec<String>, usize) {
    let mut granted = Vec::new();
    let mut refused = 0;
    let mut other = Vec::new();
    for (status, body) in results {
        match status {
            200 => granted.push(body["sessionId"].as_str().expect("sessionId").to_owned()),
            409 if body["code"] == "LimitExceeded" => refused += 1,
            _ => other.push((status, body)),
        }
    }
    assert!(other.is_empty(), "only 200 and 409 are expected, also got: {other:?}");
    (sorted(granted), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_parallel_creates_against_a_limit_of_three_grant_exactly_three() {
    // One customer's 300 at once are far past its rate limit, which is not under test here.
    let app = spawn_app_with(|s| s.limits.customer_burst = 1000).await;
    app.put_offer("1", "S1", 3, &[]).await;
    let token = app.token("1", "42");

    let results = parallel_creates(&app, &token, "S1", 300).await;
    let (granted, refused) = granted_and_refused(&results);
    assert_eq!(granted.len(), 3, "exactly the limit is granted");
    assert_eq!(refused, 297);

    // The pool holds exactly the three granted sessions.
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1"})).await;
    let held: Vec<String> = active_sessions(&refused).into_iter().map(|(id, _)| id).collect();
    assert_eq!(held, granted);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_parallel_first_sight_creates_grant_exactly_the_default_limit() {
    // The publisher is created on first sight by these very requests.
    let app = spawn_app_with(|s| {
        s.publishers.default_session_limit = 3;
        s.limits.customer_burst = 1000;
    })
    .await;
    let token = app.token("fresh", "42");

    let results = parallel_creates(&app, &token, "S1", 300).await;
    let (granted, refused) = granted_and_refused(&results);
    assert_eq!(granted.len(), 3);
    assert_eq!(refused, 297);
    assert_eq!(app.health().await["sessions"], 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_takeovers_of_one_victim_have_exactly_one_winner() {
    // 50 at once from one customer: past its rate limit, which is not under test here.
    let app = spawn_app_with(|s| s.limits.customer_burst = 100).await;
    app.put_offer("1", "S1", 2, &[]).await;
    let token = app.token("1", "42");
    let victim = app.create_ok(&token, "S1", "TV").await;
    let bystander = app.create_ok(&token, "S1", "Phone").await;

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let http = app.http.clone();
            let url = app.url("/takeover");
            let token = token.clone();
            let body =
                json!({"offerId": "S1", "sessionName": format!("contender {i}"), "sessionId": victim.session_id})
                    .to_string();
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .header(CONTENT_TYPE, TEXT_PLAIN)
                    .body(body)
                    .send()
                    .await
                    .expect("every request is answered");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("every answer is JSON"))
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();

    let winners: Vec<&Value> = results.iter().filter(|(s, _)| *s == 200).map(|(_, b)| b).collect();
    let losers = results
        .iter()
        .filter(|(s, b)| *s == 404 && b["code"] == "NotFound")
        .count();
    assert_eq!(winners.len(), 1, "exactly one takeover wins: {results:?}");
    assert_eq!(losers, 49, "every other takeover finds no victim: {results:?}");

    let winner = winners[0]["sessionId"].as_str().unwrap();
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Laptop"})).await;
    let held: Vec<String> = active_sessions(&refused).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        held,
        sorted(vec![winner.to_owned(), bystander.session_id.clone()]),
        "the pool holds the limit and no more"
    );
    assert_eq!(app.health().await["sessions"], 2);
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Identity: string and numeric ids, tenants
// ---------------------------------------------------------------------------

#[tokio::test]
async fn string_and_numeric_ids_share_one_pool() {
    let app = spawn_app().await;
    let as_strings = app.token("7", "4");
    let as_numbers = app.token(7, 4);

    let held = app.create_ok(&as_strings, "S1", "TV").await;
    let refused = limit_exceeded(&app, &as_numbers, json!({"offerId": "S1", "sessionName": "Phone"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&held.session_id, "TV")]);

    // The same customer: the numeric token may end the string token's session.
    assert_eq!(delete_session(&app, &as_numbers, &held.session_id).await.status(), 204);
    app.create_ok(&as_numbers, "S1", "Phone").await;
    app.stop().await;
}

#[tokio::test]
async fn another_customer_cannot_take_over_or_end_a_session_it_does_not_own() {
    let app = spawn_app().await;
    let alice = app.token("1", "alice");
    let bob = app.token("1", "bob");
    let held = app.create_ok(&alice, "S1", "TV").await;

    expect_error(
        app.takeover(&bob, "S1", "Phone", &held.session_id).await,
        404,
        "NotFound",
    )
    .await;
    expect_error(delete_session(&app, &bob, &held.session_id).await, 404, "NotFound").await;

    // Alice's session is still held, and Bob has a pool of his own.
    let refused = limit_exceeded(&app, &alice, json!({"offerId": "S1", "sessionName": "Phone"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&held.session_id, "TV")]);
    app.create_ok(&bob, "S1", "Phone").await;
    app.stop().await;
}

#[tokio::test]
async fn the_same_customer_id_under_another_publisher_is_another_pool() {
    let app = spawn_app().await;
    let first = app.token("1", "42");
    let second = app.token("2", "42");
    let held = app.create_ok(&first, "S1", "TV").await;

    let other = app.create_ok(&second, "S1", "Phone").await;
    expect_error(
        app.takeover(&second, "S1", "Laptop", &held.session_id).await,
        404,
        "NotFound",
    )
    .await;
    expect_error(delete_session(&app, &second, &held.session_id).await, 404, "NotFound").await;

    let refused = limit_exceeded(&app, &first, json!({"offerId": "S1"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&held.session_id, "TV")]);
    let refused = limit_exceeded(&app, &second, json!({"offerId": "S1"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&other.session_id, "Phone")]);
    app.stop().await;
}

#[tokio::test]
async fn deleting_ones_own_session_is_204_and_frees_the_slot() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    let held = app.create_ok(&token, "S1", "TV").await;
    limit_exceeded(&app, &token, json!({"offerId": "S1"})).await;

    let response = delete_session(&app, &token, &held.session_id).await;
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());

    app.create_ok(&token, "S1", "Phone").await;
    expect_error(delete_session(&app, &token, &held.session_id).await, 404, "NotFound").await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[tokio::test]
async fn both_offer_id_and_tag_is_a_400() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 1, &["live"]).await;
    let response = app
        .create(
            &app.token("1", "42"),
            json!({"offerId": "S1", "tag": "live", "sessionName": "TV"}),
        )
        .await;
    expect_error(response, 400, "InvalidRequest").await;
    assert_eq!(app.health().await["sessions"], 0);
    app.stop().await;
}

#[tokio::test]
async fn neither_offer_id_nor_tag_is_a_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    for body in [json!({"sessionName": "TV"}), json!({})] {
        expect_error(app.create(&token, body).await, 400, "InvalidRequest").await;
    }
    assert_eq!(app.health().await["sessions"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_session_name_over_100_characters_is_a_400_and_100_characters_are_fine() {
    let app = spawn_app().await;
    // A pool per offer, so each name below fills a pool of its own.
    app.put_publisher("1", json!({"defaultSessionLimit": 1, "unknownOffers": "each"}))
        .await;
    let token = app.token("1", "42");

    // Counted in characters, not bytes: 100 two-byte and 100 four-byte characters pass.
    for (offer, name) in [
        ("N1", "a".repeat(100)),
        ("N2", "é".repeat(100)),
        ("N3", "📺".repeat(100)),
    ] {
        let response = app.create(&token, json!({"offerId": offer, "sessionName": name})).await;
        granted(response).await;
        let refused = limit_exceeded(&app, &token, json!({"offerId": offer})).await;
        assert_eq!(active_sessions(&refused)[0].1, name, "the name is kept as given");
    }
    for name in ["a".repeat(101), "é".repeat(101), "📺".repeat(101)] {
        let response = app.create(&token, json!({"offerId": "N4", "sessionName": name})).await;
        expect_error(response, 400, "InvalidRequest").await;
    }
    assert_eq!(app.health().await["sessions"], 3);
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    for body in [r#"{"offerId": "S1","#, "not json", r#"{"offerId": 5}"#] {
        let response = post_raw(&app, "/sessions", &token, body).await;
        expect_error(response, 400, "InvalidRequest").await;
    }
    assert_eq!(app.health().await["sessions"], 0);
    app.stop().await;
}

#[tokio::test]
async fn an_empty_body_is_a_400() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    for body in ["", "  \n"] {
        let response = post_raw(&app, "/sessions", &token, body).await;
        expect_error(response, 400, "InvalidRequest").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_json_array_body_is_a_400() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({})).await;
    let token = app.token("1", "42");
    let held = app.create_ok(&app.token("1", "43"), "S1", "TV").await;
    let mut accepted = Vec::new();
    let mut check = async |what: String, response: reqwest::Response| {
        let status = response.status();
        let text = response.text().await.unwrap();
        let code = serde_json::from_str::<Value>(&text).ok().map(|v| v["code"].clone());
        if status != 400 || code != Some(json!("InvalidRequest")) {
            accepted.push(format!("{what} answered {status}: {text}"));
        }
    };
    for body in [
        "[]".to_owned(),
        json!([{"offerId": "S1", "sessionName": "TV"}]).to_string(),
        // The four fields of the request, by position.
        json!(["TV", "S1", null, null]).to_string(),
    ] {
        let response = post_raw(&app, "/sessions", &token, body.clone()).await;
        check(format!("POST /sessions {body}"), response).await;
    }
    let body = json!(["Phone", "S1", null, held.session_id]).to_string();
    let response = post_raw(&app, "/takeover", &app.token("1", "43"), body.clone()).await;
    check(format!("POST /takeover {body}"), response).await;
    // The admin API reads its bodies the same way: by position, `enabled` comes first.
    let body = "[false, null, null, null, null]";
    let response = app
        .http
        .put(app.url("/admin/v1/publishers/1"))
        .bearer_auth(ADMIN_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    check(format!("PUT /admin/v1/publishers/1 {body}"), response).await;

    assert!(
        accepted.is_empty(),
        "a JSON array is not a request object, yet:\n{}",
        accepted.join("\n")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_a_413() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    let token = app.token("1", "42");
    // Unknown keys are ignored, so padding makes a body of any size.
    let body =
        |padding: usize| json!({"offerId": "S1", "sessionName": "TV", "padding": "x".repeat(padding)}).to_string();

    let small = body(900);
    assert!(small.len() <= 1024);
    granted(post_raw(&app, "/sessions", &token, small).await).await;

    let large = body(2000);
    assert!(large.len() > 1024);
    let error = expect_error(post_raw(&app, "/sessions", &token, large).await, 413, "PayloadTooLarge").await;
    assert!(error["message"].as_str().unwrap().contains("1024"), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_default_limit_is_a_413() {
    let app = spawn_app().await;
    assert_eq!(app.settings.server.max_body_bytes, 16384);
    let body = json!({"offerId": "S1", "padding": "x".repeat(20_000)}).to_string();
    let response = post_raw(&app, "/sessions", &app.token("1", "42"), body).await;
    expect_error(response, 413, "PayloadTooLarge").await;
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/no/such/route")).send().await.unwrap();
    expect_error(response, 404, "NotFound").await;
    let response = app
        .post("/sessionz", &app.token("1", "42"), json!({"offerId": "S1"}))
        .await;
    expect_error(response, 404, "NotFound").await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Bad customer tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_authorization_header_is_401() {
    let app = spawn_app().await;
    assert_unauthorized(&app, None).await;
    app.stop().await;
}

#[tokio::test]
async fn an_authorization_header_that_is_not_bearer_is_401() {
    let app = spawn_app().await;
    let valid = app.token("1", "42");
    for value in [
        "Basic dXNlcjpwYXNz".to_owned(),
        format!("Token {valid}"),
        valid.clone(),
        "Bearer".to_owned(),
        "Bearer    ".to_owned(),
    ] {
        assert_unauthorized(&app, Some(&value)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_garbage_token_is_401() {
    let app = spawn_app().await;
    for token in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.eyJ9.x"] {
        assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_expired_beyond_the_leeway_is_401() {
    let app = spawn_app().await;
    let expired = sign_hs(
        DEV_SECRET,
        Algorithm::HS256,
        json!({"publisherId": "1", "customerId": "42", "exp": exp_in(-120)}),
    );
    assert_unauthorized(&app, Some(&format!("Bearer {expired}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_still_accepted() {
    let app = spawn_app().await;
    let just_expired = sign_hs(
        DEV_SECRET,
        Algorithm::HS256,
        json!({"publisherId": "1", "customerId": "42", "exp": exp_in(-5)}),
    );
    app.create_ok(&just_expired, "S1", "TV").await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_signed_with_the_wrong_secret_is_401() {
    let app = spawn_app().await;
    let forged = sign_hs("not-the-server-secret", Algorithm::HS256, customer_claims("1", "42"));
    assert_unauthorized(&app, Some(&format!("Bearer {forged}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn an_alg_none_token_is_401() {
    let app = spawn_app().await;
    let payload = base64_url(customer_claims("1", "42").to_string().as_bytes());
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"none","typ":"JWT"}"#] {
        let token = format!("{}.{payload}.", base64_url(header.as_bytes()));
        assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_without_exp_is_401() {
    let app = spawn_app().await;
    let token = sign_hs(
        DEV_SECRET,
        Algorithm::HS256,
        json!({"publisherId": "1", "customerId": "42"}),
    );
    assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_without_customer_id_is_401() {
    let app = spawn_app().await;
    let token = sign_hs(
        DEV_SECRET,
        Algorithm::HS256,
        json!({"publisherId": "1", "exp": exp_in(600)}),
    );
    assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_without_publisher_id_is_401() {
    let app = spawn_app().await;
    let token = sign_hs(
        DEV_SECRET,
        Algorithm::HS256,
        json!({"customerId": "42", "exp": exp_in(600)}),
    );
    assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Per-publisher and server-wide verification keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_rs256_token_is_accepted_with_the_publishers_public_key() {
    let app = spawn_app().await;
    app.put_publisher("9", json!({"verificationKey": fixture("rsa-public.pem")}))
        .await;
    let token = sign_with(Algorithm::RS256, &rsa_signing_key(), &customer_claims("9", "42"));
    app.create_ok(&token, "S1", "TV").await;
    app.stop().await;
}

#[tokio::test]
async fn once_a_publisher_has_its_own_key_a_dev_secret_hs256_token_is_refused() {
    let app = spawn_app().await;
    let dev_token = app.token("9", "42");
    // Before: the server-wide development secret verifies it.
    let before = app.create_ok(&dev_token, "S1", "TV").await;
    assert_eq!(delete_session(&app, &dev_token, &before.session_id).await.status(), 204);

    app.put_publisher("9", json!({"verificationKey": fixture("rsa-public.pem")}))
        .await;
    assert_unauthorized(&app, Some(&format!("Bearer {dev_token}"))).await;
    app.stop().await;
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_pem_is_refused() {
    // Algorithm confusion: the public key's text used as an HMAC secret.
    let app = spawn_app().await;
    let pem = fixture("rsa-public.pem");
    app.put_publisher("9", json!({"verificationKey": pem})).await;
    for secret in [pem.as_str(), pem.trim()] {
        for alg in [Algorithm::HS256, Algorithm::HS512] {
            let token = sign_hs(secret, alg, customer_claims("9", "42"));
            assert_unauthorized(&app, Some(&format!("Bearer {token}"))).await;
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn an_es256_token_is_accepted_with_the_publishers_ec_public_key() {
    let app = spawn_app().await;
    app.put_publisher("9", json!({"verificationKey": fixture("ec-public.pem")}))
        .await;
    let token = sign_with(Algorithm::ES256, &ec_signing_key(), &customer_claims("9", "42"));
    app.create_ok(&token, "S1", "TV").await;

    // An RSA-signed token is no good for a publisher whose key is EC.
    let rsa_token = sign_with(Algorithm::RS256, &rsa_signing_key(), &customer_claims("9", "43"));
    assert_unauthorized_keeps(&app, &rsa_token, 1).await;
    app.stop().await;
}

/// Like [`assert_unauthorized`], for when `held` sessions are already held.
async fn assert_unauthorized_keeps(app: &TestApp, token: &str, held: u64) {
    let response = create_with_authorization(app, Some(&format!("Bearer {token}"))).await;
    expect_error(response, 401, "Unauthorized").await;
    assert_eq!(app.health().await["sessions"], held);
}

#[tokio::test]
async fn the_server_wide_key_from_config_can_be_an_rsa_public_key() {
    let app = spawn_app_with(|s| s.auth.customer_key = fixture("rsa-public.pem").into()).await;
    let token = sign_with(Algorithm::RS256, &rsa_signing_key(), &customer_claims("1", "42"));
    app.create_ok(&token, "S1", "TV").await;

    // The development secret no longer verifies anything.
    let dev_token = sign_hs(DEV_SECRET, Algorithm::HS256, customer_claims("1", "43"));
    assert_unauthorized_keeps(&app, &dev_token, 1).await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_an_invalid_pem_key_with_400() {
    let app = spawn_app().await;
    app.put_publisher("9", json!({})).await;
    let bad = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PUBLIC KEY-----\n";
    let response = app
        .admin(Method::PUT, "/publishers/9", Some(json!({"verificationKey": bad})))
        .await;
    expect_error(response, 400, "InvalidRequest").await;

    let shown: Value = app
        .admin(Method::GET, "/publishers/9", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["verificationKeySet"], false, "the bad key was not stored");
    // The publisher's tokens still verify with the server-wide key.
    app.create_ok(&app.token("9", "42"), "S1", "TV").await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_admin_api_without_a_key_is_401() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/admin/v1/publishers")).send().await.unwrap();
    expect_error(response, 401, "Unauthorized").await;
    let response = app
        .http
        .put(app.url("/admin/v1/publishers/1"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "Unauthorized").await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_with_a_wrong_key_or_a_customer_token_is_401() {
    let app = spawn_app().await;
    let customer_token = app.token("1", "42");
    for key in [
        "wrong-key",
        &format!("{ADMIN_KEY}x"),
        &ADMIN_KEY[..ADMIN_KEY.len() - 1],
        &customer_token,
    ] {
        let response = app
            .http
            .get(app.url("/admin/v1/publishers"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        expect_error(response, 401, "Unauthorized").await;
    }
    let response = app
        .http
        .put(app.url("/admin/v1/publishers/1"))
        .bearer_auth(&customer_token)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "Unauthorized").await;
    assert_eq!(app.admin(Method::GET, "/publishers/1", None).await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_lists_publishers() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({"defaultSessionLimit": 4})).await;
    app.put_offer("2", "S1", 2, &[]).await;
    // Created on first sight by a customer token.
    app.create_ok(&app.token("3", "42"), "S1", "TV").await;

    let response = app.admin(Method::GET, "/publishers", None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let publishers: HashMap<String, Value> = body["publishers"]
        .as_array()
        .expect("publishers")
        .iter()
        .map(|p| (p["publisherId"].as_str().unwrap().to_owned(), p.clone()))
        .collect();
    let mut ids: Vec<_> = publishers.keys().cloned().collect();
    ids.sort();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(publishers["1"]["defaultSessionLimit"], 4);
    assert_eq!(publishers["3"]["enabled"], true);
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_shows_a_publisher_with_its_offers_and_never_its_key() {
    let app = spawn_app().await;
    let secret = "a-publisher-hmac-secret";
    let response = app
        .admin(
            Method::PUT,
            "/publishers/9",
            Some(json!({
                "verificationKey": secret,
                "takeoverEnabled": false,
                "defaultSessionLimit": 3,
                "unknownOffers": "reject",
            })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(secret), "PUT echoed the key: {text}");
    app.put_offer("9", "S1", 2, &["live", "vod"]).await;

    let response = app.admin(Method::GET, "/publishers/9", None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(secret), "GET echoed the key: {text}");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        shown,
        json!({
            "publisherId": "9",
            "enabled": true,
            "takeoverEnabled": false,
            "defaultSessionLimit": 3,
            "unknownOffers": "reject",
            "verificationKeySet": true,
            "offers": [{"offerId": "S1", "sessionLimit": 2, "tags": ["live", "vod"], "takeoverEnabled": null}],
        })
    );

    // The key is in use: a token signed with it is accepted.
    let token = sign_hs(secret, Algorithm::HS256, customer_claims("9", "42"));
    app.create_ok(&token, "S1", "TV").await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_answers_404_for_an_unknown_publisher() {
    let app = spawn_app().await;
    let response = app.admin(Method::GET, "/publishers/nobody", None).await;
    expect_error(response, 404, "NotFound").await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_an_offer_with_an_unknown_field_with_400() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({})).await;
    let response = app
        .admin(
            Method::PUT,
            "/publishers/1/offers/S1",
            Some(json!({"sessionLimit": 2, "maxSessions": 5})),
        )
        .await;
    let error = expect_error(response, 400, "InvalidRequest").await;
    assert!(error["message"].as_str().unwrap().contains("maxSessions"), "{error}");

    let shown: Value = app
        .admin(Method::GET, "/publishers/1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["offers"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn deleting_an_offer_is_204_then_404() {
    let app = spawn_app().await;
    app.put_publisher("1", json!({"unknownOffers": "reject"})).await;
    app.put_offer("1", "S1", 1, &[]).await;
    app.create_ok(&app.token("1", "42"), "S1", "TV").await;

    let response = app.admin(Method::DELETE, "/publishers/1/offers/S1", None).await;
    assert_eq!(response.status(), 204);
    let response = app.admin(Method::DELETE, "/publishers/1/offers/S1", None).await;
    expect_error(response, 404, "NotFound").await;

    let shown: Value = app
        .admin(Method::GET, "/publishers/1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["offers"], json!([]));
    // The next admission no longer knows the offer.
    let response = app.create(&app.token("1", "43"), json!({"offerId": "S1"})).await;
    expect_error(response, 404, "NotFound").await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_shows_a_session_and_kicking_it_frees_the_slot() {
    let app = spawn_app().await;
    // Configured: an unknown offer's session would show the shared pool's offer id.
    app.put_offer("1", "S1", 1, &[]).await;
    let token = app.token("1", "42");
    let held = app.create_ok(&token, "S1", "TV").await;
    let path = format!("/sessions/{}", held.session_id);

    let response = app.admin(Method::GET, &path, None).await;
    assert_eq!(response.status(), 200);
    let shown: Value = response.json().await.unwrap();
    assert_eq!(shown["sessionId"], held.session_id.as_str());
    assert_eq!(shown["name"], "TV");
    assert_eq!(shown["state"], "pending");
    assert_eq!(shown["publisherId"], "1");
    assert_eq!(shown["customerId"], "42");
    assert_eq!(shown["offerId"], "S1");

    let response = app.admin(Method::DELETE, &path, None).await;
    assert_eq!(response.status(), 204);
    expect_error(app.admin(Method::GET, &path, None).await, 404, "NotFound").await;
    expect_error(app.admin(Method::DELETE, &path, None).await, 404, "NotFound").await;
    expect_error(
        app.admin(Method::GET, "/sessions/not-a-uuid", None).await,
        404,
        "NotFound",
    )
    .await;

    app.create_ok(&token, "S1", "Phone").await;
    app.stop().await;
}

#[tokio::test]
async fn a_lowered_limit_keeps_held_sessions_and_applies_to_the_next_admission() {
    let app = spawn_app().await;
    app.put_offer("1", "S1", 3, &[]).await;
    let token = app.token("1", "42");
    let mut held = Vec::new();
    for name in ["TV", "Phone", "Laptop"] {
        held.push(app.create_ok(&token, "S1", name).await.session_id);
    }

    app.put_offer("1", "S1", 1, &[]).await;
    for id in &held {
        assert_eq!(admin_session_status(&app, id).await, 200, "session {id} is not kicked");
    }
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Tablet"})).await;
    assert_eq!(active_sessions(&refused).len(), 3);

    // Ending one leaves two, still at or over the new limit of 1.
    assert_eq!(delete_session(&app, &token, &held[0]).await.status(), 204);
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Tablet"})).await;
    assert_eq!(active_sessions(&refused).len(), 2);

    // Raising it again admits at once.
    app.put_offer("1", "S1", 3, &[]).await;
    app.create_ok(&token, "S1", "Tablet").await;
    app.stop().await;
}
