//! `POST` (and `GET`) `/takeover`: the new session takes the victim's slot; who may
//! take over (the publisher's and the offer's flags, the victim's owner) and what
//! is refused.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    TEXT_PLAIN, active_sessions, all_at_once, expect_error, granted, limit_exceeded, pair, random_session_id, sorted,
    spawn_app, spawn_app_with,
};

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
    assert_eq!(app.session_state(&victim.session_id).await, None);
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
    assert!(
        app.session_state(&tv.session_id).await.is_some(),
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
        .header("content-type", TEXT_PLAIN)
        .body(json!({"offerId": "S1", "sessionName": "Phone", "sessionId": victim.session_id}).to_string())
        .send()
        .await
        .unwrap();
    let new = granted(response).await;
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&new.session_id, "Phone")]);
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
    expect_error(app.end_session(&bob, &held.session_id).await, 404, "NotFound").await;

    // Alice's session is still held, and Bob has a pool of his own.
    let refused = limit_exceeded(&app, &alice, json!({"offerId": "S1", "sessionName": "Phone"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&held.session_id, "TV")]);
    app.create_ok(&bob, "S1", "Phone").await;
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

    let requests = (0..50)
        .map(|i| {
            let body =
                json!({"offerId": "S1", "sessionName": format!("contender {i}"), "sessionId": victim.session_id});
            app.post_request("/takeover", &token, &body)
        })
        .collect();
    let results = all_at_once(requests).await;

    let winners: Vec<&Value> = results.iter().filter(|a| a.status == 200).map(|a| &a.body).collect();
    let losers = results
        .iter()
        .filter(|a| a.status == 404 && a.body["code"] == "NotFound")
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
