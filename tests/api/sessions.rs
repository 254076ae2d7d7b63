//! `POST /sessions` and `DELETE /sessions/{id}`: the grant and its endpoint, a full
//! pool, a disabled publisher, giving a session back, and admission under concurrency.
//! Which pool a create lands in is in pools.rs; refused bodies in bad_requests.rs.

use drisc::domain::SessionId;
use serde_json::{Value, json};

use crate::helpers::{
    Answer, active_sessions, creates_at_once, expect_error, granted, limit_exceeded, pair, random_session_id, sorted,
    spawn_app, spawn_app_with,
};

/// Splits answers into granted session ids and LimitExceeded refusals, and fails on
/// anything else.
fn granted_and_refused(answers: &[Answer]) -> (Vec<String>, usize) {
    let mut granted = Vec::new();
    let mut refused = 0;
    let mut other = Vec::new();
    for answer in answers {
        match answer.status {
            200 => granted.push(answer.body["sessionId"].as_str().expect("sessionId").to_owned()),
            409 if answer.body["code"] == "LimitExceeded" => refused += 1,
            _ => other.push(answer),
        }
    }
    assert!(other.is_empty(), "only 200 and 409 are expected, also got: {other:?}");
    (sorted(granted), refused)
}

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
async fn deleting_ones_own_session_is_204_and_frees_the_slot() {
    let app = spawn_app().await;
    let token = app.token("1", "42");
    let held = app.create_ok(&token, "S1", "TV").await;
    limit_exceeded(&app, &token, json!({"offerId": "S1"})).await;

    let response = app.end_session(&token, &held.session_id).await;
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());

    app.create_ok(&token, "S1", "Phone").await;
    expect_error(app.end_session(&token, &held.session_id).await, 404, "NotFound").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_parallel_creates_against_a_limit_of_three_grant_exactly_three() {
    // One customer's 300 at once are far past its rate limit, which is not under test here.
    let app = spawn_app_with(|s| s.limits.customer_burst = 1000).await;
    app.put_offer("1", "S1", 3, &[]).await;
    let token = app.token("1", "42");

    let results = creates_at_once(&app, &token, "S1", 300).await;
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

    let results = creates_at_once(&app, &token, "S1", 300).await;
    let (granted, refused) = granted_and_refused(&results);
    assert_eq!(granted.len(), 3);
    assert_eq!(refused, 297);
    assert_eq!(app.health().await["sessions"], 3);
    app.stop().await;
}
