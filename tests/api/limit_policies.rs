//! `onLimit` and `customerSessionLimit` (drisc extensions) through the admin API
//! and `POST /sessions`: stored, shown, validated, and applied to players.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{active_sessions, expect_error, limit_exceeded, pair, spawn_app};
use crate::players::{Seen, live_player};

#[tokio::test]
async fn an_unknown_on_limit_is_refused_with_a_message_naming_the_field() {
    let app = spawn_app().await;
    for (path, body) in [
        ("/publishers/p", json!({"onLimit": "kick"})),
        (
            "/publishers/p/offers/S1",
            json!({"sessionLimit": 1, "onLimit": "Evict"}),
        ),
    ] {
        let response = app.admin(Method::PUT, path, Some(body)).await;
        let refused = expect_error(response, 400, "InvalidRequest").await;
        let message = refused["message"].as_str().unwrap();
        assert!(
            message.contains("onLimit") && message.contains("evict_oldest"),
            "{message}"
        );
    }
    let response = app.admin(Method::GET, "/publishers/p", None).await;
    assert_eq!(response.status(), 404, "a refused offer creates no publisher");
    let cap = json!({"customerSessionLimit": -1});
    expect_error(
        app.admin(Method::PUT, "/publishers/p", Some(cap)).await,
        400,
        "InvalidRequest",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn policies_and_the_household_cap_are_stored_shown_kept_and_cleared() {
    let app = spawn_app().await;
    let body = json!({"onLimit": "evict_oldest", "customerSessionLimit": 3});
    let shown: Value = app
        .admin(Method::PUT, "/publishers/p", Some(body))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (shown["onLimit"].clone(), shown["customerSessionLimit"].clone()),
        (json!("evict_oldest"), json!(3))
    );
    let offer = json!({"sessionLimit": 2, "onLimit": "monitor"});
    let response = app.admin(Method::PUT, "/publishers/p/offers/S1", Some(offer)).await;
    assert_eq!(response.json::<Value>().await.unwrap()["onLimit"], "monitor");
    app.put_offer("p", "S2", 2, &[]).await;

    // Another change keeps them.
    app.put_publisher("p", json!({"enabled": true})).await;
    let shown: Value = app
        .admin(Method::GET, "/publishers/p", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["onLimit"], "evict_oldest");
    assert_eq!(shown["customerSessionLimit"], 3);
    assert_eq!(shown["offers"][0]["onLimit"], "monitor");
    assert!(shown["offers"][1].get("onLimit").is_none(), "S2 inherits: {shown}");

    // null clears the cap; "reject" is the default and is not shown.
    app.put_publisher("p", json!({"customerSessionLimit": null, "onLimit": "reject"}))
        .await;
    let shown: Value = app
        .admin(Method::GET, "/publishers/p", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        shown.get("customerSessionLimit").is_none() && shown.get("onLimit").is_none(),
        "{shown}"
    );
    app.stop().await;
}

#[tokio::test]
async fn evict_oldest_grants_and_the_oldest_player_gets_take_over_with_the_new_name() {
    let app = spawn_app().await;
    let offer = json!({"sessionLimit": 2, "onLimit": "evict_oldest"});
    app.admin(Method::PUT, "/publishers/p/offers/S1", Some(offer)).await;
    let token = app.token("p", "evict");
    let (tv, mut oldest) = live_player(&app, &token, "S1", "TV").await;
    let (_, mut second) = live_player(&app, &token, "S1", "Tablet").await;
    let phone = app.create_ok(&token, "S1", "Phone").await;
    assert_eq!(
        oldest.next_skipping_pings(true).await,
        Seen::Message(json!({"action": "TAKE_OVER", "sessionName": "Phone"}))
    );
    oldest.expect_close(4001).await;
    assert_eq!(app.session_state(&tv.session_id).await, None);
    assert!(app.session_state(&phone.session_id).await.is_some());
    // The other player plays on.
    let pings = second.keep_alive_for(Duration::from_millis(300)).await;
    assert!(pings <= 10);
    app.stop().await;
}

#[tokio::test]
async fn monitor_grants_past_the_limit_and_counts_each_would_be_refusal() {
    let app = spawn_app().await;
    let offer = json!({"sessionLimit": 1, "onLimit": "monitor"});
    app.admin(Method::PUT, "/publishers/p/offers/S1", Some(offer)).await;
    let token = app.token("p", "shadow");
    for name in ["TV", "Phone", "Laptop"] {
        app.create_ok(&token, "S1", name).await;
    }
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("drisc_sessions_over_limit_total{"))
        .unwrap_or_else(|| panic!("no over-limit series in:\n{metrics}"));
    assert!(
        line.contains(r#"publisher="p""#) && line.contains(r#"offer="S1""#),
        "{line}"
    );
    assert!(line.ends_with(" 2"), "two would-be refusals: {line}");
    assert!(!line.contains("shadow"), "no customer id in a label: {line}");
    // One store admission a create, past the limit too (on Redis, one round trip).
    let admits = metrics
        .lines()
        .find(|l| l.starts_with("drisc_store_operation_duration_seconds_count{") && l.contains(r#"op="admit""#))
        .unwrap_or_else(|| panic!("no store admission series in:\n{metrics}"));
    assert!(admits.ends_with(" 3"), "three creates, three admissions: {admits}");
    app.stop().await;
}

#[tokio::test]
async fn the_household_cap_answers_409_listing_the_sessions_of_every_offer() {
    let app = spawn_app().await;
    app.put_publisher("p", json!({"customerSessionLimit": 2})).await;
    app.put_offer("p", "S1", 3, &[]).await;
    app.put_offer("p", "S2", 3, &[]).await;
    let token = app.token("p", "family");
    let tv = app.create_ok(&token, "S1", "TV").await;
    let phone = app.create_ok(&token, "S2", "Phone").await;
    let refused = limit_exceeded(&app, &token, json!({"offerId": "S1", "sessionName": "Laptop"})).await;
    assert_eq!(refused["details"]["takeOverEnabled"], false, "{refused}");
    assert_eq!(
        active_sessions(&refused),
        crate::helpers::sorted(vec![pair(&tv.session_id, "TV"), pair(&phone.session_id, "Phone")])
    );
    // Another customer of the publisher has a household of its own.
    app.create_ok(&app.token("p", "neighbour"), "S1", "TV").await;
    // Freeing one (the customer's own DELETE) makes room in any offer.
    assert_eq!(app.end_session(&token, &phone.session_id).await.status(), 204);
    app.create_ok(&token, "S1", "Laptop").await;
    app.stop().await;
}
