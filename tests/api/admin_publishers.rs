//! The admin API's publishers and offers: the admin key, publishers listed and
//! shown (never their keys), offers put and deleted, and what it refuses. The
//! operator's view of sessions is in session_admin.rs.

use std::collections::HashMap;

use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, customer_claims, expect_error, sign_hs, spawn_app};

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
