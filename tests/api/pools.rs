//! Which pool a create lands in, and with what limit: configured offers and tags,
//! unknown offers, strict mode, the publisher and the customer's ids, and a limit
//! changed while sessions are held. (Unknown offers that must not multiply a
//! customer's limit are in offers.rs.)

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{active_sessions, expect_error, granted, limit_exceeded, pair, sorted, spawn_app, spawn_app_with};

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

#[tokio::test]
async fn string_and_numeric_ids_share_one_pool() {
    let app = spawn_app().await;
    let as_strings = app.token("7", "4");
    let as_numbers = app.token(7, 4);

    let held = app.create_ok(&as_strings, "S1", "TV").await;
    let refused = limit_exceeded(&app, &as_numbers, json!({"offerId": "S1", "sessionName": "Phone"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&held.session_id, "TV")]);

    // The same customer: the numeric token may end the string token's session.
    assert_eq!(app.end_session(&as_numbers, &held.session_id).await.status(), 204);
    app.create_ok(&as_numbers, "S1", "Phone").await;
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
    expect_error(app.end_session(&second, &held.session_id).await, 404, "NotFound").await;

    let refused = limit_exceeded(&app, &first, json!({"offerId": "S1"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&held.session_id, "TV")]);
    let refused = limit_exceeded(&app, &second, json!({"offerId": "S1"})).await;
    assert_eq!(active_sessions(&refused), vec![pair(&other.session_id, "Phone")]);
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
        assert!(app.session_state(id).await.is_some(), "session {id} is not kicked");
    }
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Tablet"})).await;
    assert_eq!(active_sessions(&refused).len(), 3);

    // Ending one leaves two, still at or over the new limit of 1.
    assert_eq!(app.end_session(&token, &held[0]).await.status(), 204);
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Tablet"})).await;
    assert_eq!(active_sessions(&refused).len(), 2);

    // Raising it again admits at once.
    app.put_offer("1", "S1", 3, &[]).await;
    app.create_ok(&token, "S1", "Tablet").await;
    app.stop().await;
}
